//! A local HTTP server standing in for Stripe's API at the HTTP boundary:
//! it records each request (method, path, form body, `Authorization`,
//! `Idempotency-Key`) and answers with Stripe-shaped JSON for
//! `POST /v1/customers`, `POST /v1/checkout/sessions`,
//! `POST /v1/billing_portal/sessions`, `POST /v1/prices` (a recurring price
//! with inline `product_data`, remembered by id), and, on subscriptions a
//! test seeded, `GET /v1/subscriptions/{id}` and `POST /v1/subscriptions/{id}`
//! (`items[0][id]`/`items[0][price]` with a price made here or one a seeded
//! subscription's item is on,
//! `proration_behavior`, `billing_cycle_anchor=now|unchanged`,
//! `trial_end=now`, `cancel_at_period_end`, `payment_behavior`,
//! `metadata[..]`; an empty value removes a metadata key), refusing bad
//! parameters with a 400 as Stripe does and changing nothing then.
//!
//! Like Stripe, a POST repeating an `Idempotency-Key` gets the first answer
//! again (and changes nothing); the same key with another method, path or
//! form is a 400 `idempotency_error`. GETs are never remembered.
//!
//! Failures, until `succeed`:
//! * `fail_with` (every request), `fail_requests_to` (one method and path),
//!   `fail_nth_request_to` (only the nth such request from then on): Stripe's
//!   error JSON with the chosen status (402: a card error, 5xx: an API
//!   error; `fail_with_body`, `fail_requests_to_with_body`: a body of the
//!   test's), and nothing changes;
//! * `apply_then_fail_requests_to`: the request is applied, but answered
//!   with an API error (Stripe made the change, the answer was lost); a
//!   retry with the same `Idempotency-Key` gets the same error again, as
//!   Stripe replays a stored result, and changes nothing more.
//!
//! `hold_requests_to` holds one method and path (a slow Stripe): such a
//! request is recorded on arrival, then waits until the returned [`Gate`] is
//! released (or dropped), and only then is applied and answered.
//!
//! Also signs webhook bodies as Stripe does (independently of the code
//! under test).
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// One request as the fake received it.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// `GET`, `POST`, ...
    pub method: String,
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

/// An error answer: a status, and the body (None: Stripe's usual one for
/// the status, see `stripe_error`).
type Failure = (u16, Option<Value>);

/// The nth request with a method to a path (counted from when it was set)
/// fails.
struct NthFailure {
    method: String,
    path: String,
    n: usize,
    seen: usize,
    failure: Failure,
}

#[derive(Default)]
struct Inner {
    requests: Vec<Recorded>,
    /// Answer every request with an error.
    fail_with: Option<Failure>,
    /// (method, path) -> answer those requests with an error.
    fail_at: HashMap<(String, String), Failure>,
    /// One request each, by its place among those with its method and path.
    fail_nth: Vec<NthFailure>,
    /// (method, path) -> apply those requests, then answer this status.
    apply_then_fail: HashMap<(String, String), u16>,
    /// Answers by idempotency key, with the (method, path, form) first sent.
    by_key: HashMap<String, (String, u16, Value)>,
    seq: u64,
    /// Subscriptions by id, for `GET`/`POST /v1/subscriptions/{id}`.
    subscriptions: HashMap<String, Value>,
    /// Prices created with `POST /v1/prices`, and those of seeded
    /// subscriptions' items, by id.
    prices: HashMap<String, Value>,
    /// (method, path) -> the gate those requests wait at (see `Gate`).
    gates: HashMap<(String, String), (u64, watch::Receiver<bool>)>,
    gate_seq: u64,
}

/// Holds the requests with one method to one path that arrive while it is
/// in place (see [`FakeStripe::hold_requests_to`]) until it is released or
/// dropped. Requests arriving after that are answered at once.
pub struct Gate {
    id: u64,
    key: (String, String),
    open: watch::Sender<bool>,
    inner: Arc<Mutex<Inner>>,
}

impl Gate {
    /// Lets the held requests (and later ones) through: each is then applied
    /// and answered.
    pub fn release(&self) {
        // (A poisoned lock, after a panic elsewhere: the requests still go.)
        if let Ok(mut inner) = self.inner.lock()
            && let Some((id, _)) = inner.gates.get(&self.key)
            && *id == self.id
        {
            inner.gates.remove(&self.key);
        }
        self.open.send_replace(true);
    }
}

impl Drop for Gate {
    /// Never leaves a request hanging (e.g. when a test fails first).
    fn drop(&mut self) {
        self.release();
    }
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

    /// The requests to `path`, whatever their method.
    pub fn requests_to(&self, path: &str) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|r| r.path == path)
            .collect()
    }

    /// The requests with `method` (`GET`, `POST`) to `path`.
    pub fn requests_with(&self, method: &str, path: &str) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|r| r.method == method && r.path == path)
            .collect()
    }

    /// From now on every request gets Stripe's error JSON with `status`.
    pub fn fail_with(&self, status: u16) {
        self.inner.lock().unwrap().fail_with = Some((status, None));
    }

    /// From now on every request gets `status` with `body`.
    pub fn fail_with_body(&self, status: u16, body: Value) {
        self.inner.lock().unwrap().fail_with = Some((status, Some(body)));
    }

    /// From now on requests with `method` to `path` (only those) get
    /// Stripe's error JSON with `status`.
    pub fn fail_requests_to(&self, method: &str, path: &str, status: u16) {
        self.inner
            .lock()
            .unwrap()
            .fail_at
            .insert((method.to_owned(), path.to_owned()), (status, None));
    }

    /// From now on requests with `method` to `path` (only those) get
    /// `status` with `body`.
    pub fn fail_requests_to_with_body(&self, method: &str, path: &str, status: u16, body: Value) {
        self.inner
            .lock()
            .unwrap()
            .fail_at
            .insert((method.to_owned(), path.to_owned()), (status, Some(body)));
    }

    /// The `n`th request (from 1, counted from now) with `method` to `path`
    /// gets Stripe's error JSON with `status`; the others are answered as
    /// usual.
    pub fn fail_nth_request_to(&self, method: &str, path: &str, n: usize, status: u16) {
        assert!(n >= 1, "requests are counted from 1");
        self.inner.lock().unwrap().fail_nth.push(NthFailure {
            method: method.to_owned(),
            path: path.to_owned(),
            n,
            seen: 0,
            failure: (status, None),
        });
    }

    /// From now on requests with `method` to `path` are applied, as usual,
    /// but answered with Stripe's error JSON with `status` (when they
    /// succeeded). A retry with the same idempotency key gets that error
    /// again and changes nothing.
    pub fn apply_then_fail_requests_to(&self, method: &str, path: &str, status: u16) {
        self.inner
            .lock()
            .unwrap()
            .apply_then_fail
            .insert((method.to_owned(), path.to_owned()), status);
    }

    /// Holds the requests with `method` to `path` that arrive from now on
    /// until the gate is released (or dropped): each is recorded on arrival,
    /// and applied and answered only then. (Replaces an earlier gate for
    /// them; the requests that one holds stay held by it.)
    pub fn hold_requests_to(&self, method: &str, path: &str) -> Gate {
        let key = (method.to_owned(), path.to_owned());
        let (open, waiting) = watch::channel(false);
        let mut inner = self.inner.lock().unwrap();
        inner.gate_seq += 1;
        let id = inner.gate_seq;
        inner.gates.insert(key.clone(), (id, waiting));
        Gate {
            id,
            key,
            open,
            inner: Arc::clone(&self.inner),
        }
    }

    /// Stripe no longer has the subscription (deleted outside Tenantry, or
    /// another account's): its requests are 404 `resource_missing`.
    pub fn forget_subscription(&self, id: &str) {
        self.inner.lock().unwrap().subscriptions.remove(id);
    }

    /// A price made with `POST /v1/prices`, as the fake answered it (or as a
    /// seeded subscription's item had it).
    pub fn price(&self, id: &str) -> Option<Value> {
        self.inner.lock().unwrap().prices.get(id).cloned()
    }

    /// Ends every failure mode (not the holds).
    pub fn succeed(&self) {
        let mut inner = self.inner.lock().unwrap();
        inner.fail_with = None;
        inner.fail_at.clear();
        inner.fail_nth.clear();
        inner.apply_then_fail.clear();
    }

    /// Makes a subscription known, as Stripe holds it (replacing the one
    /// with its id: a test can move it on, as Stripe's renewal does). The
    /// prices of its items that have an id become known too (a price made
    /// here keeps its first form), so an update may move an item to one.
    pub fn seed_subscription(&self, subscription: Value) {
        let id = subscription["id"].as_str().unwrap().to_owned();
        let mut inner = self.inner.lock().unwrap();
        for item in subscription["items"]["data"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let price = &item["price"];
            if let Some(price_id) = price["id"].as_str() {
                inner
                    .prices
                    .entry(price_id.to_owned())
                    .or_insert_with(|| price.clone());
            }
        }
        inner.subscriptions.insert(id, subscription);
    }

    /// The subscription as the fake holds it now (after the updates it
    /// answered), e.g. to deliver it in a webhook event.
    pub fn subscription(&self, id: &str) -> Option<Value> {
        self.inner.lock().unwrap().subscriptions.get(id).cloned()
    }
}

fn stripe_error(status: u16) -> Value {
    if status == 402 {
        json!({"error": {
            "type": "card_error", "code": "card_declined", "decline_code": "generic_decline",
            "message": "Your card was declined."
        }})
    } else {
        json!({"error": {
            "type": "api_error",
            "message": "Something went wrong on Stripe's end."
        }})
    }
}

/// 400 `invalid_request_error` with `message`.
fn invalid(message: impl Into<String>) -> (u16, Value) {
    (
        400,
        json!({"error": {"type": "invalid_request_error", "message": message.into()}}),
    )
}

fn missing(name: &str) -> (u16, Value) {
    invalid(format!("Missing required param: {name}."))
}

fn no_such_subscription(id: &str) -> (u16, Value) {
    (
        404,
        json!({"error": {
            "type": "invalid_request_error", "code": "resource_missing",
            "message": format!("No such subscription: '{id}'")
        }}),
    )
}

/// The fields `prefix[name]` of `form` as a metadata object (empty values
/// included).
fn bracketed(form: &[(String, String)], prefix: &str) -> serde_json::Map<String, Value> {
    let mut m = serde_json::Map::new();
    for (k, v) in form {
        if let Some(rest) = k.strip_prefix(prefix)
            && let Some(name) = rest.strip_suffix(']')
        {
            m.insert(name.to_owned(), Value::String(v.clone()));
        }
    }
    m
}

async fn handle(
    State(inner): State<Arc<Mutex<Inner>>>,
    method: Method,
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
        method: method.as_str().to_owned(),
        path: uri.path().to_owned(),
        form: form.clone(),
        authorization: header("authorization"),
        idempotency_key: header("idempotency-key"),
        content_type: header("content-type"),
    };
    let route = (rec.method.clone(), rec.path.clone());
    // On arrival: recorded, counted, and held at a gate in place.
    let (nth_failure, gate) = {
        let mut inner = inner.lock().unwrap();
        inner.requests.push(rec.clone());
        let mut nth_failure = None;
        for rule in inner
            .fail_nth
            .iter_mut()
            .filter(|r| r.method == route.0 && r.path == route.1)
        {
            rule.seen += 1;
            if rule.seen == rule.n && nth_failure.is_none() {
                nth_failure = Some(rule.failure.clone());
            }
        }
        let gate = inner.gates.get(&route).map(|(_, waiting)| waiting.clone());
        (nth_failure, gate)
    };
    // A slow Stripe: the lock is not held while the request waits. A gate
    // dropped without a release lets it through too.
    if let Some(mut gate) = gate {
        let _ = gate.wait_for(|open| *open).await;
    }
    let mut inner = inner.lock().unwrap();
    if let Some(failure) = inner.fail_with.clone() {
        return fail(failure);
    }
    if let Some(failure) = inner.fail_at.get(&route).cloned() {
        return fail(failure);
    }
    if let Some(failure) = nth_failure {
        return fail(failure);
    }
    let is_get = method == Method::GET;
    // What a repeated key must repeat, as Stripe compares it.
    let fingerprint = format!(
        "{} {} {}",
        rec.method,
        rec.path,
        serde_urlencoded::to_string(&form).unwrap_or_default()
    );
    if !is_get
        && let Some(key) = &rec.idempotency_key
        && let Some((first, status, body)) = inner.by_key.get(key)
    {
        if *first != fingerprint {
            return reply(
                400,
                json!({"error": {
                    "type": "idempotency_error",
                    "message": format!(
                        "Keys for idempotent requests can only be used with the same parameters \
                         they were first used with. Try using a key other than '{key}' if you \
                         meant to execute a different request."
                    )
                }}),
            );
        }
        return reply(*status, body.clone());
    }
    inner.seq += 1;
    let n = inner.seq;
    let now = chrono::Utc::now().timestamp();
    let metadata = |prefix: &str| Value::Object(bracketed(&form, prefix));
    let field = |name: &str| rec.field(name).map(str::to_owned);
    let subscription_id = rec
        .path
        .strip_prefix("/v1/subscriptions/")
        .filter(|id| !id.is_empty() && !id.contains('/'))
        .map(str::to_owned);
    let (status, answer) = match (rec.method.as_str(), rec.path.as_str()) {
        ("POST", "/v1/customers") => (
            200,
            json!({
                "id": format!("cus_test_{n}"), "object": "customer", "created": now,
                "email": field("email"), "name": field("name"),
                "metadata": metadata("metadata["), "livemode": false
            }),
        ),
        ("POST", "/v1/checkout/sessions") => {
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
        ("POST", "/v1/billing_portal/sessions") => (
            200,
            json!({
                "id": format!("bps_test_{n}"), "object": "billing_portal.session",
                "created": now, "customer": field("customer"),
                "return_url": field("return_url"),
                "url": format!("https://billing.stripe.com/p/session/test_{n}"),
                "livemode": false
            }),
        ),
        ("POST", "/v1/prices") => create_price(&mut inner, &rec, n, now),
        ("GET", _) if subscription_id.is_some() => {
            let id = subscription_id.unwrap();
            match inner.subscriptions.get(&id) {
                Some(sub) => (200, sub.clone()),
                None => no_such_subscription(&id),
            }
        }
        ("POST", _) if subscription_id.is_some() => {
            update_subscription(&mut inner, &subscription_id.unwrap(), &rec, n, now)
        }
        (method, other) => (
            404,
            json!({"error": {
                "type": "invalid_request_error",
                "message": format!("Unrecognized request URL ({method}: {other}).")
            }}),
        ),
    };
    // Applied, but the answer is an error (and stays one for the key).
    let (status, answer) = match inner.apply_then_fail.get(&route) {
        Some(&error) if (200..300).contains(&status) => (error, stripe_error(error)),
        _ => (status, answer),
    };
    if !is_get && let Some(key) = rec.idempotency_key {
        inner
            .by_key
            .insert(key, (fingerprint, status, answer.clone()));
    }
    reply(status, answer)
}

fn fail((status, body): Failure) -> Response {
    reply(status, body.unwrap_or_else(|| stripe_error(status)))
}

/// `POST /v1/prices`: a recurring price with inline `product_data`.
fn create_price(inner: &mut Inner, rec: &Recorded, n: u64, now: i64) -> (u16, Value) {
    for name in [
        "currency",
        "unit_amount",
        "recurring[interval]",
        "product_data[name]",
    ] {
        if rec.field(name).is_none_or(str::is_empty) {
            return missing(name);
        }
    }
    let Ok(unit_amount) = rec.field("unit_amount").unwrap().parse::<i64>() else {
        return invalid(format!(
            "Invalid integer: {}",
            rec.field("unit_amount").unwrap()
        ));
    };
    let interval = rec.field("recurring[interval]").unwrap();
    if !matches!(interval, "day" | "week" | "month" | "year") {
        return invalid(format!("Invalid recurring[interval]: {interval}"));
    }
    let id = format!("price_test_{n}");
    let price = json!({
        "id": id, "object": "price", "created": now, "active": true,
        "currency": rec.field("currency"), "unit_amount": unit_amount,
        "recurring": {"interval": interval},
        "product": format!("prod_test_{n}"),
        "metadata": Value::Object(bracketed(&rec.form, "metadata[")),
        "livemode": false
    });
    inner.prices.insert(id, price.clone());
    (200, price)
}

/// `POST /v1/subscriptions/{id}`: every parameter is checked before any is
/// applied (a refused update changes nothing).
fn update_subscription(
    inner: &mut Inner,
    id: &str,
    rec: &Recorded,
    n: u64,
    now: i64,
) -> (u16, Value) {
    let Some(current) = inner.subscriptions.get(id) else {
        return no_such_subscription(id);
    };
    let mut sub = current.clone();
    if let Some(p) = rec.field("proration_behavior")
        && !matches!(p, "create_prorations" | "none" | "always_invoice")
    {
        return invalid(
            "Invalid proration_behavior: must be one of create_prorations, none, or always_invoice",
        );
    }
    let anchor = rec.field("billing_cycle_anchor");
    let trial_end = rec.field("trial_end");
    if anchor.is_some() && trial_end.is_some() {
        return invalid(
            "You cannot set both `billing_cycle_anchor` and `trial_end` on a subscription update.",
        );
    }
    if let Some(a) = anchor
        && !matches!(a, "now" | "unchanged")
    {
        return invalid(format!(
            "Invalid billing_cycle_anchor: must be one of now or unchanged (got {a})"
        ));
    }
    let trial_until = match trial_end {
        None => None,
        Some("now") => Some(now),
        Some(t) => match t.parse::<i64>() {
            Ok(t) if t > now => Some(t),
            _ => {
                return invalid(format!(
                    "Invalid trial_end: must be `now` or a future timestamp (got {t})"
                ));
            }
        },
    };
    let item_id = rec.field("items[0][id]");
    if let Some(item) = item_id
        && !sub["items"]["data"]
            .as_array()
            .is_some_and(|d| d.iter().any(|i| i["id"] == item))
    {
        return invalid(format!("No such subscription item: '{item}'"));
    }
    let price = match rec.field("items[0][price]") {
        None => None,
        Some(p) => match inner.prices.get(p) {
            Some(price) => Some(price.clone()),
            None => return invalid(format!("No such price: '{p}'")),
        },
    };
    if let Some(cancel) = rec.field("cancel_at_period_end")
        && !matches!(cancel, "true" | "false")
    {
        return invalid(format!("Invalid boolean: {cancel}"));
    }
    if let Some(b) = rec.field("payment_behavior")
        && !matches!(
            b,
            "allow_incomplete"
                | "error_if_incomplete"
                | "pending_if_incomplete"
                | "default_incomplete"
        )
    {
        return invalid(format!(
            "Invalid payment_behavior: must be one of allow_incomplete, error_if_incomplete, \
             pending_if_incomplete, or default_incomplete (got {b})"
        ));
    }

    // Valid: apply.
    if let Some(price) = price {
        match item_id {
            Some(item) => {
                for i in sub["items"]["data"].as_array_mut().unwrap() {
                    if i["id"] == item {
                        i["price"] = price.clone();
                    }
                }
            }
            // A price without an item id adds an item, as at Stripe.
            None => {
                let added = json!({"id": format!("si_test_{n}"), "price": price});
                match sub["items"]["data"].as_array_mut() {
                    Some(data) => data.push(added),
                    None => sub["items"] = json!({"object": "list", "data": [added]}),
                }
            }
        }
    }
    // Newer API versions keep the period on the items too.
    let new_period = |sub: &mut Value| {
        sub["current_period_start"] = json!(now);
        sub["current_period_end"] = json!(now + 30 * 86400);
        if let Some(items) = sub["items"]["data"].as_array_mut() {
            for i in items
                .iter_mut()
                .filter(|i| i.get("current_period_start").is_some())
            {
                i["current_period_start"] = json!(now);
                i["current_period_end"] = json!(now + 30 * 86400);
            }
        }
    };
    if anchor == Some("now") {
        new_period(&mut sub);
    }
    if let Some(t) = trial_until {
        sub["trial_end"] = json!(t);
        if t == now {
            sub["status"] = json!("active");
            new_period(&mut sub);
        } else {
            sub["status"] = json!("trialing");
            sub["current_period_end"] = json!(t);
        }
    }
    if let Some(cancel) = rec.field("cancel_at_period_end") {
        sub["cancel_at_period_end"] = json!(cancel == "true");
    }
    let changes = bracketed(&rec.form, "metadata[");
    if !changes.is_empty() {
        if !sub["metadata"].is_object() {
            sub["metadata"] = json!({});
        }
        let m = sub["metadata"].as_object_mut().unwrap();
        for (k, v) in changes {
            if v.as_str() == Some("") {
                m.remove(&k);
            } else {
                m.insert(k, v);
            }
        }
    }
    inner.subscriptions.insert(id.to_owned(), sub.clone());
    (200, sub)
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
