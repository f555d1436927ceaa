//! SQL of memberships: the member list (with each member's profile), one
//! member, their role and permissions, and changes to them.

use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::organizations::model::Member;

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
