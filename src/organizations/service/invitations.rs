//! Invitations: creating one (with the job that emails its link), listing,
//! revoking, and accepting one with its token.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::Utc;
use rand::RngCore;
use serde_json::json;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::audit::audit;
use super::roles::role_perms;
use crate::auth::AuthUser;
use crate::auth::rbac::{Actor, OWNER};
use crate::core::db::{TenantTx, UserTx};
use crate::core::error::{Invalid, is_foreign_key_violation};
use crate::core::pagination::{Page, PageQuery};
use crate::core::validate::{Email, Fields, RoleName};
use crate::organizations::error::OrgError;
use crate::organizations::model::{
    AcceptInvitation, AcceptedInvitation, CreateInvitation, CreatedInvitation, Invitation,
};
use crate::organizations::repo;
use crate::users;

fn token_hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// What creating an invitation needs from the configuration.
#[derive(Debug, Clone)]
pub struct InviteSettings {
    pub ttl: std::time::Duration,
    /// The web app's base URL; the email links to `{app_url}/invitations/accept?token=...`.
    pub app_url: url::Url,
}

impl InviteSettings {
    pub fn from_config(c: &crate::config::Config) -> Self {
        InviteSettings {
            ttl: c.invitation_ttl,
            app_url: c.jobs.app_url.clone(),
        }
    }

    pub fn accept_url(&self, token: &str) -> String {
        let mut url = self.app_url.clone();
        let path = format!("{}/invitations/accept", url.path().trim_end_matches('/'));
        url.set_path(&path);
        url.query_pairs_mut().clear().append_pair("token", token);
        url.to_string()
    }
}

/// Creates an invitation and, in the same transaction, the job that emails
/// its link: the email goes out if and only if the invitation is committed.
pub async fn create_invitation(
    tx: &mut TenantTx,
    locked: &Actor,
    settings: &InviteSettings,
    input: CreateInvitation,
) -> Result<CreatedInvitation, OrgError> {
    let mut f = Fields::default();
    let email = f.check(Email::parse("email", &input.email));
    let role = f.check(RoleName::parse("role", &input.role));
    f.finish()?;
    let (email, role) = (email.expect("checked"), role.expect("checked"));
    let org_id = tx.org_id();
    let perms = role_perms(tx, "role", role.as_str()).await?;
    if role.as_str() == OWNER && !locked.is_owner() {
        return Err(OrgError::OwnerOnly("invite owners"));
    }
    if !perms.is_subset_of(locked.perms()) {
        return Err(OrgError::PermissionsNotHeld(
            "you cannot invite to a role with permissions you do not hold",
        ));
    }
    if users::service::is_member_email(tx.conn(), org_id, email.as_str()).await? {
        return Err(OrgError::AlreadyMember);
    }
    repo::close_expired_invitation(tx.conn(), org_id, email.as_str()).await?;
    if repo::has_open_invitation(tx.conn(), org_id, email.as_str()).await? {
        return Err(OrgError::InvitationExists);
    }
    // An open invitation holds a seat of the plan (the caller holds the org lock).
    crate::billing::subscriptions::ensure_seat_for_invitation(tx).await?;
    let mut raw = [0u8; 32];
    rand::rng().fill_bytes(&mut raw);
    let token = format!("inv_{}", URL_SAFE_NO_PAD.encode(raw));
    let expires_at =
        Utc::now() + chrono::Duration::from_std(settings.ttl).unwrap_or(chrono::Duration::days(7));
    let user_id = tx.user_id();
    let inv = repo::insert_invitation(
        tx.conn(),
        Uuid::now_v7(),
        org_id,
        email.as_str(),
        role.as_str(),
        &token_hash(&token),
        user_id,
        expires_at,
    )
    .await?;
    audit(
        tx,
        "invitation.created",
        "invitation",
        Some(inv.id.to_string()),
        None,
        Some(json!(inv)),
    )
    .await?;
    let org = repo::get_org(tx.conn(), org_id)
        .await?
        .ok_or(OrgError::OrgNotFound)?;
    let inviter = users::service::label(tx.conn(), user_id).await?;
    crate::jobs::enqueue(
        tx.conn(),
        &crate::mail::SendEmail {
            to: inv.email.clone(),
            template: crate::mail::templates::Template::Invitation {
                org_name: org.name,
                inviter,
                role: inv.role.clone(),
                accept_url: settings.accept_url(&token),
                expires_at: inv.expires_at,
            },
        },
    )
    .await?;
    Ok(CreatedInvitation {
        id: inv.id,
        email: inv.email,
        role: inv.role,
        invited_by: inv.invited_by,
        created_at: inv.created_at,
        expires_at: inv.expires_at,
        token,
    })
}

pub async fn list_invitations(
    tx: &mut TenantTx,
    q: &PageQuery,
) -> Result<Page<Invitation>, OrgError> {
    let limit = q.limit()?;
    let after: Option<Uuid> = q.after()?;
    let org_id = tx.org_id();
    let rows = repo::list_open_invitations(tx.conn(), org_id, after, limit + 1).await?;
    Ok(Page::from_rows(rows, limit, |i| i.id))
}

pub async fn revoke_invitation(
    tx: &mut TenantTx,
    _locked: &Actor,
    id: Uuid,
) -> Result<(), OrgError> {
    let org_id = tx.org_id();
    let inv = repo::revoke_invitation(tx.conn(), org_id, id)
        .await?
        .ok_or(OrgError::InvitationNotFound)?;
    audit(
        tx,
        "invitation.revoked",
        "invitation",
        Some(id.to_string()),
        Some(json!(inv)),
        None,
    )
    .await?;
    Ok(())
}

/// Accepts an invitation: the token finds it, the caller's verified email must
/// match, and it works once, before it expires. Also returns the other orgs
/// whose cached member lists show the caller, if provisioning changed them.
pub async fn accept_invitation(
    pool: &sqlx::PgPool,
    user: &AuthUser,
    input: AcceptInvitation,
) -> Result<(AcceptedInvitation, Vec<Uuid>), OrgError> {
    let token = input.token.trim();
    if token.is_empty() || token.len() > 256 {
        return Err(Invalid::field("token", "invalid_token", "not an invitation token").into());
    }
    let hash = token_hash(token);
    // Tenantry's own users: the account row says which address is
    // confirmed (a token's claims are not evidence). Others: the token.
    let verified_email = if user.own {
        users::service::confirmed_email(pool, user.id).await?
    } else {
        user.email.clone().filter(|_| user.email_verified)
    };
    let mut utx = UserTx::enter(pool, user.id, Some(&hash)).await?;
    let stale = users::service::provision(&mut utx, user).await?;
    let found = repo::find_invitation_by_token(utx.conn(), &hash)
        .await?
        .ok_or(OrgError::InvitationNotFound)?;
    let mut tx = TenantTx::from_user_tx(utx, found.org_id).await?;
    let org_id = tx.org_id();
    // The org row lock first (as every change to the org takes it), so the
    // seat count below cannot move under concurrent acceptances or invitations.
    if repo::lock_org(tx.conn(), org_id).await?.is_none() {
        return Err(OrgError::InvitationNotFound);
    }
    let inv = repo::lock_invitation(tx.conn(), org_id, found.id)
        .await?
        .ok_or(OrgError::InvitationNotFound)?;
    if inv.revoked_at.is_some() {
        return Err(OrgError::InvitationNotFound);
    }
    if inv.accepted_at.is_some() {
        return Err(OrgError::InvitationUsed);
    }
    if inv.expires_at <= Utc::now() {
        return Err(OrgError::InvitationExpired);
    }
    if verified_email.as_deref() != Some(inv.email.as_str()) {
        return Err(OrgError::EmailMismatch);
    }
    let role_exists = repo::get_role(tx.conn(), org_id, &inv.role)
        .await?
        .is_some();
    if !role_exists {
        return Err(OrgError::InvitationRoleMissing);
    }
    crate::billing::subscriptions::ensure_seat_for_member(&mut tx).await?;
    let inserted = repo::insert_membership(tx.conn(), org_id, user.id, &inv.role)
        .await
        .map_err(|e| {
            // The role went away between the check and the insert.
            if is_foreign_key_violation(&e) {
                OrgError::InvitationRoleMissing
            } else {
                e.into()
            }
        })?;
    if !inserted {
        return Err(OrgError::AlreadyJoined);
    }
    repo::mark_invitation_accepted(tx.conn(), org_id, inv.id, user.id).await?;
    let member = repo::get_member(tx.conn(), org_id, user.id).await?;
    audit(
        &mut tx,
        "invitation.accepted",
        "invitation",
        Some(inv.id.to_string()),
        None,
        None,
    )
    .await?;
    audit(
        &mut tx,
        "member.added",
        "member",
        Some(user.id.to_string()),
        None,
        member.map(|m| json!(m)),
    )
    .await?;
    let organization = repo::get_org(tx.conn(), org_id)
        .await?
        .ok_or(OrgError::OrgNotFound)?;
    tx.commit().await?;
    Ok((
        AcceptedInvitation {
            organization,
            role: inv.role,
        },
        stale,
    ))
}
