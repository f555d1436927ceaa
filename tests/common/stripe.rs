//! A local HTTP server standing in for Stripe's API at the HTTP boundary:
//! it records each request (path, form body, `Authorization`,
//! `Idempotency-Key`) and answers with Stripe-shaped JSON for
//! `POST /v1/customers`, `POST /v1/checkout/sessions`,
//! `POST /v1/billing_portal/sessions` and `POST /v1/subscriptions/{id}`
//! (`cancel_at_period_end`, on subscriptions a test seeded). Like Stripe, a repeated
//! `Idempotency-Key` gets the first answer again. In error mode every
//! request gets Stripe's error JSON with the chosen status (402: a card
//! error, 5xx: an API error).
//!
//! Also signs webhook bodies as Stripe does (independently of the code
//! under test).
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;
use tokio::task::JoinHandle;

/// One request as the fake received it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub path: String,
    pub form: Vec<(String, String)>,
    pub authorization: Option<String>,
    pub idempotency_key: Option<String>,
    pub content_type: Option<String>,
}

impl Recorded {
    /// The value of a form field (the first, when repeated).
    pub fn field(&self, name: &str) -> Option<&str> {
        self.form
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn has_field_starting(&self, prefix: &str) -> bool {
        self.form.iter().any(|(k, _)| k.starts_with(prefix))
    }
}

#[derive(Default)]
struct Inner {
    requests: Vec<Recorded>,
    /// Some(status): answer every request with Stripe's error JSON.
    fail_with: Option<u16>,
    by_key: HashMap<String, (u16, Value)>,
    seq: u64,
    /// Subscriptions by id, for `POST /v1/subscriptions/{id}`.
    subscriptions: HashMap<String, Value>,
}

pub struct FakeStripe {
    pub addr: SocketAddr,
    inner: Arc<Mutex<Inner>>,
    task: JoinHandle<()>,
}

impl Drop for FakeStripe {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeStripe {
    pub async fn start() -> FakeStripe {
        let inner = Arc::new(Mutex::new(Inner::default()));
        let app = axum::Router::new()
            .fallback(handle)
            .with_state(Arc::clone(&inner));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        FakeStripe { addr, inner, task }
    }

    /// The base URL to configure as `STRIPE_API_BASE`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.inner.lock().unwrap().requests.clone()
    }

    pub fn requests_to(&self, path: &str) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|r| r.path == path)
            .collect()
    }

    /// From now on every request gets Stripe's error JSON with `status`.
    pub fn fail_with(&self, status: u16) {
        self.inner.lock().unwrap().fail_with = Some(status);
    }

    pub fn succeed(&self) {
        self.inner.lock().unwrap().fail_with = None;
    }

    /// Makes a subscription known, as Stripe holds it.
    pub fn seed_subscription(&self, subscription: Value) {
        let id = subscription["id"].as_str().unwrap().to_owned();
        self.inner
            .lock()
            .unwrap()
            .subscriptions
            .insert(id, subscription);
    }
}

async fn handle(
    State(inner): State<Arc<Mutex<Inner>>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let form: Vec<(String, String)> = serde_urlencoded::from_bytes(&body).unwrap_or_default();
    let rec = Recorded {
        path: uri.path().to_owned(),
        form: form.clone(),
        authorization: header("authorization"),
        idempotency_key: header("idempotency-key"),
        content_type: header("content-type"),
    };
    let mut inner = inner.lock().unwrap();
    inner.requests.push(rec.clone());
    if let Some(status) = inner.fail_with {
        let error = if status == 402 {
            json!({"error": {
                "type": "card_error", "code": "card_declined", "decline_code": "generic_decline",
                "message": "Your card was declined."
            }})
        } else {
            json!({"error": {
                "type": "api_error",
                "message": "Something went wrong on Stripe's end."
            }})
        };
        return reply(status, error);
    }
    if let Some(key) = &rec.idempotency_key
        && let Some((status, body)) = inner.by_key.get(key)
    {
        return reply(*status, body.clone());
    }
    inner.seq += 1;
    let n = inner.seq;
    let now = chrono::Utc::now().timestamp();
    let metadata = |prefix: &str| {
        let mut m = serde_json::Map::new();
        for (k, v) in &form {
            if let Some(rest) = k.strip_prefix(prefix)
                && let Some(name) = rest.strip_suffix(']')
            {
                m.insert(name.to_owned(), Value::String(v.clone()));
            }
        }
        Value::Object(m)
    };
    let field = |name: &str| rec.field(name).map(str::to_owned);
    let (status, answer) = match rec.path.as_str() {
        "/v1/customers" => (
            200,
            json!({
                "id": format!("cus_test_{n}"), "object": "customer", "created": now,
                "email": field("email"), "name": field("name"),
                "metadata": metadata("metadata["), "livemode": false
            }),
        ),
        "/v1/checkout/sessions" => {
            let id = format!("cs_test_{n}");
            (
                200,
                json!({
                    "id": id, "object": "checkout.session", "created": now,
                    "url": format!("https://checkout.stripe.com/c/pay/{id}"),
                    "mode": field("mode"), "customer": field("customer"),
                    "client_reference_id": field("client_reference_id"),
                    "success_url": field("success_url"), "cancel_url": field("cancel_url"),
                    "metadata": metadata("metadata["), "status": "open",
                    "payment_status": "unpaid", "livemode": false
                }),
            )
        }
        "/v1/billing_portal/sessions" => (
            200,
            json!({
                "id": format!("bps_test_{n}"), "object": "billing_portal.session",
                "created": now, "customer": field("customer"),
                "return_url": field("return_url"),
                "url": format!("https://billing.stripe.com/p/session/test_{n}"),
                "livemode": false
            }),
        ),
        path if path.starts_with("/v1/subscriptions/") => {
            let id = path.trim_start_matches("/v1/subscriptions/").to_owned();
            match inner.subscriptions.get_mut(&id) {
                Some(sub) => {
                    if let Some(cancel) = field("cancel_at_period_end") {
                        sub["cancel_at_period_end"] = json!(cancel == "true");
                    }
                    (200, sub.clone())
                }
                None => (
                    404,
                    json!({"error": {
                        "type": "invalid_request_error", "code": "resource_missing",
                        "message": format!("No such subscription: '{id}'")
                    }}),
                ),
            }
        }
        other => (
            404,
            json!({"error": {
                "type": "invalid_request_error",
                "message": format!("Unrecognized request URL (POST: {other}).")
            }}),
        ),
    };
    if let Some(key) = rec.idempotency_key {
        inner.by_key.insert(key, (status, answer.clone()));
    }
    reply(status, answer)
}

fn reply(status: u16, body: Value) -> Response {
    (
        StatusCode::from_u16(status).unwrap(),
        [("content-type", "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// `v1` of `body` at `t` under `secret`: hex HMAC-SHA256 of `"{t}.{body}"`.
pub fn sign(secret: &str, t: i64, body: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{t}.{body}").as_bytes());
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A `Stripe-Signature` header signed now with `secret`.
pub fn signature_header(secret: &str, body: &str) -> String {
    let t = chrono::Utc::now().timestamp();
    format!("t={t},v1={}", sign(secret, t, body))
}

/// A Stripe event envelope around `object`.
pub fn event(id: &str, kind: &str, created: i64, object: Value) -> String {
    json!({
        "id": id,
        "object": "event",
        "api_version": "2024-06-20",
        "created": created,
        "livemode": false,
        "pending_webhooks": 1,
        "request": {"id": null, "idempotency_key": null},
        "type": kind,
        "data": {"object": object}
    })
    .to_string()
}
