//! Application state, router assembly, the middleware stack, the OpenAPI
//! document, and the server loop with graceful shutdown.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::{DefaultBodyLimit, FromRef, Request, State};
use axum::http::{HeaderName, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use secrecy::ExposeSecret;
use sqlx::PgPool;
use tower_http::cors::{AllowOrigin, Any, CorsLayer};
use tracing::Instrument as _;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{ContentBuilder, OpenApi as OpenApiDoc, Ref, RefOr, ResponseBuilder};
use utoipa::{OpenApi, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use utoipa_swagger_ui::SwaggerUi;
use uuid::Uuid;

use crate::auth::AuthState;
use crate::auth::jwt::Verifier;
use crate::config::Config;
use crate::core::error::{ApiError, FieldError, Problem};
use crate::core::telemetry;
use crate::identity::IdentityState;

/// The process's state, assembled here and nowhere else. Routers and
/// extractors below the root never see it: each asks for the small
/// sub-states it needs (`PgPool`, `Cache`, [`AuthState`], [`IdentityState`],
/// ...), which axum takes from here through the `FromRef` impls below.
/// Cloned for each route and middleware a request passes through, so it is
/// one `Arc`.
#[derive(Clone)]
pub struct AppState(Arc<AppStateInner>);

impl std::ops::Deref for AppState {
    type Target = AppStateInner;

    fn deref(&self) -> &AppStateInner {
        &self.0
    }
}

pub struct AppStateInner {
    pub pool: PgPool,
    pub cache: crate::core::cache::Cache,
    pub verifier: Arc<Verifier>,
    pub config: Arc<Config>,
    /// The job engine, mailer and report store (shared with in-process workers).
    pub jobs: crate::background::Background,
    /// The keys that sign Tenantry's own access tokens.
    pub keys: crate::auth::keys::KeyRing,
    /// What the auth extractors need.
    pub auth: AuthState,
    /// The GoTrue-compatible server's state.
    pub identity: IdentityState,
    /// Who may read `/metrics` on this listener.
    pub metrics: Arc<crate::jobs::routes::MetricsAccess>,
    /// Invitation links and their lifetime.
    pub invites: Arc<crate::organizations::service::InviteSettings>,
    /// Stops the background task that keeps the ended sessions current when
    /// the state is dropped.
    _follow: tokio::sync::watch::Sender<bool>,
    /// The payment provider `PAYMENT_PROVIDER` names (Stripe or manual).
    pub payments: Arc<dyn crate::billing::payments::PaymentProvider>,
    /// Group commit of concurrent spends per org.
    pub spends: crate::billing::credits::batch::SpendBatcher,
}

impl AppState {
    /// The state of a server on `pool` with `config`. Loads the signing keys
    /// (creating the first ones when `AUTH_KEYS_SECRET` is set) and lets
    /// `verifier` accept tokens they signed.
    pub async fn new(pool: PgPool, config: Config, verifier: Verifier) -> anyhow::Result<AppState> {
        let keys = crate::auth::keys::KeyRing::load(&pool, &config).await?;
        let verifier = Arc::new(match verifier.keyring() {
            Some(_) => verifier,
            None => verifier.with_keyring(keys.clone()),
        });
        let cache = crate::core::cache::Cache::new(
            &config.redis_url(),
            &config.cache_prefix,
            config.cache_ttl,
        )?;
        let hasher = crate::auth::password::Hasher::with_queue(
            crate::auth::password::PasswordParams::default(),
            config.auth.hash_queue,
        )
        .map_err(|e| anyhow::anyhow!("{e}"))?;
        let limiter =
            crate::core::ratelimit::RateLimiter::new(&config.redis_url(), &config.cache_prefix)?
                .with_fail_mode(crate::core::ratelimit::FailMode::Local);
        // Every session ended so far, before the first request is served;
        // then kept current in the background.
        let ended_sessions = crate::auth::ended_sessions::EndedSessions::new(
            pool.clone(),
            Some(&config.redis_url()),
            &config.cache_prefix,
        )?;
        ended_sessions.load(None).await?;
        let (follow, following) = tokio::sync::watch::channel(false);
        tokio::spawn(ended_sessions.clone().follow(following));
        let payments = crate::billing::payments::provider_from_config(&config.billing)?;
        let invites = Arc::new(crate::organizations::service::InviteSettings::from_config(
            &config,
        ));
        let metrics = Arc::new(crate::jobs::routes::MetricsAccess {
            elsewhere: config.metrics_addr.is_some(),
            token: config.jobs.metrics_token.clone(),
            open: config.metrics_open,
        });
        let config = Arc::new(config);
        let jobs = crate::background::Background::new(pool.clone(), config.clone())?;
        let auth = AuthState::new(
            verifier.clone(),
            ended_sessions.clone(),
            pool.clone(),
            cache.clone(),
            config.jwt.require_email_verified,
        );
        let identity = IdentityState::new(crate::identity::state::Inner {
            pool: pool.clone(),
            cache: cache.clone(),
            config: config.clone(),
            keys: keys.clone(),
            verifier: verifier.clone(),
            hasher,
            limiter,
            ended_sessions,
        });
        Ok(AppState(Arc::new(AppStateInner {
            pool,
            cache,
            verifier,
            config,
            jobs,
            keys,
            auth,
            identity,
            invites,
            metrics,
            payments,
            spends: Default::default(),
            _follow: follow,
        })))
    }
}

impl FromRef<AppState> for PgPool {
    fn from_ref(s: &AppState) -> PgPool {
        s.pool.clone()
    }
}

impl FromRef<AppState> for crate::core::cache::Cache {
    fn from_ref(s: &AppState) -> Self {
        s.cache.clone()
    }
}

impl FromRef<AppState> for AuthState {
    fn from_ref(s: &AppState) -> Self {
        s.auth.clone()
    }
}

impl FromRef<AppState> for IdentityState {
    fn from_ref(s: &AppState) -> Self {
        s.identity.clone()
    }
}

impl FromRef<AppState> for crate::jobs::Engine {
    fn from_ref(s: &AppState) -> Self {
        s.jobs.engine.clone()
    }
}

impl FromRef<AppState> for Arc<crate::jobs::routes::MetricsAccess> {
    fn from_ref(s: &AppState) -> Self {
        s.metrics.clone()
    }
}

impl FromRef<AppState> for Arc<dyn object_store::ObjectStore> {
    fn from_ref(s: &AppState) -> Self {
        s.jobs.report_store.clone()
    }
}

impl FromRef<AppState> for crate::imports::routes::ImportLimit {
    fn from_ref(s: &AppState) -> Self {
        crate::imports::routes::ImportLimit(s.config.jobs.max_import_bytes)
    }
}

impl FromRef<AppState> for Arc<crate::organizations::service::InviteSettings> {
    fn from_ref(s: &AppState) -> Self {
        s.invites.clone()
    }
}

static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Tenantry",
        description = "Multi-tenant SaaS backend: organizations, members, roles, invitations and an audit log, \
                       isolated per tenant by Postgres Row Level Security. Errors are application/problem+json \
                       (RFC 9457) with a stable `code`; lists are keyset-paginated (`limit`, `cursor` → `next_cursor`)."
    ),
    components(schemas(Problem, FieldError, crate::identity::routes::AuthErrorBody)),
    tags(
        (name = "organizations"), (name = "members"), (name = "roles"),
        (name = "invitations"), (name = "api-keys"), (name = "audit"), (name = "users"), (name = "reports"),
        (name = "imports"), (name = "billing"), (name = "admin", description = "Operator routes: a `service_role` key"),
        (name = "auth", description = "Tenantry's own auth server (GoTrue-compatible)"),
        (name = "health")
    )
)]
struct ApiDoc;

/// The router with its OpenAPI document.
pub fn router(state: AppState) -> axum::Router {
    let (api_router, api) = api();
    let cfg = state.config.clone();
    let router = api_router
        .merge(SwaggerUi::new("/docs").url("/openapi.json", api))
        .fallback(|| async {
            ApiError::Status {
                status: StatusCode::NOT_FOUND,
                code: "route_not_found",
                detail: "no such route".into(),
            }
        })
        .method_not_allowed_fallback(|| async {
            ApiError::Status {
                status: StatusCode::METHOD_NOT_ALLOWED,
                code: "method_not_allowed",
                detail: "this route does not support this method".into(),
            }
        })
        .with_state(state)
        .layer(DefaultBodyLimit::max(cfg.max_body_bytes));
    let timeout = cfg.request_timeout;
    let body_limits = BodyLimits {
        timeout: cfg.body_read_timeout,
        json: cfg.max_body_bytes,
        import: cfg.jobs.max_import_bytes.max(cfg.max_body_bytes),
    };
    let router = router
        .layer(middleware::from_fn(move |req, next| {
            with_timeout(timeout, req, next)
        }))
        // The whole body is in memory before any handler or extractor runs:
        // nothing (a pool connection above all) is held for a slow client.
        .layer(middleware::from_fn(move |req, next| {
            read_body_first(body_limits, req, next)
        }))
        .layer(middleware::from_fn(catch_panic));
    // CORS outside the timeout and panic layers, so their problems carry CORS
    // headers too and a browser can read them.
    let router = match cors(&cfg.cors_allowed_origins) {
        Some(c) => router.layer(c),
        None => router,
    };
    router.layer(middleware::from_fn(request_context))
}

/// The API routes and the OpenAPI document describing exactly them.
pub fn api() -> (axum::Router<AppState>, OpenApiDoc) {
    let (router, mut api) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .merge(crate::users::router())
        .merge(crate::organizations::router())
        .merge(crate::apikeys::router())
        .merge(crate::jobs::routes::router())
        .merge(crate::billing::router())
        .merge(crate::reports::router().merge(crate::imports::router()))
        .merge(crate::identity::router())
        .split_for_parts();
    document_errors(&mut api);
    (router, api)
}

/// Liveness: the process answers.
#[utoipa::path(get, path = "/healthz", tag = "health", responses((status = 200, body = Health)))]
async fn healthz() -> Json<Health> {
    Json(Health { status: "ok" })
}

/// Readiness: Postgres answers within two seconds.
#[utoipa::path(get, path = "/readyz", tag = "health",
    responses((status = 200, body = Health), (status = 503, body = Problem)))]
async fn readyz(State(state): State<AppState>) -> Result<Json<Health>, ApiError> {
    let ping = sqlx::query("select 1").execute(&state.pool);
    match tokio::time::timeout(Duration::from_secs(2), ping).await {
        Ok(Ok(_)) => Ok(Json(Health { status: "ok" })),
        _ => Err(ApiError::Status {
            status: StatusCode::SERVICE_UNAVAILABLE,
            code: "not_ready",
            detail: "the database is not reachable".into(),
        }),
    }
}

#[derive(serde::Serialize, ToSchema)]
struct Health {
    #[schema(example = "ok")]
    status: &'static str,
}

/// Request id (kept from `x-request-id` when sane, else a new UUID), a span
/// per request, one log line per response, and the id on every response.
async fn request_context(mut req: Request, next: Next) -> Response {
    let id = req
        .headers()
        .get(&X_REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            !v.is_empty()
                && v.len() <= 64
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
        .map(str::to_owned)
        .unwrap_or_else(|| Uuid::new_v4().to_string());
    let header_value = HeaderValue::from_str(&id).expect("request id is a valid header value");
    req.headers_mut()
        .insert(X_REQUEST_ID.clone(), header_value.clone());
    let span = tracing::info_span!("request", request_id = %id, method = %req.method(), path = %req.uri().path());
    let started = Instant::now();
    let mut res = telemetry::with_request_id(id, next.run(req))
        .instrument(span.clone())
        .await;
    span.in_scope(|| {
        tracing::info!(
            status = res.status().as_u16(),
            micros = started.elapsed().as_micros() as u64,
            "response"
        )
    });
    res.headers_mut().insert(X_REQUEST_ID.clone(), header_value);
    res
}

#[derive(Debug, Clone, Copy)]
struct BodyLimits {
    timeout: Duration,
    /// `MAX_BODY_BYTES`: every body but member imports.
    json: usize,
    /// `MAX_IMPORT_BYTES`: `POST /api/v1/orgs/{org_id}/imports` (CSV).
    import: usize,
}

/// Reads the request body completely (within its limit and the timeout)
/// before the request goes on: 408 when the client is too slow, 413 past the
/// limit; auth-server routes get GoTrue's error shape, others problem+json.
/// The extractors then apply their own limits and parse from memory.
async fn read_body_first(limits: BodyLimits, req: Request, next: Next) -> Response {
    // Nothing to wait for (most GETs): straight on.
    if axum::body::HttpBody::is_end_stream(req.body()) {
        return next.run(req).await;
    }
    let (parts, body) = req.into_parts();
    let path = parts.uri.path();
    let gotrue = is_gotrue(path);
    let limit = if parts.method == Method::POST
        && path.starts_with("/api/v1/orgs/")
        && path.ends_with("/imports")
    {
        limits.import
    } else {
        limits.json
    };
    let timeout = limits.timeout;
    // One byte over the limit is enough to know it is too large.
    match tokio::time::timeout(timeout, axum::body::to_bytes(body, limit.saturating_add(1))).await {
        Ok(Ok(bytes)) => {
            next.run(Request::from_parts(parts, axum::body::Body::from(bytes)))
                .await
        }
        Ok(Err(e)) => {
            let too_large = std::error::Error::source(&e)
                .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
            body_problem(gotrue, too_large)
        }
        Err(_) => {
            let detail = "the request body did not arrive in time";
            if gotrue {
                crate::identity::errors::AuthError::new(
                    StatusCode::REQUEST_TIMEOUT,
                    "request_timeout",
                    detail,
                )
                .into_response()
            } else {
                ApiError::Status {
                    status: StatusCode::REQUEST_TIMEOUT,
                    code: "body_timeout",
                    detail: detail.into(),
                }
                .into_response()
            }
        }
    }
}

/// 413 for a body past the limit, or 400 for one that broke off.
fn body_problem(gotrue: bool, too_large: bool) -> Response {
    use crate::identity::errors::AuthError;
    match (gotrue, too_large) {
        (true, true) => AuthError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "request_too_large",
            "Request body is larger than the limit",
        )
        .into_response(),
        (true, false) => {
            AuthError::bad_request("bad_json", "Could not read the request body").into_response()
        }
        (false, true) => ApiError::Status {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            code: "payload_too_large",
            detail: "request body is larger than the limit".into(),
        }
        .into_response(),
        (false, false) => {
            ApiError::bad_request("invalid_body", "the request body broke off").into_response()
        }
    }
}

/// Whether `path` is the auth server's, whose errors are GoTrue's
/// (`application/json`), not problems.
fn is_gotrue(path: &str) -> bool {
    path.starts_with("/auth/v1/")
}

/// A panic in a handler is a 500 (in the route's error shape).
async fn catch_panic(req: Request, next: Next) -> Response {
    use futures_util::FutureExt as _;
    let gotrue = is_gotrue(req.uri().path());
    match std::panic::AssertUnwindSafe(next.run(req))
        .catch_unwind()
        .await
    {
        Ok(res) => res,
        Err(_) if gotrue => {
            crate::identity::errors::AuthError::internal("handler panicked").into_response()
        }
        Err(_) => ApiError::Internal(anyhow::anyhow!("handler panicked")).into_response(),
    }
}

async fn with_timeout(limit: Duration, req: Request, next: Next) -> Response {
    let gotrue = is_gotrue(req.uri().path());
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(res) => res,
        Err(_) if gotrue => {
            let mut e = crate::identity::errors::AuthError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "request_timeout",
                "Processing this request timed out, please retry after a moment.",
            );
            e.retry_after = Some(crate::core::error::RETRY_AFTER_SECS);
            e.into_response()
        }
        Err(_) => ApiError::Status {
            status: StatusCode::SERVICE_UNAVAILABLE,
            code: "timeout",
            detail: "the request took too long and was abandoned".into(),
        }
        .into_response(),
    }
}

fn cors(origins: &[String]) -> Option<CorsLayer> {
    if origins.is_empty() {
        return None;
    }
    let layer = CorsLayer::new()
        .allow_methods([
            Method::GET,
            Method::POST,
            Method::PUT,
            Method::PATCH,
            Method::DELETE,
            Method::OPTIONS,
        ])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            X_REQUEST_ID.clone(),
            HeaderName::from_static("apikey"),
            HeaderName::from_static("idempotency-key"),
        ])
        .expose_headers([X_REQUEST_ID.clone()])
        .max_age(Duration::from_secs(600));
    Some(if origins.iter().any(|o| o == "*") {
        layer.allow_origin(Any)
    } else {
        layer.allow_origin(AllowOrigin::list(
            origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()),
        ))
    })
}

/// Adds the bearer scheme and the error responses every route shares, so the
/// document lists each status a route can answer with. `/api/v1` errors are
/// `application/problem+json` [`Problem`]s; the auth server's (`/auth/v1`)
/// are GoTrue's `application/json` `AuthErrorBody`.
fn document_errors(api: &mut OpenApiDoc) {
    let components = api.components.get_or_insert_with(Default::default);
    components.add_security_scheme(
        "bearer",
        SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .bearer_format("JWT")
                .build(),
        ),
    );
    let error = |desc: &str, media: &str, schema: &str| {
        RefOr::T(
            ResponseBuilder::new()
                .description(desc)
                .content(
                    media,
                    ContentBuilder::new()
                        .schema(Some(Ref::from_schema_name(schema)))
                        .build(),
                )
                .build(),
        )
    };
    for (path, item) in api.paths.paths.iter_mut() {
        let gotrue = is_gotrue(path);
        let has_path_params = path.contains('{');
        let in_org = path.starts_with("/api/v1/orgs/{org_id}");
        let authenticated = path.starts_with("/api/v1/");
        // Operator routes (`PlatformAdmin`); `POST .../credits/grants` is one
        // too, and declares its 403.
        let operator = path.starts_with("/api/v1/admin/");
        for (method, op) in [
            ("get", item.get.as_mut()),
            ("post", item.post.as_mut()),
            ("put", item.put.as_mut()),
            ("patch", item.patch.as_mut()),
            ("delete", item.delete.as_mut()),
        ] {
            let Some(op) = op else { continue };
            let has_body = matches!(method, "post" | "put" | "patch") && op.request_body.is_some();
            let responses = &mut op.responses.responses;
            if gotrue {
                let mut add = |status: &str, desc: &str| {
                    responses
                        .entry(status.to_owned())
                        .or_insert_with(|| error(desc, "application/json", "AuthErrorBody"));
                };
                add("500", "Unexpected failure (`unexpected_failure`)");
                add(
                    "503",
                    "The request took too long (`request_timeout`); busy (`busy`) or the \
                     database unavailable or too slow (`unavailable`, `request_timeout`), with \
                     `Retry-After`; or no signing key (`signing_unavailable`)",
                );
                if has_body {
                    add(
                        "400",
                        "Body is not a JSON object or a form (`bad_json`, `validation_failed`)",
                    );
                    add("408", "The body did not arrive in time (`request_timeout`)");
                    add("413", "Body larger than the limit (`request_too_large`)");
                }
                continue;
            }
            // Problems declared on handlers are problem+json too.
            for (status, resp) in responses.iter_mut() {
                if (status.starts_with('4') || status.starts_with('5'))
                    && let RefOr::T(r) = resp
                    && let Some(c) = r.content.shift_remove("application/json")
                {
                    r.content.insert("application/problem+json".into(), c);
                }
            }
            let mut add = |status: &str, desc: &str| {
                responses
                    .entry(status.to_owned())
                    .or_insert_with(|| error(desc, "application/problem+json", "Problem"));
            };
            add("500", "Internal error; the body carries the request id");
            add(
                "503",
                "Timed out (`timeout`), or the database is busy or unavailable (`busy`, \
                 `unavailable`, with `Retry-After`)",
            );
            if authenticated {
                add("401", "Missing or invalid bearer token (`unauthorized`)");
                add(
                    "400",
                    "Malformed query or path (`invalid_query`, `invalid_path`, `invalid_cursor`, `invalid_limit`)",
                );
                op.security = Some(vec![SecurityRequirement::new(
                    "bearer",
                    Vec::<String>::new(),
                )]);
            }
            if operator {
                add(
                    "403",
                    "Not a platform administrator: a user's token (`forbidden`; operator routes \
                     need a `service_role` key)",
                );
            }
            if has_path_params || in_org {
                add(
                    "404",
                    "Not found, or belongs to an organization the caller is not in",
                );
            }
            if in_org {
                add(
                    "403",
                    "The caller's role lacks the permission this route needs",
                );
            }
            if has_body {
                add("400", "Body is not valid JSON (`invalid_json`)");
                add("408", "The body did not arrive in time (`body_timeout`)");
                add("413", "Body larger than the limit (`payload_too_large`)");
                add(
                    "415",
                    "Body is not application/json (`unsupported_media_type`)",
                );
                add(
                    "422",
                    "Fields failed validation (`validation_failed`, with `errors`)",
                );
            }
        }
    }
}

/// Serves until SIGTERM or SIGINT, then finishes in-flight requests. With
/// `with_worker` (`tenantry dev`), the job relay, worker and scheduler run in
/// the same process and stop with it.
pub async fn serve(config: Config, with_worker: bool) -> anyhow::Result<()> {
    let pool = crate::core::db::connect_pool(
        config.database_url.expose_secret(),
        config.db_max_connections,
        config.db_acquire_timeout,
    )
    .await?;
    let verifier = Verifier::new(&config.jwt)?;
    verifier.warm_up().await;
    let bind = config.bind_addr;
    let limits = server_limits(&config);
    let metrics_addr = config.metrics_addr;
    let state = AppState::new(pool.clone(), config, verifier).await?;
    let (stop, stopped) = crate::jobs::worker::Shutdown::new();
    let background = with_worker
        .then(|| tokio::spawn(crate::background::run(state.jobs.clone(), stopped.clone())));
    if let Some(addr) = metrics_addr {
        let token = state.config.jobs.metrics_token.clone();
        let engine = state.jobs.engine.clone();
        spawn_metrics_listener(addr, engine, token, limits, stopped.clone()).await?;
    }
    let app = router(state);
    let listener = tokio::net::TcpListener::bind(bind).await?;
    tracing::info!(addr = %listener.local_addr()?, "listening");
    crate::core::http_server::serve(listener, app, limits, async move {
        shutdown_signal().await;
        let _ = stop.send(true);
    })
    .await?;
    if let Some(bg) = background {
        let _ = bg.await;
    }
    pool.close().await;
    tracing::info!("stopped");
    Ok(())
}

/// The connection limits of the HTTP listeners.
pub fn server_limits(config: &Config) -> crate::core::http_server::ServerLimits {
    crate::core::http_server::ServerLimits {
        header_read_timeout: config.header_read_timeout,
        shutdown_grace: config.request_timeout + Duration::from_secs(5),
    }
}

/// `/metrics` and `/healthz` on a listener of their own (`METRICS_ADDR`,
/// `WORKER_METRICS_ADDR`): meant for a private network, so open unless
/// `METRICS_TOKEN` is set.
async fn spawn_metrics_listener(
    addr: std::net::SocketAddr,
    engine: crate::jobs::Engine,
    token: Option<secrecy::SecretString>,
    limits: crate::core::http_server::ServerLimits,
    stopped: crate::jobs::worker::Shutdown,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(addr = %listener.local_addr()?, "metrics listening");
    let app = axum::Router::new()
        .route("/healthz", axum::routing::get(healthz))
        .route(
            "/metrics",
            axum::routing::get(move |headers: axum::http::HeaderMap| {
                let engine = engine.clone();
                let token = token.clone();
                async move {
                    crate::jobs::routes::metrics_allowed(token.as_ref(), &headers, true)?;
                    Ok::<_, ApiError>(crate::jobs::routes::render_metrics(engine).await)
                }
            }),
        );
    tokio::spawn(async move {
        let stop = async move { stopped.wait().await };
        if let Err(e) = crate::core::http_server::serve(listener, app, limits, stop).await {
            tracing::warn!(error = %e, "metrics listener failed");
        }
    });
    Ok(())
}

/// `tenantry worker`: relay, worker and scheduler until SIGTERM or SIGINT;
/// then running jobs get the grace period to finish.
pub async fn work(config: Config) -> anyhow::Result<()> {
    let pool = crate::core::db::connect_pool(
        config.database_url.expose_secret(),
        config.db_max_connections,
        config.db_acquire_timeout,
    )
    .await?;
    let metrics_addr = config.jobs.worker_metrics_addr;
    let limits = server_limits(&config);
    let token = config.jobs.metrics_token.clone();
    let background = crate::background::Background::new(pool.clone(), Arc::new(config))?;
    let (stop, stopped) = crate::jobs::worker::Shutdown::new();
    tokio::spawn(async move {
        shutdown_signal().await;
        let _ = stop.send(true);
    });
    if let Some(addr) = metrics_addr {
        let engine = background.engine.clone();
        spawn_metrics_listener(addr, engine, token, limits, stopped.clone()).await?;
    }
    crate::background::run(background, stopped).await;
    pool.close().await;
    tracing::info!("stopped");
    Ok(())
}

pub(crate) async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            s.recv().await;
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
    tracing::info!("shutting down: finishing in-flight requests");
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    /// Every documented error has the shape its route answers with, and the
    /// statuses every route of a kind can answer are there.
    #[test]
    fn errors_are_documented_as_each_route_answers_them() {
        let (_, api) = super::api();
        let doc = serde_json::to_value(&api).unwrap();
        let operator_routes = ["/api/v1/admin/", "/api/v1/orgs/{org_id}/credits/grants"];
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                let Some(responses) = op["responses"].as_object() else {
                    continue;
                };
                for (status, res) in responses {
                    if !(status.starts_with('4') || status.starts_with('5')) {
                        continue;
                    }
                    let content = res["content"].as_object();
                    let (media, schema) = content
                        .and_then(|c| c.iter().next())
                        .unwrap_or_else(|| panic!("{method} {path} {status}: no body"));
                    assert_eq!(content.unwrap().len(), 1, "{method} {path} {status}");
                    let (want_media, want_schema) = if super::is_gotrue(path) {
                        ("application/json", "#/components/schemas/AuthErrorBody")
                    } else {
                        ("application/problem+json", "#/components/schemas/Problem")
                    };
                    assert_eq!(media, want_media, "{method} {path} {status}");
                    assert_eq!(
                        schema["schema"]["$ref"],
                        Value::from(want_schema),
                        "{method} {path} {status}"
                    );
                }
                if operator_routes.iter().any(|r| path.starts_with(r)) {
                    assert!(responses.contains_key("403"), "{method} {path}: no 403");
                }
                if op.get("requestBody").is_some() {
                    for status in ["400", "408", "413"] {
                        assert!(
                            responses.contains_key(status),
                            "{method} {path}: no {status}"
                        );
                    }
                }
            }
        }
    }
}
