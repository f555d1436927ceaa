//! The payment provider `PAYMENT_PROVIDER` names: Stripe or manual.

use std::sync::Arc;

use super::manual::ManualProvider;
use super::provider::PaymentProvider;
use super::stripe::StripeProvider;
use crate::config::{BillingConfig, PaymentProviderKind};

/// The provider `PAYMENT_PROVIDER` names.
pub fn provider_from_config(config: &BillingConfig) -> anyhow::Result<Arc<dyn PaymentProvider>> {
    Ok(match config.provider {
        PaymentProviderKind::Manual => Arc::new(ManualProvider),
        PaymentProviderKind::Stripe => Arc::new(StripeProvider::new(config)?),
    })
}
