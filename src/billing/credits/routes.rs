//! HTTP layer of credits. Writes need an `Idempotency-Key` header: the same
//! key with the same request replays the first response (with
//! `Idempotent-Replayed: true`), with another request it is a 422, and while
//! the first is still running a 409.
//!
//! Also here: the problem each [`CreditError`] is answered with.

use axum::Json;
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::error::CreditError;
use super::model::*;
use super::{Idempotency, Outcome};
use crate::auth::AuthState;
use crate::auth::principal::PlatformAdmin;
use crate::auth::rbac::OrgCall;
use crate::auth::{OrgContext, perm};
use crate::billing::BillingState;
use crate::core::db::{SystemScope, TenantTx};
use crate::core::error::{ApiError, Problem};
use crate::core::extract::{IdPath, ValidJson, ValidQuery, path_uuid};
use crate::core::pagination::{Page, PageQuery};
use axum::extract::FromRef;

/// Each credit refusal as the problem clients have always received.
impl From<CreditError> for ApiError {
    fn from(e: CreditError) -> Self {
        match e {
            CreditError::Invalid(e) => e.into(),
            CreditError::Page(e) => e.into(),
            CreditError::Db(e) => e.into(),
            e @ CreditError::InvalidAt => ApiError::bad_request("invalid_at", e.to_string()),
            e @ CreditError::InsufficientCredits(_) => ApiError::Status {
                status: StatusCode::PAYMENT_REQUIRED,
                code: "insufficient_credits",
                detail: e.to_string(),
            },
            CreditError::HoldNotFound => ApiError::NotFound("hold"),
            CreditError::HoldExpired(detail) => ApiError::Gone {
                code: "hold_expired",
                detail,
            },
            CreditError::HoldClosed(detail) => ApiError::conflict("hold_closed", detail),
            CreditError::ExceedsHold(message) => ApiError::field("amount", "exceeds_hold", message),
            CreditError::KeyInUse(detail) => ApiError::conflict("idempotency_key_in_use", detail),
            CreditError::KeyReused(detail) => ApiError::Status {
                status: StatusCode::UNPROCESSABLE_ENTITY,
                code: "idempotency_key_reused",
                detail,
            },
            e @ CreditError::SpendQueueFull => ApiError::Status {
                status: StatusCode::SERVICE_UNAVAILABLE,
                code: "busy",
                detail: e.to_string(),
            },
            CreditError::SpendBatchTrouble(trouble) => trouble.into(),
            // Answered by the spend handler, which knows the caller; this
            // is the fallback should another caller let one through.
            e @ CreditError::SpendRefused(_) => ApiError::Internal(anyhow::Error::new(e)),
            CreditError::Internal(e) => ApiError::Internal(e),
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
        .routes(routes!(get_credits))
        .routes(routes!(list_ledger))
        .routes(routes!(spend_credits))
        .routes(routes!(create_hold))
        .routes(routes!(get_hold))
        .routes(routes!(capture_hold))
        .routes(routes!(release_hold))
        .routes(routes!(grant_credits))
}

/// The `Idempotency-Key` header: 1 to 255 visible ASCII characters.
pub struct IdempotencyKey(pub String);

impl<S: Send + Sync> FromRequestParts<S> for IdempotencyKey {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let Some(v) = parts.headers.get("idempotency-key") else {
            return Err(ApiError::bad_request(
                "idempotency_key_required",
                "this write needs an Idempotency-Key header (a unique value per operation)",
            ));
        };
        let key = v
            .to_str()
            .ok()
            .filter(|k| (1..=255).contains(&k.len()) && k.bytes().all(|b| b.is_ascii_graphic()))
            .ok_or_else(|| {
                ApiError::bad_request(
                    "invalid_idempotency_key",
                    "Idempotency-Key must be 1 to 255 visible ASCII characters",
                )
            })?;
        Ok(IdempotencyKey(key.to_owned()))
    }
}

impl IntoResponse for Outcome {
    fn into_response(self) -> Response {
        // The ledger records only valid statuses (checked when read back).
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut res = (status, Json(self.body)).into_response();
        res.headers_mut().insert(
            "idempotent-replayed",
            HeaderValue::from_static(if self.replayed { "true" } else { "false" }),
        );
        res
    }
}

/// The org's balance, held credits, overage limit and live grants in
/// spending order; with `?at=`, the balance and held credits at that instant.
#[utoipa::path(get, path = "/api/v1/orgs/{org_id}/credits", tag = "billing",
    params(("org_id" = Uuid, Path), CreditsQuery),
    responses((status = 200, body = Credits),
        (status = 400, description = "`invalid_at`: in the future", body = Problem)))]
async fn get_credits(
    mut ctx: OrgContext<perm::CreditsRead>,
    ValidQuery(q): ValidQuery<CreditsQuery>,
) -> Result<Json<Credits>, ApiError> {
    let credits = super::credits(&mut ctx.tx, q.at).await?;
    ctx.tx.commit().await?;
    Ok(Json(credits))
}

/// The credit ledger, newest line first. Lines are never changed or removed.
#[utoipa::path(get, path = "/api/v1/orgs/{org_id}/credits/ledger", tag = "billing",
    params(("org_id" = Uuid, Path), PageQuery),
    responses((status = 200, body = Page<LedgerLine>)))]
async fn list_ledger(
    mut ctx: OrgContext<perm::CreditsRead>,
    ValidQuery(q): ValidQuery<PageQuery>,
) -> Result<Json<Page<LedgerLine>>, ApiError> {
    let page = super::ledger(&mut ctx.tx, &q).await?;
    ctx.tx.commit().await?;
    Ok(Json(page))
}

/// Spends credits now, drawing grants by priority, then soonest expiry,
/// then age; beyond them only as far as the plan's overage limit.
#[utoipa::path(post, path = "/api/v1/orgs/{org_id}/credits/spend", tag = "billing",
    params(("org_id" = Uuid, Path),
        ("Idempotency-Key" = String, Header, description = "Unique per operation")),
    request_body = SpendCredits,
    responses((status = 200, body = Spent),
        (status = 400, description = "`idempotency_key_required`", body = Problem),
        (status = 402, description = "`insufficient_credits`", body = Problem),
        (status = 409, description = "`idempotency_key_in_use`: the same key is being processed", body = Problem),
        (status = 422, description = "`idempotency_key_reused` with another body, or invalid fields", body = Problem)))]
async fn spend_credits(
    State(state): State<BillingState>,
    call: OrgCall<perm::CreditsSpend>,
    IdempotencyKey(key): IdempotencyKey,
    ValidJson(input): ValidJson<SpendCredits>,
) -> Result<Outcome, ApiError> {
    let key = Idempotency::new(key, "spend", &input);
    super::spend(&state.pool, &state.spends, &call, &input, key)
        .await
        .map_err(|e| match e {
            // The statement refused the caller: answered by the caller's
            // own authorisation rules (404, 401 or 403).
            CreditError::SpendRefused(membership) => call.refused(membership),
            e => e.into(),
        })
}

/// Reserves credits for long work; capture or release the hold later. An
/// open hold is released on its own when it expires.
#[utoipa::path(post, path = "/api/v1/orgs/{org_id}/credits/holds", tag = "billing",
    params(("org_id" = Uuid, Path),
        ("Idempotency-Key" = String, Header, description = "Unique per operation")),
    request_body = CreateHold,
    responses((status = 201, body = HoldResult),
        (status = 402, description = "`insufficient_credits`", body = Problem),
        (status = 409, description = "`idempotency_key_in_use`", body = Problem),
        (status = 422, description = "`idempotency_key_reused`, or invalid fields", body = Problem)))]
async fn create_hold(
    mut ctx: OrgContext<perm::CreditsSpend>,
    IdempotencyKey(key): IdempotencyKey,
    ValidJson(input): ValidJson<CreateHold>,
) -> Result<Outcome, ApiError> {
    let key = Idempotency::new(key, "hold", &input);
    let out = super::hold(&mut ctx.tx, &input, &key).await?;
    ctx.tx.commit().await?;
    Ok(out)
}

#[utoipa::path(get, path = "/api/v1/orgs/{org_id}/credits/holds/{hold_id}", tag = "billing",
    params(("org_id" = Uuid, Path), ("hold_id" = Uuid, Path)),
    responses((status = 200, body = Hold), (status = 404, body = Problem)))]
async fn get_hold(
    mut ctx: OrgContext<perm::CreditsRead>,
    ids: IdPath<2>,
) -> Result<Json<Hold>, ApiError> {
    let hold = super::get_hold(&mut ctx.tx, ids.0[1]).await?;
    ctx.tx.commit().await?;
    Ok(Json(hold))
}

/// Spends up to the held amount (all of it by default) and releases the rest.
#[utoipa::path(post, path = "/api/v1/orgs/{org_id}/credits/holds/{hold_id}/capture", tag = "billing",
    params(("org_id" = Uuid, Path), ("hold_id" = Uuid, Path),
        ("Idempotency-Key" = String, Header, description = "Unique per operation")),
    request_body = CaptureHold,
    responses((status = 200, body = HoldResult),
        (status = 404, body = Problem),
        (status = 409, description = "`hold_closed`: captured or released already", body = Problem),
        (status = 410, description = "`hold_expired`", body = Problem),
        (status = 422, description = "`exceeds_hold`, `idempotency_key_reused`", body = Problem)))]
async fn capture_hold(
    mut ctx: OrgContext<perm::CreditsSpend>,
    ids: IdPath<2>,
    IdempotencyKey(key): IdempotencyKey,
    ValidJson(input): ValidJson<CaptureHold>,
) -> Result<Outcome, ApiError> {
    let hold_id = ids.0[1];
    let key = Idempotency::new(key, "capture", &(hold_id, &input));
    let out = super::settle_hold(&mut ctx.tx, hold_id, Some(&input), &key).await?;
    ctx.tx.commit().await?;
    Ok(out)
}

/// Releases an open hold: its credits return to the grants they came from.
#[utoipa::path(post, path = "/api/v1/orgs/{org_id}/credits/holds/{hold_id}/release", tag = "billing",
    params(("org_id" = Uuid, Path), ("hold_id" = Uuid, Path),
        ("Idempotency-Key" = String, Header, description = "Unique per operation")),
    responses((status = 200, body = HoldResult),
        (status = 404, body = Problem),
        (status = 409, description = "`hold_closed`", body = Problem),
        (status = 410, description = "`hold_expired`", body = Problem)))]
async fn release_hold(
    mut ctx: OrgContext<perm::CreditsSpend>,
    ids: IdPath<2>,
    IdempotencyKey(key): IdempotencyKey,
) -> Result<Outcome, ApiError> {
    let hold_id = ids.0[1];
    let key = Idempotency::new(key, "release", &hold_id);
    let out = super::settle_hold(&mut ctx.tx, hold_id, None, &key).await?;
    ctx.tx.commit().await?;
    Ok(out)
}

/// Grants credits to an org (platform admins: a `service_role` key).
/// Purchases are granted by the payment webhook, plan periods by the
/// period job.
#[utoipa::path(post, path = "/api/v1/orgs/{org_id}/credits/grants", tag = "billing",
    params(("org_id" = Uuid, Path),
        ("Idempotency-Key" = String, Header, description = "Unique per operation")),
    request_body = CreateGrant,
    responses((status = 201, body = Granted),
        (status = 403, description = "Not a platform administrator: a user's token \
            (`forbidden`; this route needs a `service_role` key)", body = Problem),
        (status = 404, body = Problem),
        (status = 409, description = "`idempotency_key_in_use`", body = Problem),
        (status = 422, description = "`idempotency_key_reused`, or invalid fields", body = Problem)))]
async fn grant_credits(
    _admin: PlatformAdmin,
    State(state): State<BillingState>,
    parts: OrgIdPath,
    IdempotencyKey(key): IdempotencyKey,
    ValidJson(input): ValidJson<CreateGrant>,
) -> Result<Outcome, ApiError> {
    let mut tx = TenantTx::enter_as_system(&state.pool, parts.0, SystemScope::Operator).await?;
    let exists: bool =
        sqlx::query_scalar("select exists (select 1 from organizations where id = $1)")
            .bind(parts.0)
            .fetch_one(tx.conn())
            .await?;
    if !exists {
        return Err(ApiError::NotFound("organization"));
    }
    let key = Idempotency::new(key, "grant", &input);
    let out = super::grant(&mut tx, &input, &key).await?;
    tx.commit().await?;
    Ok(out)
}

/// `{org_id}` of the path.
pub struct OrgIdPath(pub Uuid);

impl<S: Send + Sync> FromRequestParts<S> for OrgIdPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        Ok(OrgIdPath(path_uuid(parts, "org_id").await?))
    }
}
