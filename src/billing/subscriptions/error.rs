//! What can refuse or fail a change of the org's subscription (a plan
//! change, a cancellation, a resumption, the period rollover): the plan
//! asked for, the subscription's state, a change already under way at
//! Stripe, and what the seat checks and the payment provider say. The HTTP
//! problems they become are decided once, in billing's `routes.rs`.

use super::plans::CurrencyMismatch;
use crate::billing::payments::error::PaymentError;

#[derive(Debug, thiserror::Error)]
pub enum SubscriptionError {
    /// The org has no subscription row.
    #[error("subscription not found")]
    NotFound,
    /// No active plan has this code (the org's own deactivated plan aside).
    #[error("there is no active plan {0:?} (see GET /api/v1/plans)")]
    UnknownPlan(String),
    #[error(transparent)]
    CurrencyMismatch(#[from] CurrencyMismatch),
    /// With Stripe, a paid plan starts with a checkout, not a plan change.
    #[error(
        "a paid plan starts with a checkout: use POST /api/v1/orgs/{{org_id}}/billing/checkout"
    )]
    CheckoutRequired,
    #[error("the free plan cannot be canceled")]
    CannotCancelFree,
    /// A manual subscription has ended: a plan is chosen again.
    #[error("the subscription has already ended; choose a plan with PUT .../subscription")]
    Ended,
    /// A Stripe-managed subscription has ended: a new one starts with a
    /// checkout (`changing_plan`: refused a plan change, else a
    /// cancellation or resumption).
    #[error("{}", ended_at_stripe(.changing_plan))]
    EndedAtStripe { changing_plan: bool },
    /// A resumption of a subscription that is not set to cancel.
    #[error("the subscription is not set to cancel")]
    NotCanceling,
    /// A Stripe-managed subscription with a payment outstanding keeps its plan.
    #[error(
        "the subscription has a payment outstanding (status {status}): settle it in the \
         billing portal (POST .../billing/portal) before changing the plan"
    )]
    PaymentPending { status: String },
    /// Stripe would restart the billing period between monthly and yearly.
    #[error(
        "the {plan} plan is billed every {interval} and the current plan every \
         {current_interval}: Stripe would restart the billing period; cancel (POST \
         .../subscription/cancel) and check out the new plan when this period ends"
    )]
    IntervalChange {
        plan: String,
        interval: String,
        current_interval: String,
    },
    /// Another change of the subscription is being made at Stripe.
    #[error("a change of this subscription is being made at Stripe: try again in a moment")]
    ChangeInProgress,
    /// What the seat checks refused.
    #[error(transparent)]
    Seats(#[from] super::seats::SeatError),
    /// What the payment provider refused or failed (a change at Stripe, a
    /// manual invoice).
    #[error(transparent)]
    Payment(#[from] PaymentError),
    /// The task that makes a change at Stripe and records it did not finish.
    #[error("subscription change task: {0}")]
    ChangeTask(#[from] tokio::task::JoinError),
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

fn ended_at_stripe(changing_plan: &bool) -> &'static str {
    if *changing_plan {
        "the subscription has ended; choose a plan with POST .../billing/checkout"
    } else {
        "the subscription has already ended; choose a plan with POST .../billing/checkout"
    }
}
