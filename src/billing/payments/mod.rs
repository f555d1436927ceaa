//! Payments: a provider trait with two implementations — Stripe (Checkout,
//! Billing Portal, webhooks) and manual (Tenantry issues invoices, a
//! platform admin marks them paid) — the credit pack catalog, and the
//! invoices of each org. This file only declares the children and
//! re-exports what callers outside payments use.

pub mod checkout;
pub mod configured;
pub mod error;
pub mod invoices;
pub mod manual;
pub mod mirror;
pub mod provider;
pub mod routes;
pub mod signature;
pub mod stripe;
pub mod stripe_objects;
pub mod webhook;

pub use configured::provider_from_config;
pub use error::{PaymentError, WebhookError};
pub use provider::{
    CheckoutItem, CheckoutRequest, CheckoutSession, CreditPack, NewCustomer, PaymentProvider,
    PortalRequest, PortalSession, PriceChange, SubscriptionUpdate, UpdateFailure,
};
pub use routes::router;
