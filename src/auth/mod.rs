//! Authentication (verifying Supabase-style access tokens) and authorization
//! (roles, permissions as types, and the org context that opens a tenant
//! transaction only for an authorised caller).

pub mod jwt;
pub mod principal;
pub mod rbac;

pub use principal::AuthUser;
pub use rbac::{OrgContext, PermSet, Permission, perm};
