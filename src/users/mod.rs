//! Users: the profile of the signed-in user, provisioned from their token on
//! first sight, and the organizations they belong to.

pub mod error;
pub mod model;
mod repo;
pub mod routes;
pub mod service;

pub use routes::router;
