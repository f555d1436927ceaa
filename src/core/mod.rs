//! Shared machinery: the audit-log writer, errors, database access and the tenant wall, pagination,
//! request extraction and telemetry.

pub mod audit;
pub mod cache;
pub mod client_ip;
pub mod db;
pub mod error;
pub mod extract;
pub mod http_server;
pub mod pagination;
pub mod ratelimit;
pub mod telemetry;
pub mod validate;
