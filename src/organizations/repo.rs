//! SQL of the organizations domain. Every function runs on a connection that
//! belongs to a `TenantTx` (or `UserTx`), and still filters by `org_id`: RLS is
//! the second wall, not the only one.

use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

use super::model::{AuditEntry, Invitation, Member, Organization, Role};
use crate::auth::rbac::{BUILTIN_ROLES, builtin_permissions};

macro_rules! org_columns {
    () => {
        "id, name, slug, created_at, updated_at"
    };
}

pub async fn insert_org(
    conn: &mut PgConnection,
    id: Uuid,
    name: &str,
    slug: &str,
) -> sqlx::Result<Option<Organization>> {
    sqlx::query_as(
        "insert into organizations (id, name, slug) values ($1, $2, $3)
         on conflict (slug) do nothing
         returning id, name, slug, created_at, updated_at",
    )
    .bind(id)
    .bind(name)
    .bind(slug)
    .fetch_optional(conn)
    .await
}

pub async fn insert_builtin_roles(conn: &mut PgConnection, org_id: Uuid) -> sqlx::Result<()> {
    let names: Vec<&str> = BUILTIN_ROLES.to_vec();
    let descriptions: Vec<&str> = vec![
        "Full control, including deleting the organization and transferring ownership",
        "Manages members, roles, invitations, billing and API keys",
        "Works with the organization's data",
        "Read-only access",
    ];
    let perms: Vec<String> = BUILTIN_ROLES
        .iter()
        .map(|r| {
            let names = builtin_permissions(r).expect("built-in role").names();
            format!("{{{}}}", names.join(","))
        })
        .collect();
    sqlx::query(
        "insert into roles (org_id, name, description, permissions, builtin)
         select $1, n, d, p::text[], true from unnest($2::text[], $3::text[], $4::text[]) as t(n, d, p)",
    )
    .bind(org_id)
    .bind(names)
    .bind(descriptions)
    .bind(perms)
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn get_org(conn: &mut PgConnection, org_id: Uuid) -> sqlx::Result<Option<Organization>> {
    sqlx::query_as(concat!(
        "select ",
        org_columns!(),
        " from organizations where id = $1"
    ))
    .bind(org_id)
    .fetch_optional(conn)
    .await
}

/// Serialises changes to an org's memberships and roles: every such change
/// takes this row lock first, then reads the state it decides on.
pub async fn lock_org(conn: &mut PgConnection, org_id: Uuid) -> sqlx::Result<Option<Organization>> {
    sqlx::query_as(concat!(
        "select ",
        org_columns!(),
        " from organizations where id = $1 for update"
    ))
    .bind(org_id)
    .fetch_optional(conn)
    .await
}

pub async fn update_org(
    conn: &mut PgConnection,
    org_id: Uuid,
    name: Option<&str>,
    slug: Option<&str>,
) -> sqlx::Result<Organization> {
    sqlx::query_as(concat!("update organizations set name = coalesce($2, name), slug = coalesce($3, slug), updated_at = now()
         where id = $1 returning ", org_columns!()))
    .bind(org_id)
    .bind(name)
    .bind(slug)
    .fetch_one(conn)
    .await
}

pub async fn delete_org(conn: &mut PgConnection, org_id: Uuid) -> sqlx::Result<bool> {
    let r = sqlx::query("delete from organizations where id = $1")
        .bind(org_id)
        .execute(conn)
        .await?;
    Ok(r.rows_affected() == 1)
}

macro_rules! member_select {
    () => {
        "select m.user_id, u.email, u.display_name, u.avatar_url, m.role, m.created_at as joined_at
     from memberships m join users u on u.id = m.user_id"
    };
}

pub async fn list_members(
    conn: &mut PgConnection,
    org_id: Uuid,
    after: Option<(DateTime<Utc>, Uuid)>,
    limit: i64,
) -> sqlx::Result<Vec<Member>> {
    match after {
        None => {
            sqlx::query_as(concat!(
                member_select!(),
                " where m.org_id = $1 order by m.created_at, m.user_id limit $2"
            ))
            .bind(org_id)
            .bind(limit)
            .fetch_all(conn)
            .await
        }
        Some((at, id)) => {
            sqlx::query_as(concat!(
                member_select!(),
                " where m.org_id = $1 and (m.created_at, m.user_id) > ($2, $3)
             order by m.created_at, m.user_id limit $4"
            ))
            .bind(org_id)
            .bind(at)
            .bind(id)
            .bind(limit)
            .fetch_all(conn)
            .await
        }
    }
}

pub async fn get_member(
    conn: &mut PgConnection,
    org_id: Uuid,
    user_id: Uuid,
) -> sqlx::Result<Option<Member>> {
    sqlx::query_as(concat!(
        member_select!(),
        " where m.org_id = $1 and m.user_id = $2"
    ))
    .bind(org_id)
    .bind(user_id)
    .fetch_optional(conn)
    .await
}

/// A member's role name and its permissions, read fresh.
pub async fn member_role(
    conn: &mut PgConnection,
    org_id: Uuid,
    user_id: Uuid,
) -> sqlx::Result<Option<(String, Vec<String>)>> {
    sqlx::query_as(
        "select m.role, r.permissions from memberships m
         join roles r on r.org_id = m.org_id and r.name = m.role
         where m.org_id = $1 and m.user_id = $2",
    )
    .bind(org_id)
    .bind(user_id)
    .fetch_optional(conn)
    .await
}

pub async fn owner_count(conn: &mut PgConnection, org_id: Uuid) -> sqlx::Result<i64> {
    sqlx::query_scalar("select count(*) from memberships where org_id = $1 and role = 'owner'")
        .bind(org_id)
        .fetch_one(conn)
        .await
}

pub async fn insert_membership(
    conn: &mut PgConnection,
    org_id: Uuid,
    user_id: Uuid,
    role: &str,
) -> sqlx::Result<bool> {
    let r = sqlx::query(
        "insert into memberships (org_id, user_id, role) values ($1, $2, $3)
         on conflict (org_id, user_id) do nothing",
    )
    .bind(org_id)
    .bind(user_id)
    .bind(role)
    .execute(conn)
    .await?;
    Ok(r.rows_affected() == 1)
}

pub async fn set_member_role(
    conn: &mut PgConnection,
    org_id: Uuid,
    user_id: Uuid,
    role: &str,
) -> sqlx::Result<()> {
    sqlx::query(
        "update memberships set role = $3, updated_at = now() where org_id = $1 and user_id = $2",
    )
    .bind(org_id)
    .bind(user_id)
    .bind(role)
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn delete_member(
    conn: &mut PgConnection,
    org_id: Uuid,
    user_id: Uuid,
) -> sqlx::Result<()> {
    sqlx::query("delete from memberships where org_id = $1 and user_id = $2")
        .bind(org_id)
        .bind(user_id)
        .execute(conn)
        .await?;
    Ok(())
}

pub async fn is_member_email(
    conn: &mut PgConnection,
    org_id: Uuid,
    email: &str,
) -> sqlx::Result<bool> {
    sqlx::query_scalar(
        "select exists (select 1 from memberships m join users u on u.id = m.user_id
                        where m.org_id = $1 and lower(u.email) = $2)",
    )
    .bind(org_id)
    .bind(email)
    .fetch_one(conn)
    .await
}

macro_rules! role_columns {
    () => {
        "name, description, permissions, builtin, created_at, updated_at"
    };
}

pub async fn get_role(
    conn: &mut PgConnection,
    org_id: Uuid,
    name: &str,
) -> sqlx::Result<Option<Role>> {
    sqlx::query_as(concat!(
        "select ",
        role_columns!(),
        " from roles where org_id = $1 and name = $2"
    ))
    .bind(org_id)
    .bind(name)
    .fetch_optional(conn)
    .await
}

pub async fn list_roles(
    conn: &mut PgConnection,
    org_id: Uuid,
    after: Option<String>,
    limit: i64,
) -> sqlx::Result<Vec<Role>> {
    sqlx::query_as(concat!(
        "select ",
        role_columns!(),
        " from roles where org_id = $1 and ($2::text is null or name > $2)
         order by name limit $3"
    ))
    .bind(org_id)
    .bind(after)
    .bind(limit)
    .fetch_all(conn)
    .await
}

pub async fn count_custom_roles(conn: &mut PgConnection, org_id: Uuid) -> sqlx::Result<i64> {
    sqlx::query_scalar("select count(*) from roles where org_id = $1 and not builtin")
        .bind(org_id)
        .fetch_one(conn)
        .await
}

pub async fn insert_role(
    conn: &mut PgConnection,
    org_id: Uuid,
    name: &str,
    description: &str,
    permissions: &[String],
) -> sqlx::Result<Option<Role>> {
    sqlx::query_as(concat!(
        "insert into roles (org_id, name, description, permissions) values ($1, $2, $3, $4)
         on conflict (org_id, name) do nothing returning ",
        role_columns!()
    ))
    .bind(org_id)
    .bind(name)
    .bind(description)
    .bind(permissions)
    .fetch_optional(conn)
    .await
}

pub async fn update_role(
    conn: &mut PgConnection,
    org_id: Uuid,
    name: &str,
    description: Option<&str>,
    permissions: Option<&[String]>,
) -> sqlx::Result<Role> {
    sqlx::query_as(concat!("update roles set description = coalesce($3, description), permissions = coalesce($4, permissions),
                updated_at = now()
         where org_id = $1 and name = $2 returning ", role_columns!()))
    .bind(org_id)
    .bind(name)
    .bind(description)
    .bind(permissions)
    .fetch_one(conn)
    .await
}

/// Members holding the role, plus open invitations offering it.
pub async fn role_usage(conn: &mut PgConnection, org_id: Uuid, name: &str) -> sqlx::Result<i64> {
    sqlx::query_scalar(
        "select (select count(*) from memberships where org_id = $1 and role = $2)
              + (select count(*) from invitations where org_id = $1 and role = $2
                 and accepted_at is null and revoked_at is null and expires_at > now())
              + (select count(*) from api_keys where org_id = $1 and role = $2
                 and revoked_at is null and (expires_at is null or expires_at > now()))",
    )
    .bind(org_id)
    .bind(name)
    .fetch_one(conn)
    .await
}

pub async fn delete_role(conn: &mut PgConnection, org_id: Uuid, name: &str) -> sqlx::Result<()> {
    sqlx::query("delete from roles where org_id = $1 and name = $2 and not builtin")
        .bind(org_id)
        .bind(name)
        .execute(conn)
        .await?;
    Ok(())
}

macro_rules! invitation_columns {
    () => {
        "id, email, role, invited_by, created_at, expires_at"
    };
}

/// An invitation with the state the accept flow decides on.
#[derive(Debug, sqlx::FromRow)]
pub struct InvitationState {
    pub id: Uuid,
    pub org_id: Uuid,
    pub email: String,
    pub role: String,
    pub expires_at: DateTime<Utc>,
    pub accepted_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// Closes an open invitation to `email` whose time ran out, so a new one can be sent.
pub async fn close_expired_invitation(
    conn: &mut PgConnection,
    org_id: Uuid,
    email: &str,
) -> sqlx::Result<()> {
    sqlx::query(
        "update invitations set revoked_at = now()
         where org_id = $1 and email = $2 and accepted_at is null and revoked_at is null
           and expires_at <= now()",
    )
    .bind(org_id)
    .bind(email)
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn has_open_invitation(
    conn: &mut PgConnection,
    org_id: Uuid,
    email: &str,
) -> sqlx::Result<bool> {
    sqlx::query_scalar(
        "select exists (select 1 from invitations where org_id = $1 and email = $2
                        and accepted_at is null and revoked_at is null)",
    )
    .bind(org_id)
    .bind(email)
    .fetch_one(conn)
    .await
}

#[allow(clippy::too_many_arguments)]
pub async fn insert_invitation(
    conn: &mut PgConnection,
    id: Uuid,
    org_id: Uuid,
    email: &str,
    role: &str,
    token_hash: &[u8],
    invited_by: Uuid,
    expires_at: DateTime<Utc>,
) -> sqlx::Result<Invitation> {
    sqlx::query_as(concat!(
        "insert into invitations (id, org_id, email, role, token_hash, invited_by, expires_at)
         values ($1, $2, $3, $4, $5, $6, $7) returning ",
        invitation_columns!()
    ))
    .bind(id)
    .bind(org_id)
    .bind(email)
    .bind(role)
    .bind(token_hash)
    .bind(invited_by)
    .bind(expires_at)
    .fetch_one(conn)
    .await
}

pub async fn list_open_invitations(
    conn: &mut PgConnection,
    org_id: Uuid,
    after: Option<Uuid>,
    limit: i64,
) -> sqlx::Result<Vec<Invitation>> {
    sqlx::query_as(concat!(
        "select ",
        invitation_columns!(),
        " from invitations
         where org_id = $1 and accepted_at is null and revoked_at is null and expires_at > now()
           and ($2::uuid is null or id > $2)
         order by id limit $3"
    ))
    .bind(org_id)
    .bind(after)
    .bind(limit)
    .fetch_all(conn)
    .await
}

pub async fn revoke_invitation(
    conn: &mut PgConnection,
    org_id: Uuid,
    id: Uuid,
) -> sqlx::Result<Option<Invitation>> {
    sqlx::query_as(concat!(
        "update invitations set revoked_at = now()
         where org_id = $1 and id = $2 and accepted_at is null and revoked_at is null
         returning ",
        invitation_columns!()
    ))
    .bind(org_id)
    .bind(id)
    .fetch_optional(conn)
    .await
}

macro_rules! invitation_state {
    () => {
        "id, org_id, email, role, expires_at, accepted_at, revoked_at"
    };
}

/// Finds an invitation by its token hash; visible only under a user context
/// that presented the same hash.
pub async fn find_invitation_by_token(
    conn: &mut PgConnection,
    token_hash: &[u8],
) -> sqlx::Result<Option<InvitationState>> {
    sqlx::query_as(concat!(
        "select ",
        invitation_state!(),
        " from invitations where token_hash = $1"
    ))
    .bind(token_hash)
    .fetch_optional(conn)
    .await
}

pub async fn lock_invitation(
    conn: &mut PgConnection,
    org_id: Uuid,
    id: Uuid,
) -> sqlx::Result<Option<InvitationState>> {
    sqlx::query_as(concat!(
        "select ",
        invitation_state!(),
        " from invitations where org_id = $1 and id = $2 for update"
    ))
    .bind(org_id)
    .bind(id)
    .fetch_optional(conn)
    .await
}

pub async fn mark_invitation_accepted(
    conn: &mut PgConnection,
    org_id: Uuid,
    id: Uuid,
    user_id: Uuid,
) -> sqlx::Result<()> {
    sqlx::query(
        "update invitations set accepted_at = now(), accepted_by = $3 where org_id = $1 and id = $2",
    )
    .bind(org_id)
    .bind(id)
    .bind(user_id)
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn list_audit(
    conn: &mut PgConnection,
    org_id: Uuid,
    before: Option<Uuid>,
    limit: i64,
) -> sqlx::Result<Vec<AuditEntry>> {
    sqlx::query_as(
        "select id, actor_id, action, target_type, target_id, before, after, request_id, created_at
         from audit_log where org_id = $1 and ($2::uuid is null or id < $2)
         order by id desc limit $3",
    )
    .bind(org_id)
    .bind(before)
    .bind(limit)
    .fetch_all(conn)
    .await
}

/// A user's display name, else their email (for "X invited you").
pub async fn user_label(conn: &mut PgConnection, user_id: Uuid) -> sqlx::Result<Option<String>> {
    let row: Option<(Option<String>, Option<String>)> =
        sqlx::query_as("select display_name, email from users where id = $1")
            .bind(user_id)
            .fetch_optional(conn)
            .await?;
    Ok(row.and_then(|(name, email)| name.filter(|n| !n.trim().is_empty()).or(email)))
}
