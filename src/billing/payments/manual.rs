//! The manual provider, for self-hosting and development: there is no
//! payment page. Tenantry issues invoices (`invoices::issue_invoice`) and a
//! platform admin marks them paid.

use axum::http::StatusCode;
use futures_util::future::BoxFuture;

use super::provider::{
    CheckoutRequest, CheckoutSession, NewCustomer, PaymentProvider, PortalRequest, PortalSession,
    SubscriptionUpdate, UpdateFailure,
};
use super::stripe_objects::Subscription as StripeSubscription;
use crate::config::PaymentProviderKind;
use crate::core::error::ApiError;

pub struct ManualProvider;

/// 409 `checkout_unavailable`: payments are manual.
pub fn checkout_unavailable() -> ApiError {
    ApiError::Status {
        status: StatusCode::CONFLICT,
        code: "checkout_unavailable",
        detail: "payments are manual: invoices are issued by the operator and marked paid by a \
                 platform admin"
            .into(),
    }
}

impl PaymentProvider for ManualProvider {
    fn kind(&self) -> PaymentProviderKind {
        PaymentProviderKind::Manual
    }

    fn create_customer<'a>(
        &'a self,
        _req: &'a NewCustomer,
    ) -> BoxFuture<'a, Result<String, ApiError>> {
        Box::pin(async { Err(checkout_unavailable()) })
    }

    fn create_checkout<'a>(
        &'a self,
        _req: &'a CheckoutRequest,
    ) -> BoxFuture<'a, Result<CheckoutSession, ApiError>> {
        Box::pin(async { Err(checkout_unavailable()) })
    }

    fn create_portal<'a>(
        &'a self,
        _req: &'a PortalRequest,
    ) -> BoxFuture<'a, Result<PortalSession, ApiError>> {
        Box::pin(async { Err(checkout_unavailable()) })
    }

    fn get_subscription<'a>(
        &'a self,
        _subscription_id: &'a str,
    ) -> BoxFuture<'a, Result<StripeSubscription, ApiError>> {
        Box::pin(async { Err(checkout_unavailable()) })
    }

    fn update_subscription<'a>(
        &'a self,
        _subscription_id: &'a str,
        _update: &'a SubscriptionUpdate,
        _idempotency_key: &'a str,
    ) -> BoxFuture<'a, Result<StripeSubscription, UpdateFailure>> {
        Box::pin(async {
            Err(UpdateFailure {
                error: checkout_unavailable(),
                outcome_unknown: false,
            })
        })
    }
}
