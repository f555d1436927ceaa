//! Reports: an org member asks for a CSV export (members, audit log); a
//! background job builds it into the object store; members with
//! `reports:read` follow its progress and download it.

pub mod build;
pub mod error;
pub mod routes;
pub mod service;

pub use routes::router;
