//! Shared machinery: errors, database access and the tenant wall, pagination,
//! request extraction and telemetry.

pub mod cache;
pub mod db;
pub mod error;
pub mod extract;
pub mod pagination;
pub mod ratelimit;
pub mod telemetry;
pub mod validate;
