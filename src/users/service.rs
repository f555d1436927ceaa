//! Business rules of the users domain, and the one home of account lookups
//! other domains need (a member by email, a user's label, the confirmed
//! address of an own account).

use super::error::UserError;
use super::model::{MyOrganization, UpdateMe, User};
use super::repo;
use crate::auth::AuthUser;
use crate::core::db::UserTx;
use crate::core::pagination::{Page, PageQuery};
use crate::core::validate::{self, Fields};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

/// Makes sure the token's user exists (id = `sub`, email from the claim).
/// Returns the orgs whose cached member lists must be refreshed because the
/// email changed (none for a new user or an unchanged one).
pub async fn provision(tx: &mut UserTx, user: &AuthUser) -> Result<Vec<Uuid>, sqlx::Error> {
    let id = tx.user_id();
    // The auth server keeps its own users' email in step (only confirmed
    // addresses); an older token must not write a previous address back.
    let email = user.email.as_deref().filter(|_| !user.own);
    if repo::upsert(tx.conn(), id, email).await? {
        return my_org_ids(tx).await;
    }
    Ok(Vec::new())
}

/// The profile, and the orgs to refresh (see [`provision`]).
pub async fn me(tx: &mut UserTx, user: &AuthUser) -> Result<(User, Vec<Uuid>), UserError> {
    let stale = provision(tx, user).await?;
    let id = tx.user_id();
    let me = repo::get(tx.conn(), id).await?.ok_or(UserError::NotFound)?;
    Ok((me, stale))
}

/// Changes the profile; also returns the orgs whose member lists show it.
pub async fn update_me(
    tx: &mut UserTx,
    user: &AuthUser,
    input: UpdateMe,
) -> Result<(User, Vec<Uuid>), UserError> {
    let mut f = Fields::default();
    let display_name = match &input.display_name {
        Some(Some(n)) => f
            .check(validate::display_name("display_name", n))
            .map(|n| Some(Some(n))),
        Some(None) => Some(Some(None)),
        None => Some(None),
    };
    let avatar_url = match &input.avatar_url {
        Some(Some(u)) => f
            .check(validate::http_url("avatar_url", u))
            .map(|u| Some(Some(u))),
        Some(None) => Some(Some(None)),
        None => Some(None),
    };
    f.finish()?;
    let (display_name, avatar_url) = (display_name.expect("checked"), avatar_url.expect("checked"));
    let stale = provision(tx, user).await?;
    let id = tx.user_id();
    if display_name.is_none() && avatar_url.is_none() {
        let me = repo::get(tx.conn(), id).await?.ok_or(UserError::NotFound)?;
        return Ok((me, stale));
    }
    let me = repo::update_profile(
        tx.conn(),
        id,
        display_name.as_ref().map(|o| o.as_deref()),
        avatar_url.as_ref().map(|o| o.as_deref()),
    )
    .await?;
    let orgs = my_org_ids(tx).await?;
    Ok((me, orgs))
}

pub async fn my_organizations(
    tx: &mut UserTx,
    q: &PageQuery,
) -> Result<Page<MyOrganization>, UserError> {
    let limit = q.limit()?;
    let after = q.after()?;
    let id = tx.user_id();
    let rows = repo::list_organizations(tx.conn(), id, after, limit + 1).await?;
    Ok(Page::from_rows(rows, limit, |o| o.id))
}

/// The orgs whose cached reads show this user (their member lists).
pub async fn my_org_ids(tx: &mut UserTx) -> Result<Vec<Uuid>, sqlx::Error> {
    let id = tx.user_id();
    repo::org_ids(tx.conn(), id).await
}

/// The profile of an account the auth server creates, in its transaction
/// (acting as the new user).
pub async fn create_for_account(
    conn: &mut sqlx::PgConnection,
    id: Uuid,
    email: &str,
) -> sqlx::Result<()> {
    repo::insert(conn, id, email).await
}

/// Moves the profile to the account's newly confirmed address, in the auth
/// server's transaction (acting as the user). Returns the orgs whose member
/// lists show the address, to refresh.
pub async fn change_email(
    conn: &mut sqlx::PgConnection,
    id: Uuid,
    email: &str,
) -> sqlx::Result<Vec<Uuid>> {
    repo::set_email(&mut *conn, id, email).await?;
    repo::org_ids(conn, id).await
}

/// Whether a member of `org_id` has `email`, on the caller's connection
/// (an org's transaction: RLS shows its members).
pub async fn is_member_email(
    conn: &mut PgConnection,
    org_id: Uuid,
    email: &str,
) -> Result<bool, sqlx::Error> {
    repo::is_member_email(conn, org_id, email).await
}

/// A user's display name, else their email (for "X invited you").
pub async fn label(conn: &mut PgConnection, user_id: Uuid) -> Result<Option<String>, sqlx::Error> {
    repo::label(conn, user_id).await
}

/// The confirmed email address of an account of Tenantry's auth server
/// (`None`: no account, or not confirmed). Read from the auth server's
/// table in a transaction of its own.
pub async fn confirmed_email(pool: &PgPool, user_id: Uuid) -> Result<Option<String>, sqlx::Error> {
    let mut tx = crate::core::db::auth_tx(pool).await?;
    let email = repo::confirmed_email(&mut tx, user_id).await?;
    tx.rollback().await?;
    Ok(email)
}
