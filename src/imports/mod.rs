//! Member imports: an uploaded CSV of `email,role` lines, validated up front
//! and processed by a background job that invites each address and records
//! one result per line.

pub mod error;
pub mod file;
pub mod job;
mod repo;
pub mod routes;
pub mod service;

pub use routes::router;
