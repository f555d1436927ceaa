//! SQL of the org row itself: create, read, lock, rename, delete.

use sqlx::PgConnection;
use uuid::Uuid;

use crate::organizations::model::Organization;

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
