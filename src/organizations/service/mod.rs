//! Business rules of organizations, memberships, roles and invitations, one
//! child per sub-resource; this module only re-exports them. Every function
//! takes the caller's transaction; changes and their audit rows commit
//! together or not at all.
//!
//! Invariants kept here, under the org row lock (functions that change
//! anything take an [`Actor`](crate::auth::rbac::Actor), which only
//! `OrgContext::lock` makes) so that concurrent requests decide on fresh
//! state one at a time:
//! * an org always has at least one owner;
//! * nobody grants a role holding permissions they do not hold themselves;
//! * only an owner makes or unmakes owners.

mod audit;
mod invitations;
mod members;
mod orgs;
mod roles;

pub use audit::list_audit;
pub use invitations::{
    InviteSettings, accept_invitation, create_invitation, list_invitations, revoke_invitation,
};
pub use members::{change_member_role, list_members, remove_member, transfer_ownership};
pub use orgs::{create_org, delete_org, get_org, update_org};
pub use roles::{MAX_CUSTOM_ROLES, create_role, delete_role, find_role, list_roles, update_role};
