//! Tenantry's own signing keys against a real Postgres: the JWKS, tokens
//! signed by the key ring through the verifier, rotation without downtime,
//! pruning, concurrent first starts, and the `admin keys` commands.
use crate::common::*;

use std::process::Command;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use p256::pkcs8::EncodePrivateKey;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tenantry::auth::jwt::{TokenError, Verifier};
use tenantry::auth::keys::{KeyRing, KeyState};
use tenantry::config::Config;
use uuid::Uuid;

/// base64 of 32 bytes: a test-only key-encryption key.
const KEYS_SECRET: &str = "dGVzdC1vbmx5LWF1dGgta2V5cy1zZWNyZXQtMzJieXQ=";
const OTHER_KEYS_SECRET: &str = "b3RoZXItdGVzdC1hdXRoLWtleXMtc2VjcmV0LTMyYnk=";
const ISSUER: &str = "https://tenantry.test/auth/v1";
const JWKS_PATH: &str = "/auth/v1/.well-known/jwks.json";

fn settings() -> Vec<(&'static str, &'static str)> {
    vec![
        ("AUTH_KEYS_SECRET", KEYS_SECRET),
        ("AUTH_ISSUER", ISSUER),
        ("JWT_EXPIRY_SECS", "600"),
    ]
}

async fn spawn() -> TestApp {
    TestApp::spawn_with(&settings(), 5).await
}

fn config_for(db: &TestDb, extra: &[(&str, &str)]) -> Config {
    let mut vars = settings();
    vars.extend_from_slice(extra);
    test_config(&db.app_url, &vars)
}

/// Our claims for a user: Supabase's shape with our issuer.
fn own_claims(id: Uuid, email: &str) -> Value {
    let mut c = claims_for(id, email);
    c["iss"] = json!(ISSUER);
    c
}

fn header_kid(token: &str) -> String {
    jsonwebtoken::decode_header(token).unwrap().kid.unwrap()
}

async fn jwks(app: &TestApp) -> Value {
    let res = app
        .client
        .get(format!("{}{JWKS_PATH}", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(
        res.headers()["cache-control"].to_str().unwrap(),
        "public, max-age=300"
    );
    res.json().await.unwrap()
}

fn kids(set: &Value) -> Vec<String> {
    set["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap().to_owned())
        .collect()
}

/// (kid, state) of every stored key, read as the superuser.
async fn stored(db: &TestDb) -> Vec<(String, String)> {
    sqlx::query_as("select kid, state from app.auth_signing_keys order by created_at, kid")
        .fetch_all(&db.admin)
        .await
        .unwrap()
}

async fn stored_kid(db: &TestDb, state: &str) -> String {
    sqlx::query_scalar("select kid from app.auth_signing_keys where state = $1")
        .bind(state)
        .fetch_one(&db.admin)
        .await
        .unwrap()
}

#[tokio::test]
async fn the_jwks_publishes_the_active_and_next_keys() {
    let app = spawn().await;
    let set = jwks(&app).await;
    let keys = set["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 2, "{set}");
    let active = stored_kid(&app.db, "active").await;
    let next = stored_kid(&app.db, "next").await;
    assert_eq!(kids(&set), vec![active.clone(), next.clone()]);
    for k in keys {
        assert_eq!(k["kty"], "EC");
        assert_eq!(k["crv"], "P-256");
        assert_eq!(k["alg"], "ES256");
        assert_eq!(k["use"], "sig");
        // Exactly the public parameters, and a point on the curve.
        let mut fields: Vec<&str> = k.as_object().unwrap().keys().map(String::as_str).collect();
        fields.sort();
        assert_eq!(fields, ["alg", "crv", "kid", "kty", "use", "x", "y"]);
        let x = URL_SAFE_NO_PAD.decode(k["x"].as_str().unwrap()).unwrap();
        let y = URL_SAFE_NO_PAD.decode(k["y"].as_str().unwrap()).unwrap();
        assert_eq!((x.len(), y.len()), (32, 32));
        let sec1 = [&[4u8][..], &x, &y].concat();
        p256::PublicKey::from_sec1_bytes(&sec1).expect("a P-256 point");
        let kid = URL_SAFE_NO_PAD.decode(k["kid"].as_str().unwrap()).unwrap();
        assert_eq!(kid.len(), 16);
    }

    // The published active key is the one that signs.
    let token = app
        .state
        .keys
        .sign(&own_claims(Uuid::new_v4(), "a@example.com"))
        .unwrap();
    let header = jsonwebtoken::decode_header(&token).unwrap();
    assert_eq!(header.alg, Algorithm::ES256);
    assert_eq!(header.typ.as_deref(), Some("JWT"));
    assert_eq!(header.kid.as_deref(), Some(active.as_str()));
    let k = &keys[0];
    let key = jsonwebtoken::DecodingKey::from_ec_components(
        k["x"].as_str().unwrap(),
        k["y"].as_str().unwrap(),
    )
    .unwrap();
    let mut v = jsonwebtoken::Validation::new(Algorithm::ES256);
    v.set_audience(&["authenticated"]);
    jsonwebtoken::decode::<Value>(&token, &key, &v).expect("verifies with the published key");

    // The route is public and documented.
    let (_, doc) = tenantry::app::api();
    let op = doc.paths.paths[JWKS_PATH].get.as_ref().unwrap();
    assert_eq!(op.tags.as_deref(), Some(&["auth".to_owned()][..]));
    assert!(op.security.is_none());
}

#[tokio::test]
async fn without_a_keys_secret_nothing_is_created_or_signed() {
    let app = TestApp::spawn().await;
    assert_eq!(jwks(&app).await, json!({ "keys": [] }));
    assert!(stored(&app.db).await.is_empty());
    let err = app.state.keys.sign(&json!({})).unwrap_err().to_string();
    assert!(err.contains("AUTH_KEYS_SECRET"), "{err}");
    assert!(!app.state.keys.can_sign());
}

#[tokio::test]
async fn keys_are_invisible_outside_the_key_ring() {
    let app = spawn().await;
    // The app role, as in a tenant transaction: no rows, no writes.
    let mut tx = app.db.app.begin().await.unwrap();
    sqlx::query("select set_config('role', 'tenantry_app', true)")
        .execute(&mut *tx)
        .await
        .unwrap();
    let n: i64 = sqlx::query_scalar("select count(*) from app.auth_signing_keys")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    assert_eq!(n, 0);
    let deleted = sqlx::query("delete from app.auth_signing_keys")
        .execute(&mut *tx)
        .await
        .unwrap()
        .rows_affected();
    assert_eq!(deleted, 0);
    tx.rollback().await.unwrap();
    assert_eq!(stored(&app.db).await.len(), 2);
}

#[tokio::test]
async fn tokens_signed_by_the_key_ring_verify_and_forgeries_do_not() {
    let app = spawn().await;
    let keys = &app.state.keys;
    let verifier = &app.state.verifier;
    let user = app.user("own@example.com");
    let token = keys.sign(&own_claims(user.id, &user.email)).unwrap();
    let claims = verifier.verify(&token).await.expect("our token verifies");
    assert_eq!(claims.sub.as_deref(), Some(user.id.to_string().as_str()));
    // Over HTTP as well, and Supabase's tokens keep working beside ours.
    let (status, body) = app
        .call(reqwest::Method::GET, "/api/v1/me", Some(&token), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["id"], user.id.to_string());
    let (status, _) = app.get("/api/v1/me", &user).await;
    assert_eq!(status, StatusCode::OK);

    let kid = header_kid(&token);
    let now = chrono::Utc::now().timestamp();

    // Our kid, another key.
    let attacker = p256::SecretKey::random(&mut p256::elliptic_curve::rand_core::OsRng);
    let der = attacker.to_pkcs8_der().unwrap();
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some(kid.clone());
    let forged = jsonwebtoken::encode(
        &header,
        &own_claims(user.id, &user.email),
        &EncodingKey::from_ec_der(der.as_bytes()),
    )
    .unwrap();
    assert_eq!(
        verifier.verify(&forged).await.unwrap_err(),
        TokenError::Signature
    );
    let (status, _) = app
        .call(reqwest::Method::GET, "/api/v1/me", Some(&forged), None)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // Expired (beyond the leeway).
    let mut c = own_claims(user.id, &user.email);
    c["iat"] = json!(now - 7200);
    c["exp"] = json!(now - 3600);
    let expired = keys.sign(&c).unwrap();
    assert_eq!(
        verifier.verify(&expired).await.unwrap_err(),
        TokenError::Expired
    );

    // Our key with another issuer, or none.
    let mut c = own_claims(user.id, &user.email);
    c["iss"] = json!("https://elsewhere.test/auth/v1");
    assert_eq!(
        verifier.verify(&keys.sign(&c).unwrap()).await.unwrap_err(),
        TokenError::Issuer
    );
    c.as_object_mut().unwrap().remove("iss");
    assert!(verifier.verify(&keys.sign(&c).unwrap()).await.is_err());

    // Another audience.
    let mut c = own_claims(user.id, &user.email);
    c["aud"] = json!("someone-else");
    assert_eq!(
        verifier.verify(&keys.sign(&c).unwrap()).await.unwrap_err(),
        TokenError::Audience
    );

    // The header's algorithm must be the key's: ES384 naming our kid is refused.
    let parts: Vec<&str> = token.split('.').collect();
    let mut h: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).unwrap()).unwrap();
    h["alg"] = json!("ES384");
    let relabelled = format!(
        "{}.{}.{}",
        URL_SAFE_NO_PAD.encode(h.to_string()),
        parts[1],
        parts[2]
    );
    assert_eq!(
        verifier.verify(&relabelled).await.unwrap_err(),
        TokenError::AlgorithmMismatch
    );

    // An unknown kid.
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some("no-such-kid".into());
    let unknown = jsonwebtoken::encode(
        &header,
        &own_claims(user.id, &user.email),
        &EncodingKey::from_ec_der(der.as_bytes()),
    )
    .unwrap();
    assert_eq!(
        verifier.verify(&unknown).await.unwrap_err(),
        TokenError::UnknownKey
    );

    // A verifier without the ring does not know our keys.
    let plain = Verifier::new(&app.state.config.jwt).unwrap();
    assert_eq!(
        plain.verify(&token).await.unwrap_err(),
        TokenError::UnknownKey
    );
}

#[tokio::test]
async fn rotation_keeps_old_tokens_valid_until_the_retired_key_expires() {
    let app = spawn().await;
    let db = &app.db;
    let config = config_for(db, &[]);
    let keys = &app.state.keys;
    let verifier = &app.state.verifier;
    let user = app.user("rotate@example.com");
    let old_active = stored_kid(db, "active").await;
    let old_next = stored_kid(db, "next").await;
    let before = keys.sign(&own_claims(user.id, &user.email)).unwrap();
    assert_eq!(header_kid(&before), old_active);

    let t0 = chrono::Utc::now();
    let report = KeyRing::rotate(&db.app, &config).await.unwrap();
    assert_eq!(report.retired.as_deref(), Some(old_active.as_str()));
    assert_eq!(report.active, old_next);
    assert!(report.active_published_secs.is_some());
    assert!(report.pruned.is_empty());
    // Retired keys stay published for the token lifetime and the grace.
    let expires = report.retired_expires_at.unwrap();
    let lifetime = (expires - t0).num_seconds();
    assert!((600 + 60..=600 + 120).contains(&lifetime), "{lifetime}");
    assert_eq!(
        report.published,
        vec![old_next.clone(), report.next.clone(), old_active.clone()]
    );
    let states = stored(db).await;
    assert_eq!(states.len(), 3);
    assert!(states.contains(&(old_active.clone(), "retired".into())));
    assert!(states.contains(&(old_next.clone(), "active".into())));
    assert!(states.contains(&(report.next.clone(), "next".into())));

    // Until this process reloads it still signs with the old key, which
    // still verifies everywhere: no token is refused during the switch.
    assert!(verifier.verify(&before).await.is_ok());
    keys.refresh().await.unwrap();

    // The overlap: old (retired), new active and new next are all published.
    let set = jwks(&app).await;
    assert_eq!(
        kids(&set),
        vec![old_next.clone(), report.next.clone(), old_active.clone()]
    );
    assert!(verifier.verify(&before).await.is_ok(), "old tokens verify");
    let after = keys.sign(&own_claims(user.id, &user.email)).unwrap();
    assert_eq!(header_kid(&after), old_next, "the new active key signs");
    assert!(verifier.verify(&after).await.is_ok());
    let (status, _) = app
        .call(reqwest::Method::GET, "/api/v1/me", Some(&before), None)
        .await;
    assert_eq!(status, StatusCode::OK);

    // Nothing to prune before the retired key expires.
    assert!(KeyRing::prune(&db.app).await.unwrap().is_empty());

    // Past its expiry: gone from the JWKS and its tokens refused, even
    // before the row is pruned.
    sqlx::query(
        "update app.auth_signing_keys set expires_at = now() - interval '1 second'
         where state = 'retired'",
    )
    .execute(&db.admin)
    .await
    .unwrap();
    keys.refresh().await.unwrap();
    assert_eq!(
        kids(&jwks(&app).await),
        vec![old_next.clone(), report.next.clone()]
    );
    assert_eq!(
        verifier.verify(&before).await.unwrap_err(),
        TokenError::UnknownKey
    );
    assert_eq!(
        KeyRing::prune(&db.app).await.unwrap(),
        vec![old_active.clone()]
    );
    keys.refresh().await.unwrap();
    assert_eq!(stored(db).await.len(), 2);
    assert_eq!(
        kids(&jwks(&app).await),
        vec![old_next.clone(), report.next.clone()]
    );
    assert_eq!(
        verifier.verify(&before).await.unwrap_err(),
        TokenError::UnknownKey
    );
    assert!(verifier.verify(&after).await.is_ok());
}

#[tokio::test]
async fn a_key_unknown_to_this_process_is_looked_up_once_another_rotated() {
    let app = spawn().await;
    let config = config_for(&app.db, &[]);
    // Another process rotates twice and signs with a key this one has never seen.
    let other = KeyRing::load(&app.db.app, &config).await.unwrap();
    KeyRing::rotate(&app.db.app, &config).await.unwrap();
    let second = KeyRing::rotate(&app.db.app, &config).await.unwrap();
    other.refresh().await.unwrap();
    let user = app.user("other@example.com");
    let token = other.sign(&own_claims(user.id, &user.email)).unwrap();
    assert_eq!(header_kid(&token), second.active);
    assert!(app.state.keys.decoding_key(&second.active).is_none());
    app.state
        .verifier
        .verify(&token)
        .await
        .expect("an unknown kid reloads the keys");
    assert!(app.state.keys.decoding_key(&second.active).is_some());
}

#[tokio::test]
async fn concurrent_first_starts_create_one_active_and_one_next_key() {
    let db = TestDb::with_app_pool_size(10).await;
    let config = config_for(&db, &[]);
    let (a, b, c, d) = tokio::join!(
        KeyRing::load(&db.app, &config),
        KeyRing::load(&db.app, &config),
        KeyRing::load(&db.app, &config),
        KeyRing::load(&db.app, &config),
    );
    let rings = [a.unwrap(), b.unwrap(), c.unwrap(), d.unwrap()];
    let mut states: Vec<String> = stored(&db).await.into_iter().map(|(_, s)| s).collect();
    states.sort();
    assert_eq!(states, ["active", "next"]);
    let active = stored_kid(&db, "active").await;
    for ring in &rings {
        assert_eq!(
            header_kid(&ring.sign(&json!({ "exp": 1 })).unwrap()),
            active
        );
        assert_eq!(ring.jwks()["keys"].as_array().unwrap().len(), 2);
    }
    // Loading again changes nothing.
    KeyRing::load(&db.app, &config).await.unwrap();
    assert_eq!(stored(&db).await.len(), 2);
    let listed = KeyRing::list(&db.app).await.unwrap();
    assert_eq!(listed.len(), 2);
    assert!(
        listed
            .iter()
            .any(|k| k.kid == active && k.state == KeyState::Active)
    );
}

#[tokio::test]
async fn a_wrong_keys_secret_is_a_clear_error_and_changes_nothing() {
    let db = TestDb::new().await;
    KeyRing::load(&db.app, &config_for(&db, &[])).await.unwrap();
    let before = stored(&db).await;
    let wrong = config_for(&db, &[("AUTH_KEYS_SECRET", OTHER_KEYS_SECRET)]);
    let err = format!("{:#}", KeyRing::load(&db.app, &wrong).await.unwrap_err());
    assert!(err.contains("cannot decrypt signing key"), "{err}");
    assert!(err.contains("is AUTH_KEYS_SECRET right?"), "{err}");
    let err = format!("{:#}", KeyRing::rotate(&db.app, &wrong).await.unwrap_err());
    assert!(err.contains("is AUTH_KEYS_SECRET right?"), "{err}");
    assert_eq!(stored(&db).await, before);

    // A row's ciphertext moved to another kid does not open either.
    sqlx::query(
        "update app.auth_signing_keys a set private_key = b.private_key
         from app.auth_signing_keys b
         where a.state = 'active' and b.state = 'next'",
    )
    .execute(&db.admin)
    .await
    .unwrap();
    let err = format!(
        "{:#}",
        KeyRing::load(&db.app, &config_for(&db, &[]))
            .await
            .unwrap_err()
    );
    assert!(err.contains("cannot decrypt signing key"), "{err}");
}

fn tenantry(db: &TestDb) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_tenantry"));
    c.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("DATABASE_URL", &db.app_url)
        .env("JWT_SECRET", SECRET)
        .env("AUTH_KEYS_SECRET", KEYS_SECRET)
        .env("AUTH_ISSUER", ISSUER)
        .env("LOG_FORMAT", "json")
        .env("RUST_LOG", "error");
    c
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test]
async fn admin_keys_commands() {
    let app = spawn().await;
    let db = &app.db;

    // `service` prints a platform key the admin routes accept.
    let service = run(tenantry(db).args(["admin", "keys", "service"]));
    let service = service.trim();
    assert_eq!(service.lines().count(), 1);
    let (status, body) = app
        .call(
            reqwest::Method::GET,
            "/api/v1/admin/jobs",
            Some(service),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let claims = app.state.verifier.verify_service(service).unwrap();
    assert_eq!(claims.role.as_deref(), Some("service_role"));
    let payload: Value = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(service.split('.').nth(1).unwrap())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(payload["iss"], ISSUER);
    assert!(payload.get("sub").is_none() && payload.get("aud").is_none());
    let ten_years = payload["exp"].as_i64().unwrap() - payload["iat"].as_i64().unwrap();
    assert!((3650 * 86400..=3653 * 86400).contains(&ten_years));

    // `anon` is no platform key and no user token.
    let anon = run(tenantry(db).args(["admin", "keys", "anon"]));
    let anon = anon.trim();
    assert!(app.state.verifier.verify_service(anon).is_err());
    let (status, _) = app
        .call(reqwest::Method::GET, "/api/v1/admin/jobs", Some(anon), None)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // `rotate` prints the new active kid and the published ones.
    let old_active = stored_kid(db, "active").await;
    let old_next = stored_kid(db, "next").await;
    let out = run(tenantry(db).args(["admin", "keys", "rotate"]));
    assert!(out.contains(&format!("active {old_next}\n")), "{out}");
    assert!(out.contains(&format!("retired {old_active} ")), "{out}");
    let new_next = stored_kid(db, "next").await;
    assert!(
        out.contains(&format!("published {old_next} {new_next} {old_active}\n")),
        "{out}"
    );

    // `list` shows every key with its state and dates, and nothing private.
    let out = run(tenantry(db).args(["admin", "keys", "list"]));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 4, "{out}");
    for (kid, state) in [
        (&old_active, "retired"),
        (&old_next, "active"),
        (&new_next, "next"),
    ] {
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with(&format!("{kid}\t{state}\t"))),
            "{out}"
        );
    }
    let private: Vec<Vec<u8>> = sqlx::query_scalar("select private_key from app.auth_signing_keys")
        .fetch_all(&db.admin)
        .await
        .unwrap();
    for p in private {
        let b64 = base64::engine::general_purpose::STANDARD.encode(&p);
        assert!(!out.contains(&b64[..16]));
    }
    assert!(!out.contains("\\x"));
}
