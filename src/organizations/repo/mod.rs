//! SQL of the organizations domain, one child per sub-resource; this module
//! only re-exports them. Every function runs on a connection that belongs to
//! a `TenantTx` (or `UserTx`), and still filters by `org_id`: RLS is the
//! second wall, not the only one. Lookups of accounts (a member by email, a
//! user's label) live in `users`; the member list still joins each member's
//! profile, as part of what a member is.

mod audit;
mod invitations;
mod members;
mod orgs;
mod roles;

pub use audit::*;
pub use invitations::*;
pub use members::*;
pub use orgs::*;
pub use roles::*;
