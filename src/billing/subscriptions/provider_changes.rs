//! Changes of a Stripe-managed subscription, made at Stripe: the change
//! is decided here under the org lock (with the same refusals as a manual
//! one), the transaction ends, Stripe is asked (no transaction held while
//! it answers), and its answer is mirrored as its webhooks would be. What
//! any change came to ([`Change`]: made here, or to ask of Stripe) is
//! named here too.
//!
//! Tenantry's plan state lives in the Stripe subscription's metadata:
//! `plan` (the plan now), and for a downgrade `pending_plan` with
//! `pending_from` (the renewal, in unix seconds, from which the pending plan
//! is the plan), and `paid_price`, the price paid until then, which taking
//! the downgrade back returns to. The webhook mirror reads the same keys, so
//! the renewal's event applies the downgrade.

use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use sqlx::PgPool;

use super::current::{audit, current, view};
use super::error::SubscriptionError;
use super::plans::{ensure_same_currency, is_upgrade};
use super::seats::ensure_members_fit;
use crate::billing::model::{Plan, Subscription, SubscriptionView};
use crate::billing::payments::mirror::mirror_answer;
use crate::billing::payments::provider::{PriceChange, SubscriptionUpdate};
use crate::billing::payments::stripe_objects::Subscription as StripeSubscription;
use crate::billing::repo;
use crate::core::db::{SystemScope, TenantTx};

/// What a plan change, a cancellation or a resumption came to.
pub enum Change {
    /// Made here (or nothing was to change).
    Done(Box<SubscriptionView>),
    /// To ask of the payment provider, then record with
    /// [`record_provider_change`].
    AtProvider(Box<ProviderChange>),
}

/// A change to ask of Stripe, and what to record once it answers.
pub struct ProviderChange {
    pub before: Subscription,
    pub subscription_id: String,
    pub update: SubscriptionUpdate,
    /// The audit action once Stripe has made the change.
    pub action: &'static str,
    /// Until when this change holds the org's lease on changes.
    pub lease: DateTime<Utc>,
}

impl ProviderChange {
    /// A short name for the change, for its idempotency key.
    pub fn kind(&self) -> &'static str {
        self.action
            .strip_prefix("subscription.")
            .unwrap_or(self.action)
    }
}

/// The Stripe subscription id of a subscription Stripe manages.
pub(super) fn managed_by_stripe(sub: &Subscription) -> Option<String> {
    sub.provider_subscription_id
        .clone()
        .filter(|_| sub.provider == "stripe")
}

/// How long, in seconds, a change at the provider may take before another
/// may start (its requests, at most five tried twice for 10 s, end before).
const PROVIDER_CHANGE_LEASE_SECS: i64 = 180;

/// Refuses a change while another change of the org's subscription is
/// being made at the provider. The caller holds the org lock.
async fn ensure_no_change_in_flight(tx: &mut TenantTx) -> Result<(), SubscriptionError> {
    let org_id = tx.org_id();
    if repo::provider_change_in_flight(tx.conn(), org_id).await? {
        return Err(SubscriptionError::ChangeInProgress);
    }
    Ok(())
}

/// The change to ask of the provider, holding the org's lease on changes
/// until it is recorded (or fails, or the lease runs out).
async fn ask(
    tx: &mut TenantTx,
    before: Subscription,
    subscription_id: String,
    update: SubscriptionUpdate,
    action: &'static str,
) -> Result<Change, sqlx::Error> {
    let org_id = tx.org_id();
    let lease = repo::set_provider_change(tx.conn(), org_id, PROVIDER_CHANGE_LEASE_SECS).await?;
    Ok(Change::AtProvider(Box::new(ProviderChange {
        before,
        subscription_id,
        update,
        action,
        lease,
    })))
}

/// Decides a plan change of a Stripe-managed subscription (`current` is the
/// plan it is on, `target` an active plan or the current one).
pub(super) async fn provider_plan_change(
    tx: &mut TenantTx,
    before: Subscription,
    subscription_id: String,
    current: Plan,
    target: Plan,
) -> Result<Change, SubscriptionError> {
    match before.status.as_str() {
        "past_due" | "incomplete" => {
            return Err(SubscriptionError::PaymentPending {
                status: before.status.clone(),
            });
        }
        "canceled" => {
            return Err(SubscriptionError::EndedAtStripe {
                changing_plan: true,
            });
        }
        _ => {}
    }
    // Before any answer: the state is about to change at Stripe.
    ensure_no_change_in_flight(tx).await?;
    let state = |plan: &str, pending: &str, from: String| {
        vec![
            ("plan", plan.to_owned()),
            ("pending_plan", pending.to_owned()),
            ("pending_from", from),
        ]
    };
    if target.code == current.code {
        if before.pending_plan_code.is_none() {
            return Ok(Change::Done(Box::new(view(tx.conn(), before).await?)));
        }
        // Back to the current plan's price from the renewal on.
        let update = SubscriptionUpdate::Price {
            metadata: state(&current.code, "", String::new()),
            plan: Box::new(current),
            change: PriceChange::Revert,
            resume: false,
            period_end: before.current_period_end,
            restore: None,
        };
        let action = "subscription.downgrade_canceled";
        return Ok(ask(tx, before, subscription_id, update, action).await?);
    }
    ensure_same_currency(&current, &target)?;
    if target.price_minor > 0 && target.interval != current.interval {
        return Err(SubscriptionError::IntervalChange {
            plan: target.name.clone(),
            interval: target.interval.clone(),
            current_interval: current.interval.clone(),
        });
    }
    if target.price_minor <= 0 {
        // No Stripe subscription bills nothing: a free plan is the end of
        // the paid one.
        ensure_members_fit(tx, &target).await?;
        if before.cancel_at_period_end {
            return Ok(Change::Done(Box::new(view(tx.conn(), before).await?)));
        }
        let update = SubscriptionUpdate::CancelAtPeriodEnd(true);
        let action = "subscription.cancel_scheduled";
        return Ok(ask(tx, before, subscription_id, update, action).await?);
    }
    // A pending downgrade moved the price already, but the period was paid
    // at the current plan's.
    let restore = before
        .pending_plan_code
        .is_some()
        .then(|| Box::new(current.clone()));
    if is_upgrade(&current, &target) {
        let update = SubscriptionUpdate::Price {
            metadata: state(&target.code, "", String::new()),
            plan: Box::new(target),
            change: PriceChange::Upgrade,
            resume: true,
            period_end: before.current_period_end,
            restore,
        };
        let action = "subscription.upgraded";
        return Ok(ask(tx, before, subscription_id, update, action).await?);
    }
    ensure_members_fit(tx, &target).await?;
    let from = before.current_period_end.timestamp().to_string();
    let update = SubscriptionUpdate::Price {
        metadata: state(&current.code, &target.code, from),
        plan: Box::new(target),
        change: PriceChange::Downgrade,
        resume: true,
        period_end: before.current_period_end,
        restore: None,
    };
    let action = "subscription.downgrade_scheduled";
    Ok(ask(tx, before, subscription_id, update, action).await?)
}

/// Cancel (`cancel`) or resume a Stripe-managed subscription: the change to
/// ask of Stripe, with the same refusals as for a manual one.
pub(super) async fn provider_cancel_or_resume(
    tx: &mut TenantTx,
    before: Subscription,
    subscription_id: String,
    cancel: bool,
) -> Result<Change, SubscriptionError> {
    ensure_no_change_in_flight(tx).await?;
    if before.status == "canceled" {
        return Err(SubscriptionError::EndedAtStripe {
            changing_plan: false,
        });
    }
    if cancel && before.cancel_at_period_end {
        return Ok(Change::Done(Box::new(view(tx.conn(), before).await?)));
    }
    if !cancel && !before.cancel_at_period_end {
        return Err(SubscriptionError::NotCanceling);
    }
    let action = if cancel {
        "subscription.cancel_scheduled"
    } else {
        "subscription.resumed"
    };
    let update = SubscriptionUpdate::CancelAtPeriodEnd(cancel);
    Ok(ask(tx, before, subscription_id, update, action).await?)
}

/// Records what Stripe answered to a change sent at `sent_at` (or, after a
/// failure, the subscription as Stripe then had it): the subscription
/// object is mirrored as the webhooks would (unless a newer event was
/// applied meanwhile, or the subscription is no longer the org's), the
/// lease released, and the change audited (`audit`: false after a failure).
pub async fn record_provider_change(
    tx: &mut TenantTx,
    change: &ProviderChange,
    stripe_subscription: &StripeSubscription,
    sent_at: DateTime<Utc>,
    audit_change: bool,
) -> Result<SubscriptionView, SubscriptionError> {
    let org_id = tx.org_id();
    // Mirroring writes rows that reference the org after locking the
    // subscription: wait for a request holding the org lock first.
    repo::key_share_org(tx.conn(), org_id).await?;
    // Whole seconds, as Stripe's events count, from before the request:
    // Stripe's event for this change (created after it) still applies
    // after this, and an event applied while Stripe answered is newer.
    let as_of = sent_at
        .duration_trunc(TimeDelta::seconds(1))
        .unwrap_or(sent_at);
    mirror_answer(
        tx.conn(),
        org_id,
        &change.subscription_id,
        stripe_subscription,
        as_of,
    )
    .await?;
    repo::release_provider_change(tx.conn(), org_id, change.lease).await?;
    let after = current(tx, false).await?;
    if audit_change {
        audit(tx, change.action, Some(&change.before), Some(&after)).await?;
    }
    Ok(view(tx.conn(), after).await?)
}

/// Releases the org's lease after a change that failed: the next change
/// need not wait for it to run out.
pub async fn release_provider_change(
    pool: &PgPool,
    change: &ProviderChange,
) -> Result<(), sqlx::Error> {
    let org_id = change.before.org_id;
    let mut tx = TenantTx::enter_as_system(pool, org_id, SystemScope::Billing).await?;
    repo::release_provider_change(tx.conn(), org_id, change.lease).await?;
    tx.commit().await?;
    Ok(())
}
