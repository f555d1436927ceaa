//! Plan changes, cancellation and resumption of the org's subscription,
//! decided and made here under the org's row lock: an upgrade now (a new
//! period, its credits, a manual invoice), a downgrade or a cancellation
//! at the end of the period. A Stripe-managed subscription's change is
//! decided in `provider_changes` and made at Stripe.

use chrono::TimeDelta;

use super::current::{audit, current, view};
use super::error::SubscriptionError;
use super::periods::{grant_period, invoice_period, now};
use super::plans::{ensure_same_currency, is_upgrade, keeps_plan, plan};
use super::provider_changes::{
    Change, managed_by_stripe, provider_cancel_or_resume, provider_plan_change,
};
use super::seats::ensure_members_fit;
use crate::auth::rbac::Actor;
use crate::billing::model::{ChangePlan, FREE_PLAN, Subscription, SubscriptionView};
use crate::billing::repo;
use crate::config::PaymentProviderKind;
use crate::core::db::TenantTx;

/// Changes the org's plan: an upgrade now, a downgrade at the end of the
/// period. A Stripe-managed subscription's change is made at Stripe.
pub async fn change_plan(
    tx: &mut TenantTx,
    _locked: &Actor,
    provider: PaymentProviderKind,
    input: ChangePlan,
) -> Result<Change, SubscriptionError> {
    let code = input.plan.trim();
    if code.is_empty() || code.len() > 64 {
        return Err(SubscriptionError::UnknownPlan(code.to_owned()));
    }
    let org_id = tx.org_id();
    // The row lock first, then the plans: a plan's currency cannot change
    // between this read and the commit (see plans_admin::put).
    let before = current(tx, true).await?;
    let target = match repo::plan(tx.conn(), code).await? {
        Some((p, true)) => p,
        // Orgs keep a deactivated plan; choosing it again changes nothing.
        Some((p, false)) if p.code == before.plan_code && keeps_plan(&before.status) => p,
        _ => return Err(SubscriptionError::UnknownPlan(code.to_owned())),
    };
    let current_code = if keeps_plan(&before.status) {
        before.plan_code.clone()
    } else {
        FREE_PLAN.to_owned()
    };
    let current_plan = plan(tx.conn(), &current_code).await?;
    if let Some(subscription_id) = managed_by_stripe(&before) {
        return provider_plan_change(tx, before, subscription_id, current_plan, target).await;
    }

    if target.code == current_code {
        if before.pending_plan_code.is_none() {
            return Ok(Change::Done(Box::new(view(tx.conn(), before).await?)));
        }
        let mut next = before.clone();
        next.pending_plan_code = None;
        let after = repo::update_subscription(tx.conn(), &next).await?;
        audit(
            tx,
            "subscription.downgrade_canceled",
            Some(&before),
            Some(&after),
        )
        .await?;
        return Ok(Change::Done(Box::new(view(tx.conn(), after).await?)));
    }
    ensure_same_currency(&current_plan, &target)?;
    if provider == PaymentProviderKind::Stripe
        && target.price_minor > 0
        && before.provider_subscription_id.is_none()
    {
        return Err(SubscriptionError::CheckoutRequired);
    }

    let mut next = before.clone();
    next.pending_plan_code = None;
    next.cancel_at_period_end = false;
    if is_upgrade(&current_plan, &target) {
        let start = now();
        next.plan_code = target.code.clone();
        next.current_period_start = start;
        next.canceled_at = None;
        if target.trial_days > 0 && !before.trial_used {
            // The trial is the first period; the first paid period follows it.
            let trial_end = start + TimeDelta::days(i64::from(target.trial_days));
            next.status = "trialing".to_owned();
            next.trial_end = Some(trial_end);
            next.trial_used = true;
            next.current_period_end = trial_end;
        } else {
            next.status = "active".to_owned();
            next.trial_end = None;
            next.current_period_end = target.period_end(start);
        }
        let after = repo::update_subscription(tx.conn(), &next).await?;
        grant_period(
            tx.conn(),
            org_id,
            &target,
            after.current_period_start,
            after.current_period_end,
        )
        .await?;
        if after.status == "active" {
            invoice_period(
                tx.conn(),
                provider,
                org_id,
                &target,
                after.current_period_start,
                after.current_period_end,
            )
            .await?;
        }
        audit(tx, "subscription.upgraded", Some(&before), Some(&after)).await?;
        return Ok(Change::Done(Box::new(view(tx.conn(), after).await?)));
    }

    // A downgrade, at the end of the period: the members must fit by now.
    ensure_members_fit(tx, &target).await?;
    next.pending_plan_code = Some(target.code.clone());
    let after = repo::update_subscription(tx.conn(), &next).await?;
    audit(
        tx,
        "subscription.downgrade_scheduled",
        Some(&before),
        Some(&after),
    )
    .await?;
    Ok(Change::Done(Box::new(view(tx.conn(), after).await?)))
}

/// Cancels at the end of the period (back to the free plan then).
async fn cancel(
    tx: &mut TenantTx,
    before: Subscription,
) -> Result<SubscriptionView, SubscriptionError> {
    if before.plan_code == FREE_PLAN || before.status == "canceled" {
        return Err(SubscriptionError::CannotCancelFree);
    }
    if before.cancel_at_period_end {
        return Ok(view(tx.conn(), before).await?);
    }
    let mut next = before.clone();
    next.cancel_at_period_end = true;
    // The cancellation wins over a pending downgrade.
    next.pending_plan_code = None;
    let after = repo::update_subscription(tx.conn(), &next).await?;
    audit(
        tx,
        "subscription.cancel_scheduled",
        Some(&before),
        Some(&after),
    )
    .await?;
    Ok(view(tx.conn(), after).await?)
}

/// Takes back a cancellation that has not happened yet.
async fn resume(
    tx: &mut TenantTx,
    before: Subscription,
) -> Result<SubscriptionView, SubscriptionError> {
    if before.status == "canceled" {
        return Err(SubscriptionError::Ended);
    }
    if !before.cancel_at_period_end {
        return Err(SubscriptionError::NotCanceling);
    }
    let mut next = before.clone();
    next.cancel_at_period_end = false;
    let after = repo::update_subscription(tx.conn(), &next).await?;
    audit(tx, "subscription.resumed", Some(&before), Some(&after)).await?;
    Ok(view(tx.conn(), after).await?)
}

/// Cancel (`cancel`) or resume, under the caller's org lock: for a
/// Stripe-managed subscription, the change to ask of Stripe (with the same
/// refusals as for a manual one); for a manual one, made here.
pub async fn cancel_or_resume(
    tx: &mut TenantTx,
    _locked: &Actor,
    cancel: bool,
) -> Result<Change, SubscriptionError> {
    let before = current(tx, true).await?;
    let Some(subscription_id) = managed_by_stripe(&before) else {
        let view = if cancel {
            self::cancel(tx, before).await?
        } else {
            resume(tx, before).await?
        };
        return Ok(Change::Done(Box::new(view)));
    };
    provider_cancel_or_resume(tx, before, subscription_id, cancel).await
}
