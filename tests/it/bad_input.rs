//! Every write route × bad input: a clear 4xx problem+json (never a 5xx),
//! the same shape everywhere, and nothing written.
//!
//! Each test builds a table of cases, runs them all against one app, and
//! reports every case that misbehaved at once (so one broken route does not
//! hide the others).

use crate::common::*;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use reqwest::header::{CONTENT_TYPE, HeaderMap};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use uuid::Uuid;

// ---------------------------------------------------------------- harness

/// A response with its headers, for checks `TestApp::call` cannot make.
struct Resp {
    status: StatusCode,
    headers: HeaderMap,
    body: Value,
    raw: String,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// How a case sends its body.
#[derive(Clone)]
enum Body {
    None,
    /// Raw bytes with this Content-Type (None: no Content-Type header at all).
    Raw(Option<&'static str>, Vec<u8>),
}

impl Body {
    fn json(v: &Value) -> Body {
        Body::Raw(Some("application/json"), v.to_string().into_bytes())
    }
    fn text(ct: Option<&'static str>, s: &str) -> Body {
        Body::Raw(ct, s.as_bytes().to_vec())
    }
}

async fn send(
    app: &TestApp,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Body,
    headers: &[(&str, &str)],
) -> Resp {
    let mut req = app.client.request(method, format!("{}{}", app.base, path));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    if let Body::Raw(ct, bytes) = body {
        if let Some(ct) = ct {
            req = req.header(CONTENT_TYPE, ct);
        }
        req = req.body(bytes);
    }
    let res = req.send().await.expect("request");
    let status = res.status();
    let headers = res.headers().clone();
    let bytes = res.bytes().await.unwrap_or_default();
    Resp {
        status,
        headers,
        body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        raw: String::from_utf8_lossy(&bytes).chars().take(600).collect(),
    }
}

/// One request and the problem it must produce.
struct Case {
    name: String,
    method: Method,
    path: String,
    token: String,
    body: Body,
    status: StatusCode,
    code: &'static str,
    /// For 422: a field error that must be present, `(field, code)`; an
    /// empty field name only requires that some field error exists.
    field: Option<(String, &'static str)>,
}

impl Case {
    fn new(
        name: impl Into<String>,
        method: Method,
        path: impl Into<String>,
        token: &str,
        body: Body,
    ) -> Case {
        Case {
            name: name.into(),
            method,
            path: path.into(),
            token: token.to_owned(),
            body,
            status: StatusCode::BAD_REQUEST,
            code: "",
            field: None,
        }
    }
    fn expect(mut self, status: StatusCode, code: &'static str) -> Case {
        self.status = status;
        self.code = code;
        self
    }
    fn invalid(mut self, field: impl Into<String>, field_code: &'static str) -> Case {
        self.status = StatusCode::UNPROCESSABLE_ENTITY;
        self.code = "validation_failed";
        self.field = Some((field.into(), field_code));
        self
    }
}

/// Every property of a problem response; returns what is wrong with it.
fn problems_with(r: &Resp, status: StatusCode, code: &str) -> Vec<String> {
    let mut out = Vec::new();
    if r.status.is_server_error() {
        out.push(format!("server error {}", r.status));
    }
    if r.status != status {
        out.push(format!("status {} (expected {status})", r.status));
    }
    if r.header("content-type") != Some("application/problem+json") {
        out.push(format!("content-type {:?}", r.header("content-type")));
    }
    if r.body["status"].as_u64() != Some(u64::from(r.status.as_u16())) {
        out.push(format!(
            "body.status {} does not equal the HTTP status",
            r.body["status"]
        ));
    }
    if r.body["code"] != code {
        out.push(format!("code {} (expected {code:?})", r.body["code"]));
    }
    if r.body["type"] != format!("https://tenantry.dev/problems/{code}") {
        out.push(format!("type {}", r.body["type"]));
    }
    for key in ["title", "detail"] {
        if r.body[key].as_str().is_none_or(str::is_empty) {
            out.push(format!("missing {key}"));
        }
    }
    match r.header("x-request-id") {
        None => out.push("no x-request-id header".into()),
        Some(id) if r.body["request_id"] != id => out.push(format!(
            "body.request_id {} differs from x-request-id {id}",
            r.body["request_id"]
        )),
        Some(_) => {}
    }
    if r.status == StatusCode::UNPROCESSABLE_ENTITY {
        match r.body["errors"].as_array() {
            Some(errs) if !errs.is_empty() => {
                for e in errs {
                    if !(e["field"].is_string()
                        && e["code"].is_string()
                        && e["message"].is_string())
                    {
                        out.push(format!("malformed field error {e}"));
                    }
                }
            }
            _ => out.push("422 without field errors".into()),
        }
    } else if r.body.get("errors").is_some() {
        out.push("`errors` on a non-422 problem".into());
    }
    out
}

/// Runs every case, checking the problem and that no table changed, and
/// panics listing every case that failed.
async fn run(app: &TestApp, cases: Vec<Case>) {
    assert!(!cases.is_empty());
    let mut failures = Vec::new();
    let total = cases.len();
    for case in cases {
        let before = app.snapshot().await;
        let r = send(
            app,
            case.method.clone(),
            &case.path,
            Some(&case.token),
            case.body.clone(),
            &[],
        )
        .await;
        let mut wrong = problems_with(&r, case.status, case.code);
        if let Some((field, fcode)) = &case.field {
            let errs = r.body["errors"].as_array().cloned().unwrap_or_default();
            let found = errs
                .iter()
                .any(|e| (field.is_empty() || e["field"] == *field) && e["code"] == *fcode);
            if !found {
                wrong.push(format!(
                    "no field error {{field: {field:?}, code: {fcode:?}}}"
                ));
            }
        }
        if app.snapshot().await != before {
            wrong.push("the database changed".into());
        }
        if !wrong.is_empty() {
            failures.push(format!(
                "{} {} [{}]: {}\n      body: {}",
                case.method,
                case.path,
                case.name,
                wrong.join("; "),
                r.raw
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {total} cases failed:\n  {}",
        failures.len(),
        failures.join("\n  ")
    );
}

// ---------------------------------------------------------------- fixture

/// An org owned by ann, with bob a member, carol invited (pending), a custom
/// role `support`, and an open invitation whose token carol holds.
struct World {
    app: TestApp,
    ann: TestUser,
    bob: TestUser,
    carol: TestUser,
    org: Uuid,
    carol_token: String,
}

async fn world() -> World {
    let app = TestApp::spawn().await;
    // More seats than the free plan's default allows.
    app.unlimited_seats().await;
    let ann = app.user("ann@example.com");
    let bob = app.user("bob@example.com");
    let carol = app.user("carol@example.com");
    let org = app.create_org(&ann, "Acme Corp").await;
    app.add_member(org, &ann, &bob, "member").await;
    let (s, role) = app
        .post(
            &format!("/api/v1/orgs/{org}/roles"),
            &ann,
            json!({ "name": "support", "permissions": ["org:read", "members:read"] }),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{role}");
    let (s, inv) = app
        .post(
            &format!("/api/v1/orgs/{org}/invitations"),
            &ann,
            json!({ "email": carol.email, "role": "viewer" }),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{inv}");
    let carol_token = inv["token"].as_str().unwrap().to_owned();
    World {
        app,
        ann,
        bob,
        carol,
        org,
        carol_token,
    }
}

/// A write route: who calls it, a body that would succeed, and bodies that
/// are wrong in a way every route can be wrong.
struct Route {
    method: Method,
    path: String,
    token: String,
    /// A string field of the DTO, for syntax errors inside the document.
    key: &'static str,
    valid: Value,
    /// Satisfies the DTO positionally (serde's sequence form of a struct).
    positional: Value,
    wrong_type: (Value, &'static str),
    missing: Option<(Value, &'static str)>,
}

impl Route {
    fn case(&self, name: &str, body: Body) -> Case {
        Case::new(
            name,
            self.method.clone(),
            self.path.clone(),
            &self.token,
            body,
        )
    }
}

fn with_field(v: &Value, key: &str, value: Value) -> Value {
    let mut v = v.clone();
    v[key] = value;
    v
}

/// The write routes, in an order in which their `valid` bodies all succeed.
fn routes(w: &World) -> Vec<Route> {
    let (org, ann, bob) = (w.org, &w.ann.token, w.bob.id);
    vec![
        Route {
            method: Method::PATCH,
            path: format!("/api/v1/orgs/{org}"),
            token: ann.clone(),
            key: "name",
            valid: json!({ "name": "Acme Renamed" }),
            positional: json!(["Acme Renamed", null]),
            wrong_type: (json!({ "name": 5 }), "name"),
            missing: None,
        },
        Route {
            method: Method::PATCH,
            path: "/api/v1/me".into(),
            token: ann.clone(),
            key: "display_name",
            valid: json!({ "display_name": "Ann" }),
            positional: json!(["Ann"]),
            wrong_type: (json!({ "display_name": 5 }), "display_name"),
            missing: None,
        },
        Route {
            method: Method::POST,
            path: format!("/api/v1/orgs/{org}/roles"),
            token: ann.clone(),
            key: "name",
            valid: json!({ "name": "auditor", "permissions": ["audit:read"] }),
            positional: json!(["auditor", null, ["audit:read"]]),
            wrong_type: (
                json!({ "name": "auditor", "permissions": "audit:read" }),
                "permissions",
            ),
            missing: Some((json!({ "name": "auditor" }), "permissions")),
        },
        Route {
            method: Method::PATCH,
            path: format!("/api/v1/orgs/{org}/roles/support"),
            token: ann.clone(),
            key: "description",
            valid: json!({ "description": "Helps customers" }),
            positional: json!(["Helps customers", null]),
            wrong_type: (json!({ "permissions": [1, 2] }), "permissions[0]"),
            missing: None,
        },
        Route {
            method: Method::POST,
            path: format!("/api/v1/orgs/{org}/invitations"),
            token: ann.clone(),
            key: "email",
            valid: json!({ "email": "dan@example.com", "role": "member" }),
            positional: json!(["dan@example.com", "member"]),
            wrong_type: (json!({ "email": 5, "role": "member" }), "email"),
            missing: Some((json!({ "role": "member" }), "email")),
        },
        Route {
            method: Method::POST,
            path: "/api/v1/invitations/accept".into(),
            token: w.carol.token.clone(),
            key: "token",
            valid: json!({ "token": w.carol_token }),
            positional: json!([w.carol_token]),
            wrong_type: (json!({ "token": ["a"] }), "token"),
            missing: Some((json!({}), "token")),
        },
        Route {
            method: Method::PATCH,
            path: format!("/api/v1/orgs/{org}/members/{bob}"),
            token: ann.clone(),
            key: "role",
            valid: json!({ "role": "admin" }),
            positional: json!(["admin"]),
            wrong_type: (json!({ "role": 5 }), "role"),
            missing: Some((json!({}), "role")),
        },
        Route {
            method: Method::POST,
            path: format!("/api/v1/orgs/{org}/transfer-ownership"),
            token: ann.clone(),
            key: "user_id",
            valid: json!({ "user_id": bob }),
            positional: json!([bob]),
            wrong_type: (json!({ "user_id": "not-a-uuid" }), "user_id"),
            missing: Some((json!({}), "user_id")),
        },
        Route {
            method: Method::POST,
            path: "/api/v1/orgs".into(),
            token: ann.clone(),
            key: "name",
            valid: json!({ "name": "Second Org" }),
            positional: json!(["Second Org", null]),
            wrong_type: (json!({ "name": 5 }), "name"),
            missing: Some((json!({ "slug": "acme-two" }), "name")),
        },
    ]
}

// ---------------------------------------------------------------- tests

#[tokio::test]
async fn malformed_json_is_400_on_every_write_route() {
    let w = world().await;
    let mut cases = Vec::new();
    for r in routes(&w) {
        let bad_json = [
            ("truncated", format!(r#"{{"{}":"#, r.key)),
            ("empty body", String::new()),
            ("only whitespace", "  \n ".to_owned()),
            ("trailing garbage", format!("{} x", r.valid)),
            ("two documents", format!("{} {}", r.valid, r.valid)),
            ("single quotes", "{'name': 'x'}".to_owned()),
            ("unquoted key", format!("{{{}: 1}}", r.key)),
            ("trailing comma", {
                let v = r.valid.to_string();
                format!("{},}}", &v[..v.len() - 1])
            }),
            ("lone surrogate", format!(r#"{{"{}": "\ud800"}}"#, r.key)),
        ];
        for (name, text) in bad_json {
            cases.push(
                r.case(name, Body::text(Some("application/json"), &text))
                    .expect(StatusCode::BAD_REQUEST, "invalid_json"),
            );
        }
        // Not UTF-8 at all.
        let not_utf8 = [b"{\"", r.key.as_bytes(), b"\": \"\xff\xfe\"}"].concat();
        cases.push(
            r.case(
                "invalid utf-8",
                Body::Raw(Some("application/json"), not_utf8),
            )
            .expect(StatusCode::BAD_REQUEST, "invalid_json"),
        );
    }
    run(&w.app, cases).await;
}

#[tokio::test]
async fn wrong_types_and_missing_fields_are_422_naming_the_field() {
    let w = world().await;
    let mut cases = Vec::new();
    for r in routes(&w) {
        let (body, field) = &r.wrong_type;
        cases.push(
            r.case("wrong type", Body::json(body))
                .invalid(*field, "invalid_type"),
        );
        cases.push(
            r.case(
                "object for a string",
                Body::json(&with_field(&r.valid, r.key, json!({ "a": 1 }))),
            )
            .invalid(r.key, "invalid_type"),
        );
        if let Some((body, field)) = &r.missing {
            cases.push(
                r.case("missing field", Body::json(body))
                    .invalid(*field, "missing_field"),
            );
        }
    }
    run(&w.app, cases).await;
}

/// `errors[].field` names the unknown field itself (`is_admin`), as it names
/// wrong-typed and missing fields.
#[tokio::test]
async fn unknown_fields_are_422_naming_the_field() {
    let w = world().await;
    let cases = routes(&w)
        .iter()
        .map(|r| {
            r.case(
                "unknown field",
                Body::json(&with_field(&r.valid, "is_admin", json!(true))),
            )
            .invalid("is_admin", "unknown_field")
        })
        .collect();
    run(&w.app, cases).await;
}

/// A body that is JSON but not an object is a 422, including arrays whose
/// elements line up with the DTO's fields (serde accepts that "sequence form"
/// of a struct unless the extractor refuses it).
#[tokio::test]
async fn json_that_is_not_an_object_is_422_on_every_write_route() {
    let w = world().await;
    let mut cases = Vec::new();
    for r in routes(&w) {
        for not_object in [
            json!([]),
            json!("x"),
            json!(null),
            json!(42),
            json!(true),
            r.positional.clone(),
        ] {
            cases.push(
                r.case(
                    &format!("not an object: {not_object}"),
                    Body::json(&not_object),
                )
                .invalid("", "invalid_type"),
            );
        }
    }
    run(&w.app, cases).await;
}

#[tokio::test]
async fn wrong_content_type_and_oversized_bodies_are_rejected() {
    let w = world().await;
    let mut cases = Vec::new();
    for r in routes(&w) {
        let valid = r.valid.to_string();
        for (name, ct) in [
            ("no content type", None),
            ("text/plain", Some("text/plain")),
            ("form", Some("application/x-www-form-urlencoded")),
            ("xml", Some("application/xml")),
            ("json-ish", Some("text/json")),
        ] {
            cases.push(
                r.case(name, Body::text(ct, &valid))
                    .expect(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type"),
            );
        }
        // 300 KiB, over the default 256 KiB limit, in a field each DTO has
        // (the limit applies before any parsing).
        let huge = format!(r#"{{"name":"{}"}}"#, "a".repeat(300 * 1024));
        cases.push(
            r.case("300 KiB body", Body::text(Some("application/json"), &huge))
                .expect(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
        );
    }
    run(&w.app, cases).await;

    // Sanity: every `valid` body really succeeds when sent properly, so the
    // rejections above are about the input, not the route.
    for r in routes(&w) {
        let res = send(
            &w.app,
            r.method.clone(),
            &r.path,
            Some(&r.token),
            Body::text(
                Some("application/json; charset=utf-8"),
                &r.valid.to_string(),
            ),
            &[],
        )
        .await;
        assert!(
            res.status.is_success(),
            "{} {} with {}: {} {}",
            r.method,
            r.path,
            r.valid,
            res.status,
            res.raw
        );
    }
}

#[tokio::test]
async fn body_limit_follows_configuration() {
    let app = TestApp::spawn_with(&[("MAX_BODY_BYTES", "1024")], 5).await;
    let ann = app.user("ann@example.com");
    app.create_org(&ann, "Acme Corp").await;
    // 2 KiB body: over this app's 1 KiB limit.
    let body = format!(r#"{{"name":"{}"}}"#, "a".repeat(2048));
    run(
        &app,
        vec![
            Case::new(
                "2 KiB",
                Method::POST,
                "/api/v1/orgs",
                &ann.token,
                Body::text(Some("application/json"), &body),
            )
            .expect(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
        ],
    )
    .await;
    // Under the limit the same route parses the body (and validates the name).
    let body = format!(r#"{{"name":"{}"}}"#, "a".repeat(101));
    run(
        &app,
        vec![
            Case::new(
                "under the limit",
                Method::POST,
                "/api/v1/orgs",
                &ann.token,
                Body::text(Some("application/json"), &body),
            )
            .invalid("name", "too_long"),
        ],
    )
    .await;
}

#[tokio::test]
async fn invalid_field_values_are_named_in_422s() {
    let w = world().await;
    let (org, ann) = (w.org, &w.ann.token);
    let (bob, carol) = (&w.bob, &w.carol);
    let j = |v: Value| Body::json(&v);
    let long = |n: usize| "x".repeat(n);
    let long_email = format!("{}@example.com", "a".repeat(250));
    let mut cases = Vec::new();

    // POST /orgs and PATCH /orgs/{id}: names and slugs.
    for (method, path) in [
        (Method::POST, "/api/v1/orgs".to_owned()),
        (Method::PATCH, format!("/api/v1/orgs/{org}")),
    ] {
        let c =
            |name: &str, body: Value| Case::new(name, method.clone(), path.clone(), ann, j(body));
        cases.extend([
            c("name 101 chars", json!({ "name": long(101) })).invalid("name", "too_long"),
            c("empty name", json!({ "name": "" })).invalid("name", "too_short"),
            c("blank name", json!({ "name": "   " })).invalid("name", "too_short"),
            c("control char in name", json!({ "name": "Acme\u{0}Corp" }))
                .invalid("name", "invalid_characters"),
            c("newline in name", json!({ "name": "Acme\nCorp" }))
                .invalid("name", "invalid_characters"),
            c("slug 49 chars", json!({ "name": "Acme", "slug": long(49) }))
                .invalid("slug", "invalid_slug"),
            c(
                "slug with space",
                json!({ "name": "Acme", "slug": "Bad Slug" }),
            )
            .invalid("slug", "invalid_slug"),
            c(
                "slug with hyphens at ends",
                json!({ "name": "Acme", "slug": "-x-" }),
            )
            .invalid("slug", "invalid_slug"),
            c("slug too short", json!({ "name": "Acme", "slug": "ab" }))
                .invalid("slug", "invalid_slug"),
            c(
                "slug with double hyphen",
                json!({ "name": "Acme", "slug": "ac--me" }),
            )
            .invalid("slug", "invalid_slug"),
            c("slug uppercase", json!({ "name": "Acme", "slug": "Acme" }))
                .invalid("slug", "invalid_slug"),
            c("slug non-ascii", json!({ "name": "Acme", "slug": "ácme" }))
                .invalid("slug", "invalid_slug"),
            c("slug empty", json!({ "name": "Acme", "slug": "" })).invalid("slug", "invalid_slug"),
            c(
                "both bad: name reported",
                json!({ "name": "", "slug": "ab" }),
            )
            .invalid("name", "too_short"),
            c(
                "both bad: slug reported",
                json!({ "name": "", "slug": "ab" }),
            )
            .invalid("slug", "invalid_slug"),
        ]);
    }

    // PATCH /me: display name and avatar URL.
    let me = |name: &str, body: Value| Case::new(name, Method::PATCH, "/api/v1/me", ann, j(body));
    cases.extend([
        me("display name 101", json!({ "display_name": long(101) }))
            .invalid("display_name", "too_long"),
        me("empty display name", json!({ "display_name": "" }))
            .invalid("display_name", "too_short"),
        me("avatar not a url", json!({ "avatar_url": "not a url" }))
            .invalid("avatar_url", "invalid_url"),
        me(
            "avatar javascript",
            json!({ "avatar_url": "javascript:alert(1)" }),
        )
        .invalid("avatar_url", "invalid_url"),
        me(
            "avatar ftp",
            json!({ "avatar_url": "ftp://cdn.example.com/a.png" }),
        )
        .invalid("avatar_url", "invalid_url"),
        me("avatar relative", json!({ "avatar_url": "/a.png" }))
            .invalid("avatar_url", "invalid_url"),
        me(
            "avatar 2049+",
            json!({ "avatar_url": format!("https://cdn.example.com/{}", long(2048)) }),
        )
        .invalid("avatar_url", "too_long"),
        me(
            "both bad",
            json!({ "display_name": "", "avatar_url": "nope" }),
        )
        .invalid("avatar_url", "invalid_url"),
    ]);

    // PATCH /orgs/{id}/members/{user_id}: role names.
    let member_path = format!("/api/v1/orgs/{org}/members/{}", bob.id);
    let m =
        |name: &str, body: Value| Case::new(name, Method::PATCH, member_path.clone(), ann, j(body));
    cases.extend([
        m("unknown role", json!({ "role": "nope" })).invalid("role", "unknown_role"),
        m("invalid role name", json!({ "role": "Bad Role" })).invalid("role", "invalid_role"),
        m("empty role", json!({ "role": "" })).invalid("role", "invalid_role"),
        m("role 33 chars", json!({ "role": long(33) })).invalid("role", "invalid_role"),
        m("role null", json!({ "role": null })).invalid("role", "invalid_type"),
    ]);

    // POST /orgs/{id}/transfer-ownership.
    let t_path = format!("/api/v1/orgs/{org}/transfer-ownership");
    let t = |name: &str, body: Value| Case::new(name, Method::POST, t_path.clone(), ann, j(body));
    cases.extend([
        t("not a uuid", json!({ "user_id": "bob" })).invalid("user_id", "invalid_type"),
        t("number", json!({ "user_id": 7 })).invalid("user_id", "invalid_type"),
        t("to self", json!({ "user_id": w.ann.id })).invalid("user_id", "self_transfer"),
        t("to a non-member", json!({ "user_id": Uuid::new_v4() }))
            .invalid("user_id", "not_a_member"),
        t("to an invitee", json!({ "user_id": carol.id })).invalid("user_id", "not_a_member"),
    ]);

    // POST /orgs/{id}/roles and PATCH /orgs/{id}/roles/{role}.
    let roles = format!("/api/v1/orgs/{org}/roles");
    let r = |name: &str, body: Value| Case::new(name, Method::POST, roles.clone(), ann, j(body));
    cases.extend([
        r(
            "bad role name",
            json!({ "name": "Bad Role", "permissions": [] }),
        )
        .invalid("name", "invalid_role"),
        r(
            "role name 1 char",
            json!({ "name": "a", "permissions": [] }),
        )
        .invalid("name", "invalid_role"),
        r(
            "role name starts with digit",
            json!({ "name": "1st", "permissions": [] }),
        )
        .invalid("name", "invalid_role"),
        r(
            "unknown permission",
            json!({ "name": "ops", "permissions": ["org:read", "nope"] }),
        )
        .invalid("permissions[1]", "unknown_permission"),
        r(
            "owner-only permission",
            json!({ "name": "ops", "permissions": ["org:delete"] }),
        )
        .invalid("permissions[0]", "owner_only_permission"),
        r(
            "permission wrong case",
            json!({ "name": "ops", "permissions": ["ORG:READ"] }),
        )
        .invalid("permissions[0]", "unknown_permission"),
        r(
            "description 501",
            json!({ "name": "ops", "description": long(501), "permissions": [] }),
        )
        .invalid("description", "too_long"),
        r(
            "too many permissions",
            json!({ "name": "ops", "permissions": vec!["org:read"; 100] }),
        )
        .invalid("permissions", "too_many"),
    ]);
    let support = format!("/api/v1/orgs/{org}/roles/support");
    let u = |name: &str, body: Value| Case::new(name, Method::PATCH, support.clone(), ann, j(body));
    cases.extend([
        u("unknown permission", json!({ "permissions": ["nope"] }))
            .invalid("permissions[0]", "unknown_permission"),
        u(
            "owner-only permission",
            json!({ "permissions": ["org:read", "org:delete"] }),
        )
        .invalid("permissions[1]", "owner_only_permission"),
        u("description 501", json!({ "description": long(501) }))
            .invalid("description", "too_long"),
    ]);

    // POST /orgs/{id}/invitations.
    let inv = format!("/api/v1/orgs/{org}/invitations");
    let i = |name: &str, body: Value| Case::new(name, Method::POST, inv.clone(), ann, j(body));
    for bad in [
        "not-an-email",
        "ann@",
        "@example.com",
        "a@b",
        "a b@example.com",
        "a@@example.com",
        "a@example..com",
        "<a@example.com>",
        "",
    ] {
        cases.push(
            i(
                &format!("email {bad:?}"),
                json!({ "email": bad, "role": "member" }),
            )
            .invalid("email", "invalid_email"),
        );
    }
    cases.extend([
        i(
            "email 255+",
            json!({ "email": long_email, "role": "member" }),
        )
        .invalid("email", "too_long"),
        i(
            "unknown role",
            json!({ "email": "dan@example.com", "role": "nope" }),
        )
        .invalid("role", "unknown_role"),
        i(
            "invalid role",
            json!({ "email": "dan@example.com", "role": "Bad Role" }),
        )
        .invalid("role", "invalid_role"),
        i(
            "both bad: email",
            json!({ "email": "x", "role": "Bad Role" }),
        )
        .invalid("email", "invalid_email"),
        i(
            "both bad: role",
            json!({ "email": "x", "role": "Bad Role" }),
        )
        .invalid("role", "invalid_role"),
    ]);

    // POST /invitations/accept.
    let a = |name: &str, body: Value| {
        Case::new(
            name,
            Method::POST,
            "/api/v1/invitations/accept",
            &carol.token,
            j(body),
        )
    };
    cases.extend([
        a("empty token", json!({ "token": "" })).invalid("token", "invalid_token"),
        a("blank token", json!({ "token": "   " })).invalid("token", "invalid_token"),
        a("token 257", json!({ "token": long(257) })).invalid("token", "invalid_token"),
        a("unknown token", json!({ "token": "inv_doesnotexist" }))
            .expect(StatusCode::NOT_FOUND, "not_found"),
    ]);

    run(&w.app, cases).await;
}

#[tokio::test]
async fn malformed_path_ids_are_400_and_unknown_ids_404() {
    let w = world().await;
    let (org, ann) = (w.org, &w.ann.token);
    let bob = w.bob.id;
    let nobody = Uuid::new_v4();
    let json_body = |v: Value| Body::json(&v);
    let c =
        |method: Method, path: String, body: Body| Case::new(path.clone(), method, path, ann, body);
    let mut cases = Vec::new();
    for bad in [
        "not-a-uuid",
        "12345",
        "00000000-0000-0000-0000-00000000000g",
        "%FF",
    ] {
        cases.extend([
            c(Method::GET, format!("/api/v1/orgs/{bad}"), Body::None),
            c(
                Method::PATCH,
                format!("/api/v1/orgs/{bad}"),
                json_body(json!({ "name": "x" })),
            ),
            c(Method::DELETE, format!("/api/v1/orgs/{bad}"), Body::None),
            c(
                Method::GET,
                format!("/api/v1/orgs/{bad}/members"),
                Body::None,
            ),
            c(Method::GET, format!("/api/v1/orgs/{bad}/roles"), Body::None),
            c(
                Method::GET,
                format!("/api/v1/orgs/{bad}/invitations"),
                Body::None,
            ),
            c(
                Method::GET,
                format!("/api/v1/orgs/{bad}/audit-log"),
                Body::None,
            ),
            c(
                Method::POST,
                format!("/api/v1/orgs/{bad}/roles"),
                json_body(json!({ "name": "ops", "permissions": [] })),
            ),
            c(
                Method::POST,
                format!("/api/v1/orgs/{bad}/invitations"),
                json_body(json!({ "email": "dan@example.com", "role": "member" })),
            ),
            c(
                Method::POST,
                format!("/api/v1/orgs/{bad}/transfer-ownership"),
                json_body(json!({ "user_id": bob })),
            ),
            c(
                Method::PATCH,
                format!("/api/v1/orgs/{org}/members/{bad}"),
                json_body(json!({ "role": "admin" })),
            ),
            c(
                Method::DELETE,
                format!("/api/v1/orgs/{org}/members/{bad}"),
                Body::None,
            ),
            c(
                Method::PATCH,
                format!("/api/v1/orgs/{bad}/members/{bob}"),
                json_body(json!({ "role": "admin" })),
            ),
            c(
                Method::DELETE,
                format!("/api/v1/orgs/{org}/invitations/{bad}"),
                Body::None,
            ),
        ]);
    }
    let mut cases: Vec<Case> = cases
        .into_iter()
        .map(|c| c.expect(StatusCode::BAD_REQUEST, "invalid_path"))
        .collect();
    // Role names in the path are validated like role names in bodies.
    for bad in ["Bad%20Role", "UPPER", "a", "1st", "%F0%9F%98%80"] {
        cases.push(
            c(
                Method::PATCH,
                format!("/api/v1/orgs/{org}/roles/{bad}"),
                json_body(json!({ "description": "x" })),
            )
            .expect(StatusCode::BAD_REQUEST, "invalid_path"),
        );
        cases.push(
            c(
                Method::DELETE,
                format!("/api/v1/orgs/{org}/roles/{bad}"),
                Body::None,
            )
            .expect(StatusCode::BAD_REQUEST, "invalid_path"),
        );
    }
    // Well-formed ids of things that do not exist (or are not visible).
    let not_found = [
        c(Method::GET, format!("/api/v1/orgs/{nobody}"), Body::None),
        c(
            Method::PATCH,
            format!("/api/v1/orgs/{nobody}"),
            json_body(json!({ "name": "x" })),
        ),
        c(Method::DELETE, format!("/api/v1/orgs/{nobody}"), Body::None),
        c(
            Method::PATCH,
            format!("/api/v1/orgs/{org}/members/{nobody}"),
            json_body(json!({ "role": "admin" })),
        ),
        c(
            Method::DELETE,
            format!("/api/v1/orgs/{org}/members/{nobody}"),
            Body::None,
        ),
        c(
            Method::DELETE,
            format!("/api/v1/orgs/{org}/invitations/{nobody}"),
            Body::None,
        ),
        c(
            Method::PATCH,
            format!("/api/v1/orgs/{org}/roles/nosuchrole"),
            json_body(json!({ "description": "x" })),
        ),
        c(
            Method::DELETE,
            format!("/api/v1/orgs/{org}/roles/nosuchrole"),
            Body::None,
        ),
    ];
    cases.extend(
        not_found
            .into_iter()
            .map(|c| c.expect(StatusCode::NOT_FOUND, "not_found")),
    );
    run(&w.app, cases).await;
}

fn list_routes(org: Uuid) -> [String; 5] {
    [
        format!("/api/v1/orgs/{org}/members"),
        format!("/api/v1/orgs/{org}/roles"),
        format!("/api/v1/orgs/{org}/invitations"),
        format!("/api/v1/orgs/{org}/audit-log"),
        "/api/v1/me/organizations".to_owned(),
    ]
}

fn query_case(w: &World, list: &str, query: &str, code: &'static str) -> Case {
    Case::new(
        query.to_owned(),
        Method::GET,
        format!("{list}?{query}"),
        &w.ann.token,
        Body::None,
    )
    .expect(StatusCode::BAD_REQUEST, code)
}

#[tokio::test]
async fn bad_pagination_is_400_on_every_list_route() {
    let w = world().await;
    let mut cases = Vec::new();
    for list in list_routes(w.org) {
        for (query, code) in [
            ("limit=0", "invalid_limit"),
            ("limit=-1", "invalid_limit"),
            ("limit=201", "invalid_limit"),
            ("limit=100000", "invalid_limit"),
            ("limit=abc", "invalid_query"),
            ("limit=1.5", "invalid_query"),
            ("limit=", "invalid_query"),
            ("limit=99999999999999999999", "invalid_query"),
            ("cursor=%%%", "invalid_cursor"),
            ("cursor=bm9wZQ", "invalid_cursor"),
            ("cursor=!!!", "invalid_cursor"),
            ("cursor=", "invalid_cursor"),
            ("cursor=e30", "invalid_cursor"),
            ("cursor=bnVsbA", "invalid_cursor"),
            ("limit=0&cursor=bm9wZQ", "invalid_limit"),
        ] {
            cases.push(query_case(&w, &list, query, code));
        }
        let long = format!("cursor={}", "A".repeat(600));
        cases.push(query_case(&w, &list, &long, "invalid_cursor"));
    }
    run(&w.app, cases).await;

    // The limits themselves are accepted.
    for list in list_routes(w.org) {
        for query in ["limit=1", "limit=200"] {
            let (s, page) = w.app.get(&format!("{list}?{query}"), &w.ann).await;
            assert_eq!(s, StatusCode::OK, "{list}?{query}: {page}");
            assert!(page["data"].is_array(), "{page}");
        }
    }
}

/// Cursors are opaque and unsigned, so a client can forge one that decodes to
/// JSON of the right shape but holds a value the database cannot take: a
/// role-name cursor with a NUL byte, a member cursor with a timestamp before
/// any Postgres can store. Those are bad cursors (400), not server errors.
#[tokio::test]
async fn forged_cursors_are_400_not_500() {
    let w = world().await;
    let b64 = |v: Value| URL_SAFE_NO_PAD.encode(v.to_string());
    let nul = format!("cursor={}", b64(json!("admin\u{0}")));
    let ancient = format!(
        "cursor={}",
        b64(json!(["-10000-01-01T00:00:00Z", Uuid::nil()]))
    );
    let mut cases = Vec::new();
    for list in list_routes(w.org) {
        cases.push(query_case(&w, &list, &nul, "invalid_cursor"));
        cases.push(query_case(&w, &list, &ancient, "invalid_cursor"));
    }
    run(&w.app, cases).await;
}

#[tokio::test]
async fn unknown_routes_and_methods_are_problems() {
    let w = world().await;
    let (org, ann) = (w.org, &w.ann.token);
    let c = |method: Method, path: &str| {
        Case::new(path.to_owned(), method, path.to_owned(), ann, Body::None)
    };
    let mut cases = vec![
        c(Method::GET, "/api/v1/nope").expect(StatusCode::NOT_FOUND, "route_not_found"),
        c(Method::GET, "/nope").expect(StatusCode::NOT_FOUND, "route_not_found"),
        c(Method::POST, "/api/v2/orgs").expect(StatusCode::NOT_FOUND, "route_not_found"),
        c(Method::GET, &format!("/api/v1/orgs/{org}/nope"))
            .expect(StatusCode::NOT_FOUND, "route_not_found"),
    ];
    for (method, path) in [
        (Method::PUT, "/api/v1/orgs".to_owned()),
        (Method::DELETE, "/api/v1/orgs".to_owned()),
        (Method::DELETE, "/api/v1/me".to_owned()),
        (Method::POST, format!("/api/v1/orgs/{org}")),
        (
            Method::PUT,
            format!("/api/v1/orgs/{org}/members/{}", w.bob.id),
        ),
        (Method::GET, "/api/v1/invitations/accept".to_owned()),
        (Method::PATCH, format!("/api/v1/orgs/{org}/audit-log")),
        (Method::POST, "/healthz".to_owned()),
    ] {
        cases.push(c(method, &path).expect(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"));
    }
    run(&w.app, cases).await;

    // Without a token: 401 problem with a challenge, and nothing written.
    let before = w.app.snapshot().await;
    for (method, path) in [
        (Method::POST, "/api/v1/orgs".to_owned()),
        (Method::PATCH, format!("/api/v1/orgs/{org}")),
        (Method::PATCH, "/api/v1/me".to_owned()),
    ] {
        let r = send(
            &w.app,
            method.clone(),
            &path,
            None,
            Body::json(&json!({ "name": "x" })),
            &[],
        )
        .await;
        let wrong = problems_with(&r, StatusCode::UNAUTHORIZED, "unauthorized");
        assert!(wrong.is_empty(), "{method} {path}: {wrong:?} {}", r.raw);
        assert!(
            r.header("www-authenticate")
                .is_some_and(|v| v.starts_with("Bearer"))
        );
    }
    assert_eq!(w.app.snapshot().await, before);
}

#[tokio::test]
async fn every_response_carries_a_request_id_and_sane_ones_are_echoed() {
    let w = world().await;
    let (org, ann) = (w.org, &w.ann.token);
    let requests: Vec<(Method, String, Body)> = vec![
        (Method::GET, "/healthz".into(), Body::None),
        (Method::GET, format!("/api/v1/orgs/{org}"), Body::None),
        (Method::GET, "/api/v1/nope".into(), Body::None),
        (Method::PUT, "/api/v1/orgs".into(), Body::None),
        (
            Method::POST,
            "/api/v1/orgs".into(),
            Body::text(Some("text/plain"), "x"),
        ),
        (
            Method::POST,
            "/api/v1/orgs".into(),
            Body::text(Some("application/json"), "{"),
        ),
        (
            Method::POST,
            "/api/v1/orgs".into(),
            Body::json(&json!({ "name": "" })),
        ),
        (Method::GET, "/api/v1/orgs/not-a-uuid".into(), Body::None),
    ];
    let mut seen = std::collections::HashSet::new();
    for (method, path, body) in &requests {
        // No id sent: the server makes one up (a UUID), different each time.
        let r = send(&w.app, method.clone(), path, Some(ann), body.clone(), &[]).await;
        let id = r
            .header("x-request-id")
            .unwrap_or_else(|| panic!("{method} {path}: no x-request-id"));
        assert!(Uuid::parse_str(id).is_ok(), "{method} {path}: {id}");
        assert!(seen.insert(id.to_owned()), "request id reused: {id}");
        if r.status.is_client_error() {
            assert_eq!(r.body["request_id"], id, "{method} {path}");
        }

        // A sane id is kept, in the header and in problem bodies.
        for sane in ["req-123", "abc_DEF-789", &"a".repeat(64)] {
            let r = send(
                &w.app,
                method.clone(),
                path,
                Some(ann),
                body.clone(),
                &[("x-request-id", sane)],
            )
            .await;
            assert_eq!(r.header("x-request-id"), Some(sane), "{method} {path}");
            if r.status.is_client_error() {
                assert_eq!(r.body["request_id"], sane, "{method} {path}");
            }
        }

        // Anything else is replaced, never echoed.
        for insane in ["has space", "semi;colon", "a/b", &"a".repeat(65), ""] {
            let r = send(
                &w.app,
                method.clone(),
                path,
                Some(ann),
                body.clone(),
                &[("x-request-id", insane)],
            )
            .await;
            let id = r.header("x-request-id").unwrap_or_default();
            assert!(
                Uuid::parse_str(id).is_ok(),
                "{method} {path}: {insane:?} -> {id:?}"
            );
        }
    }
}
