//! What can go wrong in payments: the provider's answers (declined,
//! refused, unreachable, a subscription that moved on), starting a
//! checkout, invoices ([`PaymentError`]), and a webhook delivery that is
//! not Stripe's or not an event ([`WebhookError`]). The HTTP problems they
//! become are decided once, in `routes.rs`.

use chrono::{DateTime, Utc};

use super::signature::SignatureError;
use crate::core::error::Invalid;
use crate::core::pagination::PageError;

#[derive(Debug, thiserror::Error)]
pub enum PaymentError {
    /// The manual provider has no payment page, portal or subscription.
    #[error(
        "payments are manual: invoices are issued by the operator and marked paid by a \
         platform admin"
    )]
    ManualPayments,
    /// Stripe declined the card, with its message (written for the customer).
    #[error("the payment was declined: {0}")]
    Declined(String),
    /// The card needs the customer's authentication (3-D Secure), which a
    /// request made by the server cannot ask for; Stripe's message.
    #[error(
        "the card needs the customer's authentication, which this request cannot ask for: use \
         another card (billing portal) or check out instead ({0})"
    )]
    AuthenticationRequired(String),
    /// No definite answer came from Stripe: unreachable, an answer cut
    /// short or not JSON.
    #[error("the payment provider refused the request: {0}")]
    ProviderUnavailable(&'static str),
    /// Stripe refused the request, with its message (or its status).
    #[error("the payment provider refused the request: {0}")]
    ProviderRefused(String),
    /// Stripe did not accept this server's secret key (its words, which
    /// quote part of the key, are only logged).
    #[error(
        "the payment provider refused the request: this server's credentials were not accepted"
    )]
    CredentialsRejected,
    /// Stripe's answer lacks a field Tenantry needs.
    #[error("the payment provider refused the request: Stripe's answer has no {0}")]
    IncompleteAnswer(&'static str),
    /// Stripe's subscription came without its items.
    #[error("the payment provider refused the request: Stripe's subscription has no items")]
    NoItems,
    /// Stripe answered a change of one subscription with another.
    #[error("the payment provider answered with another subscription")]
    AnotherSubscription,
    /// Stripe no longer has the subscription (its deletion's webhook is on
    /// the way).
    #[error(
        "Stripe no longer has this subscription (its notification is on its way): try again \
         in a moment"
    )]
    SubscriptionGone,
    /// Stripe's subscription renewed or changed since it was last mirrored:
    /// the change was decided on stale state.
    #[error(
        "Stripe's subscription has moved on since this server last heard of it (a renewal or \
         a change whose notification is on its way): try again in a moment"
    )]
    SubscriptionMovedOn,
    /// Tenantry changes the plan of one-item subscriptions only.
    #[error(
        "the Stripe subscription has {items} items; Tenantry changes the plan of one-item \
         subscriptions only (change this one in Stripe's dashboard)"
    )]
    UnsupportedSubscription { items: usize },
    /// A failure at Stripe after the pending downgrade was taken back there.
    #[error(
        "{0} (the pending downgrade was taken back first; choose it again if it is still \
         wanted)"
    )]
    AfterRestore(Box<PaymentError>),
    /// A Stripe subscription id from our own records that cannot go into a
    /// URL path (a bug).
    #[error("a stored Stripe subscription id is malformed")]
    MalformedSubscriptionId,
    /// A request to Stripe that cannot be form-encoded (a bug).
    #[error("cannot encode a Stripe form: {0}")]
    Form(#[from] serde_urlencoded::ser::Error),

    /// A checkout for a plan while a paid Stripe subscription runs.
    #[error("the org already has a paid subscription: change its plan in the billing portal")]
    SubscriptionExists,
    /// A portal for an org that never had a customer at the provider.
    #[error("the org has never paid: start with a checkout")]
    NoCustomer,
    /// A checkout priced in another currency than the org pays in.
    #[error("the org pays in {paid_in}; this is priced in {priced_in}")]
    CurrencyMismatch { paid_in: String, priced_in: String },
    #[error("organization not found")]
    OrgNotFound,

    /// A free plan has nothing to invoice.
    #[error("the plan {0} is free: there is nothing to invoice")]
    FreePlan(String),
    /// An invoice period that ends before it starts (a bug).
    #[error("invoice period ends ({end}) before it starts ({start})")]
    InvoicePeriod {
        start: DateTime<Utc>,
        end: DateTime<Utc>,
    },
    /// The manual invoice of a period, issued concurrently, could not be
    /// read back (a bug).
    #[error("manual invoice vanished")]
    InvoiceVanished,
    #[error("invoice not found")]
    InvoiceNotFound,
    /// A Stripe invoice is marked paid by its webhook, not by an admin.
    #[error("this invoice is collected by the payment provider; it is marked paid by its webhook")]
    ProviderManaged,
    #[error("a void invoice cannot be paid")]
    InvoiceVoid,

    #[error(transparent)]
    Invalid(#[from] Invalid),
    #[error(transparent)]
    Page(#[from] PageError),
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

/// A delivery to Stripe's webhook endpoint that is not applied.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    /// This server takes no Stripe webhooks (manual payments, or no secret).
    #[error("Stripe webhooks are not configured here")]
    NotConfigured,
    #[error(transparent)]
    Signature(#[from] SignatureError),
    /// The body is not a Stripe event (what is missing).
    #[error("not a Stripe event: {0}")]
    InvalidEvent(&'static str),
    /// Applying the event failed.
    #[error(transparent)]
    Payment(#[from] PaymentError),
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}
