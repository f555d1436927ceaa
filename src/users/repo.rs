//! SQL of the users domain: profiles, the orgs a user belongs to, and
//! lookups of accounts for other domains (a member by email, a user's label,
//! an own account's confirmed address in the auth server's table).

use sqlx::PgConnection;
use uuid::Uuid;

use super::model::{MyOrganization, User};

/// Inserts the user on first sight and keeps the email in step with the token;
/// writes nothing when nothing changed.
/// Returns whether an existing user's email changed.
pub async fn upsert(conn: &mut PgConnection, id: Uuid, email: Option<&str>) -> sqlx::Result<bool> {
    let changed: Option<bool> = sqlx::query_scalar(
        "insert into users (id, email) values ($1, $2)
         on conflict (id) do update set email = excluded.email, updated_at = now()
         where users.email is distinct from excluded.email and excluded.email is not null
         returning xmax <> 0",
    )
    .bind(id)
    .bind(email)
    .fetch_optional(conn)
    .await?;
    // `xmax <> 0`: the row was updated rather than inserted.
    Ok(changed == Some(true))
}

/// A new account's profile (the auth server's sign-up).
pub async fn insert(conn: &mut PgConnection, id: Uuid, email: &str) -> sqlx::Result<()> {
    sqlx::query("insert into users (id, email) values ($1, $2)")
        .bind(id)
        .bind(email)
        .execute(conn)
        .await?;
    Ok(())
}

pub async fn set_email(conn: &mut PgConnection, id: Uuid, email: &str) -> sqlx::Result<()> {
    sqlx::query("update users set email = $2, updated_at = now() where id = $1")
        .bind(id)
        .bind(email)
        .execute(conn)
        .await?;
    Ok(())
}

pub async fn get(conn: &mut PgConnection, id: Uuid) -> sqlx::Result<Option<User>> {
    sqlx::query_as(
        "select id, email, display_name, avatar_url, created_at, updated_at from users where id = $1",
    )
    .bind(id)
    .fetch_optional(conn)
    .await
}

pub async fn update_profile(
    conn: &mut PgConnection,
    id: Uuid,
    display_name: Option<Option<&str>>,
    avatar_url: Option<Option<&str>>,
) -> sqlx::Result<User> {
    sqlx::query_as(
        "update users set
            display_name = case when $2 then $3 else display_name end,
            avatar_url = case when $4 then $5 else avatar_url end,
            updated_at = now()
         where id = $1
         returning id, email, display_name, avatar_url, created_at, updated_at",
    )
    .bind(id)
    .bind(display_name.is_some())
    .bind(display_name.flatten())
    .bind(avatar_url.is_some())
    .bind(avatar_url.flatten())
    .fetch_one(conn)
    .await
}

/// The user's orgs, visible through the user-only context (RLS shows only the
/// user's own memberships and their orgs).
pub async fn list_organizations(
    conn: &mut PgConnection,
    user_id: Uuid,
    after: Option<Uuid>,
    limit: i64,
) -> sqlx::Result<Vec<MyOrganization>> {
    sqlx::query_as(
        "select o.id, o.name, o.slug, m.role, m.created_at as joined_at
         from memberships m join organizations o on o.id = m.org_id
         where m.user_id = $1 and ($2::uuid is null or o.id > $2)
         order by o.id limit $3",
    )
    .bind(user_id)
    .bind(after)
    .bind(limit)
    .fetch_all(conn)
    .await
}

/// Ids of the orgs the user belongs to (through the user-only context).
pub async fn org_ids(conn: &mut PgConnection, user_id: Uuid) -> sqlx::Result<Vec<Uuid>> {
    sqlx::query_scalar("select org_id from memberships where user_id = $1")
        .bind(user_id)
        .fetch_all(conn)
        .await
}

/// Whether a member of `org_id` has `email` (compared in lower case).
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

/// A user's display name, else their email (for "X invited you").
pub async fn label(conn: &mut PgConnection, user_id: Uuid) -> sqlx::Result<Option<String>> {
    let row: Option<(Option<String>, Option<String>)> =
        sqlx::query_as("select display_name, email from users where id = $1")
            .bind(user_id)
            .fetch_optional(conn)
            .await?;
    Ok(row.and_then(|(name, email)| name.filter(|n| !n.trim().is_empty()).or(email)))
}

/// The confirmed address of an account of the auth server (its table,
/// `app.auth_accounts`; run under `core::db::auth_tx`).
pub async fn confirmed_email(
    conn: &mut PgConnection,
    user_id: Uuid,
) -> sqlx::Result<Option<String>> {
    sqlx::query_scalar(
        "select email from app.auth_accounts where user_id = $1 and email_confirmed_at is not null",
    )
    .bind(user_id)
    .fetch_optional(conn)
    .await
}
