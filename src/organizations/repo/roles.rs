//! SQL of roles: the built-in ones every org starts with, and custom roles.

use sqlx::PgConnection;
use uuid::Uuid;

use crate::auth::rbac::{BUILTIN_ROLES, builtin_permissions};
use crate::organizations::model::Role;

macro_rules! role_columns {
    () => {
        "name, description, permissions, builtin, created_at, updated_at"
    };
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
