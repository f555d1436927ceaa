//! What billing's routes need of the process: the pool, the payment
//! provider `PAYMENT_PROVIDER` names, the group commit of spends, and the
//! settings. The composition root builds it; billing's routers ask for
//! `BillingState: FromRef<S>`.

use std::sync::Arc;

use sqlx::PgPool;

use super::credits::batch::SpendBatcher;
use super::payments::PaymentProvider;
use crate::config::Config;

/// Cloned once per request: one `Arc`.
#[derive(Clone)]
pub struct BillingState(Arc<Inner>);

pub struct Inner {
    pub pool: PgPool,
    /// Stripe or manual.
    pub payments: Arc<dyn PaymentProvider>,
    /// Group commit of concurrent spends per org.
    pub spends: SpendBatcher,
    pub config: Arc<Config>,
}

impl BillingState {
    pub fn new(inner: Inner) -> Self {
        BillingState(Arc::new(inner))
    }
}

impl std::ops::Deref for BillingState {
    type Target = Inner;

    fn deref(&self) -> &Inner {
        &self.0
    }
}
