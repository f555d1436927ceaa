//! Subscriptions over real HTTP and Postgres: the free plan every org starts
//! on, upgrades now, downgrades and cancellations at the end of the period,
//! seat limits (also under concurrency), entitlements, and the period
//! rollover granting each period's credits once.

use crate::common::*;

use chrono::{DateTime, Utc};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tenantry::billing::subscriptions::{self, RolloverReport};
use tenantry::config::PaymentProviderKind;
use tenantry::jobs::Job;
use uuid::Uuid;

// ------------------------------------------------------------------ helpers

async fn put(app: &TestApp, path: &str, user: &TestUser, body: Value) -> (StatusCode, Value) {
    app.call(Method::PUT, path, Some(&user.token), Some(body))
        .await
}

async fn change_plan(app: &TestApp, org: Uuid, user: &TestUser, plan: &str) -> (StatusCode, Value) {
    put(
        app,
        &format!("/api/v1/orgs/{org}/subscription"),
        user,
        json!({ "plan": plan }),
    )
    .await
}

async fn subscription(app: &TestApp, org: Uuid, user: &TestUser) -> Value {
    let (s, body) = app
        .get(&format!("/api/v1/orgs/{org}/subscription"), user)
        .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    body
}

fn time(v: &Value) -> DateTime<Utc> {
    v.as_str()
        .unwrap_or_else(|| panic!("not a time: {v}"))
        .parse()
        .unwrap()
}

/// One grant as stored.
#[derive(Debug, sqlx::FromRow)]
struct Grant {
    source: String,
    amount: i64,
    priority: i32,
    expires_at: Option<DateTime<Utc>>,
    #[sqlx(rename = "ref")]
    reference: Option<String>,
}

/// The org's grants, oldest first (superuser, ignoring RLS).
async fn grants(app: &TestApp, org: Uuid) -> Vec<Grant> {
    sqlx::query_as(
        "select source, amount, priority, expires_at, ref from credit_grants
         where org_id = $1 order by created_at, id",
    )
    .bind(org)
    .fetch_all(&app.db.admin)
    .await
    .unwrap()
}

fn period_ref(org: Uuid, start: DateTime<Utc>) -> String {
    format!(
        "period:{org}:{}",
        start.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
    )
}

/// Moves the org's period (and trial) so that it ended `ago` (superuser).
async fn make_due(app: &TestApp, org: Uuid, ago: &str) {
    let n = sqlx::query(sqlx::AssertSqlSafe(format!(
        "update subscriptions
         set current_period_end = now() - interval '{ago}',
             current_period_start = now() - interval '{ago}' - interval '1 month',
             trial_end = case when trial_end is null then null else now() - interval '{ago}' end
         where org_id = $1"
    )))
    .bind(org)
    .execute(&app.db.admin)
    .await
    .unwrap()
    .rows_affected();
    assert_eq!(n, 1);
}

async fn rollover(app: &TestApp) -> RolloverReport {
    subscriptions::rollover_due(&app.db.app, PaymentProviderKind::Manual)
        .await
        .unwrap()
}

async fn audit_actions(app: &TestApp, org: Uuid) -> Vec<String> {
    sqlx::query_scalar(
        "select action from audit_log where org_id = $1 and target_type = 'subscription' order by id",
    )
    .bind(org)
    .fetch_all(&app.db.admin)
    .await
    .unwrap()
}

async fn invoices(app: &TestApp, org: Uuid) -> Vec<(i64, String, DateTime<Utc>)> {
    sqlx::query_as(
        "select amount_due_minor, currency, period_start from invoices
         where org_id = $1 order by created_at",
    )
    .bind(org)
    .fetch_all(&app.db.admin)
    .await
    .unwrap()
}

async fn invite(app: &TestApp, org: Uuid, by: &TestUser, email: &str) -> (StatusCode, Value) {
    app.post(
        &format!("/api/v1/orgs/{org}/invitations"),
        by,
        json!({ "email": email, "role": "member" }),
    )
    .await
}

async fn members(app: &TestApp, org: Uuid) -> i64 {
    sqlx::query_scalar("select count(*) from memberships where org_id = $1")
        .bind(org)
        .fetch_one(&app.db.admin)
        .await
        .unwrap()
}

async fn set_seats(app: &TestApp, plan: &str, seats: Option<i32>) {
    sqlx::query("update plans set seat_limit = $2 where code = $1")
        .bind(plan)
        .bind(seats)
        .execute(&app.db.admin)
        .await
        .unwrap();
}

// ------------------------------------------------------------------ new orgs

#[tokio::test]
async fn a_new_org_starts_on_free_with_its_first_period_of_credits() {
    let app = TestApp::spawn().await;
    let ann = app.user("ann@example.com");
    let before = Utc::now();
    let org = app.create_org(&ann, "Acme").await;

    let sub = subscription(&app, org, &ann).await;
    assert_eq!(sub["org_id"], org.to_string());
    assert_eq!(sub["plan_code"], "free");
    assert_eq!(sub["status"], "active");
    assert_eq!(sub["plan"]["code"], "free");
    assert_eq!(sub["plan"]["seat_limit"], 3);
    assert!(sub["pending_plan"].is_null() && sub["pending_plan_code"].is_null());
    assert_eq!(sub["cancel_at_period_end"], false);
    assert_eq!(sub["trial_used"], false);
    let start = time(&sub["current_period_start"]);
    let end = time(&sub["current_period_end"]);
    assert!(start >= before - chrono::Duration::seconds(1) && start <= Utc::now());
    assert_eq!(
        end,
        start.checked_add_months(chrono::Months::new(1)).unwrap()
    );

    // The first period's credits, granted once with the period's reference.
    let g = grants(&app, org).await;
    assert_eq!(g.len(), 1, "{g:?}");
    assert_eq!(g[0].source, "plan_period");
    assert_eq!(g[0].amount, 100);
    assert_eq!(g[0].priority, 10);
    assert_eq!(g[0].expires_at, Some(end));
    assert_eq!(
        g[0].reference.as_deref(),
        Some(period_ref(org, start).as_str())
    );
    assert!(audit_actions(&app, org).await.is_empty());

    // Another org has its own.
    let bob = app.user("bob@example.com");
    let other = app.create_org(&bob, "Other").await;
    assert_eq!(grants(&app, other).await.len(), 1);
    assert_eq!(grants(&app, org).await.len(), 1);
    // And sees only its own subscription; the first org's is 404 to bob.
    let (s, _) = app
        .get(&format!("/api/v1/orgs/{org}/subscription"), &bob)
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

// ------------------------------------------------------------------ upgrades

#[tokio::test]
async fn an_upgrade_applies_now_with_a_trial_once_and_the_new_plans_credits() {
    let app = TestApp::spawn().await;
    let ann = app.user("ann@example.com");
    let org = app.create_org(&ann, "Acme").await;
    let first = subscription(&app, org, &ann).await;

    // Free -> pro: now, as a 14-day trial that is the first period.
    let (s, sub) = change_plan(&app, org, &ann, "pro").await;
    assert_eq!(s, StatusCode::OK, "{sub}");
    assert_eq!(sub["plan_code"], "pro");
    assert_eq!(sub["plan"]["code"], "pro");
    assert_eq!(sub["status"], "trialing");
    assert_eq!(sub["trial_used"], true);
    let start = time(&sub["current_period_start"]);
    let end = time(&sub["current_period_end"]);
    assert!(start > time(&first["current_period_start"]));
    assert_eq!(time(&sub["trial_end"]), start + chrono::Duration::days(14));
    assert_eq!(end, start + chrono::Duration::days(14));
    let g = grants(&app, org).await;
    assert_eq!(g.len(), 2, "{g:?}");
    assert_eq!(g[1].amount, 5000);
    assert_eq!(g[1].source, "plan_period");
    assert_eq!(g[1].expires_at, Some(end));
    assert_eq!(
        g[1].reference.as_deref(),
        Some(period_ref(org, start).as_str())
    );
    // No invoice for a trial.
    assert!(invoices(&app, org).await.is_empty());

    // Pro -> business: an upgrade again; the trial was used: active, a month, invoiced.
    let (s, sub) = change_plan(&app, org, &ann, "business").await;
    assert_eq!(s, StatusCode::OK, "{sub}");
    assert_eq!(sub["plan_code"], "business");
    assert_eq!(sub["status"], "active");
    assert!(sub["trial_end"].is_null());
    let start = time(&sub["current_period_start"]);
    let end = time(&sub["current_period_end"]);
    assert_eq!(
        end,
        start.checked_add_months(chrono::Months::new(1)).unwrap()
    );
    let g = grants(&app, org).await;
    assert_eq!(g.len(), 3, "{g:?}");
    assert_eq!(g[2].amount, 25000);
    assert_eq!(
        g[2].reference.as_deref(),
        Some(period_ref(org, start).as_str())
    );
    let inv = invoices(&app, org).await;
    assert_eq!(inv.len(), 1, "{inv:?}");
    assert_eq!(inv[0].0, 9900);
    assert_eq!(inv[0].1, "USD");
    assert_eq!(inv[0].2, start);
    // Nothing was refunded: the manual provider's upgrade leaves the old
    // period's credits to run out with their period.
    let (expired, pro_left): (i64, i64) = sqlx::query_as(
        "select (select count(*) from credit_ledger where org_id = $1 and kind = 'expire'),
                (select remaining from credit_grants where org_id = $1 and amount = 5000)",
    )
    .bind(org)
    .fetch_one(&app.db.admin)
    .await
    .unwrap();
    assert_eq!((expired, pro_left), (0, 5000));

    // The same plan again changes nothing.
    let (s, same) = change_plan(&app, org, &ann, "business").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(same["current_period_start"], sub["current_period_start"]);
    assert_eq!(grants(&app, org).await.len(), 3);
    assert_eq!(
        audit_actions(&app, org).await,
        ["subscription.upgraded", "subscription.upgraded"]
    );
}

#[tokio::test]
async fn same_price_with_more_seats_is_an_upgrade() {
    let app = TestApp::spawn().await;
    let ann = app.user("ann@example.com");
    let org = app.create_org(&ann, "Acme").await;
    for (code, seats) in [("solo", 1), ("duo", 2)] {
        let (s, body) = app
            .call(
                Method::PUT,
                &format!("/api/v1/admin/plans/{code}"),
                Some(&service_key()),
                Some(json!({ "name": code, "price_minor": 0, "currency": "USD",
                             "interval": "month", "seat_limit": seats })),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{body}");
    }
    // free (3 seats, 0) -> duo (2 seats, 0): fewer seats, a downgrade.
    let (s, sub) = change_plan(&app, org, &ann, "duo").await;
    assert_eq!(s, StatusCode::OK, "{sub}");
    assert_eq!(sub["plan_code"], "free");
    assert_eq!(sub["pending_plan_code"], "duo");
    // Back to free: the pending downgrade is dropped.
    let (s, sub) = change_plan(&app, org, &ann, "free").await;
    assert_eq!(s, StatusCode::OK);
    assert!(sub["pending_plan_code"].is_null());
    let (_, sub) = change_plan(&app, org, &ann, "solo").await;
    assert_eq!(sub["pending_plan_code"], "solo");
    // solo (1 seat) -> duo (2 seats), same price: an upgrade, now.
    sqlx::query(
        "update subscriptions set plan_code = 'solo', pending_plan_code = null where org_id = $1",
    )
    .bind(org)
    .execute(&app.db.admin)
    .await
    .unwrap();
    let (s, sub) = change_plan(&app, org, &ann, "duo").await;
    assert_eq!(s, StatusCode::OK, "{sub}");
    assert_eq!(sub["plan_code"], "duo");
    assert!(sub["pending_plan_code"].is_null());
    assert!(
        audit_actions(&app, org)
            .await
            .contains(&"subscription.downgrade_canceled".to_owned())
    );
}

// ------------------------------------------------------------------ downgrades, cancellation

#[tokio::test]
async fn a_downgrade_waits_for_the_period_end_and_the_rollover_applies_it() {
    let app = TestApp::spawn().await;
    let ann = app.user("ann@example.com");
    let org = app.create_org(&ann, "Acme").await;
    let (s, _) = change_plan(&app, org, &ann, "business").await;
    assert_eq!(s, StatusCode::OK);

    let (s, sub) = change_plan(&app, org, &ann, "pro").await;
    assert_eq!(s, StatusCode::OK, "{sub}");
    assert_eq!(sub["plan_code"], "business");
    assert_eq!(sub["status"], "trialing");
    assert_eq!(sub["pending_plan_code"], "pro");
    assert_eq!(sub["pending_plan"]["code"], "pro");
    assert_eq!(sub["pending_plan"]["price_minor"], 2900);
    let grants_before = grants(&app, org).await.len();
    assert_eq!(grants_before, 2);

    // Nothing is due yet: the rollover leaves it alone.
    assert_eq!(rollover(&app).await.advanced, 0);
    assert_eq!(subscription(&app, org, &ann).await["plan_code"], "business");

    make_due(&app, org, "1 minute").await;
    let due = subscription(&app, org, &ann).await;
    let old_end = time(&due["current_period_end"]);
    let report = rollover(&app).await;
    assert_eq!(report.advanced, 1, "{report:?}");
    let sub = subscription(&app, org, &ann).await;
    assert_eq!(sub["plan_code"], "pro");
    assert!(sub["pending_plan_code"].is_null() && sub["pending_plan"].is_null());
    assert_eq!(sub["status"], "active", "the trial ended with the period");
    assert_eq!(time(&sub["current_period_start"]), old_end);
    assert_eq!(
        time(&sub["current_period_end"]),
        old_end.checked_add_months(chrono::Months::new(1)).unwrap()
    );
    let g = grants(&app, org).await;
    assert_eq!(g.len(), grants_before + 1, "{g:?}");
    assert_eq!(g.last().unwrap().amount, 5000);
    assert_eq!(
        g.last().unwrap().reference.as_deref(),
        Some(period_ref(org, old_end).as_str())
    );
    // The first paid period of the manual provider is invoiced.
    let inv = invoices(&app, org).await;
    assert_eq!(inv.len(), 1, "{inv:?}");
    assert_eq!((inv[0].0, inv[0].2), (2900, old_end));
    let actions = audit_actions(&app, org).await;
    assert!(actions.contains(&"subscription.downgrade_scheduled".to_owned()));
    assert!(actions.contains(&"subscription.downgraded".to_owned()));
    assert_eq!(actions.last().unwrap(), "subscription.renewed");
    // Changes are the requester's; the rollover's are the system's (no actor).
    let actors: Vec<(String, Option<Uuid>)> = sqlx::query_as(
        "select action, actor_id from audit_log
         where org_id = $1 and target_type = 'subscription' order by id",
    )
    .bind(org)
    .fetch_all(&app.db.admin)
    .await
    .unwrap();
    for (action, actor) in actors {
        match action.as_str() {
            "subscription.upgraded" | "subscription.downgrade_scheduled" => {
                assert_eq!(actor, Some(ann.id), "{action}")
            }
            _ => assert_eq!(actor, None, "{action}"),
        }
    }
}

#[tokio::test]
async fn a_yearly_plan_is_compared_by_its_price_per_month() {
    let app = TestApp::spawn().await;
    sqlx::query(
        "insert into plans (code, name, price_minor, currency, billing_interval, trial_days,
                            credits_per_period, seat_limit, features, sort_order)
         values ('pro_year', 'Pro yearly', 29000, 'USD', 'year', 0, 60000, 20, '{}', 5)",
    )
    .execute(&app.db.admin)
    .await
    .unwrap();
    let ann = app.user("ann@example.com");

    // Monthly business (9,900 a month) -> yearly pro (29,000 a year, about
    // 2,417 a month): a downgrade, pending until the period ends.
    let org = app.create_org(&ann, "Monthly").await;
    let (s, sub) = change_plan(&app, org, &ann, "business").await;
    assert_eq!(s, StatusCode::OK, "{sub}");
    let grants_before = grants(&app, org).await.len();
    let (s, sub) = change_plan(&app, org, &ann, "pro_year").await;
    assert_eq!(s, StatusCode::OK, "{sub}");
    assert_eq!(sub["plan_code"], "business", "{sub}");
    assert_eq!(sub["status"], "trialing", "{sub}");
    assert_eq!(sub["pending_plan_code"], "pro_year", "{sub}");
    assert_eq!(sub["pending_plan"]["price_minor"], 29000, "{sub}");
    assert_eq!(sub["pending_plan"]["interval"], "year", "{sub}");
    assert_eq!(grants(&app, org).await.len(), grants_before);
    assert_eq!(
        audit_actions(&app, org).await,
        ["subscription.upgraded", "subscription.downgrade_scheduled"]
    );
    // The period ends: a year of pro, with its credits.
    make_due(&app, org, "1 minute").await;
    let old_end = time(&subscription(&app, org, &ann).await["current_period_end"]);
    assert_eq!(rollover(&app).await.advanced, 1);
    let sub = subscription(&app, org, &ann).await;
    assert_eq!(sub["plan_code"], "pro_year", "{sub}");
    assert!(sub["pending_plan_code"].is_null(), "{sub}");
    assert_eq!(time(&sub["current_period_start"]), old_end);
    assert_eq!(
        time(&sub["current_period_end"]),
        old_end.checked_add_months(chrono::Months::new(12)).unwrap()
    );
    assert_eq!(grants(&app, org).await.last().unwrap().amount, 60000);

    // Yearly pro (about 2,417 a month) -> monthly business (9,900): an
    // upgrade, now (though 9,900 is less than 29,000).
    let yearly = app.create_org(&ann, "Yearly").await;
    let (s, sub) = change_plan(&app, yearly, &ann, "pro_year").await;
    assert_eq!(s, StatusCode::OK, "{sub}");
    assert_eq!(sub["plan_code"], "pro_year", "{sub}");
    assert_eq!(sub["status"], "active", "{sub}");
    let start = time(&sub["current_period_start"]);
    assert_eq!(
        time(&sub["current_period_end"]),
        start.checked_add_months(chrono::Months::new(12)).unwrap()
    );
    let (s, sub) = change_plan(&app, yearly, &ann, "business").await;
    assert_eq!(s, StatusCode::OK, "{sub}");
    assert_eq!(sub["plan_code"], "business", "{sub}");
    assert!(sub["pending_plan_code"].is_null(), "{sub}");
    assert_eq!(sub["status"], "trialing", "business's trial, never used");
    assert_eq!(
        audit_actions(&app, yearly).await,
        ["subscription.upgraded", "subscription.upgraded"]
    );
}

#[tokio::test]
async fn cancel_and_resume_and_a_cancellation_applied_at_the_period_end() {
    let app = TestApp::spawn().await;
    let ann = app.user("ann@example.com");
    let org = app.create_org(&ann, "Acme").await;
    let cancel = format!("/api/v1/orgs/{org}/subscription/cancel");
    let resume = format!("/api/v1/orgs/{org}/subscription/resume");

    let (s, err) = app.post(&cancel, &ann, json!({})).await;
    assert_eq!(s, StatusCode::CONFLICT, "{err}");
    assert_eq!(err["code"], "cannot_cancel_free");
    let (s, err) = app.post(&resume, &ann, json!({})).await;
    assert_eq!(s, StatusCode::CONFLICT);
    assert_eq!(err["code"], "not_canceling");

    change_plan(&app, org, &ann, "business").await;
    change_plan(&app, org, &ann, "pro").await; // a pending downgrade
    let (s, sub) = app.post(&cancel, &ann, json!({})).await;
    assert_eq!(s, StatusCode::OK, "{sub}");
    assert_eq!(sub["cancel_at_period_end"], true);
    assert!(
        sub["pending_plan_code"].is_null(),
        "the cancellation replaces the downgrade"
    );
    assert_eq!(sub["plan_code"], "business");
    // Twice: no change.
    let (s, again) = app.post(&cancel, &ann, json!({})).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(again["updated_at"], sub["updated_at"]);

    let (s, sub) = app.post(&resume, &ann, json!({})).await;
    assert_eq!(s, StatusCode::OK, "{sub}");
    assert_eq!(sub["cancel_at_period_end"], false);
    assert_eq!(sub["plan_code"], "business");
    let (s, err) = app.post(&resume, &ann, json!({})).await;
    assert_eq!(s, StatusCode::CONFLICT);
    assert_eq!(err["code"], "not_canceling");

    // Canceled for real at the end of the period: back to free, status canceled.
    app.post(&cancel, &ann, json!({})).await;
    make_due(&app, org, "2 minutes").await;
    let old_end = time(&subscription(&app, org, &ann).await["current_period_end"]);
    assert_eq!(rollover(&app).await.advanced, 1);
    let sub = subscription(&app, org, &ann).await;
    assert_eq!(sub["status"], "canceled");
    assert_eq!(sub["plan_code"], "free");
    assert_eq!(sub["cancel_at_period_end"], false);
    assert_eq!(time(&sub["canceled_at"]), old_end);
    assert_eq!(time(&sub["current_period_start"]), old_end);
    let g = grants(&app, org).await;
    assert_eq!(
        g.last().unwrap().amount,
        100,
        "the free plan's credits: {g:?}"
    );
    assert!(
        invoices(&app, org).await.is_empty(),
        "nothing to pay on free"
    );
    assert!(
        audit_actions(&app, org)
            .await
            .contains(&"subscription.canceled".to_owned())
    );

    let (s, err) = app.post(&resume, &ann, json!({})).await;
    assert_eq!(s, StatusCode::CONFLICT);
    assert_eq!(err["code"], "subscription_canceled");
    let (s, err) = app.post(&cancel, &ann, json!({})).await;
    assert_eq!(s, StatusCode::CONFLICT);
    assert_eq!(err["code"], "cannot_cancel_free");
    let (s, ent) = app
        .get(&format!("/api/v1/orgs/{org}/entitlements"), &ann)
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(ent["plan"], "free");
    assert_eq!(ent["status"], "canceled");

    // A new plan starts it again (the trial is spent).
    let (s, sub) = change_plan(&app, org, &ann, "pro").await;
    assert_eq!(s, StatusCode::OK, "{sub}");
    assert_eq!(sub["status"], "active");
    assert!(sub["canceled_at"].is_null());
}

// ------------------------------------------------------------------ bad input

#[tokio::test]
async fn unknown_plans_and_currency_mismatches_are_422_and_change_nothing() {
    let app = TestApp::spawn().await;
    let ann = app.user("ann@example.com");
    let org = app.create_org(&ann, "Acme").await;
    let path = format!("/api/v1/orgs/{org}/subscription");
    let (s, plan) = app
        .call(
            Method::PUT,
            "/api/v1/admin/plans/pro-eur",
            Some(&service_key()),
            Some(
                json!({ "name": "Pro EUR", "price_minor": 2500, "currency": "EUR",
                         "interval": "month" }),
            ),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{plan}");
    change_plan(&app, org, &ann, "pro").await;
    let before = subscription(&app, org, &ann).await;
    let grants_before = grants(&app, org).await.len();

    for plan in ["nope", "", "PRO", &"x".repeat(500)] {
        let (s, err) = change_plan(&app, org, &ann, plan).await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{plan}: {err}");
        assert_eq!(err["code"], "unknown_plan");
    }
    sqlx::query("update plans set active = false where code = 'business'")
        .execute(&app.db.admin)
        .await
        .unwrap();
    let (s, err) = change_plan(&app, org, &ann, "business").await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(err["code"], "unknown_plan");

    let (s, err) = change_plan(&app, org, &ann, "pro-eur").await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{err}");
    assert_eq!(err["code"], "currency_mismatch");

    for body in [
        json!({}),
        json!({ "plan": 5 }),
        json!({ "plan": "pro", "seats": 3 }),
        json!([{ "plan": "pro" }]),
    ] {
        let (s, err) = put(&app, &path, &ann, body.clone()).await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{body}: {err}");
    }
    let (s, _) = app.call(Method::PUT, &path, Some(&ann.token), None).await;
    assert_eq!(s, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let (s, _) = app
        .call(
            Method::PUT,
            "/api/v1/orgs/not-a-uuid/subscription",
            Some(&ann.token),
            Some(json!({ "plan": "pro" })),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);

    assert_eq!(subscription(&app, org, &ann).await, before);
    assert_eq!(grants(&app, org).await.len(), grants_before);

    // From the free plan, another currency is fine: free costs nothing.
    let bob = app.user("bob@example.com");
    let other = app.create_org(&bob, "Other").await;
    let (s, sub) = change_plan(&app, other, &bob, "pro-eur").await;
    assert_eq!(s, StatusCode::OK, "{sub}");
    assert_eq!(sub["plan"]["currency"], "EUR");
}

#[tokio::test]
async fn with_stripe_a_paid_plan_needs_a_checkout() {
    let app = TestApp::spawn_with(
        &[
            ("PAYMENT_PROVIDER", "stripe"),
            ("STRIPE_SECRET_KEY", "sk_test_123"),
            ("STRIPE_WEBHOOK_SECRET", "whsec_test"),
            ("STRIPE_API_BASE", "http://127.0.0.1:9"),
        ],
        5,
    )
    .await;
    let ann = app.user("ann@example.com");
    let org = app.create_org(&ann, "Acme").await;
    let (s, err) = change_plan(&app, org, &ann, "pro").await;
    assert_eq!(s, StatusCode::CONFLICT, "{err}");
    assert_eq!(err["code"], "checkout_required");
    assert!(err["detail"].as_str().unwrap().contains("billing/checkout"));
    assert_eq!(subscription(&app, org, &ann).await["plan_code"], "free");
    // Stripe's subscriptions change through Stripe, and the rollover leaves them alone.
    sqlx::query(
        "update subscriptions set plan_code = 'pro', provider = 'stripe',
                provider_subscription_id = 'sub_123' where org_id = $1",
    )
    .bind(org)
    .execute(&app.db.admin)
    .await
    .unwrap();
    // A plan change is asked of Stripe (unreachable here: 502, nothing changes).
    let (s, err) = change_plan(&app, org, &ann, "business").await;
    assert_eq!(s, StatusCode::BAD_GATEWAY, "{err}");
    assert_eq!(err["code"], "payment_provider_error");
    let sub = subscription(&app, org, &ann).await;
    assert_eq!(sub["plan_code"], "pro", "{sub}");
    assert!(sub["pending_plan_code"].is_null(), "{sub}");
    // A cancellation is asked of Stripe (unreachable here: 502, nothing changes).
    let (s, err) = app
        .post(
            &format!("/api/v1/orgs/{org}/subscription/cancel"),
            &ann,
            json!({}),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_GATEWAY, "{err}");
    assert_eq!(err["code"], "payment_provider_error");
    assert_eq!(
        subscription(&app, org, &ann).await["cancel_at_period_end"],
        false
    );
    make_due(&app, org, "1 minute").await;
    let before = subscription(&app, org, &ann).await;
    let report = subscriptions::rollover_due(&app.db.app, PaymentProviderKind::Stripe)
        .await
        .unwrap();
    assert_eq!(report, RolloverReport::default());
    assert_eq!(subscription(&app, org, &ann).await, before);
}

// ------------------------------------------------------------------ seat limits

#[tokio::test]
async fn invitations_hold_seats_up_to_the_plans_limit() {
    let app = TestApp::spawn().await;
    let ann = app.user("ann@example.com");
    let bob = app.user("bob@example.com");
    let org = app.create_org(&ann, "Acme").await;
    // free: 3 seats. Ann, bob (a member), one open invitation: full.
    app.add_member(org, &ann, &bob, "member").await;
    let (s, inv) = invite(&app, org, &ann, "cat@example.com").await;
    assert_eq!(s, StatusCode::CREATED, "{inv}");
    let (s, err) = invite(&app, org, &ann, "dan@example.com").await;
    assert_eq!(s, StatusCode::CONFLICT, "{err}");
    assert_eq!(err["code"], "seat_limit_reached");
    assert!(err["detail"].as_str().unwrap().contains('3'), "{err}");
    let (s, ent) = app
        .get(&format!("/api/v1/orgs/{org}/entitlements"), &bob)
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(ent["seats_used"], 3);
    assert_eq!(ent["seat_limit"], 3);

    // Revoking frees the seat; an expired invitation holds none.
    let (s, _) = app
        .delete(
            &format!(
                "/api/v1/orgs/{org}/invitations/{}",
                inv["id"].as_str().unwrap()
            ),
            &ann,
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _) = invite(&app, org, &ann, "dan@example.com").await;
    assert_eq!(s, StatusCode::CREATED);
    sqlx::query(
        "update invitations set expires_at = now() - interval '1 second' where org_id = $1",
    )
    .bind(org)
    .execute(&app.db.admin)
    .await
    .unwrap();
    let (s, _) = invite(&app, org, &ann, "eve@example.com").await;
    assert_eq!(s, StatusCode::CREATED);

    // An upgrade makes room at once.
    let (s, _) = invite(&app, org, &ann, "fay@example.com").await;
    assert_eq!(s, StatusCode::CONFLICT);
    change_plan(&app, org, &ann, "pro").await;
    let (s, _) = invite(&app, org, &ann, "fay@example.com").await;
    assert_eq!(s, StatusCode::CREATED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_invitations_take_exactly_the_seats_left() {
    let app = TestApp::spawn_with(&[], 12).await;
    let ann = app.user("ann@example.com");
    let org = app.create_org(&ann, "Acme").await;
    // free: 3 seats, ann holds one: 2 left for 10 concurrent invitations.
    let results = futures_util::future::join_all((0..10).map(|i| {
        let (app, ann) = (&app, &ann);
        async move { invite(app, org, ann, &format!("user{i}@example.com")).await }
    }))
    .await;
    let created = results
        .iter()
        .filter(|(s, _)| *s == StatusCode::CREATED)
        .count();
    let full = results
        .iter()
        .filter(|(s, b)| *s == StatusCode::CONFLICT && b["code"] == "seat_limit_reached")
        .count();
    assert_eq!((created, full), (2, 8), "{results:?}");
    let open: i64 = sqlx::query_scalar(
        "select count(*) from invitations where org_id = $1 and accepted_at is null and revoked_at is null",
    )
    .bind(org)
    .fetch_one(&app.db.admin)
    .await
    .unwrap();
    assert_eq!(open, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn accepting_is_refused_once_members_fill_a_plan_that_shrank_even_concurrently() {
    let app = TestApp::spawn_with(&[], 16).await;
    let ann = app.user("ann@example.com");
    let org = app.create_org(&ann, "Acme").await;
    set_seats(&app, "free", Some(20)).await;
    let users: Vec<TestUser> = (0..10)
        .map(|i| app.user(&format!("user{i}@example.com")))
        .collect();
    let mut tokens = Vec::new();
    for u in &users {
        let (s, inv) = invite(&app, org, &ann, &u.email).await;
        assert_eq!(s, StatusCode::CREATED, "{inv}");
        tokens.push(inv["token"].as_str().unwrap().to_owned());
    }
    // The plan shrinks to 3 seats: ann and two more members fit.
    set_seats(&app, "free", Some(3)).await;
    // Every acceptance reads memberships before it counts them: hold them all
    // at that point with a table lock, then let them go at once.
    let mut gate = app.db.admin.begin().await.unwrap();
    sqlx::query("lock table memberships in access exclusive mode")
        .execute(&mut *gate)
        .await
        .unwrap();
    let accepts = futures_util::future::join_all(users.iter().zip(&tokens).map(|(u, t)| {
        let app = &app;
        async move {
            app.post("/api/v1/invitations/accept", u, json!({ "token": t }))
                .await
        }
    }));
    let release = async {
        eventually(20, "every acceptance waiting", || async {
            let waiting: i64 = sqlx::query_scalar(
                "select count(*) from pg_stat_activity
                 where datname = current_database() and wait_event_type = 'Lock'",
            )
            .fetch_one(&app.db.admin)
            .await
            .unwrap();
            (waiting >= 10).then_some(())
        })
        .await;
        gate.commit().await.unwrap();
    };
    let (results, ()) = tokio::join!(accepts, release);
    let ok = results.iter().filter(|(s, _)| *s == StatusCode::OK).count();
    let full = results
        .iter()
        .filter(|(s, b)| *s == StatusCode::CONFLICT && b["code"] == "seat_limit_reached")
        .count();
    assert_eq!((ok, full), (2, 8), "{results:?}");
    assert_eq!(members(&app, org).await, 3);

    // One at a time too: a member leaves, one more may join.
    let refused = users
        .iter()
        .zip(&tokens)
        .zip(&results)
        .find(|(_, (s, _))| *s == StatusCode::CONFLICT)
        .map(|((u, t), _)| (u.clone(), t.clone()))
        .unwrap();
    let joined = users
        .iter()
        .zip(&results)
        .find(|(_, (s, _))| *s == StatusCode::OK)
        .map(|(u, _)| u.clone())
        .unwrap();
    let (s, _) = app
        .delete(
            &format!("/api/v1/orgs/{org}/members/{}", joined.id),
            &joined,
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, body) = app
        .post(
            "/api/v1/invitations/accept",
            &refused.0,
            json!({ "token": refused.1 }),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(members(&app, org).await, 3);
}

#[tokio::test]
async fn a_downgrade_below_the_member_count_is_refused() {
    let app = TestApp::spawn().await;
    let ann = app.user("ann@example.com");
    let org = app.create_org(&ann, "Acme").await;
    change_plan(&app, org, &ann, "pro").await;
    let others: Vec<TestUser> = (0..3)
        .map(|i| app.user(&format!("user{i}@example.com")))
        .collect();
    for u in &others {
        app.add_member(org, &ann, u, "member").await;
    }
    // 4 members, free allows 3.
    let (s, err) = change_plan(&app, org, &ann, "free").await;
    assert_eq!(s, StatusCode::CONFLICT, "{err}");
    assert_eq!(err["code"], "seat_limit_reached");
    assert!(
        err["detail"].as_str().unwrap().contains("1 must leave"),
        "{err}"
    );
    assert!(subscription(&app, org, &ann).await["pending_plan_code"].is_null());
    let (s, _) = app
        .delete(
            &format!("/api/v1/orgs/{org}/members/{}", others[0].id),
            &ann,
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, sub) = change_plan(&app, org, &ann, "free").await;
    assert_eq!(s, StatusCode::OK, "{sub}");
    assert_eq!(sub["pending_plan_code"], "free");
}

#[tokio::test]
async fn an_import_beyond_the_seats_reports_those_lines_as_errors() {
    let app = TestApp::spawn().await;
    let ann = app.user("ann@example.com");
    let org = app.create_org(&ann, "Acme").await;
    let csv = "email,role\na@example.com,member\nb@example.com,member\nc@example.com,member\nd@example.com,member\n";
    let res = app
        .client
        .post(format!("{}/api/v1/orgs/{org}/imports", app.base))
        .bearer_auth(&ann.token)
        .header("content-type", "text/csv")
        .body(csv)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    let record: Value = res.json().await.unwrap();
    let id: Uuid = record["id"].as_str().unwrap().parse().unwrap();
    let ctx = tenantry::jobs::JobContext {
        pool: app.state.pool.clone(),
        id,
        attempt: 1,
        max_attempts: 5,
        request_id: None,
        org_id: Some(org),
    };
    let settings = tenantry::organizations::service::InviteSettings::from_config(&app.state.config);
    tenantry::imports::job::ImportMembers {
        org_id: org,
        requested_by: ann.id,
    }
    .run(&settings, ctx)
    .await
    .unwrap();
    let (s, body) = app
        .get(&format!("/api/v1/orgs/{org}/imports/{id}"), &ann)
        .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(body["result"]["invited"], 2, "{body}");
    assert_eq!(body["result"]["errors"], 2, "{body}");
    let rows = body["rows"].as_array().unwrap();
    let errors: Vec<&Value> = rows.iter().filter(|r| r["status"] == "error").collect();
    assert_eq!(errors.len(), 2);
    assert!(
        errors[0]["error"].as_str().unwrap().contains("seats"),
        "{body}"
    );
}

// ------------------------------------------------------------------ the rollover

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_monthly_grant_fires_once_however_many_rollovers_run() {
    let app = TestApp::spawn_with(&[], 12).await;
    let ann = app.user("ann@example.com");
    let orgs = [
        app.create_org(&ann, "Org One").await,
        app.create_org(&ann, "Org Two").await,
        app.create_org(&ann, "Org Three").await,
    ];
    for org in orgs {
        make_due(&app, org, "5 minutes").await;
    }
    let due: Vec<DateTime<Utc>> = {
        let mut v = Vec::new();
        for org in orgs {
            v.push(time(
                &subscription(&app, org, &ann).await["current_period_end"],
            ));
        }
        v
    };
    // Eight passes at once, as eight workers would run them.
    let reports = futures_util::future::join_all((0..8).map(|_| rollover(&app))).await;
    let advanced: u64 = reports.iter().map(|r| r.advanced).sum();
    assert_eq!(advanced, 3, "{reports:?}");
    assert!(reports.iter().all(|r| r.failed == 0), "{reports:?}");
    // Busy orgs were skipped by some passes, never advanced twice: one more
    // pass finds nothing due.
    assert_eq!(rollover(&app).await, RolloverReport::default());
    for (org, end) in orgs.iter().zip(&due) {
        let g = grants(&app, *org).await;
        assert_eq!(g.len(), 2, "{g:?}");
        assert_eq!(
            g[1].reference.as_deref(),
            Some(period_ref(*org, *end).as_str())
        );
        let sub = subscription(&app, *org, &ann).await;
        assert_eq!(time(&sub["current_period_start"]), *end);
    }

    // The job itself, through the outbox, the broker and two workers, twice.
    make_due(&app, orgs[0], "1 minute").await;
    let end = time(&subscription(&app, orgs[0], &ann).await["current_period_end"]);
    let w1 = app.start_worker();
    let w2 = app.start_worker();
    for _ in 0..2 {
        let mut tx = app.db.app.begin().await.unwrap();
        sqlx::query("select set_config('role', 'tenantry_app', true)")
            .execute(&mut *tx)
            .await
            .unwrap();
        tenantry::jobs::enqueue(&mut tx, &tenantry::billing::subscriptions::Rollover {})
            .await
            .unwrap();
        tx.commit().await.unwrap();
    }
    eventually(20, "the rollover job", || async {
        let sub = subscription(&app, orgs[0], &ann).await;
        (time(&sub["current_period_start"]) == end).then_some(())
    })
    .await;
    // Let the second job run too.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    w1.stop().await;
    w2.stop().await;
    let refs: Vec<Option<String>> = grants(&app, orgs[0])
        .await
        .into_iter()
        .map(|g| g.reference)
        .collect();
    assert_eq!(refs.len(), 3, "{refs:?}");
    assert_eq!(
        refs.iter()
            .filter(|r| r.as_deref() == Some(period_ref(orgs[0], end).as_str()))
            .count(),
        1
    );
}

#[tokio::test]
async fn missed_periods_are_skipped_with_credits_for_the_current_one_only() {
    let app = TestApp::spawn().await;
    let ann = app.user("ann@example.com");
    let org = app.create_org(&ann, "Acme").await;
    make_due(&app, org, "75 days").await;
    assert_eq!(rollover(&app).await.advanced, 1);
    let sub = subscription(&app, org, &ann).await;
    let start = time(&sub["current_period_start"]);
    let end = time(&sub["current_period_end"]);
    let now = Utc::now();
    assert!(start <= now && end > now, "{sub}");
    assert_eq!(
        end,
        start.checked_add_months(chrono::Months::new(1)).unwrap()
    );
    let g = grants(&app, org).await;
    assert_eq!(g.len(), 2, "one grant for the current period only: {g:?}");
    assert_eq!(
        g[1].reference.as_deref(),
        Some(period_ref(org, start).as_str())
    );
    assert_eq!(g[1].expires_at, Some(end));
}

// ------------------------------------------------------------------ entitlements, permissions

#[tokio::test]
async fn entitlements_follow_the_plan_and_the_subscriptions_state() {
    let app = TestApp::spawn().await;
    let ann = app.user("ann@example.com");
    let vic = app.user("vic@example.com");
    let org = app.create_org(&ann, "Acme").await;
    app.add_member(org, &ann, &vic, "viewer").await;
    let path = format!("/api/v1/orgs/{org}/entitlements");

    let (s, e) = app.get(&path, &vic).await;
    assert_eq!(s, StatusCode::OK, "{e}");
    assert_eq!(
        e,
        json!({
            "plan": "free",
            "status": "active",
            "seat_limit": 3,
            "seats_used": 2,
            "features": { "reports_per_month": 5, "api_keys": 2 },
            "credits_per_period": 100,
            "credit_overage_limit": 0
        })
    );

    sqlx::query("update plans set credit_overage_limit = 1000 where code = 'business'")
        .execute(&app.db.admin)
        .await
        .unwrap();
    change_plan(&app, org, &ann, "business").await;
    let (_, e) = app.get(&path, &vic).await;
    assert_eq!(e["plan"], "business");
    assert_eq!(e["status"], "trialing");
    assert!(e["seat_limit"].is_null());
    assert!(e["features"]["reports_per_month"].is_null());
    assert_eq!(e["credits_per_period"], 25000);
    assert_eq!(e["credit_overage_limit"], 1000);

    // past_due keeps the plan; canceled falls back to free's.
    for (status, plan) in [("past_due", "business"), ("canceled", "free")] {
        sqlx::query("update subscriptions set status = $2 where org_id = $1")
            .bind(org)
            .bind(status)
            .execute(&app.db.admin)
            .await
            .unwrap();
        let (_, e) = app.get(&path, &vic).await;
        assert_eq!(e["status"], status);
        assert_eq!(e["plan"], plan, "{e}");
    }
    let (_, e) = app.get(&path, &vic).await;
    assert_eq!(e["seat_limit"], 3);
    assert_eq!(e["credits_per_period"], 100);
}

#[tokio::test]
async fn only_billing_managers_change_the_subscription() {
    let app = TestApp::spawn().await;
    let ann = app.user("ann@example.com");
    let mel = app.user("mel@example.com");
    let vic = app.user("vic@example.com");
    let org = app.create_org(&ann, "Acme").await;
    app.add_member(org, &ann, &mel, "member").await;
    app.add_member(org, &ann, &vic, "viewer").await;
    let sub = format!("/api/v1/orgs/{org}/subscription");
    let before = subscription(&app, org, &ann).await;

    for user in [&mel, &vic] {
        let (s, err) = put(&app, &sub, user, json!({ "plan": "pro" })).await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{err}");
        assert_eq!(err["code"], "permission_denied");
        for action in ["cancel", "resume"] {
            let (s, _) = app.post(&format!("{sub}/{action}"), user, json!({})).await;
            assert_eq!(s, StatusCode::FORBIDDEN, "{action}");
        }
    }
    // Members read billing; viewers do not, but see the entitlements.
    let (s, _) = app.get(&sub, &mel).await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = app.get(&sub, &vic).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, _) = app
        .get(&format!("/api/v1/orgs/{org}/entitlements"), &vic)
        .await;
    assert_eq!(s, StatusCode::OK);
    // Outsiders: 404; no token: 401.
    let out = app.user("out@example.com");
    app.create_org(&out, "Elsewhere").await;
    let (s, _) = put(&app, &sub, &out, json!({ "plan": "pro" })).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = app.call(Method::GET, &sub, None, None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert_eq!(subscription(&app, org, &ann).await, before);
}
