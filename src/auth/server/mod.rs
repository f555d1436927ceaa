//! Tenantry's own, GoTrue-compatible auth server under `/auth/v1`. So far:
//! the JWKS of the keys that sign Tenantry's access tokens.

mod routes;

pub use routes::router;
