//! Plan changes of Stripe-managed subscriptions over real HTTP and Postgres,
//! against a local server standing in for Stripe's API: upgrades made at
//! Stripe at once (a trial ended, a declined card changing nothing),
//! downgrades scheduled at Stripe for the renewal and taken back, the free
//! plan as a cancellation, cancel and resume; one change at Stripe at a time
//! per org; answers lost, refused or older than a webhook, read back and
//! mirrored without undoing newer state; and the end of a superseded
//! period's credits.

use crate::common::billing::*;
use crate::common::stripe::{FakeStripe, Gate, Recorded, event};
use crate::common::*;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use uuid::Uuid;

// ------------------------------------------------------------------ setup

/// A Stripe-backed app, its fake Stripe, and a signed-in owner.
async fn stripe_owner() -> (FakeStripe, TestApp, TestUser) {
    let fake = FakeStripe::start().await;
    let app = stripe_app(&fake, &[]).await;
    let owner = app.user("owner@example.com");
    (fake, app, owner)
}

/// What the tests act on: the fake Stripe, the app, the owner, and their org.
type Acme = (FakeStripe, TestApp, TestUser, Uuid);

/// `Acme` and the Stripe subscription object its org is linked to.
type AcmeOnStripe = (FakeStripe, TestApp, TestUser, Uuid, Value);

/// A Stripe-backed app (see `stripe_owner`) and the owner's org "Acme", on
/// the free plan until a Stripe subscription is linked.
async fn acme() -> Acme {
    let (fake, app, owner) = stripe_owner().await;
    let org = app.create_org(&owner, "Acme").await;
    (fake, app, owner, org)
}

/// `acme` linked to the Stripe subscription `sub` (see `stripe_managed`),
/// which is also returned.
async fn acme_on_stripe(sub: &str, status: &str, plan: &str) -> AcmeOnStripe {
    let (fake, app, owner, org) = acme().await;
    let obj = stripe_managed(&app, &fake, org, sub, status, plan).await;
    (fake, app, owner, org, obj)
}

/// As `acme`, the free plan granting no credits (from before the org is
/// made): the balance is the paid plans' (and grants') alone.
async fn acme_without_free_credits() -> Acme {
    let (fake, app, owner) = stripe_owner().await;
    sqlx::query("update plans set credits_per_period = 0 where code = 'free'")
        .execute(&app.db.admin)
        .await
        .unwrap();
    let org = app.create_org(&owner, "Acme").await;
    (fake, app, owner, org)
}

/// `acme` on business at Stripe (`sub`, linked by `stripe_managed`), with a
/// downgrade to pro scheduled there, and an enterprise plan in the catalog
/// to upgrade to. Also returns the subscription as linked.
async fn business_downgrading_to_pro(sub: &str) -> AcmeOnStripe {
    let (fake, app, owner, org) = acme().await;
    add_enterprise_plan(&app).await;
    let obj = stripe_managed(&app, &fake, org, sub, "active", "business").await;
    schedule_downgrade(&app, org, &owner, "pro").await;
    (fake, app, owner, org, obj)
}

/// Adds Enterprise to the catalog (superuser): 199.00 USD a month, 100,000
/// credits a period, no seat limit, no trial, sorted after the seeded plans.
async fn add_enterprise_plan(app: &TestApp) {
    sqlx::query(
        "insert into plans (code, name, price_minor, currency, billing_interval, trial_days,
                            credits_per_period, seat_limit, features, sort_order)
         values ($1, $2, $3, 'USD', $4, 0, $5, $6, '{}', 5)",
    )
    .bind("enterprise")
    .bind("Enterprise")
    .bind(19900_i64)
    .bind("month")
    .bind(100_000_i64)
    .bind(None::<i32>)
    .execute(&app.db.admin)
    .await
    .unwrap();
}

/// The Stripe subscription `sub` of `org` on `plan` in `status`, as Stripe
/// has it: a customer of its own, the plan's price on its item (business
/// 99.00, otherwise 29.00), a 14-day trial when trialing, its 30-day period
/// starting at `t0`.
fn managed_object(org: Uuid, sub: &str, status: &str, plan: &str, t0: i64) -> Value {
    let mut obj = subscription_object(org, sub, status, plan, t0);
    obj["customer"] = json!(format!("cus_{sub}"));
    obj["items"]["data"][0]["price"]["unit_amount"] =
        json!(if plan == "business" { 9900 } else { 2900 });
    if status == "trialing" {
        obj["trial_end"] = json!(t0 + 14 * 86400);
    }
    obj
}

/// Links `org` to the Stripe subscription `sub` (on `plan`, in `status`, its
/// period started 100 s ago) as its `customer.subscription.created` event
/// does, and seeds the fake with the same object. Returns the object.
async fn stripe_managed(
    app: &TestApp,
    fake: &FakeStripe,
    org: Uuid,
    sub: &str,
    status: &str,
    plan: &str,
) -> Value {
    let t0 = now() - 100;
    let obj = managed_object(org, sub, status, plan, t0);
    link(app, fake, &obj, t0).await;
    let row = subscription(app, org).await;
    assert_eq!(
        (row.0.as_str(), row.1.as_str(), row.2.as_str()),
        (status, plan, "stripe")
    );
    obj
}

/// Seeds the fake with the subscription `obj` and delivers it as its
/// `customer.subscription.created` event (`evt_{id}_created`), created at `created`.
async fn link(app: &TestApp, fake: &FakeStripe, obj: &Value, created: i64) {
    fake.seed_subscription(obj.clone());
    let id = obj["id"].as_str().unwrap();
    deliver(
        app,
        &event(
            &format!("evt_{id}_created"),
            "customer.subscription.created",
            created,
            obj.clone(),
        ),
    )
    .await;
}

/// (current_period_start, current_period_end) of a subscription object
/// keeping its period at the top level.
fn period(obj: &Value) -> (i64, i64) {
    (
        obj["current_period_start"].as_i64().unwrap(),
        obj["current_period_end"].as_i64().unwrap(),
    )
}

/// Delivers `obj` as the `customer.subscription.updated` event `id`,
/// created at `created`.
async fn deliver_updated(app: &TestApp, id: &str, created: i64, obj: Value) {
    deliver(
        app,
        &event(id, "customer.subscription.updated", created, obj),
    )
    .await;
}

/// Delivers the fake's current state of `sub` as `customer.subscription.updated`, created now.
async fn deliver_current(app: &TestApp, fake: &FakeStripe, sub: &str, event_id: &str) {
    let obj = fake.subscription(sub).unwrap();
    deliver_updated(app, event_id, now(), obj).await;
}

// ------------------------------------------------------------------ requests and answers

async fn put_plan(app: &TestApp, org: Uuid, user: &TestUser, code: &str) -> (StatusCode, Value) {
    app.call(
        Method::PUT,
        &format!("/api/v1/orgs/{org}/subscription"),
        Some(&user.token),
        Some(json!({ "plan": code })),
    )
    .await
}

/// `put_plan`, expecting 200; returns the subscription as answered.
async fn put_plan_ok(app: &TestApp, org: Uuid, user: &TestUser, code: &str) -> Value {
    let (s, body) = put_plan(app, org, user, code).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    body
}

/// Asks for a downgrade to `plan`, expecting it scheduled: 200, with `plan`
/// pending. Returns the subscription as answered.
async fn schedule_downgrade(app: &TestApp, org: Uuid, user: &TestUser, plan: &str) -> Value {
    let body = put_plan_ok(app, org, user, plan).await;
    assert_eq!(body["pending_plan_code"], plan, "{body}");
    body
}

/// The org's subscription as `user` reads it (expecting 200).
async fn get_subscription(app: &TestApp, org: Uuid, user: &TestUser) -> Value {
    let (s, view) = app
        .get(&format!("/api/v1/orgs/{org}/subscription"), user)
        .await;
    assert_eq!(s, StatusCode::OK, "{view}");
    view
}

/// Sends `method path` with `body` as `token` from a task of its own, so
/// that the test can act while the request is being answered.
fn spawn_call(
    app: &TestApp,
    method: Method,
    path: String,
    token: &str,
    body: Value,
) -> JoinHandle<(StatusCode, Value)> {
    let (client, base, token) = (app.client.clone(), app.base.clone(), token.to_owned());
    tokio::spawn(async move {
        let res = client
            .request(method, format!("{base}{path}"))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .unwrap();
        read_answer(res).await
    })
}

/// `put_plan` from a task of its own (see `spawn_call`).
fn spawn_put_plan(
    app: &TestApp,
    org: Uuid,
    user: &TestUser,
    code: &str,
) -> JoinHandle<(StatusCode, Value)> {
    spawn_call(
        app,
        Method::PUT,
        format!("/api/v1/orgs/{org}/subscription"),
        &user.token,
        json!({ "plan": code }),
    )
}

/// Starts a change to `code` that Stripe holds at the subscription's update
/// (a POST to `path`): returns once Stripe has received that update, with
/// the gate that lets it be answered and the change's task.
async fn put_plan_held_at_stripe(
    app: &TestApp,
    fake: &FakeStripe,
    org: Uuid,
    user: &TestUser,
    code: &str,
    path: &str,
) -> (Gate, JoinHandle<(StatusCode, Value)>) {
    let gate = fake.hold_requests_to("POST", path);
    let change = spawn_put_plan(app, org, user, code);
    until_received(fake, "POST", path, 1).await;
    (gate, change)
}

/// Waits until the fake has received `n` requests with `method` to `path`.
async fn until_received(fake: &FakeStripe, method: &str, path: &str, n: usize) {
    eventually(10, &format!("{method} {path} #{n} at Stripe"), || async {
        (fake.requests_with(method, path).len() >= n).then_some(())
    })
    .await;
}

/// Waits until the clock is past the second `t` (an event's `created`).
async fn until_past(t: i64) {
    eventually(10, "the clock past the event's second", || async {
        (chrono::Utc::now().timestamp() > t).then_some(())
    })
    .await;
}

/// Posts `body` to `path` as `user` with a fresh Idempotency-Key.
async fn keyed_post(
    app: &TestApp,
    user: &TestUser,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut req = app
        .client
        .post(format!("{}{path}", app.base))
        .bearer_auth(&user.token)
        .header("Idempotency-Key", Uuid::new_v4().to_string());
    if let Some(body) = body {
        req = req.json(&body);
    }
    read_answer(req.send().await.unwrap()).await
}

async fn spend(app: &TestApp, org: Uuid, user: &TestUser, amount: i64) -> (StatusCode, Value) {
    keyed_post(
        app,
        user,
        &format!("/api/v1/orgs/{org}/credits/spend"),
        Some(json!({ "amount": amount })),
    )
    .await
}

async fn balance(app: &TestApp, org: Uuid, user: &TestUser) -> i64 {
    let (s, body) = app.get(&format!("/api/v1/orgs/{org}/credits"), user).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    body["balance"].as_i64().unwrap()
}

// ------------------------------------------------------------------ what Stripe was asked

/// Asserts each (field, value) of a recorded form.
fn assert_form(r: &Recorded, expected: &[(&str, &str)]) {
    for (k, v) in expected {
        assert_eq!(
            r.field(k),
            Some(*v),
            "field {k} of {} {}: {:?}",
            r.method,
            r.path,
            r.form
        );
    }
}

/// Asserts a request for the monthly USD price of `plan` (named `name`, of
/// `unit_amount` cents).
fn assert_price_form(r: &Recorded, unit_amount: &str, name: &str, plan: &str) {
    assert_form(
        r,
        &[
            ("currency", "usd"),
            ("unit_amount", unit_amount),
            ("recurring[interval]", "month"),
            ("product_data[name]", name),
            ("metadata[plan]", plan),
        ],
    );
}

/// Asserts an upgrade to `plan`: the item moved to a price invoiced now
/// (its new period started by `starting`, a (field, value)), nothing pending.
fn assert_upgrade_form(r: &Recorded, plan: &str, starting: (&str, &str)) {
    assert_form(
        r,
        &[
            ("items[0][id]", "si_1"),
            ("proration_behavior", "always_invoice"),
            starting,
            ("payment_behavior", "error_if_incomplete"),
            ("metadata[plan]", plan),
            ("metadata[pending_plan]", ""),
            ("metadata[pending_from]", ""),
        ],
    );
}

/// Asserts an update moving the item to another price without proration,
/// still on `plan`, with `pending_plan` from `pending_from` in the metadata
/// (both empty: nothing pending).
fn assert_unprorated_form(r: &Recorded, plan: &str, pending_plan: &str, pending_from: &str) {
    assert_form(
        r,
        &[
            ("items[0][id]", "si_1"),
            ("proration_behavior", "none"),
            ("metadata[plan]", plan),
            ("metadata[pending_plan]", pending_plan),
            ("metadata[pending_from]", pending_from),
        ],
    );
}

/// The (method, path) of each request, in order.
fn method_paths(requests: &[Recorded]) -> Vec<(String, String)> {
    requests
        .iter()
        .map(|r| (r.method.clone(), r.path.clone()))
        .collect()
}

/// The (method, path) of each request the fake received, in order.
fn sent(fake: &FakeStripe) -> Vec<(String, String)> {
    method_paths(&fake.requests())
}

fn pairs(expected: &[(&str, &str)]) -> Vec<(String, String)> {
    expected
        .iter()
        .map(|(m, p)| ((*m).to_owned(), (*p).to_owned()))
        .collect()
}

/// What one plan change asks of Stripe: the subscription at `path` read, a
/// price made, the subscription updated.
fn one_change(path: &str) -> Vec<(String, String)> {
    pairs(&[("GET", path), ("POST", "/v1/prices"), ("POST", path)])
}

/// An upgrade over a pending downgrade: as `one_change` (the paid price
/// restored), then another price made and the subscription updated again.
fn restore_then_upgrade(path: &str) -> Vec<(String, String)> {
    [
        one_change(path),
        pairs(&[("POST", "/v1/prices"), ("POST", path)]),
    ]
    .concat()
}

// ------------------------------------------------------------------ what is stored here

/// (plan_code, status, pending_plan_code, cancel_at_period_end,
/// current_period_start, current_period_end) with unix-second times.
type SubState = (String, String, Option<String>, bool, i64, i64);

async fn sub_state(app: &TestApp, org: Uuid) -> SubState {
    sqlx::query_as(
        "select plan_code, status, pending_plan_code, cancel_at_period_end,
                extract(epoch from current_period_start)::bigint,
                extract(epoch from current_period_end)::bigint
         from subscriptions where org_id = $1",
    )
    .bind(org)
    .fetch_one(&app.db.admin)
    .await
    .unwrap()
}

/// A `SubState`: on `plan` in `status`, `pending` to come, canceling at the
/// period's end or not, over `(start, end)`.
fn state(
    plan: &str,
    status: &str,
    pending: Option<&str>,
    canceling: bool,
    (start, end): (i64, i64),
) -> SubState {
    (
        plan.to_owned(),
        status.to_owned(),
        pending.map(str::to_owned),
        canceling,
        start,
        end,
    )
}

/// Active on `plan` for the 30 days from `start`, nothing pending.
fn active_from(plan: &str, start: i64) -> SubState {
    state(plan, "active", None, false, (start, start + 30 * 86400))
}

fn unix_of(v: &Value) -> i64 {
    v.as_str()
        .unwrap_or_else(|| panic!("not a time: {v}"))
        .parse::<chrono::DateTime<chrono::Utc>>()
        .unwrap()
        .timestamp()
}

// ------------------------------------------------------------------ upgrades and downgrades

#[tokio::test]
async fn a_stripe_upgrade_is_made_at_stripe_now_and_mirrored_and_free_cancels_there() {
    let (fake, app, owner, org) = acme().await;
    let member = app.user("member@example.com");
    app.add_member(org, &owner, &member, "member").await;
    let obj = stripe_managed(&app, &fake, org, "sub_u", "active", "pro").await;
    let (t0, _) = period(&obj);
    assert_eq!(plan_grants(&app, org, 25_000).await, (0, 0));

    // Refused before Stripe hears of it: an unknown plan; a member (no billing:manage).
    assert_error(
        put_plan(&app, org, &owner, "platinum").await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "unknown_plan",
    );
    let (s, p) = put_plan(&app, org, &member, "business").await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{p}");
    // The current plan, nothing pending: no change, nothing asked.
    let p = put_plan_ok(&app, org, &owner, "pro").await;
    assert_eq!(p["plan_code"], "pro", "{p}");
    assert!(fake.requests().is_empty(), "{:?}", fake.requests());

    // pro -> business: read, a price, the subscription's item moved to it.
    let body = put_plan_ok(&app, org, &owner, "business").await;
    assert_eq!(sent(&fake), one_change("/v1/subscriptions/sub_u"));
    for r in fake.requests() {
        assert_eq!(
            r.authorization.as_deref(),
            Some(format!("Bearer {SECRET_KEY}").as_str()),
            "{} {}",
            r.method,
            r.path
        );
    }
    let price = &fake.requests_with("POST", "/v1/prices")[0];
    assert_price_form(price, "9900", "Business", "business");
    assert!(
        price
            .idempotency_key
            .as_deref()
            .is_some_and(|k| !k.is_empty())
    );
    let update = &fake.requests_with("POST", "/v1/subscriptions/sub_u")[0];
    assert_upgrade_form(update, "business", ("billing_cycle_anchor", "now"));
    assert_form(update, &[("cancel_at_period_end", "false")]);
    assert_eq!(update.field("trial_end"), None, "{:?}", update.form);
    assert!(
        update
            .idempotency_key
            .as_deref()
            .is_some_and(|k| !k.is_empty())
    );
    assert_ne!(update.idempotency_key, price.idempotency_key);
    let at_stripe = fake.subscription("sub_u").unwrap();
    let item_price = &at_stripe["items"]["data"][0]["price"];
    assert_eq!(
        update.field("items[0][price]"),
        item_price["id"].as_str(),
        "the item is on the price just created"
    );
    assert_eq!(item_price["unit_amount"], 9900);
    let new_start = at_stripe["current_period_start"].as_i64().unwrap();
    assert!(
        new_start > t0 && (new_start - now()).abs() <= 5,
        "{at_stripe}"
    );

    // The answer and the row mirror Stripe's answer at once.
    assert_eq!(body["plan_code"], "business", "{body}");
    assert_eq!(body["plan"]["code"], "business", "{body}");
    assert_eq!(body["status"], "active", "{body}");
    assert!(body["pending_plan_code"].is_null(), "{body}");
    assert!(body["pending_plan"].is_null(), "{body}");
    assert_eq!(body["cancel_at_period_end"], false, "{body}");
    assert_eq!(unix_of(&body["current_period_start"]), new_start, "{body}");
    assert_eq!(
        sub_state(&app, org).await,
        active_from("business", new_start)
    );
    assert_eq!(plan_grants(&app, org, 25_000).await, (1, 25_000));
    assert_eq!(app.audit_count(org, "subscription.upgraded").await, 1);
    // Stripe's event about the same change grants nothing more.
    deliver_current(&app, &fake, "sub_u", "evt_u_updated").await;
    assert_eq!(sub_state(&app, org).await.0, "business");
    assert_eq!(plan_grants(&app, org, 25_000).await, (1, 25_000));

    // To free: a cancellation at the period's end, at Stripe; no price.
    let body = put_plan_ok(&app, org, &owner, "free").await;
    assert_eq!(body["cancel_at_period_end"], true, "{body}");
    assert_eq!(body["plan_code"], "business", "{body}");
    assert_eq!(fake.requests_with("POST", "/v1/prices").len(), 1);
    let updates = fake.requests_with("POST", "/v1/subscriptions/sub_u");
    assert_eq!(updates.len(), 2);
    assert_form(&updates[1], &[("cancel_at_period_end", "true")]);
    assert!(
        !updates[1].has_field_starting("items["),
        "{:?}",
        updates[1].form
    );
    assert_eq!(
        updates[1].field("payment_behavior"),
        None,
        "{:?}",
        updates[1].form
    );
    assert_eq!(
        fake.subscription("sub_u").unwrap()["cancel_at_period_end"],
        true
    );
    let state = sub_state(&app, org).await;
    assert_eq!((state.0.as_str(), state.3), ("business", true));
    assert_eq!(
        app.audit_count(org, "subscription.cancel_scheduled").await,
        1
    );
}

#[tokio::test]
async fn a_stripe_upgrade_during_a_trial_ends_the_trial_at_stripe() {
    let (fake, app, owner, org, _) = acme_on_stripe("sub_t", "trialing", "pro").await;

    let body = put_plan_ok(&app, org, &owner, "business").await;
    assert_eq!(sent(&fake), one_change("/v1/subscriptions/sub_t"));
    let update = &fake.requests_with("POST", "/v1/subscriptions/sub_t")[0];
    assert_upgrade_form(update, "business", ("trial_end", "now"));
    assert_form(update, &[("cancel_at_period_end", "false")]);
    assert_eq!(
        update.field("billing_cycle_anchor"),
        None,
        "Stripe refuses billing_cycle_anchor with trial_end: {:?}",
        update.form
    );
    let at_stripe = fake.subscription("sub_t").unwrap();
    assert_eq!(at_stripe["status"], "active", "{at_stripe}");
    let new_start = at_stripe["current_period_start"].as_i64().unwrap();

    assert_eq!(body["plan_code"], "business", "{body}");
    assert_eq!(body["status"], "active", "{body}");
    assert_eq!(unix_of(&body["current_period_start"]), new_start, "{body}");
    let state = sub_state(&app, org).await;
    assert_eq!(
        (state.0.as_str(), state.1.as_str(), state.4),
        ("business", "active", new_start)
    );
    assert_eq!(plan_grants(&app, org, 25_000).await, (1, 25_000));
    assert_eq!(app.audit_count(org, "subscription.upgraded").await, 1);
}

#[tokio::test]
async fn a_stripe_downgrade_is_scheduled_at_stripe_and_takes_effect_when_stripe_renews() {
    let (fake, app, owner, org, obj) = acme_on_stripe("sub_d", "active", "business").await;
    let (t0, end) = period(&obj);
    assert_eq!(plan_grants(&app, org, 25_000).await, (1, 25_000));

    let body = schedule_downgrade(&app, org, &owner, "pro").await;
    assert_eq!(sent(&fake), one_change("/v1/subscriptions/sub_d"));
    let price = &fake.requests_with("POST", "/v1/prices")[0];
    assert_price_form(price, "2900", "Pro", "pro");
    assert!(price.idempotency_key.is_some());
    let update = &fake.requests_with("POST", "/v1/subscriptions/sub_d")[0];
    assert_unprorated_form(update, "business", "pro", &end.to_string());
    assert_eq!(
        update.field("billing_cycle_anchor"),
        None,
        "{:?}",
        update.form
    );
    assert_eq!(update.field("trial_end"), None, "{:?}", update.form);
    assert_eq!(
        update.field("payment_behavior"),
        None,
        "a downgrade invoices nothing now: {:?}",
        update.form
    );
    assert!(update.idempotency_key.is_some());
    let at_stripe = fake.subscription("sub_d").unwrap();
    assert_eq!(
        update.field("items[0][price]"),
        at_stripe["items"]["data"][0]["price"]["id"].as_str()
    );
    assert_eq!(at_stripe["items"]["data"][0]["price"]["unit_amount"], 2900);
    assert_eq!(at_stripe["current_period_start"], t0, "the period goes on");

    // Business until the period ends, pro pending.
    assert_eq!(body["plan_code"], "business", "{body}");
    assert_eq!(body["pending_plan"]["code"], "pro", "{body}");
    let scheduled = state("business", "active", Some("pro"), false, (t0, end));
    assert_eq!(sub_state(&app, org).await, scheduled);
    assert_eq!(
        app.audit_count(org, "subscription.downgrade_scheduled")
            .await,
        1
    );
    assert_eq!(app.audit_count(org, "subscription.upgraded").await, 0);

    // Stripe's event about the change (the same period) keeps it so.
    deliver_current(&app, &fake, "sub_d", "evt_d_updated").await;
    assert_eq!(sub_state(&app, org).await, scheduled);
    assert_eq!(plan_grants(&app, org, 5_000).await, (0, 0));

    // Stripe renews: the next period is pro's, with pro's credits (once).
    let mut renewed = fake.subscription("sub_d").unwrap();
    renewed["current_period_start"] = json!(end);
    renewed["current_period_end"] = json!(end + 30 * 86400);
    fake.seed_subscription(renewed);
    deliver_current(&app, &fake, "sub_d", "evt_d_renewed").await;
    assert_eq!(sub_state(&app, org).await, active_from("pro", end));
    let view = get_subscription(&app, org, &owner).await;
    assert_eq!(view["plan_code"], "pro", "{view}");
    assert!(view["pending_plan_code"].is_null(), "{view}");
    assert_eq!(plan_grants(&app, org, 5_000).await, (1, 5_000));
    deliver_current(&app, &fake, "sub_d", "evt_d_renewed_again").await;
    assert_eq!(plan_grants(&app, org, 5_000).await, (1, 5_000));
    assert_eq!(plan_grants(&app, org, 25_000).await, (1, 25_000));
}

#[tokio::test]
async fn a_pending_stripe_downgrade_is_taken_back_at_stripe_and_can_be_scheduled_again() {
    let (fake, app, owner, org, obj) = acme_on_stripe("sub_r", "active", "business").await;
    let (t0, end) = period(&obj);

    schedule_downgrade(&app, org, &owner, "pro").await;
    assert_eq!(fake.requests_with("POST", "/v1/prices").len(), 1);
    assert_eq!(
        fake.requests_with("POST", "/v1/subscriptions/sub_r").len(),
        1
    );

    // The current plan again: the pending downgrade is taken back at Stripe.
    let body = put_plan_ok(&app, org, &owner, "business").await;
    let prices = fake.requests_with("POST", "/v1/prices");
    assert_eq!(prices.len(), 2);
    assert_price_form(&prices[1], "9900", "Business", "business");
    let updates = fake.requests_with("POST", "/v1/subscriptions/sub_r");
    assert_eq!(updates.len(), 2);
    let revert = &updates[1];
    assert_unprorated_form(revert, "business", "", "");
    assert_ne!(
        revert.field("billing_cycle_anchor"),
        Some("now"),
        "taking a downgrade back starts no period: {:?}",
        revert.form
    );
    assert_eq!(revert.field("trial_end"), None, "{:?}", revert.form);
    assert_eq!(revert.field("payment_behavior"), None, "{:?}", revert.form);
    let at_stripe = fake.subscription("sub_r").unwrap();
    assert_eq!(
        revert.field("items[0][price]"),
        at_stripe["items"]["data"][0]["price"]["id"].as_str()
    );
    assert_eq!(at_stripe["items"]["data"][0]["price"]["unit_amount"], 9900);
    assert!(
        at_stripe["metadata"].get("pending_plan").is_none(),
        "{at_stripe}"
    );
    assert_eq!(body["plan_code"], "business", "{body}");
    assert!(body["pending_plan_code"].is_null(), "{body}");
    assert!(body["pending_plan"].is_null(), "{body}");
    assert_eq!(
        sub_state(&app, org).await,
        state("business", "active", None, false, (t0, end))
    );
    assert_eq!(
        app.audit_count(org, "subscription.downgrade_canceled")
            .await,
        1
    );

    // Nothing pending any more: the current plan asks Stripe nothing.
    let before = fake.requests().len();
    let body = put_plan_ok(&app, org, &owner, "business").await;
    assert!(body["pending_plan_code"].is_null(), "{body}");
    assert_eq!(fake.requests().len(), before, "{:?}", fake.requests());
    assert_eq!(
        app.audit_count(org, "subscription.downgrade_canceled")
            .await,
        1
    );

    // Downgrading again reaches Stripe again (not an idempotent replay of
    // the first downgrade's answer).
    schedule_downgrade(&app, org, &owner, "pro").await;
    assert_eq!(
        fake.requests_with("POST", "/v1/subscriptions/sub_r").len(),
        3
    );
    let at_stripe = fake.subscription("sub_r").unwrap();
    assert_eq!(at_stripe["metadata"]["pending_plan"], "pro", "{at_stripe}");
    assert_eq!(
        at_stripe["metadata"]["pending_from"],
        end.to_string(),
        "{at_stripe}"
    );
    assert_eq!(
        sub_state(&app, org).await.2.as_deref(),
        Some("pro"),
        "the downgrade is pending again"
    );
    assert_eq!(
        app.audit_count(org, "subscription.downgrade_scheduled")
            .await,
        2
    );
}

#[tokio::test]
async fn an_upgrade_over_a_pending_stripe_downgrade_restores_the_paid_price_first() {
    let (fake, app, owner, org, _) = business_downgrading_to_pro("sub_p").await;
    let path = "/v1/subscriptions/sub_p";
    let asked_before = fake.requests().len();
    assert_eq!(asked_before, 3);

    let body = put_plan_ok(&app, org, &owner, "enterprise").await;
    let asked = fake.requests()[asked_before..].to_vec();
    assert_eq!(method_paths(&asked), restore_then_upgrade(path));
    // First back to business's price (the item is on pro's from the renewal).
    assert_form(
        &asked[1],
        &[
            ("unit_amount", "9900"),
            ("recurring[interval]", "month"),
            ("metadata[plan]", "business"),
        ],
    );
    // The pending downgrade is taken back with the price.
    let restore = &asked[2];
    assert_unprorated_form(restore, "business", "", "");
    let restored_price = fake
        .price(restore.field("items[0][price]").unwrap())
        .unwrap();
    assert_eq!(restored_price["unit_amount"], 9900, "{restored_price}");
    assert_eq!(restored_price["metadata"]["plan"], "business");
    for absent in ["billing_cycle_anchor", "trial_end", "payment_behavior"] {
        assert_eq!(restore.field(absent), None, "{absent}: {:?}", restore.form);
    }
    // Then the upgrade itself, paid now.
    assert_form(
        &asked[3],
        &[
            ("unit_amount", "19900"),
            ("recurring[interval]", "month"),
            ("product_data[name]", "Enterprise"),
            ("metadata[plan]", "enterprise"),
        ],
    );
    let upgrade = &asked[4];
    assert_upgrade_form(upgrade, "enterprise", ("billing_cycle_anchor", "now"));
    let upgraded_price = fake
        .price(upgrade.field("items[0][price]").unwrap())
        .unwrap();
    assert_eq!(upgraded_price["unit_amount"], 19900, "{upgraded_price}");
    let keys: std::collections::HashSet<_> = asked
        .iter()
        .filter(|r| r.method == "POST")
        .map(|r| r.idempotency_key.clone().unwrap())
        .collect();
    assert_eq!(keys.len(), 4, "one key per request");

    let at_stripe = fake.subscription("sub_p").unwrap();
    assert_eq!(at_stripe["items"]["data"][0]["price"]["unit_amount"], 19900);
    assert!(
        at_stripe["metadata"].get("pending_plan").is_none(),
        "{at_stripe}"
    );
    let new_start = at_stripe["current_period_start"].as_i64().unwrap();
    assert_eq!(body["plan_code"], "enterprise", "{body}");
    assert!(body["pending_plan_code"].is_null(), "{body}");
    assert!(body["pending_plan"].is_null(), "{body}");
    assert_eq!(
        sub_state(&app, org).await,
        active_from("enterprise", new_start)
    );
    assert_eq!(plan_grants(&app, org, 100_000).await, (1, 100_000));
    assert_eq!(app.audit_count(org, "subscription.upgraded").await, 1);
}

#[tokio::test]
async fn a_declined_upgrade_over_a_pending_downgrade_leaves_the_downgrade_taken_back() {
    let (fake, app, owner, org, obj) = business_downgrading_to_pro("sub_pd").await;
    let (t0, end) = period(&obj);
    let path = "/v1/subscriptions/sub_pd";
    let asked_before = fake.requests().len();

    // The restore goes through; the upgrade's payment is declined.
    fake.fail_nth_request_to("POST", path, 2, 402);
    let p = assert_declined(put_plan(&app, org, &owner, "enterprise").await);
    assert!(
        p["detail"].as_str().unwrap().contains("downgrade"),
        "the detail says the pending downgrade was taken back: {p}"
    );
    let asked = fake.requests()[asked_before..].to_vec();
    let asked_pairs = method_paths(&asked);
    assert_eq!(
        asked_pairs[..5],
        restore_then_upgrade(path),
        "{asked_pairs:?}"
    );
    // (Then at most reads, of the state to mirror.)
    assert!(
        asked_pairs[5..]
            .iter()
            .all(|(m, p)| m == "GET" && p == path),
        "{asked_pairs:?}"
    );
    assert_form(
        &asked[2],
        &[
            ("proration_behavior", "none"),
            ("metadata[plan]", "business"),
            ("metadata[pending_plan]", ""),
            ("metadata[pending_from]", ""),
        ],
    );
    assert_form(
        &asked[4],
        &[
            ("billing_cycle_anchor", "now"),
            ("metadata[plan]", "enterprise"),
        ],
    );

    // At Stripe: business's price again, nothing pending, the same period.
    let at_stripe = fake.subscription("sub_pd").unwrap();
    assert_eq!(
        at_stripe["items"]["data"][0]["price"]["unit_amount"], 9900,
        "{at_stripe}"
    );
    assert_eq!(at_stripe["metadata"]["plan"], "business", "{at_stripe}");
    for key in ["pending_plan", "pending_from"] {
        assert!(
            at_stripe["metadata"].get(key).is_none(),
            "{key}: {at_stripe}"
        );
    }
    assert_eq!(at_stripe["current_period_start"], t0, "{at_stripe}");
    // Here too, at once: business, nothing pending.
    assert_eq!(
        sub_state(&app, org).await,
        state("business", "active", None, false, (t0, end))
    );
    let view = get_subscription(&app, org, &owner).await;
    assert_eq!(view["plan_code"], "business", "{view}");
    assert!(view["pending_plan_code"].is_null(), "{view}");
    assert_eq!(plan_grants(&app, org, 100_000).await, (0, 0));
    assert_eq!(app.audit_count(org, "subscription.upgraded").await, 0);

    // The change is over (its lease released), and nothing is pending: the
    // current plan asks Stripe nothing.
    let before = fake.requests().len();
    let body = put_plan_ok(&app, org, &owner, "business").await;
    assert_eq!(body["plan_code"], "business", "{body}");
    assert!(body["pending_plan_code"].is_null(), "{body}");
    assert_eq!(fake.requests().len(), before, "{:?}", fake.requests());
}

// ------------------------------------------------------------------ changes refused

#[tokio::test]
async fn stripe_plan_changes_that_cannot_be_made_are_refused_before_stripe_hears_of_them() {
    let (fake, app, owner) = stripe_owner().await;
    let member = app.user("member@example.com");

    // Two members, and pro allows one: no downgrade to pro.
    let crowded = app.create_org(&owner, "Crowded").await;
    app.add_member(crowded, &owner, &member, "member").await;
    stripe_managed(&app, &fake, crowded, "sub_seats", "active", "business").await;
    sqlx::query("update plans set seat_limit = 1 where code = 'pro'")
        .execute(&app.db.admin)
        .await
        .unwrap();
    let before = sub_state(&app, crowded).await;
    assert_error(
        put_plan(&app, crowded, &owner, "pro").await,
        StatusCode::CONFLICT,
        "seat_limit_reached",
    );
    assert_eq!(sub_state(&app, crowded).await, before);

    // A first payment pending or a payment owed: no plan change.
    for (name, sub, status) in [
        ("Owing", "sub_owing", "past_due"),
        ("Unpaid", "sub_unpaid", "incomplete"),
    ] {
        let org = app.create_org(&owner, name).await;
        stripe_managed(&app, &fake, org, sub, status, "pro").await;
        let before = sub_state(&app, org).await;
        let (s, p) = put_plan(&app, org, &owner, "business").await;
        assert_eq!(s, StatusCode::CONFLICT, "{status}: {p}");
        assert_eq!(p["code"], "payment_pending", "{status}: {p}");
        assert_eq!(sub_state(&app, org).await, before, "{status}");
        assert_eq!(app.audit_count(org, "subscription.upgraded").await, 0);
    }
    assert!(fake.requests().is_empty(), "{:?}", fake.requests());
    assert_eq!(
        app.audit_count(crowded, "subscription.downgrade_scheduled")
            .await,
        0
    );
}

#[tokio::test]
async fn stripe_refusing_an_upgrade_is_402_or_502_and_changes_nothing_here() {
    let (fake, app, owner, org, _) = acme_on_stripe("sub_e", "active", "pro").await;
    let before = sub_state(&app, org).await;
    let all_grants = || async {
        scalar_i64(
            &app,
            "select count(*) from credit_grants where org_id = $1",
            org,
        )
        .await
    };
    let grants_before = all_grants().await;
    let unchanged = || async {
        assert_eq!(sub_state(&app, org).await, before);
        assert_eq!(all_grants().await, grants_before);
        assert_eq!(plan_grants(&app, org, 25_000).await, (0, 0));
        assert_eq!(app.audit_count(org, "subscription.upgraded").await, 0);
        assert_eq!(
            fake.subscription("sub_e").unwrap()["metadata"]["plan"],
            "pro"
        );
    };

    // Stripe declines whatever is asked.
    fake.fail_with(402);
    assert_declined(put_plan(&app, org, &owner, "business").await);
    unchanged().await;

    // Stripe declines the update itself (the invoice of the upgrade), after
    // the price was made: 402, asked once (a 402 is not retried).
    fake.succeed();
    fake.fail_requests_to("POST", "/v1/subscriptions/sub_e", 402);
    assert_declined(put_plan(&app, org, &owner, "business").await);
    let updates = fake.requests_with("POST", "/v1/subscriptions/sub_e");
    assert_eq!(updates.len(), 1, "the update was asked once: {updates:?}");
    unchanged().await;

    // Stripe failing on its end: 502, the update retried once with the same key.
    fake.succeed();
    fake.fail_requests_to("POST", "/v1/subscriptions/sub_e", 500);
    assert_provider_error(put_plan(&app, org, &owner, "business").await);
    let updates = fake.requests_with("POST", "/v1/subscriptions/sub_e");
    assert_eq!(updates.len(), 3, "the 500 was retried once: {updates:?}");
    assert!(updates[1].idempotency_key.is_some());
    assert_eq!(
        updates[1].idempotency_key, updates[2].idempotency_key,
        "a retry carries the same Idempotency-Key"
    );
    unchanged().await;

    // Accepted again: the upgrade goes through.
    fake.succeed();
    let body = put_plan_ok(&app, org, &owner, "business").await;
    assert_eq!(body["plan_code"], "business", "{body}");
    assert_eq!(sub_state(&app, org).await.0, "business");
    assert_eq!(plan_grants(&app, org, 25_000).await, (1, 25_000));
}

#[tokio::test]
async fn stripe_managed_subscriptions_cannot_change_their_billing_interval() {
    let (fake, app, owner) = stripe_owner().await;
    // A yearly plan, made by a platform administrator.
    let (s, plan) = app
        .call(
            Method::PUT,
            "/api/v1/admin/plans/pro_year",
            Some(&service_key()),
            Some(json!({
                "name": "Pro yearly", "price_minor": 29000, "currency": "USD",
                "interval": "year", "credits_per_period": 60000, "seat_limit": 20
            })),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{plan}");

    // Monthly pro -> yearly pro (an upgrade by the year's price), monthly
    // business -> yearly pro (a downgrade by the month's): both refused.
    let on_pro = app.create_org(&owner, "Monthly pro").await;
    stripe_managed(&app, &fake, on_pro, "sub_iv_pro", "active", "pro").await;
    let on_business = app.create_org(&owner, "Monthly business").await;
    stripe_managed(&app, &fake, on_business, "sub_iv_biz", "active", "business").await;
    // Yearly pro at Stripe -> monthly business: refused too.
    let yearly = app.create_org(&owner, "Yearly").await;
    let t0 = now() - 100;
    let mut obj = subscription_object(yearly, "sub_iv_year", "active", "pro_year", t0);
    obj["current_period_end"] = json!(t0 + 365 * 86400);
    obj["items"]["data"][0]["price"]["unit_amount"] = json!(29000);
    link(&app, &fake, &obj, t0).await;
    assert_eq!(sub_state(&app, yearly).await.0, "pro_year");

    for (org, target) in [
        (on_pro, "pro_year"),
        (on_business, "pro_year"),
        (yearly, "business"),
    ] {
        let before = sub_state(&app, org).await;
        let (s, p) = put_plan(&app, org, &owner, target).await;
        assert_eq!(s, StatusCode::CONFLICT, "{target}: {p}");
        assert_eq!(p["code"], "interval_change", "{target}: {p}");
        assert_eq!(sub_state(&app, org).await, before, "{target}");
        for action in ["subscription.upgraded", "subscription.downgrade_scheduled"] {
            assert_eq!(app.audit_count(org, action).await, 0, "{target}: {action}");
        }
    }
    assert!(fake.requests().is_empty(), "{:?}", fake.requests());
    assert_eq!(
        fake.subscription("sub_iv_pro").unwrap()["metadata"]["plan"],
        "pro"
    );

    // The same interval still changes (the refusal left nothing in flight).
    let body = put_plan_ok(&app, on_pro, &owner, "business").await;
    assert_eq!(body["plan_code"], "business", "{body}");
}

#[tokio::test]
async fn only_stripes_card_errors_decline_a_plan_change() {
    let (fake, app, owner, org, _) = acme_on_stripe("sub_ce", "active", "pro").await;
    let path = "/v1/subscriptions/sub_ce";
    let before = sub_state(&app, org).await;

    // A 402 that is not a card error: Stripe's problem with the request, 502.
    fake.fail_requests_to_with_body(
        "POST",
        path,
        402,
        json!({"error": {
            "type": "invalid_request_error",
            "message": "This customer has no attached payment source or default payment method."
        }}),
    );
    assert_provider_error(put_plan(&app, org, &owner, "business").await);
    assert_eq!(sub_state(&app, org).await, before);
    assert_eq!(
        fake.subscription("sub_ce").unwrap()["metadata"]["plan"],
        "pro"
    );

    // A card error asking for the customer's authentication (3-D Secure):
    // declined, and the detail says why (Stripe's message here does not).
    fake.fail_requests_to_with_body(
        "POST",
        path,
        402,
        json!({"error": {
            "type": "card_error", "code": "authentication_required",
            "decline_code": "authentication_required",
            "message": "Your card was declined."
        }}),
    );
    let p = assert_error(
        put_plan(&app, org, &owner, "business").await,
        StatusCode::PAYMENT_REQUIRED,
        "payment_declined",
    );
    assert!(
        p["detail"].as_str().unwrap().contains("authentication"),
        "{p}"
    );
    assert_eq!(sub_state(&app, org).await, before);
    assert_eq!(plan_grants(&app, org, 25_000).await, (0, 0));
    assert_eq!(app.audit_count(org, "subscription.upgraded").await, 0);

    // Neither left the change in flight.
    fake.succeed();
    let body = put_plan_ok(&app, org, &owner, "business").await;
    assert_eq!(body["plan_code"], "business", "{body}");
}

#[tokio::test]
async fn a_subscription_stripe_no_longer_has_is_a_conflict_and_changes_nothing() {
    let (fake, app, owner, org, _) = acme_on_stripe("sub_gone", "active", "pro").await;
    let path = "/v1/subscriptions/sub_gone";
    // Deleted at Stripe; its webhook has not arrived.
    fake.forget_subscription("sub_gone");
    let before = sub_state(&app, org).await;
    let row = subscription(&app, org).await;

    // Twice: the first left no change in flight.
    for attempt in 1..=2 {
        let (s, p) = put_plan(&app, org, &owner, "business").await;
        assert_eq!(s, StatusCode::CONFLICT, "#{attempt}: {p}");
        assert_eq!(p["code"], "subscription_changed", "#{attempt}: {p}");
    }
    let asked = sent(&fake);
    assert!(
        asked.len() >= 2 && asked.iter().all(|(m, p)| m == "GET" && p == path),
        "only read: {asked:?}"
    );
    assert_eq!(sub_state(&app, org).await, before);
    assert_eq!(subscription(&app, org).await, row);
    assert_eq!(plan_grants(&app, org, 25_000).await, (0, 0));
    assert_eq!(app.audit_count(org, "subscription.upgraded").await, 0);
}

// ------------------------------------------------------------------ racing Stripe's answers

#[tokio::test]
async fn a_change_against_a_stale_mirror_is_refused_and_the_mirror_catches_up() {
    let (fake, app, owner) = stripe_owner().await;
    // Stripe keeps the period on the subscription (older API versions) or
    // on its item (newer ones).
    for (name, on_items) in [("top-level", false), ("items", true)] {
        let org = app.create_org(&owner, name).await;
        let sub = format!("sub_stale_{}", if on_items { "items" } else { "top" });
        let path = format!("/v1/subscriptions/{sub}");
        let t0 = now() - 100;
        let end = t0 + 30 * 86400;
        let mut obj = managed_object(org, &sub, "active", "business", t0);
        if on_items {
            let o = obj.as_object_mut().unwrap();
            o.remove("current_period_start");
            o.remove("current_period_end");
            obj["items"]["data"][0]["current_period_start"] = json!(t0);
            obj["items"]["data"][0]["current_period_end"] = json!(end);
        }
        link(&app, &fake, &obj, t0).await;
        let before = sub_state(&app, org).await;
        assert_eq!((before.4, before.5), (t0, end), "{name}");

        // Stripe has renewed; its webhook has not arrived yet.
        let mut renewed = obj.clone();
        let period = if on_items {
            &mut renewed["items"]["data"][0]
        } else {
            &mut renewed
        };
        period["current_period_start"] = json!(end);
        period["current_period_end"] = json!(end + 30 * 86400);
        fake.seed_subscription(renewed.clone());
        let prices_before = fake.requests_with("POST", "/v1/prices").len();

        let (s, p) = put_plan(&app, org, &owner, "pro").await;
        assert_eq!(s, StatusCode::CONFLICT, "{name}: {p}");
        assert_eq!(p["code"], "subscription_changed", "{name}: {p}");
        let methods = || {
            fake.requests_to(&path)
                .into_iter()
                .map(|r| r.method)
                .collect::<Vec<_>>()
        };
        let read = methods();
        assert!(
            !read.is_empty() && read.iter().all(|m| m == "GET"),
            "{name}: only read: {read:?}"
        );
        assert_eq!(
            fake.requests_with("POST", "/v1/prices").len(),
            prices_before,
            "{name}"
        );
        // What Stripe has was read back and mirrored (as its webhook will
        // be): the renewal.
        let renewed_state = active_from("business", end);
        assert_ne!(before, renewed_state);
        assert_eq!(sub_state(&app, org).await, renewed_state, "{name}");
        assert_eq!(
            app.audit_count(org, "subscription.downgrade_scheduled")
                .await,
            0,
            "{name}"
        );
        assert!(
            fake.subscription(&sub).unwrap()["metadata"]
                .get("pending_plan")
                .is_none(),
            "{name}"
        );

        // The renewal's webhook arrives: nothing more to change. The change
        // is made on the current state.
        deliver_updated(&app, &format!("evt_{sub}_renewed"), now(), renewed).await;
        assert_eq!(sub_state(&app, org).await, renewed_state, "{name}");
        let (s, body) = put_plan(&app, org, &owner, "pro").await;
        assert_eq!(s, StatusCode::OK, "{name}: {body}");
        assert_eq!(body["plan_code"], "business", "{name}: {body}");
        assert_eq!(body["pending_plan_code"], "pro", "{name}: {body}");
        assert_eq!(methods()[read.len()..], ["GET", "POST"], "{name}");
        let update = fake.requests_with("POST", &path).pop().unwrap();
        let new_end = (end + 30 * 86400).to_string();
        assert_form(
            &update,
            &[
                ("metadata[pending_plan]", "pro"),
                ("metadata[pending_from]", new_end.as_str()),
            ],
        );
        assert_eq!(
            sub_state(&app, org).await,
            state(
                "business",
                "active",
                Some("pro"),
                false,
                (end, end + 30 * 86400)
            ),
            "{name}"
        );
    }
}

#[tokio::test]
async fn one_change_at_stripe_at_a_time_per_org() {
    let (fake, app, owner, org, _) = acme_on_stripe("sub_q", "active", "pro").await;
    let path = "/v1/subscriptions/sub_q";
    let cancel = format!("/api/v1/orgs/{org}/subscription/cancel");
    let resume = format!("/api/v1/orgs/{org}/subscription/resume");

    // An upgrade is at Stripe (which holds the update unanswered): other
    // changes are refused meanwhile, without asking Stripe.
    let (gate, upgrade) = put_plan_held_at_stripe(&app, &fake, org, &owner, "business", path).await;
    assert_error(
        app.post(&cancel, &owner, json!({})).await,
        StatusCode::CONFLICT,
        "change_in_progress",
    );
    // Even the plan it is on until Stripe answers, and the free plan.
    for plan in ["pro", "free"] {
        let (s, p) = put_plan(&app, org, &owner, plan).await;
        assert_eq!(s, StatusCode::CONFLICT, "{plan}: {p}");
        assert_eq!(p["code"], "change_in_progress", "{plan}: {p}");
    }
    assert!(
        !upgrade.is_finished(),
        "the upgrade was still at Stripe during the checks"
    );
    gate.release();
    let (s, body) = upgrade.await.unwrap();
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(body["plan_code"], "business", "{body}");
    assert_eq!(sent(&fake), one_change(path));

    // Done: the next change is accepted at once.
    let (s, body) = app.post(&cancel, &owner, json!({})).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(body["cancel_at_period_end"], true, "{body}");

    // A resumption at Stripe holds off another resumption and a downgrade.
    let gate = fake.hold_requests_to("POST", path);
    let resuming = spawn_call(&app, Method::POST, resume.clone(), &owner.token, json!({}));
    until_received(&fake, "POST", path, 3).await;
    assert_error(
        app.post(&resume, &owner, json!({})).await,
        StatusCode::CONFLICT,
        "change_in_progress",
    );
    assert_error(
        put_plan(&app, org, &owner, "pro").await,
        StatusCode::CONFLICT,
        "change_in_progress",
    );
    assert!(!resuming.is_finished());
    gate.release();
    let (s, body) = resuming.await.unwrap();
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(body["cancel_at_period_end"], false, "{body}");

    // A change Stripe fails (502, after one retry, and Stripe's
    // subscription read back and mirrored) ends too: the next is accepted
    // at once.
    fake.fail_requests_to("POST", path, 500);
    assert_provider_error(app.post(&cancel, &owner, json!({})).await);
    fake.succeed();
    let (s, body) = app.post(&cancel, &owner, json!({})).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(body["cancel_at_period_end"], true, "{body}");

    assert_eq!(
        sent(&fake),
        [
            one_change(path),
            pairs(&[
                ("POST", path),
                ("POST", path),
                ("POST", path),
                ("POST", path),
                ("GET", path),
                ("POST", path),
            ]),
        ]
        .concat(),
        "the refused changes asked Stripe nothing"
    );
    let posts = fake.requests_with("POST", path);
    let cancels: Vec<_> = posts[1..]
        .iter()
        .map(|r| r.field("cancel_at_period_end"))
        .collect();
    assert_eq!(
        cancels,
        [
            Some("true"),
            Some("false"),
            Some("true"),
            Some("true"),
            Some("true")
        ]
    );
    let state = sub_state(&app, org).await;
    assert_eq!(
        (state.0.as_str(), state.2, state.3),
        ("business", None, true)
    );
    assert_eq!(app.audit_count(org, "subscription.upgraded").await, 1);
    assert_eq!(app.audit_count(org, "subscription.resumed").await, 1);
    assert_eq!(
        app.audit_count(org, "subscription.cancel_scheduled").await,
        2
    );
    assert_eq!(
        app.audit_count(org, "subscription.downgrade_scheduled")
            .await,
        0
    );
}

#[tokio::test]
async fn a_renewal_delivered_while_stripe_answers_is_not_undone_by_the_older_answer() {
    let (fake, app, owner, org, obj) = acme_on_stripe("sub_w", "active", "pro").await;
    let (_, end) = period(&obj);
    let path = "/v1/subscriptions/sub_w";

    // Stripe holds its answer to the upgrade; meanwhile an event created
    // after the request was sent (a renewal of pro) is applied. The answer,
    // older than that event, must not overwrite it: it is dated when the
    // request was sent, not (wrongly) when the answer came, which is after
    // the event's second.
    let (gate, upgrade) = put_plan_held_at_stripe(&app, &fake, org, &owner, "business", path).await;
    let mut renewed = obj.clone();
    renewed["current_period_start"] = json!(end);
    renewed["current_period_end"] = json!(end + 30 * 86400);
    renewed["metadata"]["plan"] = json!("pro");
    // Strictly after the second the request was sent in.
    let created = now() + 1;
    deliver_updated(&app, "evt_w_renewed", created, renewed).await;
    let moved = active_from("pro", end);
    assert_eq!(sub_state(&app, org).await, moved);
    assert!(!upgrade.is_finished(), "Stripe was still answering");
    // An answer dated when it came would now be newer than the event.
    until_past(created).await;
    gate.release();

    let (s, body) = upgrade.await.unwrap();
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(sub_state(&app, org).await, moved);
    // The answer is the state as it now is.
    assert_eq!(body["plan_code"], "pro", "{body}");
    assert_eq!(unix_of(&body["current_period_start"]), end, "{body}");
    assert_eq!(
        unix_of(&body["current_period_end"]),
        end + 30 * 86400,
        "{body}"
    );
}

#[tokio::test]
async fn a_subscription_deleted_while_stripe_answers_stays_deleted() {
    let (fake, app, owner, org, obj) = acme_on_stripe("sub_x", "active", "pro").await;
    let path = "/v1/subscriptions/sub_x";

    let (gate, upgrade) = put_plan_held_at_stripe(&app, &fake, org, &owner, "business", path).await;
    let mut gone = obj.clone();
    gone["status"] = json!("canceled");
    gone["canceled_at"] = json!(now());
    deliver(
        &app,
        &event(
            "evt_x_deleted",
            "customer.subscription.deleted",
            now(),
            gone,
        ),
    )
    .await;
    let ended = (
        "canceled".to_owned(),
        "free".to_owned(),
        "manual".to_owned(),
        None,
        false,
    );
    assert_eq!(subscription(&app, org).await, ended);
    assert!(!upgrade.is_finished(), "Stripe was still answering");
    gate.release();

    let (s, body) = upgrade.await.unwrap();
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(body["plan_code"], "free", "{body}");
    assert_eq!(body["status"], "canceled", "{body}");
    assert!(body["pending_plan_code"].is_null(), "{body}");
    assert_eq!(subscription(&app, org).await, ended);
    assert_eq!(sub_state(&app, org).await.2, None);
    assert_eq!(plan_grants(&app, org, 25_000).await, (0, 0));
}

// ------------------------------------------------------------------ lost answers and leases

#[tokio::test]
async fn an_upgrade_whose_answer_is_lost_is_read_back_from_stripe_and_mirrored() {
    let (fake, app, owner, org, obj) = acme_on_stripe("sub_l", "active", "pro").await;
    let (t0, _) = period(&obj);
    let path = "/v1/subscriptions/sub_l";

    // Stripe makes the upgrade but answers 500 (and the same to the retry
    // with the same key): the outcome is unknown here until it is read.
    fake.apply_then_fail_requests_to("POST", path, 500);
    assert_provider_error(put_plan(&app, org, &owner, "business").await);
    assert_eq!(
        sent(&fake),
        [one_change(path), pairs(&[("POST", path), ("GET", path)])].concat()
    );
    let posts = fake.requests_with("POST", path);
    assert!(posts[0].idempotency_key.is_some());
    assert_eq!(posts[0].idempotency_key, posts[1].idempotency_key);
    let at_stripe = fake.subscription("sub_l").unwrap();
    assert_eq!(at_stripe["metadata"]["plan"], "business", "{at_stripe}");
    let new_start = at_stripe["current_period_start"].as_i64().unwrap();
    assert!(new_start > t0, "{at_stripe}");

    // Mirrored from what Stripe has: business, its new period, its credits.
    assert_eq!(
        sub_state(&app, org).await,
        active_from("business", new_start)
    );
    assert_eq!(plan_grants(&app, org, 25_000).await, (1, 25_000));

    // And the change is over: the next is not refused as in progress.
    fake.succeed();
    let before = fake.requests().len();
    let body = put_plan_ok(&app, org, &owner, "business").await;
    assert_eq!(body["plan_code"], "business", "{body}");
    assert_eq!(fake.requests().len(), before, "nothing to ask Stripe");
    // Stripe's event about the upgrade grants nothing more.
    deliver_current(&app, &fake, "sub_l", "evt_l_updated").await;
    assert_eq!(plan_grants(&app, org, 25_000).await, (1, 25_000));
}

#[tokio::test]
async fn a_change_whose_outcome_cannot_be_read_back_keeps_its_lease() {
    let (fake, app, owner, org, _) = acme_on_stripe("sub_m", "active", "pro").await;
    let path = "/v1/subscriptions/sub_m";
    let before = sub_state(&app, org).await;

    // Stripe makes the upgrade but its answer is lost, and from then on it
    // fails every read as well.
    fake.apply_then_fail_requests_to("POST", path, 500);
    let (gate, upgrade) = put_plan_held_at_stripe(&app, &fake, org, &owner, "business", path).await;
    fake.fail_requests_to("GET", path, 500);
    gate.release();
    assert_provider_error(upgrade.await.unwrap());
    assert!(
        fake.requests_with("GET", path).len() >= 2,
        "the outcome was asked for: {:?}",
        sent(&fake)
    );
    assert_eq!(
        fake.subscription("sub_m").unwrap()["metadata"]["plan"],
        "business"
    );

    // Nothing is known here: nothing changed, and the change may still be
    // in flight at Stripe, so no other starts (until its webhook or the
    // lease's end).
    assert_eq!(sub_state(&app, org).await, before);
    assert_eq!(plan_grants(&app, org, 25_000).await, (0, 0));
    let asked = fake.requests().len();
    for plan in ["business", "pro", "free"] {
        let (s, p) = put_plan(&app, org, &owner, plan).await;
        assert_eq!(s, StatusCode::CONFLICT, "{plan}: {p}");
        assert_eq!(p["code"], "change_in_progress", "{plan}: {p}");
    }
    assert_error(
        app.post(
            &format!("/api/v1/orgs/{org}/subscription/cancel"),
            &owner,
            json!({}),
        )
        .await,
        StatusCode::CONFLICT,
        "change_in_progress",
    );
    assert_eq!(fake.requests().len(), asked, "{:?}", sent(&fake));
}

#[tokio::test]
async fn a_read_failing_before_any_change_releases_the_lease() {
    let (fake, app, owner, org, _) = acme_on_stripe("sub_o", "active", "pro").await;
    let before = sub_state(&app, org).await;

    // Stripe fails the first read (nothing was asked to change yet), and
    // every read after it.
    fake.fail_with(500);
    assert_provider_error(put_plan(&app, org, &owner, "business").await);
    assert!(
        sent(&fake).iter().all(|(m, _)| m == "GET"),
        "{:?}",
        sent(&fake)
    );
    assert_eq!(sub_state(&app, org).await, before);
    // Nothing can be in flight: the next change is not held off (and
    // reaches Stripe, failing still).
    assert_provider_error(put_plan(&app, org, &owner, "business").await);
    assert_eq!(sub_state(&app, org).await, before);
}

#[tokio::test]
async fn an_update_stripe_refuses_releases_its_lease_even_when_unread() {
    let (fake, app, owner, org, _) = acme_on_stripe("sub_o", "active", "pro").await;
    let path = "/v1/subscriptions/sub_o";
    let before = sub_state(&app, org).await;

    // Stripe refuses the update itself (a 400: a definite answer, nothing
    // made), then fails the read-back: nothing can be in flight.
    fake.fail_requests_to_with_body(
        "POST",
        path,
        400,
        json!({"error": {
            "type": "invalid_request_error",
            "message": "This subscription cannot be updated right now."
        }}),
    );
    let (gate, upgrade) = put_plan_held_at_stripe(&app, &fake, org, &owner, "business", path).await;
    fake.fail_requests_to("GET", path, 500);
    gate.release();
    assert_provider_error(upgrade.await.unwrap());
    assert_eq!(
        fake.requests_with("POST", path).len(),
        1,
        "a 400 is not retried"
    );
    assert_eq!(sub_state(&app, org).await, before);

    fake.succeed();
    let body = put_plan_ok(&app, org, &owner, "business").await;
    assert_eq!(body["plan_code"], "business", "{body}");
}

#[tokio::test]
async fn a_state_read_back_after_a_lost_answer_is_dated_when_the_change_was_sent() {
    let (fake, app, owner, org, _) = acme_on_stripe("sub_n", "active", "pro").await;
    let path = "/v1/subscriptions/sub_n";

    // The upgrade's answer is lost; the read-back is held at Stripe (the
    // first read, before the change, is let through).
    fake.apply_then_fail_requests_to("POST", path, 500);
    let first_read = fake.hold_requests_to("GET", path);
    let upgrade = spawn_put_plan(&app, org, &owner, "business");
    until_received(&fake, "GET", path, 1).await;
    let read_back = fake.hold_requests_to("GET", path);
    first_read.release();
    until_received(&fake, "GET", path, 2).await;

    // Meanwhile the customer cancels in the billing portal: Stripe's event
    // (created after the change was sent) is applied here.
    let mut canceling = fake.subscription("sub_n").unwrap();
    assert_eq!(canceling["metadata"]["plan"], "business", "{canceling}");
    canceling["cancel_at_period_end"] = json!(true);
    let new_start = canceling["current_period_start"].as_i64().unwrap();
    let created = now() + 1;
    deliver_updated(&app, "evt_n_canceling", created, canceling).await;
    let canceled_state = state(
        "business",
        "active",
        None,
        true,
        (new_start, new_start + 30 * 86400),
    );
    assert_eq!(sub_state(&app, org).await, canceled_state);
    // A read-back dated when it was answered would now be newer than the event.
    until_past(created).await;
    assert!(!upgrade.is_finished(), "Stripe was still answering");
    read_back.release();

    assert_provider_error(upgrade.await.unwrap());
    assert_eq!(
        sub_state(&app, org).await,
        canceled_state,
        "the older read-back does not undo the newer event"
    );
    assert_eq!(plan_grants(&app, org, 25_000).await, (1, 25_000));
}

// ------------------------------------------------------------------ credits of superseded periods

#[tokio::test]
async fn a_stripe_upgrade_ends_the_old_periods_credits() {
    // No free-plan credits: the balance is the plans' alone.
    let (fake, app, owner, org) = acme_without_free_credits().await;
    let obj = stripe_managed(&app, &fake, org, "sub_g", "active", "pro").await;
    let (t0, _) = period(&obj);
    let pro_ref = format!(
        "period:{org}:{}",
        chrono::DateTime::from_timestamp(t0, 0)
            .unwrap()
            .to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
    );
    assert_eq!(balance(&app, org, &owner).await, 5000);
    let (s, body) = spend(&app, org, &owner, 1000).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(balance(&app, org, &owner).await, 4000);

    let body = put_plan_ok(&app, org, &owner, "business").await;
    assert_eq!(body["plan_code"], "business", "{body}");

    // Stripe credited the unused part of pro: pro's grant ends now.
    let (pro_grant, remaining): (Uuid, i64) =
        sqlx::query_as("select id, remaining from credit_grants where org_id = $1 and ref = $2")
            .bind(org)
            .bind(&pro_ref)
            .fetch_one(&app.db.admin)
            .await
            .unwrap();
    assert_eq!(remaining, 0);
    assert_eq!(expired_from(&app, org, pro_grant).await, vec![4000]);
    assert_eq!(plan_grants(&app, org, 25_000).await, (1, 25_000));
    assert_eq!(balance(&app, org, &owner).await, 25_000);

    // Stripe's event about the change expires nothing more.
    deliver_current(&app, &fake, "sub_g", "evt_g_updated").await;
    assert_eq!(expired_from(&app, org, pro_grant).await, vec![4000]);
    let expirations = scalar_i64(
        &app,
        "select count(*) from credit_ledger where org_id = $1 and kind = 'expire'",
        org,
    )
    .await;
    assert_eq!(expirations, 1);
    assert_eq!(balance(&app, org, &owner).await, 25_000);
}

#[tokio::test]
async fn an_upgrade_made_at_stripe_alone_ends_the_old_periods_credits() {
    // No free-plan credits: the balance is pro's and the promotion's.
    let (fake, app, owner, org) = acme_without_free_credits().await;
    let obj = stripe_managed(&app, &fake, org, "sub_h", "active", "pro").await;
    let res = app
        .client
        .post(format!("{}/api/v1/orgs/{org}/credits/grants", app.base))
        .bearer_auth(service_key())
        .header("Idempotency-Key", Uuid::new_v4().to_string())
        .json(&json!({"amount": 300, "source": "promotion"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    let granted = res.json::<Value>().await.unwrap();
    let promotion: Uuid = granted["grant"]["id"].as_str().unwrap().parse().unwrap();
    let (s, body) = spend(&app, org, &owner, 1000).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(balance(&app, org, &owner).await, 4300);
    let (pro, left) = period_grant(&app, org, 5000).await;
    assert_eq!(left, 4000, "pro's credits are spent first");

    // The customer upgrades in Stripe's billing portal: no PUT here, only
    // Stripe's event, with a new period starting in the middle of pro's.
    let start = now();
    let mut upgraded = subscription_object(org, "sub_h", "active", "business", start);
    upgraded["customer"] = obj["customer"].clone();
    upgraded["items"]["data"][0]["price"]["unit_amount"] = json!(9900);
    deliver_updated(&app, "evt_h_upgraded", now(), upgraded).await;
    assert_eq!(sub_state(&app, org).await, active_from("business", start));
    assert_eq!(plan_grants(&app, org, 25_000).await, (1, 25_000));
    assert_eq!(period_grant(&app, org, 5000).await, (pro, 0));
    assert_eq!(expired_from(&app, org, pro).await, vec![4000]);
    assert_eq!(
        all_expired(&app, org).await,
        vec![4000],
        "the promotion stays"
    );
    assert_eq!(balance(&app, org, &owner).await, 25_000 + 300);
    let promotion_left: i64 =
        sqlx::query_scalar("select remaining from credit_grants where org_id = $1 and id = $2")
            .bind(org)
            .bind(promotion)
            .fetch_one(&app.db.admin)
            .await
            .unwrap();
    assert_eq!(promotion_left, 300);
}

#[tokio::test]
async fn the_free_plans_credits_end_when_the_first_stripe_period_starts() {
    // (The fake Stripe answers the checkout.)
    let (_fake, app, owner, org) = acme().await;
    // The free plan's 100 credits of the org's first period, 30 spent.
    let (free, left) = period_grant(&app, org, 100).await;
    assert_eq!(left, 100);
    let (s, body) = spend(&app, org, &owner, 30).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(balance(&app, org, &owner).await, 70);

    // Checkout of pro, completed: linked, nothing granted or ended yet.
    let (s, session) = checkout(&app, org, &owner, "pro").await;
    assert_eq!(s, StatusCode::OK, "{session}");
    let completed =
        completed_subscription_checkout(org, &session["id"], "cus_test_1", "sub_first", "pro");
    deliver(
        &app,
        &event(
            "evt_first_completed",
            "checkout.session.completed",
            now(),
            completed,
        ),
    )
    .await;
    assert_eq!(balance(&app, org, &owner).await, 70);

    // Stripe's first period of pro starts: the free period's credits end.
    let start = now() - 10;
    let mut obj = subscription_object(org, "sub_first", "active", "pro", start);
    obj["customer"] = json!("cus_test_1");
    deliver(
        &app,
        &event(
            "evt_first_created",
            "customer.subscription.created",
            now(),
            obj,
        ),
    )
    .await;
    assert_eq!(sub_state(&app, org).await.0, "pro");
    assert_eq!(period_grant(&app, org, 100).await, (free, 0));
    assert_eq!(expired_from(&app, org, free).await, vec![70]);
    assert_eq!(plan_grants(&app, org, 5000).await, (1, 5000));
    assert_eq!(balance(&app, org, &owner).await, 5000);
}

#[tokio::test]
async fn superseded_credits_lent_to_open_holds_end_too() {
    let (fake, app, owner, org) = acme_without_free_credits().await;
    stripe_managed(&app, &fake, org, "sub_hold", "active", "pro").await;
    let (pro, _) = period_grant(&app, org, 5000).await;
    let holds = format!("/api/v1/orgs/{org}/credits/holds");

    // All of pro's credits are held, by two holds.
    let mut ids = Vec::new();
    for amount in [3000, 2000] {
        let (s, h) = keyed_post(&app, &owner, &holds, Some(json!({ "amount": amount }))).await;
        assert_eq!(s, StatusCode::CREATED, "{h}");
        ids.push(h["hold"]["id"].as_str().unwrap().to_owned());
    }
    assert_eq!(period_grant(&app, org, 5000).await, (pro, 0));
    assert_eq!(balance(&app, org, &owner).await, 0);

    let body = put_plan_ok(&app, org, &owner, "business").await;
    assert_eq!(body["plan_code"], "business", "{body}");
    assert_eq!(balance(&app, org, &owner).await, 25_000);
    assert_eq!(expired_from(&app, org, pro).await, Vec::<i64>::new());

    // Released: pro's credits come back expired, adding nothing.
    let (s, r) = keyed_post(&app, &owner, &format!("{holds}/{}/release", ids[0]), None).await;
    assert_eq!(s, StatusCode::OK, "{r}");
    assert_eq!(r["hold"]["status"], "released", "{r}");
    assert_eq!(r["balance"], 25_000, "{r}");
    assert_eq!(expired_from(&app, org, pro).await, vec![3000]);
    assert_eq!(period_grant(&app, org, 5000).await, (pro, 0));

    // Captured: the held credits are still spent.
    let (s, r) = keyed_post(
        &app,
        &owner,
        &format!("{holds}/{}/capture", ids[1]),
        Some(json!({})),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{r}");
    assert_eq!(r["hold"]["status"], "captured", "{r}");
    assert_eq!(r["hold"]["captured"], 2000, "{r}");
    assert_eq!(r["balance"], 25_000, "{r}");
    assert_eq!(expired_from(&app, org, pro).await, vec![3000]);
    assert_eq!(balance(&app, org, &owner).await, 25_000);
}

// ------------------------------------------------------------------ the price paid

/// The grandfathered business price the `acme_on_legacy_business`
/// subscription's item is on (79.00 where the catalog now says 99.00).
const LEGACY_PRICE: &str = "price_legacy_business";

/// Adds Starter to the catalog (superuser): 9.00 USD a month, 1,000 credits
/// a period, 3 seats, no trial, sorted first among the paid plans.
async fn add_starter_plan(app: &TestApp) {
    sqlx::query(
        "insert into plans (code, name, price_minor, currency, billing_interval, trial_days,
                            credits_per_period, seat_limit, features, sort_order)
         values ($1, $2, $3, 'USD', $4, 0, $5, $6, '{}', 1)",
    )
    .bind("starter")
    .bind("Starter")
    .bind(900_i64)
    .bind("month")
    .bind(1000_i64)
    .bind(Some(3_i32))
    .execute(&app.db.admin)
    .await
    .unwrap();
}

/// `acme` on business at Stripe (`sub`, linked as `stripe_managed` does),
/// its item on the grandfathered `LEGACY_PRICE` (a price with an id, as
/// Stripe has it), with Starter and Enterprise in the catalog. Also returns
/// the subscription as linked.
async fn acme_on_legacy_business(sub: &str) -> AcmeOnStripe {
    let (fake, app, owner, org) = acme().await;
    add_starter_plan(&app).await;
    add_enterprise_plan(&app).await;
    let t0 = now() - 100;
    let mut obj = managed_object(org, sub, "active", "business", t0);
    obj["items"]["data"][0]["price"] = json!({
        "id": LEGACY_PRICE, "object": "price", "unit_amount": 7900, "currency": "usd",
        "recurring": {"interval": "month"}
    });
    link(&app, &fake, &obj, t0).await;
    assert_eq!(sub_state(&app, org).await, active_from("business", t0));
    (fake, app, owner, org, obj)
}

/// The id of the price the item of `sub` is on at Stripe now.
fn item_price_id(fake: &FakeStripe, sub: &str) -> String {
    let at_stripe = fake.subscription(sub).unwrap();
    at_stripe["items"]["data"][0]["price"]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("no price id: {at_stripe}"))
        .to_owned()
}

/// Asserts that Stripe's metadata of `sub` has none of `keys`.
fn assert_no_metadata(fake: &FakeStripe, sub: &str, keys: &[&str]) {
    let at_stripe = fake.subscription(sub).unwrap();
    for key in keys {
        assert!(
            at_stripe["metadata"].get(key).is_none(),
            "{key}: {at_stripe}"
        );
    }
}

/// Asserts a revert to `plan` made with the paid price `paid`: no price
/// made, the item moved back to `paid` from the renewal (no proration, no
/// payment now), the pending downgrade and the paid price cleared.
fn assert_revert_to_paid_price(r: &Recorded, plan: &str, paid: &str) {
    assert_unprorated_form(r, plan, "", "");
    assert_form(
        r,
        &[("items[0][price]", paid), ("metadata[paid_price]", "")],
    );
    for absent in ["billing_cycle_anchor", "trial_end", "payment_behavior"] {
        assert_eq!(r.field(absent), None, "{absent}: {:?}", r.form);
    }
}

#[tokio::test]
async fn a_downgrade_taken_back_returns_to_the_price_paid_not_the_catalogs() {
    let (fake, app, owner, org, obj) = acme_on_legacy_business("sub_pp").await;
    let (t0, end) = period(&obj);
    let path = "/v1/subscriptions/sub_pp";

    // The downgrade records the price paid now.
    schedule_downgrade(&app, org, &owner, "pro").await;
    assert_eq!(sent(&fake), one_change(path));
    let downgrade = &fake.requests_with("POST", path)[0];
    assert_unprorated_form(downgrade, "business", "pro", &end.to_string());
    assert_form(downgrade, &[("metadata[paid_price]", LEGACY_PRICE)]);
    let pro_price = item_price_id(&fake, "sub_pp");
    assert_ne!(pro_price, LEGACY_PRICE);
    assert_eq!(downgrade.field("items[0][price]"), Some(pro_price.as_str()));
    let at_stripe = fake.subscription("sub_pp").unwrap();
    assert_eq!(at_stripe["metadata"]["paid_price"], LEGACY_PRICE);

    // Taken back: to the legacy price, not a new one at the catalog's.
    let asked_before = fake.requests().len();
    let body = put_plan_ok(&app, org, &owner, "business").await;
    let asked = fake.requests()[asked_before..].to_vec();
    assert_eq!(
        method_paths(&asked),
        pairs(&[("GET", path), ("POST", path)]),
        "no price is made"
    );
    assert_revert_to_paid_price(&asked[1], "business", LEGACY_PRICE);
    assert_eq!(item_price_id(&fake, "sub_pp"), LEGACY_PRICE);
    let at_stripe = fake.subscription("sub_pp").unwrap();
    assert_eq!(at_stripe["items"]["data"][0]["price"]["unit_amount"], 7900);
    assert_eq!(at_stripe["metadata"]["plan"], "business", "{at_stripe}");
    assert_eq!(at_stripe["current_period_start"], t0, "{at_stripe}");
    assert_no_metadata(
        &fake,
        "sub_pp",
        &["paid_price", "pending_plan", "pending_from"],
    );

    // Here: business, nothing pending.
    assert_eq!(body["plan_code"], "business", "{body}");
    assert!(body["pending_plan_code"].is_null(), "{body}");
    let reverted = state("business", "active", None, false, (t0, end));
    assert_eq!(sub_state(&app, org).await, reverted);
    assert_eq!(
        app.audit_count(org, "subscription.downgrade_canceled")
            .await,
        1
    );
    // Stripe's event about the revert keeps it so.
    deliver_current(&app, &fake, "sub_pp", "evt_pp_reverted").await;
    assert_eq!(sub_state(&app, org).await, reverted);
}

#[tokio::test]
async fn a_second_downgrade_keeps_the_price_paid_for_the_period() {
    let (fake, app, owner, org, obj) = acme_on_legacy_business("sub_pp2").await;
    let (t0, end) = period(&obj);
    let path = "/v1/subscriptions/sub_pp2";

    schedule_downgrade(&app, org, &owner, "pro").await;
    let pro_price = item_price_id(&fake, "sub_pp2");
    // business -> starter, pro pending: the paid price is still the legacy
    // one (not pro's, which the item is on now).
    let body = schedule_downgrade(&app, org, &owner, "starter").await;
    assert_eq!(body["plan_code"], "business", "{body}");
    assert_eq!(sent(&fake), [one_change(path), one_change(path)].concat());
    let prices = fake.requests_with("POST", "/v1/prices");
    assert_price_form(&prices[1], "900", "Starter", "starter");
    let second = &fake.requests_with("POST", path)[1];
    assert_unprorated_form(second, "business", "starter", &end.to_string());
    assert_form(second, &[("metadata[paid_price]", LEGACY_PRICE)]);
    let starter_price = item_price_id(&fake, "sub_pp2");
    assert_ne!(starter_price, pro_price);
    assert_eq!(
        second.field("items[0][price]"),
        Some(starter_price.as_str())
    );
    assert_eq!(
        fake.subscription("sub_pp2").unwrap()["metadata"]["paid_price"],
        LEGACY_PRICE
    );
    assert_eq!(
        sub_state(&app, org).await,
        state("business", "active", Some("starter"), false, (t0, end))
    );

    // Taken back: to the legacy price, no price made.
    let asked_before = fake.requests().len();
    let body = put_plan_ok(&app, org, &owner, "business").await;
    let asked = fake.requests()[asked_before..].to_vec();
    assert_eq!(
        method_paths(&asked),
        pairs(&[("GET", path), ("POST", path)])
    );
    assert_revert_to_paid_price(&asked[1], "business", LEGACY_PRICE);
    assert_eq!(item_price_id(&fake, "sub_pp2"), LEGACY_PRICE);
    assert_no_metadata(
        &fake,
        "sub_pp2",
        &["paid_price", "pending_plan", "pending_from"],
    );
    assert!(body["pending_plan_code"].is_null(), "{body}");
    assert_eq!(
        sub_state(&app, org).await,
        state("business", "active", None, false, (t0, end))
    );
}

#[tokio::test]
async fn an_upgrade_over_a_pending_downgrade_restores_the_price_paid_without_making_one() {
    let (fake, app, owner, org, _) = acme_on_legacy_business("sub_pp3").await;
    let path = "/v1/subscriptions/sub_pp3";
    schedule_downgrade(&app, org, &owner, "pro").await;
    let asked_before = fake.requests().len();

    let body = put_plan_ok(&app, org, &owner, "enterprise").await;
    let asked = fake.requests()[asked_before..].to_vec();
    assert_eq!(
        method_paths(&asked),
        pairs(&[
            ("GET", path),
            ("POST", path),
            ("POST", "/v1/prices"),
            ("POST", path),
        ]),
        "one price made: enterprise's"
    );
    // The restore: back to the legacy price, the paid price cleared.
    assert_revert_to_paid_price(&asked[1], "business", LEGACY_PRICE);
    assert_price_form(&asked[2], "19900", "Enterprise", "enterprise");
    // Then the upgrade itself, paid now.
    let upgrade = &asked[3];
    assert_upgrade_form(upgrade, "enterprise", ("billing_cycle_anchor", "now"));
    let enterprise_price = fake.price(upgrade.field("items[0][price]").unwrap());
    assert_eq!(enterprise_price.unwrap()["unit_amount"], 19900);
    assert_eq!(fake.requests_with("POST", "/v1/prices").len(), 2);

    let at_stripe = fake.subscription("sub_pp3").unwrap();
    assert_eq!(at_stripe["items"]["data"][0]["price"]["unit_amount"], 19900);
    assert_eq!(at_stripe["metadata"]["plan"], "enterprise", "{at_stripe}");
    assert_no_metadata(
        &fake,
        "sub_pp3",
        &["paid_price", "pending_plan", "pending_from"],
    );
    let new_start = at_stripe["current_period_start"].as_i64().unwrap();
    assert_eq!(body["plan_code"], "enterprise", "{body}");
    assert!(body["pending_plan_code"].is_null(), "{body}");
    assert_eq!(
        sub_state(&app, org).await,
        active_from("enterprise", new_start)
    );
    assert_eq!(plan_grants(&app, org, 100_000).await, (1, 100_000));
}

#[tokio::test]
async fn the_price_paid_is_forgotten_once_the_downgrade_took_effect() {
    let (fake, app, owner, org, obj) = acme_on_legacy_business("sub_pp4").await;
    let (_, end) = period(&obj);
    let path = "/v1/subscriptions/sub_pp4";

    schedule_downgrade(&app, org, &owner, "pro").await;
    let pro_price = item_price_id(&fake, "sub_pp4");
    // Stripe renews: the downgrade takes effect (its metadata, paid price
    // included, stays as it was).
    let mut renewed = fake.subscription("sub_pp4").unwrap();
    assert_eq!(renewed["metadata"]["paid_price"], LEGACY_PRICE);
    renewed["current_period_start"] = json!(end);
    renewed["current_period_end"] = json!(end + 30 * 86400);
    fake.seed_subscription(renewed);
    deliver_current(&app, &fake, "sub_pp4", "evt_pp4_renewed").await;
    assert_eq!(sub_state(&app, org).await, active_from("pro", end));

    // pro -> starter: the price paid now is pro's, not the legacy one.
    let new_end = (end + 30 * 86400).to_string();
    schedule_downgrade(&app, org, &owner, "starter").await;
    let posts = fake.requests_with("POST", path);
    assert_eq!(posts.len(), 2);
    assert_unprorated_form(&posts[1], "pro", "starter", &new_end);
    assert_form(&posts[1], &[("metadata[paid_price]", pro_price.as_str())]);
    assert_eq!(
        fake.subscription("sub_pp4").unwrap()["metadata"]["paid_price"],
        pro_price.as_str()
    );

    // And taking that back returns to pro's price, with no price made.
    let prices_before = fake.requests_with("POST", "/v1/prices").len();
    let body = put_plan_ok(&app, org, &owner, "pro").await;
    assert!(body["pending_plan_code"].is_null(), "{body}");
    assert_eq!(
        fake.requests_with("POST", "/v1/prices").len(),
        prices_before
    );
    let revert = fake.requests_with("POST", path).pop().unwrap();
    assert_revert_to_paid_price(&revert, "pro", &pro_price);
    assert_eq!(item_price_id(&fake, "sub_pp4"), pro_price);
    assert_eq!(sub_state(&app, org).await, active_from("pro", end));
}
