//! Stripe's webhook receiver: the signature is checked on the raw body,
//! the event is read, its org found (from Tenantry's metadata on the
//! object, or its customer), then the event's id is recorded in
//! `app.webhook_events` in the same transaction as its effect, inside the
//! org's tenant context, and the event is handed to the mirror by its type.
//! A replay finds the id and does nothing; a crash before commit leaves
//! neither the id nor the effect, so Stripe's retry applies it once.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::{PgConnection, PgPool, Postgres, Transaction};
use url::Url;
use utoipa::ToSchema;
use uuid::Uuid;

use super::checkout::store_customer;
use super::error::{PaymentError, WebhookError};
use super::mirror;
use super::signature;
use super::stripe_objects::{Event, EventEnvelope, Expandable, ObjectHead};
use crate::config::{BillingConfig, PaymentProviderKind};
use crate::core::db::{SystemScope, TenantTx, system_tx};

/// The answer to Stripe.
#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookAck {
    pub received: bool,
    /// The event had been processed before: nothing was done.
    pub duplicate: bool,
}

/// Reads a Stripe event: `id` (`evt_...`), `type`, `created`, `data.object`.
pub fn parse_event(body: &[u8]) -> Result<Event, WebhookError> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|_| WebhookError::InvalidEvent("the body is not JSON"))?;
    // JSON of another shape than an object has none of an event's fields.
    let envelope = EventEnvelope::deserialize(v).unwrap_or_default();
    let id = envelope
        .id
        .filter(|id| id.starts_with("evt_") && id.len() <= 255)
        .ok_or(WebhookError::InvalidEvent("no id starting evt_"))?;
    let kind = envelope
        .kind
        .filter(|t| !t.is_empty() && t.len() <= 255)
        .ok_or(WebhookError::InvalidEvent("no type"))?;
    let created = envelope
        .created
        .and_then(|t| DateTime::from_timestamp(t, 0))
        .ok_or(WebhookError::InvalidEvent("no created timestamp"))?;
    let Some(object) = envelope.data.object else {
        return Err(WebhookError::InvalidEvent("no data.object"));
    };
    Ok(Event::new(id, kind, created, object))
}

/// Verifies, records and applies one delivery of `POST /api/v1/webhooks/stripe`.
/// `app_url`: the web app, whose billing page emails link to.
pub async fn receive(
    pool: &PgPool,
    billing: &BillingConfig,
    app_url: &Url,
    signature_header: Option<&str>,
    body: &[u8],
) -> Result<WebhookAck, WebhookError> {
    if billing.provider != PaymentProviderKind::Stripe || billing.stripe_webhook_secrets.is_empty()
    {
        return Err(WebhookError::NotConfigured);
    }
    let now = Utc::now().timestamp();
    signature::verify(signature_header, body, &billing.stripe_webhook_secrets, now)?;
    let event = parse_event(body)?;
    let head: ObjectHead = event.object();

    let org_hint = match org_hint(&head) {
        Some(org) => Some(org),
        None => match customer_of(&head) {
            Some(customer) => org_of_customer(pool, customer).await?,
            None => None,
        },
    };
    let mut tx = match org_hint {
        Some(org_id) => {
            let mut tx = TenantTx::enter_as_system(pool, org_id, SystemScope::Webhooks).await?;
            // Its writes reference the org after locking the subscription:
            // wait for a request holding the org lock first.
            crate::billing::repo::key_share_org(tx.conn(), org_id).await?;
            WebhookTx::Tenant(tx)
        }
        None => WebhookTx::Plain(system_tx(pool, SystemScope::Webhooks).await?),
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
        Some(org_id) => apply(app_url, conn, org_id, &event, &head).await?,
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

fn customer_of(obj: &ObjectHead) -> Option<&str> {
    obj.customer.as_ref().and_then(Expandable::id)
}

/// The org of a Stripe customer, read across orgs by the webhook handler.
async fn org_of_customer(pool: &PgPool, customer: &str) -> Result<Option<Uuid>, sqlx::Error> {
    let mut tx = system_tx(pool, SystemScope::Webhooks).await?;
    let org: Option<Uuid> = sqlx::query_scalar(
        "select org_id from app.billing_customer_orgs where provider = 'stripe' and customer_id = $1",
    )
    .bind(customer)
    .fetch_optional(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(org)
}

/// Applies the event by its type (the mirror's); other types change nothing.
async fn apply(
    app_url: &Url,
    conn: &mut PgConnection,
    org_id: Uuid,
    event: &Event,
    head: &ObjectHead,
) -> Result<(), PaymentError> {
    if let Some(customer) = customer_of(head) {
        store_customer(conn, org_id, PaymentProviderKind::Stripe, customer).await?;
    }
    match event.kind.as_str() {
        "checkout.session.completed" | "checkout.session.async_payment_succeeded" => {
            mirror::checkout_completed(conn, org_id, event).await
        }
        "customer.subscription.created" | "customer.subscription.updated" => {
            mirror::subscription_changed(conn, org_id, event).await
        }
        "customer.subscription.deleted" => mirror::subscription_deleted(conn, org_id, event).await,
        "invoice.paid" => mirror::invoice_paid(conn, org_id, event).await,
        "invoice.payment_failed" => {
            mirror::invoice_payment_failed(app_url, conn, org_id, event).await
        }
        other => {
            tracing::debug!(event = %event.id, kind = other, "Stripe event type not handled");
            Ok(())
        }
    }
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
            assert!(matches!(err, WebhookError::InvalidEvent(_)), "{err:?}");
        }
    }
}
