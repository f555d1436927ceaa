//! Stripe's webhooks: the signature is checked on the raw body, then the
//! event's id is recorded in `app.webhook_events` in the same transaction as
//! its effect, inside the org's tenant context. A replay finds the id and
//! does nothing; a crash before commit leaves neither the id nor the effect,
//! so Stripe's retry applies it once.
//!
//! Stripe does not promise order: subscription state is applied only from
//! events at least as new as the last one applied
//! (`subscriptions.provider_state_at`), and a deleted subscription is never
//! revived by an older event about it.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::{PgConnection, Postgres, Transaction};
use utoipa::ToSchema;
use uuid::Uuid;

use super::checkout::store_customer;
use super::invoices::{ProviderInvoice, upsert_provider_invoice};
use super::signature::{self, SignatureError};
use super::stripe_objects::{
    CheckoutSession, Event, EventEnvelope, Expandable, Invoice, Metadata, ObjectHead,
    Subscription as StripeSubscription, non_empty,
};
use crate::app::AppState;
use crate::config::PaymentProviderKind;
use crate::core::db::{SystemScope, TenantTx, system_tx};
use crate::core::error::ApiError;
use crate::jobs::tasks::email::SendEmail;
use crate::mail::templates::Template;

/// The answer to Stripe.
#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookAck {
    pub received: bool,
    /// The event had been processed before: nothing was done.
    pub duplicate: bool,
}

fn invalid_event(detail: &str) -> ApiError {
    ApiError::bad_request("invalid_event", format!("not a Stripe event: {detail}"))
}

/// Reads a Stripe event: `id` (`evt_...`), `type`, `created`, `data.object`.
pub fn parse_event(body: &[u8]) -> Result<Event, ApiError> {
    let v: Value =
        serde_json::from_slice(body).map_err(|_| invalid_event("the body is not JSON"))?;
    // JSON of another shape than an object has none of an event's fields.
    let envelope = EventEnvelope::deserialize(v).unwrap_or_default();
    let id = envelope
        .id
        .filter(|id| id.starts_with("evt_") && id.len() <= 255)
        .ok_or_else(|| invalid_event("no id starting evt_"))?;
    let kind = envelope
        .kind
        .filter(|t| !t.is_empty() && t.len() <= 255)
        .ok_or_else(|| invalid_event("no type"))?;
    let created = envelope
        .created
        .and_then(|t| DateTime::from_timestamp(t, 0))
        .ok_or_else(|| invalid_event("no created timestamp"))?;
    let Some(object) = envelope.data.object else {
        return Err(invalid_event("no data.object"));
    };
    Ok(Event::new(id, kind, created, object))
}

/// Verifies, records and applies one delivery of `POST /api/v1/webhooks/stripe`.
pub async fn receive(
    state: &AppState,
    signature_header: Option<&str>,
    body: &[u8],
) -> Result<WebhookAck, ApiError> {
    let billing = &state.config.billing;
    if billing.provider != PaymentProviderKind::Stripe || billing.stripe_webhook_secrets.is_empty()
    {
        return Err(ApiError::bad_request(
            "invalid_signature",
            "Stripe webhooks are not configured here",
        ));
    }
    let now = Utc::now().timestamp();
    signature::verify(signature_header, body, &billing.stripe_webhook_secrets, now).map_err(
        |e| match e {
            SignatureError::Expired => ApiError::bad_request(
                "signature_expired",
                "the signature's timestamp is more than 300 seconds from now",
            ),
            SignatureError::Malformed => ApiError::bad_request(
                "invalid_signature",
                "missing or malformed Stripe-Signature header (t=...,v1=...)",
            ),
            SignatureError::Mismatch => ApiError::bad_request(
                "invalid_signature",
                "no v1 signature matches a configured webhook secret",
            ),
        },
    )?;
    let event = parse_event(body)?;
    let head: ObjectHead = event.object();

    let org_hint = match org_hint(&head) {
        Some(org) => Some(org),
        None => match customer_of(&head) {
            Some(customer) => org_of_customer(state, customer).await?,
            None => None,
        },
    };
    let mut tx = match org_hint {
        Some(org_id) => {
            let mut tx =
                TenantTx::enter_as_system(&state.pool, org_id, SystemScope::Webhooks).await?;
            // Its writes reference the org after locking the subscription:
            // wait for a request holding the org lock first.
            crate::billing::repo::key_share_org(tx.conn(), org_id).await?;
            WebhookTx::Tenant(tx)
        }
        None => WebhookTx::Plain(system_tx(&state.pool, SystemScope::Webhooks).await?),
    };
    let conn = tx.conn();
    let org_id = match org_hint {
        Some(org_id) => {
            let exists: bool =
                sqlx::query_scalar("select exists (select 1 from organizations where id = $1)")
                    .bind(org_id)
                    .fetch_one(&mut *conn)
                    .await?;
            exists.then_some(org_id)
        }
        None => None,
    };
    let recorded: Option<String> = sqlx::query_scalar(
        "insert into app.webhook_events (provider, event_id, type, created, org_id, object_id)
         values ('stripe', $1, $2, $3, $4, $5)
         on conflict do nothing returning event_id",
    )
    .bind(&event.id)
    .bind(&event.kind)
    .bind(event.created)
    .bind(org_id)
    .bind(head.id.as_deref())
    .fetch_optional(&mut *conn)
    .await?;
    if recorded.is_none() {
        return Ok(WebhookAck {
            received: true,
            duplicate: true,
        });
    }
    match org_id {
        Some(org_id) => apply(state, conn, org_id, &event, &head).await?,
        None => tracing::info!(
            event = %event.id, kind = %event.kind,
            "Stripe event for no known org: recorded, nothing to do"
        ),
    }
    tx.commit().await?;
    Ok(WebhookAck {
        received: true,
        duplicate: false,
    })
}

enum WebhookTx {
    Tenant(TenantTx),
    Plain(Transaction<'static, Postgres>),
}

impl WebhookTx {
    fn conn(&mut self) -> &mut PgConnection {
        match self {
            WebhookTx::Tenant(tx) => tx.conn(),
            WebhookTx::Plain(tx) => tx,
        }
    }

    async fn commit(self) -> Result<(), sqlx::Error> {
        match self {
            WebhookTx::Tenant(tx) => tx.commit().await,
            WebhookTx::Plain(tx) => tx.commit().await,
        }
    }
}

/// The org an object names in the metadata Tenantry gave it.
fn org_hint(obj: &ObjectHead) -> Option<Uuid> {
    [
        obj.metadata.org_id.as_deref(),
        obj.client_reference_id.as_deref(),
        obj.subscription_details.metadata.org_id.as_deref(),
        obj.parent.subscription_details.metadata.org_id.as_deref(),
        obj.lines.first().and_then(|l| l.metadata.org_id.as_deref()),
    ]
    .into_iter()
    .find_map(|v| v.and_then(|s| Uuid::parse_str(s).ok()))
}

/// An id given as a string or as an expanded object.
fn id_of(v: Option<&Expandable>) -> Option<&str> {
    v.and_then(Expandable::id).filter(|s| !s.is_empty())
}

fn customer_of(obj: &ObjectHead) -> Option<&str> {
    id_of(obj.customer.as_ref())
}

/// Stripe's lowercase ISO 4217 code as stored (`usd` -> `USD`).
fn currency_of(v: Option<&str>) -> Option<String> {
    v.map(str::to_ascii_uppercase)
        .filter(|c| c.len() == 3 && c.bytes().all(|b| b.is_ascii_uppercase()))
}

fn unix(v: Option<i64>) -> Option<DateTime<Utc>> {
    v.and_then(|t| DateTime::from_timestamp(t, 0))
}

/// The org of a Stripe customer, read across orgs by the webhook handler.
async fn org_of_customer(state: &AppState, customer: &str) -> Result<Option<Uuid>, sqlx::Error> {
    let mut tx = system_tx(&state.pool, SystemScope::Webhooks).await?;
    let org: Option<Uuid> = sqlx::query_scalar(
        "select org_id from app.billing_customer_orgs where provider = 'stripe' and customer_id = $1",
    )
    .bind(customer)
    .fetch_optional(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(org)
}

async fn apply(
    state: &AppState,
    conn: &mut PgConnection,
    org_id: Uuid,
    event: &Event,
    head: &ObjectHead,
) -> Result<(), ApiError> {
    if let Some(customer) = customer_of(head) {
        store_customer(conn, org_id, PaymentProviderKind::Stripe, customer).await?;
    }
    match event.kind.as_str() {
        "checkout.session.completed" | "checkout.session.async_payment_succeeded" => {
            checkout_completed(conn, org_id, event).await
        }
        "customer.subscription.created" | "customer.subscription.updated" => {
            subscription_changed(conn, org_id, event).await
        }
        "customer.subscription.deleted" => subscription_deleted(conn, org_id, event).await,
        "invoice.paid" => invoice_paid(conn, org_id, event).await,
        "invoice.payment_failed" => invoice_payment_failed(state, conn, org_id, event).await,
        other => {
            tracing::debug!(event = %event.id, kind = other, "Stripe event type not handled");
            Ok(())
        }
    }
}

/// A finished Checkout: a paid credit pack grants its credits (once: the
/// grant's ref is the session id) and is recorded as a paid invoice; a
/// subscription links the org to Stripe's subscription.
async fn checkout_completed(
    conn: &mut PgConnection,
    org_id: Uuid,
    event: &Event,
) -> Result<(), ApiError> {
    let obj: CheckoutSession = event.object();
    let Some(session_id) = obj.id.as_deref() else {
        return Ok(());
    };
    match obj.mode.as_deref() {
        Some("payment") => {
            if !matches!(
                obj.payment_status.as_deref(),
                Some("paid" | "no_payment_required")
            ) {
                // Paid later (bank debits): `async_payment_succeeded` grants.
                return Ok(());
            }
            let Some(code) = obj.metadata.credit_pack.as_deref() else {
                tracing::warn!(event = %event.id, "paid Checkout without a credit pack");
                return Ok(());
            };
            let pack = super::checkout::active_pack(conn, code).await?;
            let credits = obj
                .metadata
                .credits
                .as_deref()
                .and_then(|c| c.parse::<i64>().ok())
                .or(pack.as_ref().map(|p| p.credits))
                .filter(|c| *c > 0);
            let Some(credits) = credits else {
                tracing::warn!(event = %event.id, code, "paid Checkout for an unknown credit pack");
                return Ok(());
            };
            let name = pack
                .as_ref()
                .map(|p| p.name.clone())
                .unwrap_or_else(|| format!("{credits} credits"));
            let amount = obj
                .amount_total
                .or(pack.as_ref().map(|p| p.price_minor))
                .unwrap_or(0)
                .max(0);
            let currency = currency_of(obj.currency.as_deref())
                .or(pack.as_ref().map(|p| p.currency.clone()))
                .unwrap_or_else(|| "USD".to_owned());
            let description = format!("Credit pack: {name}");
            sqlx::query(
                "select app.credit_grant($1::bigint, 'purchase', 0, null::timestamptz, $2, $3)",
            )
            .bind(credits)
            .bind(format!("stripe:{session_id}"))
            .bind(&description)
            .execute(&mut *conn)
            .await?;
            upsert_provider_invoice(
                conn,
                org_id,
                &ProviderInvoice {
                    provider_invoice_id: session_id,
                    number: None,
                    status: "paid",
                    amount_due_minor: amount,
                    amount_paid_minor: amount,
                    currency,
                    period: None,
                    description,
                    hosted_url: None,
                    paid_at: Some(event.created),
                    due_at: None,
                },
            )
            .await?;
            Ok(())
        }
        Some("subscription") => {
            let Some(sub_id) = id_of(obj.subscription.as_ref()) else {
                return Ok(());
            };
            if subscription_was_deleted(conn, sub_id).await? {
                return Ok(());
            }
            sqlx::query(
                "update subscriptions set provider = 'stripe', provider_subscription_id = $2,
                     updated_at = now()
                 where org_id = $1",
            )
            .bind(org_id)
            .bind(sub_id)
            .execute(&mut *conn)
            .await?;
            Ok(())
        }
        _ => Ok(()),
    }
}

/// Stripe's subscription statuses in Tenantry's terms.
fn map_status(status: &str) -> Option<&'static str> {
    Some(match status {
        "trialing" => "trialing",
        "active" => "active",
        "past_due" => "past_due",
        "incomplete" => "incomplete",
        "canceled" | "incomplete_expired" => "canceled",
        // Stripe stopped retrying (unpaid) or paused a trial that ended
        // without a payment method: payment is owed.
        "unpaid" | "paused" => "past_due",
        _ => return None,
    })
}

/// Whether Stripe told us this subscription was deleted (a later-arriving
/// older event about it must not bring it back).
async fn subscription_was_deleted(
    conn: &mut PgConnection,
    sub_id: &str,
) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(
        "select exists (select 1 from app.webhook_events
                        where provider = 'stripe' and object_id = $1
                          and type = 'customer.subscription.deleted')",
    )
    .bind(sub_id)
    .fetch_one(conn)
    .await
}

/// Mirrors Stripe's subscription (status, plan, period, trial, cancellation)
/// when the event is at least as new as the state already applied.
async fn subscription_changed(
    conn: &mut PgConnection,
    org_id: Uuid,
    event: &Event,
) -> Result<(), ApiError> {
    let obj: StripeSubscription = event.object();
    if !apply_subscription(conn, org_id, &obj, event.created).await? {
        tracing::info!(event = %event.id, %org_id, "older subscription event: recorded, not applied");
    }
    Ok(())
}

/// Mirrors a Stripe subscription object as of `as_of` (an event's
/// `created`, or the instant Stripe answered a request), unless the state
/// already applied is newer; then grants the period's credits. Returns
/// whether it applied.
pub(crate) async fn apply_subscription(
    conn: &mut PgConnection,
    org_id: Uuid,
    obj: &StripeSubscription,
    as_of: DateTime<Utc>,
) -> Result<bool, ApiError> {
    mirror(conn, org_id, obj, as_of, false).await
}

/// Mirrors Stripe's answer to a change of `subscription_id` as of `as_of`,
/// like [`apply_subscription`], but only while the org's subscription is
/// still that one, Stripe's (a deletion applied meanwhile stays applied).
pub(crate) async fn mirror_answer(
    conn: &mut PgConnection,
    org_id: Uuid,
    subscription_id: &str,
    obj: &StripeSubscription,
    as_of: DateTime<Utc>,
) -> Result<bool, ApiError> {
    if obj.id.as_deref() != Some(subscription_id) {
        return Err(ApiError::Status {
            status: axum::http::StatusCode::BAD_GATEWAY,
            code: "payment_provider_error",
            detail: "the payment provider answered with another subscription".into(),
        });
    }
    mirror(conn, org_id, obj, as_of, true).await
}

async fn mirror(
    conn: &mut PgConnection,
    org_id: Uuid,
    obj: &StripeSubscription,
    as_of: DateTime<Utc>,
    linked_only: bool,
) -> Result<bool, ApiError> {
    let Some(sub_id) = obj.id.as_deref() else {
        return Ok(false);
    };
    if subscription_was_deleted(conn, sub_id).await? {
        return Ok(false);
    }
    let status = obj.status.as_deref().and_then(map_status);
    let start = unix(obj.period_start());
    let end = unix(obj.period_end());
    let (start, end) = match (start, end) {
        (Some(s), Some(e)) if e > s => (Some(s), Some(e)),
        _ => (None, None),
    };
    let (plan, pending) = plan_state(&obj.metadata, start);
    let plan = known_plan(conn, plan).await?;
    let pending = known_plan(conn, pending).await?;
    let applied: Option<Uuid> = sqlx::query_scalar(
        "insert into subscriptions as s
             (org_id, plan_code, status, current_period_start, current_period_end, trial_end,
              cancel_at_period_end, canceled_at, provider, provider_subscription_id,
              provider_state_at, trial_used, pending_plan_code)
         values ($1, coalesce($2::text, 'free'), coalesce($3::text, 'active'),
                 coalesce($4::timestamptz, now()),
                 coalesce($5::timestamptz, now() + interval '1 month'),
                 $6, $7, $8, 'stripe', $9, $10, coalesce($3::text = 'trialing', false), $11)
         on conflict (org_id) do update set
             plan_code = coalesce($2::text, s.plan_code),
             status = coalesce($3::text, s.status),
             current_period_start = coalesce($4::timestamptz, s.current_period_start),
             current_period_end = coalesce($5::timestamptz, s.current_period_end),
             trial_end = $6,
             cancel_at_period_end = $7,
             canceled_at = $8,
             pending_plan_code = $11,
             provider = 'stripe',
             provider_subscription_id = $9,
             provider_state_at = $10,
             trial_used = s.trial_used or coalesce($3::text = 'trialing', false),
             updated_at = now()
         where (not $12 or (s.provider = 'stripe' and s.provider_subscription_id = $9))
           and (s.provider_state_at is null or s.provider_state_at < $10
            -- `created` has whole seconds: of two events in one second, the
            -- later delivered wins, except that a first payment still
            -- pending (`incomplete`) never undoes a state past it.
            or (s.provider_state_at = $10
                and not (coalesce($3::text, '') = 'incomplete' and s.status <> 'incomplete')))
         returning s.org_id",
    )
    .bind(org_id)
    .bind(plan)
    .bind(status)
    .bind(start)
    .bind(end)
    .bind(unix(obj.trial_end))
    .bind(obj.cancel_at_period_end.unwrap_or(false))
    .bind(unix(obj.canceled_at))
    .bind(sub_id)
    .bind(as_of)
    .bind(pending)
    .bind(linked_only)
    .fetch_optional(&mut *conn)
    .await?;
    if applied.is_none() {
        return Ok(false);
    }
    grant_period_credits(conn, org_id).await?;
    Ok(true)
}

/// The plan and the pending plan a subscription's metadata names, in a
/// period starting at `start`: `plan`, unless a downgrade recorded as
/// `pending_plan` has taken effect (the period starts at or after
/// `pending_from`, unix seconds), which makes `pending_plan` the plan.
fn plan_state(metadata: &Metadata, start: Option<DateTime<Utc>>) -> (Option<&str>, Option<&str>) {
    let plan = non_empty(metadata.plan.as_deref());
    let Some(pending) = non_empty(metadata.pending_plan.as_deref()) else {
        return (plan, None);
    };
    let from = non_empty(metadata.pending_from.as_deref())
        .and_then(|s| s.parse::<i64>().ok())
        .and_then(|t| DateTime::from_timestamp(t, 0));
    match (from, start) {
        (Some(from), Some(start)) if start >= from => (Some(pending), None),
        _ => (plan, Some(pending)),
    }
}

/// `code` if the catalog has it (active or not).
async fn known_plan(
    conn: &mut PgConnection,
    code: Option<&str>,
) -> Result<Option<String>, sqlx::Error> {
    let Some(code) = code else {
        return Ok(None);
    };
    sqlx::query_scalar("select code from plans where code = $1")
        .bind(code)
        .fetch_optional(&mut *conn)
        .await
}

/// The credits of the Stripe-managed subscription's current period, once
/// per period (the grant's reference names the period, as the rollover's
/// do), while it is trialing or active. A period that starts before the
/// earlier one ended (an upgrade: Stripe credits the unused part of the old
/// price) ends what is left of the earlier period's credits.
async fn grant_period_credits(conn: &mut PgConnection, org_id: Uuid) -> Result<(), ApiError> {
    let row: Option<(i64, String, DateTime<Utc>, DateTime<Utc>)> = sqlx::query_as(
        "select p.credits_per_period, p.code, s.current_period_start, s.current_period_end
             from subscriptions s join plans p on p.code = s.plan_code
             where s.org_id = $1 and s.status in ('trialing', 'active')",
    )
    .bind(org_id)
    .fetch_optional(&mut *conn)
    .await?;
    let Some((credits, plan, start, end)) = row else {
        return Ok(());
    };
    if end <= Utc::now() {
        return Ok(());
    }
    let period = crate::billing::subscriptions::period_ref(org_id, start);
    crate::billing::repo::end_superseded_period_grants(conn, org_id, start, &period).await?;
    if credits <= 0 {
        return Ok(());
    }
    sqlx::query("select app.credit_grant($1, 'plan_period', $2, $3, $4, $5)")
        .bind(credits)
        .bind(crate::billing::subscriptions::PERIOD_GRANT_PRIORITY)
        .bind(end)
        .bind(&period)
        .bind(format!("{plan} plan credits for the period"))
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// The org's Stripe subscription ended: back to the free plan, canceled,
/// no longer linked to Stripe. An event about another (older) subscription
/// of the org changes nothing.
async fn subscription_deleted(
    conn: &mut PgConnection,
    org_id: Uuid,
    event: &Event,
) -> Result<(), ApiError> {
    let obj: StripeSubscription = event.object();
    let Some(sub_id) = obj.id.as_deref() else {
        return Ok(());
    };
    sqlx::query(
        "update subscriptions set status = 'canceled', plan_code = 'free',
             provider = 'manual', provider_subscription_id = null,
             cancel_at_period_end = false, pending_plan_code = null,
             canceled_at = coalesce($3, now()),
             provider_state_at = greatest(coalesce(provider_state_at, $4), $4),
             updated_at = now()
         where org_id = $1 and provider_subscription_id = $2",
    )
    .bind(org_id)
    .bind(sub_id)
    .bind(unix(obj.canceled_at).or(unix(obj.ended_at)))
    .bind(event.created)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// The subscription an invoice bills, wherever the API version puts it.
fn invoice_subscription(obj: &Invoice) -> Option<&str> {
    id_of(obj.subscription.as_ref())
        .or_else(|| id_of(obj.parent.subscription_details.subscription.as_ref()))
        .or_else(|| id_of(obj.lines.first().and_then(|l| l.subscription.as_ref())))
}

fn provider_invoice<'a>(obj: &'a Invoice, status: &'a str, event: &Event) -> ProviderInvoice<'a> {
    let line = obj.lines.first().map(|l| &l.period);
    let period = match (
        unix(line.and_then(|p| p.start)),
        unix(line.and_then(|p| p.end)),
    ) {
        (Some(s), Some(e)) => Some((s, e)),
        _ => match (unix(obj.period_start), unix(obj.period_end)) {
            (Some(s), Some(e)) => Some((s, e)),
            _ => None,
        },
    };
    ProviderInvoice {
        provider_invoice_id: obj.id.as_deref().unwrap_or_default(),
        number: obj.number.as_deref(),
        status,
        amount_due_minor: obj.amount_due.unwrap_or(0).max(0),
        amount_paid_minor: obj.amount_paid.unwrap_or(0).max(0),
        currency: currency_of(obj.currency.as_deref()).unwrap_or_else(|| "USD".to_owned()),
        period,
        description: obj
            .description
            .as_deref()
            .filter(|d| !d.is_empty())
            .map(str::to_owned)
            .unwrap_or_else(|| "Subscription invoice".to_owned()),
        hosted_url: obj.hosted_invoice_url.as_deref(),
        paid_at: unix(obj.status_transitions.paid_at).or(Some(event.created)),
        due_at: unix(obj.due_date),
    }
}

/// Stripe collected an invoice: it is paid here too, and a past_due
/// subscription it bills is active again (unless a newer event said otherwise).
async fn invoice_paid(
    conn: &mut PgConnection,
    org_id: Uuid,
    event: &Event,
) -> Result<(), ApiError> {
    let obj: Invoice = event.object();
    if obj.id.is_none() {
        return Ok(());
    }
    upsert_provider_invoice(conn, org_id, &provider_invoice(&obj, "paid", event)).await?;
    if let Some(sub_id) = invoice_subscription(&obj) {
        sqlx::query(
            // Only the status: the period, plan and cancellation come from
            // subscription events, whose watermark an invoice does not move.
            "update subscriptions set
                 status = case when status = 'past_due' then 'active' else status end,
                 updated_at = now()
             where org_id = $1 and provider_subscription_id = $2
               and (provider_state_at is null or provider_state_at <= $3)",
        )
        .bind(org_id)
        .bind(sub_id)
        .bind(event.created)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// A payment attempt failed: the invoice is open, the subscription it bills
/// is past_due, and every owner of the org is emailed (the job is enqueued
/// in this transaction: it exists if and only if the event is recorded).
async fn invoice_payment_failed(
    state: &AppState,
    conn: &mut PgConnection,
    org_id: Uuid,
    event: &Event,
) -> Result<(), ApiError> {
    let obj: Invoice = event.object();
    if obj.id.is_none() {
        return Ok(());
    }
    let invoice =
        upsert_provider_invoice(conn, org_id, &provider_invoice(&obj, "open", event)).await?;
    if invoice.status == "paid" {
        // Paid since (an older failure arriving late).
        return Ok(());
    }
    if let Some(sub_id) = invoice_subscription(&obj) {
        sqlx::query(
            "update subscriptions set status = 'past_due', updated_at = now()
             where org_id = $1 and provider_subscription_id = $2 and status <> 'canceled'
               and (provider_state_at is null or provider_state_at <= $3)",
        )
        .bind(org_id)
        .bind(sub_id)
        .bind(event.created)
        .execute(&mut *conn)
        .await?;
    }
    let org_name: String = sqlx::query_scalar("select name from organizations where id = $1")
        .bind(org_id)
        .fetch_one(&mut *conn)
        .await?;
    let owners: Vec<String> = sqlx::query_scalar(
        "select u.email from memberships m join users u on u.id = m.user_id
         where m.org_id = $1 and m.role = 'owner' and coalesce(u.email, '') <> ''
         order by u.email",
    )
    .bind(org_id)
    .fetch_all(&mut *conn)
    .await?;
    let update_payment_url = super::checkout::billing_url(&state.config.jobs.app_url, org_id);
    for to in owners {
        let job = SendEmail {
            to,
            template: Template::PaymentFailed {
                org_name: org_name.clone(),
                amount_minor: invoice.amount_due_minor,
                currency: invoice.currency.clone(),
                update_payment_url: update_payment_url.clone(),
            },
        };
        crate::jobs::enqueue(conn, &job).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_need_an_evt_id_a_type_a_created_and_an_object() {
        let ok = br#"{"id":"evt_1","type":"invoice.paid","created":1700000000,"data":{"object":{"id":"in_1"}}}"#;
        let e = parse_event(ok).unwrap();
        assert_eq!(e.kind, "invoice.paid");
        assert_eq!(e.object::<ObjectHead>().id.as_deref(), Some("in_1"));
        for bad in [
            &b"not json"[..],
            br#"[]"#,
            br#"{"id":"ch_1","type":"x","created":1,"data":{"object":{}}}"#,
            br#"{"id":"evt_1","created":1,"data":{"object":{}}}"#,
            br#"{"id":"evt_1","type":"x","created":"yesterday","data":{"object":{}}}"#,
            br#"{"id":"evt_1","type":"x","created":1,"data":{"object":"x"}}"#,
            br#"{"id":"evt_1","type":"x","created":1}"#,
        ] {
            let err = parse_event(bad).unwrap_err();
            assert!(
                matches!(
                    err,
                    ApiError::BadRequest {
                        code: "invalid_event",
                        ..
                    }
                ),
                "{err:?}"
            );
        }
    }

    #[test]
    fn a_pending_downgrade_becomes_the_plan_from_its_renewal_on() {
        let read = |v: Value| serde_json::from_value::<Metadata>(v).unwrap();
        let meta = read(serde_json::json!({
            "plan": "business", "pending_plan": "pro", "pending_from": "1700000000"
        }));
        let at = |t: i64| DateTime::from_timestamp(t, 0);
        assert_eq!(
            plan_state(&meta, at(1699990000)),
            (Some("business"), Some("pro"))
        );
        assert_eq!(plan_state(&meta, at(1700000000)), (Some("pro"), None));
        assert_eq!(plan_state(&meta, at(1702592000)), (Some("pro"), None));
        // Without a period, or a readable date, the downgrade stays pending.
        assert_eq!(plan_state(&meta, None), (Some("business"), Some("pro")));
        let bad = read(
            serde_json::json!({"plan": "business", "pending_plan": "pro", "pending_from": "soon"}),
        );
        assert_eq!(
            plan_state(&bad, at(1800000000)),
            (Some("business"), Some("pro"))
        );
        // Cleared keys (Stripe drops keys set empty; older objects may show "").
        let cleared =
            read(serde_json::json!({"plan": "business", "pending_plan": "", "pending_from": ""}));
        assert_eq!(
            plan_state(&cleared, at(1700000000)),
            (Some("business"), None)
        );
        assert_eq!(
            plan_state(&read(serde_json::json!({})), at(1)),
            (None, None)
        );
    }

    #[test]
    fn statuses_map_to_tenantrys() {
        assert_eq!(map_status("incomplete_expired"), Some("canceled"));
        assert_eq!(map_status("unpaid"), Some("past_due"));
        assert_eq!(map_status("trialing"), Some("trialing"));
        assert_eq!(map_status("something_new"), None);
    }
}
