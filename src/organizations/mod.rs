//! Organizations (tenants): the org itself, its members and their roles,
//! custom roles, invitations, ownership, and the audit log of every change.

pub mod error;
pub mod model;
mod repo;
pub mod routes;
pub mod service;

pub use routes::router;
