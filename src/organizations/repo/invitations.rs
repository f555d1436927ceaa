//! SQL of invitations: open ones per email, creation, revocation, and the
//! state the accept flow decides on.

use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::organizations::model::Invitation;

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
