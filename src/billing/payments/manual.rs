//! The manual provider, for self-hosting and development: there is no
//! payment page. Tenantry issues invoices (`invoices::issue_invoice`) and a
//! platform admin marks them paid.

use futures_util::future::BoxFuture;

use super::error::PaymentError;
use super::provider::{
    CheckoutRequest, CheckoutSession, NewCustomer, PaymentProvider, PortalRequest, PortalSession,
    SubscriptionUpdate, UpdateFailure,
};
use super::stripe_objects::Subscription as StripeSubscription;
use crate::config::PaymentProviderKind;

pub struct ManualProvider;

impl PaymentProvider for ManualProvider {
    fn kind(&self) -> PaymentProviderKind {
        PaymentProviderKind::Manual
    }

    fn create_customer<'a>(
        &'a self,
        _req: &'a NewCustomer,
    ) -> BoxFuture<'a, Result<String, PaymentError>> {
        Box::pin(async { Err(PaymentError::ManualPayments) })
    }

    fn create_checkout<'a>(
        &'a self,
        _req: &'a CheckoutRequest,
    ) -> BoxFuture<'a, Result<CheckoutSession, PaymentError>> {
        Box::pin(async { Err(PaymentError::ManualPayments) })
    }

    fn create_portal<'a>(
        &'a self,
        _req: &'a PortalRequest,
    ) -> BoxFuture<'a, Result<PortalSession, PaymentError>> {
        Box::pin(async { Err(PaymentError::ManualPayments) })
    }

    fn get_subscription<'a>(
        &'a self,
        _subscription_id: &'a str,
    ) -> BoxFuture<'a, Result<StripeSubscription, PaymentError>> {
        Box::pin(async { Err(PaymentError::ManualPayments) })
    }

    fn update_subscription<'a>(
        &'a self,
        _subscription_id: &'a str,
        _update: &'a SubscriptionUpdate,
        _idempotency_key: &'a str,
    ) -> BoxFuture<'a, Result<StripeSubscription, UpdateFailure>> {
        Box::pin(async {
            Err(UpdateFailure {
                error: PaymentError::ManualPayments,
                outcome_unknown: false,
            })
        })
    }
}
