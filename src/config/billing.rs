//! Payments: which provider takes them, and Stripe's secret key, webhook
//! secrets and API base.

use secrecy::SecretString;
use url::Url;

use super::parse::{ConfigError, malformed};

/// Which payment provider takes payments (`PAYMENT_PROVIDER`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PaymentProviderKind {
    /// Tenantry issues invoices and a platform admin marks them paid.
    Manual,
    /// Stripe Checkout, Billing Portal and webhooks.
    Stripe,
}

impl PaymentProviderKind {
    pub fn as_str(self) -> &'static str {
        match self {
            PaymentProviderKind::Manual => "manual",
            PaymentProviderKind::Stripe => "stripe",
        }
    }
}

/// Payments configuration.
#[derive(Clone, Debug)]
pub struct BillingConfig {
    /// `PAYMENT_PROVIDER=manual|stripe` (default manual).
    pub provider: PaymentProviderKind,
    /// `STRIPE_SECRET_KEY` (required with stripe); `Debug` never shows it.
    pub stripe_secret_key: Option<SecretString>,
    /// `STRIPE_WEBHOOK_SECRET`: comma-separated; several while rotating
    /// (required with stripe). A signature made with any of them is accepted.
    pub stripe_webhook_secrets: Vec<SecretString>,
    /// `STRIPE_API_BASE` (default `https://api.stripe.com`); tests point it
    /// at a local server.
    pub stripe_api_base: Url,
}

pub const DEFAULT_STRIPE_API_BASE: &str = "https://api.stripe.com";

impl BillingConfig {
    pub(super) fn from_lookup(get: &impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let provider = match get("PAYMENT_PROVIDER").as_deref().map(str::trim) {
            None | Some("manual") => PaymentProviderKind::Manual,
            Some("stripe") => PaymentProviderKind::Stripe,
            Some(other) => {
                return Err(malformed(
                    "PAYMENT_PROVIDER",
                    format!("{other:?} is not manual or stripe"),
                ));
            }
        };
        // Secrets: name the setting, never echo the value.
        let stripe_secret_key = match get("STRIPE_SECRET_KEY").map(|v| v.trim().to_owned()) {
            Some(v) if v.chars().any(|c| c.is_whitespace() || c.is_control()) => {
                return Err(malformed(
                    "STRIPE_SECRET_KEY",
                    "must not contain spaces or control characters",
                ));
            }
            Some(v) => Some(SecretString::from(v)),
            None => None,
        };
        let stripe_webhook_secrets: Vec<SecretString> = get("STRIPE_WEBHOOK_SECRET")
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(SecretString::from)
            .collect();
        let base = get("STRIPE_API_BASE").unwrap_or_else(|| DEFAULT_STRIPE_API_BASE.to_owned());
        let stripe_api_base =
            Url::parse(base.trim()).map_err(|e| malformed("STRIPE_API_BASE", e))?;
        if !matches!(stripe_api_base.scheme(), "http" | "https")
            || stripe_api_base.cannot_be_a_base()
        {
            return Err(malformed("STRIPE_API_BASE", "scheme must be http or https"));
        }
        if provider == PaymentProviderKind::Stripe {
            if stripe_secret_key.is_none() {
                return Err(ConfigError::Missing {
                    name: "STRIPE_SECRET_KEY",
                    hint: " when PAYMENT_PROVIDER=stripe",
                });
            }
            if stripe_webhook_secrets.is_empty() {
                return Err(ConfigError::Missing {
                    name: "STRIPE_WEBHOOK_SECRET",
                    hint: " when PAYMENT_PROVIDER=stripe (comma-separated during rotation)",
                });
            }
        }
        Ok(BillingConfig {
            provider,
            stripe_secret_key,
            stripe_webhook_secrets,
            stripe_api_base,
        })
    }
}
