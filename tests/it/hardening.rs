//! Round-two hardening, each finding of the outside review as a test that
//! failed before its fix: the account pre-hijack through a second sign-up,
//! reauthentication for sensitive changes, the bounded hashing queue,
//! sessions that end for real, slow clients, sign-in throttling that a
//! stranger cannot turn against the owner, trusted proxies, and verification
//! from the account row.

use crate::common::gotrue::*;
use crate::common::smtp::{Received, SmtpSink};
use crate::common::*;

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use uuid::Uuid;

/// An app that signs tokens, with `extra` settings.
async fn app_with(extra: &[(&str, &str)], pool: u32) -> TestApp {
    let mut vars = vec![
        ("AUTH_KEYS_SECRET", KEYS_SECRET),
        ("AUTH_AUTOCONFIRM", "true"),
    ];
    vars.extend_from_slice(extra);
    TestApp::spawn_with(&vars, pool).await
}

async fn signup_with(app: &TestApp, email: &str, password: &str, data: Value) -> Res {
    auth(
        app,
        Method::POST,
        "/signup",
        None,
        Some(json!({ "email": email, "password": password, "data": data })),
    )
    .await
}

/// A request to `/auth/v1` as a client behind the proxy at 127.0.0.1, which
/// says the client is `client` (`X-Forwarded-For`).
async fn auth_from(app: &TestApp, client: &str, path: &str, body: Value) -> Res {
    let forwarded = [("x-forwarded-for", client)];
    auth_with(app, Method::POST, path, None, Some(body), &forwarded).await
}

async fn login_from(app: &TestApp, client: &str, email: &str, password: &str) -> Res {
    auth_from(
        app,
        client,
        "/token?grant_type=password",
        json!({ "email": email, "password": password }),
    )
    .await
}

/// The token of the `/verify` link in a message.
fn link_token(m: &Received) -> String {
    m.verify_link()
        .query_pairs()
        .find(|(k, _)| k == "token")
        .map(|(_, v)| v.into_owned())
        .expect("a token")
}

fn access_token(r: &Res) -> String {
    r.body["access_token"]
        .as_str()
        .expect("a session")
        .to_owned()
}

fn keys(v: &Value) -> Vec<String> {
    let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
    k.sort();
    k
}

// ------------------------------------------------------------------ 1. pre-hijack

#[tokio::test]
async fn a_second_sign_up_of_an_unconfirmed_address_replaces_the_first_and_voids_its_link() {
    let sink = SmtpSink::start().await;
    let smtp = sink.url();
    let app = app_with(&[("AUTH_AUTOCONFIRM", "false"), ("SMTP_URL", &smtp)], 5).await;
    let worker = app.start_worker();
    let victim = "victim@corp.example";

    // The attacker signs up first, with their password and metadata.
    let first = signup_with(
        &app,
        victim,
        "attacker's password",
        json!({ "name": "Mallory" }),
    )
    .await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.body);
    let first_link = link_token(&sink.wait_for_to(victim, 1).await[0]);

    // The owner signs up the same address, not knowing.
    let second = signup_with(&app, victim, "owner's password", json!({ "name": "Vera" })).await;
    assert_eq!(second.status, StatusCode::OK, "{}", second.body);
    // Nothing of the first sign-up shows: not its metadata, not its id.
    assert_eq!(second.body["user_metadata"], json!({ "name": "Vera" }));
    assert_ne!(second.body["id"], first.body["id"]);
    assert_eq!(keys(&second.body), keys(&first.body));
    let mails = sink.wait_for_to(victim, 2).await;
    let second_link = link_token(&mails[1]);

    // The first link is dead; the second confirms the owner's password.
    assert_error(
        &verify(&app, "signup", &first_link).await,
        403,
        "otp_expired",
    );
    let session = verify(&app, "signup", &second_link).await;
    assert_session(&session, victim);
    assert_eq!(
        session.body["user"]["user_metadata"],
        json!({ "name": "Vera" })
    );
    assert_session(&login(&app, victim, "owner's password").await, victim);
    assert_error(
        &login(&app, victim, "attacker's password").await,
        400,
        "invalid_credentials",
    );

    // Once confirmed, a further sign-up changes nothing and shows nothing.
    let third = signup_with(&app, victim, "attacker's password", json!({ "x": 1 })).await;
    assert_eq!(third.status, StatusCode::OK, "{}", third.body);
    assert_eq!(keys(&third.body), keys(&first.body));
    assert_eq!(third.body["user_metadata"], json!({ "x": 1 }));
    assert!(third.body["email_confirmed_at"].is_null());
    assert_session(&login(&app, victim, "owner's password").await, victim);
    worker.stop().await;
}

#[tokio::test]
async fn sign_up_answers_alike_for_new_unconfirmed_and_confirmed_addresses() {
    let app = app_with(&[("AUTH_AUTOCONFIRM", "false")], 5).await;
    let worker = app.start_worker();
    let answer = |email: &'static str| {
        let app = &app;
        async move {
            let r = signup_with(app, email, PASSWORD, json!({ "plan": "pro" })).await;
            assert_eq!(r.status, StatusCode::OK, "{}", r.body);
            r.body
        }
    };
    // An unconfirmed and a confirmed account exist already.
    answer("unconfirmed@example.com").await;
    answer("confirmed@example.com").await;
    sqlx::query("update app.auth_accounts set email_confirmed_at = now() where email = $1")
        .bind("confirmed@example.com")
        .execute(&app.db.admin)
        .await
        .unwrap();
    let ids: Vec<Uuid> = sqlx::query_scalar("select user_id from app.auth_accounts")
        .fetch_all(&app.db.admin)
        .await
        .unwrap();

    let new = answer("new@example.com").await;
    let unconfirmed = answer("unconfirmed@example.com").await;
    let confirmed = answer("confirmed@example.com").await;
    for body in [&new, &unconfirmed, &confirmed] {
        assert_eq!(keys(body), keys(&new), "{body}");
        assert_eq!(body["user_metadata"], json!({ "plan": "pro" }), "{body}");
        assert!(body["email_confirmed_at"].is_null(), "{body}");
        assert!(body["confirmation_sent_at"].is_string(), "{body}");
        assert_eq!(body["identities"], json!([]), "{body}");
        assert_eq!(body["app_metadata"], new["app_metadata"], "{body}");
        // No stable id: the existing accounts' ids never show.
        let id: Uuid = body["id"].as_str().unwrap().parse().unwrap();
        assert!(!ids.contains(&id), "{body}");
    }
    // Asked twice, an existing address answers a different id each time.
    let again = answer("confirmed@example.com").await;
    assert_ne!(again["id"], confirmed["id"]);
    worker.stop().await;
}

// ------------------------------------------------------------------ reauthentication

#[tokio::test]
async fn password_and_email_changes_need_a_recent_sign_in_or_an_emailed_nonce() {
    let sink = SmtpSink::start().await;
    let smtp = sink.url();
    let app = app_with(&[("SMTP_URL", &smtp)], 5).await;
    let worker = app.start_worker();
    let email = "rita@example.com";
    let s = signup_with(&app, email, PASSWORD, json!({})).await;
    assert_session(&s, email);
    let other = login(&app, email, PASSWORD).await;
    assert_session(&other, email);
    let token = access_token(&s);
    let put = |body: Value| {
        let token = token.clone();
        let app = &app;
        async move { auth(app, Method::PUT, "/user", Some(&token), Some(body)).await }
    };

    // Signed in a moment ago: the change goes through.
    let r = put(json!({ "password": "a fresh passphrase 1" })).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);

    // Eleven minutes later (the default window is ten): a nonce is needed.
    sqlx::query("update app.auth_sessions set created_at = now() - interval '11 minutes'")
        .execute(&app.db.admin)
        .await
        .unwrap();
    let r = put(json!({ "password": "a fresh passphrase 2" })).await;
    assert_error(&r, 400, "reauthentication_needed");
    let r = put(json!({ "email": "rita.new@example.com" })).await;
    assert_error(&r, 400, "reauthentication_needed");
    // Metadata is not sensitive.
    let r = put(json!({ "data": { "theme": "dark" } })).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);

    let r = auth(&app, Method::GET, "/reauthenticate", Some(&token), None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body, json!({}));
    let r = auth(&app, Method::GET, "/reauthenticate", Some(&token), None).await;
    assert_error(&r, 429, "over_email_send_rate_limit");
    let message = &sink.wait_for_to(email, 1).await[0];
    let nonce: String = message
        .subject()
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned();
    assert!(
        nonce.len() == 6 && nonce.bytes().all(|b| b.is_ascii_digit()),
        "{nonce}"
    );
    assert!(message.text_body().unwrap().contains(&nonce));
    // Only its hash is stored.
    let stored: i64 = sqlx::query_scalar(
        "select count(*) from app.auth_one_time_tokens
         where kind = 'reauthentication' and token_hash <> convert_to($1, 'UTF8')",
    )
    .bind(&nonce)
    .fetch_one(&app.db.admin)
    .await
    .unwrap();
    assert_eq!(stored, 1);

    let wrong = if nonce == "000000" {
        "000001"
    } else {
        "000000"
    };
    let r = put(json!({ "password": "a fresh passphrase 2", "nonce": wrong })).await;
    assert_error(&r, 422, "reauthentication_not_valid");
    let r = put(json!({ "password": "a fresh passphrase 2", "nonce": nonce })).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    // Used once.
    let r = put(json!({ "email": "rita.new@example.com", "nonce": nonce })).await;
    assert_error(&r, 422, "reauthentication_not_valid");
    assert_session(&login(&app, email, "a fresh passphrase 2").await, email);
    // The password change ended the other session.
    let r = auth(
        &app,
        Method::GET,
        "/user",
        other.body["access_token"].as_str(),
        None,
    )
    .await;
    assert_error(&r, 403, "session_not_found");
    worker.stop().await;
}

// ------------------------------------------------------------------ 3. hashing queue

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hundred_password_changes_are_refused_fast_and_others_still_sign_in() {
    let app = app_with(&[("AUTH_IP_LIMIT_PER_MIN", "100000")], 8).await;
    let s = signup_with(&app, "flood@example.com", PASSWORD, json!({})).await;
    let token = access_token(&s);
    for i in 0..3 {
        let email = format!("bystander{i}@example.com");
        assert_session(
            &signup_with(&app, &email, PASSWORD, json!({})).await,
            &email,
        );
    }
    let changes: Vec<_> = (0..200)
        .map(|i| {
            let (client, base, token) = (app.client.clone(), app.base.clone(), token.clone());
            tokio::spawn(async move {
                client
                    .put(format!("{base}/auth/v1/user"))
                    .header("apikey", anon_key())
                    .bearer_auth(token)
                    .json(&json!({ "password": format!("flooding passphrase {i}") }))
                    .send()
                    .await
                    .unwrap()
            })
        })
        .collect();
    let sign_ins: Vec<_> = (0..3)
        .map(|i| {
            let (client, base) = (app.client.clone(), app.base.clone());
            tokio::spawn(async move {
                client
                    .post(format!("{base}/auth/v1/token?grant_type=password"))
                    .header("apikey", anon_key())
                    .json(&json!({ "email": format!("bystander{i}@example.com"), "password": PASSWORD }))
                    .send()
                    .await
                    .unwrap()
                    .status()
            })
        })
        .collect();
    let mut ok = 0;
    let mut limited = 0;
    for c in changes {
        let res = c.await.unwrap();
        match res.status() {
            StatusCode::OK => ok += 1,
            StatusCode::TOO_MANY_REQUESTS => {
                assert!(res.headers().contains_key("retry-after"));
                limited += 1;
            }
            other => panic!("unexpected {other}: {}", res.text().await.unwrap()),
        }
    }
    // Five changes per user in ten minutes; the rest refused before any hashing.
    assert_eq!((ok, limited), (5, 195));
    for s in sign_ins {
        assert_eq!(s.await.unwrap(), StatusCode::OK);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn past_the_hashing_queue_sign_ins_get_busy_at_once_not_a_hang() {
    let app = app_with(
        &[
            ("AUTH_IP_LIMIT_PER_MIN", "100000"),
            ("AUTH_HASH_QUEUE", "1"),
        ],
        8,
    )
    .await;
    let email = "queue@example.com";
    assert_session(&signup_with(&app, email, PASSWORD, json!({})).await, email);
    let tries: Vec<_> = (0..24)
        .map(|i| {
            let (client, base) = (app.client.clone(), app.base.clone());
            tokio::spawn(async move {
                // Unknown addresses: each costs one (dummy) hash.
                let res = client
                    .post(format!("{base}/auth/v1/token?grant_type=password"))
                    .header("apikey", anon_key())
                    .json(
                        &json!({ "email": format!("nobody{i}@example.com"), "password": PASSWORD }),
                    )
                    .send()
                    .await
                    .unwrap();
                let status = res.status();
                let retry = res.headers().get("retry-after").cloned();
                let body: Value = res.json().await.unwrap();
                (status, retry, body)
            })
        })
        .collect();
    let mut busy = 0;
    for t in tries {
        let (status, retry, body) = t.await.unwrap();
        match status.as_u16() {
            400 => assert_eq!(body["code"], "invalid_credentials", "{body}"),
            503 => {
                assert_eq!(body["code"], "busy", "{body}");
                assert!(retry.is_some());
                busy += 1;
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert!(
        busy > 0,
        "24 hashes at once with a queue of one: some are refused"
    );
    // The flood is over: sign-in works again.
    assert_session(&login(&app, email, PASSWORD).await, email);
}

// ------------------------------------------------------------------ 4. ended sessions

/// A `tenantry serve` process on `db`, sharing the Redis prefix `prefix`.
struct Server {
    child: std::process::Child,
    base: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start_server(db: &TestDb, prefix: &str, redis_url: &str) -> Server {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_tenantry"))
        .arg("serve")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("DATABASE_URL", &db.app_url)
        .env("JWT_SECRET", SECRET)
        .env("AUTH_KEYS_SECRET", KEYS_SECRET)
        .env("AUTH_AUTOCONFIRM", "true")
        .env("REDIS_URL", redis_url)
        .env("CACHE_PREFIX", prefix)
        .env("JOBS_PREFIX", prefix)
        .env("BIND_ADDR", format!("127.0.0.1:{port}"))
        .env("LOG_FORMAT", "json")
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    eventually(30, "the server to be ready", || async {
        let r = client.get(format!("{base}/readyz")).send().await.ok()?;
        (r.status() == StatusCode::OK).then_some(())
    })
    .await;
    Server { child, base }
}

async fn me_status(client: &reqwest::Client, server: &Server, token: &str) -> (StatusCode, Value) {
    let res = client
        .get(format!("{}/api/v1/me", server.base))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let status = res.status();
    (status, res.json().await.unwrap_or(Value::Null))
}

async fn gotrue(
    client: &reqwest::Client,
    server: &Server,
    method: Method,
    path: &str,
    bearer: Option<&str>,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut req = client
        .request(method, format!("{}/auth/v1{path}", server.base))
        .header("apikey", anon_key());
    if let Some(t) = bearer {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let res = req.send().await.unwrap();
    let status = res.status();
    (status, res.json().await.unwrap_or(Value::Null))
}

/// Waits (up to the two seconds the issue allows) until both replicas refuse
/// `token` with 401 `session_ended`.
async fn refused_everywhere(
    client: &reqwest::Client,
    servers: &[&Server],
    token: &str,
    what: &str,
) {
    for server in servers {
        let (status, body) = eventually(2, what, || async {
            let (status, body) = me_status(client, server, token).await;
            (status != StatusCode::OK).then_some((status, body))
        })
        .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{what}: {body}");
        assert_eq!(body["code"], "session_ended", "{what}: {body}");
    }
}

#[tokio::test]
async fn ended_sessions_are_refused_on_the_api_by_every_replica() {
    let db = TestDb::new().await;
    let prefix = format!("test-{}", Uuid::new_v4().simple());
    let redis = std::env::var("TEST_REDIS_URL").unwrap_or("redis://127.0.0.1:6379/0".into());
    // One replica hears of ended sessions through Redis; the other's Redis is
    // unreachable, so it reads them from Postgres every second.
    let a = start_server(&db, &prefix, &redis).await;
    let b = start_server(&db, &prefix, "redis://127.0.0.1:1/0").await;
    let client = reqwest::Client::new();
    let email = "sam@example.com";
    let (status, body) = gotrue(
        &client,
        &a,
        Method::POST,
        "/signup",
        None,
        Some(json!({ "email": email, "password": PASSWORD })),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let first = body["access_token"].as_str().unwrap().to_owned();
    let user_id: Uuid = body["user"]["id"].as_str().unwrap().parse().unwrap();
    let mut tokens = vec![first];
    for _ in 0..2 {
        let (status, body) = gotrue(
            &client,
            &a,
            Method::POST,
            "/token?grant_type=password",
            None,
            Some(json!({ "email": email, "password": PASSWORD })),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        tokens.push(body["access_token"].as_str().unwrap().to_owned());
    }
    for t in &tokens {
        assert_eq!(me_status(&client, &a, t).await.0, StatusCode::OK);
        assert_eq!(me_status(&client, &b, t).await.0, StatusCode::OK);
    }
    // A Supabase-style token of the same user is not Tenantry's session: unaffected.
    let external = token_for(user_id, email);

    // Sign-out of one session (on replica a).
    let (status, _) = gotrue(&client, &a, Method::POST, "/logout", Some(&tokens[0]), None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    refused_everywhere(&client, &[&a, &b], &tokens[0], "signed out").await;
    assert_eq!(me_status(&client, &b, &tokens[1]).await.0, StatusCode::OK);

    // A password change (on replica b) ends the others, not its own.
    let (status, body) = gotrue(
        &client,
        &b,
        Method::PUT,
        "/user",
        Some(&tokens[1]),
        Some(json!({ "password": "another good passphrase" })),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    refused_everywhere(&client, &[&a, &b], &tokens[2], "password changed").await;
    assert_eq!(me_status(&client, &a, &tokens[1]).await.0, StatusCode::OK);

    // A ban ends the rest.
    let (status, body) = gotrue(
        &client,
        &a,
        Method::PUT,
        &format!("/admin/users/{user_id}"),
        Some(&service_key()),
        Some(json!({ "ban_duration": "24h" })),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    refused_everywhere(&client, &[&a, &b], &tokens[1], "banned").await;
    assert_eq!(me_status(&client, &a, &external).await.0, StatusCode::OK);

    // A replica started later knows them all at once.
    let c = start_server(&db, &prefix, &redis).await;
    for t in &tokens {
        let (status, body) = me_status(&client, &c, t).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    }
}

// ------------------------------------------------------------------ 7. ban after logout

#[tokio::test]
async fn sign_out_everywhere_then_a_ban_never_confuses_a_pooled_connection() {
    // A pool of one: every statement of every request meets the same
    // connection and its prepared statements (the intermittent 500 was a
    // statement prepared with two parameters for SQL that uses one).
    let app = app_with(&[("AUTH_IP_LIMIT_PER_MIN", "100000")], 1).await;
    for round in 0..15 {
        let email = format!("round{round}@example.com");
        let s = signup_with(&app, &email, PASSWORD, json!({})).await;
        assert_session(&s, &email);
        let user_id = s.body["user"]["id"].as_str().unwrap().to_owned();
        let a = login(&app, &email, PASSWORD).await;
        let b = login(&app, &email, PASSWORD).await;
        let r = auth(
            &app,
            Method::POST,
            "/logout",
            a.body["access_token"].as_str(),
            None,
        )
        .await;
        assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
        let r = auth(
            &app,
            Method::POST,
            "/logout?scope=global",
            b.body["access_token"].as_str(),
            None,
        )
        .await;
        assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
        let c = login(&app, &email, PASSWORD).await;
        let r = auth(
            &app,
            Method::PUT,
            "/user",
            c.body["access_token"].as_str(),
            Some(json!({ "password": format!("new passphrase {round}") })),
        )
        .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        let r = app
            .client
            .put(format!("{}/auth/v1/admin/users/{user_id}", app.base))
            .bearer_auth(service_key())
            .json(&json!({ "ban_duration": "1h" }))
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.status(),
            StatusCode::OK,
            "round {round}: {}",
            r.text().await.unwrap()
        );
    }
}

// ------------------------------------------------------------------ 2. slow clients

/// Opens a connection and sends a request's head and the first byte of its
/// body, then nothing more.
async fn trickle(app: &TestApp, path: &str, token: &str, body: &str) -> tokio::net::TcpStream {
    let mut stream = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    let head = format!(
        "PATCH {path} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {token}\r\n\
         content-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&body.as_bytes()[..1]).await.unwrap();
    stream
}

#[tokio::test]
async fn slow_bodies_hold_no_database_connection_and_end_in_408() {
    // Two connections in the pool; six requests trickle their bodies.
    let app = app_with(
        &[
            ("BODY_READ_TIMEOUT_SECS", "3"),
            ("AUTH_IP_LIMIT_PER_MIN", "100000"),
        ],
        2,
    )
    .await;
    let slow = app.user("slow@example.com");
    let org = app.create_org(&slow, "Slow Org").await;
    let body = r#"{"name":"Renamed"}"#;
    let mut streams = Vec::new();
    for _ in 0..6 {
        streams.push(trickle(&app, &format!("/api/v1/orgs/{org}"), &slow.token, body).await);
    }
    // Meanwhile another user's reads and a password sign-in answer.
    let other = app.user("other@example.com");
    let email = "signin@example.com";
    assert_session(&signup_with(&app, email, PASSWORD, json!({})).await, email);
    for _ in 0..5 {
        let (status, body) = app.get("/api/v1/me", &other).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    assert_session(&login(&app, email, PASSWORD).await, email);
    // The slow ones are cut: 408 with a problem body.
    for mut s in streams {
        let mut response = String::new();
        s.read_to_string(&mut response).await.unwrap();
        assert!(response.starts_with("HTTP/1.1 408"), "{response}");
        assert!(response.contains("application/problem+json"), "{response}");
        assert!(response.contains("\"code\":\"body_timeout\""), "{response}");
    }
    // And nothing changed.
    let (_, org_body) = app.get(&format!("/api/v1/orgs/{org}"), &slow).await;
    assert_eq!(org_body["name"], "Slow Org");
}

#[tokio::test]
async fn slow_headers_lose_their_connection() {
    let app = app_with(&[("HEADER_READ_TIMEOUT_SECS", "1")], 2).await;
    let mut stream = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    stream
        .write_all(b"GET /api/v1/me HTTP/1.1\r\nhost: x\r\n")
        .await
        .unwrap();
    // The head never ends: the server closes the connection.
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "the connection stayed open");
    // A complete request on a fresh connection is served.
    let (status, _) = app.get("/api/v1/me", &app.user("x@example.com")).await;
    assert_eq!(status, StatusCode::OK);
}

// ------------------------------------------------------------------ 5. throttling

/// A server that takes the client address from `X-Forwarded-For` (the
/// tests' requests come through 127.0.0.1, a trusted proxy), with the per-IP
/// limit lifted so that only the per-address limits are in play.
async fn app_behind_trusted_proxy() -> TestApp {
    app_with(
        &[
            ("TRUSTED_PROXIES", "127.0.0.1/32"),
            ("AUTH_IP_LIMIT_PER_MIN", "100000"),
        ],
        5,
    )
    .await
}

#[tokio::test]
async fn a_strangers_wrong_passwords_do_not_lock_the_owner_out() {
    let app = app_behind_trusted_proxy().await;
    let email = "owner@example.com";
    assert_session(&signup_with(&app, email, PASSWORD, json!({})).await, email);
    let attacker = "203.0.113.66";
    for _ in 0..10 {
        let r = login_from(&app, attacker, email, "guessing wrong").await;
        assert_error(&r, 400, "invalid_credentials");
    }
    // The attacker is slowed down, even with the right password.
    assert_error(
        &login_from(&app, attacker, email, PASSWORD).await,
        429,
        "over_request_rate_limit",
    );
    // The owner, elsewhere, signs in.
    assert_session(
        &login_from(&app, "198.51.100.7", email, PASSWORD).await,
        email,
    );

    // IPv6: one /64 is one client.
    for _ in 0..10 {
        let r = login_from(&app, "2001:db8:1:2::1", email, "guessing wrong").await;
        assert_error(&r, 400, "invalid_credentials");
    }
    let r = login_from(&app, "2001:db8:1:2:ffff::9", email, PASSWORD).await;
    assert_error(&r, 429, "over_request_rate_limit");
    assert_session(
        &login_from(&app, "2001:db8:1:3::1", email, PASSWORD).await,
        email,
    );

    // Recovery: the stranger's requests do not use up the owner's.
    for _ in 0..5 {
        let r = auth_from(&app, attacker, "/recover", json!({ "email": email })).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    }
    let r = auth_from(&app, attacker, "/recover", json!({ "email": email })).await;
    assert_error(&r, 429, "over_request_rate_limit");
    let r = auth_from(&app, "198.51.100.7", "/recover", json!({ "email": email })).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
}

#[tokio::test]
async fn guessing_spread_over_many_clients_meets_the_per_address_ceiling() {
    let app = app_behind_trusted_proxy().await;
    let email = "target@example.com";
    assert_session(&signup_with(&app, email, PASSWORD, json!({})).await, email);
    // 100 failures from 20 clients, 5 each (under each client's own limit).
    for i in 0..100 {
        let client = format!("192.0.2.{}", i % 20);
        let r = login_from(&app, &client, email, "guessing wrong").await;
        assert_error(&r, 400, "invalid_credentials");
    }
    // The address is under attack: a client that has been failing waits...
    let r = login_from(&app, "192.0.2.3", email, PASSWORD).await;
    assert_error(&r, 429, "over_request_rate_limit");
    // ...while one that has not signs in with the right password.
    assert_session(
        &login_from(&app, "198.51.100.20", email, PASSWORD).await,
        email,
    );
}

#[tokio::test]
async fn forwarded_addresses_count_only_behind_a_trusted_proxy() {
    // No TRUSTED_PROXIES: X-Forwarded-For is the client's to forge and is ignored.
    let app = app_with(&[("AUTH_IP_LIMIT_PER_MIN", "100000")], 5).await;
    let email = "forge@example.com";
    assert_session(&signup_with(&app, email, PASSWORD, json!({})).await, email);
    for i in 0..10 {
        let r = login_from(&app, &format!("203.0.113.{i}"), email, "guessing wrong").await;
        assert_error(&r, 400, "invalid_credentials");
    }
    let r = login_from(&app, "203.0.113.200", email, PASSWORD).await;
    assert_error(&r, 429, "over_request_rate_limit");
    // Sessions record the client: the peer, not the forged header.
    let ip: Option<String> = sqlx::query_scalar("select ip from app.auth_sessions limit 1")
        .fetch_one(&app.db.admin)
        .await
        .unwrap();
    assert_eq!(ip.as_deref(), Some("127.0.0.1"));
}

#[tokio::test]
async fn with_redis_down_sign_ins_work_and_are_still_limited_in_process() {
    let app = app_with(&[("REDIS_URL", "redis://127.0.0.1:1/0")], 5).await;
    let email = "offline@example.com";
    assert_session(&signup_with(&app, email, PASSWORD, json!({})).await, email);
    assert_session(&login(&app, email, PASSWORD).await, email);
    for _ in 0..10 {
        assert_error(
            &login(&app, email, "guessing wrong").await,
            400,
            "invalid_credentials",
        );
    }
    assert_error(
        &login(&app, email, PASSWORD).await,
        429,
        "over_request_rate_limit",
    );
}

// ------------------------------------------------------------------ 5. verification

#[tokio::test]
async fn own_users_are_verified_by_their_account_not_by_an_old_token() {
    let app = app_with(&[], 5).await;
    let owner = app.user("boss@example.com");
    let org = app.create_org(&owner, "Acme").await;
    let s = signup_with(&app, "old@example.com", PASSWORD, json!({})).await;
    let old_token = access_token(&s);
    let (status, inv) = app
        .post(
            &format!("/api/v1/orgs/{org}/invitations"),
            &owner,
            json!({ "email": "old@example.com", "role": "member" }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{inv}");
    // The user moves to another address; the old token still names the old one.
    let r = auth(
        &app,
        Method::PUT,
        "/user",
        Some(&old_token),
        Some(json!({ "email": "new@example.com" })),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let res = app
        .client
        .post(format!("{}/api/v1/invitations/accept", app.base))
        .bearer_auth(&old_token)
        .json(&json!({ "token": inv["token"] }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["code"], "email_mismatch", "{body}");
    // The profile keeps the account's address, whatever the old token says.
    let me = app
        .client
        .get(format!("{}/api/v1/me", app.base))
        .bearer_auth(&old_token)
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    assert_eq!(me["email"], "new@example.com", "{me}");
}

#[tokio::test]
async fn an_explicit_verified_claim_can_be_required_of_other_issuers() {
    let app = TestApp::spawn_with(&[("JWT_REQUIRE_EMAIL_VERIFIED", "true")], 5).await;
    let owner = app.user("boss@example.com");
    let org = app.create_org(&owner, "Acme").await;
    let invite = |email: &'static str| {
        let (app, owner) = (&app, &owner);
        async move {
            let (status, inv) = app
                .post(
                    &format!("/api/v1/orgs/{org}/invitations"),
                    owner,
                    json!({ "email": email, "role": "member" }),
                )
                .await;
            assert_eq!(status, StatusCode::CREATED, "{inv}");
            inv["token"].clone()
        }
    };
    let accept = |claims: Value, token: Value| {
        let app = &app;
        async move {
            let res = app
                .client
                .post(format!("{}/api/v1/invitations/accept", app.base))
                .bearer_auth(sign_hs256(&claims))
                .json(&json!({ "token": token }))
                .send()
                .await
                .unwrap();
            let status = res.status();
            (status, res.json::<Value>().await.unwrap())
        }
    };
    // No claim (Supabase's default shape): not verified under this setting.
    let id = Uuid::new_v4();
    let inv = invite("ann@example.com").await;
    let (status, body) = accept(claims_for(id, "ann@example.com"), inv.clone()).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    // Only in user_metadata (the user's to write): still not.
    let mut meta = claims_for(id, "ann@example.com");
    meta["user_metadata"] = json!({ "email_verified": true });
    let (status, body) = accept(meta, inv.clone()).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    // A top-level claim: accepted.
    let mut top = claims_for(id, "ann@example.com");
    top["email_verified"] = json!(true);
    let (status, body) = accept(top, inv).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

// ------------------------------------------------------------------ 5. job errors, metrics

#[tokio::test]
async fn members_see_a_code_and_a_safe_message_when_a_job_fails_inside() {
    let app = TestApp::spawn().await;
    let owner = app.user("owner@example.com");
    let org = app.create_org(&owner, "Acme").await;
    let (status, body) = app
        .post(
            &format!("/api/v1/orgs/{org}/reports"),
            &owner,
            json!({ "kind": "audit_log", "format": "csv" }),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    // An internal failure: the report's query is refused by the database.
    sqlx::query("revoke select on audit_log from tenantry_app")
        .execute(&app.db.admin)
        .await
        .unwrap();
    let worker = app.start_worker();
    let path = format!(
        "/api/v1/orgs/{org}/reports/{}",
        body["id"].as_str().unwrap()
    );
    let record = eventually(30, "the failed attempt", || async {
        let (_, body) = app.get(&path, &owner).await;
        body["error"].is_string().then_some(body)
    })
    .await;
    assert_eq!(record["error_code"], "internal_error", "{record}");
    let error = record["error"].as_str().unwrap();
    assert!(
        error.contains("will be retried") || error.contains("gave up"),
        "{record}"
    );
    for internal in ["permission denied", "audit_log", "database", "sqlx"] {
        assert!(!error.contains(internal), "{record}");
    }
    worker.stop().await;
}

#[tokio::test]
async fn metrics_are_closed_by_default_outside_dev_and_served_apart_when_asked() {
    let app = TestApp::spawn().await;
    let res = app
        .client
        .get(format!("{}/metrics", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["code"], "metrics_disabled", "{body}");

    // METRICS_ADDR: only there, and not on the API's listener.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let db = TestDb::new().await;
    let server = {
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_tenantry"))
            .arg("serve")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("DATABASE_URL", &db.app_url)
            .env("JWT_SECRET", SECRET)
            .env("BIND_ADDR", "127.0.0.1:0")
            .env("METRICS_ADDR", format!("127.0.0.1:{port}"))
            .env("LOG_FORMAT", "json")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        Server {
            child,
            base: format!("http://127.0.0.1:{port}"),
        }
    };
    let text = eventually(30, "the metrics listener", || async {
        let r = reqwest::get(format!("{}/metrics", server.base))
            .await
            .ok()?;
        (r.status() == StatusCode::OK).then_some(())?;
        r.text().await.ok()
    })
    .await;
    assert!(text.contains("tenantry_jobs_outbox"), "{text}");
}
