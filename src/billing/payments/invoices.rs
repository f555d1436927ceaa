//! Invoices of an org: issued by Tenantry for manual payments (one per org
//! and period, marked paid by a platform admin), mirrored from Stripe's
//! webhooks, and recorded for one-off credit pack purchases.

use chrono::{DateTime, Duration, Utc};
use serde::Serialize;
use sqlx::PgConnection;
use utoipa::ToSchema;
use uuid::Uuid;

use super::error::PaymentError;
use crate::billing::model::Plan;
use crate::core::pagination::{Page, PageQuery};

/// How long after its period starts a manual invoice is due.
pub const MANUAL_PAYMENT_TERMS: Duration = Duration::days(14);

/// An invoice (or a one-off payment) of an org.
#[derive(Debug, Clone, Serialize, ToSchema, sqlx::FromRow)]
pub struct Invoice {
    pub id: Uuid,
    pub org_id: Uuid,
    /// Per-org invoice number (`INV-000001`), or Stripe's.
    #[schema(example = "INV-000001")]
    pub number: String,
    /// `draft`, `open`, `paid`, `void` or `uncollectible`.
    #[schema(example = "open")]
    pub status: String,
    #[schema(example = 2900)]
    pub amount_due_minor: i64,
    #[schema(example = 0)]
    pub amount_paid_minor: i64,
    #[schema(example = "USD")]
    pub currency: String,
    pub period_start: Option<DateTime<Utc>>,
    pub period_end: Option<DateTime<Utc>>,
    pub description: String,
    /// `manual` or `stripe`.
    #[schema(example = "manual")]
    pub provider: String,
    /// Stripe's id (`in_...`, or `cs_...` for a credit pack purchase).
    pub provider_invoice_id: Option<String>,
    /// Where the customer can see and pay the invoice (Stripe).
    pub hosted_url: Option<String>,
    pub created_at: DateTime<Utc>,
    pub paid_at: Option<DateTime<Utc>>,
    pub due_at: Option<DateTime<Utc>>,
}

const COLUMNS: &str = "id, org_id, number, status, amount_due_minor, amount_paid_minor, currency,
     period_start, period_end, description, provider, provider_invoice_id, hosted_url,
     created_at, paid_at, due_at";

/// Issues the open manual invoice of `plan` for the period starting at
/// `period_start`, in the org's tenant transaction `conn`. Idempotent per
/// (org, period_start): a second call returns the invoice of the first.
///
/// Called on upgrades and period rollovers of paid plans when the payment
/// provider is manual; a platform admin marks the invoice paid.
pub async fn issue_invoice(
    conn: &mut PgConnection,
    org_id: Uuid,
    plan: &Plan,
    period_start: DateTime<Utc>,
    period_end: DateTime<Utc>,
) -> Result<Invoice, PaymentError> {
    if plan.price_minor <= 0 {
        return Err(PaymentError::FreePlan(plan.code.clone()));
    }
    if period_end <= period_start {
        return Err(PaymentError::InvoicePeriod {
            start: period_start,
            end: period_end,
        });
    }
    if let Some(existing) = manual_for_period(conn, org_id, period_start).await? {
        return Ok(existing);
    }
    let number = next_number(conn, org_id).await?;
    let description = format!(
        "{} plan, {} to {}",
        plan.name,
        period_start.format("%Y-%m-%d"),
        period_end.format("%Y-%m-%d")
    );
    let inserted: Option<Invoice> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "insert into invoices (id, org_id, number, status, amount_due_minor, currency,
                               period_start, period_end, description, provider, due_at)
         values ($1, $2, $3, 'open', $4, $5, $6, $7, $8, 'manual', $9)
         on conflict (org_id, period_start) where provider = 'manual' and period_start is not null
         do nothing
         returning {COLUMNS}"
    )))
    .bind(Uuid::now_v7())
    .bind(org_id)
    .bind(&number)
    .bind(plan.price_minor)
    .bind(&plan.currency)
    .bind(period_start)
    .bind(period_end)
    .bind(&description)
    .bind(period_start + MANUAL_PAYMENT_TERMS)
    .fetch_optional(&mut *conn)
    .await?;
    match inserted {
        Some(invoice) => Ok(invoice),
        // Issued concurrently by another transaction that committed first.
        None => manual_for_period(conn, org_id, period_start)
            .await?
            .ok_or(PaymentError::InvoiceVanished),
    }
}

async fn manual_for_period(
    conn: &mut PgConnection,
    org_id: Uuid,
    period_start: DateTime<Utc>,
) -> Result<Option<Invoice>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "select {COLUMNS} from invoices
         where org_id = $1 and provider = 'manual' and period_start = $2"
    )))
    .bind(org_id)
    .bind(period_start)
    .fetch_optional(conn)
    .await
}

/// The org's next invoice number, `INV-000001` upwards. Numbering is
/// serialised per org by a transaction-scoped advisory lock, so two
/// concurrent invoices of one org never draw the same number.
pub(crate) async fn next_number(
    conn: &mut PgConnection,
    org_id: Uuid,
) -> Result<String, sqlx::Error> {
    sqlx::query(
        "select pg_advisory_xact_lock(hashtextextended('tenantry.invoices:' || $1::text, 0))",
    )
    .bind(org_id)
    .execute(&mut *conn)
    .await?;
    let count: i64 = sqlx::query_scalar("select count(*) from invoices where org_id = $1")
        .bind(org_id)
        .fetch_one(&mut *conn)
        .await?;
    Ok(format!("INV-{:06}", count + 1))
}

/// One page of the org's invoices, newest first.
pub async fn list(
    conn: &mut PgConnection,
    org_id: Uuid,
    q: &PageQuery,
) -> Result<Page<Invoice>, PaymentError> {
    let limit = q.limit()?;
    let after: Option<(DateTime<Utc>, Uuid)> = q.after()?;
    let rows: Vec<Invoice> = match after {
        None => {
            sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "select {COLUMNS} from invoices where org_id = $1
                 order by created_at desc, id desc limit $2"
            )))
            .bind(org_id)
            .bind(limit + 1)
            .fetch_all(conn)
            .await?
        }
        Some((created_at, id)) => {
            sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "select {COLUMNS} from invoices where org_id = $1
                   and (created_at, id) < ($3, $4)
                 order by created_at desc, id desc limit $2"
            )))
            .bind(org_id)
            .bind(limit + 1)
            .bind(created_at)
            .bind(id)
            .fetch_all(conn)
            .await?
        }
    };
    Ok(Page::from_rows(rows, limit, |i| (i.created_at, i.id)))
}

/// A platform admin records that a manual invoice was paid (bank transfer,
/// cheque ...): the invoice is paid in full, and a past_due subscription is
/// active again once no other manual invoice of the org is overdue.
/// Marking a paid invoice again changes nothing.
pub async fn mark_paid(
    conn: &mut PgConnection,
    org_id: Uuid,
    invoice_id: Uuid,
) -> Result<Invoice, PaymentError> {
    let current: Invoice = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "select {COLUMNS} from invoices where org_id = $1 and id = $2 for update"
    )))
    .bind(org_id)
    .bind(invoice_id)
    .fetch_optional(&mut *conn)
    .await?
    .ok_or(PaymentError::InvoiceNotFound)?;
    if current.status == "paid" {
        return Ok(current);
    }
    if current.provider != "manual" {
        return Err(PaymentError::ProviderManaged);
    }
    if current.status == "void" {
        return Err(PaymentError::InvoiceVoid);
    }
    let paid: Invoice = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "update invoices set status = 'paid', amount_paid_minor = amount_due_minor, paid_at = now()
         where org_id = $1 and id = $2
         returning {COLUMNS}"
    )))
    .bind(org_id)
    .bind(invoice_id)
    .fetch_one(&mut *conn)
    .await?;
    sqlx::query(
        "update subscriptions set status = 'active', updated_at = now()
         where org_id = $1 and status = 'past_due'
           and not exists (select 1 from invoices i
                           where i.org_id = $1 and i.provider = 'manual' and i.status = 'open'
                             and i.due_at < now())",
    )
    .bind(org_id)
    .execute(&mut *conn)
    .await?;
    crate::core::audit::write(
        conn,
        org_id,
        None,
        crate::core::audit::Entry {
            action: "invoice.paid",
            target_type: "invoice",
            target_id: Some(invoice_id.to_string()),
            before: Some(serde_json::json!({
                "status": current.status, "amount_paid_minor": current.amount_paid_minor
            })),
            after: Some(serde_json::json!({
                "status": paid.status, "amount_paid_minor": paid.amount_paid_minor
            })),
        },
    )
    .await?;
    Ok(paid)
}

/// An invoice as Stripe describes it, to mirror.
#[derive(Debug, Clone)]
pub struct ProviderInvoice<'a> {
    pub provider_invoice_id: &'a str,
    pub number: Option<&'a str>,
    /// `open` or `paid`.
    pub status: &'a str,
    pub amount_due_minor: i64,
    pub amount_paid_minor: i64,
    pub currency: String,
    pub period: Option<(DateTime<Utc>, DateTime<Utc>)>,
    pub description: String,
    pub hosted_url: Option<&'a str>,
    pub paid_at: Option<DateTime<Utc>>,
    pub due_at: Option<DateTime<Utc>>,
}

/// Inserts or updates Stripe's invoice in the org (by Stripe's id). A paid
/// invoice stays paid whatever older event arrives later.
pub async fn upsert_provider_invoice(
    conn: &mut PgConnection,
    org_id: Uuid,
    inv: &ProviderInvoice<'_>,
) -> Result<Invoice, sqlx::Error> {
    let existing: Option<Uuid> = sqlx::query_scalar(
        "select id from invoices where org_id = $1 and provider_invoice_id = $2 for update",
    )
    .bind(org_id)
    .bind(inv.provider_invoice_id)
    .fetch_optional(&mut *conn)
    .await?;
    let paid_at = if inv.status == "paid" {
        Some(inv.paid_at.unwrap_or_else(Utc::now))
    } else {
        None
    };
    let (period_start, period_end) = match inv.period {
        Some((s, e)) if e > s => (Some(s), Some(e)),
        _ => (None, None),
    };
    if let Some(id) = existing {
        let row: Invoice = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "update invoices set
                 status = case when status = 'paid' then 'paid' else $3 end,
                 amount_due_minor = $4,
                 amount_paid_minor = greatest(amount_paid_minor, $5),
                 hosted_url = coalesce($6, hosted_url),
                 paid_at = coalesce(paid_at, $7),
                 due_at = coalesce($8, due_at)
             where org_id = $1 and id = $2
             returning {COLUMNS}"
        )))
        .bind(org_id)
        .bind(id)
        .bind(inv.status)
        .bind(inv.amount_due_minor)
        .bind(inv.amount_paid_minor)
        .bind(inv.hosted_url)
        .bind(paid_at)
        .bind(inv.due_at)
        .fetch_one(&mut *conn)
        .await?;
        return Ok(row);
    }
    let number = match inv.number {
        Some(n) if !n.is_empty() && !number_taken(conn, org_id, n).await? => n.to_owned(),
        _ => next_number(conn, org_id).await?,
    };
    let row: Invoice = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "insert into invoices (id, org_id, number, status, amount_due_minor, amount_paid_minor,
                               currency, period_start, period_end, description, provider,
                               provider_invoice_id, hosted_url, paid_at, due_at)
         values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, 'stripe', $11, $12, $13, $14)
         returning {COLUMNS}"
    )))
    .bind(Uuid::now_v7())
    .bind(org_id)
    .bind(&number)
    .bind(inv.status)
    .bind(inv.amount_due_minor)
    .bind(inv.amount_paid_minor)
    .bind(&inv.currency)
    .bind(period_start)
    .bind(period_end)
    .bind(&inv.description)
    .bind(inv.provider_invoice_id)
    .bind(inv.hosted_url)
    .bind(paid_at)
    .bind(inv.due_at)
    .fetch_one(&mut *conn)
    .await?;
    Ok(row)
}

async fn number_taken(
    conn: &mut PgConnection,
    org_id: Uuid,
    number: &str,
) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("select exists (select 1 from invoices where org_id = $1 and number = $2)")
        .bind(org_id)
        .bind(number)
        .fetch_one(conn)
        .await
}
