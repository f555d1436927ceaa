//! Org-scoped API keys for machines (scripts, integrations): creating,
//! listing and revoking them. What a key is, and how a presented one is
//! checked, is [`crate::auth::api_key`].

pub mod error;
pub mod model;
mod repo;
pub mod routes;
pub mod service;

pub use routes::router;
