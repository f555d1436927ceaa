//! [`OrgError`]: what the organizations domain answers when an org, member,
//! role or invitation change cannot be made. The HTTP layer maps it to
//! problems in one place (`routes.rs`); jobs read its variants.

use crate::auth::rbac::Permission;
use crate::billing::subscriptions::seats::SeatError;
use crate::core::error::Invalid;
use crate::core::pagination::PageError;

/// Why an organizations service refused, or failed.
#[derive(Debug, thiserror::Error)]
pub enum OrgError {
    #[error(transparent)]
    Invalid(#[from] Invalid),
    #[error(transparent)]
    Page(#[from] PageError),
    #[error(transparent)]
    Db(#[from] sqlx::Error),
    /// The plan's seats refuse another invitation or member (billing).
    #[error(transparent)]
    Seats(#[from] SeatError),

    #[error("organization not found")]
    OrgNotFound,
    #[error("member not found")]
    MemberNotFound,
    #[error("role not found")]
    RoleNotFound,
    #[error("invitation not found")]
    InvitationNotFound,

    /// Only an owner may do this; names the act ("invite owners").
    #[error("only an owner can {0}")]
    OwnerOnly(&'static str),
    /// The act would grant, or touch, permissions the actor does not hold
    /// (nobody grants what they lack); says which act.
    #[error("{0}")]
    PermissionsNotHeld(&'static str),
    /// Acting on another member needs this permission.
    #[error("this action needs {}", .0.as_str())]
    MissingPermission(Permission),
    /// The invitation was sent to another address, or the caller's is not verified.
    #[error("this invitation was sent to another email address (or yours is not verified)")]
    EmailMismatch,

    #[error("this slug is already in use")]
    SlugTaken,
    /// A member of the org has the address being invited.
    #[error("a member has this email")]
    AlreadyMember,
    /// The caller accepting an invitation is a member already.
    #[error("you are already a member of this organization")]
    AlreadyJoined,
    #[error("an open invitation to this email exists; revoke it first")]
    InvitationExists,
    #[error("this invitation was already accepted")]
    InvitationUsed,
    #[error("this invitation has expired")]
    InvitationExpired,
    /// The role an invitation names was deleted since it was sent.
    #[error("the role of this invitation no longer exists")]
    InvitationRoleMissing,
    /// Demoting the last owner.
    #[error("the organization must keep at least one owner")]
    LastOwner,
    /// The last owner leaving, or being removed.
    #[error("the last owner cannot leave; transfer ownership or delete the organization")]
    LastOwnerLeaving,
    /// A custom role may not take a built-in role's name.
    #[error("a built-in role has this name")]
    BuiltinRoleName,
    #[error("a role with this name exists")]
    RoleExists,
    #[error("an organization may define at most {limit} roles")]
    RoleLimitReached { limit: i64 },
    /// Built-in roles are fixed.
    #[error("built-in roles cannot be changed or deleted")]
    BuiltinRole,
    /// Members, open invitations or live API keys hold the role.
    #[error("members, open invitations or live API keys still have this role")]
    RoleInUse,
}
