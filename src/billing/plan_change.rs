//! The saga of a change of the org's subscription (a plan change, a
//! cancellation, a resumption): decided under the org lock in the caller's
//! tenant transaction, which is committed; a change of a Stripe-managed
//! subscription is then made at Stripe (no transaction, nor the org lock,
//! held while it answers; the org's lease on changes keeps others out) and
//! mirrored from its answer as its webhooks would be, or, after a failure,
//! from the subscription read back from Stripe.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

use super::model::{ChangePlan, SubscriptionView};
use super::payments::provider::{PaymentProvider, UpdateFailure};
use super::payments::stripe_objects::Subscription as StripeSubscription;
use super::subscriptions::changes;
use super::subscriptions::error::SubscriptionError;
use super::subscriptions::provider_changes::{
    Change, ProviderChange, record_provider_change, release_provider_change,
};
use crate::auth::rbac::Actor;
use crate::config::PaymentProviderKind;
use crate::core::db::TenantTx;

/// Changes the org's plan (see [`changes::change_plan`]); `tx` holds the
/// org lock `locked` stands for, and is committed.
pub async fn change_plan(
    pool: &PgPool,
    payments: &Arc<dyn PaymentProvider>,
    mut tx: TenantTx,
    locked: &Actor,
    provider: PaymentProviderKind,
    input: ChangePlan,
) -> Result<SubscriptionView, SubscriptionError> {
    let change = changes::change_plan(&mut tx, locked, provider, input).await?;
    finish(pool, payments, tx, change).await
}

/// Cancels (`cancel`) or resumes the org's subscription (see
/// [`changes::cancel_or_resume`]); `tx` holds the org lock `locked` stands
/// for, and is committed.
pub async fn cancel_or_resume(
    pool: &PgPool,
    payments: &Arc<dyn PaymentProvider>,
    mut tx: TenantTx,
    locked: &Actor,
    cancel: bool,
) -> Result<SubscriptionView, SubscriptionError> {
    let change = changes::cancel_or_resume(&mut tx, locked, cancel).await?;
    finish(pool, payments, tx, change).await
}

/// Commits a change made here; a change of a Stripe-managed subscription is
/// made at Stripe after the commit, then mirrored from its answer. The
/// request to Stripe and the mirror run in their own task: a client that
/// hangs up does not leave a change made at Stripe unrecorded.
async fn finish(
    pool: &PgPool,
    payments: &Arc<dyn PaymentProvider>,
    tx: TenantTx,
    change: Change,
) -> Result<SubscriptionView, SubscriptionError> {
    let change = match change {
        Change::Done(view) => {
            tx.commit().await?;
            return Ok(*view);
        }
        Change::AtProvider(change) => change,
    };
    let (org_id, user_id) = (tx.org_id(), tx.user_id());
    tx.commit().await?;
    let (pool, payments) = (pool.clone(), payments.clone());
    let task = tokio::spawn(async move {
        let key = format!(
            "tenantry-{}-{}-{}",
            change.kind(),
            change.subscription_id,
            Uuid::now_v7()
        );
        let sent_at = Utc::now();
        let answer = payments
            .update_subscription(&change.subscription_id, &change.update, &key)
            .await;
        match answer {
            Ok(answer) => {
                let recorded = record(&pool, org_id, user_id, &change, &answer, sent_at, true)
                    .await
                    .inspect_err(|e| {
                        tracing::error!(
                            %org_id, subscription = %change.subscription_id, error = %e,
                            "Stripe made a subscription change that could not be recorded; \
                             its webhook will bring it"
                        );
                    });
                Ok(recorded?)
            }
            Err(failure) => {
                reconcile_after_failure(
                    &pool, &*payments, org_id, user_id, &change, &failure, sent_at,
                )
                .await;
                Err(SubscriptionError::Payment(failure.error))
            }
        }
    });
    task.await?
}

/// Mirrors the provider's answer (or its state after a failure) in a new
/// tenant transaction.
async fn record(
    pool: &PgPool,
    org_id: Uuid,
    user_id: Uuid,
    change: &ProviderChange,
    stripe_subscription: &StripeSubscription,
    sent_at: DateTime<Utc>,
    audit: bool,
) -> Result<SubscriptionView, SubscriptionError> {
    let (mut tx, _) = TenantTx::enter(pool, org_id, user_id).await?;
    let view = record_provider_change(&mut tx, change, stripe_subscription, sent_at, audit).await?;
    tx.commit().await?;
    Ok(view)
}

/// After a failed change, Stripe's state may still have moved (a timeout or
/// 5xx after it applied the change; a pending downgrade taken back before a
/// declined upgrade; a renewal it had not told yet): it is read back and
/// mirrored, which also releases the lease. When even that fails, a change
/// whose outcome is unknown (a write without a definite answer) keeps the
/// lease until it runs out, so that nothing is decided on a state that may
/// be stale; a refusal releases it.
async fn reconcile_after_failure(
    pool: &PgPool,
    payments: &dyn PaymentProvider,
    org_id: Uuid,
    user_id: Uuid,
    change: &ProviderChange,
    failure: &UpdateFailure,
    sent_at: DateTime<Utc>,
) {
    let current = payments.get_subscription(&change.subscription_id).await;
    let reconciled = match current {
        Ok(current) => record(pool, org_id, user_id, change, &current, sent_at, false)
            .await
            .map(|_| ()),
        Err(e) => Err(e.into()),
    };
    let Err(e) = reconciled else {
        return;
    };
    let unknown = failure.outcome_unknown;
    tracing::warn!(
        %org_id, subscription = %change.subscription_id, error = %e, failure = %failure.error,
        lease_kept = unknown,
        "cannot read back a Stripe subscription after a failed change"
    );
    if !unknown && let Err(e) = release_provider_change(pool, change).await {
        tracing::warn!(%org_id, error = %e, "cannot release a subscription change lease");
    }
}
