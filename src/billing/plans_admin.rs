//! Plan administration by platform admins, shared by `GET|PUT
//! /api/v1/admin/plans` and `tenantry admin plans`.
//!
//! Plans are written only in a transaction that declared itself the plan
//! administrator (`app.plan_admin = on`; the policies on `plans` check it).
//! A plan is never deleted: one in use is deactivated (hidden from the
//! catalog, kept by the orgs on it). Its currency cannot change while orgs
//! subscribe to it.
//!
//! Its refusals are a [`PlanError`]; the HTTP layer (`billing/routes.rs`)
//! and the CLI each say them their own way.

use crate::core::db::{SystemScope, system_tx};
use serde_json::Value;
use sqlx::{PgPool, Postgres, Transaction};

use super::model::{AdminPlan, FREE_PLAN, PlanInput};
use super::repo;
use crate::core::error::{FieldError, Invalid};

/// Most feature limits one plan may carry.
const MAX_FEATURES: usize = 64;

/// What plan administration refuses or fails with.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error(transparent)]
    Invalid(#[from] Invalid),
    #[error(transparent)]
    Db(#[from] sqlx::Error),
    /// No plan has this code.
    #[error("plan not found")]
    UnknownPlan(String),
    /// A currency change of a plan orgs subscribe to.
    #[error(
        "{subscribers} organization(s) subscribe to this plan; its currency cannot change \
         (create a new plan instead)"
    )]
    CurrencyInUse { subscribers: i64 },
    /// Deactivating the free plan, every org's fallback.
    #[error("the free plan is every org's fallback and stays active")]
    FreePlanRequired,
}

/// A transaction as the plan administrator (the app role, no tenant).
async fn admin_tx(pool: &PgPool) -> Result<Transaction<'static, Postgres>, sqlx::Error> {
    system_tx(pool, SystemScope::PlanAdmin).await
}

/// Every plan, active or not, in catalog order.
pub async fn list(pool: &PgPool) -> Result<Vec<AdminPlan>, PlanError> {
    let mut conn = pool.acquire().await?;
    Ok(repo::all_plans(&mut conn).await?)
}

/// One plan, active or not.
pub async fn get(pool: &PgPool, code: &str) -> Result<AdminPlan, PlanError> {
    let mut conn = pool.acquire().await?;
    repo::admin_plan(&mut conn, code, false)
        .await?
        .ok_or_else(|| PlanError::UnknownPlan(code.to_owned()))
}

/// A plan code: 1-32 of `a-z 0-9 _ -`, starting with a letter or digit.
pub fn check_code(code: &str) -> Result<(), FieldError> {
    let ok = (1..=32).contains(&code.len())
        && code
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
        && !code.starts_with(['_', '-']);
    if ok {
        Ok(())
    } else {
        Err(FieldError::new(
            "code",
            "invalid_code",
            "must be 1-32 lowercase letters, digits, _ or -, starting with a letter or digit",
        ))
    }
}

/// Checks every field of a plan, reporting all that are wrong.
pub fn validate(code: &str, p: &mut PlanInput) -> Result<(), Invalid> {
    let mut errors = Vec::new();
    if let Err(e) = check_code(code) {
        errors.push(e);
    }
    let name = p.name.trim();
    if name.is_empty() || name.chars().count() > 100 || name.chars().any(char::is_control) {
        errors.push(FieldError::new(
            "name",
            "invalid_name",
            "must be 1-100 characters without control characters",
        ));
    }
    p.name = name.to_owned();
    if p.price_minor < 0 {
        errors.push(FieldError::new("price_minor", "negative", "must be >= 0"));
    }
    if code == FREE_PLAN && p.price_minor != 0 {
        errors.push(FieldError::new(
            "price_minor",
            "free_plan_price",
            "the free plan (every org's fallback) must cost 0",
        ));
    }
    if !(p.currency.len() == 3 && p.currency.bytes().all(|b| b.is_ascii_uppercase())) {
        errors.push(FieldError::new(
            "currency",
            "invalid_currency",
            "must be an ISO 4217 code in capitals, such as USD",
        ));
    }
    if p.interval != "month" && p.interval != "year" {
        errors.push(FieldError::new(
            "interval",
            "invalid_interval",
            "must be month or year",
        ));
    }
    if !(0..=365).contains(&p.trial_days) {
        errors.push(FieldError::new(
            "trial_days",
            "out_of_range",
            "must be between 0 and 365",
        ));
    }
    if p.credits_per_period < 0 {
        errors.push(FieldError::new(
            "credits_per_period",
            "negative",
            "must be >= 0",
        ));
    }
    if p.seat_limit.is_some_and(|s| s < 1) {
        errors.push(FieldError::new(
            "seat_limit",
            "out_of_range",
            "must be at least 1, or null for no limit",
        ));
    }
    if p.credit_overage_limit < 0 {
        errors.push(FieldError::new(
            "credit_overage_limit",
            "negative",
            "must be >= 0",
        ));
    }
    if code == FREE_PLAN && !p.active {
        errors.push(FieldError::new(
            "active",
            "free_plan_required",
            "the free plan is every org's fallback and stays active",
        ));
    }
    match &p.features {
        Value::Object(map) => {
            if map.len() > MAX_FEATURES {
                errors.push(FieldError::new(
                    "features",
                    "too_many",
                    format!("at most {MAX_FEATURES} features"),
                ));
            }
            for (k, v) in map {
                let key_ok = (1..=64).contains(&k.len())
                    && k.bytes().next().is_some_and(|b| b.is_ascii_lowercase())
                    && k.bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
                if !key_ok {
                    errors.push(FieldError::new(
                        "features",
                        "invalid_feature",
                        "feature names are 1-64 of a-z, 0-9 and _, starting with a letter",
                    ));
                    continue;
                }
                let value_ok = match v {
                    Value::Null | Value::Bool(_) => true,
                    Value::Number(n) => n.as_u64().is_some(),
                    _ => false,
                };
                if !value_ok {
                    errors.push(FieldError::new(
                        format!("features.{k}"),
                        "invalid_limit",
                        "a limit is a non-negative integer, a boolean, or null (unlimited)",
                    ));
                }
            }
        }
        _ => errors.push(FieldError::new(
            "features",
            "invalid_type",
            "must be an object",
        )),
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(Invalid(errors))
    }
}

/// The field a check constraint of `plans` guards (validation runs first;
/// this keeps a constraint the code does not know about a 422, not a 500).
fn check_violation(e: &sqlx::Error) -> Option<Invalid> {
    let sqlx::Error::Database(db) = e else {
        return None;
    };
    if db.code().as_deref() != Some("23514") {
        return None;
    }
    let field = match db.constraint().unwrap_or_default() {
        "plans_code_format" => "code",
        "plans_price" => "price_minor",
        "plans_currency" => "currency",
        "plans_interval" => "interval",
        "plans_trial" => "trial_days",
        "plans_credits" => "credits_per_period",
        "plans_seats" => "seat_limit",
        "plans_features" => "features",
        "plans_overage" => "credit_overage_limit",
        _ => "",
    };
    Some(Invalid::field(
        field,
        "check_violation",
        format!(
            "rejected by the catalog's rule {}",
            db.constraint().unwrap_or("?")
        ),
    ))
}

/// Creates or replaces a plan. Returns it and whether it was created.
pub async fn put(
    pool: &PgPool,
    code: &str,
    mut input: PlanInput,
) -> Result<(AdminPlan, bool), PlanError> {
    validate(code, &mut input)?;
    let mut tx = admin_tx(pool).await?;
    let mut before = repo::admin_plan(&mut tx, code, false).await?;
    if before
        .as_ref()
        .is_some_and(|b| b.plan.currency != input.currency)
    {
        // No subscription may move onto the plan while its currency changes.
        // Subscription changes lock their row (`for update`) before they read
        // plans; this lock waits for those running and holds new ones back
        // until the commit (plain reads go on).
        sqlx::query("lock table subscriptions in exclusive mode")
            .execute(&mut *tx)
            .await?;
        before = repo::admin_plan(&mut tx, code, true).await?;
        if before
            .as_ref()
            .is_some_and(|b| b.plan.currency != input.currency)
        {
            let n = repo::plan_subscriber_count(&mut tx, code).await?;
            if n > 0 {
                return Err(PlanError::CurrencyInUse { subscribers: n });
            }
        }
    }
    let (plan, created) = repo::upsert_plan(&mut tx, code, &input)
        .await
        .map_err(|e| match check_violation(&e) {
            Some(invalid) => PlanError::Invalid(invalid),
            None => PlanError::Db(e),
        })?;
    tx.commit().await?;
    tracing::info!(
        plan = %code,
        created,
        active = plan.active,
        price_minor = plan.plan.price_minor,
        currency = %plan.plan.currency,
        "plan saved"
    );
    Ok((plan, created))
}

/// Hides a plan from the catalog; orgs on it keep it.
pub async fn deactivate(pool: &PgPool, code: &str) -> Result<AdminPlan, PlanError> {
    if code == FREE_PLAN {
        return Err(PlanError::FreePlanRequired);
    }
    let mut tx = admin_tx(pool).await?;
    let plan = repo::deactivate_plan(&mut tx, code)
        .await?
        .ok_or_else(|| PlanError::UnknownPlan(code.to_owned()))?;
    tx.commit().await?;
    tracing::info!(plan = %code, "plan deactivated");
    Ok(plan)
}
