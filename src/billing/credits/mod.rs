//! Credits: an append-only, double-entry ledger (see
//! `migrations/20261129000002_billing_core.up.sql`). Every write runs one
//! SQL function that, under the org's account lock, checks the idempotency
//! key, moves the credits, books the ledger lines and records the key with
//! its response, all in the caller's transaction. The functions run with the
//! application role's rights under RLS; what guards the money whatever the
//! code does is in the database: the role may insert ledger lines but never
//! update or delete them, the balance's floor is a check constraint, and
//! `tenantry admin credits reconcile` proves the stored balances equal the
//! ledger's sums.

pub mod batch;
pub mod error;
pub mod model;
pub mod prune;
pub mod routes;
pub mod sweep;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::auth::perm;
use crate::auth::rbac::OrgCall;
use crate::core::db::{MembershipRow, TenantTx};
use crate::core::error::{FieldError, Invalid};
use crate::core::pagination::{Page, PageQuery};
use crate::core::validate::Fields;
use error::{CreditError, Shortfall};
use model::*;

/// The response of a credit write: recorded with its idempotency key, and
/// replayed as it was for a repeat of the same request.
#[derive(Debug)]
pub struct Outcome {
    /// The HTTP status the ledger function recorded (100 to 999).
    pub status: u16,
    pub body: Value,
    pub replayed: bool,
}

/// A validated `Idempotency-Key` and the fingerprint of the request it came with.
pub struct Idempotency {
    pub key: String,
    pub hash: [u8; 32],
}

impl Idempotency {
    /// Fingerprints `request` (scope, path ids and validated body) for `key`.
    pub fn new(key: String, scope: &str, request: &impl Serialize) -> Self {
        let mut h = Sha256::new();
        h.update(scope.as_bytes());
        h.update([0]);
        h.update(serde_json::to_vec(request).unwrap_or_default());
        Idempotency {
            key,
            hash: h.finalize().into(),
        }
    }
}

/// Maps the ledger's own SQLSTATEs (and bigint overflow) to its refusals.
fn ledger_error(e: sqlx::Error) -> CreditError {
    if let sqlx::Error::Database(db) = &e
        && let Some(code) = db.code()
    {
        let detail = db
            .try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
            .and_then(|pg| pg.detail());
        if let Some(refusal) = ledger_refusal(&code, db.message(), detail) {
            return refusal;
        }
    }
    e.into()
}

/// One of the ledger's refusals; `None` for any other code.
fn ledger_refusal(code: &str, message: &str, detail: Option<&str>) -> Option<CreditError> {
    let message = message.to_owned();
    Some(match code {
        "TC402" => CreditError::InsufficientCredits(
            detail.and_then(|d| serde_json::from_str::<Shortfall>(d).ok()),
        ),
        "TC404" => CreditError::HoldNotFound,
        "TC409" => CreditError::KeyInUse(message),
        "TC410" => CreditError::HoldExpired(message),
        "TC411" => CreditError::HoldClosed(message),
        "TC413" => CreditError::ExceedsHold(message),
        "TC422" => CreditError::KeyReused(message),
        "TC400" => Invalid::field("amount", "invalid", message).into(),
        // numeric_value_out_of_range: a sum past i64.
        "22003" => Invalid::field(
            "amount",
            "out_of_range",
            "the resulting balance would be out of range",
        )
        .into(),
        _ => return None,
    })
}

fn outcome(v: Value) -> Result<Outcome, CreditError> {
    let status = v["status"]
        .as_u64()
        .filter(|s| (100..1000).contains(s))
        .ok_or_else(|| anyhow::anyhow!("ledger function returned no status"))?;
    Ok(Outcome {
        status: status as u16,
        replayed: v["replayed"].as_bool().unwrap_or(false),
        body: v.get("body").cloned().unwrap_or(Value::Null),
    })
}

fn check_amount(f: &mut Fields, field: &str, amount: i64) {
    f.check(if (1..=MAX_AMOUNT).contains(&amount) {
        Ok(())
    } else {
        Err(FieldError::new(
            field,
            "out_of_range",
            format!("must be between 1 and {MAX_AMOUNT}"),
        ))
    });
}

fn check_description(f: &mut Fields, d: &Option<String>) -> Option<String> {
    let d = d.as_deref().map(str::trim).filter(|d| !d.is_empty())?;
    if d.chars().count() > MAX_DESCRIPTION || d.contains('\0') {
        f.check::<()>(Err(FieldError::new(
            "description",
            "invalid",
            format!("at most {MAX_DESCRIPTION} characters, no NUL"),
        )));
        return None;
    }
    Some(d.to_owned())
}

/// Spends through the batcher (see [`batch`]): one statement that
/// authorises the caller as [`OrgCall`] describes and commits, together with
/// the other spends in flight; an org's account lock is held only inside
/// Postgres, once per batch.
pub async fn spend(
    pool: &PgPool,
    batcher: &batch::SpendBatcher,
    call: &OrgCall<perm::CreditsSpend>,
    input: &SpendCredits,
    key: Idempotency,
) -> Result<Outcome, CreditError> {
    let mut f = Fields::default();
    check_amount(&mut f, "amount", input.amount);
    let description = check_description(&mut f, &input.description);
    f.finish()?;
    let item = batch::SpendItem {
        org_id: call.org_id,
        user_id: call.user_id,
        key_hash: call.key_hash,
        permission: call.permission(),
        amount: input.amount,
        description,
        key: key.key,
        hash: key.hash,
    };
    let v = batcher.submit(pool, item).await?;
    if let Some(refused) = v.get("refused") {
        let membership = refused.as_object().map(|m| MembershipRow {
            role: m["role"].as_str().unwrap_or_default().to_owned(),
            permissions: serde_json::from_value(m["permissions"].clone()).unwrap_or_default(),
        });
        return Err(CreditError::SpendRefused(membership));
    }
    if let Some(e) = v.get("error") {
        let code = e["code"].as_str().unwrap_or_default();
        let message = e["message"].as_str().unwrap_or_default();
        return Err(
            ledger_refusal(code, message, e["detail"].as_str()).unwrap_or_else(|| {
                CreditError::Internal(anyhow::anyhow!("spend failed: {code} {message}"))
            }),
        );
    }
    if v["touch"] == Value::Bool(true)
        && let Some(key_id) = v["key_id"].as_str().and_then(|k| k.parse().ok())
    {
        call.touch_key(key_id);
    }
    outcome(v)
}

pub async fn hold(
    tx: &mut TenantTx,
    input: &CreateHold,
    key: &Idempotency,
) -> Result<Outcome, CreditError> {
    let mut f = Fields::default();
    check_amount(&mut f, "amount", input.amount);
    let ttl = input.ttl_seconds.unwrap_or(DEFAULT_HOLD_SECS);
    f.check(if (1..=MAX_HOLD_SECS).contains(&ttl) {
        Ok(())
    } else {
        Err(FieldError::new(
            "ttl_seconds",
            "out_of_range",
            format!("must be between 1 and {MAX_HOLD_SECS}"),
        ))
    });
    let description = check_description(&mut f, &input.description);
    f.finish()?;
    let expires_at = Utc::now() + chrono::Duration::seconds(ttl);
    let v: Value = sqlx::query_scalar("select app.credit_hold($1, $2, $3, $4, $5, $6)")
        .bind(Uuid::now_v7())
        .bind(input.amount)
        .bind(expires_at)
        .bind(description)
        .bind(&key.key)
        .bind(&key.hash[..])
        .fetch_one(tx.conn())
        .await
        .map_err(ledger_error)?;
    outcome(v)
}

/// Captures (`Some(input)`) or releases (`None`) an open hold.
pub async fn settle_hold(
    tx: &mut TenantTx,
    hold_id: Uuid,
    capture: Option<&CaptureHold>,
    key: &Idempotency,
) -> Result<Outcome, CreditError> {
    let mut f = Fields::default();
    let mut description = None;
    if let Some(c) = capture {
        if let Some(a) = c.amount {
            check_amount(&mut f, "amount", a);
        }
        description = check_description(&mut f, &c.description);
    }
    f.finish()?;
    let v: Value = sqlx::query_scalar("select app.credit_settle_hold($1, $2, $3, $4, $5, $6)")
        .bind(hold_id)
        .bind(capture.and_then(|c| c.amount))
        .bind(capture.is_none())
        .bind(description)
        .bind(&key.key)
        .bind(&key.hash[..])
        .fetch_one(tx.conn())
        .await
        .map_err(ledger_error)?;
    outcome(v)
}

pub async fn grant(
    tx: &mut TenantTx,
    input: &CreateGrant,
    key: &Idempotency,
) -> Result<Outcome, CreditError> {
    let mut f = Fields::default();
    check_amount(&mut f, "amount", input.amount);
    f.check(if SOURCES.contains(&input.source.as_str()) {
        Ok(())
    } else {
        Err(FieldError::new(
            "source",
            "unknown_source",
            format!("must be one of: {}", SOURCES.join(", ")),
        ))
    });
    f.check(match input.priority {
        Some(p) if !(-1000..=1000).contains(&p) => Err(FieldError::new(
            "priority",
            "out_of_range",
            "must be between -1000 and 1000",
        )),
        _ => Ok(()),
    });
    f.check(match input.expires_at {
        Some(t) if t <= Utc::now() => Err(FieldError::new(
            "expires_at",
            "in_the_past",
            "must be in the future",
        )),
        _ => Ok(()),
    });
    let description = check_description(&mut f, &input.description);
    f.finish()?;
    let v: Value = sqlx::query_scalar("select app.credit_grant_api($1, $2, $3, $4, $5, $6, $7)")
        .bind(input.amount)
        .bind(&input.source)
        .bind(input.priority.unwrap_or(0))
        .bind(input.expires_at)
        .bind(description)
        .bind(&key.key)
        .bind(&key.hash[..])
        .fetch_one(tx.conn())
        .await
        .map_err(|e| match &e {
            sqlx::Error::Database(db) if db.code().as_deref() == Some("TC400") => {
                Invalid::field("expires_at", "in_the_past", db.message().to_owned()).into()
            }
            _ => ledger_error(e),
        })?;
    outcome(v)
}

const GRANT_COLUMNS: &str =
    "id, source, amount, remaining, priority, expires_at, description, created_at";

/// The balance, holds and live grants now, or the balance and holds at a past instant.
pub async fn credits(tx: &mut TenantTx, at: Option<DateTime<Utc>>) -> Result<Credits, CreditError> {
    let now = Utc::now();
    if at.is_some_and(|t| t > now || t.timestamp() < 0) {
        return Err(CreditError::InvalidAt);
    }
    sqlx::query("select app.credit_refresh()")
        .execute(tx.conn())
        .await?;
    let org_id = tx.org_id();
    let conn = tx.conn();
    let overage_limit = plan_overage_limit(conn, org_id).await?;
    if let Some(at) = at {
        let (balance, held) = balance_at(conn, org_id, at).await?;
        return Ok(Credits {
            balance,
            held,
            overage_limit,
            as_of: at,
            grants: Vec::new(),
        });
    }
    let (balance, held): (i64, i64) =
        sqlx::query_as("select available + overage, held from credit_accounts where org_id = $1")
            .bind(org_id)
            .fetch_optional(&mut *conn)
            .await?
            .unwrap_or((0, 0));
    let grants = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "select {GRANT_COLUMNS} from credit_grants
         where org_id = $1 and remaining > 0
         order by priority desc, expires_at asc nulls last, created_at, id"
    )))
    .bind(org_id)
    .fetch_all(&mut *conn)
    .await?;
    Ok(Credits {
        balance,
        held,
        overage_limit,
        as_of: now,
        grants,
    })
}

async fn plan_overage_limit(conn: &mut PgConnection, org_id: Uuid) -> sqlx::Result<i64> {
    Ok(sqlx::query_scalar(
        "select p.credit_overage_limit from subscriptions s
         join plans p on p.code = s.plan_code where s.org_id = $1",
    )
    .bind(org_id)
    .fetch_optional(conn)
    .await?
    .unwrap_or(0))
}

/// The balance and held credits at `at`, summed from the ledger.
pub async fn balance_at(
    conn: &mut PgConnection,
    org_id: Uuid,
    at: DateTime<Utc>,
) -> sqlx::Result<(i64, i64)> {
    sqlx::query_as(
        "select coalesce(sum(case when dst in ('available', 'overage') then amount else 0 end)
                       - sum(case when src in ('available', 'overage') then amount else 0 end), 0)::bigint,
                coalesce(sum(case when dst = 'held' then amount else 0 end)
                       - sum(case when src = 'held' then amount else 0 end), 0)::bigint
         from credit_ledger where org_id = $1 and effective_at <= $2",
    )
    .bind(org_id)
    .bind(at)
    .fetch_one(conn)
    .await
}

/// The ledger, newest line first.
pub async fn ledger(tx: &mut TenantTx, q: &PageQuery) -> Result<Page<LedgerLine>, CreditError> {
    let limit = q.limit()?;
    let before: Option<i64> = q.after()?;
    sqlx::query("select app.credit_refresh()")
        .execute(tx.conn())
        .await?;
    let org_id = tx.org_id();
    let rows: Vec<LedgerLine> = sqlx::query_as(
        "select id, txn as transaction_id, kind, src as from, dst as to, amount, grant_id,
                hold_id, effective_at, recorded_at, description, actor_user_id, actor_api_key_id
         from credit_ledger where org_id = $1 and ($2::bigint is null or id < $2)
         order by id desc limit $3",
    )
    .bind(org_id)
    .bind(before)
    .bind(limit + 1)
    .fetch_all(tx.conn())
    .await?;
    Ok(Page::from_rows(rows, limit, |l| l.id))
}

pub async fn get_hold(tx: &mut TenantTx, hold_id: Uuid) -> Result<Hold, CreditError> {
    sqlx::query("select app.credit_refresh()")
        .execute(tx.conn())
        .await?;
    let org_id = tx.org_id();
    sqlx::query_as(
        "select id, amount, captured, status, description, expires_at, created_at, closed_at
         from credit_holds where org_id = $1 and id = $2",
    )
    .bind(org_id)
    .bind(hold_id)
    .fetch_optional(tx.conn())
    .await?
    .ok_or(CreditError::HoldNotFound)
}

/// Every difference between the stored balances, grant remainders and holds
/// and the ledger's sums: `(org_id, item, stored, ledger)`. Needs a role
/// that sees every org past RLS (the migration role: a superuser or a role
/// with BYPASSRLS); any other role would see no rows and prove nothing.
pub async fn reconcile(conn: &mut PgConnection) -> anyhow::Result<Vec<(Uuid, String, i64, i64)>> {
    let sees_all: bool = sqlx::query_scalar(
        "select rolsuper or rolbypassrls from pg_roles where rolname = current_user",
    )
    .fetch_one(&mut *conn)
    .await?;
    if !sees_all {
        anyhow::bail!(
            "reconcile needs a role that bypasses row level security (MIGRATION_DATABASE_URL's owner role)"
        );
    }
    Ok(
        sqlx::query_as("select org_id, item, stored, ledger from app.credit_reconcile()")
            .fetch_all(conn)
            .await?,
    )
}
