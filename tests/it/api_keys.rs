//! Org-scoped API keys end to end over HTTP: creation rules, authentication
//! through the same RBAC and RLS as members, revocation, expiry, the audit
//! log, and the routes that need a user.

use crate::common::*;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use uuid::Uuid;

/// An org owned by `owner`, with `admin` as admin.
async fn org_with_admin(app: &TestApp) -> (Uuid, TestUser, TestUser) {
    let owner = app.user(&format!("owner-{}@example.com", Uuid::new_v4().simple()));
    let admin = app.user(&format!("admin-{}@example.com", Uuid::new_v4().simple()));
    let org = app.create_org(&owner, "Acme").await;
    app.add_member(org, &owner, &admin, "admin").await;
    (org, owner, admin)
}

/// Creates a key as `user`; returns (id, key, body).
async fn create_key(
    app: &TestApp,
    org: Uuid,
    user: &TestUser,
    role: &str,
) -> (Uuid, String, Value) {
    let (s, body) = app
        .post(
            &format!("/api/v1/orgs/{org}/api-keys"),
            user,
            json!({ "name": format!("{role} key"), "role": role }),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "create key: {body}");
    (
        body["id"].as_str().unwrap().parse().unwrap(),
        body["key"].as_str().unwrap().to_owned(),
        body,
    )
}

async fn with_key(
    app: &TestApp,
    method: Method,
    path: &str,
    key: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    app.call(method, path, Some(key), body).await
}

async fn audit_actions(app: &TestApp, org: Uuid, owner: &TestUser) -> Vec<Value> {
    let (s, log) = app
        .get(&format!("/api/v1/orgs/{org}/audit-log?limit=200"), owner)
        .await;
    assert_eq!(s, StatusCode::OK, "{log}");
    log["data"].as_array().unwrap().clone()
}

#[tokio::test]
async fn a_key_works_in_its_org_until_revoked_and_is_audited() {
    let app = TestApp::spawn().await;
    let (org, owner, admin) = org_with_admin(&app).await;
    let members = format!("/api/v1/orgs/{org}/members");
    // Fill the member-list cache as a user first: keys must not be served from it.
    assert_eq!(app.get(&members, &owner).await.0, StatusCode::OK);

    let (id, key, created) = create_key(&app, org, &admin, "member").await;
    assert_eq!(key.len(), 80, "{key}");
    assert!(key.starts_with("tnt_"));
    assert!(key.ends_with(&org.simple().to_string()));
    assert_eq!(created["prefix"], json!(&key[..12]));
    assert_eq!(created["role"], "member");
    assert!(created["expires_at"].is_null());

    // A member key reads members...
    let (s, body) = with_key(&app, Method::GET, &members, &key, None).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(body["data"].as_array().unwrap().len(), 2, "{body}");
    // ... but cannot do what a member cannot.
    let (s, body) = with_key(
        &app,
        Method::PATCH,
        &format!("/api/v1/orgs/{org}"),
        &key,
        Some(json!({ "name": "Renamed" })),
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["code"], "permission_denied");

    // Listing never shows the secret; it shows the prefix and, soon, the use.
    let list_path = format!("/api/v1/orgs/{org}/api-keys");
    let listed = eventually(5, "last_used_at", || async {
        let (s, body) = app.get(&list_path, &admin).await;
        assert_eq!(s, StatusCode::OK, "{body}");
        let row = body["data"][0].clone();
        (!row["last_used_at"].is_null()).then_some(body)
    })
    .await;
    let text = listed.to_string();
    assert!(
        !text.contains(&key[12..]),
        "listing leaks the secret: {text}"
    );
    let row = &listed["data"][0];
    assert_eq!(row["id"], json!(id));
    assert_eq!(row["prefix"], json!(&key[..12]));
    assert_eq!(row["name"], "member key");
    assert_eq!(row["created_by"], json!(admin.id));
    assert!(
        row.get("key").is_none() && row.get("secret_hash").is_none(),
        "{row}"
    );
    assert!(row["revoked_at"].is_null());
    // Only the hash is stored.
    let stored: Vec<u8> = sqlx::query_scalar("select secret_hash from api_keys where id = $1")
        .bind(id)
        .fetch_one(&app.db.admin)
        .await
        .unwrap();
    assert_eq!(stored, tenantry::auth::api_key::hash(&key).to_vec());

    // Revoked: 401 at once; revoking again is a no-op; unknown ids are 404.
    let key_path = format!("/api/v1/orgs/{org}/api-keys/{id}");
    assert_eq!(
        app.delete(&key_path, &admin).await.0,
        StatusCode::NO_CONTENT
    );
    let (s, body) = with_key(&app, Method::GET, &members, &key, None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(body["code"], "invalid_api_key");
    assert_eq!(
        app.delete(&key_path, &admin).await.0,
        StatusCode::NO_CONTENT
    );
    let (s, _) = app
        .delete(
            &format!("/api/v1/orgs/{org}/api-keys/{}", Uuid::now_v7()),
            &admin,
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (_, body) = app.get(&list_path, &admin).await;
    assert!(!body["data"][0]["revoked_at"].is_null(), "{body}");

    // The audit log has one row for the creation and one for the revocation.
    let log = audit_actions(&app, org, &owner).await;
    let of = |action: &str| {
        log.iter()
            .filter(|e| e["action"] == action && e["target_id"] == json!(id.to_string()))
            .count()
    };
    assert_eq!(of("api_key.created"), 1, "{log:?}");
    assert_eq!(of("api_key.revoked"), 1, "{log:?}");
    let created_row = log
        .iter()
        .find(|e| e["action"] == "api_key.created")
        .unwrap();
    assert_eq!(created_row["actor_id"], json!(admin.id));
    assert_eq!(created_row["target_type"], "api_key");
    assert!(!created_row.to_string().contains(&key[12..]));
}

#[tokio::test]
async fn roles_permissions_and_key_denied_actions() {
    let app = TestApp::spawn().await;
    // More seats than the free plan's default allows.
    app.unlimited_seats().await;
    let (org, owner, admin) = org_with_admin(&app).await;

    // A viewer key reads but cannot manage.
    let (_, viewer_key, _) = create_key(&app, org, &admin, "viewer").await;
    let (s, _) = with_key(
        &app,
        Method::GET,
        &format!("/api/v1/orgs/{org}"),
        &viewer_key,
        None,
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let (s, body) = with_key(
        &app,
        Method::PATCH,
        &format!("/api/v1/orgs/{org}/members/{}", admin.id),
        &viewer_key,
        Some(json!({ "role": "viewer" })),
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(
        app.stored_role(org, admin.id).await.as_deref(),
        Some("admin")
    );

    // An admin key changes the org (through the org lock), audited as the key.
    let (admin_key_id, admin_key, _) = create_key(&app, org, &admin, "admin").await;
    let (s, body) = with_key(
        &app,
        Method::PATCH,
        &format!("/api/v1/orgs/{org}"),
        &admin_key,
        Some(json!({ "name": "Renamed by a key" })),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let (actor, actor_key): (Option<Uuid>, Option<Uuid>) = sqlx::query_as(
        "select actor_id, actor_api_key_id from audit_log where org_id = $1 and action = 'org.updated'",
    )
    .bind(org)
    .fetch_one(&app.db.admin)
    .await
    .unwrap();
    assert_eq!((actor, actor_key), (None, Some(admin_key_id)));

    // ... but never mints keys, invites, or starts jobs run as a user.
    for (path, body) in [
        ("api-keys", json!({ "name": "more", "role": "viewer" })),
        (
            "invitations",
            json!({ "email": "x@example.com", "role": "viewer" }),
        ),
        ("reports", json!({ "kind": "members", "format": "csv" })),
    ] {
        let (s, res) = with_key(
            &app,
            Method::POST,
            &format!("/api/v1/orgs/{org}/{path}"),
            &admin_key,
            Some(body),
        )
        .await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{path}: {res}");
    }

    // No owner keys, not even for owners.
    for user in [&owner, &admin] {
        let (s, body) = app
            .post(
                &format!("/api/v1/orgs/{org}/api-keys"),
                user,
                json!({ "name": "root", "role": "owner" }),
            )
            .await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{body}");
    }

    // Nobody makes a key with permissions they lack.
    for (name, perms) in [
        ("keymaker", json!(["apikeys:manage", "members:read"])),
        ("reader", json!(["members:read"])),
    ] {
        let (s, body) = app
            .post(
                &format!("/api/v1/orgs/{org}/roles"),
                &owner,
                json!({ "name": name, "permissions": perms }),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{body}");
    }
    let keymaker = app.user("keymaker@example.com");
    app.add_member(org, &owner, &keymaker, "keymaker").await;
    for role in ["member", "viewer", "admin"] {
        let (s, body) = app
            .post(
                &format!("/api/v1/orgs/{org}/api-keys"),
                &keymaker,
                json!({ "name": "k", "role": role }),
            )
            .await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{role}: {body}");
    }
    let (_, reader_key, _) = create_key(&app, org, &keymaker, "reader").await;
    let (s, _) = with_key(
        &app,
        Method::GET,
        &format!("/api/v1/orgs/{org}/members"),
        &reader_key,
        None,
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = with_key(
        &app,
        Method::GET,
        &format!("/api/v1/orgs/{org}"),
        &reader_key,
        None,
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN);

    // Bad input is 422: unknown role, empty name, expiry in the past, unknown fields.
    for body in [
        json!({ "name": "k", "role": "nope" }),
        json!({ "name": "  ", "role": "viewer" }),
        json!({ "name": "k", "role": "viewer", "expires_at": "2000-01-01T00:00:00Z" }),
        json!({ "name": "k", "role": "viewer", "secret": "mine" }),
    ] {
        let (s, res) = app
            .post(
                &format!("/api/v1/orgs/{org}/api-keys"),
                &admin,
                body.clone(),
            )
            .await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{body}: {res}");
    }
    // Members without apikeys:manage cannot list keys.
    let member = app.user("member@example.com");
    app.add_member(org, &owner, &member, "member").await;
    let (s, _) = app
        .get(&format!("/api/v1/orgs/{org}/api-keys"), &member)
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn expired_unknown_and_malformed_keys_are_401() {
    let app = TestApp::spawn().await;
    let (org, _owner, admin) = org_with_admin(&app).await;
    let members = format!("/api/v1/orgs/{org}/members");

    // A future expiry works until it passes.
    let later = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    let (s, body) = app
        .post(
            &format!("/api/v1/orgs/{org}/api-keys"),
            &admin,
            json!({ "name": "short", "role": "viewer", "expires_at": later }),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{body}");
    assert!(!body["expires_at"].is_null());
    let (id, key) = (
        body["id"].as_str().unwrap().to_owned(),
        body["key"].as_str().unwrap().to_owned(),
    );
    assert_eq!(
        with_key(&app, Method::GET, &members, &key, None).await.0,
        StatusCode::OK
    );
    sqlx::query("update api_keys set expires_at = now() - interval '1 minute' where id = $1::uuid")
        .bind(&id)
        .execute(&app.db.admin)
        .await
        .unwrap();
    let (s, body) = with_key(&app, Method::GET, &members, &key, None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(body["code"], "invalid_api_key");

    // Garbage, a well-formed unknown key, and a tampered one.
    let (unknown, _, _) = tenantry::auth::api_key::generate(org);
    let mut tampered = key.clone();
    tampered.replace_range(20..21, if &key[20..21] == "A" { "B" } else { "A" });
    for bad in ["tnt_xxx", "tnt_", unknown.as_str(), tampered.as_str()] {
        let (s, body) = with_key(&app, Method::GET, &members, bad, None).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{bad}: {body}");
        assert_eq!(body["code"], "invalid_api_key", "{bad}");
    }
}

#[tokio::test]
async fn keys_are_walled_in_their_org_and_refused_on_user_routes() {
    let app = TestApp::spawn().await;
    let (org_a, _, admin_a) = org_with_admin(&app).await;
    let owner_b = app.user("owner-b@example.com");
    let org_b = app.create_org(&owner_b, "Beta").await;
    let (_, key_b, _) = create_key(&app, org_b, &owner_b, "admin").await;
    let (_, key_a, _) = create_key(&app, org_a, &admin_a, "admin").await;

    // A's key on B's paths: 404, as for a non-member.
    for path in ["", "/members", "/roles", "/audit-log", "/api-keys"] {
        let (s, body) = with_key(
            &app,
            Method::GET,
            &format!("/api/v1/orgs/{org_b}{path}"),
            &key_a,
            None,
        )
        .await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{path}: {body}");
    }
    let (s, _) = with_key(
        &app,
        Method::DELETE,
        &format!("/api/v1/orgs/{org_b}"),
        &key_a,
        None,
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert!(app.org_exists(org_b).await);
    // A's secret claiming org B is just an unknown key of B.
    let forged = format!("{}{}", &key_a[..48], org_b.simple());
    let (s, body) = with_key(
        &app,
        Method::GET,
        &format!("/api/v1/orgs/{org_b}/members"),
        &forged,
        None,
    )
    .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{body}");

    // In the database: a key's context sees its own org's rows only, and
    // another org's key does not open it.
    let hash_a = tenantry::auth::api_key::hash(&key_a);
    let mut tx = app.db.app.begin().await.unwrap();
    let found: Vec<(Uuid,)> = sqlx::query_as("select key_id from app.enter_api_key($1, $2)")
        .bind(org_b)
        .bind(hash_a.as_slice())
        .fetch_all(&mut *tx)
        .await
        .unwrap();
    assert!(found.is_empty());
    tx.rollback().await.unwrap();
    let mut tx = app.db.app.begin().await.unwrap();
    let found: Vec<(Uuid,)> = sqlx::query_as("select key_id from app.enter_api_key($1, $2)")
        .bind(org_a)
        .bind(hash_a.as_slice())
        .fetch_all(&mut *tx)
        .await
        .unwrap();
    assert_eq!(found.len(), 1);
    for table in [
        "organizations",
        "memberships",
        "roles",
        "api_keys",
        "audit_log",
    ] {
        let col = if table == "organizations" {
            "id"
        } else {
            "org_id"
        };
        let foreign: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "select count(*) from {table} where {col} <> $1"
        )))
        .bind(org_a)
        .fetch_one(&mut *tx)
        .await
        .unwrap();
        assert_eq!(foreign, 0, "{table} shows another org's rows");
    }
    tx.rollback().await.unwrap();

    // Routes that need a user refuse keys.
    for (method, path, body) in [
        (Method::GET, "/api/v1/me", None),
        (Method::GET, "/api/v1/me/organizations", None),
        (
            Method::POST,
            "/api/v1/orgs",
            Some(json!({ "name": "By key" })),
        ),
        (
            Method::POST,
            "/api/v1/invitations/accept",
            Some(json!({ "token": "inv_x" })),
        ),
    ] {
        let (s, res) = with_key(&app, method, path, &key_b, body).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{path}: {res}");
    }
}
