//! Payments over real HTTP and Postgres: Stripe Checkout and Billing Portal
//! against a local server standing in for Stripe's API, Stripe webhooks
//! (signatures, replays, out-of-order events, their effects), the manual
//! provider's invoices, and the invoice list's tenant wall. Plan changes of
//! Stripe-managed subscriptions are in `billing_stripe_plans.rs`.

use crate::common::billing::*;
use crate::common::smtp::SmtpSink;
use crate::common::stripe::{FakeStripe, event, sign, signature_header};
use crate::common::*;

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use uuid::Uuid;

async fn webhook_events(app: &TestApp) -> i64 {
    app.count("app.webhook_events").await
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

    let (s, _) = checkout(&app, org, &owner, "pro").await;
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
    assert_declined(app.post(&path, &owner, json!({"plan": "pro"})).await);
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
    let session =
        completed_subscription_checkout(org, &json!("cs_sub_1"), "cus_hook_1", "sub_1", "pro");
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
