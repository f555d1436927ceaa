//! Authentication (verifying Supabase-style access tokens, and signing
//! Tenantry's own with the keys in [`keys`]) and authorization
//! (roles, permissions as types, and the org context that opens a tenant
//! transaction only for an authorised caller).

pub mod api_key;
pub mod ended_sessions;
pub mod jwt;
pub mod keys;
pub mod password;
pub mod permissions;
pub mod principal;
pub mod rbac;
pub mod state;

pub use permissions::{PermSet, Permission, perm};
pub use principal::AuthUser;
pub use rbac::OrgContext;
pub use state::AuthState;
