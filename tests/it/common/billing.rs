//! Billing helpers shared by the payments tests: an app configured for
//! Stripe (against [`FakeStripe`]), signed webhook delivery, Stripe-shaped
//! subscription objects, and superuser reads of subscriptions and credit
//! grants.
#![allow(dead_code)]

use reqwest::StatusCode;
use serde_json::{Value, json};
use uuid::Uuid;

use super::stripe::{FakeStripe, signature_header};
use super::{TestApp, TestUser};

pub const SECRET_KEY: &str = "sk_test_tenantry_123";
pub const WHSEC_A: &str = "whsec_a";
pub const WHSEC_B: &str = "whsec_b";

/// An app with Stripe as its payment provider, Stripe's API being `fake`
/// (webhooks signed with either of `WHSEC_A` and `WHSEC_B` accepted), and
/// `extra` configuration.
pub async fn stripe_app(fake: &FakeStripe, extra: &[(&str, &str)]) -> TestApp {
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

/// The status and JSON body of an answer (Value::Null when the body is not JSON).
pub async fn read_answer(res: reqwest::Response) -> (StatusCode, Value) {
    let status = res.status();
    let bytes = res.bytes().await.unwrap();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

pub async fn post_webhook(
    app: &TestApp,
    body: &str,
    signature: Option<&str>,
) -> (StatusCode, Value) {
    let mut req = app
        .client
        .post(format!("{}/api/v1/webhooks/stripe", app.base))
        .header("content-type", "application/json")
        .body(body.to_owned());
    if let Some(s) = signature {
        req = req.header("Stripe-Signature", s);
    }
    read_answer(req.send().await.unwrap()).await
}

/// Delivers `body` signed now with the first webhook secret; expects 200.
pub async fn deliver(app: &TestApp, body: &str) -> Value {
    let (s, ack) = post_webhook(app, body, Some(&signature_header(WHSEC_A, body))).await;
    assert_eq!(s, StatusCode::OK, "{ack}");
    assert_eq!(ack["received"], true);
    ack
}

/// Asserts an error answer's status and `code`; returns its body.
#[track_caller]
pub fn assert_error((s, p): (StatusCode, Value), status: StatusCode, code: &str) -> Value {
    assert_eq!(s, status, "{p}");
    assert_eq!(p["code"], code, "{p}");
    p
}

/// Asserts a 502 `payment_provider_error` (Stripe failing, not declining).
#[track_caller]
pub fn assert_provider_error(answer: (StatusCode, Value)) {
    assert_error(answer, StatusCode::BAD_GATEWAY, "payment_provider_error");
}

/// Asserts a 402 `payment_declined` whose detail carries Stripe's card
/// message; returns its body.
#[track_caller]
pub fn assert_declined(answer: (StatusCode, Value)) -> Value {
    let p = assert_error(answer, StatusCode::PAYMENT_REQUIRED, "payment_declined");
    assert!(
        p["detail"]
            .as_str()
            .unwrap()
            .contains("Your card was declined."),
        "{p}"
    );
    p
}

/// One bigint read as the superuser from `sql`, `$1` being `org`.
pub async fn scalar_i64(app: &TestApp, sql: &str, org: Uuid) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
        .bind(org)
        .fetch_one(&app.db.admin)
        .await
        .unwrap()
}

/// (status, plan_code, provider, provider_subscription_id, cancel_at_period_end)
pub type SubRow = (String, String, String, Option<String>, bool);

pub async fn subscription(app: &TestApp, org: Uuid) -> SubRow {
    sqlx::query_as(
        "select status, plan_code, provider, provider_subscription_id, cancel_at_period_end
         from subscriptions where org_id = $1",
    )
    .bind(org)
    .fetch_one(&app.db.admin)
    .await
    .unwrap()
}

pub fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// A Stripe subscription of `org` on `plan` (customer `cus_hook_1`, item
/// `si_1` at 29.00), its 30-day period starting at `start`.
pub fn subscription_object(org: Uuid, sub: &str, status: &str, plan: &str, start: i64) -> Value {
    json!({
        "id": sub, "object": "subscription", "customer": "cus_hook_1",
        "status": status, "cancel_at_period_end": false, "canceled_at": null,
        "current_period_start": start, "current_period_end": start + 30 * 86400,
        "trial_end": null,
        "metadata": {"org_id": org.to_string(), "plan": plan},
        "items": {"object": "list", "data": [{"id": "si_1", "price": {"unit_amount": 2900}}]}
    })
}

/// Starts a Stripe Checkout of `plan` for `org` as `user`.
pub async fn checkout(
    app: &TestApp,
    org: Uuid,
    user: &TestUser,
    plan: &str,
) -> (StatusCode, Value) {
    app.post(
        &format!("/api/v1/orgs/{org}/billing/checkout"),
        user,
        json!({ "plan": plan }),
    )
    .await
}

/// A Checkout Session `id` of `org` for `plan`, paid and complete, that
/// made the subscription `sub` of `customer`.
pub fn completed_subscription_checkout(
    org: Uuid,
    id: &Value,
    customer: &str,
    sub: &str,
    plan: &str,
) -> Value {
    json!({
        "id": id, "object": "checkout.session", "mode": "subscription",
        "payment_status": "paid", "status": "complete", "customer": customer,
        "subscription": sub, "client_reference_id": org.to_string(),
        "metadata": {"org_id": org.to_string(), "plan": plan}
    })
}

/// (id, remaining) of each of the org's plan-period grants of `amount` credits.
async fn plan_period_grants(app: &TestApp, org: Uuid, amount: i64) -> Vec<(Uuid, i64)> {
    sqlx::query_as(
        "select id, remaining from credit_grants
         where org_id = $1 and source = 'plan_period' and ref like 'period:%' and amount = $2",
    )
    .bind(org)
    .bind(amount)
    .fetch_all(&app.db.admin)
    .await
    .unwrap()
}

/// (count, sum) of the plan-period grants of `amount` credits to `org`.
pub async fn plan_grants(app: &TestApp, org: Uuid, amount: i64) -> (i64, i64) {
    let count = plan_period_grants(app, org, amount).await.len() as i64;
    (count, count * amount)
}

/// Credits of plan periods (pro's 5,000) granted to `org`.
pub async fn period_grants(app: &TestApp, org: Uuid) -> i64 {
    plan_grants(app, org, 5000).await.1
}

/// (id, remaining) of the org's one plan-period grant of `amount` credits.
pub async fn period_grant(app: &TestApp, org: Uuid, amount: i64) -> (Uuid, i64) {
    let grants = plan_period_grants(app, org, amount).await;
    *grants
        .first()
        .unwrap_or_else(|| panic!("no plan-period grant of {amount}"))
}

/// The amounts booked as expired from `grant`, in order.
pub async fn expired_from(app: &TestApp, org: Uuid, grant: Uuid) -> Vec<i64> {
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

/// The amounts booked as expired from any of the org's grants, in order.
pub async fn all_expired(app: &TestApp, org: Uuid) -> Vec<i64> {
    sqlx::query_scalar(
        "select amount from credit_ledger where org_id = $1 and kind = 'expire' order by id",
    )
    .bind(org)
    .fetch_all(&app.db.admin)
    .await
    .unwrap()
}
