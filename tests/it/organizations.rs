//! Business rules of organizations, members, roles, invitations and the audit
//! log, end to end over HTTP.

use crate::common::*;

use std::collections::HashSet;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use uuid::Uuid;

// ---------------------------------------------------------------- helpers

/// Sends a request with an explicit `x-request-id`; returns status, the
/// response's `x-request-id` and the JSON body.
async fn call_with_id(
    app: &TestApp,
    method: Method,
    path: &str,
    user: &TestUser,
    body: Option<Value>,
    request_id: &str,
) -> (StatusCode, String, Value) {
    let mut req = app
        .client
        .request(method, format!("{}{}", app.base, path))
        .bearer_auth(&user.token)
        .header("x-request-id", request_id);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let res = req.send().await.expect("request");
    let status = res.status();
    let id = res
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let bytes = res.bytes().await.unwrap_or_default();
    (
        status,
        id,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

fn assert_problem(status: StatusCode, body: &Value, expected: StatusCode, code: &str) {
    assert_eq!(status, expected, "{body}");
    assert_eq!(body["code"], code, "{body}");
    assert_eq!(body["status"], expected.as_u16(), "{body}");
}

fn next_cursor(page: &Value) -> Option<String> {
    match page.get("next_cursor") {
        None | Some(Value::Null) => None,
        Some(c) => Some(c.as_str().expect("cursor is a string").to_owned()),
    }
}

/// Every item of a paginated list, walking `next_cursor` with `limit`;
/// also returns the size of each page.
async fn walk(app: &TestApp, path: &str, user: &TestUser, limit: u32) -> (Vec<Value>, Vec<usize>) {
    let mut items = Vec::new();
    let mut sizes = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..100 {
        let url = match &cursor {
            None => format!("{path}?limit={limit}"),
            Some(c) => format!("{path}?limit={limit}&cursor={c}"),
        };
        let (s, page) = app.get(&url, user).await;
        assert_eq!(s, StatusCode::OK, "{url}: {page}");
        let data = page["data"].as_array().expect("data").clone();
        sizes.push(data.len());
        items.extend(data);
        cursor = next_cursor(&page);
        if cursor.is_none() {
            return (items, sizes);
        }
    }
    panic!("pagination of {path} never ended");
}

async fn members(app: &TestApp, org: Uuid, user: &TestUser) -> Vec<Value> {
    let (s, page) = app
        .get(&format!("/api/v1/orgs/{org}/members?limit=200"), user)
        .await;
    assert_eq!(s, StatusCode::OK, "{page}");
    assert!(next_cursor(&page).is_none());
    page["data"].as_array().unwrap().clone()
}

/// The role of `user_id` in `org`, read by `reader`; None when not a member.
async fn role_of(app: &TestApp, org: Uuid, reader: &TestUser, user_id: Uuid) -> Option<String> {
    members(app, org, reader)
        .await
        .iter()
        .find(|m| m["user_id"] == user_id.to_string())
        .map(|m| m["role"].as_str().unwrap().to_owned())
}

async fn count_in_org(app: &TestApp, table: &str, org: Uuid) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "select count(*) from {table} where org_id = $1"
    )))
    .bind(org)
    .fetch_one(&app.db.admin)
    .await
    .unwrap()
}

async fn create_role(app: &TestApp, org: Uuid, by: &TestUser, name: &str, perms: &[&str]) -> Value {
    let (s, role) = app
        .post(
            &format!("/api/v1/orgs/{org}/roles"),
            by,
            json!({ "name": name, "permissions": perms }),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{role}");
    role
}

async fn set_role(
    app: &TestApp,
    org: Uuid,
    by: &TestUser,
    target: Uuid,
    role: &str,
) -> (StatusCode, Value) {
    app.patch(
        &format!("/api/v1/orgs/{org}/members/{target}"),
        by,
        json!({ "role": role }),
    )
    .await
}

async fn invite(
    app: &TestApp,
    org: Uuid,
    by: &TestUser,
    email: &str,
    role: &str,
) -> (StatusCode, Value) {
    app.post(
        &format!("/api/v1/orgs/{org}/invitations"),
        by,
        json!({ "email": email, "role": role }),
    )
    .await
}

async fn accept(app: &TestApp, user: &TestUser, token: &Value) -> (StatusCode, Value) {
    app.post(
        "/api/v1/invitations/accept",
        user,
        json!({ "token": token }),
    )
    .await
}

fn user_with_token(id: Uuid, email: &str, token: String) -> TestUser {
    TestUser {
        id,
        email: email.to_owned(),
        token,
    }
}

// ---------------------------------------------------------------- organizations

#[tokio::test]
async fn creating_an_org_makes_the_caller_owner_and_derives_the_slug() {
    let app = TestApp::spawn().await;
    let ann = app.user("ann@example.com");
    let (s, org) = app
        .post("/api/v1/orgs", &ann, json!({ "name": "  Acme Corp!  " }))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{org}");
    assert_eq!(org["name"], "Acme Corp!", "name is trimmed");
    assert_eq!(org["slug"], "acme-corp");
    let id: Uuid = org["id"].as_str().unwrap().parse().unwrap();

    // The caller is the only member, as owner.
    let ms = members(&app, id, &ann).await;
    assert_eq!(ms.len(), 1);
    assert_eq!(ms[0]["user_id"], ann.id.to_string());
    assert_eq!(ms[0]["role"], "owner");
    assert_eq!(ms[0]["email"], "ann@example.com");
    let (s, mine) = app.get("/api/v1/me/organizations", &ann).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(mine["data"][0]["id"], id.to_string());
    assert_eq!(mine["data"][0]["role"], "owner");

    // It comes with the four built-in roles, and nothing else.
    let (s, roles) = app.get(&format!("/api/v1/orgs/{id}/roles"), &ann).await;
    assert_eq!(s, StatusCode::OK);
    let mut names: Vec<&str> = roles["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            assert_eq!(r["builtin"], true);
            r["name"].as_str().unwrap()
        })
        .collect();
    names.sort();
    assert_eq!(names, ["admin", "member", "owner", "viewer"]);

    // GET returns what POST did.
    let (s, got) = app.get(&format!("/api/v1/orgs/{id}"), &ann).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(got["slug"], "acme-corp");
    assert_eq!(got["id"], org["id"]);
}

#[tokio::test]
async fn explicit_slug_is_used_and_a_taken_one_conflicts() {
    let app = TestApp::spawn().await;
    let ann = app.user("ann@example.com");
    let bob = app.user("bob@example.com");
    let (s, org) = app
        .post(
            "/api/v1/orgs",
            &ann,
            json!({ "name": "Acme Corp", "slug": "acme" }),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{org}");
    assert_eq!(org["slug"], "acme");

    let before = app.snapshot().await;
    let (s, body) = app
        .post(
            "/api/v1/orgs",
            &bob,
            json!({ "name": "Other", "slug": "acme" }),
        )
        .await;
    assert_problem(s, &body, StatusCode::CONFLICT, "slug_taken");
    assert_eq!(app.count("organizations").await, 1);
    assert_eq!(
        app.snapshot().await,
        before,
        "a failed create writes nothing"
    );
}

#[tokio::test]
async fn orgs_with_the_same_name_get_distinct_derived_slugs() {
    let app = TestApp::spawn().await;
    let ann = app.user("ann@example.com");
    let bob = app.user("bob@example.com");
    let mut slugs = HashSet::new();
    for user in [&ann, &bob, &ann] {
        let (s, org) = app
            .post("/api/v1/orgs", user, json!({ "name": "Acme Corp" }))
            .await;
        assert_eq!(s, StatusCode::CREATED, "{org}");
        let slug = org["slug"].as_str().unwrap().to_owned();
        assert!(slug.starts_with("acme-corp"), "{slug}");
        assert!(slug.len() <= 48, "{slug}");
        assert!(slugs.insert(slug.clone()), "duplicate slug {slug}");
    }
    assert!(slugs.contains("acme-corp"));
    assert_eq!(app.count("organizations").await, 3);
}

#[tokio::test]
async fn org_can_be_read_and_renamed_and_a_taken_slug_conflicts() {
    let app = TestApp::spawn().await;
    let ann = app.user("ann@example.com");
    let bob = app.user("bob@example.com");
    let eve = app.user("eve@example.com");
    let org = app.create_org(&ann, "Acme Corp").await;
    let other = app.create_org(&bob, "Globex").await;
    app.add_member(org, &ann, &bob, "member").await;

    // Members read; outsiders see nothing (404, not 403).
    let (s, got) = app.get(&format!("/api/v1/orgs/{org}"), &bob).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(got["name"], "Acme Corp");
    let (s, body) = app.get(&format!("/api/v1/orgs/{org}"), &eve).await;
    assert_problem(s, &body, StatusCode::NOT_FOUND, "not_found");

    // Rename and re-slug.
    let (s, updated) = app
        .patch(
            &format!("/api/v1/orgs/{org}"),
            &ann,
            json!({ "name": "Acme Inc", "slug": "acme-inc" }),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{updated}");
    assert_eq!(updated["name"], "Acme Inc");
    assert_eq!(updated["slug"], "acme-inc");
    assert_ne!(updated["updated_at"], got["updated_at"]);
    // A partial update leaves the other field alone.
    let (s, updated) = app
        .patch(
            &format!("/api/v1/orgs/{org}"),
            &ann,
            json!({ "name": "Acme" }),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(updated["slug"], "acme-inc");
    let (_, got) = app.get(&format!("/api/v1/orgs/{org}"), &bob).await;
    assert_eq!(got["name"], "Acme");

    // Someone else's slug.
    let (_, globex) = app.get(&format!("/api/v1/orgs/{other}"), &bob).await;
    let before = app.snapshot().await;
    let (s, body) = app
        .patch(
            &format!("/api/v1/orgs/{org}"),
            &ann,
            json!({ "slug": globex["slug"] }),
        )
        .await;
    assert_problem(s, &body, StatusCode::CONFLICT, "slug_taken");
    assert_eq!(app.snapshot().await, before);

    // A plain member cannot rename.
    let (s, body) = app
        .patch(
            &format!("/api/v1/orgs/{org}"),
            &bob,
            json!({ "name": "Mine" }),
        )
        .await;
    assert_problem(s, &body, StatusCode::FORBIDDEN, "permission_denied");
    assert_eq!(app.snapshot().await, before);
}

#[tokio::test]
async fn deleting_an_org_removes_it_with_its_members_roles_and_invitations() {
    let app = TestApp::spawn().await;
    let ann = app.user("ann@example.com");
    let bob = app.user("bob@example.com");
    let org = app.create_org(&ann, "Acme Corp").await;
    let keep = app.create_org(&bob, "Globex").await;
    app.add_member(org, &ann, &bob, "admin").await;
    create_role(&app, org, &ann, "support", &["org:read"]).await;
    let (s, _) = invite(&app, org, &ann, "carol@example.com", "support").await;
    assert_eq!(s, StatusCode::CREATED);
    for table in ["memberships", "roles", "invitations", "audit_log"] {
        assert!(count_in_org(&app, table, org).await > 0, "{table}");
    }
    let keep_before: Vec<i64> = {
        let mut v = Vec::new();
        for table in ["memberships", "roles", "invitations", "audit_log"] {
            v.push(count_in_org(&app, table, keep).await);
        }
        v
    };

    // An admin cannot delete it.
    let (s, body) = app.delete(&format!("/api/v1/orgs/{org}"), &bob).await;
    assert_problem(s, &body, StatusCode::FORBIDDEN, "permission_denied");

    let (s, _) = app.delete(&format!("/api/v1/orgs/{org}"), &ann).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, body) = app.get(&format!("/api/v1/orgs/{org}"), &ann).await;
    assert_problem(s, &body, StatusCode::NOT_FOUND, "not_found");
    let (s, body) = app.delete(&format!("/api/v1/orgs/{org}"), &ann).await;
    assert_problem(s, &body, StatusCode::NOT_FOUND, "not_found");
    let exists = app.org_exists(org).await;
    assert!(!exists);
    for table in ["memberships", "roles", "invitations", "audit_log"] {
        assert_eq!(count_in_org(&app, table, org).await, 0, "{table}");
    }
    // The other org is untouched, and nobody lists the deleted one.
    for (table, n) in ["memberships", "roles", "invitations", "audit_log"]
        .iter()
        .zip(keep_before)
    {
        assert_eq!(count_in_org(&app, table, keep).await, n, "{table}");
    }
    let (_, mine) = app.get("/api/v1/me/organizations", &bob).await;
    let ids: Vec<&Value> = mine["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| &o["id"])
        .collect();
    assert_eq!(ids, [&json!(keep.to_string())]);
    // Users are not tenant data: they stay.
    assert_eq!(app.count("users").await, 2);
}

// ---------------------------------------------------------------- me

#[tokio::test]
async fn me_provisions_the_user_from_the_token() {
    let app = TestApp::spawn().await;
    let id = Uuid::new_v4();
    let ann = user_with_token(id, "Ann@Example.com", token_for(id, "Ann@Example.com"));
    assert_eq!(app.count("users").await, 0);
    let (s, me) = app.get("/api/v1/me", &ann).await;
    assert_eq!(s, StatusCode::OK, "{me}");
    assert_eq!(me["id"], id.to_string());
    assert_eq!(me["email"], "ann@example.com");
    assert_eq!(me["display_name"], Value::Null);
    assert_eq!(me["avatar_url"], Value::Null);
    assert_eq!(app.count("users").await, 1);

    // Again: same user, no second row, nothing rewritten.
    let before = app.snapshot().await;
    let (s, again) = app.get("/api/v1/me", &ann).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(again, me);
    assert_eq!(app.snapshot().await, before);

    // A new email in the token follows the user.
    let moved = user_with_token(id, "ann@new.example", token_for(id, "ann@new.example"));
    let (_, me) = app.get("/api/v1/me", &moved).await;
    assert_eq!(me["email"], "ann@new.example");
    assert_eq!(app.count("users").await, 1);
}

#[tokio::test]
async fn patch_me_sets_and_clears_the_profile() {
    let app = TestApp::spawn().await;
    let ann = app.user("ann@example.com");
    let (s, me) = app
        .patch(
            "/api/v1/me",
            &ann,
            json!({ "display_name": " Ann Lee ", "avatar_url": "https://cdn.example.com/ann.png" }),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{me}");
    assert_eq!(me["id"], ann.id.to_string());
    assert_eq!(me["display_name"], "Ann Lee");
    assert_eq!(me["avatar_url"], "https://cdn.example.com/ann.png");

    // Absent fields are left alone.
    let (s, me) = app
        .patch("/api/v1/me", &ann, json!({ "display_name": "Ann" }))
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(me["display_name"], "Ann");
    assert_eq!(me["avatar_url"], "https://cdn.example.com/ann.png");

    // An invalid URL changes nothing.
    let before = app.snapshot().await;
    for bad in [
        "not a url",
        "javascript:alert(1)",
        "data:image/png;base64,AAAA",
    ] {
        let (s, body) = app
            .patch(
                "/api/v1/me",
                &ann,
                json!({ "display_name": "Mallory", "avatar_url": bad }),
            )
            .await;
        assert_problem(
            s,
            &body,
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        );
        assert_eq!(body["errors"][0]["field"], "avatar_url", "{body}");
        assert_eq!(body["errors"][0]["code"], "invalid_url", "{body}");
    }
    assert_eq!(app.snapshot().await, before);

    // null clears.
    let (s, me) = app
        .patch("/api/v1/me", &ann, json!({ "avatar_url": null }))
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(me["avatar_url"], Value::Null);
    assert_eq!(me["display_name"], "Ann");
    let (s, me) = app
        .patch("/api/v1/me", &ann, json!({ "display_name": null }))
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(me["display_name"], Value::Null);
    let (_, got) = app.get("/api/v1/me", &ann).await;
    assert_eq!(got["display_name"], Value::Null);
    assert_eq!(got["avatar_url"], Value::Null);

    // The profile shows in member lists.
    app.patch("/api/v1/me", &ann, json!({ "display_name": "Ann" }))
        .await;
    let org = app.create_org(&ann, "Acme").await;
    assert_eq!(members(&app, org, &ann).await[0]["display_name"], "Ann");
}

#[tokio::test]
async fn my_organizations_lists_each_org_with_my_role_and_paginates() {
    let app = TestApp::spawn().await;
    let ann = app.user("ann@example.com");
    let bob = app.user("bob@example.com");
    let mut expected = std::collections::HashMap::new();
    for name in ["A1", "A2", "A3"] {
        expected.insert(app.create_org(&ann, name).await, "owner");
    }
    let b1 = app.create_org(&bob, "B1").await;
    app.add_member(b1, &bob, &ann, "viewer").await;
    expected.insert(b1, "viewer");
    let b2 = app.create_org(&bob, "B2").await;
    app.add_member(b2, &bob, &ann, "admin").await;
    expected.insert(b2, "admin");
    // An org ann is not in.
    app.create_org(&bob, "B3").await;

    let (all, sizes) = walk(&app, "/api/v1/me/organizations", &ann, 2).await;
    assert_eq!(sizes, [2, 2, 1]);
    assert_eq!(all.len(), 5);
    let mut seen = HashSet::new();
    for o in &all {
        let id: Uuid = o["id"].as_str().unwrap().parse().unwrap();
        assert!(seen.insert(id), "{id} listed twice");
        assert_eq!(o["role"], expected[&id], "{o}");
        assert!(o["name"].is_string() && o["slug"].is_string() && o["joined_at"].is_string());
    }
    // Same order as a single page.
    let (s, one) = app.get("/api/v1/me/organizations?limit=200", &ann).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(one["data"].as_array().unwrap(), &all);
    assert!(next_cursor(&one).is_none());

    // bob sees his three and nothing of ann's.
    let (_, bobs) = app.get("/api/v1/me/organizations", &bob).await;
    assert_eq!(bobs["data"].as_array().unwrap().len(), 3);
    assert!(
        bobs["data"]
            .as_array()
            .unwrap()
            .iter()
            .all(|o| o["role"] == "owner")
    );
}

// ---------------------------------------------------------------- members

#[tokio::test]
async fn members_pagination_visits_every_member_once_in_a_stable_order() {
    let app = TestApp::spawn().await;
    // More seats than the free plan's default allows.
    app.unlimited_seats().await;
    let ann = app.user("ann@example.com");
    let org = app.create_org(&ann, "Acme").await;
    let mut ids = vec![ann.id];
    for i in 0..7 {
        let u = app.user(&format!("user{i}@example.com"));
        app.add_member(org, &ann, &u, "member").await;
        ids.push(u.id);
    }
    let path = format!("/api/v1/orgs/{org}/members");
    let (all, sizes) = walk(&app, &path, &ann, 3).await;
    assert_eq!(sizes, [3, 3, 2]);
    let got: Vec<Uuid> = all
        .iter()
        .map(|m| m["user_id"].as_str().unwrap().parse().unwrap())
        .collect();
    // Oldest first: the owner, then members in the order they joined.
    assert_eq!(got, ids);
    let joined: Vec<&str> = all
        .iter()
        .map(|m| m["joined_at"].as_str().unwrap())
        .collect();
    let mut sorted = joined.clone();
    sorted.sort_by_key(|s| chrono::DateTime::parse_from_rfc3339(s).unwrap());
    assert_eq!(joined, sorted);

    // The walk is repeatable.
    let (again, _) = walk(&app, &path, &ann, 3).await;
    assert_eq!(again, all);
    // Exactly a full last page: no cursor after it.
    let (_, sizes) = walk(&app, &path, &ann, 4).await;
    assert_eq!(sizes, [4, 4]);
    let (s, page) = app.get(&format!("{path}?limit=8"), &ann).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(page["data"].as_array().unwrap().len(), 8);
    assert!(next_cursor(&page).is_none(), "{page}");
}

// ---------------------------------------------------------------- invitations

#[tokio::test]
async fn invitation_token_is_shown_once_and_stored_only_as_a_hash() {
    let app = TestApp::spawn().await;
    let ann = app.user("ann@example.com");
    let org = app.create_org(&ann, "Acme").await;
    let (s, inv) = invite(&app, org, &ann, "bob@example.com", "member").await;
    assert_eq!(s, StatusCode::CREATED, "{inv}");
    let token = inv["token"].as_str().unwrap().to_owned();
    assert!(token.len() >= 32, "{token}");
    assert_eq!(inv["email"], "bob@example.com");
    assert_eq!(inv["role"], "member");
    assert_eq!(inv["invited_by"], ann.id.to_string());

    // The list shows the invitation without its token.
    let (s, list) = app
        .get(&format!("/api/v1/orgs/{org}/invitations"), &ann)
        .await;
    assert_eq!(s, StatusCode::OK);
    let data = list["data"].as_array().unwrap();
    assert_eq!(data.len(), 1);
    assert_eq!(data[0]["id"], inv["id"]);
    assert!(data[0].get("token").is_none(), "{list}");
    assert!(!list.to_string().contains(&token));

    // The database has a 32-byte SHA-256 of it, and nowhere the token itself.
    let (len, matches): (i32, bool) = sqlx::query_as(
        "select octet_length(token_hash), token_hash = sha256(convert_to($1, 'UTF8'))
         from invitations",
    )
    .bind(&token)
    .fetch_one(&app.db.admin)
    .await
    .unwrap();
    assert_eq!(len, 32);
    assert!(matches);
    for table in ["invitations", "audit_log", "organizations", "users"] {
        let leaked: bool = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "select exists (select 1 from {table} t where strpos(t::text, $1) > 0)"
        )))
        .bind(&token)
        .fetch_one(&app.db.admin)
        .await
        .unwrap();
        assert!(!leaked, "token found in {table}");
    }
    // Two invitations never share a token.
    let (_, other) = invite(&app, org, &ann, "carol@example.com", "member").await;
    assert_ne!(other["token"], inv["token"]);
}

#[tokio::test]
async fn accepting_matches_the_email_case_insensitively_and_grants_the_role() {
    let app = TestApp::spawn().await;
    let owner = app.user("owner@example.com");
    let org = app.create_org(&owner, "Acme").await;
    let (s, inv) = invite(&app, org, &owner, "Ann@Example.com", "viewer").await;
    assert_eq!(s, StatusCode::CREATED, "{inv}");
    assert_eq!(inv["email"], "ann@example.com");

    let ann = app.user("ann@example.com");
    let (s, accepted) = accept(&app, &ann, &inv["token"]).await;
    assert_eq!(s, StatusCode::OK, "{accepted}");
    assert_eq!(accepted["role"], "viewer");
    assert_eq!(accepted["organization"]["id"], org.to_string());
    assert_eq!(
        app.stored_role(org, ann.id).await.as_deref(),
        Some("viewer")
    );
    assert_eq!(
        role_of(&app, org, &ann, ann.id).await.as_deref(),
        Some("viewer")
    );
    // The invitation is closed.
    let (_, list) = app
        .get(&format!("/api/v1/orgs/{org}/invitations"), &owner)
        .await;
    assert_eq!(list["data"].as_array().unwrap().len(), 0);

    // And the other way round: a lowercase invitation, a mixed-case token email.
    let (_, inv) = invite(&app, org, &owner, "bob@example.com", "member").await;
    let id = Uuid::new_v4();
    let bob = user_with_token(id, "BOB@EXAMPLE.COM", token_for(id, "BOB@EXAMPLE.COM"));
    let (s, body) = accept(&app, &bob, &inv["token"]).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(app.stored_role(org, id).await.as_deref(), Some("member"));
}

#[tokio::test]
async fn an_invitation_works_only_once() {
    let app = TestApp::spawn().await;
    let owner = app.user("owner@example.com");
    let ann = app.user("ann@example.com");
    let org = app.create_org(&owner, "Acme").await;
    let (_, inv) = invite(&app, org, &owner, &ann.email, "member").await;
    let (s, _) = accept(&app, &ann, &inv["token"]).await;
    assert_eq!(s, StatusCode::OK);
    let before = app.snapshot().await;
    let (s, body) = accept(&app, &ann, &inv["token"]).await;
    assert_problem(s, &body, StatusCode::CONFLICT, "invitation_used");
    assert_eq!(app.snapshot().await, before);
    assert_eq!(count_in_org(&app, "memberships", org).await, 2);
}

#[tokio::test]
async fn accepting_with_another_email_is_forbidden() {
    let app = TestApp::spawn().await;
    let owner = app.user("owner@example.com");
    let ann = app.user("ann@example.com");
    let eve = app.user("eve@example.com");
    let org = app.create_org(&owner, "Acme").await;
    let (_, inv) = invite(&app, org, &owner, &ann.email, "admin").await;

    let before = app.snapshot().await;
    let (s, body) = accept(&app, &eve, &inv["token"]).await;
    assert_problem(s, &body, StatusCode::FORBIDDEN, "email_mismatch");
    assert_eq!(app.stored_role(org, eve.id).await, None);
    assert_eq!(app.snapshot().await, before, "not even eve's user row");

    // A token without an email cannot accept either.
    let id = Uuid::new_v4();
    let mut claims = claims_for(id, "x");
    claims.as_object_mut().unwrap().remove("email");
    let anon = user_with_token(id, "", sign_hs256(&claims));
    let (s, body) = accept(&app, &anon, &inv["token"]).await;
    assert_problem(s, &body, StatusCode::FORBIDDEN, "email_mismatch");
    assert_eq!(app.snapshot().await, before);

    // The invitation still works for ann.
    let (s, _) = accept(&app, &ann, &inv["token"]).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(app.stored_role(org, ann.id).await.as_deref(), Some("admin"));
}

#[tokio::test]
async fn accepting_with_an_unverified_email_is_forbidden() {
    let app = TestApp::spawn().await;
    let owner = app.user("owner@example.com");
    let org = app.create_org(&owner, "Acme").await;
    let (_, inv) = invite(&app, org, &owner, "ann@example.com", "member").await;
    let id = Uuid::new_v4();
    let before = app.snapshot().await;

    let mut top = claims_for(id, "ann@example.com");
    top["email_verified"] = json!(false);
    let mut meta = claims_for(id, "ann@example.com");
    meta["user_metadata"] = json!({ "email_verified": false });
    let mut anonymous = claims_for(id, "ann@example.com");
    anonymous["is_anonymous"] = json!(true);
    for (what, claims) in [
        ("top-level", top),
        ("metadata", meta),
        ("anonymous", anonymous),
    ] {
        let ann = user_with_token(id, "ann@example.com", sign_hs256(&claims));
        let (s, body) = accept(&app, &ann, &inv["token"]).await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{what}: {body}");
        assert_eq!(body["code"], "email_mismatch", "{what}");
    }
    assert_eq!(app.stored_role(org, id).await, None);
    assert_eq!(app.snapshot().await, before);

    // Verified: accepted.
    let mut ok = claims_for(id, "ann@example.com");
    ok["email_verified"] = json!(true);
    let ann = user_with_token(id, "ann@example.com", sign_hs256(&ok));
    let (s, body) = accept(&app, &ann, &inv["token"]).await;
    assert_eq!(s, StatusCode::OK, "{body}");
}

#[tokio::test]
async fn an_expired_invitation_is_gone_and_can_be_sent_again() {
    let app = TestApp::spawn().await;
    let owner = app.user("owner@example.com");
    let ann = app.user("ann@example.com");
    let org = app.create_org(&owner, "Acme").await;
    let (_, inv) = invite(&app, org, &owner, &ann.email, "member").await;
    let id: Uuid = inv["id"].as_str().unwrap().parse().unwrap();
    sqlx::query("update invitations set expires_at = now() - interval '1 minute' where id = $1")
        .bind(id)
        .execute(&app.db.admin)
        .await
        .unwrap();

    let before = app.snapshot().await;
    let (s, body) = accept(&app, &ann, &inv["token"]).await;
    assert_problem(s, &body, StatusCode::GONE, "invitation_expired");
    assert_eq!(app.stored_role(org, ann.id).await, None);
    assert_eq!(app.snapshot().await, before);
    // Expired invitations are not listed as open.
    let (_, list) = app
        .get(&format!("/api/v1/orgs/{org}/invitations"), &owner)
        .await;
    assert_eq!(list["data"].as_array().unwrap().len(), 0);

    // A fresh invitation to the same address replaces it.
    let (s, again) = invite(&app, org, &owner, &ann.email, "member").await;
    assert_eq!(s, StatusCode::CREATED, "{again}");
    let (s, _) = accept(&app, &ann, &again["token"]).await;
    assert_eq!(s, StatusCode::OK);
    // The old token stays dead.
    let (s, body) = accept(&app, &ann, &inv["token"]).await;
    assert!(
        s == StatusCode::GONE || s == StatusCode::NOT_FOUND,
        "{s} {body}"
    );
}

#[tokio::test]
async fn a_revoked_invitation_is_not_found() {
    let app = TestApp::spawn().await;
    let owner = app.user("owner@example.com");
    let ann = app.user("ann@example.com");
    let org = app.create_org(&owner, "Acme").await;
    let (_, inv) = invite(&app, org, &owner, &ann.email, "member").await;
    let path = format!(
        "/api/v1/orgs/{org}/invitations/{}",
        inv["id"].as_str().unwrap()
    );
    let (s, _) = app.delete(&path, &owner).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    // Revoking again: nothing open to revoke.
    let (s, body) = app.delete(&path, &owner).await;
    assert_problem(s, &body, StatusCode::NOT_FOUND, "not_found");

    let before = app.snapshot().await;
    let (s, body) = accept(&app, &ann, &inv["token"]).await;
    assert_problem(s, &body, StatusCode::NOT_FOUND, "not_found");
    assert_eq!(app.snapshot().await, before);
    assert_eq!(app.stored_role(org, ann.id).await, None);
    let (_, list) = app
        .get(&format!("/api/v1/orgs/{org}/invitations"), &owner)
        .await;
    assert_eq!(list["data"].as_array().unwrap().len(), 0);
}

#[tokio::test]
async fn inviting_a_member_or_an_already_invited_email_conflicts() {
    let app = TestApp::spawn().await;
    let owner = app.user("owner@example.com");
    let bob = app.user("bob@example.com");
    let org = app.create_org(&owner, "Acme").await;
    app.add_member(org, &owner, &bob, "member").await;
    let (s, _) = invite(&app, org, &owner, "carol@example.com", "member").await;
    assert_eq!(s, StatusCode::CREATED);

    let before = app.snapshot().await;
    for email in ["bob@example.com", "BOB@example.com", "owner@example.com"] {
        let (s, body) = invite(&app, org, &owner, email, "viewer").await;
        assert_problem(s, &body, StatusCode::CONFLICT, "already_member");
    }
    for email in ["carol@example.com", "Carol@Example.com"] {
        let (s, body) = invite(&app, org, &owner, email, "viewer").await;
        assert_problem(s, &body, StatusCode::CONFLICT, "invitation_exists");
    }
    assert_eq!(app.snapshot().await, before);
    // bob's accepted invitation and carol's open one; nothing new.
    assert_eq!(count_in_org(&app, "invitations", org).await, 2);
    let (_, open) = app
        .get(&format!("/api/v1/orgs/{org}/invitations"), &owner)
        .await;
    assert_eq!(open["data"].as_array().unwrap().len(), 1);
    assert_eq!(open["data"][0]["email"], "carol@example.com");

    // The same email may be invited to another org.
    let other = app.create_org(&bob, "Globex").await;
    let (s, _) = invite(&app, other, &bob, "carol@example.com", "member").await;
    assert_eq!(s, StatusCode::CREATED);
}

// ---------------------------------------------------------------- roles

#[tokio::test]
async fn a_custom_role_grants_exactly_its_permissions() {
    let app = TestApp::spawn().await;
    let owner = app.user("owner@example.com");
    let bob = app.user("bob@example.com");
    let org = app.create_org(&owner, "Acme").await;
    app.add_member(org, &owner, &bob, "member").await;
    let role = create_role(&app, org, &owner, "reader", &["org:read"]).await;
    assert_eq!(role["name"], "reader");
    assert_eq!(role["permissions"], json!(["org:read"]));
    assert_eq!(role["builtin"], false);

    let (s, m) = set_role(&app, org, &owner, bob.id, "reader").await;
    assert_eq!(s, StatusCode::OK, "{m}");
    assert_eq!(m["role"], "reader");

    let (s, _) = app.get(&format!("/api/v1/orgs/{org}"), &bob).await;
    assert_eq!(s, StatusCode::OK);
    for path in ["members", "roles", "invitations", "audit-log"] {
        let (s, body) = app.get(&format!("/api/v1/orgs/{org}/{path}"), &bob).await;
        assert_problem(s, &body, StatusCode::FORBIDDEN, "permission_denied");
    }
    let (s, body) = app
        .patch(&format!("/api/v1/orgs/{org}"), &bob, json!({ "name": "x" }))
        .await;
    assert_problem(s, &body, StatusCode::FORBIDDEN, "permission_denied");

    // Changing the role's permissions changes what its members can do.
    let (s, role) = app
        .patch(
            &format!("/api/v1/orgs/{org}/roles/reader"),
            &owner,
            json!({ "permissions": ["org:read", "members:read"], "description": "Reads" }),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{role}");
    assert_eq!(role["description"], "Reads");
    let (s, _) = app.get(&format!("/api/v1/orgs/{org}/members"), &bob).await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = app
        .get(&format!("/api/v1/orgs/{org}/audit-log"), &bob)
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn roles_cannot_hold_owner_only_or_unknown_permissions() {
    let app = TestApp::spawn().await;
    let owner = app.user("owner@example.com");
    let org = app.create_org(&owner, "Acme").await;
    let path = format!("/api/v1/orgs/{org}/roles");
    let before = app.snapshot().await;
    for (perms, field, code) in [
        (
            json!(["org:delete"]),
            "permissions[0]",
            "owner_only_permission",
        ),
        (
            json!(["org:read", "org:delete"]),
            "permissions[1]",
            "owner_only_permission",
        ),
        (
            json!(["org:read", "root"]),
            "permissions[1]",
            "unknown_permission",
        ),
        (json!(["*"]), "permissions[0]", "unknown_permission"),
    ] {
        let (s, body) = app
            .post(
                &path,
                &owner,
                json!({ "name": "ops", "permissions": perms }),
            )
            .await;
        assert_problem(
            s,
            &body,
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        );
        assert_eq!(body["errors"][0]["field"], field, "{body}");
        assert_eq!(body["errors"][0]["code"], code, "{body}");
    }
    // Not by changing an existing custom role either.
    create_role(&app, org, &owner, "ops", &["org:read"]).await;
    let before_update = app.snapshot().await;
    let (s, body) = app
        .patch(
            &format!("{path}/ops"),
            &owner,
            json!({ "permissions": ["org:delete"] }),
        )
        .await;
    assert_problem(
        s,
        &body,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    );
    assert_eq!(body["errors"][0]["code"], "owner_only_permission");
    assert_eq!(app.snapshot().await, before_update);
    assert_ne!(before, before_update);
}

/// A custom "manager" (members:manage, roles:manage, members:read, org:read)
/// cannot hand out more than it holds.
#[tokio::test]
async fn a_role_cannot_grant_more_than_its_holder_has() {
    let app = TestApp::spawn().await;
    let owner = app.user("owner@example.com");
    let mia = app.user("mia@example.com");
    let bob = app.user("bob@example.com");
    let org = app.create_org(&owner, "Acme").await;
    create_role(
        &app,
        org,
        &owner,
        "manager",
        &["members:manage", "roles:manage", "members:read", "org:read"],
    )
    .await;
    create_role(&app, org, &owner, "reader", &["org:read"]).await;
    app.add_member(org, &owner, &mia, "manager").await;
    app.add_member(org, &owner, &bob, "reader").await;
    let before = app.snapshot().await;

    // Not admin (admin holds far more than manager).
    let (s, body) = set_role(&app, org, &mia, bob.id, "admin").await;
    assert_problem(s, &body, StatusCode::FORBIDDEN, "forbidden");
    // Not a role with audit:read.
    let (s, body) = app
        .post(
            &format!("/api/v1/orgs/{org}/roles"),
            &mia,
            json!({ "name": "auditor", "permissions": ["org:read", "audit:read"] }),
        )
        .await;
    assert_problem(s, &body, StatusCode::FORBIDDEN, "forbidden");
    // Not by widening an existing role.
    let (s, body) = app
        .patch(
            &format!("/api/v1/orgs/{org}/roles/reader"),
            &mia,
            json!({ "permissions": ["org:read", "audit:read"] }),
        )
        .await;
    assert_problem(s, &body, StatusCode::FORBIDDEN, "forbidden");
    // Not by touching the owner.
    let (s, body) = set_role(&app, org, &mia, owner.id, "reader").await;
    assert_problem(s, &body, StatusCode::FORBIDDEN, "forbidden");
    assert_eq!(app.snapshot().await, before);
    assert_eq!(
        app.stored_role(org, bob.id).await.as_deref(),
        Some("reader")
    );

    // Within its own permissions it works.
    let role = create_role(&app, org, &mia, "lister", &["org:read", "members:read"]).await;
    assert_eq!(role["permissions"], json!(["org:read", "members:read"]));
    let (s, m) = set_role(&app, org, &mia, bob.id, "lister").await;
    assert_eq!(s, StatusCode::OK, "{m}");
    assert_eq!(
        app.stored_role(org, bob.id).await.as_deref(),
        Some("lister")
    );
}

#[tokio::test]
async fn built_in_roles_cannot_be_changed_or_deleted() {
    let app = TestApp::spawn().await;
    let owner = app.user("owner@example.com");
    let org = app.create_org(&owner, "Acme").await;
    let before = app.snapshot().await;
    for role in ["owner", "admin", "member", "viewer"] {
        let path = format!("/api/v1/orgs/{org}/roles/{role}");
        let (s, body) = app
            .patch(&path, &owner, json!({ "description": "mine now" }))
            .await;
        assert_problem(s, &body, StatusCode::CONFLICT, "builtin_role");
        let (s, body) = app
            .patch(&path, &owner, json!({ "permissions": ["org:read"] }))
            .await;
        assert_problem(s, &body, StatusCode::CONFLICT, "builtin_role");
        let (s, body) = app.delete(&path, &owner).await;
        assert_problem(s, &body, StatusCode::CONFLICT, "builtin_role");
        // Nor shadowed by a custom role of the same name.
        let (s, body) = app
            .post(
                &format!("/api/v1/orgs/{org}/roles"),
                &owner,
                json!({ "name": role, "permissions": ["org:read"] }),
            )
            .await;
        assert_problem(s, &body, StatusCode::CONFLICT, "role_exists");
    }
    assert_eq!(app.snapshot().await, before);
    // A duplicate custom role conflicts too.
    create_role(&app, org, &owner, "support", &["org:read"]).await;
    let (s, body) = app
        .post(
            &format!("/api/v1/orgs/{org}/roles"),
            &owner,
            json!({ "name": "support", "permissions": [] }),
        )
        .await;
    assert_problem(s, &body, StatusCode::CONFLICT, "role_exists");
}

#[tokio::test]
async fn a_role_in_use_cannot_be_deleted_an_unused_one_can() {
    let app = TestApp::spawn().await;
    let owner = app.user("owner@example.com");
    let bob = app.user("bob@example.com");
    let org = app.create_org(&owner, "Acme").await;
    create_role(&app, org, &owner, "support", &["org:read"]).await;
    create_role(&app, org, &owner, "pending", &["org:read"]).await;
    create_role(&app, org, &owner, "unused", &["org:read"]).await;
    app.add_member(org, &owner, &bob, "support").await;
    let (_, inv) = invite(&app, org, &owner, "carol@example.com", "pending").await;
    let roles = format!("/api/v1/orgs/{org}/roles");

    let before = app.snapshot().await;
    for role in ["support", "pending"] {
        let (s, body) = app.delete(&format!("{roles}/{role}"), &owner).await;
        assert_problem(s, &body, StatusCode::CONFLICT, "role_in_use");
    }
    assert_eq!(app.snapshot().await, before);

    let (s, _) = app.delete(&format!("{roles}/unused"), &owner).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, body) = app.delete(&format!("{roles}/unused"), &owner).await;
    assert_problem(s, &body, StatusCode::NOT_FOUND, "not_found");
    let (_, list) = app.get(&roles, &owner).await;
    let names: Vec<&str> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"support") && !names.contains(&"unused"),
        "{names:?}"
    );

    // Once nobody holds it (member moved, invitation revoked), it can go.
    let (s, _) = set_role(&app, org, &owner, bob.id, "member").await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = app.delete(&format!("{roles}/support"), &owner).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _) = app
        .delete(
            &format!(
                "/api/v1/orgs/{org}/invitations/{}",
                inv["id"].as_str().unwrap()
            ),
            &owner,
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _) = app.delete(&format!("{roles}/pending"), &owner).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    assert_eq!(
        sqlx::query_scalar::<_, i64>(
            "select count(*) from roles where org_id = $1 and not builtin"
        )
        .bind(org)
        .fetch_one(&app.db.admin)
        .await
        .unwrap(),
        0
    );
}

// ---------------------------------------------------------------- RBAC invariants

#[tokio::test]
async fn an_admin_cannot_make_or_unmake_owners() {
    let app = TestApp::spawn().await;
    let owner = app.user("owner@example.com");
    let adam = app.user("adam@example.com");
    let bob = app.user("bob@example.com");
    let org = app.create_org(&owner, "Acme").await;
    app.add_member(org, &owner, &adam, "admin").await;
    app.add_member(org, &owner, &bob, "member").await;
    let before = app.snapshot().await;

    for (target, role) in [
        (bob.id, "owner"),
        (adam.id, "owner"),
        (owner.id, "admin"),
        (owner.id, "member"),
    ] {
        let (s, body) = set_role(&app, org, &adam, target, role).await;
        assert_problem(s, &body, StatusCode::FORBIDDEN, "forbidden");
    }
    // Nor invite an owner, nor remove one.
    let (s, body) = invite(&app, org, &adam, "carol@example.com", "owner").await;
    assert_problem(s, &body, StatusCode::FORBIDDEN, "forbidden");
    let (s, body) = app
        .delete(&format!("/api/v1/orgs/{org}/members/{}", owner.id), &adam)
        .await;
    assert_problem(s, &body, StatusCode::FORBIDDEN, "forbidden");
    // Nor transfer ownership.
    let (s, body) = app
        .post(
            &format!("/api/v1/orgs/{org}/transfer-ownership"),
            &adam,
            json!({ "user_id": adam.id }),
        )
        .await;
    assert_problem(s, &body, StatusCode::FORBIDDEN, "permission_denied");
    assert_eq!(app.snapshot().await, before);

    // What an admin may do: change a member's role below owner.
    let (s, m) = set_role(&app, org, &adam, bob.id, "admin").await;
    assert_eq!(s, StatusCode::OK, "{m}");
    // And an owner may make owners.
    let (s, m) = set_role(&app, org, &owner, bob.id, "owner").await;
    assert_eq!(s, StatusCode::OK, "{m}");
    assert_eq!(app.stored_role(org, bob.id).await.as_deref(), Some("owner"));
}

#[tokio::test]
async fn the_last_owner_can_neither_be_demoted_nor_leave() {
    let app = TestApp::spawn().await;
    let owner = app.user("owner@example.com");
    let bob = app.user("bob@example.com");
    let org = app.create_org(&owner, "Acme").await;
    app.add_member(org, &owner, &bob, "admin").await;
    let me = format!("/api/v1/orgs/{org}/members/{}", owner.id);
    let before = app.snapshot().await;

    let (s, body) = set_role(&app, org, &owner, owner.id, "admin").await;
    assert_problem(s, &body, StatusCode::CONFLICT, "last_owner");
    let (s, body) = app.delete(&me, &owner).await;
    assert_problem(s, &body, StatusCode::CONFLICT, "last_owner");
    assert_eq!(app.snapshot().await, before);
    assert_eq!(
        app.stored_role(org, owner.id).await.as_deref(),
        Some("owner")
    );

    // With a second owner, the first may step down, and the other may not.
    let (s, _) = set_role(&app, org, &owner, bob.id, "owner").await;
    assert_eq!(s, StatusCode::OK);
    let (s, body) = set_role(&app, org, &owner, owner.id, "admin").await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let (s, body) = app
        .delete(&format!("/api/v1/orgs/{org}/members/{}", bob.id), &bob)
        .await;
    assert_problem(s, &body, StatusCode::CONFLICT, "last_owner");
    assert_eq!(app.stored_role(org, bob.id).await.as_deref(), Some("owner"));
}

#[tokio::test]
async fn a_member_can_leave_and_owners_can_remove_members() {
    let app = TestApp::spawn().await;
    let owner = app.user("owner@example.com");
    let bob = app.user("bob@example.com");
    let carol = app.user("carol@example.com");
    let org = app.create_org(&owner, "Acme").await;
    app.add_member(org, &owner, &bob, "viewer").await;
    app.add_member(org, &owner, &carol, "member").await;

    // A viewer cannot remove someone else...
    let (s, body) = app
        .delete(&format!("/api/v1/orgs/{org}/members/{}", carol.id), &bob)
        .await;
    assert_problem(s, &body, StatusCode::FORBIDDEN, "forbidden");
    // ...but may leave.
    let (s, _) = app
        .delete(&format!("/api/v1/orgs/{org}/members/{}", bob.id), &bob)
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    assert_eq!(app.stored_role(org, bob.id).await, None);
    let (s, body) = app.get(&format!("/api/v1/orgs/{org}"), &bob).await;
    assert_problem(s, &body, StatusCode::NOT_FOUND, "not_found");
    let (_, mine) = app.get("/api/v1/me/organizations", &bob).await;
    assert_eq!(mine["data"].as_array().unwrap().len(), 0);

    // The owner removes carol.
    let (s, _) = app
        .delete(&format!("/api/v1/orgs/{org}/members/{}", carol.id), &owner)
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    assert_eq!(count_in_org(&app, "memberships", org).await, 1);

    let (_, log) = app
        .get(&format!("/api/v1/orgs/{org}/audit-log"), &owner)
        .await;
    let e = &log["data"][0];
    assert_eq!(e["action"], "member.removed", "{log}");
    assert_eq!(e["actor_id"], owner.id.to_string());
    assert_eq!(e["target_id"], carol.id.to_string());
    let e = &log["data"][1];
    assert_eq!(e["action"], "member.left", "{log}");
    assert_eq!(e["actor_id"], bob.id.to_string());
    assert_eq!(e["target_id"], bob.id.to_string());
    assert_eq!(e["before"]["role"], "viewer");
}

#[tokio::test]
async fn ownership_can_be_transferred_to_a_member_only() {
    let app = TestApp::spawn().await;
    let owner = app.user("owner@example.com");
    let bob = app.user("bob@example.com");
    let stranger = app.user("stranger@example.com");
    let org = app.create_org(&owner, "Acme").await;
    app.create_org(&stranger, "Elsewhere").await;
    app.add_member(org, &owner, &bob, "member").await;
    let path = format!("/api/v1/orgs/{org}/transfer-ownership");

    let before = app.snapshot().await;
    for target in [stranger.id, Uuid::new_v4()] {
        let (s, body) = app.post(&path, &owner, json!({ "user_id": target })).await;
        assert_problem(
            s,
            &body,
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        );
        assert_eq!(body["errors"][0]["field"], "user_id", "{body}");
        assert_eq!(body["errors"][0]["code"], "not_a_member", "{body}");
    }
    assert_eq!(app.snapshot().await, before);

    let (s, new_owner) = app.post(&path, &owner, json!({ "user_id": bob.id })).await;
    assert_eq!(s, StatusCode::OK, "{new_owner}");
    assert_eq!(new_owner["user_id"], bob.id.to_string());
    assert_eq!(new_owner["role"], "owner");
    assert_eq!(app.stored_role(org, bob.id).await.as_deref(), Some("owner"));
    assert_eq!(
        app.stored_role(org, owner.id).await.as_deref(),
        Some("admin")
    );
    let (_, mine) = app.get("/api/v1/me/organizations", &owner).await;
    assert_eq!(mine["data"][0]["role"], "admin");
    let (_, log) = app
        .get(&format!("/api/v1/orgs/{org}/audit-log"), &bob)
        .await;
    let e = &log["data"][0];
    assert_eq!(e["action"], "org.ownership_transferred", "{log}");
    assert_eq!(e["actor_id"], owner.id.to_string());
    assert_eq!(e["target_id"], bob.id.to_string());

    // The old owner lost owner-only powers; the new one has them.
    let (s, body) = app
        .post(&path, &owner, json!({ "user_id": owner.id }))
        .await;
    assert_problem(s, &body, StatusCode::FORBIDDEN, "permission_denied");
    let (s, body) = app.delete(&format!("/api/v1/orgs/{org}"), &owner).await;
    assert_problem(s, &body, StatusCode::FORBIDDEN, "permission_denied");
    let (s, body) = app.post(&path, &bob, json!({ "user_id": owner.id })).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(
        app.stored_role(org, owner.id).await.as_deref(),
        Some("owner")
    );
    assert_eq!(app.stored_role(org, bob.id).await.as_deref(), Some("admin"));
}

// ---------------------------------------------------------------- audit log

#[tokio::test]
async fn the_audit_log_records_each_change_with_actor_and_request_id() {
    let app = TestApp::spawn().await;
    let ann = app.user("ann@example.com");
    let bob = app.user("bob@example.com");
    let carol = app.user("carol@example.com");

    let (s, _, org) = call_with_id(
        &app,
        Method::POST,
        "/api/v1/orgs",
        &ann,
        Some(json!({ "name": "Acme" })),
        "req-org-created",
    )
    .await;
    assert_eq!(s, StatusCode::CREATED);
    let org: Uuid = org["id"].as_str().unwrap().parse().unwrap();
    let inv_path = format!("/api/v1/orgs/{org}/invitations");
    let (s, id, inv) = call_with_id(
        &app,
        Method::POST,
        &inv_path,
        &ann,
        Some(json!({ "email": bob.email, "role": "member" })),
        "req-invite-bob",
    )
    .await;
    assert_eq!(s, StatusCode::CREATED);
    assert_eq!(id, "req-invite-bob", "the sane request id is echoed");
    let (s, _, _) = call_with_id(
        &app,
        Method::POST,
        "/api/v1/invitations/accept",
        &bob,
        Some(json!({ "token": inv["token"] })),
        "req-bob-accepts",
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let (s, _, _) = call_with_id(
        &app,
        Method::POST,
        &format!("/api/v1/orgs/{org}/roles"),
        &ann,
        Some(json!({ "name": "support", "permissions": ["org:read"] })),
        "req-role-created",
    )
    .await;
    assert_eq!(s, StatusCode::CREATED);
    let (s, _, _) = call_with_id(
        &app,
        Method::PATCH,
        &format!("/api/v1/orgs/{org}/members/{}", bob.id),
        &ann,
        Some(json!({ "role": "support" })),
        "req-role-changed",
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    app.add_member(org, &ann, &carol, "viewer").await;
    let (s, _, _) = call_with_id(
        &app,
        Method::DELETE,
        &format!("/api/v1/orgs/{org}/members/{}", bob.id),
        &ann,
        None,
        "req-bob-removed",
    )
    .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    // A failed request leaves no trace.
    let (s, _, _) = call_with_id(
        &app,
        Method::PATCH,
        &format!("/api/v1/orgs/{org}/members/{}", ann.id),
        &ann,
        Some(json!({ "role": "admin" })),
        "req-failed",
    )
    .await;
    assert_eq!(s, StatusCode::CONFLICT);

    let (s, log) = app
        .get(&format!("/api/v1/orgs/{org}/audit-log"), &ann)
        .await;
    assert_eq!(s, StatusCode::OK, "{log}");
    let entries = log["data"].as_array().unwrap();
    let actions: Vec<&str> = entries
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        [
            "member.removed",
            "member.added",
            "invitation.accepted",
            "invitation.created",
            "member.role_changed",
            "role.created",
            "member.added",
            "invitation.accepted",
            "invitation.created",
            "org.created",
        ],
        "newest first"
    );
    // Newest first by time as well.
    let times: Vec<chrono::DateTime<chrono::FixedOffset>> = entries
        .iter()
        .map(|e| chrono::DateTime::parse_from_rfc3339(e["created_at"].as_str().unwrap()).unwrap())
        .collect();
    assert!(times.windows(2).all(|w| w[0] >= w[1]), "{times:?}");
    assert!(entries.iter().all(|e| e["request_id"] != "req-failed"));

    let find = |action: &str, request_id: &str| -> &Value {
        entries
            .iter()
            .find(|e| e["action"] == action && e["request_id"] == request_id)
            .unwrap_or_else(|| panic!("no {action} from {request_id}: {log}"))
    };
    let ann_id = json!(ann.id.to_string());
    let bob_id = json!(bob.id.to_string());

    let e = find("org.created", "req-org-created");
    assert_eq!(e["actor_id"], ann_id);
    assert_eq!(e["target_type"], "organization");
    assert_eq!(e["target_id"], org.to_string());
    assert_eq!(e["before"], Value::Null);
    assert_eq!(e["after"]["name"], "Acme");

    let e = find("invitation.created", "req-invite-bob");
    assert_eq!(e["actor_id"], ann_id);
    assert_eq!(e["target_id"], inv["id"]);
    assert_eq!(e["after"]["email"], "bob@example.com");
    assert_eq!(e["after"]["role"], "member");
    assert!(!e.to_string().contains(inv["token"].as_str().unwrap()));

    let e = find("invitation.accepted", "req-bob-accepts");
    assert_eq!(e["actor_id"], bob_id);
    assert_eq!(e["target_id"], inv["id"]);
    let e = find("member.added", "req-bob-accepts");
    assert_eq!(e["actor_id"], bob_id);
    assert_eq!(e["target_id"], bob_id);
    assert_eq!(e["after"]["role"], "member");

    let e = find("role.created", "req-role-created");
    assert_eq!(e["actor_id"], ann_id);
    assert_eq!(e["target_id"], "support");
    assert_eq!(e["after"]["permissions"], json!(["org:read"]));

    let e = find("member.role_changed", "req-role-changed");
    assert_eq!(e["actor_id"], ann_id);
    assert_eq!(e["target_id"], bob_id);
    assert_eq!(e["before"]["role"], "member");
    assert_eq!(e["after"]["role"], "support");

    let e = find("member.removed", "req-bob-removed");
    assert_eq!(e["actor_id"], ann_id);
    assert_eq!(e["target_id"], bob_id);
    assert_eq!(e["before"]["role"], "support");
    assert_eq!(e["after"], Value::Null);

    // Other members' requests carry their own generated ids.
    let carol_entries: Vec<&Value> = entries
        .iter()
        .filter(|e| e["actor_id"] == carol.id.to_string())
        .collect();
    assert_eq!(carol_entries.len(), 2);
    assert!(Uuid::parse_str(carol_entries[0]["request_id"].as_str().unwrap()).is_ok());

    // Viewers do not read the audit log.
    let (s, _) = app
        .get(&format!("/api/v1/orgs/{org}/audit-log"), &carol)
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn the_audit_log_paginates_newest_first() {
    let app = TestApp::spawn().await;
    let ann = app.user("ann@example.com");
    let org = app.create_org(&ann, "Acme").await;
    for i in 0..6 {
        let (s, _) = app
            .patch(
                &format!("/api/v1/orgs/{org}"),
                &ann,
                json!({ "name": format!("Acme {i}") }),
            )
            .await;
        assert_eq!(s, StatusCode::OK);
    }
    let path = format!("/api/v1/orgs/{org}/audit-log");
    let (all, sizes) = walk(&app, &path, &ann, 3).await;
    assert_eq!(sizes, [3, 3, 1]);
    let ids: Vec<&str> = all.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(
        ids.iter().collect::<HashSet<_>>().len(),
        7,
        "no entry twice"
    );
    let (s, one) = app.get(&format!("{path}?limit=200"), &ann).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        one["data"].as_array().unwrap(),
        &all,
        "pages join to the full list"
    );
    assert_eq!(all[6]["action"], "org.created");
    // Newest first: the last rename is first, with its before/after.
    assert_eq!(all[0]["action"], "org.updated");
    assert_eq!(all[0]["before"]["name"], "Acme 4");
    assert_eq!(all[0]["after"]["name"], "Acme 5");
    for (i, e) in all[..6].iter().enumerate() {
        assert_eq!(e["after"]["name"], format!("Acme {}", 5 - i));
    }
}
