//! Subscriptions: one current subscription per org, its plan changes, seat
//! limits, entitlements and the period rollover.
//!
//! * Every org starts on the free plan, with its first period's credits, in
//!   the transaction that creates it.
//! * An upgrade (a higher price, or the same price with more seats) applies
//!   at once and starts a new period with the new plan's credits; a plan with
//!   trial days starts with a trial (once per org), which is the first period.
//! * A downgrade is pending until the period ends; so is a cancellation
//!   (back to the free plan, status `canceled`).
//! * The `billing.rollover` job ends due periods: it applies a cancellation
//!   or a pending downgrade, ends a trial, advances the period and grants the
//!   new period's credits, once per period (the grant's reference names the
//!   period) however many workers run it. Stripe's subscriptions are
//!   advanced by its webhooks instead.
//!
//! Every change happens under the org's row lock, which seat checks take
//! too, so concurrent invitations, acceptances and plan changes decide on
//! fresh state one at a time.
//!
//! This file only declares the parts and re-exports what callers outside
//! subscriptions use.

pub mod changes;
pub mod current;
pub mod error;
pub mod periods;
pub mod plans;
pub mod provider_changes;
pub mod rollover;
pub mod seats;

pub use changes::{cancel_or_resume, change_plan};
pub use current::{create_for_new_org, entitlements, get};
pub use error::SubscriptionError;
pub use periods::{PERIOD_GRANT_PRIORITY, now, period_ref};
pub use plans::is_upgrade;
pub use provider_changes::{
    Change, ProviderChange, record_provider_change, release_provider_change,
};
pub use rollover::{Rolled, Rollover, RolloverReport, rollover_due, rollover_org};
pub(crate) use seats::{ensure_seat_for_invitation, ensure_seat_for_member};
