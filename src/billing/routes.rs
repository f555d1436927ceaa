//! HTTP layer of billing: the plan catalog, plan administration,
//! subscriptions and entitlements.

use axum::Json;
use axum::extract::{FromRequestParts, State};
use axum::http::{StatusCode, request::Parts};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::model::{AdminPlan, ChangePlan, Entitlements, Plan, PlanInput, SubscriptionView};
use super::{plan_change, plans_admin, repo, subscriptions};
use crate::auth::AuthState;
use crate::auth::principal::PlatformAdmin;
use crate::auth::{OrgContext, perm};
use crate::billing::BillingState;
use crate::core::error::{ApiError, Problem};
use crate::core::extract::ValidJson;
use axum::extract::FromRef;

/// Plan administration's refusals as problems.
impl From<plans_admin::PlanError> for ApiError {
    fn from(e: plans_admin::PlanError) -> Self {
        use plans_admin::PlanError;
        match e {
            PlanError::Invalid(e) => e.into(),
            PlanError::Db(e) => e.into(),
            PlanError::UnknownPlan(_) => ApiError::NotFound("plan"),
            e @ PlanError::CurrencyInUse { .. } => ApiError::conflict("plan_in_use", e.to_string()),
            e @ PlanError::FreePlanRequired => {
                ApiError::conflict("free_plan_required", e.to_string())
            }
        }
    }
}

pub fn router<S>() -> OpenApiRouter<S>
where
    S: Clone + Send + Sync + 'static,
    AuthState: FromRef<S>,
    BillingState: FromRef<S>,
{
    OpenApiRouter::new()
        .routes(routes!(list_plans))
        .routes(routes!(admin_list_plans))
        .routes(routes!(admin_put_plan))
        .routes(routes!(get_subscription, change_subscription))
        .routes(routes!(cancel_subscription))
        .routes(routes!(resume_subscription))
        .routes(routes!(get_entitlements))
        .merge(super::payments::router())
}

/// The plan catalog: every active plan with its price, interval, trial,
/// credits per period, seat limit and feature limits. Public.
#[utoipa::path(get, path = "/api/v1/plans", tag = "billing",
    security(()),
    responses((status = 200, body = Vec<Plan>)))]
async fn list_plans(State(state): State<BillingState>) -> Result<Json<Vec<Plan>>, ApiError> {
    let mut conn = state.pool.acquire().await?;
    Ok(Json(repo::active_plans(&mut conn).await?))
}

/// Every plan, active or not, with its state. Platform admins (a
/// `service_role` key).
#[utoipa::path(get, path = "/api/v1/admin/plans", tag = "billing",
    responses((status = 200, body = Vec<AdminPlan>)))]
async fn admin_list_plans(
    _: PlatformAdmin,
    State(state): State<BillingState>,
) -> Result<Json<Vec<AdminPlan>>, ApiError> {
    Ok(Json(plans_admin::list(&state.pool).await?))
}

/// The `{code}` path segment of a plan (checked with the body's fields).
struct PlanCode(String);

impl<S: Send + Sync> FromRequestParts<S> for PlanCode {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let params = axum::extract::RawPathParams::from_request_parts(parts, &())
            .await
            .map_err(|_| ApiError::bad_request("invalid_path", "missing path parameters"))?;
        Ok(PlanCode(
            params
                .iter()
                .find(|(k, _)| *k == "code")
                .map(|(_, v)| v.to_owned())
                .unwrap_or_default(),
        ))
    }
}

/// Creates or replaces a plan (201 when created). A plan is never deleted:
/// `active: false` hides it from the catalog while the orgs on it keep it.
/// Its currency cannot change while orgs subscribe to it. Platform admins.
#[utoipa::path(put, path = "/api/v1/admin/plans/{code}", tag = "billing",
    params(("code" = String, Path, description = "1-32 of a-z 0-9 _ -")),
    request_body = PlanInput,
    responses(
        (status = 200, description = "Replaced", body = AdminPlan),
        (status = 201, description = "Created", body = AdminPlan),
        (status = 409, description = "`plan_in_use` (currency change with subscribers)", body = Problem),
    ))]
async fn admin_put_plan(
    _: PlatformAdmin,
    State(state): State<BillingState>,
    PlanCode(code): PlanCode,
    ValidJson(input): ValidJson<PlanInput>,
) -> Result<(StatusCode, Json<AdminPlan>), ApiError> {
    let (plan, created) = plans_admin::put(&state.pool, &code, input).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(plan)))
}

impl From<subscriptions::SubscriptionError> for ApiError {
    fn from(e: subscriptions::SubscriptionError) -> Self {
        use subscriptions::SubscriptionError as E;
        let (status, code) = match e {
            E::NotFound => return ApiError::NotFound("subscription"),
            E::Seats(e) => return e.into(),
            E::Payment(e) => return e.into(),
            E::Db(e) => return e.into(),
            E::ChangeTask(_) => return ApiError::Internal(e.into()),
            E::UnknownPlan(_) => (StatusCode::UNPROCESSABLE_ENTITY, "unknown_plan"),
            E::CurrencyMismatch(_) => (StatusCode::UNPROCESSABLE_ENTITY, "currency_mismatch"),
            E::CheckoutRequired => (StatusCode::CONFLICT, "checkout_required"),
            E::CannotCancelFree => (StatusCode::CONFLICT, "cannot_cancel_free"),
            E::Ended | E::EndedAtStripe { .. } => (StatusCode::CONFLICT, "subscription_canceled"),
            E::NotCanceling => (StatusCode::CONFLICT, "not_canceling"),
            E::PaymentPending { .. } => (StatusCode::CONFLICT, "payment_pending"),
            E::IntervalChange { .. } => (StatusCode::CONFLICT, "interval_change"),
            E::ChangeInProgress => (StatusCode::CONFLICT, "change_in_progress"),
        };
        ApiError::Status {
            status,
            code,
            detail: e.to_string(),
        }
    }
}

/// The org's subscription, with its plan and the plan of a pending downgrade.
#[utoipa::path(get, path = "/api/v1/orgs/{org_id}/subscription", tag = "billing",
    params(("org_id" = Uuid, Path)),
    responses((status = 200, body = SubscriptionView)))]
async fn get_subscription(
    mut ctx: OrgContext<perm::BillingRead>,
) -> Result<Json<SubscriptionView>, ApiError> {
    let view = subscriptions::get(&mut ctx.tx).await?;
    ctx.tx.commit().await?;
    Ok(Json(view))
}

/// Changes the plan. An upgrade (higher price, or the same price with more
/// seats) applies now: a new period starts with the new plan's credits, as a
/// trial when the plan has one and the org never had one. A downgrade is
/// pending until the period ends. The current plan again: no change (and a
/// pending downgrade is dropped).
///
/// A Stripe-managed subscription changes at Stripe, and the answer is
/// mirrored at once: an upgrade moves it to the new price now (a new billing
/// period, ending a trial, with the unused part of the old price credited
/// and the difference charged at once: a declined payment changes nothing)
/// and the old period's remaining credits end with that period; a downgrade
/// moves it to the new price from the renewal, without proration; the free
/// plan cancels it at the end of the period. Monthly and yearly plans do
/// not switch into each other at Stripe.
#[utoipa::path(put, path = "/api/v1/orgs/{org_id}/subscription", tag = "billing",
    params(("org_id" = Uuid, Path)),
    request_body = ChangePlan,
    responses(
        (status = 200, body = SubscriptionView),
        (status = 409, description = "`seat_limit_reached` (too many members for the plan), \
            `checkout_required` (Stripe: a paid plan starts with a checkout), \
            `payment_pending` (Stripe: a payment is outstanding), \
            `subscription_canceled` (Stripe: the subscription has ended), \
            `interval_change` (Stripe: between monthly and yearly plans), \
            `subscription_changed` (Stripe renewed or changed it since its last webhook: retry), \
            `change_in_progress` (another change is being made at Stripe: retry), \
            `unsupported_subscription` (Stripe: more than one item)", body = Problem),
        (status = 422, description = "`unknown_plan`, `currency_mismatch`", body = Problem),
        (status = 402, description = "`payment_declined`: Stripe declined the payment (a Stripe-managed subscription)", body = Problem),
        (status = 502, description = "`payment_provider_error`: Stripe refused or failed (a Stripe-managed subscription)", body = Problem),
    ))]
async fn change_subscription(
    State(state): State<BillingState>,
    mut ctx: OrgContext<perm::BillingManage>,
    ValidJson(input): ValidJson<ChangePlan>,
) -> Result<Json<SubscriptionView>, ApiError> {
    let actor = ctx.lock().await?;
    let provider = state.config.billing.provider;
    let view = plan_change::change_plan(
        &state.pool,
        &state.payments,
        ctx.tx,
        &actor,
        provider,
        input,
    )
    .await?;
    Ok(Json(view))
}

/// Cancels at the end of the period: the org goes back to the free plan then.
/// A Stripe-managed subscription is canceled at Stripe (and mirrored).
#[utoipa::path(post, path = "/api/v1/orgs/{org_id}/subscription/cancel", tag = "billing",
    params(("org_id" = Uuid, Path)),
    responses(
        (status = 200, body = SubscriptionView),
        (status = 409, description = "`cannot_cancel_free`, `subscription_canceled`, `change_in_progress`", body = Problem),
        (status = 402, description = "`payment_declined`: Stripe declined the payment (a Stripe-managed subscription)", body = Problem),
        (status = 502, description = "`payment_provider_error`: Stripe refused or failed (a Stripe-managed subscription)", body = Problem),
    ))]
async fn cancel_subscription(
    State(state): State<BillingState>,
    ctx: OrgContext<perm::BillingManage>,
) -> Result<Json<SubscriptionView>, ApiError> {
    cancel_or_resume(&state, ctx, true).await.map(Json)
}

/// Takes back a cancellation before the period ends (at Stripe for a
/// Stripe-managed subscription).
#[utoipa::path(post, path = "/api/v1/orgs/{org_id}/subscription/resume", tag = "billing",
    params(("org_id" = Uuid, Path)),
    responses(
        (status = 200, body = SubscriptionView),
        (status = 409, description = "`not_canceling`, `subscription_canceled`, `change_in_progress`", body = Problem),
        (status = 402, description = "`payment_declined`: Stripe declined the payment (a Stripe-managed subscription)", body = Problem),
        (status = 502, description = "`payment_provider_error`: Stripe refused or failed (a Stripe-managed subscription)", body = Problem),
    ))]
async fn resume_subscription(
    State(state): State<BillingState>,
    ctx: OrgContext<perm::BillingManage>,
) -> Result<Json<SubscriptionView>, ApiError> {
    cancel_or_resume(&state, ctx, false).await.map(Json)
}

/// Cancel or resume: see [`plan_change`].
async fn cancel_or_resume(
    state: &BillingState,
    mut ctx: OrgContext<perm::BillingManage>,
    cancel: bool,
) -> Result<SubscriptionView, ApiError> {
    let actor = ctx.lock().await?;
    Ok(plan_change::cancel_or_resume(&state.pool, &state.payments, ctx.tx, &actor, cancel).await?)
}

/// What the org may do now: its plan's seat limit (and the seats used),
/// feature limits, credits per period and overage limit. A `past_due`
/// subscription keeps its plan; a canceled one gets the free plan's.
#[utoipa::path(get, path = "/api/v1/orgs/{org_id}/entitlements", tag = "billing",
    params(("org_id" = Uuid, Path)),
    responses((status = 200, body = Entitlements)))]
async fn get_entitlements(
    mut ctx: OrgContext<perm::OrgRead>,
) -> Result<Json<Entitlements>, ApiError> {
    let e = subscriptions::entitlements(&mut ctx.tx).await?;
    ctx.tx.commit().await?;
    Ok(Json(e))
}

impl From<subscriptions::seats::SeatError> for ApiError {
    fn from(e: subscriptions::seats::SeatError) -> Self {
        use subscriptions::seats::SeatError;
        match e {
            SeatError::SeatLimitReached { .. }
            | SeatError::MemberLimitReached { .. }
            | SeatError::MembersExceedPlan { .. } => {
                ApiError::conflict("seat_limit_reached", e.to_string())
            }
            SeatError::Db(e) => e.into(),
        }
    }
}
