//! Stripe over its REST API: form-encoded POSTs with the secret key as a
//! bearer token and an `Idempotency-Key` on each, so that a retried request
//! (ours, after a timeout or a 5xx) never creates a second object. Prices
//! come from the plan catalog: inline in Checkout (`price_data`), and
//! created with their product (`POST /v1/prices`) when a subscription
//! changes plan. No Stripe price ids to configure.

use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_util::future::BoxFuture;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use url::Url;

use super::error::PaymentError;
use super::provider::{
    CheckoutItem, CheckoutRequest, CheckoutSession, NewCustomer, PaymentProvider, PortalRequest,
    PortalSession, PriceChange, SubscriptionUpdate, UpdateFailure,
};
use super::stripe_objects::{self, ErrorAnswer, Subscription, non_empty};
use crate::billing::model::Plan;
use crate::config::{BillingConfig, PaymentProviderKind};
use secrecy::{ExposeSecret, SecretString};

/// One attempt's limit; a request is tried at most twice.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
const ATTEMPTS: u32 = 2;

pub struct StripeProvider {
    http: reqwest::Client,
    base: Url,
    secret: SecretString,
}

impl StripeProvider {
    pub fn new(config: &BillingConfig) -> anyhow::Result<Self> {
        let secret = config
            .stripe_secret_key
            .clone()
            .ok_or_else(|| anyhow::anyhow!("STRIPE_SECRET_KEY is required with stripe"))?;
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(ATTEMPT_TIMEOUT)
            .user_agent(concat!("tenantry/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(StripeProvider {
            http,
            base: config.stripe_api_base.clone(),
            secret,
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base.as_str().trim_end_matches('/'))
    }

    /// POSTs a form; retries once, with the same idempotency key, when Stripe
    /// cannot be reached or answers 409 (a concurrent request with the
    /// key), 429 or 5xx.
    async fn post<T: DeserializeOwned>(
        &self,
        path: &str,
        form: &[(String, String)],
        idempotency_key: &str,
    ) -> Result<T, PaymentError> {
        let body = serde_urlencoded::to_string(form)?;
        self.send(path, Some((body, idempotency_key)))
            .await
            .map_err(|f| f.error)
    }

    /// POSTs a change of a subscription: as [`Self::post`], telling apart a
    /// failure Stripe answered (nothing was changed) from one it did not
    /// (it may have been).
    async fn write(
        &self,
        path: &str,
        form: &[(String, String)],
        idempotency_key: &str,
    ) -> Result<Subscription, UpdateFailure> {
        let body = serde_urlencoded::to_string(form).map_err(|e| UpdateFailure {
            error: e.into(),
            outcome_unknown: false,
        })?;
        self.send(path, Some((body, idempotency_key))).await
    }

    /// Creates a recurring price for `plan` (with its product); its id.
    async fn create_price(
        &self,
        plan: &Plan,
        idempotency_key: &str,
    ) -> Result<String, PaymentError> {
        let price: stripe_objects::Price = self
            .post("/v1/prices", &price_form(plan), idempotency_key)
            .await?;
        required(price.id, "id")
    }

    /// GETs an object (retried as a POST is: reading is idempotent).
    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, PaymentError> {
        self.send(path, None).await.map_err(|f| f.error)
    }

    /// Sends a request (tried twice when Stripe cannot answer). A failure
    /// whose outcome is unknown: no definite answer came back.
    async fn send<T: DeserializeOwned>(
        &self,
        path: &str,
        post: Option<(String, &str)>,
    ) -> Result<T, UpdateFailure> {
        let unknown = |error: PaymentError| UpdateFailure {
            error,
            outcome_unknown: true,
        };
        let definite = |error: PaymentError| UpdateFailure {
            error,
            outcome_unknown: false,
        };
        let mut last = None;
        for attempt in 1..=ATTEMPTS {
            if attempt > 1 {
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            let request = match &post {
                Some((body, idempotency_key)) => self
                    .http
                    .post(self.url(path))
                    .header("Idempotency-Key", *idempotency_key)
                    .header("Content-Type", "application/x-www-form-urlencoded")
                    .body(body.clone()),
                None => self.http.get(self.url(path)),
            };
            let sent = request
                .bearer_auth(self.secret.expose_secret())
                .send()
                .await;
            let res = match sent {
                Ok(res) => res,
                Err(e) => {
                    tracing::warn!(error = %e, path, attempt, "Stripe request failed");
                    last = Some(PaymentError::ProviderUnavailable(
                        "Stripe could not be reached",
                    ));
                    continue;
                }
            };
            let status = res.status();
            let bytes = match res.bytes().await {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(error = %e, path, attempt, "Stripe response failed");
                    last = Some(PaymentError::ProviderUnavailable(
                        "Stripe's response was cut short",
                    ));
                    continue;
                }
            };
            let json: Option<Value> = serde_json::from_slice(&bytes).ok();
            if status.is_success() {
                return json
                    .filter(Value::is_object)
                    .and_then(|v| T::deserialize(v).ok())
                    .ok_or_else(|| {
                        unknown(PaymentError::ProviderUnavailable(
                            "Stripe answered with something other than JSON",
                        ))
                    });
            }
            let error = json
                .and_then(|v| ErrorAnswer::deserialize(v).ok())
                .unwrap_or_default()
                .error;
            let message = error
                .message
                .clone()
                .unwrap_or_else(|| format!("Stripe answered {status}"));
            tracing::warn!(status = status.as_u16(), path, attempt, %message, "Stripe error");
            if status == reqwest::StatusCode::PAYMENT_REQUIRED
                && error.kind.as_deref() == Some("card_error")
            {
                // Stripe's message for a card error is written for the customer.
                let declined = if error.code.as_deref() == Some("authentication_required") {
                    PaymentError::AuthenticationRequired(message)
                } else {
                    PaymentError::Declined(message)
                };
                return Err(definite(declined));
            }
            if status == reqwest::StatusCode::NOT_FOUND && post.is_none() {
                // Only subscriptions are read: this one is gone (its
                // webhook is on the way).
                return Err(definite(PaymentError::SubscriptionGone));
            }
            // Stripe's words about our own credentials (they quote part of
            // the key) are for the log, not for the caller.
            last = Some(
                if status == reqwest::StatusCode::UNAUTHORIZED
                    || status == reqwest::StatusCode::FORBIDDEN
                {
                    PaymentError::CredentialsRejected
                } else {
                    PaymentError::ProviderRefused(message)
                },
            );
            let retryable = status.is_server_error()
                || status == reqwest::StatusCode::TOO_MANY_REQUESTS
                || status == reqwest::StatusCode::CONFLICT;
            if !retryable {
                return Err(definite(last.take().unwrap_or_else(|| {
                    PaymentError::ProviderRefused(format!("Stripe answered {status}"))
                })));
            }
        }
        Err(unknown(last.unwrap_or(PaymentError::ProviderUnavailable(
            "Stripe could not be reached",
        ))))
    }
}

/// A field Stripe's answer must have (`name`, for the error).
fn required(field: Option<String>, name: &'static str) -> Result<String, PaymentError> {
    field
        .filter(|s| !s.is_empty())
        .ok_or(PaymentError::IncompleteAnswer(name))
}

fn pair(k: &str, v: impl ToString) -> (String, String) {
    (k.to_owned(), v.to_string())
}

/// The form of a Checkout session (exposed for tests of its shape).
pub fn checkout_form(req: &CheckoutRequest) -> Vec<(String, String)> {
    let org = req.org_id.to_string();
    let mut form = vec![
        pair("customer", &req.customer_id),
        pair("client_reference_id", &org),
        pair("success_url", &req.success_url),
        pair("cancel_url", &req.cancel_url),
        pair("line_items[0][quantity]", 1),
        pair("metadata[org_id]", &org),
    ];
    match &req.item {
        CheckoutItem::Plan { plan, trial_days } => {
            form.extend([
                pair("mode", "subscription"),
                pair(
                    "line_items[0][price_data][currency]",
                    plan.currency.to_ascii_lowercase(),
                ),
                pair("line_items[0][price_data][unit_amount]", plan.price_minor),
                pair("line_items[0][price_data][product_data][name]", &plan.name),
                pair(
                    "line_items[0][price_data][recurring][interval]",
                    &plan.interval,
                ),
                pair("metadata[plan]", &plan.code),
                pair("subscription_data[metadata][org_id]", &org),
                pair("subscription_data[metadata][plan]", &plan.code),
            ]);
            if let Some(days) = trial_days.filter(|d| *d > 0) {
                form.push(pair("subscription_data[trial_period_days]", days));
            }
        }
        CheckoutItem::CreditPack(pack) => {
            form.extend([
                pair("mode", "payment"),
                pair(
                    "line_items[0][price_data][currency]",
                    pack.currency.to_ascii_lowercase(),
                ),
                pair("line_items[0][price_data][unit_amount]", pack.price_minor),
                pair("line_items[0][price_data][product_data][name]", &pack.name),
                pair("metadata[credit_pack]", &pack.code),
                pair("metadata[credits]", pack.credits),
                pair("payment_intent_data[metadata][org_id]", &org),
                pair("payment_intent_data[metadata][credit_pack]", &pack.code),
            ]);
        }
    }
    form
}

/// An id from our own records, but it goes into a URL path.
fn check_subscription_id(id: &str) -> Result<(), PaymentError> {
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        return Err(PaymentError::MalformedSubscriptionId);
    }
    Ok(())
}

/// The id of the subscription's one item (Tenantry's subscriptions have
/// one: the plan).
fn single_item(subscription: &Subscription) -> Result<String, PaymentError> {
    match subscription.items.data.as_deref() {
        Some([item]) => required(item.id.clone(), "id"),
        Some(items) => Err(PaymentError::UnsupportedSubscription { items: items.len() }),
        None => Err(PaymentError::NoItems),
    }
}

/// A failure of Stripe's (declined, refused, unreachable) after the pending
/// downgrade was taken back says so.
fn after_restore(error: PaymentError, restored: bool) -> PaymentError {
    let stripes = matches!(
        error,
        PaymentError::Declined(_)
            | PaymentError::AuthenticationRequired(_)
            | PaymentError::ProviderUnavailable(_)
            | PaymentError::ProviderRefused(_)
            | PaymentError::CredentialsRejected
            | PaymentError::IncompleteAnswer(_)
            | PaymentError::NoItems
    );
    if restored && stripes {
        PaymentError::AfterRestore(Box::new(error))
    } else {
        error
    }
}

/// [`PaymentError::SubscriptionMovedOn`] unless Stripe's subscription still
/// ends its period at `expected` (the period as last mirrored).
fn ensure_period_end(
    subscription: &Subscription,
    expected: DateTime<Utc>,
) -> Result<(), PaymentError> {
    let end = subscription.period_end();
    if end == Some(expected.timestamp()) {
        return Ok(());
    }
    Err(PaymentError::SubscriptionMovedOn)
}

/// The form of a recurring price for `plan` (its product created with it).
pub fn price_form(plan: &Plan) -> Vec<(String, String)> {
    vec![
        pair("currency", plan.currency.to_ascii_lowercase()),
        pair("unit_amount", plan.price_minor),
        pair("recurring[interval]", &plan.interval),
        pair("product_data[name]", &plan.name),
        pair("metadata[plan]", &plan.code),
    ]
}

/// The form that moves a subscription's item to a new price: now (`now`: a
/// new period, prorated and charged at once; a trial ends) or from the next
/// renewal (no proration).
pub fn subscription_price_form(
    item_id: &str,
    price_id: &str,
    now: bool,
    trialing: bool,
    metadata: &[(&'static str, String)],
    resume: bool,
) -> Vec<(String, String)> {
    let mut form = vec![
        pair("items[0][id]", item_id),
        pair("items[0][price]", price_id),
    ];
    if now {
        form.push(pair("proration_behavior", "always_invoice"));
        // A declined payment refuses the change (402) instead of moving
        // the subscription to the new plan unpaid (`past_due`).
        form.push(pair("payment_behavior", "error_if_incomplete"));
        // Stripe refuses a new billing anchor during a trial; ending the
        // trial starts the paid period now.
        form.push(if trialing {
            pair("trial_end", "now")
        } else {
            pair("billing_cycle_anchor", "now")
        });
    } else {
        form.push(pair("proration_behavior", "none"));
    }
    if resume {
        form.push(pair("cancel_at_period_end", false));
    }
    for (key, value) in metadata {
        form.push(pair(&format!("metadata[{key}]"), value));
    }
    form
}

/// The price paid for the period while a downgrade is pending (recorded
/// with it; stale once the downgrade took effect at the renewal).
fn paid_price(subscription: &Subscription) -> Option<String> {
    let meta = &subscription.metadata;
    let paid = non_empty(meta.paid_price.as_deref())?;
    let from = non_empty(meta.pending_from.as_deref())?
        .parse::<i64>()
        .ok()?;
    let start = subscription.period_start()?;
    (start < from).then(|| paid.to_owned())
}

/// The price id of the subscription's (one) item.
fn item_price(subscription: &Subscription) -> Option<String> {
    let price = subscription.items.first()?.price.as_ref()?;
    non_empty(price.id()).map(str::to_owned)
}

impl PaymentProvider for StripeProvider {
    fn kind(&self) -> PaymentProviderKind {
        PaymentProviderKind::Stripe
    }

    fn update_subscription<'a>(
        &'a self,
        subscription_id: &'a str,
        update: &'a SubscriptionUpdate,
        idempotency_key: &'a str,
    ) -> BoxFuture<'a, Result<Subscription, UpdateFailure>> {
        Box::pin(async move {
            // Failures before the subscription is written leave it as it was.
            let refused = |error: PaymentError| UpdateFailure {
                error,
                outcome_unknown: false,
            };
            check_subscription_id(subscription_id).map_err(refused)?;
            let path = format!("/v1/subscriptions/{subscription_id}");
            let form = match update {
                SubscriptionUpdate::CancelAtPeriodEnd(cancel) => {
                    vec![pair("cancel_at_period_end", cancel)]
                }
                SubscriptionUpdate::Price {
                    plan,
                    change,
                    metadata,
                    resume,
                    period_end,
                    restore,
                } => {
                    // The item to re-price, whether a trial is running, and
                    // whether the state the change was decided on is current.
                    let current: Subscription = self.get(&path).await.map_err(refused)?;
                    let item = single_item(&current).map_err(refused)?;
                    ensure_period_end(&current, *period_end).map_err(refused)?;
                    // While a downgrade is pending, the price paid for the
                    // period: taking the downgrade back returns to it, so
                    // the customer keeps the price they had.
                    let paid = paid_price(&current);
                    let has_paid = non_empty(current.metadata.paid_price.as_deref()).is_some();
                    if let Some(restore) = restore {
                        // The pending downgrade is taken back in full (price
                        // and metadata): if the upgrade then fails, Stripe's
                        // state is still one Tenantry can mirror.
                        let price = match &paid {
                            Some(id) => id.clone(),
                            None => self
                                .create_price(restore, &format!("{idempotency_key}-restore-price"))
                                .await
                                .map_err(refused)?,
                        };
                        let mut cleared = vec![
                            ("plan", restore.code.clone()),
                            ("pending_plan", String::new()),
                            ("pending_from", String::new()),
                        ];
                        if has_paid {
                            cleared.push(("paid_price", String::new()));
                        }
                        let form =
                            subscription_price_form(&item, &price, false, false, &cleared, false);
                        self.write(&path, &form, &format!("{idempotency_key}-restore"))
                            .await?;
                    }
                    let price = match (change, &paid) {
                        (PriceChange::Revert, Some(id)) => id.clone(),
                        _ => self
                            .create_price(plan, &format!("{idempotency_key}-price"))
                            .await
                            .map_err(|error| UpdateFailure {
                                error: after_restore(error, restore.is_some()),
                                outcome_unknown: false,
                            })?,
                    };
                    let mut metadata = metadata.clone();
                    match change {
                        PriceChange::Downgrade => {
                            if let Some(paid) = paid.or_else(|| item_price(&current)) {
                                metadata.push(("paid_price", paid));
                            }
                        }
                        PriceChange::Upgrade | PriceChange::Revert => {
                            if has_paid && restore.is_none() {
                                metadata.push(("paid_price", String::new()));
                            }
                        }
                    }
                    let form = subscription_price_form(
                        &item,
                        &price,
                        *change == PriceChange::Upgrade,
                        current.status.as_deref() == Some("trialing"),
                        &metadata,
                        *resume,
                    );
                    return self
                        .write(&path, &form, idempotency_key)
                        .await
                        .map_err(|f| UpdateFailure {
                            error: after_restore(f.error, restore.is_some()),
                            ..f
                        });
                }
            };
            self.write(&path, &form, idempotency_key).await
        })
    }

    fn get_subscription<'a>(
        &'a self,
        subscription_id: &'a str,
    ) -> BoxFuture<'a, Result<Subscription, PaymentError>> {
        Box::pin(async move {
            check_subscription_id(subscription_id)?;
            self.get(&format!("/v1/subscriptions/{subscription_id}"))
                .await
        })
    }

    fn create_customer<'a>(
        &'a self,
        req: &'a NewCustomer,
    ) -> BoxFuture<'a, Result<String, PaymentError>> {
        Box::pin(async move {
            let mut form = vec![
                pair("name", &req.name),
                pair("metadata[org_id]", req.org_id),
            ];
            if let Some(email) = &req.email {
                form.push(pair("email", email));
            }
            let customer: stripe_objects::Customer = self
                .post("/v1/customers", &form, &req.idempotency_key)
                .await?;
            required(customer.id, "id")
        })
    }

    fn create_checkout<'a>(
        &'a self,
        req: &'a CheckoutRequest,
    ) -> BoxFuture<'a, Result<CheckoutSession, PaymentError>> {
        Box::pin(async move {
            let session: stripe_objects::CheckoutSession = self
                .post(
                    "/v1/checkout/sessions",
                    &checkout_form(req),
                    &req.idempotency_key,
                )
                .await?;
            Ok(CheckoutSession {
                id: required(session.id, "id")?,
                url: required(session.url, "url")?,
            })
        })
    }

    fn create_portal<'a>(
        &'a self,
        req: &'a PortalRequest,
    ) -> BoxFuture<'a, Result<PortalSession, PaymentError>> {
        Box::pin(async move {
            let form = vec![
                pair("customer", &req.customer_id),
                pair("return_url", &req.return_url),
            ];
            let session: stripe_objects::PortalSession = self
                .post("/v1/billing_portal/sessions", &form, &req.idempotency_key)
                .await?;
            Ok(PortalSession {
                url: required(session.url, "url")?,
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_price_paid_counts_only_while_its_downgrade_is_pending() {
        let read = |v: Value| serde_json::from_value::<Subscription>(v).unwrap();
        let sub = |start: i64, meta: Value| {
            read(json!({"current_period_start": start, "metadata": meta,
                   "items": {"data": [{"id": "si_1", "price": {"id": "price_now"}}]}}))
        };
        let pending = json!({"paid_price": "price_paid", "pending_from": "2000"});
        assert_eq!(
            paid_price(&sub(1000, pending.clone())).as_deref(),
            Some("price_paid")
        );
        // The renewal came: the downgrade's price is the price now.
        assert_eq!(paid_price(&sub(2000, pending)), None);
        assert_eq!(
            paid_price(&sub(1000, json!({"paid_price": "price_paid"}))),
            None
        );
        assert_eq!(
            paid_price(&sub(
                1000,
                json!({"paid_price": "", "pending_from": "2000"})
            )),
            None
        );
        assert_eq!(
            item_price(&sub(1000, json!({}))).as_deref(),
            Some("price_now")
        );
        let bare = read(json!({"items": {"data": [{"id": "si_1", "price": "price_str"}]}}));
        assert_eq!(item_price(&bare).as_deref(), Some("price_str"));
        assert_eq!(
            item_price(&read(json!({"items": {"data": [{"price": {}}]}}))),
            None
        );
    }
}
