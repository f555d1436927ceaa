//! Tenantry's own, GoTrue-compatible auth server under `/auth/v1`, so that
//! `@supabase/supabase-js` works against Tenantry unchanged: email and
//! password sign-up and sign-in, rotating refresh tokens, email links
//! (confirmation, password recovery, email change: [`flows`]), the
//! signed-in user, sign-out, settings and health, and the JWKS of the keys
//! that sign Tenantry's access tokens.
//!
//! Its tables (`app.auth_*`) are visible only to transactions that set
//! `app.auth = on` ([`sessions::begin`]); tenant code never sees them.

pub mod accounts;
pub mod errors;
pub mod flows;
pub mod routes;
pub mod sessions;

pub use routes::router;
