//! What Tenantry asks of a payment provider and what it answers: the
//! [`PaymentProvider`] trait, the credit pack a Checkout sells, and the
//! requests and answers of customers, Checkout, the Billing Portal and
//! subscription changes.

use chrono::{DateTime, Utc};
use futures_util::future::BoxFuture;
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use super::error::PaymentError;
use super::stripe_objects::Subscription as StripeSubscription;
use crate::billing::model::Plan;
use crate::config::PaymentProviderKind;

/// A credit pack of the catalog: credits bought once, for a price.
#[derive(Debug, Clone, Serialize, ToSchema, sqlx::FromRow)]
pub struct CreditPack {
    #[schema(example = "credits_1000")]
    pub code: String,
    #[schema(example = "1,000 credits")]
    pub name: String,
    #[schema(example = 1000)]
    pub credits: i64,
    /// Price in the currency's minor unit (cents).
    #[schema(example = 1000)]
    pub price_minor: i64,
    #[schema(example = "USD")]
    pub currency: String,
}

/// A customer to create at the provider, for one org.
#[derive(Debug, Clone)]
pub struct NewCustomer {
    pub org_id: Uuid,
    pub name: String,
    pub email: Option<String>,
    /// Makes a retried request return the customer of the first.
    pub idempotency_key: String,
}

/// What a Checkout session sells.
#[derive(Debug, Clone)]
pub enum CheckoutItem {
    /// A subscription to a paid plan, renewed each interval.
    Plan {
        plan: Plan,
        /// Free trial days to start with (none when the org used its trial).
        trial_days: Option<i32>,
    },
    /// A one-off payment for a credit pack.
    CreditPack(CreditPack),
}

/// A Checkout session to create.
#[derive(Debug, Clone)]
pub struct CheckoutRequest {
    pub org_id: Uuid,
    pub customer_id: String,
    pub item: CheckoutItem,
    pub success_url: String,
    pub cancel_url: String,
    /// A retried request with the same key returns the session of the first.
    pub idempotency_key: String,
}

/// A hosted payment page to send the user to.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct CheckoutSession {
    #[schema(example = "cs_test_a1b2c3")]
    pub id: String,
    #[schema(example = "https://checkout.stripe.com/c/pay/cs_test_a1b2c3")]
    pub url: String,
}

/// A Billing Portal session to create.
#[derive(Debug, Clone)]
pub struct PortalRequest {
    pub customer_id: String,
    pub return_url: String,
    pub idempotency_key: String,
}

/// Where the user manages payment methods, invoices and the subscription.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PortalSession {
    #[schema(example = "https://billing.stripe.com/p/session/test_a1b2c3")]
    pub url: String,
}

/// Takes payments. A provider that fails says how ([`PaymentError`]):
/// declined, refused, unreachable; never an internal error of ours.
pub trait PaymentProvider: Send + Sync + 'static {
    fn kind(&self) -> PaymentProviderKind;

    /// Creates the org's customer; returns the provider's customer id.
    fn create_customer<'a>(
        &'a self,
        req: &'a NewCustomer,
    ) -> BoxFuture<'a, Result<String, PaymentError>>;

    fn create_checkout<'a>(
        &'a self,
        req: &'a CheckoutRequest,
    ) -> BoxFuture<'a, Result<CheckoutSession, PaymentError>>;

    fn create_portal<'a>(
        &'a self,
        req: &'a PortalRequest,
    ) -> BoxFuture<'a, Result<PortalSession, PaymentError>>;

    /// The provider's subscription as it now is (Stripe's object: only
    /// Stripe manages subscriptions).
    fn get_subscription<'a>(
        &'a self,
        subscription_id: &'a str,
    ) -> BoxFuture<'a, Result<StripeSubscription, PaymentError>>;

    /// Changes the provider's subscription; returns it as it now is.
    fn update_subscription<'a>(
        &'a self,
        subscription_id: &'a str,
        update: &'a SubscriptionUpdate,
        idempotency_key: &'a str,
    ) -> BoxFuture<'a, Result<StripeSubscription, UpdateFailure>>;
}

/// A change of a subscription that failed.
#[derive(Debug)]
pub struct UpdateFailure {
    pub error: PaymentError,
    /// No definite answer came back from the write: the provider may have
    /// made the change.
    pub outcome_unknown: bool,
}

/// Which way a subscription's price changes, and so when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PriceChange {
    /// Now: a new period starts (a trial ends), and the unused part of the
    /// old price is credited against the new one, charged at once.
    Upgrade,
    /// From the next renewal, without proration; the price paid now is
    /// remembered for a revert.
    Downgrade,
    /// Back to the price paid (the one a pending downgrade replaced), from
    /// the next renewal, without proration.
    Revert,
}

/// A change to make to the provider's subscription.
#[derive(Debug, Clone)]
pub enum SubscriptionUpdate {
    /// Cancel at the end of the period (`true`), or take that back.
    CancelAtPeriodEnd(bool),
    /// Bill `plan`'s price, as `change` says. `metadata` records Tenantry's
    /// plan state on the subscription (an empty value removes a key).
    Price {
        plan: Box<Plan>,
        change: PriceChange,
        metadata: Vec<(&'static str, String)>,
        /// Also take back a cancellation at period end.
        resume: bool,
        /// The end of the period as last mirrored: when the provider's
        /// differs (it renewed, and its webhook is on the way), the change
        /// was decided on stale state and is refused
        /// ([`PaymentError::SubscriptionMovedOn`]).
        period_end: DateTime<Utc>,
        /// Put the subscription back on this plan's price first, without
        /// proration (it was moved to a pending downgrade's price, but
        /// the period was paid at this one).
        restore: Option<Box<Plan>>,
    },
}
