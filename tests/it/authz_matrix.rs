//! The authorization matrix: every operation of the OpenAPI document, called
//! by every kind of caller against its own org's objects and another org's,
//! over real HTTP, with the expected status of each cell written down here.
//!
//! * A route missing from the table (or a table entry missing from the
//!   document) fails the test, so no route escapes the matrix.
//! * Every cell expected to be (or answering) 4xx must leave the database
//!   exactly as it was (`app.snapshot()` before and after).
//! * Cells expected to succeed on a mutating route get a fixture of their own,
//!   so one cell's change cannot decide another's outcome.

use crate::common::*;

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use reqwest::Method;
use reqwest::header::CONTENT_TYPE;
use serde_json::{Value, json};
use uuid::Uuid;

// ------------------------------------------------------------------ callers and targets

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Caller {
    Anonymous,
    /// Signed in, and only a member of an org of their own.
    Outsider,
    Viewer,
    Member,
    Admin,
    Owner,
    /// A platform operator: a `service_role` key, not a user token.
    Platform,
}

const CALLERS: [Caller; 7] = [
    Caller::Anonymous,
    Caller::Outsider,
    Caller::Viewer,
    Caller::Member,
    Caller::Admin,
    Caller::Owner,
    Caller::Platform,
];

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Target {
    /// Routes without an org: the caller acts on themselves.
    Caller,
    /// Org A (the role-holding caller's org) and org A's object.
    OwnOrg,
    /// Org B (the caller is not a member) and org B's object.
    OtherOrg,
    /// Org A in the path, but the object id / name belongs to org B.
    OtherOrgsObject,
}

/// The object an org route names after `{org_id}`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Obj {
    /// `{user_id}`: a member with the `member` role (not the caller).
    MemberUser,
    /// `{user_id}`: a member with the `viewer` role (not the caller).
    ViewerUser,
    /// `{invitation_id}`: a pending invitation.
    Invitation,
    /// `{role}`: an unused custom role.
    CustomRole,
    /// `{report_id}`: a queued report (no worker runs, so it stays queued).
    Report,
    /// `{import_id}`: a queued member import.
    Import,
    /// `{key_id}`: a live API key.
    ApiKey,
    /// `{hold_id}`: an open credit hold.
    Hold,
}

// ------------------------------------------------------------------ the expectation table

const ALL_ROLES: &[Caller] = &[Caller::Owner, Caller::Admin, Caller::Member, Caller::Viewer];
const MANAGERS: &[Caller] = &[Caller::Owner, Caller::Admin];
const OWNER_ONLY: &[Caller] = &[Caller::Owner];
/// `reports:create`: every built-in role but `viewer`.
const REPORT_CREATORS: &[Caller] = &[Caller::Owner, Caller::Admin, Caller::Member];
/// `credits:spend`: every built-in role but `viewer`.
const SPENDERS: &[Caller] = &[Caller::Owner, Caller::Admin, Caller::Member];
/// `billing:read`: every built-in role but `viewer`.
const BILLING_READERS: &[Caller] = &[Caller::Owner, Caller::Admin, Caller::Member];

enum Access {
    /// 200 for everyone, signed in or not.
    Public,
    /// 401 anonymous (and for a service key); `ok` for any signed-in user.
    User { ok: u16 },
    /// Operator routes: 401 anonymous; 403 for any user token; `ok` for a
    /// `service_role` key.
    Platform { ok: u16 },
    /// The GoTrue-compatible auth server (`/auth/v1`): `anonymous` without
    /// a bearer token, `signed_in` with any (these callers' tokens are
    /// Supabase tokens of users the auth server does not know, or a
    /// service key: GoTrue answers 403 `user_not_found` / `bad_jwt`).
    Auth { anonymous: u16, signed_in: u16 },
    /// 401 anonymous (and for a service key); 404 unless a member of the
    /// org in the path; then `ok` for the roles in `allowed`, 403 for the
    /// others.
    Org {
        allowed: &'static [Caller],
        ok: u16,
        object: Option<Obj>,
        mutating: bool,
    },
}

/// What a request body may depend on.
struct BodyCtx {
    /// Unique per cell (fresh emails, org names).
    n: usize,
    /// The admin user of the org named in the path.
    org_admin: Uuid,
}

struct Spec {
    method: Method,
    path: &'static str,
    access: Access,
    /// A `Value::String` is sent raw as `text/csv`, anything else as JSON.
    body: fn(&BodyCtx) -> Option<Value>,
    /// Checked on the response of a cell that got its expected 2xx.
    check: fn(&Value) -> bool,
    /// A query string (without `?`) added to the path.
    query: Option<&'static str>,
}

fn no_body(_: &BodyCtx) -> Option<Value> {
    None
}

fn any_body(_: &Value) -> bool {
    true
}

fn is_page(v: &Value) -> bool {
    v["data"].is_array()
}

fn org_route(
    method: Method,
    path: &'static str,
    allowed: &'static [Caller],
    ok: u16,
    object: Option<Obj>,
) -> Spec {
    let mutating = method != Method::GET;
    Spec {
        method,
        path,
        access: Access::Org {
            allowed,
            ok,
            object,
            mutating,
        },
        body: no_body,
        check: any_body,
        query: None,
    }
}

impl Spec {
    fn body(mut self, f: fn(&BodyCtx) -> Option<Value>) -> Spec {
        self.body = f;
        self
    }
    fn check(mut self, f: fn(&Value) -> bool) -> Spec {
        self.check = f;
        self
    }
    fn query(mut self, q: &'static str) -> Spec {
        self.query = Some(q);
        self
    }
    fn key(&self) -> (String, String) {
        (self.method.as_str().to_owned(), self.path.to_owned())
    }
    fn name(&self) -> String {
        format!("{} {}", self.method, self.path)
    }
    fn targets(&self) -> &'static [Target] {
        match self.access {
            Access::Public
            | Access::User { .. }
            | Access::Platform { .. }
            | Access::Auth { .. } => &[Target::Caller],
            Access::Org { object: None, .. } => &[Target::OwnOrg, Target::OtherOrg],
            Access::Org {
                object: Some(_), ..
            } => &[Target::OwnOrg, Target::OtherOrg, Target::OtherOrgsObject],
        }
    }

    /// The status the cell must answer with.
    fn expected(&self, caller: Caller, target: Target) -> u16 {
        match self.access {
            Access::Public => 200,
            Access::Auth {
                anonymous,
                signed_in,
            } => match caller {
                Caller::Anonymous => anonymous,
                _ => signed_in,
            },
            Access::Platform { ok } => match caller {
                Caller::Anonymous => 401,
                Caller::Platform => ok,
                // A valid user token is authenticated, but not an operator.
                _ => 403,
            },
            // A service key is not a user token.
            Access::User { ok } => match caller {
                Caller::Anonymous | Caller::Platform => 401,
                _ => ok,
            },
            Access::Org { allowed, ok, .. } => match (caller, target) {
                (Caller::Anonymous | Caller::Platform, _) => 401,
                (Caller::Outsider, _) => 404,
                (_, Target::OtherOrg) => 404,
                // The permission is checked before the object is looked up.
                (role, Target::OtherOrgsObject) => {
                    if allowed.contains(&role) {
                        404
                    } else {
                        403
                    }
                }
                (role, _) => {
                    if allowed.contains(&role) {
                        ok
                    } else {
                        403
                    }
                }
            },
        }
    }

    fn mutating(&self) -> bool {
        matches!(self.access, Access::Org { mutating: true, .. })
    }
}

fn table() -> Vec<Spec> {
    use Method as M;
    let user = |method: Method, path: &'static str, ok: u16| Spec {
        method,
        path,
        access: Access::User { ok },
        body: no_body,
        check: any_body,
        query: None,
    };
    let public = |path: &'static str| Spec {
        method: M::GET,
        path,
        access: Access::Public,
        body: no_body,
        check: |v| v["status"] == "ok",
        query: None,
    };
    let platform = |method: Method, path: &'static str, ok: u16| Spec {
        method,
        path,
        access: Access::Platform { ok },
        body: no_body,
        check: any_body,
        query: None,
    };
    let auth = |method: Method, path: &'static str, anonymous: u16, signed_in: u16| Spec {
        method,
        path,
        access: Access::Auth {
            anonymous,
            signed_in,
        },
        body: no_body,
        check: any_body,
        query: None,
    };
    vec![
        public("/healthz"),
        public("/readyz"),
        // Outside `dev`, without METRICS_TOKEN or METRICS_ADDR: closed to all.
        auth(M::GET, "/metrics", 404, 404),
        public("/auth/v1/.well-known/jwks.json").check(|v| v["keys"].is_array()),
        public("/api/v1/plans").check(|v| v.as_array().is_some_and(|p| !p.is_empty())),
        public("/api/v1/credit-packs").check(|v| v.as_array().is_some_and(|p| !p.is_empty())),
        // Authenticated by its signature alone; this app's provider is manual,
        // so no signature can be valid: 400 for every caller.
        auth(M::POST, "/api/v1/webhooks/stripe", 400, 400),
        // ---- the GoTrue-compatible auth server (no org; the app here
        // confirms sign-ups by email, so no cell gets a session)
        public("/auth/v1/health").check(|v| v["name"] == "GoTrue"),
        public("/auth/v1/settings").check(|v| v["external"]["email"] == true),
        // Sign-up ignores the bearer token: a fresh address is a new,
        // unconfirmed user for everyone.
        auth(M::POST, "/auth/v1/signup", 200, 200)
            .body(|c| {
                Some(json!({
                    "email": format!("signup-{}@matrix.example.com", c.n),
                    "password": "matrix password"
                }))
            })
            .check(|v| v["email_confirmed_at"].is_null() && v["access_token"].is_null()),
        // Wrong credentials for everyone.
        auth(M::POST, "/auth/v1/token", 400, 400)
            .query("grant_type=password")
            .body(|c| {
                Some(json!({
                    "email": format!("nobody-{}@matrix.example.com", c.n),
                    "password": "matrix password"
                }))
            }),
        // The callers' tokens name no user of the auth server: 403.
        auth(M::GET, "/auth/v1/user", 401, 403),
        auth(M::PUT, "/auth/v1/user", 401, 403).body(|_| Some(json!({ "data": { "k": 1 } }))),
        auth(M::POST, "/auth/v1/logout", 401, 403),
        auth(M::GET, "/auth/v1/reauthenticate", 401, 403),
        // Everyone's guess is wrong (the bearer token is ignored).
        auth(M::POST, "/auth/v1/verify", 403, 403)
            .body(|c| Some(json!({ "type": "signup", "token_hash": format!("matrix-{}", c.n) }))),
        // The emailed link: 303 to AUTH_SITE_URL with the error in the fragment.
        auth(M::GET, "/auth/v1/verify", 303, 303).query("token=matrix&type=signup"),
        // No enumeration: {} for everyone.
        auth(M::POST, "/auth/v1/recover", 200, 200)
            .body(|c| Some(json!({ "email": format!("recover-{}@matrix.example.com", c.n) })))
            .check(|v| v.as_object().is_some_and(|m| m.is_empty())),
        // ---- platform-admin routes (`{job_id}`: a random id, no such dead job)
        platform(M::GET, "/api/v1/admin/jobs", 200).check(|v| v["outbox"].is_number()),
        platform(M::GET, "/api/v1/admin/jobs/dead", 200).check(is_page),
        platform(M::GET, "/api/v1/admin/jobs/dead/{job_id}", 404),
        platform(M::DELETE, "/api/v1/admin/jobs/dead/{job_id}", 404),
        platform(M::POST, "/api/v1/admin/jobs/dead/{job_id}/retry", 404),
        // Ban a user (GoTrue's admin update): no such account here.
        platform(M::PUT, "/auth/v1/admin/users/{user_id}", 404)
            .body(|_| Some(json!({ "ban_duration": "24h" }))),
        // ---- user-level routes
        user(M::GET, "/api/v1/me", 200).check(|v| v["id"].is_string()),
        user(M::PATCH, "/api/v1/me", 200)
            .body(|c| Some(json!({ "display_name": format!("Matrix {}", c.n) }))),
        user(M::GET, "/api/v1/me/organizations", 200).check(is_page),
        user(M::GET, "/api/v1/permissions", 200).check(|v| v.is_array()),
        user(M::POST, "/api/v1/orgs", 201)
            .body(|c| Some(json!({ "name": format!("Matrix created {}", c.n) })))
            .check(|v| v["id"].is_string()),
        user(M::POST, "/api/v1/invitations/accept", 404)
            .body(|c| Some(json!({ "token": format!("inv_no_such_token_{}", c.n) }))),
        // ---- organization
        org_route(M::GET, "/api/v1/orgs/{org_id}", ALL_ROLES, 200, None)
            .check(|v| v["id"].is_string()),
        org_route(M::PATCH, "/api/v1/orgs/{org_id}", MANAGERS, 200, None)
            .body(|_| Some(json!({ "name": "Renamed" })))
            .check(|v| v["name"] == "Renamed"),
        org_route(M::DELETE, "/api/v1/orgs/{org_id}", OWNER_ONLY, 204, None),
        // ---- members
        org_route(
            M::GET,
            "/api/v1/orgs/{org_id}/members",
            ALL_ROLES,
            200,
            None,
        )
        .check(is_page),
        org_route(
            M::PATCH,
            "/api/v1/orgs/{org_id}/members/{user_id}",
            MANAGERS,
            200,
            Some(Obj::MemberUser),
        )
        .body(|_| Some(json!({ "role": "viewer" })))
        .check(|v| v["role"] == "viewer"),
        org_route(
            M::DELETE,
            "/api/v1/orgs/{org_id}/members/{user_id}",
            MANAGERS,
            204,
            Some(Obj::ViewerUser),
        ),
        org_route(
            M::POST,
            "/api/v1/orgs/{org_id}/transfer-ownership",
            OWNER_ONLY,
            200,
            None,
        )
        .body(|c| Some(json!({ "user_id": c.org_admin })))
        .check(|v| v["role"] == "owner"),
        // ---- roles
        org_route(M::GET, "/api/v1/orgs/{org_id}/roles", ALL_ROLES, 200, None).check(is_page),
        org_route(M::POST, "/api/v1/orgs/{org_id}/roles", MANAGERS, 201, None)
            .body(|_| Some(json!({ "name": "auditor", "permissions": ["org:read", "audit:read"] })))
            .check(|v| v["name"] == "auditor"),
        org_route(
            M::PATCH,
            "/api/v1/orgs/{org_id}/roles/{role}",
            MANAGERS,
            200,
            Some(Obj::CustomRole),
        )
        .body(|_| Some(json!({ "description": "x" })))
        .check(|v| v["description"] == "x"),
        org_route(
            M::DELETE,
            "/api/v1/orgs/{org_id}/roles/{role}",
            MANAGERS,
            204,
            Some(Obj::CustomRole),
        ),
        // ---- invitations
        org_route(
            M::GET,
            "/api/v1/orgs/{org_id}/invitations",
            MANAGERS,
            200,
            None,
        )
        .check(is_page),
        org_route(
            M::POST,
            "/api/v1/orgs/{org_id}/invitations",
            MANAGERS,
            201,
            None,
        )
        .body(|c| {
            Some(json!({ "email": format!("fresh-{}@matrix.example.com", c.n), "role": "member" }))
        })
        .check(|v| v["token"].as_str().is_some_and(|t| t.starts_with("inv_"))),
        org_route(
            M::DELETE,
            "/api/v1/orgs/{org_id}/invitations/{invitation_id}",
            MANAGERS,
            204,
            Some(Obj::Invitation),
        ),
        // ---- API keys
        org_route(
            M::GET,
            "/api/v1/orgs/{org_id}/api-keys",
            MANAGERS,
            200,
            None,
        )
        .check(is_page),
        org_route(
            M::POST,
            "/api/v1/orgs/{org_id}/api-keys",
            MANAGERS,
            201,
            None,
        )
        .body(|c| Some(json!({ "name": format!("matrix-{}", c.n), "role": "viewer" })))
        .check(|v| v["key"].as_str().is_some_and(|k| k.starts_with("tnt_"))),
        org_route(
            M::DELETE,
            "/api/v1/orgs/{org_id}/api-keys/{key_id}",
            MANAGERS,
            204,
            Some(Obj::ApiKey),
        ),
        // ---- audit
        org_route(
            M::GET,
            "/api/v1/orgs/{org_id}/audit-log",
            MANAGERS,
            200,
            None,
        )
        .check(is_page),
        // ---- reports
        org_route(
            M::GET,
            "/api/v1/orgs/{org_id}/reports",
            ALL_ROLES,
            200,
            None,
        )
        .check(is_page),
        org_route(
            M::POST,
            "/api/v1/orgs/{org_id}/reports",
            REPORT_CREATORS,
            202,
            None,
        )
        .body(|_| Some(json!({ "kind": "members", "format": "csv" })))
        .check(|v| v["state"] == "queued"),
        org_route(
            M::GET,
            "/api/v1/orgs/{org_id}/reports/{report_id}",
            ALL_ROLES,
            200,
            Some(Obj::Report),
        )
        .check(|v| v["kind"] == "report" && v["id"].is_string()),
        // No worker runs here: the report is never built.
        org_route(
            M::GET,
            "/api/v1/orgs/{org_id}/reports/{report_id}/download",
            ALL_ROLES,
            409,
            Some(Obj::Report),
        ),
        // ---- member imports (invitations:manage)
        org_route(M::GET, "/api/v1/orgs/{org_id}/imports", MANAGERS, 200, None).check(is_page),
        org_route(
            M::POST,
            "/api/v1/orgs/{org_id}/imports",
            MANAGERS,
            202,
            None,
        )
        .body(|c| {
            Some(Value::String(format!(
                "email,role\nfresh-{}@matrix.example.com,member\n",
                c.n
            )))
        })
        .check(|v| v["kind"] == "import" && v["state"] == "queued"),
        org_route(
            M::GET,
            "/api/v1/orgs/{org_id}/imports/{import_id}",
            MANAGERS,
            200,
            Some(Obj::Import),
        )
        .check(|v| v["kind"] == "import" && v["rows"].is_array()),
        // ---- credits (writes carry an Idempotency-Key: `send` adds one to every request)
        org_route(
            M::GET,
            "/api/v1/orgs/{org_id}/credits",
            ALL_ROLES,
            200,
            None,
        )
        .check(|v| v["balance"].is_i64() && v["grants"].is_array()),
        org_route(
            M::GET,
            "/api/v1/orgs/{org_id}/credits/ledger",
            ALL_ROLES,
            200,
            None,
        )
        .check(is_page),
        org_route(
            M::POST,
            "/api/v1/orgs/{org_id}/credits/spend",
            SPENDERS,
            200,
            None,
        )
        .body(|_| Some(json!({ "amount": 1 })))
        .check(|v| v["amount"] == 1 && v["drawn"].is_array()),
        org_route(
            M::POST,
            "/api/v1/orgs/{org_id}/credits/holds",
            SPENDERS,
            201,
            None,
        )
        .body(|_| Some(json!({ "amount": 2 })))
        .check(|v| v["hold"]["status"] == "open"),
        org_route(
            M::GET,
            "/api/v1/orgs/{org_id}/credits/holds/{hold_id}",
            ALL_ROLES,
            200,
            Some(Obj::Hold),
        )
        .check(|v| v["status"] == "open"),
        org_route(
            M::POST,
            "/api/v1/orgs/{org_id}/credits/holds/{hold_id}/capture",
            SPENDERS,
            200,
            Some(Obj::Hold),
        )
        .body(|_| Some(json!({ "amount": 1 })))
        .check(|v| v["hold"]["status"] == "captured"),
        org_route(
            M::POST,
            "/api/v1/orgs/{org_id}/credits/holds/{hold_id}/release",
            SPENDERS,
            200,
            Some(Obj::Hold),
        )
        .check(|v| v["hold"]["status"] == "released"),
        // ---- plans and subscriptions
        platform(M::GET, "/api/v1/admin/plans", 200)
            .check(|v| v.as_array().is_some_and(|p| p.len() >= 3)),
        // Creates the plan `matrix` (the only cell that may).
        platform(M::PUT, "/api/v1/admin/plans/{code}", 201)
            .body(|_| {
                Some(json!({
                    "name": "Matrix", "price_minor": 500, "currency": "USD", "interval": "month"
                }))
            })
            .check(|v| v["code"] == "matrix"),
        org_route(
            M::GET,
            "/api/v1/orgs/{org_id}/subscription",
            BILLING_READERS,
            200,
            None,
        )
        .check(|v| v["plan_code"] == "free"),
        org_route(
            M::PUT,
            "/api/v1/orgs/{org_id}/subscription",
            MANAGERS,
            200,
            None,
        )
        .body(|_| Some(json!({ "plan": "pro" })))
        .check(|v| v["plan_code"] == "pro"),
        // The fixture orgs are on the free plan, which cannot be canceled.
        org_route(
            M::POST,
            "/api/v1/orgs/{org_id}/subscription/cancel",
            MANAGERS,
            409,
            None,
        ),
        org_route(
            M::POST,
            "/api/v1/orgs/{org_id}/subscription/resume",
            MANAGERS,
            409,
            None,
        ),
        org_route(
            M::GET,
            "/api/v1/orgs/{org_id}/entitlements",
            ALL_ROLES,
            200,
            None,
        )
        .check(|v| v["plan"] == "free" && v["seats_used"].is_i64()),
        // ---- payments (the manual provider: no checkout, no portal)
        org_route(
            M::POST,
            "/api/v1/orgs/{org_id}/billing/checkout",
            MANAGERS,
            409,
            None,
        )
        .body(|_| Some(json!({ "plan": "pro" }))),
        org_route(
            M::POST,
            "/api/v1/orgs/{org_id}/billing/portal",
            MANAGERS,
            409,
            None,
        ),
        org_route(
            M::GET,
            "/api/v1/orgs/{org_id}/invoices",
            BILLING_READERS,
            200,
            None,
        )
        .check(is_page),
        // An invoice id no invoice has.
        platform(
            M::POST,
            "/api/v1/admin/orgs/{org_id}/invoices/{invoice_id}/paid",
            404,
        ),
        platform(M::POST, "/api/v1/orgs/{org_id}/credits/grants", 201)
            .body(|_| Some(json!({ "amount": 5, "source": "promotion" })))
            .check(|v| v["grant"]["amount"] == 5),
    ]
}

// ------------------------------------------------------------------ fixtures

static SEQ: AtomicUsize = AtomicUsize::new(0);

fn next_n() -> usize {
    SEQ.fetch_add(1, Ordering::Relaxed)
}

/// One org with a user of each built-in role, two more members to act on, an
/// unused custom role, a pending invitation, a queued report and a queued
/// member import.
struct OrgFx {
    id: Uuid,
    owner: TestUser,
    admin: TestUser,
    member: TestUser,
    viewer: TestUser,
    /// Target of PATCH members/{user_id} (role `member`).
    member_target: TestUser,
    /// Target of DELETE members/{user_id} (role `viewer`).
    viewer_target: TestUser,
    invitation: Uuid,
    custom_role: &'static str,
    report: Uuid,
    import: Uuid,
    /// `{key_id}`: a live API key (role `viewer`).
    api_key: Uuid,
    /// `{hold_id}`: an open hold of 10 credits (of 1,000 granted).
    hold: Uuid,
}

/// Org A is where the role-holding callers are; org B is somebody else's.
/// Org B's custom role has a name org A does not have, so that
/// `orgs/A/roles/{B's role}` names an object of B only.
struct Fixture {
    a: OrgFx,
    b: OrgFx,
}

async fn build_org(app: &TestApp, custom_role: &'static str) -> OrgFx {
    let tag = next_n();
    let u = |who: &str| app.user(&format!("{who}-{tag}@matrix.example.com"));
    let owner = u("owner");
    let id = app.create_org(&owner, &format!("Matrix {tag}")).await;
    let (admin, member, viewer) = (u("admin"), u("member"), u("viewer"));
    let (member_target, viewer_target) = (u("member-target"), u("viewer-target"));
    for (user, role) in [
        (&admin, "admin"),
        (&member, "member"),
        (&viewer, "viewer"),
        (&member_target, "member"),
        (&viewer_target, "viewer"),
    ] {
        app.add_member(id, &owner, user, role).await;
    }
    let (s, body) = app
        .post(
            &format!("/api/v1/orgs/{id}/roles"),
            &owner,
            json!({ "name": custom_role, "permissions": ["org:read"] }),
        )
        .await;
    assert_eq!(s.as_u16(), 201, "fixture role: {body}");
    let (s, body) = app
        .post(
            &format!("/api/v1/orgs/{id}/invitations"),
            &owner,
            json!({ "email": format!("pending-{tag}@matrix.example.com"), "role": "member" }),
        )
        .await;
    assert_eq!(s.as_u16(), 201, "fixture invitation: {body}");
    let invitation = body["id"].as_str().unwrap().parse().unwrap();
    let (s, body) = app
        .post(
            &format!("/api/v1/orgs/{id}/reports"),
            &owner,
            json!({ "kind": "members", "format": "csv" }),
        )
        .await;
    assert_eq!(s.as_u16(), 202, "fixture report: {body}");
    let report = body["id"].as_str().unwrap().parse().unwrap();
    let csv = format!("email,role\nimported-{tag}@matrix.example.com,member\n");
    let (s, body) = send(
        app,
        Method::POST,
        &format!("/api/v1/orgs/{id}/imports"),
        Some(&owner.token),
        Some(Value::String(csv)),
    )
    .await;
    assert_eq!(s, 202, "fixture import: {body}");
    let import = body["id"].as_str().unwrap().parse().unwrap();
    let (s, body) = app
        .post(
            &format!("/api/v1/orgs/{id}/api-keys"),
            &owner,
            json!({ "name": "fixture", "role": "viewer" }),
        )
        .await;
    assert_eq!(s.as_u16(), 201, "fixture api key: {body}");
    let api_key = body["id"].as_str().unwrap().parse().unwrap();
    let (s, body) = send(
        app,
        Method::POST,
        &format!("/api/v1/orgs/{id}/credits/grants"),
        Some(&service_key()),
        Some(json!({ "amount": 1000, "source": "promotion" })),
    )
    .await;
    assert_eq!(s, 201, "fixture grant: {body}");
    let (s, body) = send(
        app,
        Method::POST,
        &format!("/api/v1/orgs/{id}/credits/holds"),
        Some(&owner.token),
        Some(json!({ "amount": 10, "ttl_seconds": 3600 })),
    )
    .await;
    assert_eq!(s, 201, "fixture hold: {body}");
    let hold = body["hold"]["id"].as_str().unwrap().parse().unwrap();
    OrgFx {
        id,
        owner,
        admin,
        member,
        viewer,
        member_target,
        viewer_target,
        invitation,
        custom_role,
        report,
        import,
        api_key,
        hold,
    }
}

async fn build_fixture(app: &TestApp) -> Fixture {
    let (a, b) = tokio::join!(build_org(app, "support"), build_org(app, "partner"));
    Fixture { a, b }
}

impl OrgFx {
    fn caller(&self, c: Caller) -> &TestUser {
        match c {
            Caller::Owner => &self.owner,
            Caller::Admin => &self.admin,
            Caller::Member => &self.member,
            Caller::Viewer => &self.viewer,
            Caller::Anonymous | Caller::Outsider | Caller::Platform => {
                unreachable!("not a member role")
            }
        }
    }
}

/// The path and body of one cell.
fn request(spec: &Spec, target: Target, fx: &Fixture, n: usize) -> (String, Option<Value>) {
    let (org, obj_org) = match target {
        Target::Caller | Target::OwnOrg => (&fx.a, &fx.a),
        Target::OtherOrg => (&fx.b, &fx.b),
        Target::OtherOrgsObject => (&fx.a, &fx.b),
    };
    let mut path = spec.path.replace("{org_id}", &org.id.to_string());
    if let Access::Org {
        object: Some(obj), ..
    } = spec.access
    {
        let (param, value) = match obj {
            Obj::MemberUser => ("{user_id}", obj_org.member_target.id.to_string()),
            Obj::ViewerUser => ("{user_id}", obj_org.viewer_target.id.to_string()),
            Obj::Invitation => ("{invitation_id}", obj_org.invitation.to_string()),
            Obj::CustomRole => ("{role}", obj_org.custom_role.to_owned()),
            Obj::Report => ("{report_id}", obj_org.report.to_string()),
            Obj::Import => ("{import_id}", obj_org.import.to_string()),
            Obj::ApiKey => ("{key_id}", obj_org.api_key.to_string()),
            Obj::Hold => ("{hold_id}", obj_org.hold.to_string()),
        };
        path = path.replace(param, &value);
    }
    if let Access::Platform { .. } = spec.access {
        // A job id no dead job has; a user id no account has.
        path = path
            .replace("{job_id}", &Uuid::new_v4().to_string())
            .replace("{user_id}", &Uuid::new_v4().to_string())
            .replace("{invoice_id}", &Uuid::new_v4().to_string())
            .replace("{code}", "matrix");
    }
    assert!(
        !path.contains('{'),
        "{}: unfilled path parameter in {path}",
        spec.name()
    );
    if let Some(q) = spec.query {
        path = format!("{path}?{q}");
    }
    let body = (spec.body)(&BodyCtx {
        n,
        org_admin: org.admin.id,
    });
    (path, body)
}

/// Sends one request: a `Value::String` body raw as `text/csv`, any other
/// body as JSON; always with a fresh `Idempotency-Key` (credit writes need
/// one, other routes ignore it). Returns the status and the JSON body (Null
/// when empty or not JSON).
async fn send(
    app: &TestApp,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = app
        .client
        .request(method, format!("{}{}", app.base, path))
        .header("idempotency-key", Uuid::new_v4().to_string());
    req = match body {
        Some(Value::String(raw)) => req.header(CONTENT_TYPE, "text/csv").body(raw),
        Some(json) => req.json(&json),
        None => req,
    };
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let res = req.send().await.expect("request");
    let status = res.status().as_u16();
    let bytes = res.bytes().await.unwrap_or_default();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

// ------------------------------------------------------------------ the test

/// Every (method, path template) of the OpenAPI document.
fn documented_operations() -> BTreeSet<(String, String)> {
    let (_, doc) = tenantry::app::api();
    let mut ops = BTreeSet::new();
    for (path, item) in &doc.paths.paths {
        for (method, op) in [
            ("GET", &item.get),
            ("POST", &item.post),
            ("PUT", &item.put),
            ("PATCH", &item.patch),
            ("DELETE", &item.delete),
            ("HEAD", &item.head),
            ("OPTIONS", &item.options),
            ("TRACE", &item.trace),
        ] {
            if op.is_some() {
                ops.insert((method.to_owned(), path.clone()));
            }
        }
    }
    ops
}

struct Mismatch {
    op: String,
    caller: Caller,
    target: Target,
    expected: u16,
    got: u16,
    note: String,
}

fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.chars().count() > 140 {
        format!("{}…", s.chars().take(140).collect::<String>())
    } else {
        s
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorization_matrix() {
    let started = Instant::now();
    let table = table();
    let mut problems: Vec<String> = Vec::new();

    // 1. The table and the OpenAPI document name the same operations.
    let documented = documented_operations();
    let mut tabled = BTreeSet::new();
    for spec in &table {
        if !tabled.insert(spec.key()) {
            problems.push(format!("the table names {} twice", spec.name()));
        }
    }
    for (m, p) in documented.difference(&tabled) {
        problems.push(format!(
            "{m} {p} is in the OpenAPI document but has no row in the authorization matrix"
        ));
    }
    for (m, p) in tabled.difference(&documented) {
        problems.push(format!(
            "{m} {p} is in the authorization matrix but not in the OpenAPI document"
        ));
    }

    // 2. Every cell over real HTTP.
    // With a signing key, as a deployment of the auth server has.
    let mut app = TestApp::spawn_with(
        &[(
            "AUTH_KEYS_SECRET",
            "dGVzdC1vbmx5LWF1dGgta2V5cy1zZWNyZXQtMzJieXQ=",
        )],
        5,
    )
    .await;
    // Fixture orgs have more members than the free plan allows.
    app.unlimited_seats().await;
    // Redirects are answers of their own here (GET /auth/v1/verify).
    app.client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let outsider = app.user("outsider@matrix.example.com");
    app.create_org(&outsider, "Outsider Org").await;
    let platform_key = service_key();
    let mut shared = build_fixture(&app).await;
    let mut fixtures = 1;
    let mut cells = 0;
    let mut mismatches: Vec<Mismatch> = Vec::new();

    for spec in table.iter().filter(|s| documented.contains(&s.key())) {
        for caller in CALLERS {
            for &target in spec.targets() {
                let expected = spec.expected(caller, target);
                // A cell that should change state gets state of its own.
                let own_fixture = spec.mutating() && expected < 400;
                let fresh;
                let fx = if own_fixture {
                    fresh = build_fixture(&app).await;
                    fixtures += 1;
                    &fresh
                } else {
                    &shared
                };
                let n = next_n();
                let (path, body) = request(spec, target, fx, n);
                let token = match caller {
                    Caller::Anonymous => None,
                    Caller::Outsider => Some(outsider.token.as_str()),
                    Caller::Platform => Some(platform_key.as_str()),
                    role => Some(fx.a.caller(role).token.as_str()),
                };
                let before = app.snapshot().await;
                let (got, resp) = send(&app, spec.method.clone(), &path, token, body).await;
                cells += 1;
                let mut dirty = false;
                let mut record = |note: String| {
                    mismatches.push(Mismatch {
                        op: spec.name(),
                        caller,
                        target,
                        expected,
                        got,
                        note,
                    })
                };
                if got != expected {
                    record(short(&resp));
                } else if got < 300 && !(spec.check)(&resp) {
                    record(format!("unexpected body: {}", short(&resp)));
                }
                if expected >= 400 || got >= 400 {
                    let after = app.snapshot().await;
                    if after != before {
                        record(format!(
                            "DATABASE CHANGED by a {got} answer (path {path}); body: {}",
                            short(&resp)
                        ));
                        dirty = true;
                    }
                }
                if !own_fixture && spec.mutating() && got < 300 {
                    // An unexpected success changed the shared fixture.
                    dirty = true;
                }
                if dirty {
                    shared = build_fixture(&app).await;
                    fixtures += 1;
                }
            }
        }
    }

    let elapsed = started.elapsed();
    eprintln!(
        "authz matrix: {cells} cells over {} operations, {fixtures} fixtures, {:.1}s",
        tabled.len(),
        elapsed.as_secs_f64()
    );
    if !mismatches.is_empty() {
        let mut out = String::new();
        writeln!(
            out,
            "{:<54} {:<9} {:<15} {:>4} {:>4}  body",
            "operation", "caller", "target", "want", "got"
        )
        .unwrap();
        for m in &mismatches {
            writeln!(
                out,
                "{:<54} {:<9} {:<15} {:>4} {:>4}  {}",
                m.op,
                format!("{:?}", m.caller),
                format!("{:?}", m.target),
                m.expected,
                m.got,
                m.note
            )
            .unwrap();
        }
        problems.push(format!(
            "{} of {cells} cells do not match:\n{out}",
            mismatches.len()
        ));
    }
    assert!(
        problems.is_empty(),
        "authorization matrix failed:\n{}",
        problems.join("\n")
    );
}
