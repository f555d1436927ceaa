//! `/auth/v1` routes: the GoTrue-compatible API `@supabase/supabase-js`
//! speaks, and the JWKS of Tenantry's signing keys.

use std::net::SocketAddr;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{
    ConnectInfo, FromRef, FromRequest, FromRequestParts, RawQuery, Request, State,
};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header, request::Parts};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::accounts::{self, UserUpdate};
use super::errors::{AuthError, api_version_header};
use super::flows::{self, VerifyRequest};
use super::limits;
use super::links::{self, TokenKind};
use super::sessions::{self, Origin};
use super::state::IdentityState;

pub fn router<S>() -> OpenApiRouter<S>
where
    S: Clone + Send + Sync + 'static,
    IdentityState: FromRef<S>,
{
    OpenApiRouter::new()
        .routes(routes!(jwks))
        .routes(routes!(signup))
        .routes(routes!(token))
        .routes(routes!(verify_get, verify_post))
        .routes(routes!(recover))
        .routes(routes!(get_user, update_user))
        .routes(routes!(reauthenticate))
        .routes(routes!(logout))
        .routes(routes!(settings))
        .routes(routes!(health))
        .routes(routes!(admin_update_user))
        .layer(axum::middleware::map_response(api_version_header))
}

// ------------------------------------------------------------------ extractors

/// The `apikey` header, when sent, must be an `anon` or `service_role` key
/// (HS256 with `JWT_SECRET`) or a valid access token; requests without one
/// are accepted (GoTrue itself does not check it; Supabase's gateway does).
pub struct ApiKey;

impl<S> FromRequestParts<S> for ApiKey
where
    S: Send + Sync,
    IdentityState: FromRef<S>,
{
    type Rejection = AuthError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, AuthError> {
        let state = IdentityState::from_ref(state);
        let Some(value) = parts.headers.get("apikey") else {
            return Ok(ApiKey);
        };
        let invalid = || {
            AuthError::new(
                StatusCode::UNAUTHORIZED,
                "invalid_api_key",
                "Invalid API key",
            )
        };
        let key = value.to_str().map_err(|_| invalid())?.trim();
        if state.verifier.verify_api_key(key).is_ok() || state.verifier.verify(key).await.is_ok() {
            Ok(ApiKey)
        } else {
            Err(invalid())
        }
    }
}

impl<S> FromRequestParts<S> for Origin
where
    S: Send + Sync,
    IdentityState: FromRef<S>,
{
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let state = IdentityState::from_ref(state);
        Ok(Origin {
            // The peer, or what trusted proxies say of the client: other
            // forwarding headers are the client's to forge.
            ip: crate::core::client_ip::client_ip(
                parts
                    .extensions
                    .get::<ConnectInfo<SocketAddr>>()
                    .map(|ci| ci.0.ip()),
                &parts.headers,
                &state.config.trusted_proxies,
            ),
            user_agent: parts
                .headers
                .get(header::USER_AGENT)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
        })
    }
}

/// A request body as a JSON object: `application/json` (or no Content-Type),
/// or `application/x-www-form-urlencoded` (every value a string). Unknown
/// fields are ignored, as GoTrue does (supabase-js sends
/// `gotrue_meta_security`, `code_challenge`, ...). An empty body reads as
/// `{}`; `sent` tells whether there was one.
pub struct AuthBody {
    fields: Map<String, Value>,
    sent: bool,
}

impl<S> FromRequest<S> for AuthBody
where
    S: Send + Sync,
{
    type Rejection = AuthError;

    async fn from_request(req: Request, state: &S) -> Result<Self, AuthError> {
        let mime = req.headers().get(header::CONTENT_TYPE).map(|v| {
            v.to_str()
                .unwrap_or("")
                .split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        });
        let form = match mime.as_deref() {
            None | Some("application/json") => false,
            Some(m) if m.starts_with("application/") && m.ends_with("+json") => false,
            Some("application/x-www-form-urlencoded") => true,
            Some(_) => {
                return Err(AuthError::validation(
                    "Content-Type must be application/json or application/x-www-form-urlencoded",
                ));
            }
        };
        let bytes = Bytes::from_request(req, state).await.map_err(|e| match e {
            BytesRejection::FailedToBufferBody(inner)
                if inner.status() == StatusCode::PAYLOAD_TOO_LARGE =>
            {
                AuthError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "request_too_large",
                    "Request body is larger than the limit",
                )
            }
            _ => AuthError::bad_request("bad_json", "Could not read the request body"),
        })?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(AuthBody {
                fields: Map::new(),
                sent: false,
            });
        }
        if form {
            let pairs: Vec<(String, String)> = serde_urlencoded::from_bytes(&bytes)
                .map_err(|_| AuthError::bad_request("bad_json", "Could not parse the form body"))?;
            return Ok(AuthBody {
                fields: pairs
                    .into_iter()
                    .map(|(k, v)| (k, Value::String(v)))
                    .collect(),
                sent: true,
            });
        }
        match serde_json::from_slice::<Value>(&bytes) {
            Ok(Value::Object(fields)) => Ok(AuthBody { fields, sent: true }),
            Ok(_) => Err(AuthError::bad_request(
                "bad_json",
                "Could not parse request body as JSON: expected an object",
            )),
            Err(e) => Err(AuthError::bad_request(
                "bad_json",
                format!("Could not parse request body as JSON: {e}"),
            )),
        }
    }
}

impl AuthBody {
    /// A string field (absent or null: None; another type: `bad_json`).
    fn string(&self, name: &str) -> Result<Option<String>, AuthError> {
        match self.fields.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(AuthError::bad_request(
                "bad_json",
                format!("Could not parse request body as JSON: {name} must be a string"),
            )),
        }
    }

    fn value(&self, name: &str) -> Option<Value> {
        self.fields.get(name).cloned()
    }
}

fn query_param(query: Option<&str>, name: &str) -> Result<Option<String>, AuthError> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query.unwrap_or(""))
        .map_err(|_| AuthError::validation("Malformed query string"))?;
    Ok(pairs.into_iter().find(|(k, _)| k == name).map(|(_, v)| v))
}

/// `redirect_to`: supabase-js sends it in the query; a body field also counts.
fn redirect_to(query: Option<&str>, body: &AuthBody) -> Result<Option<String>, AuthError> {
    Ok(query_param(query, "redirect_to")?
        .or(body.string("redirect_to")?)
        .filter(|r| !r.trim().is_empty()))
}

async fn limit_ip(
    state: &IdentityState,
    what: &str,
    origin: &Origin,
    quota: crate::core::ratelimit::Quota,
) -> Result<(), AuthError> {
    let ip = origin.limit_key();
    limits::limit(state, &format!("auth:{what}:ip:{ip}"), quota).await
}

// ------------------------------------------------------------------ documentation types

/// `POST /signup` body.
#[derive(Deserialize, ToSchema)]
#[allow(dead_code)]
struct SignupRequest {
    email: String,
    password: String,
    /// Initial `user_metadata`.
    #[schema(value_type = Option<Object>)]
    data: Option<Value>,
}

/// `POST /token` body: `email` and `password` for `grant_type=password`,
/// `refresh_token` for `grant_type=refresh_token`.
#[derive(Deserialize, ToSchema)]
#[allow(dead_code)]
struct TokenRequest {
    email: Option<String>,
    password: Option<String>,
    refresh_token: Option<String>,
}

/// What an emailed token is for: `signup` or `email` (confirmation),
/// `recovery`, `email_change`.
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
#[allow(dead_code)]
enum VerificationType {
    Signup,
    Email,
    Recovery,
    EmailChange,
}

/// `POST /verify` body: `type` and `token_hash` (the token of the emailed
/// link), or `type`, `token` and `email`.
#[derive(Deserialize, ToSchema)]
#[allow(dead_code)]
struct VerifyBody {
    #[serde(rename = "type")]
    kind: VerificationType,
    token_hash: Option<String>,
    token: Option<String>,
    email: Option<String>,
}

/// `GET /verify` query: the link of an auth email.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
struct VerifyLinkQuery {
    /// The emailed token.
    #[param(min_length = 1)]
    token: String,
    #[serde(rename = "type")]
    #[param(inline)]
    kind: VerificationType,
    /// Where to land: under `AUTH_SITE_URL` or in `AUTH_REDIRECT_ALLOW_LIST`
    /// (else the site).
    redirect_to: Option<String>,
}

/// `POST /token` `grant_type`.
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
#[allow(dead_code)]
enum GrantType {
    Password,
    RefreshToken,
}

/// `POST /logout` `scope`: this session (the default), all of the user's
/// sessions, or all but this one.
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
#[allow(dead_code)]
enum LogoutScope {
    Local,
    Global,
    Others,
}

/// `POST /recover` body.
#[derive(Deserialize, ToSchema)]
#[allow(dead_code)]
struct RecoverBody {
    email: String,
}

/// `PUT /user` body (`app_metadata` is not writable and is ignored).
#[derive(Deserialize, ToSchema)]
#[allow(dead_code)]
struct UserUpdateRequest {
    email: Option<String>,
    password: Option<String>,
    /// Merged into `user_metadata`; a null value removes the key.
    #[schema(value_type = Option<Object>)]
    data: Option<Value>,
    /// The code `GET /reauthenticate` emailed: needed for a new `email` or
    /// `password` when the session's sign-in is older than
    /// `AUTH_REAUTH_WINDOW_SECS` (default 600).
    nonce: Option<String>,
}

/// A GoTrue error (every error of `/auth/v1`, `application/json`).
#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
pub(crate) struct AuthErrorBody {
    #[schema(example = "invalid_credentials")]
    code: String,
    error_code: String,
    msg: String,
    message: String,
}

/// A session: `{access_token, token_type, expires_in, expires_at, refresh_token, user}`.
#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
struct SessionBody {
    access_token: String,
    #[schema(example = "bearer")]
    token_type: String,
    expires_in: i64,
    expires_at: i64,
    refresh_token: String,
    #[schema(value_type = Object)]
    user: Value,
}

// ------------------------------------------------------------------ handlers

/// Sessions need a signing key: without `AUTH_KEYS_SECRET` (outside `dev`)
/// this server verifies tokens but issues none — a clear 503, before any
/// account is created.
fn can_issue(state: &IdentityState) -> Result<(), AuthError> {
    if state.keys.can_sign() {
        return Ok(());
    }
    Err(AuthError::new(
        axum::http::StatusCode::SERVICE_UNAVAILABLE,
        "signing_unavailable",
        "This server issues no sessions: it has no signing key (set AUTH_KEYS_SECRET)",
    ))
}

/// Signs up with email and password. With autoconfirm the answer is a
/// session; otherwise the user, and a confirmation email is on its way (its
/// link leads to `GET /verify`, then to `redirect_to` when allowed). At most
/// 30 a minute per client IP.
#[utoipa::path(post, path = "/auth/v1/signup", tag = "auth", request_body = SignupRequest,
    params(("redirect_to" = Option<String>, Query, description = "Where the confirmation link lands")),
    responses(
        (status = 200, description = "A session (autoconfirm) or the unconfirmed user", body = SessionBody),
        (status = 400, body = AuthErrorBody), (status = 401, description = "`invalid_api_key`: the `apikey` header is not a key of this server", body = AuthErrorBody),
        (status = 422, body = AuthErrorBody), (status = 429, body = AuthErrorBody)))]
async fn signup(
    State(state): State<IdentityState>,
    _key: ApiKey,
    origin: Origin,
    RawQuery(query): RawQuery,
    body: AuthBody,
) -> Result<Json<Value>, AuthError> {
    if state.config.auth.autoconfirm {
        can_issue(&state)?;
    }
    limit_ip(&state, "signup", &origin, limits::per_ip(&state)).await?;
    let email = body.string("email")?.unwrap_or_default();
    let password = body.string("password")?.unwrap_or_default();
    let redirect = redirect_to(query.as_deref(), &body)?;
    let res = accounts::signup(
        &state,
        &email,
        &password,
        body.value("data"),
        redirect.as_deref(),
        &origin,
    )
    .await?;
    Ok(Json(res))
}

/// Uses an emailed token (`verifyOtp({token_hash, type})`): `signup`/`email`
/// confirms the address, `recovery` signs in (then `PUT /user {password}`),
/// `email_change` switches the address; each answers a session. Invalid,
/// expired or used: 403 `otp_expired`. At most 30 a minute and 20 in ten
/// minutes per client IP.
#[utoipa::path(post, path = "/auth/v1/verify", tag = "auth", request_body = VerifyBody,
    responses((status = 200, body = SessionBody),
        (status = 400, body = AuthErrorBody), (status = 401, description = "`invalid_api_key`: the `apikey` header is not a key of this server", body = AuthErrorBody),
        (status = 403, description = "`otp_expired`", body = AuthErrorBody),
        (status = 422, body = AuthErrorBody), (status = 429, body = AuthErrorBody)))]
async fn verify_post(
    State(state): State<IdentityState>,
    _key: ApiKey,
    origin: Origin,
    body: AuthBody,
) -> Result<Json<Value>, AuthError> {
    can_issue(&state)?;
    let kind = verification_kind(body.string("type")?.as_deref())?;
    let token_hash = body.string("token_hash")?.filter(|t| !t.is_empty());
    let token = body.string("token")?.filter(|t| !t.is_empty());
    let email = body.string("email")?;
    let (token, email) = match (token_hash, token) {
        (Some(hash), _) => (hash, None),
        (None, Some(token)) => {
            let Some(email) = email.filter(|e| !e.trim().is_empty()) else {
                return Err(AuthError::validation(
                    "Only an email address is supported with a token: send email",
                ));
            };
            (token, Some(email))
        }
        (None, None) => {
            return Err(AuthError::validation(
                "Verify requires a token_hash, or a token and an email",
            ));
        }
    };
    let req = VerifyRequest {
        kind,
        token: &token,
        email: email.as_deref(),
    };
    Ok(Json(flows::verify(&state, req, &origin).await?))
}

fn verification_kind(kind: Option<&str>) -> Result<TokenKind, AuthError> {
    match kind {
        None | Some("") => Err(AuthError::validation("Verify requires a verification type")),
        Some(t) => TokenKind::from_type(t).ok_or_else(|| {
            AuthError::validation(
                "Unsupported verification type: use signup, email, recovery or email_change",
            )
        }),
    }
}

/// The link in auth emails: uses the token and redirects (303) to
/// `redirect_to` when it is under `AUTH_SITE_URL` or in
/// `AUTH_REDIRECT_ALLOW_LIST` (else to `AUTH_SITE_URL`), with the session in
/// the fragment (`#access_token=..&refresh_token=..&expires_in=..&token_type=bearer&type=..`)
/// or the error (`#error=..&error_code=otp_expired&error_description=..`).
/// A request that is no such link (no `token`, no or another `type`) is a
/// 400 `validation_failed`, as GoTrue answers it.
#[utoipa::path(get, path = "/auth/v1/verify", tag = "auth",
    params(VerifyLinkQuery),
    responses((status = 303, description = "To the site, the session or the error in the fragment"),
        (status = 400, description = "`validation_failed`: not a verification link", body = AuthErrorBody),
        (status = 401, description = "`invalid_api_key`: the `apikey` header is not a key of this server", body = AuthErrorBody)))]
async fn verify_get(
    State(state): State<IdentityState>,
    _key: ApiKey,
    origin: Origin,
    RawQuery(query): RawQuery,
) -> Response {
    let link = match verify_link_query(query.as_deref()) {
        Ok(link) => link,
        Err(e) => return e.into_response(),
    };
    let mut target = links::redirect_target(&state, link.redirect_to.as_deref());
    let outcome = async {
        can_issue(&state)?;
        let req = VerifyRequest {
            kind: link.kind,
            token: &link.token,
            email: None,
        };
        flows::verify(&state, req, &origin).await
    }
    .await;
    let mut fragment = url::form_urlencoded::Serializer::new(String::new());
    match outcome {
        Ok(session) => {
            for key in [
                "access_token",
                "expires_at",
                "expires_in",
                "refresh_token",
                "token_type",
            ] {
                let value = match &session[key] {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                fragment.append_pair(key, &value);
            }
            fragment.append_pair("type", &link.type_name);
        }
        Err(e) => {
            let error = if e.status.is_server_error() {
                "server_error"
            } else {
                "access_denied"
            };
            fragment
                .append_pair("error", error)
                .append_pair("error_code", e.code)
                .append_pair("error_description", &e.message);
        }
    }
    target.set_fragment(Some(&fragment.finish()));
    let mut res = axum::response::Redirect::to(target.as_str()).into_response();
    let headers = res.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    res
}

/// The query of `GET /verify`, when it has the shape of an emailed link.
struct VerifyLink {
    kind: TokenKind,
    /// `type` as sent (`signup` or `email` both confirm).
    type_name: String,
    token: String,
    redirect_to: Option<String>,
}

/// A query without the shape of a link (malformed, no `token`, no or an
/// unsupported `type`) is refused as GoTrue refuses it: 400
/// `validation_failed`, not a redirect. Whether the token is good is for
/// [`flows::verify`], and its failures redirect.
fn verify_link_query(query: Option<&str>) -> Result<VerifyLink, AuthError> {
    let type_name = query_param(query, "type")?;
    let kind = verification_kind(type_name.as_deref())?;
    let Some(token) = query_param(query, "token")?.filter(|t| !t.is_empty()) else {
        return Err(AuthError::validation("Verify requires a token"));
    };
    Ok(VerifyLink {
        kind,
        type_name: type_name.unwrap_or_default(),
        token,
        redirect_to: query_param(query, "redirect_to")?,
    })
}

/// Sends a password recovery link (`resetPasswordForEmail`): always `{}`,
/// whether or not the address has an account (an email goes only to an
/// existing, confirmed one, at most once a minute). At most 30 a minute per
/// client IP and 5 an hour per address, else 429.
#[utoipa::path(post, path = "/auth/v1/recover", tag = "auth", request_body = RecoverBody,
    params(("redirect_to" = Option<String>, Query, description = "Where the recovery link lands")),
    responses((status = 200, description = "`{}`", body = Object),
        (status = 400, body = AuthErrorBody), (status = 401, description = "`invalid_api_key`: the `apikey` header is not a key of this server", body = AuthErrorBody),
        (status = 429, body = AuthErrorBody)))]
async fn recover(
    State(state): State<IdentityState>,
    _key: ApiKey,
    origin: Origin,
    RawQuery(query): RawQuery,
    body: AuthBody,
) -> Result<Json<Value>, AuthError> {
    let email = body.string("email")?.unwrap_or_default();
    let redirect = redirect_to(query.as_deref(), &body)?;
    flows::recover(&state, &email, redirect.as_deref(), &origin).await?;
    Ok(Json(json!({})))
}

/// Issues a session: `grant_type=password` (email, password) or
/// `grant_type=refresh_token` (rotates the refresh token).
#[utoipa::path(post, path = "/auth/v1/token", tag = "auth", request_body = TokenRequest,
    params(("grant_type" = inline(GrantType), Query)),
    responses((status = 200, body = SessionBody),
        (status = 400, body = AuthErrorBody), (status = 401, description = "`invalid_api_key`: the `apikey` header is not a key of this server", body = AuthErrorBody),
        (status = 429, body = AuthErrorBody)))]
async fn token(
    State(state): State<IdentityState>,
    _key: ApiKey,
    origin: Origin,
    RawQuery(query): RawQuery,
    body: AuthBody,
) -> Result<Json<Value>, AuthError> {
    let grant = query_param(query.as_deref(), "grant_type")?;
    can_issue(&state)?;
    let res = match grant.as_deref() {
        Some("password") => {
            let email = body.string("email")?.unwrap_or_default();
            let password = body.string("password")?.unwrap_or_default();
            accounts::password_grant(&state, &email, &password, &origin).await?
        }
        Some("refresh_token") => {
            let Some(token) = body.string("refresh_token")?.filter(|t| !t.is_empty()) else {
                return Err(AuthError::validation("refresh_token required"));
            };
            sessions::refresh(&state, &token).await?
        }
        _ => {
            return Err(AuthError::bad_request(
                "unsupported_grant_type",
                "unsupported_grant_type",
            ));
        }
    };
    Ok(Json(res))
}

/// The signed-in user.
#[utoipa::path(get, path = "/auth/v1/user", tag = "auth",
    responses((status = 200, description = "The GoTrue user object", body = Object),
        (status = 401, body = AuthErrorBody), (status = 403, body = AuthErrorBody)))]
async fn get_user(
    State(state): State<IdentityState>,
    _key: ApiKey,
    headers: HeaderMap,
) -> Result<Json<Value>, AuthError> {
    let caller = sessions::authenticate(&state, &headers).await?;
    Ok(Json(accounts::get_user(&state, caller).await?))
}

/// Changes the signed-in user: `data` (merged into `user_metadata`),
/// `password` (ends the user's other sessions), `email` (at once with
/// autoconfirm; otherwise a confirmation link goes to the new address and the
/// user shows `new_email` until it is used). A new `password` or `email`
/// needs a sign-in within `AUTH_REAUTH_WINDOW_SECS` (default 600 s) or the
/// `nonce` of `GET /reauthenticate` (400 `reauthentication_needed`; 422
/// `reauthentication_not_valid` for a wrong or used one), and at most 5
/// such changes per user in ten minutes (429).
#[utoipa::path(put, path = "/auth/v1/user", tag = "auth", request_body = UserUpdateRequest,
    params(("redirect_to" = Option<String>, Query, description = "Where the email change link lands")),
    responses((status = 200, description = "The GoTrue user object", body = Object),
        (status = 400, body = AuthErrorBody),
        (status = 401, body = AuthErrorBody), (status = 403, body = AuthErrorBody),
        (status = 422, body = AuthErrorBody), (status = 429, body = AuthErrorBody)))]
async fn update_user(
    State(state): State<IdentityState>,
    _key: ApiKey,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    body: Result<AuthBody, AuthError>,
) -> Result<Json<Value>, AuthError> {
    let caller = sessions::authenticate(&state, &headers).await?;
    let body = body?;
    if !body.sent {
        // GoTrue refuses a missing body too; `{}` is the empty update.
        return Err(AuthError::bad_request(
            "bad_json",
            "Could not parse request body as JSON: the body is empty",
        ));
    }
    let update = UserUpdate {
        email: body.string("email")?,
        password: body.string("password")?,
        data: body.value("data"),
        nonce: body.string("nonce")?,
    };
    let redirect = redirect_to(query.as_deref(), &body)?;
    Ok(Json(
        accounts::update_user(&state, caller, update, redirect.as_deref()).await?,
    ))
}

/// Emails the signed-in user a six-digit code (valid an hour, once) that
/// `PUT /user` takes as `nonce` to change the password or email when the
/// sign-in is not recent. At most one email a minute (429
/// `over_email_send_rate_limit`); a new code voids the previous one.
#[utoipa::path(get, path = "/auth/v1/reauthenticate", tag = "auth",
    responses((status = 200, description = "`{}`", body = Object),
        (status = 401, body = AuthErrorBody), (status = 403, body = AuthErrorBody),
        (status = 422, body = AuthErrorBody), (status = 429, body = AuthErrorBody)))]
async fn reauthenticate(
    State(state): State<IdentityState>,
    _key: ApiKey,
    headers: HeaderMap,
) -> Result<Json<Value>, AuthError> {
    let caller = sessions::authenticate(&state, &headers).await?;
    flows::reauthenticate(&state, caller).await?;
    Ok(Json(json!({})))
}

/// Signs out: `scope=local` (this session, the default), `global` (all of
/// the user's sessions) or `others` (all but this one).
#[utoipa::path(post, path = "/auth/v1/logout", tag = "auth",
    params(("scope" = inline(Option<LogoutScope>), Query)),
    responses((status = 204, description = "Signed out"),
        (status = 400, description = "`validation_failed`: an unknown scope", body = AuthErrorBody),
        (status = 401, body = AuthErrorBody), (status = 403, body = AuthErrorBody)))]
async fn logout(
    State(state): State<IdentityState>,
    _key: ApiKey,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<StatusCode, AuthError> {
    let caller = sessions::authenticate(&state, &headers).await?;
    let scope = query_param(query.as_deref(), "scope")?.unwrap_or_else(|| "local".into());
    sessions::logout(&state, caller, &scope).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// What this server supports, as GoTrue describes it.
#[utoipa::path(get, path = "/auth/v1/settings", tag = "auth",
    responses((status = 200, description = "GoTrue settings", body = Object), (status = 401, description = "`invalid_api_key`: the `apikey` header is not a key of this server", body = AuthErrorBody)))]
async fn settings(State(state): State<IdentityState>, _key: ApiKey) -> Json<Value> {
    let auth = &state.config.auth;
    let mut external = Map::new();
    for provider in [
        "anonymous_users",
        "apple",
        "azure",
        "bitbucket",
        "discord",
        "facebook",
        "figma",
        "fly",
        "github",
        "gitlab",
        "google",
        "keycloak",
        "kakao",
        "linkedin",
        "linkedin_oidc",
        "notion",
        "spotify",
        "slack",
        "slack_oidc",
        "workos",
        "twitch",
        "twitter",
        "zoom",
        "phone",
        "saml",
    ] {
        external.insert(provider.into(), Value::Bool(false));
    }
    external.insert("email".into(), Value::Bool(true));
    Json(json!({
        "external": external,
        "disable_signup": auth.disable_signup,
        "mailer_autoconfirm": auth.autoconfirm,
        "phone_autoconfirm": false,
        "sms_provider": "",
        "saml_enabled": false,
    }))
}

/// Liveness of the auth server, as GoTrue reports it.
#[utoipa::path(get, path = "/auth/v1/health", tag = "auth",
    responses((status = 200, description = "`{version, name, description}`", body = Object), (status = 401, description = "`invalid_api_key`: the `apikey` header is not a key of this server", body = AuthErrorBody)))]
async fn health(_key: ApiKey) -> Json<Value> {
    Json(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "name": "GoTrue",
        "description": "Tenantry's GoTrue-compatible auth server",
    }))
}

/// A JWK set (RFC 7517).
#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
struct Jwks {
    keys: Vec<Jwk>,
}

/// A public P-256 signing key.
#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
struct Jwk {
    #[schema(example = "EC")]
    kty: String,
    #[schema(example = "P-256")]
    crv: String,
    /// base64url of the x coordinate.
    x: String,
    /// base64url of the y coordinate.
    y: String,
    /// The `kid` that tokens signed with this key carry in their header.
    kid: String,
    #[schema(example = "ES256")]
    alg: String,
    #[serde(rename = "use")]
    #[schema(example = "sig")]
    use_: String,
}

/// The public keys that verify Tenantry's access tokens: the active key, the
/// next one (published before it signs) and retired keys until the tokens
/// they signed have expired. Cache it for at most five minutes.
#[utoipa::path(get, path = "/auth/v1/.well-known/jwks.json", tag = "auth",
    responses((status = 200, body = Jwks,
        headers(("cache-control" = String, description = "public, max-age=300")))))]
async fn jwks(State(state): State<IdentityState>) -> Response {
    state.keys.refresh_if_stale().await;
    let mut res = Json(state.keys.jwks()).into_response();
    res.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=300"),
    );
    res
}

/// Platform administrators (a `service_role` key as the bearer): ban a user
/// for a duration (`"24h"`, `"30m"`, `"876000h"`), ending all their
/// sessions, or lift the ban (`"none"`). Other fields of GoTrue's admin
/// update are not supported yet.
#[utoipa::path(put, path = "/auth/v1/admin/users/{user_id}", tag = "auth",
    params(("user_id" = Uuid, Path)),
    request_body = Object,
    responses((status = 200, description = "The GoTrue user object, with `banned_until`", body = Object),
        (status = 401, body = AuthErrorBody), (status = 403, body = AuthErrorBody),
        (status = 404, body = AuthErrorBody), (status = 400, body = AuthErrorBody)))]
async fn admin_update_user(
    State(state): State<IdentityState>,
    headers: HeaderMap,
    axum::extract::Path(user_id): axum::extract::Path<String>,
    body: AuthBody,
) -> Result<Json<Value>, AuthError> {
    let token = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .ok_or_else(|| {
            AuthError::new(
                axum::http::StatusCode::UNAUTHORIZED,
                "no_authorization",
                "This endpoint requires a Bearer token",
            )
        })?;
    if state.verifier.verify_service(token.trim()).is_err() {
        return Err(AuthError::new(
            axum::http::StatusCode::FORBIDDEN,
            "not_admin",
            "User not allowed",
        ));
    }
    let user_id: uuid::Uuid = user_id
        .parse()
        .map_err(|_| AuthError::validation("user_id must be a UUID"))?;
    let Some(duration) = body.string("ban_duration")? else {
        return Err(AuthError::validation(
            "Only ban_duration is supported here (a duration like \"24h\", or \"none\")",
        ));
    };
    let ban = accounts::parse_ban_duration(duration.trim()).ok_or_else(|| {
        AuthError::validation("ban_duration must be a duration like \"24h\" or \"none\"")
    })?;
    Ok(Json(accounts::set_ban(&state, user_id, ban).await?))
}
