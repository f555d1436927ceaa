//! Role-based access control at the door of every org route: a route names
//! the permission it needs in the type of its [`OrgContext`] (or
//! [`OrgView`], [`OrgCall`]), so it cannot forget it; extraction checks the
//! caller's membership (or API key) against it inside the tenant transaction.
//! The permissions and built-in roles themselves are [`super::permissions`].

use std::marker::PhantomData;

use axum::extract::{FromRef, FromRequestParts};
use axum::http::request::Parts;
use uuid::Uuid;

use crate::auth::api_key::{self, KEY_DENIED, PresentedKey};
pub use crate::auth::permissions::*;
use crate::auth::{AuthState, AuthUser};
use crate::core::db::{MembershipRow, TenantTx};
use crate::core::error::ApiError;
use crate::core::extract::path_uuid;
use crate::core::pagination::{DEFAULT_LIMIT, PageQuery};

/// Who acts inside an org: a signed-in user, or an API key of the org.
#[derive(Debug, Clone)]
pub enum Caller {
    User(AuthUser),
    /// The key's id. A key has no user: `TenantTx::user_id()` is `Uuid::nil()`.
    ApiKey(Uuid),
}

impl Caller {
    pub fn user(&self) -> Option<&AuthUser> {
        match self {
            Caller::User(u) => Some(u),
            Caller::ApiKey(_) => None,
        }
    }

    pub fn api_key_id(&self) -> Option<Uuid> {
        match self {
            Caller::User(_) => None,
            Caller::ApiKey(id) => Some(*id),
        }
    }
}

/// The credential a request presents on an org route.
enum Credential {
    User(AuthUser),
    ApiKey(PresentedKey),
}

/// `Authorization: Bearer tnt_...` is an API key (malformed: 401
/// `invalid_api_key`); anything else must be a user's access token.
async fn credential(parts: &mut Parts, state: &AuthState) -> Result<Credential, ApiError> {
    if let Ok(token) = crate::auth::principal::bearer_token(parts)
        && api_key::is_api_key(token)
    {
        return api_key::parse(token)
            .map(Credential::ApiKey)
            .ok_or_else(invalid_api_key);
    }
    AuthUser::authenticate(parts, state)
        .await
        .map(Credential::User)
}

/// 401 for an API key that is malformed, unknown, revoked or expired (alike).
pub fn invalid_api_key() -> ApiError {
    ApiError::Status {
        status: axum::http::StatusCode::UNAUTHORIZED,
        code: "invalid_api_key",
        detail: "the API key is invalid, revoked or expired".into(),
    }
}

/// An authorised caller inside one org, with the tenant transaction open.
///
/// Extraction verifies the token, reads `{org_id}` from the path, opens a
/// [`TenantTx`] and checks membership and `R` in the same statement. Not a
/// member (or no such org): 404. A member without `R`: 403.
///
/// An API key (`Bearer tnt_...`) names its org: on another org's path it
/// gets 404; unknown, revoked or expired it gets 401 `invalid_api_key`;
/// otherwise its role is checked against `R` as a member's would be, minus
/// [`KEY_DENIED`] (403).
pub struct OrgContext<R> {
    pub tx: TenantTx,
    pub org_id: Uuid,
    pub caller: Caller,
    pub role: String,
    pub perms: PermSet,
    cache: crate::core::cache::Cache,
    _requirement: PhantomData<R>,
}

/// Not a member (or no such org): 404. A member whose role does not meet `R`: 403.
/// For an API key: no live key (or an owner key, which cannot be made): 401;
/// its permissions never include [`KEY_DENIED`].
fn authorize<R: Requirement>(
    membership: Option<MembershipRow>,
    api_key: bool,
) -> Result<(MembershipRow, PermSet), ApiError> {
    let m = match membership {
        Some(m) if api_key && m.role == OWNER => return Err(invalid_api_key()),
        Some(m) => m,
        None if api_key => return Err(invalid_api_key()),
        None => return Err(ApiError::NotFound("organization")),
    };
    let mut perms = PermSet::from_names(&m.permissions);
    if api_key {
        perms = PermSet::from_iter(perms.iter().filter(|p| !KEY_DENIED.contains(p)));
    }
    if !R::allows(&m.role, perms) {
        return Err(ApiError::Forbidden {
            code: "permission_denied",
            detail: format!("this action needs {}", R::describe()),
        });
    }
    Ok((m, perms))
}

impl<R: Requirement, S> FromRequestParts<S> for OrgContext<R>
where
    S: Send + Sync,
    AuthState: FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let state = &AuthState::from_ref(state);
        let credential = credential(parts, state).await?;
        let org_id = path_uuid(parts, "org_id").await?;
        Ok(OrgContext::enter(state, org_id, credential).await?.0)
    }
}

impl<R: Requirement> OrgContext<R> {
    /// Opens the tenant transaction and checks `R`; also returns the
    /// membership it read (role and permission names).
    async fn enter(
        state: &AuthState,
        org_id: Uuid,
        credential: Credential,
    ) -> Result<(Self, MembershipRow), ApiError> {
        let (tx, caller, membership) = match credential {
            Credential::User(user) => {
                let (tx, membership) = TenantTx::enter(&state.pool, org_id, user.id).await?;
                (tx, Caller::User(user), membership)
            }
            // A key of another org: that org might as well not exist.
            Credential::ApiKey(key) if key.org_id != org_id => {
                return Err(ApiError::NotFound("organization"));
            }
            Credential::ApiKey(key) => {
                let (tx, found) = TenantTx::enter_api_key(&state.pool, org_id, &key.hash).await?;
                let Some(found) = found else {
                    return Err(invalid_api_key());
                };
                if found.touch {
                    // In the background: it needs a second connection, which
                    // must not be awaited while this request holds one.
                    let (pool, key_id) = (state.pool.clone(), found.key_id);
                    tokio::spawn(async move {
                        let touched = crate::core::db::touch_api_key(&pool, org_id, key_id);
                        if let Err(e) = touched.await {
                            tracing::warn!(error = %e, %key_id, "cannot record an API key's use");
                        }
                    });
                }
                (tx, Caller::ApiKey(found.key_id), Some(found.membership))
            }
        };
        let (m, perms) = authorize::<R>(membership, tx.api_key_id().is_some())?;
        let ctx = OrgContext {
            tx,
            org_id,
            caller,
            role: m.role.clone(),
            perms,
            cache: state.cache.clone(),
            _requirement: PhantomData,
        };
        Ok((ctx, m))
    }
}

/// A caller-independent, paginated read of an org (the same body for every
/// member), whose first pages are served from the tenant cache when they can be.
///
/// Extraction verifies the token and looks up, in one Redis round trip, the
/// caller's cached membership and the cached body of this exact path and query.
/// With both present and the membership meeting `R`, the body is served
/// without touching Postgres. Otherwise it opens an [`OrgContext`] as usual
/// (404/403 as there) and hands back a [`ViewFill`] to cache the fresh body.
///
/// API keys bypass the cache: they always read through Postgres (where the
/// key is checked live) and never fill it, so revoking a key takes effect on
/// the next request.
pub enum OrgView<R> {
    Cached(Vec<u8>),
    Fresh {
        ctx: Box<OrgContext<R>>,
        fill: ViewFill,
    },
}

/// Where a freshly read body goes in the cache (under the epoch seen before reading).
pub struct ViewFill {
    cache: crate::core::cache::Cache,
    org_id: Uuid,
    epoch: Option<String>,
    view: String,
}

impl ViewFill {
    /// Stores the body in the background; the response does not wait for it.
    pub fn store(self, body: Vec<u8>) {
        if let Some(epoch) = self.epoch {
            tokio::spawn(async move {
                self.cache
                    .store_view(self.org_id, &epoch, &self.view, body)
                    .await;
            });
        }
    }
}

impl<R: Requirement, S> FromRequestParts<S> for OrgView<R>
where
    S: Send + Sync,
    AuthState: FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let state = &AuthState::from_ref(state);
        let user = match credential(parts, state).await? {
            Credential::User(user) => user,
            key @ Credential::ApiKey(_) => {
                let org_id = path_uuid(parts, "org_id").await?;
                let (ctx, _) = OrgContext::enter(state, org_id, key).await?;
                let fill = ViewFill {
                    cache: state.cache.clone(),
                    org_id,
                    epoch: None,
                    view: String::new(),
                };
                return Ok(OrgView::Fresh {
                    ctx: Box::new(ctx),
                    fill,
                });
            }
        };
        let org_id = path_uuid(parts, "org_id").await?;
        // Only first pages are cached, under a key built from the parsed
        // limit: the key space per org stays small whatever callers send.
        let view = serde_urlencoded::from_str::<PageQuery>(parts.uri.query().unwrap_or_default())
            .ok()
            .filter(|q| q.cursor.is_none() && q.limit().is_ok())
            .zip(parts.extensions.get::<axum::extract::MatchedPath>())
            // The route template, not the raw path: one key however the org id is spelled.
            .map(|(q, route)| {
                format!(
                    "{}?limit={}",
                    route.as_str(),
                    q.limit().unwrap_or(DEFAULT_LIMIT)
                )
            });
        let found = match &view {
            Some(view) => state.cache.lookup(org_id, user.id, view).await,
            None => Default::default(),
        };
        if let Some((role, perms)) = &found.membership {
            let perms = PermSet::from_names(perms);
            if !R::allows(role, perms) {
                return Err(ApiError::Forbidden {
                    code: "permission_denied",
                    detail: format!("this action needs {}", R::describe()),
                });
            }
            if let Some(body) = found.body {
                return Ok(OrgView::Cached(body));
            }
        }
        let user_id = user.id;
        let (ctx, m) = OrgContext::enter(state, org_id, Credential::User(user)).await?;
        if let (Some(epoch), None) = (&found.epoch, &found.membership) {
            let (cache, epoch) = (state.cache.clone(), epoch.clone());
            tokio::spawn(async move {
                cache
                    .store_membership(org_id, user_id, &epoch, &m.role, &m.permissions)
                    .await;
            });
        }
        let fill = ViewFill {
            cache: state.cache.clone(),
            org_id,
            epoch: found.epoch.filter(|_| view.is_some()),
            view: view.unwrap_or_default(),
        };
        Ok(OrgView::Fresh {
            ctx: Box::new(ctx),
            fill,
        })
    }
}

/// The caller's role and permissions as read under the org's row lock.
///
/// Only [`OrgContext::lock`] makes one, so a service that takes an
/// `&Actor` decides on state no concurrent change can move under it.
#[derive(Debug, Clone)]
pub struct Actor {
    role: String,
    perms: PermSet,
}

impl Actor {
    pub fn role(&self) -> &str {
        &self.role
    }
    pub fn perms(&self) -> PermSet {
        self.perms
    }
    pub fn is_owner(&self) -> bool {
        self.role == OWNER
    }
}

impl<R: Requirement> OrgContext<R> {
    /// Commits a change to the org, then invalidates its cached reads.
    pub async fn commit_changes(self) -> Result<(), ApiError> {
        let (org_id, cache) = (self.org_id, self.cache);
        self.tx.commit().await?;
        cache.invalidate_org(org_id).await;
        Ok(())
    }

    /// Serialises this request with every other change to the org: takes the
    /// org row lock, re-reads the caller's membership (or API key: revoked or
    /// expired meanwhile is 401) and checks `R` again.
    pub async fn lock(&mut self) -> Result<Actor, ApiError> {
        let api_key = self.tx.api_key_id().is_some();
        let (m, perms) = authorize::<R>(self.tx.lock_org().await?, api_key)?;
        self.role = m.role.clone();
        self.perms = perms;
        Ok(Actor {
            role: m.role,
            perms,
        })
    }
}

/// A verified caller of an org route whose authorisation is left to the
/// route's one SQL statement, for hot writes that must hold a row lock only
/// inside the database (spending credits): the statement enters the org as
/// the caller (`app.enter_org` / `app.enter_api_key`, as [`TenantTx`] does),
/// checks [`OrgCall::permission`], acts, and commits as it ends, so no lock
/// ever waits on a round trip to this process. When the statement refuses,
/// it returns the membership it read, and [`OrgCall::refused`] turns that
/// into the same 404 / 403 / 401 an [`OrgContext`] would give.
pub struct OrgCall<R> {
    pub org_id: Uuid,
    /// The user, or `None` for an API key.
    pub user_id: Option<Uuid>,
    /// The SHA-256 of the presented API key.
    pub key_hash: Option<[u8; 32]>,
    pool: sqlx::PgPool,
    _requirement: PhantomData<R>,
}

impl<R: PermRequirement, S> FromRequestParts<S> for OrgCall<R>
where
    S: Send + Sync,
    AuthState: FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let state = &AuthState::from_ref(state);
        let credential = credential(parts, state).await?;
        let org_id = path_uuid(parts, "org_id").await?;
        let (user_id, key_hash) = match credential {
            Credential::User(user) => (Some(user.id), None),
            // A key of another org: that org might as well not exist.
            Credential::ApiKey(key) if key.org_id != org_id => {
                return Err(ApiError::NotFound("organization"));
            }
            Credential::ApiKey(key) => (None, Some(key.hash)),
        };
        Ok(OrgCall {
            org_id,
            user_id,
            key_hash,
            pool: state.pool.clone(),
            _requirement: PhantomData,
        })
    }
}

impl<R: PermRequirement> OrgCall<R> {
    /// The permission the statement must find in the caller's membership
    /// (none an API key may never use: those are refused there too).
    pub fn permission(&self) -> &'static str {
        if self.key_hash.is_some() && KEY_DENIED.contains(&R::PERMISSION) {
            ""
        } else {
            R::PERMISSION.as_str()
        }
    }

    /// The statement refused: `membership` is what it read (`None`: not a
    /// member, or no live key). Always an error.
    pub fn refused(&self, membership: Option<MembershipRow>) -> ApiError {
        match authorize::<R>(membership, self.key_hash.is_some()) {
            Err(e) => e,
            Ok(_) => ApiError::Internal(anyhow::anyhow!(
                "the statement refused what the authorisation rules allow"
            )),
        }
    }

    /// Records an API key's use in the background, as [`OrgContext`] does.
    pub fn touch_key(&self, key_id: Uuid) {
        let (pool, org_id) = (self.pool.clone(), self.org_id);
        tokio::spawn(async move {
            if let Err(e) = crate::core::db::touch_api_key(&pool, org_id, key_id).await {
                tracing::warn!(error = %e, %key_id, "cannot record an API key's use");
            }
        });
    }
}

/// Why a job may not act for the user who started it, now.
#[derive(Debug, thiserror::Error)]
pub enum ActForError {
    /// The user left the org (or it is gone).
    #[error("organization not found")]
    NotMember,
    /// The user's role no longer holds what the job needs.
    #[error("this action needs {0}")]
    Lacks(&'static str),
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

/// A background job acting for the user who started it: a transaction in
/// the org as that user, under the org's row lock, with `R` checked against
/// their membership now (not when they made the request).
pub async fn act_for<R: Requirement>(
    pool: &sqlx::PgPool,
    org_id: Uuid,
    user_id: Uuid,
) -> Result<(TenantTx, Actor), ActForError> {
    let (mut tx, _) = TenantTx::enter(pool, org_id, user_id).await?;
    let m = tx.lock_org().await?.ok_or(ActForError::NotMember)?;
    let perms = PermSet::from_names(&m.permissions);
    if !R::allows(&m.role, perms) {
        return Err(ActForError::Lacks(R::describe()));
    }
    Ok((
        tx,
        Actor {
            role: m.role,
            perms,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_roles_nest() {
        let owner = builtin_permissions(OWNER).unwrap();
        let admin = builtin_permissions(ADMIN).unwrap();
        let member = builtin_permissions(MEMBER).unwrap();
        let viewer = builtin_permissions(VIEWER).unwrap();
        assert!(viewer.is_subset_of(member));
        assert!(member.is_subset_of(admin));
        assert!(admin.is_subset_of(owner));
        assert!(!admin.contains(Permission::OrgDelete));
        assert!(owner.contains(Permission::OrgDelete));
        assert!(!viewer.contains(Permission::CreditsSpend));
        assert!(builtin_permissions("custom").is_none());
    }

    #[test]
    fn names_round_trip() {
        for p in Permission::ALL {
            assert_eq!(Permission::parse(p.as_str()), Some(*p));
        }
        let set = PermSet::from_names(&["org:read", "nope", "audit:read"]);
        assert_eq!(set.names(), vec!["org:read", "audit:read"]);
    }
}
