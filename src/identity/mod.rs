//! Tenantry's own, GoTrue-compatible auth server under `/auth/v1`, so that
//! `@supabase/supabase-js` works against Tenantry unchanged: email and
//! password sign-up and sign-in, rotating refresh tokens, email links
//! (confirmation, password recovery, email change: [`flows`]), the
//! signed-in user, sign-out, settings and health, and the JWKS of the keys
//! that sign Tenantry's access tokens.
//!
//! Its tables (`app.auth_*`) are visible only to transactions that set
//! `app.auth = on` ([`sessions::begin`]); tenant code never sees them.
//!
//! Inside, imports run one way: `routes` → `accounts`, `flows` (what the
//! endpoints do) → `sessions`, `links`, `limits` → `store` (the account
//! rows), `errors`, `state`.

pub mod accounts;
pub mod errors;
pub mod flows;
pub mod limits;
pub mod links;
pub mod routes;
pub mod sessions;
pub mod state;
pub mod store;

pub use routes::router;
pub use state::IdentityState;
