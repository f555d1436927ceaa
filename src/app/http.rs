//! The HTTP face: every domain's routes merged into one router, the
//! middleware stack (request ids, body reading, timeouts, panics, CORS), the
//! health routes, and the OpenAPI document describing exactly those routes.

use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderName, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use tower_http::cors::{AllowOrigin, Any, CorsLayer};
use tracing::Instrument as _;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{ContentBuilder, OpenApi as OpenApiDoc, Ref, RefOr, ResponseBuilder};
use utoipa::{OpenApi, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use utoipa_swagger_ui::SwaggerUi;
use uuid::Uuid;

use super::state::AppState;
use crate::core::error::{ApiError, FieldError, Problem};
use crate::core::telemetry;

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
pub(super) async fn healthz() -> Json<Health> {
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
pub(super) struct Health {
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
