//! Starting a payment: a Checkout session for a plan (subscription) or a
//! credit pack (one-off), and a Billing Portal session; the org's customer
//! at the provider, the credit pack catalog, and the web app's billing page
//! users come back to.
//!
//! What the provider is asked is decided in the caller's tenant transaction,
//! which is then committed: no database transaction stays open while the
//! provider is called. A customer created on the way is stored afterwards,
//! in a short transaction of its own.

use serde::Deserialize;
use sha2::{Digest, Sha256};
use sqlx::PgConnection;
use utoipa::ToSchema;
use uuid::Uuid;

use super::error::PaymentError;
use super::provider::{
    CheckoutItem, CheckoutRequest, CheckoutSession, CreditPack, NewCustomer, PortalRequest,
    PortalSession,
};
use crate::auth::rbac::Caller;
use crate::billing::BillingState;
use crate::billing::model::Plan;
use crate::config::PaymentProviderKind;
use crate::core::db::TenantTx;
use crate::core::error::{FieldError, Invalid};

/// What to pay for: a plan or a credit pack (exactly one).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CheckoutInput {
    /// Code of a paid plan to subscribe to.
    #[schema(example = "pro")]
    pub plan: Option<String>,
    /// Code of a credit pack to buy.
    #[schema(example = "credits_1000")]
    pub credit_pack: Option<String>,
}

/// The org's current subscription as checkout needs it.
#[derive(Debug, sqlx::FromRow)]
struct CurrentSubscription {
    price_minor: i64,
    currency: String,
    status: String,
    trial_used: bool,
    provider: String,
    provider_subscription_id: Option<String>,
}

/// Creates a Checkout session for `input` in the org of `tx` (which this
/// commits). `caller_key`: the client's `Idempotency-Key`, if it sent one:
/// the same key and body give the same session.
pub async fn start_checkout(
    state: &BillingState,
    mut tx: TenantTx,
    caller: &Caller,
    input: CheckoutInput,
    caller_key: Option<&str>,
) -> Result<CheckoutSession, PaymentError> {
    let org_id = tx.org_id();
    let user_id = tx.user_id();
    let wanted = match (input.plan, input.credit_pack) {
        (Some(plan), None) => Wanted::Plan(plan),
        (None, Some(pack)) => Wanted::Pack(pack),
        (None, None) => {
            return Err(Invalid(vec![FieldError::new(
                "plan",
                "required",
                "give a plan or a credit_pack",
            )])
            .into());
        }
        (Some(_), Some(_)) => {
            return Err(Invalid(vec![FieldError::new(
                "credit_pack",
                "exclusive",
                "give a plan or a credit_pack, not both",
            )])
            .into());
        }
    };
    if state.payments.kind() == PaymentProviderKind::Manual {
        return Err(PaymentError::ManualPayments);
    }
    let conn = tx.conn();
    let current = current_subscription(conn, org_id).await?;
    let item = match wanted {
        Wanted::Plan(code) => {
            let plan = active_plan(conn, &code).await?.ok_or_else(|| {
                Invalid::field("plan", "unknown_plan", format!("no active plan {code:?}"))
            })?;
            if plan.price_minor == 0 {
                return Err(Invalid::field(
                    "plan",
                    "free_plan",
                    format!("the plan {code} is free: no payment is needed"),
                )
                .into());
            }
            if let Some(c) = &current
                && c.provider == "stripe"
                && c.provider_subscription_id.is_some()
                && matches!(c.status.as_str(), "active" | "trialing" | "past_due")
            {
                return Err(PaymentError::SubscriptionExists);
            }
            let trial_days = match &current {
                Some(c) if c.trial_used => None,
                _ => Some(plan.trial_days).filter(|d| *d > 0),
            };
            CheckoutItem::Plan { plan, trial_days }
        }
        Wanted::Pack(code) => {
            let pack = active_pack(conn, &code).await?.ok_or_else(|| {
                Invalid::field(
                    "credit_pack",
                    "unknown_credit_pack",
                    format!("no active credit pack {code:?}"),
                )
            })?;
            CheckoutItem::CreditPack(pack)
        }
    };
    let currency = match &item {
        CheckoutItem::Plan { plan, .. } => &plan.currency,
        CheckoutItem::CreditPack(pack) => &pack.currency,
    };
    if let Some(c) = &current
        && c.price_minor > 0
        && c.status != "canceled"
        && &c.currency != currency
    {
        return Err(PaymentError::CurrencyMismatch {
            paid_in: c.currency.clone(),
            priced_in: currency.clone(),
        });
    }
    let customer = stored_customer(conn, org_id).await?;
    let org_name = org_name(conn, org_id).await?;
    tx.commit().await?;

    let customer_id = match customer {
        Some(c) => c,
        None => {
            let email = match caller {
                Caller::User(u) => u.email.clone(),
                Caller::ApiKey(_) => None,
            };
            create_customer(state, org_id, user_id, org_name, email).await?
        }
    };
    let app_url = &state.config.jobs.app_url;
    let billing = billing_url(app_url, org_id);
    let mut req = CheckoutRequest {
        org_id,
        customer_id,
        item,
        // Stripe replaces {CHECKOUT_SESSION_ID} itself.
        success_url: format!("{billing}?checkout=success&session_id={{CHECKOUT_SESSION_ID}}"),
        cancel_url: format!("{billing}?checkout=canceled"),
        idempotency_key: String::new(),
    };
    req.idempotency_key = match caller_key {
        Some(key) => {
            let form = super::stripe::checkout_form(&req);
            let digest = Sha256::digest(
                format!(
                    "{org_id}\n{key}\n{}",
                    serde_urlencoded::to_string(&form).unwrap_or_default()
                )
                .as_bytes(),
            );
            format!("tenantry-checkout-{}", hex::encode(&digest[..16]))
        }
        None => format!("tenantry-checkout-{}", Uuid::new_v4().simple()),
    };
    state.payments.create_checkout(&req).await
}

enum Wanted {
    Plan(String),
    Pack(String),
}

/// Creates a Billing Portal session for the org of `tx` (which this commits).
pub async fn start_portal(
    state: &BillingState,
    mut tx: TenantTx,
) -> Result<PortalSession, PaymentError> {
    let org_id = tx.org_id();
    if state.payments.kind() == PaymentProviderKind::Manual {
        return Err(PaymentError::ManualPayments);
    }
    let customer = stored_customer(tx.conn(), org_id).await?;
    tx.commit().await?;
    let Some(customer_id) = customer else {
        return Err(PaymentError::NoCustomer);
    };
    let req = PortalRequest {
        customer_id,
        return_url: billing_url(&state.config.jobs.app_url, org_id),
        idempotency_key: format!("tenantry-portal-{}", Uuid::new_v4().simple()),
    };
    state.payments.create_portal(&req).await
}

/// Creates the org's customer at the provider and stores it. Two concurrent
/// first checkouts send the same idempotency key (same org, same details)
/// and so get the same customer; whichever stores it first wins.
async fn create_customer(
    state: &BillingState,
    org_id: Uuid,
    user_id: Uuid,
    name: String,
    email: Option<String>,
) -> Result<String, PaymentError> {
    let digest = Sha256::digest(format!("{org_id}\n{name}\n{email:?}").as_bytes());
    let req = NewCustomer {
        org_id,
        name,
        email,
        idempotency_key: format!("tenantry-customer-{org_id}-{}", hex::encode(&digest[..8])),
    };
    let customer_id = state.payments.create_customer(&req).await?;
    let (mut tx, _) = TenantTx::enter(&state.pool, org_id, user_id).await?;
    let stored = store_customer(tx.conn(), org_id, state.payments.kind(), &customer_id).await?;
    tx.commit().await?;
    Ok(stored)
}

/// Stores the org's customer unless it has one; returns the one it has.
pub(crate) async fn store_customer(
    conn: &mut PgConnection,
    org_id: Uuid,
    provider: PaymentProviderKind,
    customer_id: &str,
) -> Result<String, sqlx::Error> {
    let inserted: Option<String> = sqlx::query_scalar(
        "insert into billing_customers (org_id, provider, customer_id) values ($1, $2, $3)
         on conflict (org_id) do nothing returning customer_id",
    )
    .bind(org_id)
    .bind(provider.as_str())
    .bind(customer_id)
    .fetch_optional(&mut *conn)
    .await?;
    sqlx::query(
        "insert into app.billing_customer_orgs (provider, customer_id, org_id) values ($1, $2, $3)
         on conflict do nothing",
    )
    .bind(provider.as_str())
    .bind(customer_id)
    .bind(org_id)
    .execute(&mut *conn)
    .await?;
    match inserted {
        Some(c) => Ok(c),
        None => Ok(stored_customer(conn, org_id)
            .await?
            .unwrap_or_else(|| customer_id.to_owned())),
    }
}

async fn stored_customer(
    conn: &mut PgConnection,
    org_id: Uuid,
) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar("select customer_id from billing_customers where org_id = $1")
        .bind(org_id)
        .fetch_optional(conn)
        .await
}

async fn org_name(conn: &mut PgConnection, org_id: Uuid) -> Result<String, PaymentError> {
    sqlx::query_scalar("select name from organizations where id = $1")
        .bind(org_id)
        .fetch_optional(conn)
        .await?
        .ok_or(PaymentError::OrgNotFound)
}

async fn current_subscription(
    conn: &mut PgConnection,
    org_id: Uuid,
) -> Result<Option<CurrentSubscription>, sqlx::Error> {
    sqlx::query_as(
        "select p.price_minor, p.currency, s.status, s.trial_used, s.provider,
                s.provider_subscription_id
         from subscriptions s join plans p on p.code = s.plan_code
         where s.org_id = $1",
    )
    .bind(org_id)
    .fetch_optional(conn)
    .await
}

/// The active plan `code`, read through the catalog's own query (so it
/// follows the plan model as it grows).
async fn active_plan(conn: &mut PgConnection, code: &str) -> Result<Option<Plan>, sqlx::Error> {
    Ok(crate::billing::repo::active_plans(conn)
        .await?
        .into_iter()
        .find(|p| p.code == code))
}

pub(crate) async fn active_pack(
    conn: &mut PgConnection,
    code: &str,
) -> Result<Option<CreditPack>, sqlx::Error> {
    sqlx::query_as(
        "select code, name, credits, price_minor, currency from credit_packs
         where code = $1 and active",
    )
    .bind(code)
    .fetch_optional(conn)
    .await
}

/// The active credit packs, in catalog order.
pub async fn active_packs(conn: &mut PgConnection) -> Result<Vec<CreditPack>, sqlx::Error> {
    sqlx::query_as(
        "select code, name, credits, price_minor, currency from credit_packs
         where active order by sort_order, price_minor, code",
    )
    .fetch_all(conn)
    .await
}

/// `{APP_URL}/orgs/{org_id}/billing`: where users manage billing in the web app.
pub fn billing_url(app_url: &url::Url, org_id: Uuid) -> String {
    let mut url = app_url.clone();
    let path = format!("{}/orgs/{org_id}/billing", url.path().trim_end_matches('/'));
    url.set_path(&path);
    url.set_query(None);
    url.set_fragment(None);
    url.to_string()
}
