//! Permissions and roles. Permissions are a closed set, each with a marker
//! type in [`perm`] that routes name in their extractor's type. Built-in
//! roles are `owner`, `admin`, `member` and `viewer`; orgs add custom roles
//! as named permission sets.

use serde::Serialize;
use utoipa::ToSchema;

macro_rules! permissions {
    ($($variant:ident = $name:literal : $desc:literal,)*) => {
        /// Every permission Tenantry knows.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Permission { $($variant,)* }

        impl Permission {
            pub const ALL: &'static [Permission] = &[$(Permission::$variant,)*];

            pub fn as_str(self) -> &'static str {
                match self { $(Permission::$variant => $name,)* }
            }

            pub fn description(self) -> &'static str {
                match self { $(Permission::$variant => $desc,)* }
            }

            pub fn parse(s: &str) -> Option<Permission> {
                match s { $($name => Some(Permission::$variant),)* _ => None }
            }
        }

        /// Marker types naming one permission each, for `OrgContext<P>`.
        pub mod perm {
            use crate::auth::permissions::{OWNER, PermRequirement, PermSet, Permission, Requirement};

            $(
                #[doc = $desc]
                pub struct $variant;
                impl Requirement for $variant {
                    fn allows(_role: &str, perms: PermSet) -> bool {
                        perms.contains(Permission::$variant)
                    }
                    fn describe() -> &'static str { $name }
                }
                impl PermRequirement for $variant {
                    const PERMISSION: Permission = Permission::$variant;
                }
            )*

            /// Any member, whatever their role (leaving an org).
            pub struct AnyMember;
            impl Requirement for AnyMember {
                fn allows(_role: &str, _perms: PermSet) -> bool {
                    true
                }
                fn describe() -> &'static str { "membership" }
            }

            /// Only an owner of the org (transfer of ownership).
            pub struct Owner;
            impl Requirement for Owner {
                fn allows(role: &str, _perms: PermSet) -> bool {
                    role == OWNER
                }
                fn describe() -> &'static str { "the owner role" }
            }
        }
    };
}

permissions! {
    OrgRead = "org:read": "See the organization",
    OrgUpdate = "org:update": "Rename the organization or change its slug",
    OrgDelete = "org:delete": "Delete the organization (owners only)",
    MembersRead = "members:read": "List members and roles",
    MembersManage = "members:manage": "Change members' roles and remove members",
    InvitationsManage = "invitations:manage": "Invite people and revoke invitations",
    RolesManage = "roles:manage": "Create, change and delete custom roles",
    AuditRead = "audit:read": "Read the audit log",
    BillingRead = "billing:read": "See plan, subscription and invoices",
    BillingManage = "billing:manage": "Change plan and payment details",
    CreditsRead = "credits:read": "See the credit balance and ledger",
    CreditsSpend = "credits:spend": "Spend credits",
    ApikeysManage = "apikeys:manage": "Create and revoke API keys",
    ReportsCreate = "reports:create": "Start report jobs",
    ReportsRead = "reports:read": "See and download reports",
}

pub const OWNER: &str = "owner";
pub const ADMIN: &str = "admin";
pub const MEMBER: &str = "member";
pub const VIEWER: &str = "viewer";
pub const BUILTIN_ROLES: [&str; 4] = [OWNER, ADMIN, MEMBER, VIEWER];

/// Permissions only the built-in owner role may hold; custom roles cannot.
pub const OWNER_ONLY: &[Permission] = &[Permission::OrgDelete];

/// A set of permissions as a bit set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PermSet(u32);

impl PermSet {
    pub fn all() -> Self {
        PermSet::from_iter(Permission::ALL.iter().copied())
    }

    pub fn contains(self, p: Permission) -> bool {
        self.0 & (1 << p as u32) != 0
    }

    pub fn is_subset_of(self, other: PermSet) -> bool {
        self.0 & !other.0 == 0
    }

    /// Permissions stored in the database; unknown names are ignored.
    pub fn from_names<S: AsRef<str>>(names: &[S]) -> Self {
        PermSet::from_iter(names.iter().filter_map(|n| Permission::parse(n.as_ref())))
    }

    pub fn iter(self) -> impl Iterator<Item = Permission> {
        Permission::ALL
            .iter()
            .copied()
            .filter(move |p| self.contains(*p))
    }

    pub fn names(self) -> Vec<String> {
        self.iter().map(|p| p.as_str().to_owned()).collect()
    }
}

impl FromIterator<Permission> for PermSet {
    fn from_iter<I: IntoIterator<Item = Permission>>(iter: I) -> Self {
        PermSet(iter.into_iter().fold(0, |acc, p| acc | (1 << p as u32)))
    }
}

/// The permissions of a built-in role.
pub fn builtin_permissions(role: &str) -> Option<PermSet> {
    use Permission::*;
    Some(match role {
        OWNER => PermSet::all(),
        ADMIN => PermSet::from_iter(
            Permission::ALL
                .iter()
                .copied()
                .filter(|p| !OWNER_ONLY.contains(p)),
        ),
        MEMBER => PermSet::from_iter([
            OrgRead,
            MembersRead,
            BillingRead,
            CreditsRead,
            CreditsSpend,
            ReportsCreate,
            ReportsRead,
        ]),
        VIEWER => PermSet::from_iter([OrgRead, MembersRead, CreditsRead, ReportsRead]),
        _ => return None,
    })
}

/// What a route requires of the caller's membership.
pub trait Requirement: Send + Sync + 'static {
    fn allows(role: &str, perms: PermSet) -> bool;
    fn describe() -> &'static str;
}

/// A requirement that is exactly one permission (so a SQL statement can check it).
pub trait PermRequirement: Requirement {
    const PERMISSION: Permission;
}

/// One permission as listed by `GET /api/v1/permissions`.
#[derive(Debug, Serialize, ToSchema)]
pub struct PermissionInfo {
    #[schema(example = "members:read")]
    pub name: &'static str,
    pub description: &'static str,
}

pub fn permission_catalog() -> Vec<PermissionInfo> {
    Permission::ALL
        .iter()
        .map(|p| PermissionInfo {
            name: p.as_str(),
            description: p.description(),
        })
        .collect()
}
