//! The mirror of Stripe's state in Tenantry's tables: a completed Checkout
//! (a credit pack granted, a subscription linked), a subscription (status,
//! plan, period, trial, cancellation, and the period's credits), its
//! deletion, and invoices (paid, or a payment failed: past_due, and the
//! owners emailed). Each applies a Stripe object in the caller's
//! transaction: the webhook receiver's, or that of a subscription change
//! recording Stripe's answer.
//!
//! Stripe does not promise order: subscription state is applied only from
//! events at least as new as the last one applied
//! (`subscriptions.provider_state_at`), and a deleted subscription is never
//! revived by an older event about it.

use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use url::Url;
use uuid::Uuid;

use super::checkout::{active_pack, billing_url};
use super::error::PaymentError;
use super::invoices::{ProviderInvoice, upsert_provider_invoice};
use super::stripe_objects::{
    CheckoutSession, Event, Expandable, Invoice, Metadata, Subscription as StripeSubscription,
    non_empty,
};
use crate::billing::subscriptions::periods::{PERIOD_GRANT_PRIORITY, period_ref};
use crate::mail::SendEmail;
use crate::mail::templates::Template;

/// An id given as a string or as an expanded object.
fn id_of(v: Option<&Expandable>) -> Option<&str> {
    v.and_then(Expandable::id)
}

/// Stripe's lowercase ISO 4217 code as stored (`usd` -> `USD`).
fn currency_of(v: Option<&str>) -> Option<String> {
    v.map(str::to_ascii_uppercase)
        .filter(|c| c.len() == 3 && c.bytes().all(|b| b.is_ascii_uppercase()))
}

fn unix(v: Option<i64>) -> Option<DateTime<Utc>> {
    v.and_then(|t| DateTime::from_timestamp(t, 0))
}

/// A finished Checkout: a paid credit pack grants its credits (once: the
/// grant's ref is the session id) and is recorded as a paid invoice; a
/// subscription links the org to Stripe's subscription.
pub(super) async fn checkout_completed(
    conn: &mut PgConnection,
    org_id: Uuid,
    event: &Event,
) -> Result<(), PaymentError> {
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
            let pack = active_pack(conn, code).await?;
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
pub(super) async fn subscription_changed(
    conn: &mut PgConnection,
    org_id: Uuid,
    event: &Event,
) -> Result<(), PaymentError> {
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
) -> Result<bool, PaymentError> {
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
) -> Result<bool, PaymentError> {
    if obj.id.as_deref() != Some(subscription_id) {
        return Err(PaymentError::AnotherSubscription);
    }
    mirror(conn, org_id, obj, as_of, true).await
}

async fn mirror(
    conn: &mut PgConnection,
    org_id: Uuid,
    obj: &StripeSubscription,
    as_of: DateTime<Utc>,
    linked_only: bool,
) -> Result<bool, PaymentError> {
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
async fn grant_period_credits(conn: &mut PgConnection, org_id: Uuid) -> Result<(), PaymentError> {
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
    let period = period_ref(org_id, start);
    crate::billing::repo::end_superseded_period_grants(conn, org_id, start, &period).await?;
    if credits <= 0 {
        return Ok(());
    }
    sqlx::query("select app.credit_grant($1, 'plan_period', $2, $3, $4, $5)")
        .bind(credits)
        .bind(PERIOD_GRANT_PRIORITY)
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
pub(super) async fn subscription_deleted(
    conn: &mut PgConnection,
    org_id: Uuid,
    event: &Event,
) -> Result<(), PaymentError> {
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
pub(super) async fn invoice_paid(
    conn: &mut PgConnection,
    org_id: Uuid,
    event: &Event,
) -> Result<(), PaymentError> {
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
pub(super) async fn invoice_payment_failed(
    app_url: &Url,
    conn: &mut PgConnection,
    org_id: Uuid,
    event: &Event,
) -> Result<(), PaymentError> {
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
    let update_payment_url = billing_url(app_url, org_id);
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
    fn a_pending_downgrade_becomes_the_plan_from_its_renewal_on() {
        let read = |v: serde_json::Value| serde_json::from_value::<Metadata>(v).unwrap();
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
