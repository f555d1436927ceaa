//! Billing: plans, subscriptions, payments and credits. This slice holds the
//! plan catalog.

pub mod model;
pub mod repo;
pub mod routes;

pub use routes::router;
