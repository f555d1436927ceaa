//! Stripe's objects, as far as Tenantry reads them: the event envelope, the
//! subscription (its items and their prices), the invoice, the Checkout
//! session, the customer, the price, the Billing Portal session and Stripe's
//! error answer.
//!
//! Stripe may leave out any field, and newer API versions move some (a
//! subscription's period lives on its items; an invoice names its
//! subscription under `parent`), so every field is optional. A field sent
//! in another shape than the one read here (a number where a string is
//! read) reads as absent, as a lookup in the raw JSON found nothing there:
//! reading an object never fails, whatever the event type.

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde::de::{DeserializeOwned, Deserializer};
use serde_json::{Map, Value};

/// Reads a field as `T`, or as `T::default()` when it has another shape.
fn lenient<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: DeserializeOwned + Default,
{
    let value = Value::deserialize(deserializer)?;
    Ok(T::deserialize(value).unwrap_or_default())
}

/// A non-empty string (trimmed), as Stripe's metadata values are read.
pub fn non_empty(v: Option<&str>) -> Option<&str> {
    v.map(str::trim).filter(|s| !s.is_empty())
}

// ---------------------------------------------------------------- events

/// A delivery of the webhook as sent: `id` (`evt_...`), `type`, `created`
/// (unix seconds) and `data.object`. The receiver checks each.
#[derive(Debug, Default, Deserialize)]
pub struct EventEnvelope {
    #[serde(default, deserialize_with = "lenient")]
    pub id: Option<String>,
    #[serde(rename = "type", default, deserialize_with = "lenient")]
    pub kind: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    pub created: Option<i64>,
    #[serde(default, deserialize_with = "lenient")]
    pub data: EventData,
}

#[derive(Debug, Default, Deserialize)]
pub struct EventData {
    /// The object the event is about (only a JSON object counts).
    #[serde(default, deserialize_with = "lenient")]
    pub object: Option<Map<String, Value>>,
}

/// An event the receiver accepted.
#[derive(Debug)]
pub struct Event {
    pub id: String,
    pub kind: String,
    pub created: DateTime<Utc>,
    /// `data.object` as sent: its type depends on the event's, so it is
    /// read with [`Event::object`] as the handler of the event needs it.
    object: Value,
}

impl Event {
    pub fn new(
        id: String,
        kind: String,
        created: DateTime<Utc>,
        object: Map<String, Value>,
    ) -> Self {
        Event {
            id,
            kind,
            created,
            object: Value::Object(object),
        }
    }

    /// `data.object` read as `T` (one of this file's objects).
    pub fn object<T: DeserializeOwned + Default>(&self) -> T {
        // Every field reads leniently, so an object always reads.
        T::deserialize(&self.object).unwrap_or_default()
    }
}

/// What the receiver reads of any event's object, whatever its type: its
/// id, its customer, and the places where Tenantry's metadata names the org.
#[derive(Debug, Default, Deserialize)]
pub struct ObjectHead {
    #[serde(default, deserialize_with = "lenient")]
    pub id: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    pub customer: Option<Expandable>,
    #[serde(default, deserialize_with = "lenient")]
    pub metadata: Metadata,
    /// A Checkout session's reference: the org's id.
    #[serde(default, deserialize_with = "lenient")]
    pub client_reference_id: Option<String>,
    /// An invoice's subscription (older API versions).
    #[serde(default, deserialize_with = "lenient")]
    pub subscription_details: SubscriptionDetails,
    /// An invoice's subscription (newer API versions).
    #[serde(default, deserialize_with = "lenient")]
    pub parent: InvoiceParent,
    /// An invoice's lines.
    #[serde(default, deserialize_with = "lenient")]
    pub lines: List<InvoiceLine>,
}

// ---------------------------------------------------------------- shared parts

/// An object Stripe sends as its id, or expanded.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Expandable {
    Id(String),
    Object(ObjectId),
}

/// An expanded object, read for its id.
#[derive(Debug, Default, Deserialize)]
pub struct ObjectId {
    #[serde(default, deserialize_with = "lenient")]
    pub id: Option<String>,
}

impl Expandable {
    /// The id as sent, or the expanded object's (an empty one is none).
    pub fn id(&self) -> Option<&str> {
        match self {
            Expandable::Id(id) => Some(id.as_str()),
            Expandable::Object(object) => object.id.as_deref(),
        }
        .filter(|id| !id.is_empty())
    }
}

/// The metadata keys Tenantry writes on Stripe's objects (Stripe keeps
/// every value as a string; an emptied key may still show as `""`).
#[derive(Debug, Default, Deserialize)]
pub struct Metadata {
    /// The org the object belongs to.
    #[serde(default, deserialize_with = "lenient")]
    pub org_id: Option<String>,
    /// A subscription's plan.
    #[serde(default, deserialize_with = "lenient")]
    pub plan: Option<String>,
    /// A subscription's pending downgrade ...
    #[serde(default, deserialize_with = "lenient")]
    pub pending_plan: Option<String>,
    /// ... which is the plan from this renewal on (unix seconds).
    #[serde(default, deserialize_with = "lenient")]
    pub pending_from: Option<String>,
    /// The price paid for the period while a downgrade is pending.
    #[serde(default, deserialize_with = "lenient")]
    pub paid_price: Option<String>,
    /// A Checkout session's credit pack, and its credits.
    #[serde(default, deserialize_with = "lenient")]
    pub credit_pack: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    pub credits: Option<String>,
}

/// A list object (`{"object": "list", "data": [...]}`).
#[derive(Debug, Deserialize)]
#[serde(bound(deserialize = "T: DeserializeOwned"))]
pub struct List<T> {
    #[serde(default, deserialize_with = "lenient")]
    pub data: Option<Vec<T>>,
}

impl<T> Default for List<T> {
    fn default() -> Self {
        List { data: None }
    }
}

impl<T> List<T> {
    pub fn first(&self) -> Option<&T> {
        self.data.as_deref().and_then(<[T]>::first)
    }
}

// ---------------------------------------------------------------- subscriptions

/// A subscription (`sub_...`).
#[derive(Debug, Default, Deserialize)]
pub struct Subscription {
    #[serde(default, deserialize_with = "lenient")]
    pub id: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    pub status: Option<String>,
    /// Older API versions; newer ones keep the period on the items.
    #[serde(default, deserialize_with = "lenient")]
    pub current_period_start: Option<i64>,
    #[serde(default, deserialize_with = "lenient")]
    pub current_period_end: Option<i64>,
    #[serde(default, deserialize_with = "lenient")]
    pub trial_end: Option<i64>,
    #[serde(default, deserialize_with = "lenient")]
    pub cancel_at_period_end: Option<bool>,
    #[serde(default, deserialize_with = "lenient")]
    pub canceled_at: Option<i64>,
    #[serde(default, deserialize_with = "lenient")]
    pub ended_at: Option<i64>,
    #[serde(default, deserialize_with = "lenient")]
    pub metadata: Metadata,
    #[serde(default, deserialize_with = "lenient")]
    pub items: List<SubscriptionItem>,
}

impl Subscription {
    /// The start of the current period, in unix seconds, wherever the API
    /// version puts it (on the subscription, or on its first item).
    pub fn period_start(&self) -> Option<i64> {
        self.current_period_start
            .or_else(|| self.items.first().and_then(|i| i.current_period_start))
    }

    /// The end of the current period, as [`Self::period_start`].
    pub fn period_end(&self) -> Option<i64> {
        self.current_period_end
            .or_else(|| self.items.first().and_then(|i| i.current_period_end))
    }
}

/// An item of a subscription (`si_...`): one price, billed each period.
#[derive(Debug, Default, Deserialize)]
pub struct SubscriptionItem {
    #[serde(default, deserialize_with = "lenient")]
    pub id: Option<String>,
    /// A price id, or the expanded [`Price`].
    #[serde(default, deserialize_with = "lenient")]
    pub price: Option<Expandable>,
    #[serde(default, deserialize_with = "lenient")]
    pub current_period_start: Option<i64>,
    #[serde(default, deserialize_with = "lenient")]
    pub current_period_end: Option<i64>,
}

/// A price (`price_...`), as `POST /v1/prices` answers.
#[derive(Debug, Default, Deserialize)]
pub struct Price {
    #[serde(default, deserialize_with = "lenient")]
    pub id: Option<String>,
}

/// A customer (`cus_...`), as `POST /v1/customers` answers.
#[derive(Debug, Default, Deserialize)]
pub struct Customer {
    #[serde(default, deserialize_with = "lenient")]
    pub id: Option<String>,
}

// ---------------------------------------------------------------- invoices

/// An invoice (`in_...`).
#[derive(Debug, Default, Deserialize)]
pub struct Invoice {
    #[serde(default, deserialize_with = "lenient")]
    pub id: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    pub number: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    pub amount_due: Option<i64>,
    #[serde(default, deserialize_with = "lenient")]
    pub amount_paid: Option<i64>,
    /// Lowercase ISO 4217.
    #[serde(default, deserialize_with = "lenient")]
    pub currency: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    pub description: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    pub hosted_invoice_url: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    pub status_transitions: StatusTransitions,
    #[serde(default, deserialize_with = "lenient")]
    pub due_date: Option<i64>,
    #[serde(default, deserialize_with = "lenient")]
    pub period_start: Option<i64>,
    #[serde(default, deserialize_with = "lenient")]
    pub period_end: Option<i64>,
    /// The subscription billed (older API versions).
    #[serde(default, deserialize_with = "lenient")]
    pub subscription: Option<Expandable>,
    #[serde(default, deserialize_with = "lenient")]
    pub parent: InvoiceParent,
    #[serde(default, deserialize_with = "lenient")]
    pub lines: List<InvoiceLine>,
}

#[derive(Debug, Default, Deserialize)]
pub struct StatusTransitions {
    #[serde(default, deserialize_with = "lenient")]
    pub paid_at: Option<i64>,
}

/// What an invoice was made for (newer API versions).
#[derive(Debug, Default, Deserialize)]
pub struct InvoiceParent {
    #[serde(default, deserialize_with = "lenient")]
    pub subscription_details: SubscriptionDetails,
}

/// The subscription an invoice bills, with its metadata.
#[derive(Debug, Default, Deserialize)]
pub struct SubscriptionDetails {
    #[serde(default, deserialize_with = "lenient")]
    pub subscription: Option<Expandable>,
    #[serde(default, deserialize_with = "lenient")]
    pub metadata: Metadata,
}

/// A line of an invoice.
#[derive(Debug, Default, Deserialize)]
pub struct InvoiceLine {
    #[serde(default, deserialize_with = "lenient")]
    pub period: Period,
    #[serde(default, deserialize_with = "lenient")]
    pub subscription: Option<Expandable>,
    #[serde(default, deserialize_with = "lenient")]
    pub metadata: Metadata,
}

/// A period, in unix seconds.
#[derive(Debug, Default, Deserialize)]
pub struct Period {
    #[serde(default, deserialize_with = "lenient")]
    pub start: Option<i64>,
    #[serde(default, deserialize_with = "lenient")]
    pub end: Option<i64>,
}

// ---------------------------------------------------------------- Checkout, Portal

/// A Checkout session (`cs_...`): created by Tenantry (`id`, `url`), and
/// delivered once completed.
#[derive(Debug, Default, Deserialize)]
pub struct CheckoutSession {
    #[serde(default, deserialize_with = "lenient")]
    pub id: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    pub url: Option<String>,
    /// `payment` or `subscription`.
    #[serde(default, deserialize_with = "lenient")]
    pub mode: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    pub payment_status: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    pub amount_total: Option<i64>,
    /// Lowercase ISO 4217.
    #[serde(default, deserialize_with = "lenient")]
    pub currency: Option<String>,
    /// The subscription a `subscription` session made.
    #[serde(default, deserialize_with = "lenient")]
    pub subscription: Option<Expandable>,
    #[serde(default, deserialize_with = "lenient")]
    pub metadata: Metadata,
}

/// A Billing Portal session, as `POST /v1/billing_portal/sessions` answers.
#[derive(Debug, Default, Deserialize)]
pub struct PortalSession {
    #[serde(default, deserialize_with = "lenient")]
    pub url: Option<String>,
}

// ---------------------------------------------------------------- errors

/// Stripe's answer to a request it refused: `{"error": {...}}`.
#[derive(Debug, Default, Deserialize)]
pub struct ErrorAnswer {
    #[serde(default, deserialize_with = "lenient")]
    pub error: ErrorObject,
}

#[derive(Debug, Default, Deserialize)]
pub struct ErrorObject {
    /// `card_error`, `invalid_request_error`, `api_error`, ...
    #[serde(rename = "type", default, deserialize_with = "lenient")]
    pub kind: Option<String>,
    /// For a card error: `card_declined`, `authentication_required`, ...
    #[serde(default, deserialize_with = "lenient")]
    pub code: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    pub message: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn fields_in_another_shape_read_as_absent() {
        let sub: Subscription = serde_json::from_value(json!({
            "id": 7, "status": "active", "cancel_at_period_end": "yes",
            "metadata": {"plan": "pro", "org_id": 12},
            "items": {"data": [{"id": "si_1", "price": 5, "current_period_end": 200}]}
        }))
        .unwrap();
        assert_eq!(sub.id, None);
        assert_eq!(sub.status.as_deref(), Some("active"));
        assert_eq!(sub.cancel_at_period_end, None);
        assert_eq!(sub.metadata.plan.as_deref(), Some("pro"));
        assert_eq!(sub.metadata.org_id, None);
        let item = sub.items.first().unwrap();
        assert!(item.price.is_none());
        assert_eq!(sub.period_end(), Some(200));
        assert_eq!(sub.period_start(), None);
        let sub: Subscription =
            serde_json::from_value(json!({"metadata": "x", "items": []})).unwrap();
        assert!(sub.items.data.is_none());
        assert_eq!(sub.metadata.plan, None);
    }

    #[test]
    fn expandable_objects_read_as_their_id() {
        let head: ObjectHead =
            serde_json::from_value(json!({"customer": {"id": "cus_1"}})).unwrap();
        assert_eq!(
            head.customer.as_ref().and_then(Expandable::id),
            Some("cus_1")
        );
        let head: ObjectHead = serde_json::from_value(json!({"customer": "cus_2"})).unwrap();
        assert_eq!(
            head.customer.as_ref().and_then(Expandable::id),
            Some("cus_2")
        );
        let head: ObjectHead = serde_json::from_value(json!({"customer": null})).unwrap();
        assert!(head.customer.is_none());
    }
}
