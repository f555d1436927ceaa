//! Subscriptions: one current subscription per org, its plan changes, seat
//! limits, entitlements and the period rollover.
//!
//! * Every org starts on the free plan, with its first period's credits, in
//!   the transaction that creates it.
//! * An upgrade (a higher price, or the same price with more seats) applies
//!   at once and starts a new period with the new plan's credits; a plan with
//!   trial days starts with a trial (once per org), which is the first period.
//! * A downgrade is pending until the period ends; so is a cancellation
//!   (back to the free plan, status `canceled`).
//! * The `billing.rollover` job ends due periods: it applies a cancellation
//!   or a pending downgrade, ends a trial, advances the period and grants the
//!   new period's credits, once per period (the grant's reference names the
//!   period) however many workers run it. Stripe's subscriptions are
//!   advanced by its webhooks instead.
//!
//! Every change happens under the org's row lock, which seat checks take
//! too, so concurrent invitations, acceptances and plan changes decide on
//! fresh state one at a time.

use chrono::{DateTime, DurationRound, SecondsFormat, TimeDelta, Utc};
use serde::Serialize;
use serde_json::json;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::model::{ChangePlan, Entitlements, FREE_PLAN, Plan, Subscription, SubscriptionView};
use super::repo;
use crate::auth::rbac::Actor;
use crate::billing::payments::{PriceChange, SubscriptionUpdate};
use crate::config::PaymentProviderKind;
use crate::core::db::{SystemScope, TenantTx, system_tx};
use crate::core::error::ApiError;

/// Priority of plan-period grants: spent before purchases (priority 0).
pub const PERIOD_GRANT_PRIORITY: i32 = 10;

/// Orgs per discovery query of the rollover.
const ROLLOVER_BATCH: i32 = 200;

/// Now, to the microsecond Postgres stores, so that a period start written
/// and read back names the same grant reference.
pub fn now() -> DateTime<Utc> {
    let t = Utc::now();
    t.duration_trunc(TimeDelta::microseconds(1)).unwrap_or(t)
}

/// The reference that makes a period's grant once-only:
/// `period:<org_id>:<period_start, RFC 3339 UTC>`.
pub fn period_ref(org_id: Uuid, start: DateTime<Utc>) -> String {
    format!(
        "period:{org_id}:{}",
        start.to_rfc3339_opts(SecondsFormat::AutoSi, true)
    )
}

fn unknown_plan(code: &str) -> ApiError {
    ApiError::Status {
        status: axum::http::StatusCode::UNPROCESSABLE_ENTITY,
        code: "unknown_plan",
        detail: format!("there is no active plan {code:?} (see GET /api/v1/plans)"),
    }
}

fn missing_plan(code: &str) -> ApiError {
    ApiError::Internal(anyhow::anyhow!(
        "plan {code:?} of a subscription is missing"
    ))
}

async fn plan(conn: &mut PgConnection, code: &str) -> Result<Plan, ApiError> {
    Ok(repo::plan(conn, code)
        .await?
        .ok_or_else(|| missing_plan(code))?
        .0)
}

/// Grants the credits of a period of `plan`, once per period.
async fn grant_period(
    conn: &mut PgConnection,
    org_id: Uuid,
    plan: &Plan,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
) -> Result<(), ApiError> {
    if plan.credits_per_period <= 0 || end <= Utc::now() {
        return Ok(());
    }
    let description = format!(
        "{} plan: credits of the period {} to {}",
        plan.name,
        start.format("%Y-%m-%d"),
        end.format("%Y-%m-%d")
    );
    repo::grant_credits(
        conn,
        plan.credits_per_period,
        "plan_period",
        PERIOD_GRANT_PRIORITY,
        Some(end),
        &period_ref(org_id, start),
        &description,
    )
    .await?;
    Ok(())
}

/// Issues the manual invoice of a paid period (idempotent per org and period).
async fn invoice_period(
    conn: &mut PgConnection,
    provider: PaymentProviderKind,
    org_id: Uuid,
    plan: &Plan,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
) -> Result<(), ApiError> {
    if provider != PaymentProviderKind::Manual || plan.price_minor <= 0 {
        return Ok(());
    }
    crate::billing::payments::invoices::issue_invoice(conn, org_id, plan, start, end).await?;
    Ok(())
}

async fn audit(
    tx: &mut TenantTx,
    action: &str,
    before: Option<&Subscription>,
    after: Option<&Subscription>,
) -> Result<(), ApiError> {
    let target_id = Some(tx.org_id().to_string());
    crate::core::audit::record(
        tx,
        crate::core::audit::Entry {
            action,
            target_type: "subscription",
            target_id,
            before: before.map(|s| json!(s)),
            after: after.map(|s| json!(s)),
        },
    )
    .await?;
    Ok(())
}

// ---------------------------------------------------------------- new orgs

/// Puts a new org on the free plan (status active, one period from now) and
/// grants the period's credits, in the org's creating transaction. (The
/// org's `org.created` audit row covers it: every org starts this way.)
pub async fn create_for_new_org(tx: &mut TenantTx) -> Result<Subscription, ApiError> {
    let org_id = tx.org_id();
    let free = plan(tx.conn(), FREE_PLAN).await?;
    let start = now();
    let end = free.period_end(start);
    let sub = repo::insert_subscription(tx.conn(), org_id, FREE_PLAN, start, end).await?;
    grant_period(tx.conn(), org_id, &free, start, end).await?;
    Ok(sub)
}

// ---------------------------------------------------------------- reads

async fn current(tx: &mut TenantTx, lock: bool) -> Result<Subscription, ApiError> {
    let org_id = tx.org_id();
    repo::get_subscription(tx.conn(), org_id, lock)
        .await?
        .ok_or(ApiError::NotFound("subscription"))
}

async fn view(conn: &mut PgConnection, sub: Subscription) -> Result<SubscriptionView, ApiError> {
    let plan = plan(conn, &sub.plan_code).await?;
    let pending_plan = match &sub.pending_plan_code {
        Some(code) => Some(self::plan(conn, code).await?),
        None => None,
    };
    Ok(SubscriptionView {
        subscription: sub,
        plan,
        pending_plan,
    })
}

/// The org's subscription with its plan and pending plan.
pub async fn get(tx: &mut TenantTx) -> Result<SubscriptionView, ApiError> {
    let sub = current(tx, false).await?;
    view(tx.conn(), sub).await
}

/// Whether a subscription in this state keeps its plan's entitlements; a
/// canceled one (and one whose first payment is still open) gets the free
/// plan's.
fn keeps_plan(status: &str) -> bool {
    !matches!(status, "canceled" | "incomplete")
}

/// The plan whose entitlements apply to the org now, and the subscription.
async fn entitled_plan(
    conn: &mut PgConnection,
    org_id: Uuid,
) -> Result<(Option<Subscription>, Plan), ApiError> {
    let sub = repo::get_subscription(conn, org_id, false).await?;
    let code = match &sub {
        Some(s) if keeps_plan(&s.status) => s.plan_code.clone(),
        _ => FREE_PLAN.to_owned(),
    };
    let plan = plan(conn, &code).await?;
    Ok((sub, plan))
}

/// What the org may do now.
pub async fn entitlements(tx: &mut TenantTx) -> Result<Entitlements, ApiError> {
    let org_id = tx.org_id();
    let (sub, plan) = entitled_plan(tx.conn(), org_id).await?;
    let seats_used = repo::seats_used(tx.conn(), org_id).await?;
    Ok(Entitlements {
        plan: plan.code,
        status: sub.map(|s| s.status).unwrap_or_else(|| "active".to_owned()),
        seat_limit: plan.seat_limit,
        seats_used,
        features: plan.features,
        credits_per_period: plan.credits_per_period,
        credit_overage_limit: plan.credit_overage_limit,
    })
}

// ---------------------------------------------------------------- seats

fn seats_full(plan: &Plan, limit: i32, used: i64) -> ApiError {
    ApiError::conflict(
        "seat_limit_reached",
        format!(
            "the {} plan allows {limit} seats (members and open invitations) and {used} are used; \
             upgrade the plan, or revoke an invitation or remove a member first",
            plan.name
        ),
    )
}

/// Refuses a new invitation when members plus open invitations already fill
/// the plan's seats. The caller holds the org's row lock.
pub(crate) async fn ensure_seat_for_invitation(tx: &mut TenantTx) -> Result<(), ApiError> {
    let org_id = tx.org_id();
    let (_, plan) = entitled_plan(tx.conn(), org_id).await?;
    let Some(limit) = plan.seat_limit else {
        return Ok(());
    };
    let used = repo::seats_used(tx.conn(), org_id).await?;
    if used >= i64::from(limit) {
        return Err(seats_full(&plan, limit, used));
    }
    Ok(())
}

/// Refuses a new member (an accepted invitation, whose seat it already held)
/// when the members alone fill the plan's seats: the plan may have shrunk
/// since the invitation was sent. The caller holds the org's row lock.
pub(crate) async fn ensure_seat_for_member(tx: &mut TenantTx) -> Result<(), ApiError> {
    let org_id = tx.org_id();
    let (_, plan) = entitled_plan(tx.conn(), org_id).await?;
    let Some(limit) = plan.seat_limit else {
        return Ok(());
    };
    let members = repo::member_count(tx.conn(), org_id).await?;
    if members >= i64::from(limit) {
        return Err(ApiError::conflict(
            "seat_limit_reached",
            format!(
                "the {} plan of this organization allows {limit} members, and it has {members}",
                plan.name
            ),
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------- changes

/// Whether moving from `current` to `target` is an upgrade: a higher price
/// per month (a yearly price counts a twelfth), or the same with more seats.
pub fn is_upgrade(current: &Plan, target: &Plan) -> bool {
    let months = |p: &Plan| if p.interval == "year" { 12 } else { 1 };
    // Cross-multiplied, in i128: prices are up to i64.
    let cur = i128::from(current.price_minor) * months(target);
    let new = i128::from(target.price_minor) * months(current);
    new > cur || (new == cur && target.seats() > current.seats())
}

/// What a plan change, a cancellation or a resumption came to.
pub enum Change {
    /// Made here (or nothing was to change).
    Done(Box<SubscriptionView>),
    /// To ask of the payment provider, then record with
    /// [`record_provider_change`].
    AtProvider(Box<ProviderChange>),
}

/// Changes the org's plan: an upgrade now, a downgrade at the end of the
/// period. A Stripe-managed subscription's change is made at Stripe.
pub async fn change_plan(
    tx: &mut TenantTx,
    _locked: &Actor,
    provider: PaymentProviderKind,
    input: ChangePlan,
) -> Result<Change, ApiError> {
    let code = input.plan.trim();
    if code.is_empty() || code.len() > 64 {
        return Err(unknown_plan(code));
    }
    let org_id = tx.org_id();
    // The row lock first, then the plans: a plan's currency cannot change
    // between this read and the commit (see plans_admin::put).
    let before = current(tx, true).await?;
    let target = match repo::plan(tx.conn(), code).await? {
        Some((p, true)) => p,
        // Orgs keep a deactivated plan; choosing it again changes nothing.
        Some((p, false)) if p.code == before.plan_code && keeps_plan(&before.status) => p,
        _ => return Err(unknown_plan(code)),
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
        return Err(ApiError::conflict(
            "checkout_required",
            "a paid plan starts with a checkout: use POST /api/v1/orgs/{org_id}/billing/checkout",
        ));
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

/// 422 `currency_mismatch` between two paid plans.
fn ensure_same_currency(current: &Plan, target: &Plan) -> Result<(), ApiError> {
    if current.price_minor > 0 && target.price_minor > 0 && current.currency != target.currency {
        return Err(ApiError::Status {
            status: axum::http::StatusCode::UNPROCESSABLE_ENTITY,
            code: "currency_mismatch",
            detail: format!(
                "the {} plan is billed in {}, the current plan in {}",
                target.name, target.currency, current.currency
            ),
        });
    }
    Ok(())
}

/// A downgrade waits for the end of the period, but the members must fit
/// the new plan's seats by now.
async fn ensure_members_fit(tx: &mut TenantTx, target: &Plan) -> Result<(), ApiError> {
    let Some(limit) = target.seat_limit else {
        return Ok(());
    };
    let org_id = tx.org_id();
    let members = repo::member_count(tx.conn(), org_id).await?;
    if members > i64::from(limit) {
        let leave = members - i64::from(limit);
        return Err(ApiError::conflict(
            "seat_limit_reached",
            format!(
                "the {} plan allows {limit} members and this organization has {members}: \
                 {leave} must leave before it can move to that plan",
                target.name
            ),
        ));
    }
    Ok(())
}

/// Cancels at the end of the period (back to the free plan then).
async fn cancel(tx: &mut TenantTx, before: Subscription) -> Result<SubscriptionView, ApiError> {
    if before.plan_code == FREE_PLAN || before.status == "canceled" {
        return Err(ApiError::conflict(
            "cannot_cancel_free",
            "the free plan cannot be canceled",
        ));
    }
    if before.cancel_at_period_end {
        return view(tx.conn(), before).await;
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
    view(tx.conn(), after).await
}

/// Takes back a cancellation that has not happened yet.
async fn resume(tx: &mut TenantTx, before: Subscription) -> Result<SubscriptionView, ApiError> {
    if before.status == "canceled" {
        return Err(ApiError::conflict(
            "subscription_canceled",
            "the subscription has already ended; choose a plan with PUT .../subscription",
        ));
    }
    if !before.cancel_at_period_end {
        return Err(ApiError::conflict(
            "not_canceling",
            "the subscription is not set to cancel",
        ));
    }
    let mut next = before.clone();
    next.cancel_at_period_end = false;
    let after = repo::update_subscription(tx.conn(), &next).await?;
    audit(tx, "subscription.resumed", Some(&before), Some(&after)).await?;
    view(tx.conn(), after).await
}

// ---------------------------------------------------------------- Stripe-managed
//
// A Stripe-managed subscription changes at Stripe: the change is decided
// here under the org lock (with the same refusals as a manual one), the
// transaction ends, Stripe is asked (no transaction held while it answers),
// and its answer is mirrored as its webhooks would be. Tenantry's plan state
// lives in the Stripe subscription's metadata: `plan` (the plan now), and
// for a downgrade `pending_plan` with `pending_from` (the renewal, in unix
// seconds, from which the pending plan is the plan), and `paid_price`, the
// price paid until then, which taking the downgrade back returns to. The
// webhook mirror reads the same keys, so the renewal's event applies the
// downgrade.

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
fn managed_by_stripe(sub: &Subscription) -> Option<String> {
    sub.provider_subscription_id
        .clone()
        .filter(|_| sub.provider == "stripe")
}

/// How long, in seconds, a change at the provider may take before another
/// may start (its requests, at most five tried twice for 10 s, end before).
const PROVIDER_CHANGE_LEASE_SECS: i64 = 180;

/// 409 `change_in_progress` while another change of the org's subscription
/// is being made at the provider. The caller holds the org lock.
async fn ensure_no_change_in_flight(tx: &mut TenantTx) -> Result<(), ApiError> {
    let org_id = tx.org_id();
    if repo::provider_change_in_flight(tx.conn(), org_id).await? {
        return Err(ApiError::conflict(
            "change_in_progress",
            "a change of this subscription is being made at Stripe: try again in a moment",
        ));
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
) -> Result<Change, ApiError> {
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
async fn provider_plan_change(
    tx: &mut TenantTx,
    before: Subscription,
    subscription_id: String,
    current: Plan,
    target: Plan,
) -> Result<Change, ApiError> {
    match before.status.as_str() {
        "past_due" | "incomplete" => {
            return Err(ApiError::conflict(
                "payment_pending",
                format!(
                    "the subscription has a payment outstanding (status {}): settle it in the \
                     billing portal (POST .../billing/portal) before changing the plan",
                    before.status
                ),
            ));
        }
        "canceled" => {
            return Err(ApiError::conflict(
                "subscription_canceled",
                "the subscription has ended; choose a plan with POST .../billing/checkout",
            ));
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
        return ask(tx, before, subscription_id, update, action).await;
    }
    ensure_same_currency(&current, &target)?;
    if target.price_minor > 0 && target.interval != current.interval {
        return Err(ApiError::conflict(
            "interval_change",
            format!(
                "the {} plan is billed every {} and the current plan every {}: Stripe would \
                 restart the billing period; cancel (POST .../subscription/cancel) and check \
                 out the new plan when this period ends",
                target.name, target.interval, current.interval
            ),
        ));
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
        return ask(tx, before, subscription_id, update, action).await;
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
        return ask(tx, before, subscription_id, update, action).await;
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
    ask(tx, before, subscription_id, update, action).await
}

/// Cancel (`cancel`) or resume, under the caller's org lock: for a
/// Stripe-managed subscription, the change to ask of Stripe (with the same
/// refusals as for a manual one); for a manual one, made here.
pub async fn cancel_or_resume(
    tx: &mut TenantTx,
    _locked: &Actor,
    cancel: bool,
) -> Result<Change, ApiError> {
    let before = current(tx, true).await?;
    let Some(subscription_id) = managed_by_stripe(&before) else {
        let view = if cancel {
            self::cancel(tx, before).await?
        } else {
            resume(tx, before).await?
        };
        return Ok(Change::Done(Box::new(view)));
    };
    ensure_no_change_in_flight(tx).await?;
    if before.status == "canceled" {
        return Err(ApiError::conflict(
            "subscription_canceled",
            "the subscription has already ended; choose a plan with POST .../billing/checkout",
        ));
    }
    if cancel && before.cancel_at_period_end {
        return Ok(Change::Done(Box::new(view(tx.conn(), before).await?)));
    }
    if !cancel && !before.cancel_at_period_end {
        return Err(ApiError::conflict(
            "not_canceling",
            "the subscription is not set to cancel",
        ));
    }
    let action = if cancel {
        "subscription.cancel_scheduled"
    } else {
        "subscription.resumed"
    };
    let update = SubscriptionUpdate::CancelAtPeriodEnd(cancel);
    ask(tx, before, subscription_id, update, action).await
}

/// Records what Stripe answered to a change sent at `sent_at` (or, after a
/// failure, the subscription as Stripe then had it): the subscription
/// object is mirrored as the webhooks would (unless a newer event was
/// applied meanwhile, or the subscription is no longer the org's), the
/// lease released, and the change audited (`audit`: false after a failure).
pub async fn record_provider_change(
    tx: &mut TenantTx,
    change: &ProviderChange,
    stripe_subscription: &crate::billing::payments::stripe_objects::Subscription,
    sent_at: DateTime<Utc>,
    audit_change: bool,
) -> Result<SubscriptionView, ApiError> {
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
    crate::billing::payments::mirror::mirror_answer(
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
    view(tx.conn(), after).await
}

/// Releases the org's lease after a change that failed: the next change
/// need not wait for it to run out.
pub async fn release_provider_change(
    pool: &PgPool,
    change: &ProviderChange,
) -> Result<(), ApiError> {
    let org_id = change.before.org_id;
    let mut tx = TenantTx::enter_as_system(pool, org_id, SystemScope::Billing).await?;
    repo::release_provider_change(tx.conn(), org_id, change.lease).await?;
    tx.commit().await?;
    Ok(())
}

// ---------------------------------------------------------------- rollover

/// What one rollover pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct RolloverReport {
    /// Subscriptions moved into their current period.
    pub advanced: u64,
    /// Due subscriptions left for the next pass (their org was busy, or
    /// another worker had them).
    pub skipped: u64,
    /// Orgs whose rollover failed (logged).
    pub failed: u64,
}

/// What happened to one org's subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rolled {
    Advanced,
    /// Not due (any more), Stripe's, or gone.
    NotDue,
    /// Another transaction holds the org.
    Busy,
}

/// Ends every due period (batches of orgs, each in its own tenant transaction).
pub async fn rollover_due(
    pool: &PgPool,
    provider: PaymentProviderKind,
) -> Result<RolloverReport, sqlx::Error> {
    let mut report = RolloverReport::default();
    let mut after: Option<Uuid> = None;
    loop {
        let ids = {
            let mut tx = system_tx(pool, SystemScope::Billing).await?;
            let ids = repo::due_orgs(&mut tx, after, ROLLOVER_BATCH).await?;
            tx.commit().await?;
            ids
        };
        let Some(last) = ids.last().copied() else {
            break;
        };
        after = Some(last);
        for org_id in &ids {
            match rollover_org(pool, *org_id, provider).await {
                Ok(Rolled::Advanced) => report.advanced += 1,
                Ok(Rolled::NotDue) => {}
                Ok(Rolled::Busy) => report.skipped += 1,
                Err(e) => {
                    report.failed += 1;
                    tracing::warn!(org_id = %org_id, error = %e, "subscription rollover failed");
                }
            }
        }
        if ids.len() < ROLLOVER_BATCH as usize {
            break;
        }
    }
    Ok(report)
}

/// Ends the org's due period, in its own tenant transaction as the system.
pub async fn rollover_org(
    pool: &PgPool,
    org_id: Uuid,
    provider: PaymentProviderKind,
) -> Result<Rolled, ApiError> {
    let mut tx = TenantTx::enter_as_system(pool, org_id, SystemScope::Billing).await?;
    if !repo::try_lock_org(tx.conn(), org_id).await? {
        return Ok(Rolled::Busy);
    }
    let Some(before) = repo::get_subscription(tx.conn(), org_id, true).await? else {
        return Ok(Rolled::NotDue);
    };
    let now = now();
    if before.current_period_end > now || before.provider == "stripe" {
        return Ok(Rolled::NotDue);
    }
    let mut next = before.clone();
    let mut events = Vec::new();
    if before.cancel_at_period_end {
        next.plan_code = FREE_PLAN.to_owned();
        next.status = "canceled".to_owned();
        next.canceled_at = Some(before.current_period_end);
        next.cancel_at_period_end = false;
        next.pending_plan_code = None;
        events.push("subscription.canceled");
    } else if let Some(pending) = before.pending_plan_code.clone() {
        next.plan_code = pending;
        next.pending_plan_code = None;
        if next.status == "trialing" {
            next.status = "active".to_owned();
        }
        events.push("subscription.downgraded");
    }
    if next.status == "trialing" && next.trial_end.is_none_or(|t| t <= now) {
        next.status = "active".to_owned();
        events.push("subscription.trial_ended");
    }
    let plan = plan(tx.conn(), &next.plan_code).await?;
    // Whole periods from the old end; the credits only for the current one.
    let (mut start, mut end) = (
        before.current_period_end,
        plan.period_end(before.current_period_end),
    );
    let mut steps = 0;
    while end <= now && steps < 100_000 {
        (start, end) = (end, plan.period_end(end));
        steps += 1;
    }
    next.current_period_start = start;
    next.current_period_end = end;
    let after = repo::update_subscription(tx.conn(), &next).await?;
    let entitled = if keeps_plan(&after.status) {
        plan
    } else {
        self::plan(tx.conn(), FREE_PLAN).await?
    };
    grant_period(tx.conn(), org_id, &entitled, start, end).await?;
    if matches!(after.status.as_str(), "active" | "past_due") {
        invoice_period(tx.conn(), provider, org_id, &entitled, start, end).await?;
    }
    for action in events {
        audit(&mut tx, action, Some(&before), Some(&after)).await?;
    }
    audit(&mut tx, "subscription.renewed", Some(&before), Some(&after)).await?;
    tx.commit().await?;
    tracing::info!(
        %org_id,
        plan = %after.plan_code,
        status = %after.status,
        period_start = %start,
        period_end = %end,
        "subscription period advanced"
    );
    Ok(Rolled::Advanced)
}
