//! HTTP layer of payments: checkout and portal (`billing:manage`), invoices
//! (`billing:read`), the credit pack catalog (public), manual invoices marked
//! paid (platform admins) and Stripe's webhook (authenticated by its
//! signature only); and the problem each payment and webhook error is.

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, StatusCode};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::checkout::{self, CheckoutInput};
use super::error::{PaymentError, WebhookError};
use super::invoices::{self, Invoice};
use super::provider::{CheckoutSession, CreditPack, PortalSession};
use super::signature::SignatureError;
use super::webhook::{self, WebhookAck};
use crate::auth::AuthState;
use crate::auth::principal::PlatformAdmin;
use crate::auth::{OrgContext, perm};
use crate::billing::BillingState;
use crate::core::db::{SystemScope, TenantTx};
use crate::core::error::{ApiError, Problem};
use crate::core::extract::{IdPath, ValidJson, ValidQuery};
use crate::core::pagination::{Page, PageQuery};
use axum::extract::FromRef;

pub fn router<S>() -> OpenApiRouter<S>
where
    S: Clone + Send + Sync + 'static,
    AuthState: FromRef<S>,
    BillingState: FromRef<S>,
{
    OpenApiRouter::new()
        .routes(routes!(list_credit_packs))
        .routes(routes!(create_checkout))
        .routes(routes!(create_portal))
        .routes(routes!(list_invoices))
        .routes(routes!(mark_invoice_paid))
        .routes(routes!(stripe_webhook))
}

/// The credit packs on sale. Public.
#[utoipa::path(get, path = "/api/v1/credit-packs", tag = "billing",
    security(()),
    responses((status = 200, body = Vec<CreditPack>)))]
async fn list_credit_packs(
    State(state): State<BillingState>,
) -> Result<Json<Vec<CreditPack>>, ApiError> {
    let mut conn = state.pool.acquire().await?;
    Ok(Json(checkout::active_packs(&mut conn).await?))
}

/// Starts a payment: a Stripe Checkout session for a paid plan
/// (subscription) or a credit pack (one-off). Send the user to `url`. An
/// `Idempotency-Key` header makes a retried request return the same session.
#[utoipa::path(post, path = "/api/v1/orgs/{org_id}/billing/checkout", tag = "billing",
    params(("org_id" = Uuid, Path),
        ("Idempotency-Key" = Option<String>, Header, description = "Same key and body: same session")),
    request_body = CheckoutInput,
    responses((status = 200, body = CheckoutSession),
        (status = 409, description = "`checkout_unavailable` (payments are manual), `subscription_exists`", body = Problem),
        (status = 422, description = "`validation_failed` (`unknown_plan`, `unknown_credit_pack`, `free_plan`, plan and credit_pack both or neither), `currency_mismatch`", body = Problem),
        (status = 402, description = "`payment_declined`: a card error, with Stripe's message", body = Problem),
        (status = 502, description = "`payment_provider_error`: Stripe refused or failed, with its message", body = Problem)))]
async fn create_checkout(
    State(state): State<BillingState>,
    ctx: OrgContext<perm::BillingManage>,
    headers: HeaderMap,
    ValidJson(input): ValidJson<CheckoutInput>,
) -> Result<Json<CheckoutSession>, ApiError> {
    let key = match headers.get("idempotency-key") {
        None => None,
        Some(v) => Some(
            v.to_str()
                .ok()
                .map(str::trim)
                .filter(|k| !k.is_empty() && k.len() <= 255)
                .ok_or_else(|| {
                    ApiError::bad_request(
                        "invalid_idempotency_key",
                        "Idempotency-Key must be 1 to 255 visible ASCII characters",
                    )
                })?,
        ),
    };
    let OrgContext { tx, caller, .. } = ctx;
    let session = checkout::start_checkout(&state, tx, &caller, input, key).await?;
    Ok(Json(session))
}

/// A Stripe Billing Portal session where the org's billing managers change
/// the plan, payment methods and see Stripe's invoices. Send the user to `url`.
#[utoipa::path(post, path = "/api/v1/orgs/{org_id}/billing/portal", tag = "billing",
    params(("org_id" = Uuid, Path)),
    responses((status = 200, body = PortalSession),
        (status = 409, description = "`checkout_unavailable` (payments are manual), `no_customer` (the org never paid)", body = Problem),
        (status = 402, description = "`payment_declined`", body = Problem),
        (status = 502, description = "`payment_provider_error`", body = Problem)))]
async fn create_portal(
    State(state): State<BillingState>,
    ctx: OrgContext<perm::BillingManage>,
) -> Result<Json<PortalSession>, ApiError> {
    Ok(Json(checkout::start_portal(&state, ctx.tx).await?))
}

/// The org's invoices and payments, newest first.
#[utoipa::path(get, path = "/api/v1/orgs/{org_id}/invoices", tag = "billing",
    params(("org_id" = Uuid, Path), PageQuery),
    responses((status = 200, body = Page<Invoice>)))]
async fn list_invoices(
    mut ctx: OrgContext<perm::BillingRead>,
    ValidQuery(q): ValidQuery<PageQuery>,
) -> Result<Json<Page<Invoice>>, ApiError> {
    let org_id = ctx.org_id;
    let page = invoices::list(ctx.tx.conn(), org_id, &q).await?;
    ctx.tx.commit().await?;
    Ok(Json(page))
}

/// Records that a manual invoice was paid (platform admins). A past_due
/// subscription becomes active again once no manual invoice is overdue.
/// Marking a paid invoice again changes nothing.
#[utoipa::path(post, path = "/api/v1/admin/orgs/{org_id}/invoices/{invoice_id}/paid", tag = "billing",
    params(("org_id" = Uuid, Path), ("invoice_id" = Uuid, Path)),
    responses((status = 200, body = Invoice),
        (status = 403, description = "Not a platform admin", body = Problem),
        (status = 404, description = "No such org or invoice", body = Problem),
        (status = 409, description = "`invoice_void`, `provider_managed` (a Stripe invoice)", body = Problem)))]
async fn mark_invoice_paid(
    _: PlatformAdmin,
    State(state): State<BillingState>,
    ids: IdPath<2>,
) -> Result<Json<Invoice>, ApiError> {
    let [org_id, invoice_id] = ids.0;
    let mut tx = TenantTx::enter_as_system(&state.pool, org_id, SystemScope::Operator).await?;
    let exists: bool =
        sqlx::query_scalar("select exists (select 1 from organizations where id = $1)")
            .bind(org_id)
            .fetch_one(tx.conn())
            .await?;
    if !exists {
        return Err(ApiError::NotFound("organization"));
    }
    let invoice = invoices::mark_paid(tx.conn(), org_id, invoice_id).await?;
    tx.commit().await?;
    Ok(Json(invoice))
}

/// Stripe's webhook endpoint. Authenticated only by `Stripe-Signature`
/// (HMAC-SHA256 of `"{t}.{raw body}"` under a configured secret, within 300
/// seconds). Each event is applied once, whatever the replays.
#[utoipa::path(post, path = "/api/v1/webhooks/stripe", tag = "billing",
    security(()),
    params(("Stripe-Signature" = String, Header, description = "t=<unix>,v1=<hex>[,v1=...]")),
    request_body(content = Object, content_type = "application/json", description = "A Stripe event"),
    responses((status = 200, body = WebhookAck),
        (status = 400, description = "`invalid_signature`, `signature_expired`, `invalid_event`", body = Problem)))]
async fn stripe_webhook(
    State(state): State<BillingState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<WebhookAck>, ApiError> {
    let body = body.map_err(crate::core::extract::body_rejection)?;
    let signature = headers
        .get("stripe-signature")
        .and_then(|v| v.to_str().ok());
    let config = &state.config;
    let ack = webhook::receive(
        &state.pool,
        &config.billing,
        &config.jobs.app_url,
        signature,
        &body,
    )
    .await?;
    Ok(Json(ack))
}

impl From<PaymentError> for ApiError {
    fn from(e: PaymentError) -> Self {
        if let Some((status, code)) = problem(&e) {
            return ApiError::Status {
                status,
                code,
                detail: e.to_string(),
            };
        }
        match e {
            PaymentError::Invalid(e) => e.into(),
            PaymentError::Page(e) => e.into(),
            PaymentError::Db(e) => e.into(),
            PaymentError::OrgNotFound => ApiError::NotFound("organization"),
            PaymentError::InvoiceNotFound => ApiError::NotFound("invoice"),
            other => ApiError::Internal(other.into()),
        }
    }
}

/// The status and code of a payment error the client is told about as it
/// is (its message is the detail); `None` for the others.
fn problem(e: &PaymentError) -> Option<(StatusCode, &'static str)> {
    Some(match e {
        PaymentError::ManualPayments => (StatusCode::CONFLICT, "checkout_unavailable"),
        PaymentError::Declined(_) | PaymentError::AuthenticationRequired(_) => {
            (StatusCode::PAYMENT_REQUIRED, "payment_declined")
        }
        PaymentError::ProviderUnavailable(_)
        | PaymentError::ProviderRefused(_)
        | PaymentError::CredentialsRejected
        | PaymentError::IncompleteAnswer(_)
        | PaymentError::NoItems
        | PaymentError::AnotherSubscription => (StatusCode::BAD_GATEWAY, "payment_provider_error"),
        PaymentError::SubscriptionGone | PaymentError::SubscriptionMovedOn => {
            (StatusCode::CONFLICT, "subscription_changed")
        }
        PaymentError::UnsupportedSubscription { .. } => {
            (StatusCode::CONFLICT, "unsupported_subscription")
        }
        // The detail says what was taken back; the problem is the failure's.
        PaymentError::AfterRestore(failure) => return problem(failure),
        PaymentError::SubscriptionExists => (StatusCode::CONFLICT, "subscription_exists"),
        PaymentError::NoCustomer => (StatusCode::CONFLICT, "no_customer"),
        PaymentError::CurrencyMismatch { .. } => {
            (StatusCode::UNPROCESSABLE_ENTITY, "currency_mismatch")
        }
        PaymentError::FreePlan(_) => (StatusCode::UNPROCESSABLE_ENTITY, "free_plan"),
        PaymentError::ProviderManaged => (StatusCode::CONFLICT, "provider_managed"),
        PaymentError::InvoiceVoid => (StatusCode::CONFLICT, "invoice_void"),
        PaymentError::MalformedSubscriptionId
        | PaymentError::Form(_)
        | PaymentError::OrgNotFound
        | PaymentError::InvoicePeriod { .. }
        | PaymentError::InvoiceVanished
        | PaymentError::InvoiceNotFound
        | PaymentError::Invalid(_)
        | PaymentError::Page(_)
        | PaymentError::Db(_) => return None,
    })
}

impl From<WebhookError> for ApiError {
    fn from(e: WebhookError) -> Self {
        let code = match e {
            WebhookError::Payment(e) => return e.into(),
            WebhookError::Db(e) => return e.into(),
            WebhookError::NotConfigured
            | WebhookError::Signature(SignatureError::Malformed | SignatureError::Mismatch) => {
                "invalid_signature"
            }
            WebhookError::Signature(SignatureError::Expired) => "signature_expired",
            WebhookError::InvalidEvent(_) => "invalid_event",
        };
        ApiError::bad_request(code, e.to_string())
    }
}
