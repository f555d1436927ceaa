//! Payments over real HTTP and Postgres: Stripe Checkout and Billing Portal
//! against a local server standing in for Stripe's API, Stripe webhooks
//! (signatures, replays, out-of-order events, their effects), the manual
//! provider's invoices, and the invoice list's tenant wall.

mod common;
use common::smtp::SmtpSink;
use common::stripe::{FakeStripe, Recorded, event, sign, signature_header};
use common::*;

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use uuid::Uuid;

const SECRET_KEY: &str = "sk_test_tenantry_123";
const WHSEC_A: &str = "whsec_a";
const WHSEC_B: &str = "whsec_b";

async fn stripe_app(fake: &FakeStripe, extra: &[(&str, &str)]) -> TestApp {
    let url = fake.url();
    let mut vars = vec![
        ("PAYMENT_PROVIDER", "stripe"),
        ("STRIPE_SECRET_KEY", SECRET_KEY),
        ("STRIPE_WEBHOOK_SECRET", "whsec_a,whsec_b"),
        ("STRIPE_API_BASE", url.as_str()),
        ("APP_URL", "https://app.example.test"),
    ];
    vars.extend_from_slice(extra);
    TestApp::spawn_with(&vars, 5).await
}

async fn post_webhook(app: &TestApp, body: &str, signature: Option<&str>) -> (StatusCode, Value) {
    let mut req = app
        .client
        .post(format!("{}/api/v1/webhooks/stripe", app.base))
        .header("content-type", "application/json")
        .body(body.to_owned());
    if let Some(s) = signature {
        req = req.header("Stripe-Signature", s);
    }
    let res = req.send().await.unwrap();
    let status = res.status();
    let bytes = res.bytes().await.unwrap();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

/// Delivers `body` signed now with the first webhook secret; expects 200.
async fn deliver(app: &TestApp, body: &str) -> Value {
    let (s, ack) = post_webhook(app, body, Some(&signature_header(WHSEC_A, body))).await;
    assert_eq!(s, StatusCode::OK, "{ack}");
    assert_eq!(ack["received"], true);
    ack
}

async fn scalar_i64(app: &TestApp, sql: &str, org: Uuid) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
        .bind(org)
        .fetch_one(&app.db.admin)
        .await
        .unwrap()
}

async fn webhook_events(app: &TestApp) -> i64 {
    app.count("app.webhook_events").await
}

/// (status, plan_code, provider, provider_subscription_id, cancel_at_period_end)
type SubRow = (String, String, String, Option<String>, bool);

async fn subscription(app: &TestApp, org: Uuid) -> SubRow {
    sqlx::query_as(
        "select status, plan_code, provider, provider_subscription_id, cancel_at_period_end
         from subscriptions where org_id = $1",
    )
    .bind(org)
    .fetch_one(&app.db.admin)
    .await
    .unwrap()
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

fn subscription_object(org: Uuid, sub: &str, status: &str, plan: &str, start: i64) -> Value {
    json!({
        "id": sub, "object": "subscription", "customer": "cus_hook_1",
        "status": status, "cancel_at_period_end": false, "canceled_at": null,
        "current_period_start": start, "current_period_end": start + 30 * 86400,
        "trial_end": null,
        "metadata": {"org_id": org.to_string(), "plan": plan},
        "items": {"object": "list", "data": [{"id": "si_1", "price": {"unit_amount": 2900}}]}
    })
}

// ------------------------------------------------------------------ checkout

#[tokio::test]
async fn checkout_sends_stripe_inline_prices_and_metadata_and_reuses_the_customer() {
    let fake = FakeStripe::start().await;
    let app = stripe_app(&fake, &[]).await;
    let owner = app.user("owner@example.com");
    let org = app.create_org(&owner, "Acme").await;

    let path = format!("/api/v1/orgs/{org}/billing/checkout");
    let (s, session) = app.post(&path, &owner, json!({"plan": "pro"})).await;
    assert_eq!(s, StatusCode::OK, "{session}");
    let id = session["id"].as_str().unwrap();
    assert!(id.starts_with("cs_test_"), "{session}");
    assert_eq!(
        session["url"],
        format!("https://checkout.stripe.com/c/pay/{id}")
    );

    let customers = fake.requests_to("/v1/customers");
    assert_eq!(customers.len(), 1);
    let c = &customers[0];
    assert_eq!(
        c.authorization.as_deref(),
        Some(format!("Bearer {SECRET_KEY}").as_str())
    );
    assert!(c.idempotency_key.is_some());
    assert_eq!(c.field("name"), Some("Acme"));
    assert_eq!(c.field("email"), Some("owner@example.com"));
    assert_eq!(c.field("metadata[org_id]"), Some(org.to_string().as_str()));

    let sessions = fake.requests_to("/v1/checkout/sessions");
    assert_eq!(sessions.len(), 1);
    let r = &sessions[0];
    assert_eq!(
        r.authorization.as_deref(),
        Some(format!("Bearer {SECRET_KEY}").as_str())
    );
    assert_eq!(
        r.content_type.as_deref(),
        Some("application/x-www-form-urlencoded")
    );
    assert!(r.idempotency_key.as_deref().is_some_and(|k| !k.is_empty()));
    let org_s = org.to_string();
    for (k, v) in [
        ("mode", "subscription"),
        ("customer", "cus_test_1"),
        ("client_reference_id", org_s.as_str()),
        ("line_items[0][quantity]", "1"),
        ("line_items[0][price_data][currency]", "usd"),
        ("line_items[0][price_data][unit_amount]", "2900"),
        ("line_items[0][price_data][product_data][name]", "Pro"),
        ("line_items[0][price_data][recurring][interval]", "month"),
        ("metadata[org_id]", org_s.as_str()),
        ("metadata[plan]", "pro"),
        ("subscription_data[metadata][org_id]", org_s.as_str()),
        ("subscription_data[metadata][plan]", "pro"),
        ("subscription_data[trial_period_days]", "14"),
        (
            "cancel_url",
            &format!("https://app.example.test/orgs/{org}/billing?checkout=canceled"),
        ),
        (
            "success_url",
            &format!(
                "https://app.example.test/orgs/{org}/billing?checkout=success&session_id={{CHECKOUT_SESSION_ID}}"
            ),
        ),
    ] {
        assert_eq!(r.field(k), Some(v), "field {k} of {:?}", r.form);
    }
    let stored: String =
        sqlx::query_scalar("select customer_id from billing_customers where org_id = $1")
            .bind(org)
            .fetch_one(&app.db.admin)
            .await
            .unwrap();
    assert_eq!(stored, "cus_test_1");

    // A credit pack: a one-off payment for the same (reused) customer.
    let (s, pack) = app
        .post(&path, &owner, json!({"credit_pack": "credits_1000"}))
        .await;
    assert_eq!(s, StatusCode::OK, "{pack}");
    assert_eq!(
        fake.requests_to("/v1/customers").len(),
        1,
        "the customer is reused"
    );
    let sessions = fake.requests_to("/v1/checkout/sessions");
    assert_eq!(sessions.len(), 2);
    let r = &sessions[1];
    for (k, v) in [
        ("mode", "payment"),
        ("customer", "cus_test_1"),
        ("line_items[0][price_data][currency]", "usd"),
        ("line_items[0][price_data][unit_amount]", "1000"),
        (
            "line_items[0][price_data][product_data][name]",
            "1,000 credits",
        ),
        ("metadata[org_id]", org_s.as_str()),
        ("metadata[credit_pack]", "credits_1000"),
        ("metadata[credits]", "1000"),
    ] {
        assert_eq!(r.field(k), Some(v), "field {k} of {:?}", r.form);
    }
    assert!(!r.has_field_starting("line_items[0][price_data][recurring]"));
    assert!(!r.has_field_starting("subscription_data"));
    assert_ne!(
        sessions[0].idempotency_key, sessions[1].idempotency_key,
        "two checkouts are two sessions"
    );

    // The client's Idempotency-Key: a retried request gets the same session
    // (Stripe sees the same key).
    let retry = || async {
        let res = app
            .client
            .post(format!("{}{path}", app.base))
            .bearer_auth(&owner.token)
            .header("Idempotency-Key", "client-key-1")
            .json(&json!({"credit_pack": "credits_10000"}))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        res.json::<Value>().await.unwrap()
    };
    let first = retry().await;
    let second = retry().await;
    assert_eq!(first["id"], second["id"]);
    let sessions = fake.requests_to("/v1/checkout/sessions");
    assert_eq!(sessions.len(), 4);
    assert_eq!(sessions[2].idempotency_key, sessions[3].idempotency_key);
}

#[tokio::test]
async fn checkout_rejects_bad_input_and_callers_without_billing_manage() {
    let fake = FakeStripe::start().await;
    let app = stripe_app(&fake, &[]).await;
    let owner = app.user("owner@example.com");
    let member = app.user("member@example.com");
    let stranger = app.user("stranger@example.com");
    let org = app.create_org(&owner, "Acme").await;
    app.create_org(&stranger, "Elsewhere").await;
    app.add_member(org, &owner, &member, "member").await;
    let path = format!("/api/v1/orgs/{org}/billing/checkout");

    for (body, field, code) in [
        (json!({"plan": "platinum"}), "plan", "unknown_plan"),
        (
            json!({"credit_pack": "credits_7"}),
            "credit_pack",
            "unknown_credit_pack",
        ),
        (json!({"plan": "free"}), "plan", "free_plan"),
        (json!({}), "plan", "required"),
        (
            json!({"plan": "pro", "credit_pack": "credits_1000"}),
            "credit_pack",
            "exclusive",
        ),
        (json!({"plan": 7}), "plan", "invalid_type"),
        (
            json!({"plan": "pro", "coupon": "x"}),
            "coupon",
            "unknown_field",
        ),
    ] {
        let (s, p) = app.post(&path, &owner, body.clone()).await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{body}: {p}");
        assert_eq!(p["errors"][0]["field"], field, "{body}: {p}");
        assert_eq!(p["errors"][0]["code"], code, "{body}: {p}");
    }
    let (s, _) = app.post(&path, &member, json!({"plan": "pro"})).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "a member lacks billing:manage");
    let (s, _) = app.post(&path, &stranger, json!({"plan": "pro"})).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "another org's path is 404");

    // The org pays in EUR: USD plans and packs are a currency mismatch.
    sqlx::query(
        "insert into plans (code, name, price_minor, currency, billing_interval)
         values ('pro_eur', 'Pro EUR', 2500, 'EUR', 'month')",
    )
    .execute(&app.db.admin)
    .await
    .unwrap();
    sqlx::query("update subscriptions set plan_code = 'pro_eur' where org_id = $1")
        .bind(org)
        .execute(&app.db.admin)
        .await
        .unwrap();
    for body in [
        json!({"plan": "business"}),
        json!({"credit_pack": "credits_1000"}),
    ] {
        let (s, p) = app.post(&path, &owner, body.clone()).await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{body}: {p}");
        assert_eq!(p["code"], "currency_mismatch", "{body}: {p}");
    }
    assert!(fake.requests().is_empty(), "nothing reached Stripe");
    assert_eq!(app.count("billing_customers").await, 0);
}

#[tokio::test]
async fn portal_needs_a_customer_and_returns_stripes_url() {
    let fake = FakeStripe::start().await;
    let app = stripe_app(&fake, &[]).await;
    let owner = app.user("owner@example.com");
    let org = app.create_org(&owner, "Acme").await;
    let portal = format!("/api/v1/orgs/{org}/billing/portal");
    let (s, p) = app
        .call(Method::POST, &portal, Some(&owner.token), None)
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{p}");
    assert_eq!(p["code"], "no_customer");

    let (s, _) = app
        .post(
            &format!("/api/v1/orgs/{org}/billing/checkout"),
            &owner,
            json!({"plan": "pro"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let (s, p) = app
        .call(Method::POST, &portal, Some(&owner.token), None)
        .await;
    assert_eq!(s, StatusCode::OK, "{p}");
    assert!(
        p["url"]
            .as_str()
            .unwrap()
            .starts_with("https://billing.stripe.com/p/session/"),
        "{p}"
    );
    let r = fake.requests_to("/v1/billing_portal/sessions");
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].field("customer"), Some("cus_test_1"));
    assert_eq!(
        r[0].field("return_url"),
        Some(format!("https://app.example.test/orgs/{org}/billing").as_str())
    );
    assert!(r[0].idempotency_key.is_some());
}

#[tokio::test]
async fn stripe_card_errors_are_402_other_errors_502_and_5xx_is_retried_with_the_same_key() {
    let fake = FakeStripe::start().await;
    let app = stripe_app(&fake, &[]).await;
    let owner = app.user("owner@example.com");
    let org = app.create_org(&owner, "Acme").await;
    let path = format!("/api/v1/orgs/{org}/billing/checkout");

    // A card error: 402 with Stripe's message (written for the customer).
    fake.fail_with(402);
    let (s, p) = app.post(&path, &owner, json!({"plan": "pro"})).await;
    assert_eq!(s, StatusCode::PAYMENT_REQUIRED, "{p}");
    assert_eq!(p["code"], "payment_declined");
    assert!(
        p["detail"]
            .as_str()
            .unwrap()
            .contains("Your card was declined."),
        "{p}"
    );
    assert_eq!(fake.requests().len(), 1, "a 402 is not retried");
    assert_eq!(
        app.count("billing_customers").await,
        0,
        "no customer stored"
    );

    // Any other failure: 502 with Stripe's message.
    fake.fail_with(500);
    let (s, p) = app.post(&path, &owner, json!({"plan": "pro"})).await;
    assert_eq!(s, StatusCode::BAD_GATEWAY, "{p}");
    assert_eq!(p["code"], "payment_provider_error");
    assert!(
        p["detail"].as_str().unwrap().contains("Stripe's end"),
        "{p}"
    );
    let customers = fake.requests_to("/v1/customers");
    assert_eq!(customers.len(), 3, "the 500 was retried once");
    assert_eq!(
        customers[1].idempotency_key, customers[2].idempotency_key,
        "a retry carries the same Idempotency-Key"
    );

    // Stripe refusing our credentials: 502, without Stripe's words (they quote the key).
    fake.fail_with(401);
    let (s, p) = app.post(&path, &owner, json!({"plan": "pro"})).await;
    assert_eq!(s, StatusCode::BAD_GATEWAY, "{p}");
    let detail = p["detail"].as_str().unwrap();
    assert!(
        detail.ends_with("this server's credentials were not accepted")
            && !detail.contains("Stripe's end"),
        "{p}"
    );

    // A 402 that is not a card error (Stripe refusing the request, not the
    // card): 502 too.
    fake.fail_with_body(
        402,
        json!({"error": {
            "type": "invalid_request_error",
            "message": "This customer has no attached payment source or default payment method."
        }}),
    );
    let (s, p) = app.post(&path, &owner, json!({"plan": "pro"})).await;
    assert_eq!(s, StatusCode::BAD_GATEWAY, "{p}");
    assert_eq!(p["code"], "payment_provider_error", "{p}");
    assert_eq!(
        app.count("billing_customers").await,
        0,
        "no customer stored"
    );

    // Stripe is back: the portal maps a card error to a 402 too.
    fake.succeed();
    let (s, _) = app.post(&path, &owner, json!({"plan": "pro"})).await;
    assert_eq!(s, StatusCode::OK);
    fake.fail_with(402);
    let portal = format!("/api/v1/orgs/{org}/billing/portal");
    let (s, p) = app
        .call(Method::POST, &portal, Some(&owner.token), None)
        .await;
    assert_eq!(s, StatusCode::PAYMENT_REQUIRED, "{p}");
    assert_eq!(p["code"], "payment_declined");
}

// ------------------------------------------------------------------ webhooks

fn pack_session(org: Uuid, session: &str) -> Value {
    json!({
        "id": session, "object": "checkout.session", "mode": "payment",
        "payment_status": "paid", "status": "complete",
        "customer": "cus_pack_1", "client_reference_id": org.to_string(),
        "amount_total": 1000, "currency": "usd",
        "metadata": {"org_id": org.to_string(), "credit_pack": "credits_1000", "credits": "1000"}
    })
}

async fn purchase_grants(app: &TestApp, org: Uuid) -> (i64, i64) {
    sqlx::query_as(
        "select count(*), coalesce(sum(amount), 0)::bigint from credit_grants
         where org_id = $1 and source = 'purchase'",
    )
    .bind(org)
    .fetch_one(&app.db.admin)
    .await
    .unwrap()
}

#[tokio::test]
async fn a_paid_credit_pack_grants_its_credits_once_however_often_the_event_is_replayed() {
    let fake = FakeStripe::start().await;
    let app = stripe_app(&fake, &[]).await;
    let owner = app.user("owner@example.com");
    let org = app.create_org(&owner, "Acme").await;

    let body = event(
        "evt_pack_1",
        "checkout.session.completed",
        now(),
        pack_session(org, "cs_test_pack_1"),
    );
    let ack = deliver(&app, &body).await;
    assert_eq!(ack["duplicate"], false);
    assert_eq!(purchase_grants(&app, org).await, (1, 1000));
    let (s, credits) = app
        .get(&format!("/api/v1/orgs/{org}/credits"), &owner)
        .await;
    assert_eq!(s, StatusCode::OK, "{credits}");
    let balance_after_one = credits["balance"].as_i64().unwrap();

    // Replays (the same event, freshly signed, with either secret) do nothing.
    for secret in [WHSEC_A, WHSEC_B, WHSEC_A] {
        let (s, ack) = post_webhook(&app, &body, Some(&signature_header(secret, &body))).await;
        assert_eq!(s, StatusCode::OK, "{ack}");
        assert_eq!(ack, json!({"received": true, "duplicate": true}));
    }
    // Even concurrent deliveries of one new event apply it once.
    let body2 = event(
        "evt_pack_2",
        "checkout.session.completed",
        now(),
        pack_session(org, "cs_test_pack_2"),
    );
    let sig = signature_header(WHSEC_A, &body2);
    let results =
        futures_util::future::join_all((0..6).map(|_| post_webhook(&app, &body2, Some(&sig))))
            .await;
    assert!(
        results.iter().all(|(s, _)| *s == StatusCode::OK),
        "{results:?}"
    );
    assert_eq!(
        results
            .iter()
            .filter(|(_, a)| a["duplicate"] == false)
            .count(),
        1,
        "{results:?}"
    );
    assert_eq!(purchase_grants(&app, org).await, (2, 2000));
    let (_, credits) = app
        .get(&format!("/api/v1/orgs/{org}/credits"), &owner)
        .await;
    assert_eq!(
        credits["balance"].as_i64().unwrap(),
        balance_after_one + 1000
    );
    assert_eq!(webhook_events(&app).await, 2);

    // Each purchase is a paid invoice of the org; the customer is mapped.
    let (s, page) = app
        .get(&format!("/api/v1/orgs/{org}/invoices"), &owner)
        .await;
    assert_eq!(s, StatusCode::OK, "{page}");
    let data = page["data"].as_array().unwrap();
    assert_eq!(data.len(), 2, "{page}");
    assert_eq!(
        data[0]["provider_invoice_id"], "cs_test_pack_2",
        "newest first"
    );
    assert_eq!(data[0]["status"], "paid");
    assert_eq!(data[0]["amount_paid_minor"], 1000);
    assert_eq!(data[0]["currency"], "USD");
    assert_eq!(data[1]["number"], "INV-000001");
    assert_eq!(data[0]["number"], "INV-000002");
    let customer: String =
        sqlx::query_scalar("select customer_id from billing_customers where org_id = $1")
            .bind(org)
            .fetch_one(&app.db.admin)
            .await
            .unwrap();
    assert_eq!(customer, "cus_pack_1");
}

#[tokio::test]
async fn forged_stale_and_malformed_signatures_are_refused_and_write_nothing() {
    let fake = FakeStripe::start().await;
    let app = stripe_app(&fake, &[]).await;
    let owner = app.user("owner@example.com");
    let org = app.create_org(&owner, "Acme").await;
    let body = event(
        "evt_forged",
        "checkout.session.completed",
        now(),
        pack_session(org, "cs_forged"),
    );
    let t = now();
    let good = sign(WHSEC_A, t, &body);

    // Tampered body: signed, then one character changed.
    let tampered = body.replace("\"credits\":\"1000\"", "\"credits\":\"9000\"");
    assert_ne!(tampered, body);
    let (s, p) = post_webhook(&app, &tampered, Some(&format!("t={t},v1={good}"))).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{p}");
    assert_eq!(p["code"], "invalid_signature");
    assert!(p["type"].as_str().is_some(), "a problem document: {p}");

    // Another timestamp than the one signed.
    let (s, p) = post_webhook(&app, &body, Some(&format!("t={},v1={good}", t + 1))).await;
    assert_eq!(
        (s, p["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_signature"))
    );

    // Signed with a secret that is not configured.
    let (s, p) = post_webhook(&app, &body, Some(&signature_header("whsec_other", &body))).await;
    assert_eq!(
        (s, p["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_signature"))
    );

    // Stale: a valid signature made 301 s ago; and one from the future.
    for skew in [-301, 301] {
        let ts = t + skew;
        let header = format!("t={ts},v1={}", sign(WHSEC_A, ts, &body));
        let (s, p) = post_webhook(&app, &body, Some(&header)).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{p}");
        assert_eq!(p["code"], "signature_expired", "{p}");
    }

    // v0 only (ignored), no header, malformed headers.
    let v0 = format!("t={t},v0={good}");
    for header in [
        Some(v0.as_str()),
        None,
        Some(""),
        Some("nonsense"),
        Some(&format!("v1={good}")),
        Some(&format!("t=yesterday,v1={good}")),
    ] {
        let (s, p) = post_webhook(&app, &body, header).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{header:?}: {p}");
        assert_eq!(p["code"], "invalid_signature", "{header:?}: {p}");
    }
    assert_eq!(webhook_events(&app).await, 0);
    assert_eq!(purchase_grants(&app, org).await, (0, 0));
    assert_eq!(app.count("invoices").await, 0);
}

#[tokio::test]
async fn rotated_secrets_any_v1_under_any_configured_secret_is_accepted() {
    let fake = FakeStripe::start().await;
    let app = stripe_app(&fake, &[]).await;
    let owner = app.user("owner@example.com");
    let org = app.create_org(&owner, "Acme").await;
    let t = now();

    // Two v1 values (Stripe rolling its secret): only the second matches.
    let body = event(
        "evt_rot_1",
        "checkout.session.completed",
        t,
        pack_session(org, "cs_rot_1"),
    );
    let header = format!(
        "t={t},v1={},v1={}",
        sign("whsec_rolled_away", t, &body),
        sign(WHSEC_A, t, &body)
    );
    let (s, p) = post_webhook(&app, &body, Some(&header)).await;
    assert_eq!(s, StatusCode::OK, "{p}");

    // Our secret list during rotation: only the second secret signs.
    let body = event(
        "evt_rot_2",
        "checkout.session.completed",
        t,
        pack_session(org, "cs_rot_2"),
    );
    let header = format!("t={t},v1={}", sign(WHSEC_B, t, &body));
    let (s, p) = post_webhook(&app, &body, Some(&header)).await;
    assert_eq!(s, StatusCode::OK, "{p}");

    // v0 matching (and v1 not) is still refused.
    let body = event(
        "evt_rot_3",
        "checkout.session.completed",
        t,
        pack_session(org, "cs_rot_3"),
    );
    let header = format!(
        "t={t},v0={},v1={}",
        sign(WHSEC_A, t, &body),
        sign("whsec_nope", t, &body)
    );
    let (s, p) = post_webhook(&app, &body, Some(&header)).await;
    assert_eq!(
        (s, p["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_signature"))
    );

    assert_eq!(purchase_grants(&app, org).await, (2, 2000));
}

#[tokio::test]
async fn bodies_that_are_not_stripe_events_are_400_and_unknown_events_are_recorded_only() {
    let fake = FakeStripe::start().await;
    let app = stripe_app(&fake, &[]).await;
    let owner = app.user("owner@example.com");
    let org = app.create_org(&owner, "Acme").await;
    for body in [
        "not json at all".to_owned(),
        "[]".to_owned(),
        json!({"hello": "world"}).to_string(),
        json!({"id": "ch_1", "type": "charge.succeeded", "created": now(), "data": {"object": {}}})
            .to_string(),
        json!({"id": "evt_1", "created": now(), "data": {"object": {}}}).to_string(),
        json!({"id": "evt_1", "type": "invoice.paid", "created": "today", "data": {"object": {}}})
            .to_string(),
        json!({"id": "evt_1", "type": "invoice.paid", "created": now()}).to_string(),
    ] {
        let (s, p) = post_webhook(&app, &body, Some(&signature_header(WHSEC_A, &body))).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{body}: {p}");
        assert_eq!(p["code"], "invalid_event", "{body}: {p}");
    }
    assert_eq!(webhook_events(&app).await, 0);

    // An event type Tenantry does not handle: recorded, 200, no effect.
    let before = app.snapshot().await;
    let body = event(
        "evt_unknown_type",
        "charge.refunded",
        now(),
        json!({"id": "ch_1", "object": "charge", "metadata": {"org_id": org.to_string()}}),
    );
    deliver(&app, &body).await;
    // An event about an org that does not exist: recorded, 200.
    let ghost = Uuid::now_v7();
    let body = event(
        "evt_ghost_org",
        "checkout.session.completed",
        now(),
        pack_session(ghost, "cs_ghost"),
    );
    deliver(&app, &body).await;
    // And one naming no org at all (an unknown customer).
    let body = event(
        "evt_nobody",
        "invoice.paid",
        now(),
        json!({"id": "in_nobody", "object": "invoice", "customer": "cus_unknown", "amount_due": 5, "amount_paid": 5, "currency": "usd"}),
    );
    deliver(&app, &body).await;
    assert_eq!(app.snapshot().await, before, "no tenant data changed");
    assert_eq!(app.count("invoices").await, 0);
    assert_eq!(
        app.count("credit_grants where source = 'purchase'").await,
        0
    );
    let recorded: Vec<(String, Option<Uuid>)> =
        sqlx::query_as("select event_id, org_id from app.webhook_events order by event_id")
            .fetch_all(&app.db.admin)
            .await
            .unwrap();
    assert_eq!(
        recorded,
        vec![
            ("evt_ghost_org".to_owned(), None),
            ("evt_nobody".to_owned(), None),
            ("evt_unknown_type".to_owned(), Some(org)),
        ]
    );
}

#[tokio::test]
async fn subscription_created_updated_and_deleted_mirror_stripe() {
    let fake = FakeStripe::start().await;
    let app = stripe_app(&fake, &[]).await;
    let owner = app.user("owner@example.com");
    let org = app.create_org(&owner, "Acme").await;
    let t0 = now() - 100;

    // Checkout completed in subscription mode links the org to Stripe.
    let session = json!({
        "id": "cs_sub_1", "object": "checkout.session", "mode": "subscription",
        "payment_status": "paid", "status": "complete", "customer": "cus_hook_1",
        "subscription": "sub_1", "client_reference_id": org.to_string(),
        "metadata": {"org_id": org.to_string(), "plan": "pro"}
    });
    deliver(
        &app,
        &event("evt_s0", "checkout.session.completed", t0, session),
    )
    .await;
    let (_, _, provider, sub, _) = subscription(&app, org).await;
    assert_eq!(
        (provider.as_str(), sub.as_deref()),
        ("stripe", Some("sub_1"))
    );

    // created: trialing on pro, with Stripe's period and trial end.
    let mut obj = subscription_object(org, "sub_1", "trialing", "pro", t0);
    obj["trial_end"] = json!(t0 + 14 * 86400);
    deliver(
        &app,
        &event("evt_s1", "customer.subscription.created", t0 + 1, obj),
    )
    .await;
    let row = subscription(&app, org).await;
    assert_eq!(row.0, "trialing");
    assert_eq!(row.1, "pro");
    let (start, end, trial_end, trial_used): (
        chrono::DateTime<chrono::Utc>,
        chrono::DateTime<chrono::Utc>,
        Option<chrono::DateTime<chrono::Utc>>,
        bool,
    ) = sqlx::query_as(
        "select current_period_start, current_period_end, trial_end, trial_used
         from subscriptions where org_id = $1",
    )
    .bind(org)
    .fetch_one(&app.db.admin)
    .await
    .unwrap();
    assert_eq!(start.timestamp(), t0);
    assert_eq!(end.timestamp(), t0 + 30 * 86400);
    assert_eq!(trial_end.map(|t| t.timestamp()), Some(t0 + 14 * 86400));
    assert!(trial_used);
    // The customer now maps to the org, for events that name only it.
    let mapped: Uuid = sqlx::query_scalar(
        "select org_id from app.billing_customer_orgs where customer_id = 'cus_hook_1'",
    )
    .fetch_one(&app.db.admin)
    .await
    .unwrap();
    assert_eq!(mapped, org);

    // updated (a newer API version: the period lives on the first item; no
    // metadata: the org is found from the customer): active on business,
    // cancelling at period end.
    let p2 = t0 + 30 * 86400;
    let obj = json!({
        "id": "sub_1", "object": "subscription", "customer": "cus_hook_1",
        "status": "active", "cancel_at_period_end": true, "trial_end": null,
        "metadata": {"plan": "business"},
        "items": {"data": [{"id": "si_1", "current_period_start": p2, "current_period_end": p2 + 30 * 86400}]}
    });
    deliver(
        &app,
        &event("evt_s2", "customer.subscription.updated", t0 + 2, obj),
    )
    .await;
    let row = subscription(&app, org).await;
    assert_eq!(
        row,
        (
            "active".to_owned(),
            "business".to_owned(),
            "stripe".to_owned(),
            Some("sub_1".to_owned()),
            true
        )
    );
    let start: chrono::DateTime<chrono::Utc> =
        sqlx::query_scalar("select current_period_start from subscriptions where org_id = $1")
            .bind(org)
            .fetch_one(&app.db.admin)
            .await
            .unwrap();
    assert_eq!(start.timestamp(), p2);

    // Statuses Tenantry does not have map onto its own.
    let obj = subscription_object(org, "sub_1", "unpaid", "business", p2);
    deliver(
        &app,
        &event("evt_s3", "customer.subscription.updated", t0 + 3, obj),
    )
    .await;
    assert_eq!(subscription(&app, org).await.0, "past_due");

    // deleted: canceled, back on free, no longer Stripe's.
    let mut obj = subscription_object(org, "sub_1", "canceled", "business", p2);
    obj["canceled_at"] = json!(t0 + 4);
    deliver(
        &app,
        &event("evt_s4", "customer.subscription.deleted", t0 + 4, obj),
    )
    .await;
    assert_eq!(
        subscription(&app, org).await,
        (
            "canceled".to_owned(),
            "free".to_owned(),
            "manual".to_owned(),
            None,
            false
        )
    );

    // An update about the deleted subscription arriving late (even with a
    // newer timestamp) does not bring it back.
    let obj = subscription_object(org, "sub_1", "active", "business", p2);
    deliver(
        &app,
        &event("evt_s5", "customer.subscription.updated", t0 + 5, obj),
    )
    .await;
    assert_eq!(subscription(&app, org).await.0, "canceled");
    assert_eq!(webhook_events(&app).await, 6);
}

#[tokio::test]
async fn out_of_order_subscription_updates_never_overwrite_newer_state() {
    let fake = FakeStripe::start().await;
    let app = stripe_app(&fake, &[]).await;
    let owner = app.user("owner@example.com");
    let org = app.create_org(&owner, "Acme").await;
    let t = now() - 50;

    let created = subscription_object(org, "sub_9", "incomplete", "pro", t);
    deliver(
        &app,
        &event("evt_o1", "customer.subscription.created", t, created),
    )
    .await;
    // The newer update arrives first ...
    let newer = subscription_object(org, "sub_9", "active", "business", t);
    deliver(
        &app,
        &event("evt_o3", "customer.subscription.updated", t + 20, newer),
    )
    .await;
    let after_newer = subscription(&app, org).await;
    assert_eq!(
        (after_newer.0.as_str(), after_newer.1.as_str()),
        ("active", "business")
    );
    // ... then the older one: recorded as processed, changing nothing.
    let older = subscription_object(org, "sub_9", "past_due", "pro", t);
    let ack = deliver(
        &app,
        &event("evt_o2", "customer.subscription.updated", t + 10, older),
    )
    .await;
    assert_eq!(ack["duplicate"], false);
    assert_eq!(subscription(&app, org).await, after_newer);
    let state_at: chrono::DateTime<chrono::Utc> =
        sqlx::query_scalar("select provider_state_at from subscriptions where org_id = $1")
            .bind(org)
            .fetch_one(&app.db.admin)
            .await
            .unwrap();
    assert_eq!(state_at.timestamp(), t + 20);
    let recorded: i64 = scalar_i64(
        &app,
        "select count(*) from app.webhook_events where org_id = $1 and event_id = 'evt_o2'",
        org,
    )
    .await;
    assert_eq!(recorded, 1, "the older event is recorded as processed");

    // An invoice.payment_failed older than the applied state changes nothing
    // either; an invoice.paid newer than it does.
    let failed = json!({
        "id": "in_old", "object": "invoice", "customer": "cus_hook_1", "subscription": "sub_9",
        "status": "open", "amount_due": 2900, "amount_paid": 0, "currency": "usd",
        "metadata": {}, "subscription_details": {"metadata": {"org_id": org.to_string()}}
    });
    deliver(
        &app,
        &event("evt_o4", "invoice.payment_failed", t + 5, failed),
    )
    .await;
    assert_eq!(subscription(&app, org).await.0, "active");
}

fn invoice_object(org: Uuid, id: &str, sub: &str, paid: bool) -> Value {
    let t = now();
    json!({
        "id": id, "object": "invoice", "customer": "cus_hook_1", "number": format!("ACME-{id}"),
        "status": if paid { "paid" } else { "open" },
        "amount_due": 2900, "amount_paid": if paid { 2900 } else { 0 }, "currency": "usd",
        "hosted_invoice_url": format!("https://invoice.stripe.com/i/{id}"),
        "description": null, "due_date": null,
        "status_transitions": {"paid_at": if paid { json!(t) } else { Value::Null }},
        "parent": {"type": "subscription_details",
                   "subscription_details": {"subscription": sub, "metadata": {"org_id": org.to_string(), "plan": "pro"}}},
        "lines": {"data": [{"period": {"start": t, "end": t + 30 * 86400}}]}
    })
}

#[tokio::test]
async fn invoice_paid_records_the_invoice_and_reactivates_a_past_due_subscription() {
    let fake = FakeStripe::start().await;
    let app = stripe_app(&fake, &[]).await;
    let owner = app.user("owner@example.com");
    let org = app.create_org(&owner, "Acme").await;
    let t = now() - 60;
    let obj = subscription_object(org, "sub_p", "past_due", "pro", t);
    deliver(
        &app,
        &event("evt_p1", "customer.subscription.updated", t, obj),
    )
    .await;
    assert_eq!(subscription(&app, org).await.0, "past_due");

    let obj = invoice_object(org, "in_p1", "sub_p", true);
    deliver(&app, &event("evt_p2", "invoice.paid", t + 10, obj)).await;
    assert_eq!(subscription(&app, org).await.0, "active");
    let (s, page) = app
        .get(&format!("/api/v1/orgs/{org}/invoices"), &owner)
        .await;
    assert_eq!(s, StatusCode::OK, "{page}");
    let inv = &page["data"][0];
    assert_eq!(inv["provider"], "stripe");
    assert_eq!(inv["provider_invoice_id"], "in_p1");
    assert_eq!(inv["number"], "ACME-in_p1");
    assert_eq!(inv["status"], "paid");
    assert_eq!(inv["amount_paid_minor"], 2900);
    assert_eq!(inv["hosted_url"], "https://invoice.stripe.com/i/in_p1");
    assert!(inv["paid_at"].is_string());
    assert!(inv["period_start"].is_string());

    // A late payment_failed about the same (paid) invoice changes nothing.
    let obj = invoice_object(org, "in_p1", "sub_p", false);
    deliver(
        &app,
        &event("evt_p3", "invoice.payment_failed", t + 20, obj),
    )
    .await;
    let status: String = sqlx::query_scalar(
        "select status from invoices where org_id = $1 and provider_invoice_id = 'in_p1'",
    )
    .bind(org)
    .fetch_one(&app.db.admin)
    .await
    .unwrap();
    assert_eq!(status, "paid");
    assert_eq!(subscription(&app, org).await.0, "active");
    assert_eq!(
        app.count("app.job_outbox where envelope like '%payment_failed%'")
            .await,
        0,
        "no email for a paid invoice"
    );
}

#[tokio::test]
async fn invoice_payment_failed_makes_the_subscription_past_due_and_emails_the_owners() {
    let sink = SmtpSink::start().await;
    let smtp = sink.url();
    let fake = FakeStripe::start().await;
    let app = stripe_app(&fake, &[("SMTP_URL", smtp.as_str())]).await;
    let worker = app.start_worker();
    let owner = app.user("owner@example.com");
    let member = app.user("member@example.com");
    let org = app.create_org(&owner, "Acme <Rockets>").await;
    app.add_member(org, &owner, &member, "member").await;

    let t = now() - 60;
    let obj = subscription_object(org, "sub_f", "active", "pro", t);
    deliver(
        &app,
        &event("evt_f1", "customer.subscription.created", t, obj),
    )
    .await;
    let obj = invoice_object(org, "in_f1", "sub_f", false);
    deliver(
        &app,
        &event("evt_f2", "invoice.payment_failed", t + 10, obj.clone()),
    )
    .await;
    assert_eq!(subscription(&app, org).await.0, "past_due");
    let status: String = sqlx::query_scalar(
        "select status from invoices where org_id = $1 and provider_invoice_id = 'in_f1'",
    )
    .bind(org)
    .fetch_one(&app.db.admin)
    .await
    .unwrap();
    assert_eq!(status, "open");

    let payment_failed = || {
        sink.messages()
            .into_iter()
            .filter(|m| m.subject().is_some_and(|s| s.contains("Payment failed")))
            .collect::<Vec<_>>()
    };
    eventually(20, "the payment-failed email", || async {
        (!payment_failed().is_empty()).then_some(())
    })
    .await;
    // A replay of the event sends nothing more.
    deliver(
        &app,
        &event("evt_f2", "invoice.payment_failed", t + 10, obj),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let got = payment_failed();
    assert_eq!(got.len(), 1, "one payment-failed email, to the one owner");
    let m = &got[0];
    assert_eq!(m.rcpt_to, vec!["owner@example.com".to_owned()]);
    let text = m.text_body().unwrap();
    assert!(text.contains("29.00 USD"), "{text}");
    assert!(text.contains("Acme <Rockets>"), "{text}");
    assert!(
        text.contains(&format!("https://app.example.test/orgs/{org}/billing")),
        "{text}"
    );
    worker.stop().await;
}

// ------------------------------------------------------------------ manual provider

/// Issues the manual invoice of `plan` for a period starting `days_ago`
/// days ago, as the subscriptions code does, in the org's tenant context.
async fn issue(
    app: &TestApp,
    org: Uuid,
    plan: &str,
    days_ago: i64,
) -> tenantry::billing::payments::invoices::Invoice {
    let mut conn = app.db.app.acquire().await.unwrap();
    let plans = tenantry::billing::repo::active_plans(&mut conn)
        .await
        .unwrap();
    drop(conn);
    let plan = plans.into_iter().find(|p| p.code == plan).unwrap();
    let mut tx = app.db.app.begin().await.unwrap();
    sqlx::query("select * from app.enter_org($1, $2)")
        .bind(org)
        .bind(Uuid::nil())
        .execute(&mut *tx)
        .await
        .unwrap();
    let start = chrono::DateTime::from_timestamp(now() - days_ago * 86400, 0).unwrap();
    let end = start + chrono::Duration::days(30);
    let inv = tenantry::billing::payments::invoices::issue_invoice(&mut tx, org, &plan, start, end)
        .await
        .unwrap();
    // Idempotent per (org, period_start).
    let again =
        tenantry::billing::payments::invoices::issue_invoice(&mut tx, org, &plan, start, end)
            .await
            .unwrap();
    assert_eq!(inv.id, again.id);
    tx.commit().await.unwrap();
    inv
}

#[tokio::test]
async fn manual_invoices_are_marked_paid_by_platform_admins_only() {
    let app = TestApp::spawn().await;
    let owner = app.user("owner@example.com");
    let org = app.create_org(&owner, "Acme").await;
    let other_org = app.create_org(&owner, "Other").await;

    // Checkout and portal are unavailable with manual payments.
    for path in ["billing/checkout", "billing/portal"] {
        let (s, p) = app
            .call(
                Method::POST,
                &format!("/api/v1/orgs/{org}/{path}"),
                Some(&owner.token),
                Some(json!({"plan": "pro"})),
            )
            .await;
        assert_eq!(s, StatusCode::CONFLICT, "{path}: {p}");
        assert_eq!(p["code"], "checkout_unavailable", "{path}: {p}");
    }

    let inv = issue(&app, org, "pro", 20).await;
    assert_eq!(inv.status, "open");
    assert_eq!(inv.amount_due_minor, 2900);
    assert_eq!(inv.provider, "manual");
    assert_eq!(inv.number, "INV-000001");
    // The invoice is 20 days old, due after 14: the org is past_due.
    sqlx::query(
        "update subscriptions set plan_code = 'pro', status = 'past_due' where org_id = $1",
    )
    .bind(org)
    .execute(&app.db.admin)
    .await
    .unwrap();

    let path = format!("/api/v1/admin/orgs/{org}/invoices/{}/paid", inv.id);
    // An org owner is not a platform admin; nobody anonymous either.
    let (s, _) = app
        .call(Method::POST, &path, Some(&owner.token), None)
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, _) = app.call(Method::POST, &path, None, None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert_eq!(subscription(&app, org).await.0, "past_due");

    let admin = service_key();
    // The invoice under another org's path, an unknown invoice or org: 404.
    for wrong in [
        format!("/api/v1/admin/orgs/{other_org}/invoices/{}/paid", inv.id),
        format!("/api/v1/admin/orgs/{org}/invoices/{}/paid", Uuid::now_v7()),
        format!(
            "/api/v1/admin/orgs/{}/invoices/{}/paid",
            Uuid::now_v7(),
            inv.id
        ),
    ] {
        let (s, p) = app.call(Method::POST, &wrong, Some(&admin), None).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{wrong}: {p}");
    }
    let (s, p) = app
        .call(
            Method::POST,
            &format!("/api/v1/admin/orgs/{org}/invoices/nope/paid"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{p}");

    let (s, paid) = app.call(Method::POST, &path, Some(&admin), None).await;
    assert_eq!(s, StatusCode::OK, "{paid}");
    assert_eq!(paid["status"], "paid");
    assert_eq!(paid["amount_paid_minor"], 2900);
    assert!(paid["paid_at"].is_string());
    assert_eq!(subscription(&app, org).await.0, "active");
    // Again: a no-op with the same answer.
    let (s, again) = app.call(Method::POST, &path, Some(&admin), None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(again["paid_at"], paid["paid_at"]);
    let audited: i64 = scalar_i64(
        &app,
        "select count(*) from audit_log where org_id = $1 and action = 'invoice.paid'",
        org,
    )
    .await;
    assert_eq!(audited, 1);
}

#[tokio::test]
async fn the_invoice_list_is_paginated_newest_first_and_walled_per_org() {
    let app = TestApp::spawn().await;
    let owner = app.user("owner@example.com");
    let member = app.user("member@example.com");
    let viewer = app.user("viewer@example.com");
    let stranger = app.user("stranger@example.com");
    let org = app.create_org(&owner, "Acme").await;
    let theirs = app.create_org(&stranger, "Theirs").await;
    app.add_member(org, &owner, &member, "member").await;
    app.add_member(org, &owner, &viewer, "viewer").await;
    let mut issued = Vec::new();
    for days_ago in [90, 60, 30] {
        issued.push(issue(&app, org, "pro", days_ago).await.id);
    }
    issue(&app, theirs, "business", 10).await;

    let path = format!("/api/v1/orgs/{org}/invoices");
    let (s, page1) = app.get(&format!("{path}?limit=2"), &member).await;
    assert_eq!(s, StatusCode::OK, "{page1}");
    let ids = |p: &Value| -> Vec<Uuid> {
        p["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["id"].as_str().unwrap().parse().unwrap())
            .collect()
    };
    assert_eq!(ids(&page1), vec![issued[2], issued[1]], "newest first");
    let cursor = page1["next_cursor"].as_str().unwrap();
    let (s, page2) = app
        .get(&format!("{path}?limit=2&cursor={cursor}"), &member)
        .await;
    assert_eq!(s, StatusCode::OK, "{page2}");
    assert_eq!(ids(&page2), vec![issued[0]]);
    assert!(page2["next_cursor"].is_null());
    assert_eq!(page1["data"][0]["number"], "INV-000003");

    // Tenant wall: another org's member gets 404 and sees nothing; a viewer
    // (no billing:read) gets 403; bad paging is 400.
    let (s, p) = app.get(&path, &stranger).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{p}");
    let (s, _) = app.get(&path, &viewer).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, theirs_page) = app
        .get(&format!("/api/v1/orgs/{theirs}/invoices"), &stranger)
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(theirs_page["data"].as_array().unwrap().len(), 1);
    assert_eq!(theirs_page["data"][0]["amount_due_minor"], 9900);
    for bad in ["?limit=0", "?cursor=nope", "?limit=abc"] {
        let (s, _) = app.get(&format!("{path}{bad}"), &member).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{bad}");
    }
}

#[tokio::test]
async fn the_credit_pack_catalog_is_public() {
    let app = TestApp::spawn().await;
    let (s, body) = app
        .call(Method::GET, "/api/v1/credit-packs", None, None)
        .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let codes: Vec<&str> = body
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["code"].as_str().unwrap())
        .collect();
    assert_eq!(codes, ["credits_1000", "credits_10000"]);
    assert_eq!(body[0]["credits"], 1000);
    assert_eq!(body[0]["price_minor"], 1000);
    assert_eq!(body[0]["currency"], "USD");
    // The routes are documented.
    let (_, doc) = app.call(Method::GET, "/openapi.json", None, None).await;
    for p in [
        "/api/v1/credit-packs",
        "/api/v1/orgs/{org_id}/billing/checkout",
        "/api/v1/orgs/{org_id}/billing/portal",
        "/api/v1/orgs/{org_id}/invoices",
        "/api/v1/admin/orgs/{org_id}/invoices/{invoice_id}/paid",
        "/api/v1/webhooks/stripe",
    ] {
        assert!(doc["paths"][p].is_object(), "{p} is not documented");
    }
}

#[tokio::test]
async fn stripe_managed_periods_grant_the_plans_credits_once_each() {
    let fake = FakeStripe::start().await;
    let app = stripe_app(&fake, &[]).await;
    let owner = app.user("owner@example.com");
    let org = app.create_org(&owner, "Acme").await;
    let (free, _) = period_grant(&app, org, 100).await;
    let t0 = now() - 100;
    // Still incomplete (first payment pending): nothing is granted, and the
    // free plan's credits go on.
    let obj = subscription_object(org, "sub_c", "incomplete", "pro", t0);
    deliver(
        &app,
        &event("evt_c0", "customer.subscription.created", t0, obj),
    )
    .await;
    assert_eq!(period_grants(&app, org).await, 0);
    assert_eq!(period_grant(&app, org, 100).await, (free, 100));

    // Active: pro's 5,000 credits for this period, once, however many
    // events repeat the period.
    let obj = subscription_object(org, "sub_c", "active", "pro", t0);
    deliver(
        &app,
        &event(
            "evt_c1",
            "customer.subscription.updated",
            t0 + 1,
            obj.clone(),
        ),
    )
    .await;
    deliver(
        &app,
        &event("evt_c2", "customer.subscription.updated", t0 + 2, obj),
    )
    .await;
    assert_eq!(period_grants(&app, org).await, 5000);
    // The first paid period supersedes the free one: its credits end.
    assert_eq!(period_grant(&app, org, 100).await, (free, 0));
    assert_eq!(all_expired(&app, org).await, vec![100]);

    // Of two events in the same second, a late `incomplete` does not undo `active`.
    let late = subscription_object(org, "sub_c", "incomplete", "pro", t0);
    deliver(
        &app,
        &event("evt_c3", "customer.subscription.created", t0 + 2, late),
    )
    .await;
    assert_eq!(subscription(&app, org).await.0, "active");

    // Stripe renews: the next period (from the old end) brings its own
    // grant, and ends nothing: the old period's credits run to its end.
    let next = subscription_object(org, "sub_c", "active", "pro", t0 + 30 * 86400);
    deliver(
        &app,
        &event("evt_c4", "customer.subscription.updated", t0 + 3, next),
    )
    .await;
    assert_eq!(period_grants(&app, org).await, 10_000);
    let remaining: Vec<(String, i64)> = sqlx::query_as(
        "select ref, remaining from credit_grants where org_id = $1 and amount = 5000
         order by expires_at",
    )
    .bind(org)
    .fetch_all(&app.db.admin)
    .await
    .unwrap();
    assert_eq!(remaining.len(), 2, "{remaining:?}");
    assert_ne!(remaining[0].0, remaining[1].0);
    assert_eq!((remaining[0].1, remaining[1].1), (5000, 5000));
    assert_eq!(all_expired(&app, org).await, vec![100]);
}

/// Credits of plan periods (pro's 5,000) granted to `org`.
async fn period_grants(app: &TestApp, org: Uuid) -> i64 {
    scalar_i64(
        app,
        "select coalesce(sum(amount), 0)::bigint from credit_grants
         where org_id = $1 and source = 'plan_period' and ref like 'period:%' and amount = 5000",
        org,
    )
    .await
}

#[tokio::test]
async fn a_stripe_managed_subscription_is_canceled_and_resumed_at_stripe() {
    let fake = FakeStripe::start().await;
    let app = stripe_app(&fake, &[]).await;
    let owner = app.user("owner@example.com");
    let org = app.create_org(&owner, "Acme").await;
    let t0 = now() - 100;
    let obj = subscription_object(org, "sub_k", "active", "pro", t0);
    fake.seed_subscription(obj.clone());
    deliver(
        &app,
        &event("evt_k0", "customer.subscription.created", t0, obj),
    )
    .await;
    assert_eq!(subscription(&app, org).await.2, "stripe");
    let cancel = format!("/api/v1/orgs/{org}/subscription/cancel");
    let resume = format!("/api/v1/orgs/{org}/subscription/resume");

    // Cancel: asked of Stripe (with an idempotency key), mirrored at once.
    let (s, body) = app.post(&cancel, &owner, json!({})).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(body["cancel_at_period_end"], true, "{body}");
    assert_eq!(body["plan_code"], "pro");
    let asked = fake.requests_to("/v1/subscriptions/sub_k");
    assert_eq!(asked.len(), 1);
    assert_eq!(asked[0].field("cancel_at_period_end"), Some("true"));
    assert_eq!(
        asked[0].field("payment_behavior"),
        None,
        "{:?}",
        asked[0].form
    );
    assert!(asked[0].idempotency_key.is_some());
    assert!(subscription(&app, org).await.4);
    // Asking again changes nothing and asks Stripe nothing.
    let (s, _) = app.post(&cancel, &owner, json!({})).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(fake.requests_to("/v1/subscriptions/sub_k").len(), 1);

    // Stripe declining: 402, nothing changes here.
    fake.fail_with(402);
    let (s, body) = app.post(&resume, &owner, json!({})).await;
    assert_eq!(s, StatusCode::PAYMENT_REQUIRED, "{body}");
    assert_eq!(body["code"], "payment_declined", "{body}");
    assert!(subscription(&app, org).await.4);
    fake.succeed();

    let (s, body) = app.post(&resume, &owner, json!({})).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(body["cancel_at_period_end"], false);
    assert!(!subscription(&app, org).await.4);
    let asked = fake.requests_with("POST", "/v1/subscriptions/sub_k");
    let last = asked.last().unwrap();
    assert_eq!(last.field("cancel_at_period_end"), Some("false"));
    assert_eq!(last.field("payment_behavior"), None, "{:?}", last.form);
    let (s, body) = app.post(&resume, &owner, json!({})).await;
    assert_eq!(s, StatusCode::CONFLICT);
    assert_eq!(body["code"], "not_canceling");
    let audited: i64 = scalar_i64(
        &app,
        "select count(*) from audit_log where org_id = $1
         and action in ('subscription.cancel_scheduled', 'subscription.resumed')",
        org,
    )
    .await;
    assert_eq!(audited, 2);
}

// ------------------------------------------------------------------ plan changes at Stripe

async fn put_plan(app: &TestApp, org: Uuid, user: &TestUser, code: &str) -> (StatusCode, Value) {
    app.call(
        Method::PUT,
        &format!("/api/v1/orgs/{org}/subscription"),
        Some(&user.token),
        Some(json!({ "plan": code })),
    )
    .await
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
    let mut obj = subscription_object(org, sub, status, plan, t0);
    obj["customer"] = json!(format!("cus_{sub}"));
    obj["items"]["data"][0]["price"]["unit_amount"] =
        json!(if plan == "business" { 9900 } else { 2900 });
    if status == "trialing" {
        obj["trial_end"] = json!(t0 + 14 * 86400);
    }
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

/// Delivers the fake's current state of `sub` as `customer.subscription.updated`, created now.
async fn deliver_current(app: &TestApp, fake: &FakeStripe, sub: &str, event_id: &str) {
    let obj = fake.subscription(sub).unwrap();
    deliver(
        app,
        &event(event_id, "customer.subscription.updated", now(), obj),
    )
    .await;
}

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

/// (count, sum) of the plan-period grants of `amount` credits to `org`.
async fn plan_grants(app: &TestApp, org: Uuid, amount: i64) -> (i64, i64) {
    sqlx::query_as(
        "select count(*), coalesce(sum(amount), 0)::bigint from credit_grants
         where org_id = $1 and source = 'plan_period' and ref like 'period:%' and amount = $2",
    )
    .bind(org)
    .bind(amount)
    .fetch_one(&app.db.admin)
    .await
    .unwrap()
}

async fn audits(app: &TestApp, org: Uuid, action: &str) -> i64 {
    sqlx::query_scalar("select count(*) from audit_log where org_id = $1 and action = $2")
        .bind(org)
        .bind(action)
        .fetch_one(&app.db.admin)
        .await
        .unwrap()
}

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

/// The (method, path) of each request the fake received, in order.
fn sent(fake: &FakeStripe) -> Vec<(String, String)> {
    fake.requests()
        .into_iter()
        .map(|r| (r.method, r.path))
        .collect()
}

fn pairs(expected: &[(&str, &str)]) -> Vec<(String, String)> {
    expected
        .iter()
        .map(|(m, p)| ((*m).to_owned(), (*p).to_owned()))
        .collect()
}

fn unix_of(v: &Value) -> i64 {
    v.as_str()
        .unwrap_or_else(|| panic!("not a time: {v}"))
        .parse::<chrono::DateTime<chrono::Utc>>()
        .unwrap()
        .timestamp()
}

#[tokio::test]
async fn a_stripe_upgrade_is_made_at_stripe_now_and_mirrored_and_free_cancels_there() {
    let fake = FakeStripe::start().await;
    let app = stripe_app(&fake, &[]).await;
    let owner = app.user("owner@example.com");
    let member = app.user("member@example.com");
    let org = app.create_org(&owner, "Acme").await;
    app.add_member(org, &owner, &member, "member").await;
    let obj = stripe_managed(&app, &fake, org, "sub_u", "active", "pro").await;
    let t0 = obj["current_period_start"].as_i64().unwrap();
    assert_eq!(plan_grants(&app, org, 25_000).await, (0, 0));

    // Refused before Stripe hears of it: an unknown plan; a member (no billing:manage).
    let (s, p) = put_plan(&app, org, &owner, "platinum").await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{p}");
    assert_eq!(p["code"], "unknown_plan", "{p}");
    let (s, p) = put_plan(&app, org, &member, "business").await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{p}");
    // The current plan, nothing pending: no change, nothing asked.
    let (s, p) = put_plan(&app, org, &owner, "pro").await;
    assert_eq!(s, StatusCode::OK, "{p}");
    assert_eq!(p["plan_code"], "pro", "{p}");
    assert!(fake.requests().is_empty(), "{:?}", fake.requests());

    // pro -> business: read, a price, the subscription's item moved to it.
    let (s, body) = put_plan(&app, org, &owner, "business").await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(
        sent(&fake),
        pairs(&[
            ("GET", "/v1/subscriptions/sub_u"),
            ("POST", "/v1/prices"),
            ("POST", "/v1/subscriptions/sub_u"),
        ])
    );
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
    assert_form(
        price,
        &[
            ("currency", "usd"),
            ("unit_amount", "9900"),
            ("recurring[interval]", "month"),
            ("product_data[name]", "Business"),
            ("metadata[plan]", "business"),
        ],
    );
    assert!(
        price
            .idempotency_key
            .as_deref()
            .is_some_and(|k| !k.is_empty())
    );
    let update = &fake.requests_with("POST", "/v1/subscriptions/sub_u")[0];
    assert_form(
        update,
        &[
            ("items[0][id]", "si_1"),
            ("proration_behavior", "always_invoice"),
            ("billing_cycle_anchor", "now"),
            ("payment_behavior", "error_if_incomplete"),
            ("cancel_at_period_end", "false"),
            ("metadata[plan]", "business"),
            ("metadata[pending_plan]", ""),
            ("metadata[pending_from]", ""),
        ],
    );
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
        (
            "business".to_owned(),
            "active".to_owned(),
            None,
            false,
            new_start,
            new_start + 30 * 86400
        )
    );
    assert_eq!(plan_grants(&app, org, 25_000).await, (1, 25_000));
    assert_eq!(audits(&app, org, "subscription.upgraded").await, 1);
    // Stripe's event about the same change grants nothing more.
    deliver_current(&app, &fake, "sub_u", "evt_u_updated").await;
    assert_eq!(sub_state(&app, org).await.0, "business");
    assert_eq!(plan_grants(&app, org, 25_000).await, (1, 25_000));

    // To free: a cancellation at the period's end, at Stripe; no price.
    let (s, body) = put_plan(&app, org, &owner, "free").await;
    assert_eq!(s, StatusCode::OK, "{body}");
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
    assert_eq!(audits(&app, org, "subscription.cancel_scheduled").await, 1);
}

#[tokio::test]
async fn a_stripe_upgrade_during_a_trial_ends_the_trial_at_stripe() {
    let fake = FakeStripe::start().await;
    let app = stripe_app(&fake, &[]).await;
    let owner = app.user("owner@example.com");
    let org = app.create_org(&owner, "Acme").await;
    stripe_managed(&app, &fake, org, "sub_t", "trialing", "pro").await;

    let (s, body) = put_plan(&app, org, &owner, "business").await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(
        sent(&fake),
        pairs(&[
            ("GET", "/v1/subscriptions/sub_t"),
            ("POST", "/v1/prices"),
            ("POST", "/v1/subscriptions/sub_t"),
        ])
    );
    let update = &fake.requests_with("POST", "/v1/subscriptions/sub_t")[0];
    assert_form(
        update,
        &[
            ("items[0][id]", "si_1"),
            ("proration_behavior", "always_invoice"),
            ("trial_end", "now"),
            ("payment_behavior", "error_if_incomplete"),
            ("cancel_at_period_end", "false"),
            ("metadata[plan]", "business"),
            ("metadata[pending_plan]", ""),
            ("metadata[pending_from]", ""),
        ],
    );
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
    assert_eq!(audits(&app, org, "subscription.upgraded").await, 1);
}

#[tokio::test]
async fn a_stripe_downgrade_is_scheduled_at_stripe_and_takes_effect_when_stripe_renews() {
    let fake = FakeStripe::start().await;
    let app = stripe_app(&fake, &[]).await;
    let owner = app.user("owner@example.com");
    let org = app.create_org(&owner, "Acme").await;
    let obj = stripe_managed(&app, &fake, org, "sub_d", "active", "business").await;
    let t0 = obj["current_period_start"].as_i64().unwrap();
    let end = obj["current_period_end"].as_i64().unwrap();
    assert_eq!(plan_grants(&app, org, 25_000).await, (1, 25_000));

    let (s, body) = put_plan(&app, org, &owner, "pro").await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(
        sent(&fake),
        pairs(&[
            ("GET", "/v1/subscriptions/sub_d"),
            ("POST", "/v1/prices"),
            ("POST", "/v1/subscriptions/sub_d"),
        ])
    );
    let price = &fake.requests_with("POST", "/v1/prices")[0];
    assert_form(
        price,
        &[
            ("currency", "usd"),
            ("unit_amount", "2900"),
            ("recurring[interval]", "month"),
            ("product_data[name]", "Pro"),
            ("metadata[plan]", "pro"),
        ],
    );
    assert!(price.idempotency_key.is_some());
    let update = &fake.requests_with("POST", "/v1/subscriptions/sub_d")[0];
    let end_s = end.to_string();
    assert_form(
        update,
        &[
            ("items[0][id]", "si_1"),
            ("proration_behavior", "none"),
            ("metadata[plan]", "business"),
            ("metadata[pending_plan]", "pro"),
            ("metadata[pending_from]", end_s.as_str()),
        ],
    );
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
    assert_eq!(body["pending_plan_code"], "pro", "{body}");
    assert_eq!(body["pending_plan"]["code"], "pro", "{body}");
    let scheduled = (
        "business".to_owned(),
        "active".to_owned(),
        Some("pro".to_owned()),
        false,
        t0,
        end,
    );
    assert_eq!(sub_state(&app, org).await, scheduled);
    assert_eq!(
        audits(&app, org, "subscription.downgrade_scheduled").await,
        1
    );
    assert_eq!(audits(&app, org, "subscription.upgraded").await, 0);

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
    assert_eq!(
        sub_state(&app, org).await,
        (
            "pro".to_owned(),
            "active".to_owned(),
            None,
            false,
            end,
            end + 30 * 86400
        )
    );
    let (s, view) = app
        .get(&format!("/api/v1/orgs/{org}/subscription"), &owner)
        .await;
    assert_eq!(s, StatusCode::OK, "{view}");
    assert_eq!(view["plan_code"], "pro", "{view}");
    assert!(view["pending_plan_code"].is_null(), "{view}");
    assert_eq!(plan_grants(&app, org, 5_000).await, (1, 5_000));
    deliver_current(&app, &fake, "sub_d", "evt_d_renewed_again").await;
    assert_eq!(plan_grants(&app, org, 5_000).await, (1, 5_000));
    assert_eq!(plan_grants(&app, org, 25_000).await, (1, 25_000));
}

#[tokio::test]
async fn a_pending_stripe_downgrade_is_taken_back_at_stripe_and_can_be_scheduled_again() {
    let fake = FakeStripe::start().await;
    let app = stripe_app(&fake, &[]).await;
    let owner = app.user("owner@example.com");
    let org = app.create_org(&owner, "Acme").await;
    let obj = stripe_managed(&app, &fake, org, "sub_r", "active", "business").await;
    let t0 = obj["current_period_start"].as_i64().unwrap();
    let end = obj["current_period_end"].as_i64().unwrap();

    let (s, body) = put_plan(&app, org, &owner, "pro").await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(body["pending_plan_code"], "pro", "{body}");
    assert_eq!(fake.requests_with("POST", "/v1/prices").len(), 1);
    assert_eq!(
        fake.requests_with("POST", "/v1/subscriptions/sub_r").len(),
        1
    );

    // The current plan again: the pending downgrade is taken back at Stripe.
    let (s, body) = put_plan(&app, org, &owner, "business").await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let prices = fake.requests_with("POST", "/v1/prices");
    assert_eq!(prices.len(), 2);
    assert_form(
        &prices[1],
        &[
            ("currency", "usd"),
            ("unit_amount", "9900"),
            ("recurring[interval]", "month"),
            ("product_data[name]", "Business"),
            ("metadata[plan]", "business"),
        ],
    );
    let updates = fake.requests_with("POST", "/v1/subscriptions/sub_r");
    assert_eq!(updates.len(), 2);
    let revert = &updates[1];
    assert_form(
        revert,
        &[
            ("items[0][id]", "si_1"),
            ("proration_behavior", "none"),
            ("metadata[plan]", "business"),
            ("metadata[pending_plan]", ""),
            ("metadata[pending_from]", ""),
        ],
    );
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
        (
            "business".to_owned(),
            "active".to_owned(),
            None,
            false,
            t0,
            end
        )
    );
    assert_eq!(
        audits(&app, org, "subscription.downgrade_canceled").await,
        1
    );

    // Nothing pending any more: the current plan asks Stripe nothing.
    let before = fake.requests().len();
    let (s, body) = put_plan(&app, org, &owner, "business").await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert!(body["pending_plan_code"].is_null(), "{body}");
    assert_eq!(fake.requests().len(), before, "{:?}", fake.requests());
    assert_eq!(
        audits(&app, org, "subscription.downgrade_canceled").await,
        1
    );

    // Downgrading again reaches Stripe again (not an idempotent replay of
    // the first downgrade's answer).
    let (s, body) = put_plan(&app, org, &owner, "pro").await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(body["pending_plan_code"], "pro", "{body}");
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
        audits(&app, org, "subscription.downgrade_scheduled").await,
        2
    );
}

#[tokio::test]
async fn stripe_plan_changes_that_cannot_be_made_are_refused_before_stripe_hears_of_them() {
    let fake = FakeStripe::start().await;
    let app = stripe_app(&fake, &[]).await;
    let owner = app.user("owner@example.com");
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
    let (s, p) = put_plan(&app, crowded, &owner, "pro").await;
    assert_eq!(s, StatusCode::CONFLICT, "{p}");
    assert_eq!(p["code"], "seat_limit_reached", "{p}");
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
        assert_eq!(audits(&app, org, "subscription.upgraded").await, 0);
    }
    assert!(fake.requests().is_empty(), "{:?}", fake.requests());
    assert_eq!(
        audits(&app, crowded, "subscription.downgrade_scheduled").await,
        0
    );
}

#[tokio::test]
async fn stripe_refusing_an_upgrade_is_402_or_502_and_changes_nothing_here() {
    let fake = FakeStripe::start().await;
    let app = stripe_app(&fake, &[]).await;
    let owner = app.user("owner@example.com");
    let org = app.create_org(&owner, "Acme").await;
    stripe_managed(&app, &fake, org, "sub_e", "active", "pro").await;
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
        assert_eq!(audits(&app, org, "subscription.upgraded").await, 0);
        assert_eq!(
            fake.subscription("sub_e").unwrap()["metadata"]["plan"],
            "pro"
        );
    };

    // Stripe declines whatever is asked.
    fake.fail_with(402);
    let (s, p) = put_plan(&app, org, &owner, "business").await;
    assert_eq!(s, StatusCode::PAYMENT_REQUIRED, "{p}");
    assert_eq!(p["code"], "payment_declined", "{p}");
    assert!(
        p["detail"]
            .as_str()
            .unwrap()
            .contains("Your card was declined."),
        "{p}"
    );
    unchanged().await;

    // Stripe declines the update itself (the invoice of the upgrade), after
    // the price was made: 402, asked once (a 402 is not retried).
    fake.succeed();
    fake.fail_requests_to("POST", "/v1/subscriptions/sub_e", 402);
    let (s, p) = put_plan(&app, org, &owner, "business").await;
    assert_eq!(s, StatusCode::PAYMENT_REQUIRED, "{p}");
    assert_eq!(p["code"], "payment_declined", "{p}");
    assert!(
        p["detail"]
            .as_str()
            .unwrap()
            .contains("Your card was declined."),
        "{p}"
    );
    let updates = fake.requests_with("POST", "/v1/subscriptions/sub_e");
    assert_eq!(updates.len(), 1, "the update was asked once: {updates:?}");
    unchanged().await;

    // Stripe failing on its end: 502, the update retried once with the same key.
    fake.succeed();
    fake.fail_requests_to("POST", "/v1/subscriptions/sub_e", 500);
    let (s, p) = put_plan(&app, org, &owner, "business").await;
    assert_eq!(s, StatusCode::BAD_GATEWAY, "{p}");
    assert_eq!(p["code"], "payment_provider_error", "{p}");
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
    let (s, body) = put_plan(&app, org, &owner, "business").await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(body["plan_code"], "business", "{body}");
    assert_eq!(sub_state(&app, org).await.0, "business");
    assert_eq!(plan_grants(&app, org, 25_000).await, (1, 25_000));
}

/// Adds a plan to the catalog (superuser): USD, no trial, sorted after the
/// seeded ones.
async fn insert_plan(
    app: &TestApp,
    code: &str,
    name: &str,
    price_minor: i64,
    interval: &str,
    credits: i64,
    seat_limit: Option<i32>,
) {
    sqlx::query(
        "insert into plans (code, name, price_minor, currency, billing_interval, trial_days,
                            credits_per_period, seat_limit, features, sort_order)
         values ($1, $2, $3, 'USD', $4, 0, $5, $6, '{}', 5)",
    )
    .bind(code)
    .bind(name)
    .bind(price_minor)
    .bind(interval)
    .bind(credits)
    .bind(seat_limit)
    .execute(&app.db.admin)
    .await
    .unwrap();
}

/// Sends `method path` with `body` as `token` from a task of its own, so
/// that the test can act while the request is being answered.
fn spawn_call(
    app: &TestApp,
    method: Method,
    path: String,
    token: &str,
    body: Value,
) -> tokio::task::JoinHandle<(StatusCode, Value)> {
    let (client, base, token) = (app.client.clone(), app.base.clone(), token.to_owned());
    tokio::spawn(async move {
        let res = client
            .request(method, format!("{base}{path}"))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = res.status();
        let bytes = res.bytes().await.unwrap();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    })
}

/// Waits until the fake has received `n` requests with `method` to `path`.
async fn until_received(fake: &FakeStripe, method: &str, path: &str, n: usize) {
    eventually(10, &format!("{method} {path} #{n} at Stripe"), || async {
        (fake.requests_with(method, path).len() >= n).then_some(())
    })
    .await;
}

#[tokio::test]
async fn stripe_managed_subscriptions_cannot_change_their_billing_interval() {
    let fake = FakeStripe::start().await;
    let app = stripe_app(&fake, &[]).await;
    let owner = app.user("owner@example.com");
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
            assert_eq!(audits(&app, org, action).await, 0, "{target}: {action}");
        }
    }
    assert!(fake.requests().is_empty(), "{:?}", fake.requests());
    assert_eq!(
        fake.subscription("sub_iv_pro").unwrap()["metadata"]["plan"],
        "pro"
    );

    // The same interval still changes (the refusal left nothing in flight).
    let (s, body) = put_plan(&app, on_pro, &owner, "business").await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(body["plan_code"], "business", "{body}");
}

#[tokio::test]
async fn a_change_against_a_stale_mirror_is_refused_and_the_mirror_catches_up() {
    let fake = FakeStripe::start().await;
    let app = stripe_app(&fake, &[]).await;
    let owner = app.user("owner@example.com");
    // Stripe keeps the period on the subscription (older API versions) or
    // on its item (newer ones).
    for (name, on_items) in [("top-level", false), ("items", true)] {
        let org = app.create_org(&owner, name).await;
        let sub = format!("sub_stale_{}", if on_items { "items" } else { "top" });
        let path = format!("/v1/subscriptions/{sub}");
        let t0 = now() - 100;
        let end = t0 + 30 * 86400;
        let mut obj = subscription_object(org, &sub, "active", "business", t0);
        obj["customer"] = json!(format!("cus_{sub}"));
        obj["items"]["data"][0]["price"]["unit_amount"] = json!(9900);
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
        let renewed_state = (
            "business".to_owned(),
            "active".to_owned(),
            None,
            false,
            end,
            end + 30 * 86400,
        );
        assert_ne!(before, renewed_state);
        assert_eq!(sub_state(&app, org).await, renewed_state, "{name}");
        assert_eq!(
            audits(&app, org, "subscription.downgrade_scheduled").await,
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
        deliver(
            &app,
            &event(
                &format!("evt_{sub}_renewed"),
                "customer.subscription.updated",
                now(),
                renewed,
            ),
        )
        .await;
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
            (
                "business".to_owned(),
                "active".to_owned(),
                Some("pro".to_owned()),
                false,
                end,
                end + 30 * 86400
            ),
            "{name}"
        );
    }
}

#[tokio::test]
async fn one_change_at_stripe_at_a_time_per_org() {
    let fake = FakeStripe::start().await;
    let app = stripe_app(&fake, &[]).await;
    let owner = app.user("owner@example.com");
    let org = app.create_org(&owner, "Acme").await;
    stripe_managed(&app, &fake, org, "sub_q", "active", "pro").await;
    let path = "/v1/subscriptions/sub_q";
    let subscription_path = format!("/api/v1/orgs/{org}/subscription");
    let cancel = format!("/api/v1/orgs/{org}/subscription/cancel");
    let resume = format!("/api/v1/orgs/{org}/subscription/resume");

    // An upgrade is at Stripe (which holds the update unanswered): other
    // changes are refused meanwhile, without asking Stripe.
    let gate = fake.hold_requests_to("POST", path);
    let upgrade = spawn_call(
        &app,
        Method::PUT,
        subscription_path.clone(),
        &owner.token,
        json!({"plan": "business"}),
    );
    until_received(&fake, "POST", path, 1).await;
    let (s, p) = app.post(&cancel, &owner, json!({})).await;
    assert_eq!(s, StatusCode::CONFLICT, "{p}");
    assert_eq!(p["code"], "change_in_progress", "{p}");
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
    assert_eq!(
        sent(&fake),
        pairs(&[("GET", path), ("POST", "/v1/prices"), ("POST", path),])
    );

    // Done: the next change is accepted at once.
    let (s, body) = app.post(&cancel, &owner, json!({})).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(body["cancel_at_period_end"], true, "{body}");

    // A resumption at Stripe holds off another resumption and a downgrade.
    let gate = fake.hold_requests_to("POST", path);
    let resuming = spawn_call(&app, Method::POST, resume.clone(), &owner.token, json!({}));
    until_received(&fake, "POST", path, 3).await;
    let (s, p) = app.post(&resume, &owner, json!({})).await;
    assert_eq!(s, StatusCode::CONFLICT, "{p}");
    assert_eq!(p["code"], "change_in_progress", "{p}");
    let (s, p) = put_plan(&app, org, &owner, "pro").await;
    assert_eq!(s, StatusCode::CONFLICT, "{p}");
    assert_eq!(p["code"], "change_in_progress", "{p}");
    assert!(!resuming.is_finished());
    gate.release();
    let (s, body) = resuming.await.unwrap();
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(body["cancel_at_period_end"], false, "{body}");

    // A change Stripe fails (502, after one retry, and Stripe's
    // subscription read back and mirrored) ends too: the next is accepted
    // at once.
    fake.fail_requests_to("POST", path, 500);
    let (s, p) = app.post(&cancel, &owner, json!({})).await;
    assert_eq!(s, StatusCode::BAD_GATEWAY, "{p}");
    assert_eq!(p["code"], "payment_provider_error", "{p}");
    fake.succeed();
    let (s, body) = app.post(&cancel, &owner, json!({})).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(body["cancel_at_period_end"], true, "{body}");

    assert_eq!(
        sent(&fake),
        pairs(&[
            ("GET", path),
            ("POST", "/v1/prices"),
            ("POST", path),
            ("POST", path),
            ("POST", path),
            ("POST", path),
            ("POST", path),
            ("GET", path),
            ("POST", path),
        ]),
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
    assert_eq!(audits(&app, org, "subscription.upgraded").await, 1);
    assert_eq!(audits(&app, org, "subscription.resumed").await, 1);
    assert_eq!(audits(&app, org, "subscription.cancel_scheduled").await, 2);
    assert_eq!(
        audits(&app, org, "subscription.downgrade_scheduled").await,
        0
    );
}

#[tokio::test]
async fn a_renewal_delivered_while_stripe_answers_is_not_undone_by_the_older_answer() {
    let fake = FakeStripe::start().await;
    let app = stripe_app(&fake, &[]).await;
    let owner = app.user("owner@example.com");
    let org = app.create_org(&owner, "Acme").await;
    let obj = stripe_managed(&app, &fake, org, "sub_w", "active", "pro").await;
    let end = obj["current_period_end"].as_i64().unwrap();
    let path = "/v1/subscriptions/sub_w";

    // Stripe holds its answer to the upgrade; meanwhile an event created
    // after the request was sent (a renewal of pro) is applied. The answer,
    // older than that event, must not overwrite it: it is dated when the
    // request was sent, not (wrongly) when the answer came, which is after
    // the event's second.
    let gate = fake.hold_requests_to("POST", path);
    let upgrade = spawn_call(
        &app,
        Method::PUT,
        format!("/api/v1/orgs/{org}/subscription"),
        &owner.token,
        json!({"plan": "business"}),
    );
    until_received(&fake, "POST", path, 1).await;
    let mut renewed = obj.clone();
    renewed["current_period_start"] = json!(end);
    renewed["current_period_end"] = json!(end + 30 * 86400);
    renewed["metadata"]["plan"] = json!("pro");
    // Strictly after the second the request was sent in.
    let created = now() + 1;
    deliver(
        &app,
        &event(
            "evt_w_renewed",
            "customer.subscription.updated",
            created,
            renewed,
        ),
    )
    .await;
    let moved = (
        "pro".to_owned(),
        "active".to_owned(),
        None,
        false,
        end,
        end + 30 * 86400,
    );
    assert_eq!(sub_state(&app, org).await, moved);
    assert!(!upgrade.is_finished(), "Stripe was still answering");
    // An answer dated when it came would now be newer than the event.
    eventually(10, "the clock past the event's second", || async {
        (chrono::Utc::now().timestamp() > created).then_some(())
    })
    .await;
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
    let fake = FakeStripe::start().await;
    let app = stripe_app(&fake, &[]).await;
    let owner = app.user("owner@example.com");
    let org = app.create_org(&owner, "Acme").await;
    let obj = stripe_managed(&app, &fake, org, "sub_x", "active", "pro").await;
    let path = "/v1/subscriptions/sub_x";

    let gate = fake.hold_requests_to("POST", path);
    let upgrade = spawn_call(
        &app,
        Method::PUT,
        format!("/api/v1/orgs/{org}/subscription"),
        &owner.token,
        json!({"plan": "business"}),
    );
    until_received(&fake, "POST", path, 1).await;
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

#[tokio::test]
async fn an_upgrade_over_a_pending_stripe_downgrade_restores_the_paid_price_first() {
    let fake = FakeStripe::start().await;
    let app = stripe_app(&fake, &[]).await;
    let owner = app.user("owner@example.com");
    let org = app.create_org(&owner, "Acme").await;
    insert_plan(
        &app,
        "enterprise",
        "Enterprise",
        19900,
        "month",
        100_000,
        None,
    )
    .await;
    stripe_managed(&app, &fake, org, "sub_p", "active", "business").await;
    let path = "/v1/subscriptions/sub_p";
    let (s, body) = put_plan(&app, org, &owner, "pro").await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(body["pending_plan_code"], "pro", "{body}");
    let asked_before = fake.requests().len();
    assert_eq!(asked_before, 3);

    let (s, body) = put_plan(&app, org, &owner, "enterprise").await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let asked = fake.requests()[asked_before..].to_vec();
    assert_eq!(
        asked
            .iter()
            .map(|r| (r.method.clone(), r.path.clone()))
            .collect::<Vec<_>>(),
        pairs(&[
            ("GET", path),
            ("POST", "/v1/prices"),
            ("POST", path),
            ("POST", "/v1/prices"),
            ("POST", path),
        ])
    );
    // First back to business's price (the item is on pro's from the renewal).
    assert_form(
        &asked[1],
        &[
            ("unit_amount", "9900"),
            ("recurring[interval]", "month"),
            ("metadata[plan]", "business"),
        ],
    );
    let restore = &asked[2];
    assert_form(
        restore,
        &[
            ("items[0][id]", "si_1"),
            ("proration_behavior", "none"),
            // The pending downgrade is taken back with the price.
            ("metadata[plan]", "business"),
            ("metadata[pending_plan]", ""),
            ("metadata[pending_from]", ""),
        ],
    );
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
    assert_form(
        upgrade,
        &[
            ("items[0][id]", "si_1"),
            ("proration_behavior", "always_invoice"),
            ("billing_cycle_anchor", "now"),
            ("payment_behavior", "error_if_incomplete"),
            ("metadata[plan]", "enterprise"),
            ("metadata[pending_plan]", ""),
            ("metadata[pending_from]", ""),
        ],
    );
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
        (
            "enterprise".to_owned(),
            "active".to_owned(),
            None,
            false,
            new_start,
            new_start + 30 * 86400
        )
    );
    assert_eq!(plan_grants(&app, org, 100_000).await, (1, 100_000));
    assert_eq!(audits(&app, org, "subscription.upgraded").await, 1);
}

#[tokio::test]
async fn a_declined_upgrade_over_a_pending_downgrade_leaves_the_downgrade_taken_back() {
    let fake = FakeStripe::start().await;
    let app = stripe_app(&fake, &[]).await;
    let owner = app.user("owner@example.com");
    let org = app.create_org(&owner, "Acme").await;
    insert_plan(
        &app,
        "enterprise",
        "Enterprise",
        19900,
        "month",
        100_000,
        None,
    )
    .await;
    let obj = stripe_managed(&app, &fake, org, "sub_pd", "active", "business").await;
    let t0 = obj["current_period_start"].as_i64().unwrap();
    let end = obj["current_period_end"].as_i64().unwrap();
    let path = "/v1/subscriptions/sub_pd";
    let (s, body) = put_plan(&app, org, &owner, "pro").await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(body["pending_plan_code"], "pro", "{body}");
    let asked_before = fake.requests().len();

    // The restore goes through; the upgrade's payment is declined.
    fake.fail_nth_request_to("POST", path, 2, 402);
    let (s, p) = put_plan(&app, org, &owner, "enterprise").await;
    assert_eq!(s, StatusCode::PAYMENT_REQUIRED, "{p}");
    assert_eq!(p["code"], "payment_declined", "{p}");
    let detail = p["detail"].as_str().unwrap();
    assert!(detail.contains("Your card was declined."), "{p}");
    assert!(
        detail.contains("downgrade"),
        "the detail says the pending downgrade was taken back: {p}"
    );
    let asked = fake.requests()[asked_before..].to_vec();
    let asked_pairs: Vec<_> = asked
        .iter()
        .map(|r| (r.method.clone(), r.path.clone()))
        .collect();
    assert_eq!(
        asked_pairs[..5],
        pairs(&[
            ("GET", path),
            ("POST", "/v1/prices"),
            ("POST", path),
            ("POST", "/v1/prices"),
            ("POST", path),
        ]),
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
        (
            "business".to_owned(),
            "active".to_owned(),
            None,
            false,
            t0,
            end
        )
    );
    let (s, view) = app
        .get(&format!("/api/v1/orgs/{org}/subscription"), &owner)
        .await;
    assert_eq!(s, StatusCode::OK, "{view}");
    assert_eq!(view["plan_code"], "business", "{view}");
    assert!(view["pending_plan_code"].is_null(), "{view}");
    assert_eq!(plan_grants(&app, org, 100_000).await, (0, 0));
    assert_eq!(audits(&app, org, "subscription.upgraded").await, 0);

    // The change is over (its lease released), and nothing is pending: the
    // current plan asks Stripe nothing.
    let before = fake.requests().len();
    let (s, body) = put_plan(&app, org, &owner, "business").await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(body["plan_code"], "business", "{body}");
    assert!(body["pending_plan_code"].is_null(), "{body}");
    assert_eq!(fake.requests().len(), before, "{:?}", fake.requests());
}

#[tokio::test]
async fn only_stripes_card_errors_decline_a_plan_change() {
    let fake = FakeStripe::start().await;
    let app = stripe_app(&fake, &[]).await;
    let owner = app.user("owner@example.com");
    let org = app.create_org(&owner, "Acme").await;
    stripe_managed(&app, &fake, org, "sub_ce", "active", "pro").await;
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
    let (s, p) = put_plan(&app, org, &owner, "business").await;
    assert_eq!(s, StatusCode::BAD_GATEWAY, "{p}");
    assert_eq!(p["code"], "payment_provider_error", "{p}");
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
    let (s, p) = put_plan(&app, org, &owner, "business").await;
    assert_eq!(s, StatusCode::PAYMENT_REQUIRED, "{p}");
    assert_eq!(p["code"], "payment_declined", "{p}");
    assert!(
        p["detail"].as_str().unwrap().contains("authentication"),
        "{p}"
    );
    assert_eq!(sub_state(&app, org).await, before);
    assert_eq!(plan_grants(&app, org, 25_000).await, (0, 0));
    assert_eq!(audits(&app, org, "subscription.upgraded").await, 0);

    // Neither left the change in flight.
    fake.succeed();
    let (s, body) = put_plan(&app, org, &owner, "business").await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(body["plan_code"], "business", "{body}");
}

#[tokio::test]
async fn an_upgrade_whose_answer_is_lost_is_read_back_from_stripe_and_mirrored() {
    let fake = FakeStripe::start().await;
    let app = stripe_app(&fake, &[]).await;
    let owner = app.user("owner@example.com");
    let org = app.create_org(&owner, "Acme").await;
    let obj = stripe_managed(&app, &fake, org, "sub_l", "active", "pro").await;
    let t0 = obj["current_period_start"].as_i64().unwrap();
    let path = "/v1/subscriptions/sub_l";

    // Stripe makes the upgrade but answers 500 (and the same to the retry
    // with the same key): the outcome is unknown here until it is read.
    fake.apply_then_fail_requests_to("POST", path, 500);
    let (s, p) = put_plan(&app, org, &owner, "business").await;
    assert_eq!(s, StatusCode::BAD_GATEWAY, "{p}");
    assert_eq!(p["code"], "payment_provider_error", "{p}");
    assert_eq!(
        sent(&fake),
        pairs(&[
            ("GET", path),
            ("POST", "/v1/prices"),
            ("POST", path),
            ("POST", path),
            ("GET", path),
        ])
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
        (
            "business".to_owned(),
            "active".to_owned(),
            None,
            false,
            new_start,
            new_start + 30 * 86400
        )
    );
    assert_eq!(plan_grants(&app, org, 25_000).await, (1, 25_000));

    // And the change is over: the next is not refused as in progress.
    fake.succeed();
    let before = fake.requests().len();
    let (s, body) = put_plan(&app, org, &owner, "business").await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(body["plan_code"], "business", "{body}");
    assert_eq!(fake.requests().len(), before, "nothing to ask Stripe");
    // Stripe's event about the upgrade grants nothing more.
    deliver_current(&app, &fake, "sub_l", "evt_l_updated").await;
    assert_eq!(plan_grants(&app, org, 25_000).await, (1, 25_000));
}

#[tokio::test]
async fn a_change_whose_outcome_cannot_be_read_back_keeps_its_lease() {
    let fake = FakeStripe::start().await;
    let app = stripe_app(&fake, &[]).await;
    let owner = app.user("owner@example.com");
    let org = app.create_org(&owner, "Acme").await;
    stripe_managed(&app, &fake, org, "sub_m", "active", "pro").await;
    let path = "/v1/subscriptions/sub_m";
    let before = sub_state(&app, org).await;

    // Stripe makes the upgrade but its answer is lost, and from then on it
    // fails every read as well.
    fake.apply_then_fail_requests_to("POST", path, 500);
    let gate = fake.hold_requests_to("POST", path);
    let upgrade = spawn_call(
        &app,
        Method::PUT,
        format!("/api/v1/orgs/{org}/subscription"),
        &owner.token,
        json!({"plan": "business"}),
    );
    until_received(&fake, "POST", path, 1).await;
    fake.fail_requests_to("GET", path, 500);
    gate.release();
    let (s, p) = upgrade.await.unwrap();
    assert_eq!(s, StatusCode::BAD_GATEWAY, "{p}");
    assert_eq!(p["code"], "payment_provider_error", "{p}");
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
    let (s, p) = app
        .post(
            &format!("/api/v1/orgs/{org}/subscription/cancel"),
            &owner,
            json!({}),
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{p}");
    assert_eq!(p["code"], "change_in_progress", "{p}");
    assert_eq!(fake.requests().len(), asked, "{:?}", sent(&fake));
}

#[tokio::test]
async fn a_read_failing_before_any_change_releases_the_lease() {
    let fake = FakeStripe::start().await;
    let app = stripe_app(&fake, &[]).await;
    let owner = app.user("owner@example.com");
    let org = app.create_org(&owner, "Acme").await;
    stripe_managed(&app, &fake, org, "sub_o", "active", "pro").await;
    let before = sub_state(&app, org).await;

    // Stripe fails the first read (nothing was asked to change yet), and
    // every read after it.
    fake.fail_with(500);
    let (s, p) = put_plan(&app, org, &owner, "business").await;
    assert_eq!(s, StatusCode::BAD_GATEWAY, "{p}");
    assert_eq!(p["code"], "payment_provider_error", "{p}");
    assert!(
        sent(&fake).iter().all(|(m, _)| m == "GET"),
        "{:?}",
        sent(&fake)
    );
    assert_eq!(sub_state(&app, org).await, before);
    // Nothing can be in flight: the next change is not held off (and
    // reaches Stripe, failing still).
    let (s, p) = put_plan(&app, org, &owner, "business").await;
    assert_eq!(s, StatusCode::BAD_GATEWAY, "{p}");
    assert_eq!(p["code"], "payment_provider_error", "{p}");
    assert_eq!(sub_state(&app, org).await, before);
}

#[tokio::test]
async fn an_update_stripe_refuses_releases_its_lease_even_when_unread() {
    let fake = FakeStripe::start().await;
    let app = stripe_app(&fake, &[]).await;
    let owner = app.user("owner@example.com");
    let org = app.create_org(&owner, "Acme").await;
    stripe_managed(&app, &fake, org, "sub_o", "active", "pro").await;
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
    let gate = fake.hold_requests_to("POST", path);
    let upgrade = spawn_call(
        &app,
        Method::PUT,
        format!("/api/v1/orgs/{org}/subscription"),
        &owner.token,
        json!({"plan": "business"}),
    );
    until_received(&fake, "POST", path, 1).await;
    fake.fail_requests_to("GET", path, 500);
    gate.release();
    let (s, p) = upgrade.await.unwrap();
    assert_eq!(s, StatusCode::BAD_GATEWAY, "{p}");
    assert_eq!(p["code"], "payment_provider_error", "{p}");
    assert_eq!(
        fake.requests_with("POST", path).len(),
        1,
        "a 400 is not retried"
    );
    assert_eq!(sub_state(&app, org).await, before);

    fake.succeed();
    let (s, body) = put_plan(&app, org, &owner, "business").await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(body["plan_code"], "business", "{body}");
}

#[tokio::test]
async fn a_state_read_back_after_a_lost_answer_is_dated_when_the_change_was_sent() {
    let fake = FakeStripe::start().await;
    let app = stripe_app(&fake, &[]).await;
    let owner = app.user("owner@example.com");
    let org = app.create_org(&owner, "Acme").await;
    stripe_managed(&app, &fake, org, "sub_n", "active", "pro").await;
    let path = "/v1/subscriptions/sub_n";

    // The upgrade's answer is lost; the read-back is held at Stripe (the
    // first read, before the change, is let through).
    fake.apply_then_fail_requests_to("POST", path, 500);
    let first_read = fake.hold_requests_to("GET", path);
    let upgrade = spawn_call(
        &app,
        Method::PUT,
        format!("/api/v1/orgs/{org}/subscription"),
        &owner.token,
        json!({"plan": "business"}),
    );
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
    deliver(
        &app,
        &event(
            "evt_n_canceling",
            "customer.subscription.updated",
            created,
            canceling,
        ),
    )
    .await;
    let canceled_state = (
        "business".to_owned(),
        "active".to_owned(),
        None,
        true,
        new_start,
        new_start + 30 * 86400,
    );
    assert_eq!(sub_state(&app, org).await, canceled_state);
    // A read-back dated when it was answered would now be newer than the event.
    eventually(10, "the clock past the event's second", || async {
        (chrono::Utc::now().timestamp() > created).then_some(())
    })
    .await;
    assert!(!upgrade.is_finished(), "Stripe was still answering");
    read_back.release();

    let (s, p) = upgrade.await.unwrap();
    assert_eq!(s, StatusCode::BAD_GATEWAY, "{p}");
    assert_eq!(p["code"], "payment_provider_error", "{p}");
    assert_eq!(
        sub_state(&app, org).await,
        canceled_state,
        "the older read-back does not undo the newer event"
    );
    assert_eq!(plan_grants(&app, org, 25_000).await, (1, 25_000));
}

#[tokio::test]
async fn a_subscription_stripe_no_longer_has_is_a_conflict_and_changes_nothing() {
    let fake = FakeStripe::start().await;
    let app = stripe_app(&fake, &[]).await;
    let owner = app.user("owner@example.com");
    let org = app.create_org(&owner, "Acme").await;
    stripe_managed(&app, &fake, org, "sub_gone", "active", "pro").await;
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
    assert_eq!(audits(&app, org, "subscription.upgraded").await, 0);
}

async fn spend(app: &TestApp, org: Uuid, user: &TestUser, amount: i64) -> (StatusCode, Value) {
    let res = app
        .client
        .post(format!("{}/api/v1/orgs/{org}/credits/spend", app.base))
        .bearer_auth(&user.token)
        .header("Idempotency-Key", Uuid::new_v4().to_string())
        .json(&json!({ "amount": amount }))
        .send()
        .await
        .unwrap();
    let status = res.status();
    let bytes = res.bytes().await.unwrap();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

async fn balance(app: &TestApp, org: Uuid, user: &TestUser) -> i64 {
    let (s, body) = app.get(&format!("/api/v1/orgs/{org}/credits"), user).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    body["balance"].as_i64().unwrap()
}

#[tokio::test]
async fn a_stripe_upgrade_ends_the_old_periods_credits() {
    let fake = FakeStripe::start().await;
    let app = stripe_app(&fake, &[]).await;
    // No free-plan credits: the balance is the plans' alone.
    sqlx::query("update plans set credits_per_period = 0 where code = 'free'")
        .execute(&app.db.admin)
        .await
        .unwrap();
    let owner = app.user("owner@example.com");
    let org = app.create_org(&owner, "Acme").await;
    let obj = stripe_managed(&app, &fake, org, "sub_g", "active", "pro").await;
    let t0 = obj["current_period_start"].as_i64().unwrap();
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

    let (s, body) = put_plan(&app, org, &owner, "business").await;
    assert_eq!(s, StatusCode::OK, "{body}");
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
    let expired = || {
        sqlx::query_scalar::<_, i64>(
            "select amount from credit_ledger
             where org_id = $1 and kind = 'expire' and grant_id = $2 order by id",
        )
        .bind(org)
        .bind(pro_grant)
        .fetch_all(&app.db.admin)
    };
    assert_eq!(expired().await.unwrap(), vec![4000]);
    assert_eq!(plan_grants(&app, org, 25_000).await, (1, 25_000));
    assert_eq!(balance(&app, org, &owner).await, 25_000);

    // Stripe's event about the change expires nothing more.
    deliver_current(&app, &fake, "sub_g", "evt_g_updated").await;
    assert_eq!(expired().await.unwrap(), vec![4000]);
    let all_expired = scalar_i64(
        &app,
        "select count(*) from credit_ledger where org_id = $1 and kind = 'expire'",
        org,
    )
    .await;
    assert_eq!(all_expired, 1);
    assert_eq!(balance(&app, org, &owner).await, 25_000);
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
    let res = req.send().await.unwrap();
    let status = res.status();
    let bytes = res.bytes().await.unwrap();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

/// (id, remaining) of the org's one plan-period grant of `amount` credits.
async fn period_grant(app: &TestApp, org: Uuid, amount: i64) -> (Uuid, i64) {
    sqlx::query_as(
        "select id, remaining from credit_grants
         where org_id = $1 and source = 'plan_period' and ref like 'period:%' and amount = $2",
    )
    .bind(org)
    .bind(amount)
    .fetch_one(&app.db.admin)
    .await
    .unwrap()
}

/// The amounts booked as expired from `grant`, in order.
async fn expired_from(app: &TestApp, org: Uuid, grant: Uuid) -> Vec<i64> {
    sqlx::query_scalar(
        "select amount from credit_ledger
         where org_id = $1 and kind = 'expire' and grant_id = $2 order by id",
    )
    .bind(org)
    .bind(grant)
    .fetch_all(&app.db.admin)
    .await
    .unwrap()
}

async fn all_expired(app: &TestApp, org: Uuid) -> Vec<i64> {
    sqlx::query_scalar(
        "select amount from credit_ledger where org_id = $1 and kind = 'expire' order by id",
    )
    .bind(org)
    .fetch_all(&app.db.admin)
    .await
    .unwrap()
}

#[tokio::test]
async fn an_upgrade_made_at_stripe_alone_ends_the_old_periods_credits() {
    let fake = FakeStripe::start().await;
    let app = stripe_app(&fake, &[]).await;
    // No free-plan credits: the balance is pro's and the promotion's.
    sqlx::query("update plans set credits_per_period = 0 where code = 'free'")
        .execute(&app.db.admin)
        .await
        .unwrap();
    let owner = app.user("owner@example.com");
    let org = app.create_org(&owner, "Acme").await;
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
    deliver(
        &app,
        &event(
            "evt_h_upgraded",
            "customer.subscription.updated",
            now(),
            upgraded,
        ),
    )
    .await;
    assert_eq!(
        sub_state(&app, org).await,
        (
            "business".to_owned(),
            "active".to_owned(),
            None,
            false,
            start,
            start + 30 * 86400
        )
    );
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
    let fake = FakeStripe::start().await;
    let app = stripe_app(&fake, &[]).await;
    let owner = app.user("owner@example.com");
    let org = app.create_org(&owner, "Acme").await;
    // The free plan's 100 credits of the org's first period, 30 spent.
    let (free, left) = period_grant(&app, org, 100).await;
    assert_eq!(left, 100);
    let (s, body) = spend(&app, org, &owner, 30).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(balance(&app, org, &owner).await, 70);

    // Checkout of pro, completed: linked, nothing granted or ended yet.
    let (s, session) = app
        .post(
            &format!("/api/v1/orgs/{org}/billing/checkout"),
            &owner,
            json!({"plan": "pro"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{session}");
    let completed = json!({
        "id": session["id"], "object": "checkout.session", "mode": "subscription",
        "payment_status": "paid", "status": "complete", "customer": "cus_test_1",
        "subscription": "sub_first", "client_reference_id": org.to_string(),
        "metadata": {"org_id": org.to_string(), "plan": "pro"}
    });
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
    let fake = FakeStripe::start().await;
    let app = stripe_app(&fake, &[]).await;
    sqlx::query("update plans set credits_per_period = 0 where code = 'free'")
        .execute(&app.db.admin)
        .await
        .unwrap();
    let owner = app.user("owner@example.com");
    let org = app.create_org(&owner, "Acme").await;
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

    let (s, body) = put_plan(&app, org, &owner, "business").await;
    assert_eq!(s, StatusCode::OK, "{body}");
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
