//! The GoTrue-compatible auth server under `/auth/v1`, over real HTTP against
//! real Postgres and Redis: the calls `@supabase/supabase-js` makes.

use crate::common::gotrue::*;
use crate::common::smtp::SmtpSink;
use crate::common::*;

use std::time::Duration;

use reqwest::header::CONTENT_TYPE;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// An app that signs tokens, confirming sign-ups at once unless `extra` says otherwise.
async fn app_with(extra: &[(&str, &str)]) -> TestApp {
    let mut vars = vec![
        ("AUTH_KEYS_SECRET", KEYS_SECRET),
        ("AUTH_AUTOCONFIRM", "true"),
    ];
    vars.extend_from_slice(extra);
    TestApp::spawn_with(&vars, 5).await
}

async fn signup(app: &TestApp, email: &str) -> Res {
    auth(
        app,
        Method::POST,
        "/signup",
        None,
        Some(json!({ "email": email, "password": PASSWORD })),
    )
    .await
}

async fn refresh(app: &TestApp, token: &str) -> Res {
    auth(
        app,
        Method::POST,
        "/token?grant_type=refresh_token",
        None,
        Some(json!({ "refresh_token": token })),
    )
    .await
}

fn claims_of(token: &str) -> Value {
    use base64::Engine as _;
    let payload = token.split('.').nth(1).unwrap();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

#[tokio::test]
async fn signup_gives_a_session_whose_token_reads_the_user_and_the_api() {
    let app = app_with(&[]).await;
    let r = signup(&app, "Ann@Example.com").await;
    assert_session(&r, "ann@example.com");
    assert_eq!(
        r.headers
            .get("x-supabase-api-version")
            .and_then(|v| v.to_str().ok()),
        Some("2024-01-01")
    );
    let user = &r.body["user"];
    assert!(user["email_confirmed_at"].is_string(), "{user}");
    assert_eq!(
        user["app_metadata"],
        json!({ "provider": "email", "providers": ["email"] })
    );
    assert_eq!(user["identities"], json!([]));
    assert_eq!(user["is_anonymous"], false);
    assert_eq!(user["phone"], "");

    let token = r.body["access_token"].as_str().unwrap();
    let c = claims_of(token);
    assert_eq!(c["sub"], user["id"]);
    assert_eq!(c["aud"], "authenticated");
    assert_eq!(c["role"], "authenticated");
    assert_eq!(c["aal"], "aal1");
    assert_eq!(c["amr"][0]["method"], "password");
    assert_eq!(c["iss"], app.state.keys.issuer());
    assert!(c["session_id"].is_string());
    assert_eq!(c["is_anonymous"], false);

    let me = auth(&app, Method::GET, "/user", Some(token), None).await;
    assert_eq!(me.status, StatusCode::OK, "{}", me.body);
    assert_eq!(me.body["id"], user["id"]);
    assert_eq!(me.body["email"], "ann@example.com");

    // The same token works on the API.
    let (s, body) = app.call(Method::GET, "/api/v1/me", Some(token), None).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(body["id"], user["id"]);
    assert_eq!(body["email"], "ann@example.com");

    // And a password sign-in gives another session.
    let r = login(&app, "ann@example.com", PASSWORD).await;
    assert_session(&r, "ann@example.com");
    assert!(r.body["user"]["last_sign_in_at"].is_string());
}

#[tokio::test]
async fn signup_of_an_existing_address() {
    let app = app_with(&[]).await;
    assert_session(&signup(&app, "bob@example.com").await, "bob@example.com");
    let r = signup(&app, "BOB@example.com").await;
    assert_error(&r, 422, "user_already_exists");
    // Weak passwords and bad addresses.
    let r = auth(
        &app,
        Method::POST,
        "/signup",
        None,
        Some(json!({ "email": "c@example.com", "password": "short" })),
    )
    .await;
    assert_error(&r, 422, "weak_password");
    assert!(r.body["weak_password"]["reasons"].is_array());
    let r = auth(
        &app,
        Method::POST,
        "/signup",
        None,
        Some(json!({ "email": "not-an-email", "password": PASSWORD })),
    )
    .await;
    assert_error(&r, 400, "validation_failed");
    assert_eq!(app.count("app.auth_accounts").await, 1);
}

#[tokio::test]
async fn without_autoconfirm_an_existing_address_gets_a_lookalike_user() {
    let sink = SmtpSink::start().await;
    let app = TestApp::spawn_with(
        &[
            ("AUTH_KEYS_SECRET", KEYS_SECRET),
            ("AUTH_AUTOCONFIRM", "false"),
            ("SMTP_URL", &sink.url()),
        ],
        5,
    )
    .await;
    let first = signup(&app, "dora@example.com").await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.body);
    // Confirm the account by hand, then sign up again: no enumeration.
    sqlx::query("update app.auth_accounts set email_confirmed_at = now()")
        .execute(&app.db.admin)
        .await
        .unwrap();
    let again = signup(&app, "dora@example.com").await;
    assert_eq!(again.status, StatusCode::OK, "{}", again.body);
    assert_ne!(again.body["id"], first.body["id"]);
    assert_eq!(again.body["email"], "dora@example.com");
    assert!(again.body["access_token"].is_null());
    assert_eq!(app.count("app.auth_accounts").await, 1);
}

#[tokio::test]
async fn without_autoconfirm_sign_in_waits_for_the_emailed_confirmation() {
    let sink = SmtpSink::start().await;
    let app = TestApp::spawn_with(
        &[
            ("AUTH_KEYS_SECRET", KEYS_SECRET),
            ("AUTH_AUTOCONFIRM", "false"),
            ("SMTP_URL", &sink.url()),
            ("AUTH_SITE_URL", "https://app.example.com"),
        ],
        5,
    )
    .await;
    let worker = app.start_worker();
    let r = signup(&app, "eve@example.com").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    // The user, not a session.
    assert!(r.body["access_token"].is_null(), "{}", r.body);
    assert_eq!(r.body["email"], "eve@example.com");
    assert!(r.body["email_confirmed_at"].is_null());
    assert!(r.body["confirmation_sent_at"].is_string());

    let r = login(&app, "eve@example.com", PASSWORD).await;
    assert_error(&r, 400, "email_not_confirmed");
    // A wrong password still says nothing about the account.
    let r = login(&app, "eve@example.com", "wrong password!").await;
    assert_error(&r, 400, "invalid_credentials");

    let mail = sink.wait_for(1, Duration::from_secs(15)).await;
    assert_eq!(mail[0].rcpt_to, vec!["eve@example.com".to_owned()]);
    let text = mail[0].text_body().unwrap();
    assert!(
        text.contains("http://127.0.0.1:8080/auth/v1/verify?token=")
            && text.contains("type=signup"),
        "{text}"
    );
    // Only the hash of the token is stored.
    let stored: i64 = sqlx::query_scalar(
        "select count(*) from app.auth_one_time_tokens
         where kind = 'confirmation' and expires_at > now() + interval '23 hours'",
    )
    .fetch_one(&app.db.admin)
    .await
    .unwrap();
    assert_eq!(stored, 1);
    worker.stop().await;
}

#[tokio::test]
async fn wrong_password_and_unknown_email_are_the_same_answer() {
    let app = app_with(&[]).await;
    assert_session(&signup(&app, "fay@example.com").await, "fay@example.com");
    let wrong = login(&app, "fay@example.com", "not the password").await;
    let unknown = login(&app, "nobody@example.com", "not the password").await;
    assert_error(&wrong, 400, "invalid_credentials");
    assert_eq!(wrong.status, unknown.status);
    assert_eq!(wrong.body, unknown.body);
    assert_eq!(wrong.body["msg"], "Invalid login credentials");
}

#[tokio::test]
async fn an_old_hash_is_replaced_at_sign_in() {
    let app = app_with(&[]).await;
    assert_session(&signup(&app, "gus@example.com").await, "gus@example.com");
    let cheap = tenantry::auth::password::Hasher::new(tenantry::auth::password::PasswordParams {
        m_cost: 8,
        t_cost: 1,
        p_cost: 1,
    })
    .unwrap();
    let old = cheap.hash(PASSWORD).await.unwrap();
    sqlx::query("update app.auth_accounts set encrypted_password = $1")
        .bind(&old)
        .execute(&app.db.admin)
        .await
        .unwrap();
    assert_session(
        &login(&app, "gus@example.com", PASSWORD).await,
        "gus@example.com",
    );
    let now: String = sqlx::query_scalar("select encrypted_password from app.auth_accounts")
        .fetch_one(&app.db.admin)
        .await
        .unwrap();
    assert!(now.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{now}");
}

#[tokio::test]
async fn refresh_rotates_and_a_replay_after_the_interval_revokes_the_session() {
    let app = app_with(&[("AUTH_REFRESH_REUSE_INTERVAL_SECS", "0")]).await;
    let s = signup(&app, "hal@example.com").await;
    assert_session(&s, "hal@example.com");
    let first = s.body["refresh_token"].as_str().unwrap().to_owned();
    let r = refresh(&app, &first).await;
    assert_session(&r, "hal@example.com");
    let second = r.body["refresh_token"].as_str().unwrap().to_owned();
    assert_ne!(first, second);
    // The same session.
    assert_eq!(
        claims_of(r.body["access_token"].as_str().unwrap())["session_id"],
        claims_of(s.body["access_token"].as_str().unwrap())["session_id"]
    );
    // The new token works.
    let r = refresh(&app, &second).await;
    assert_session(&r, "hal@example.com");
    let third = r.body["refresh_token"].as_str().unwrap().to_owned();
    let access = r.body["access_token"].as_str().unwrap().to_owned();

    // Replaying a rotated token: the whole session is revoked.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let r = refresh(&app, &first).await;
    assert_error(&r, 400, "refresh_token_already_used");
    let r = refresh(&app, &third).await;
    assert_error(&r, 400, "session_not_found");
    // Its access tokens no longer read the user.
    let me = auth(&app, Method::GET, "/user", Some(&access), None).await;
    assert_error(&me, 403, "session_not_found");

    let r = refresh(&app, "no-such-token").await;
    assert_error(&r, 400, "refresh_token_not_found");
}

#[tokio::test]
async fn within_the_interval_the_parent_returns_the_same_active_token() {
    let app = app_with(&[]).await;
    let s = signup(&app, "ida@example.com").await;
    let first = s.body["refresh_token"].as_str().unwrap().to_owned();
    let a = refresh(&app, &first).await;
    assert_session(&a, "ida@example.com");
    let b = refresh(&app, &first).await;
    assert_session(&b, "ida@example.com");
    assert_eq!(a.body["refresh_token"], b.body["refresh_token"]);
    // And that token still rotates normally.
    let c = refresh(&app, a.body["refresh_token"].as_str().unwrap()).await;
    assert_session(&c, "ida@example.com");
    assert_ne!(c.body["refresh_token"], a.body["refresh_token"]);
    // Only token hashes are stored.
    let plain: i64 = sqlx::query_scalar(
        "select count(*) from app.auth_refresh_tokens where token_hash = convert_to($1, 'UTF8')",
    )
    .bind(c.body["refresh_token"].as_str().unwrap())
    .fetch_one(&app.db.admin)
    .await
    .unwrap();
    assert_eq!(plain, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_refreshes_of_one_token_yield_one_new_token() {
    let app = app_with(&[]).await;
    let s = signup(&app, "jon@example.com").await;
    let token = s.body["refresh_token"].as_str().unwrap().to_owned();
    let results = futures_util::future::join_all((0..10).map(|_| refresh(&app, &token))).await;
    let mut issued = std::collections::BTreeSet::new();
    for r in &results {
        assert!(
            r.status == StatusCode::OK || r.status.is_client_error(),
            "{}",
            r.body
        );
        if r.status == StatusCode::OK {
            issued.insert(r.body["refresh_token"].as_str().unwrap().to_owned());
        }
    }
    assert_eq!(issued.len(), 1, "{issued:?}");
    assert_eq!(app.count("app.auth_refresh_tokens").await, 2);
}

#[tokio::test]
async fn logout_scopes() {
    let app = app_with(&[]).await;
    let a = signup(&app, "kim@example.com").await;
    let b = login(&app, "kim@example.com", PASSWORD).await;
    let c = login(&app, "kim@example.com", PASSWORD).await;
    let token = |r: &Res| r.body["access_token"].as_str().unwrap().to_owned();
    let rt = |r: &Res| r.body["refresh_token"].as_str().unwrap().to_owned();

    // others: every session but this one.
    let r = auth(
        &app,
        Method::POST,
        "/logout?scope=others",
        Some(&token(&c)),
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert_error(
        &refresh(&app, &rt(&a)).await,
        400,
        "refresh_token_not_found",
    );
    assert_error(
        &refresh(&app, &rt(&b)).await,
        400,
        "refresh_token_not_found",
    );
    let c2 = refresh(&app, &rt(&c)).await;
    assert_session(&c2, "kim@example.com");

    // local: this one.
    let d = login(&app, "kim@example.com", PASSWORD).await;
    let r = auth(&app, Method::POST, "/logout", Some(&token(&d)), None).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert_error(
        &auth(&app, Method::GET, "/user", Some(&token(&d)), None).await,
        403,
        "session_not_found",
    );
    assert_eq!(
        auth(&app, Method::GET, "/user", Some(&token(&c2)), None)
            .await
            .status,
        StatusCode::OK
    );

    // global: all of them.
    let e = login(&app, "kim@example.com", PASSWORD).await;
    let r = auth(
        &app,
        Method::POST,
        "/logout?scope=global",
        Some(&token(&e)),
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert_error(
        &refresh(&app, &rt(&c2)).await,
        400,
        "refresh_token_not_found",
    );
    assert_error(
        &refresh(&app, &rt(&e)).await,
        400,
        "refresh_token_not_found",
    );
    assert_eq!(app.count("app.auth_sessions").await, 0);

    let r = auth(
        &app,
        Method::POST,
        "/logout?scope=everything",
        Some(&token(&e)),
        None,
    )
    .await;
    assert_eq!(r.status.as_u16() / 100, 4);
}

#[tokio::test]
async fn user_without_or_with_a_bad_token() {
    let app = app_with(&[]).await;
    assert_error(
        &auth(&app, Method::GET, "/user", None, None).await,
        401,
        "no_authorization",
    );
    assert_error(
        &auth(&app, Method::GET, "/user", Some("not.a.jwt"), None).await,
        403,
        "bad_jwt",
    );
    // A valid Supabase token of a user this server does not know.
    let stranger = app.user("stranger@example.com");
    assert_error(
        &auth(&app, Method::GET, "/user", Some(&stranger.token), None).await,
        403,
        "user_not_found",
    );
    // An invalid apikey is refused; none at all is fine.
    let r = app
        .client
        .get(format!("{}/auth/v1/settings", app.base))
        .header("apikey", "nonsense")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["code"], "invalid_api_key");
    let r = app
        .client
        .get(format!("{}/auth/v1/settings", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let settings: Value = r.json().await.unwrap();
    assert_eq!(settings["external"]["email"], true);
    assert_eq!(settings["external"]["phone"], false);
    assert_eq!(settings["mailer_autoconfirm"], true);
    assert_eq!(settings["disable_signup"], false);
    let health = auth(&app, Method::GET, "/health", None, None).await;
    assert_eq!(health.body["name"], "GoTrue");
}

#[tokio::test]
async fn update_user_merges_data_and_ignores_app_metadata() {
    let app = app_with(&[]).await;
    let s = signup(&app, "lea@example.com").await;
    let token = s.body["access_token"].as_str().unwrap().to_owned();
    let r = auth(
        &app,
        Method::PUT,
        "/user",
        Some(&token),
        Some(json!({ "data": { "a": 1, "b": 2 } })),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let r = auth(
        &app,
        Method::PUT,
        "/user",
        Some(&token),
        Some(json!({ "data": { "b": null, "c": 3 }, "app_metadata": { "role": "admin" } })),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["user_metadata"], json!({ "a": 1, "c": 3 }));
    assert_eq!(
        r.body["app_metadata"],
        json!({ "provider": "email", "providers": ["email"] })
    );
    let me = auth(&app, Method::GET, "/user", Some(&token), None).await;
    assert_eq!(me.body["user_metadata"], json!({ "a": 1, "c": 3 }));

    // Email change (autoconfirm): the profile follows.
    let r = auth(
        &app,
        Method::PUT,
        "/user",
        Some(&token),
        Some(json!({ "email": "lea2@example.com" })),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["email"], "lea2@example.com");
    let email: Option<String> = sqlx::query_scalar("select email from users")
        .fetch_one(&app.db.admin)
        .await
        .unwrap();
    assert_eq!(email.as_deref(), Some("lea2@example.com"));
    assert_session(
        &login(&app, "lea2@example.com", PASSWORD).await,
        "lea2@example.com",
    );
}

#[tokio::test]
async fn password_change_revokes_the_other_sessions() {
    let app = app_with(&[]).await;
    let a = signup(&app, "max@example.com").await;
    let b = login(&app, "max@example.com", PASSWORD).await;
    let token = a.body["access_token"].as_str().unwrap().to_owned();
    let r = auth(
        &app,
        Method::PUT,
        "/user",
        Some(&token),
        Some(json!({ "password": "short" })),
    )
    .await;
    assert_error(&r, 422, "weak_password");
    let r = auth(
        &app,
        Method::PUT,
        "/user",
        Some(&token),
        Some(json!({ "password": PASSWORD })),
    )
    .await;
    assert_error(&r, 422, "same_password");
    let r = auth(
        &app,
        Method::PUT,
        "/user",
        Some(&token),
        Some(json!({ "password": "a brand new passphrase" })),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    // This session lives on; the other one is gone.
    assert_eq!(
        auth(&app, Method::GET, "/user", Some(&token), None)
            .await
            .status,
        StatusCode::OK
    );
    assert_error(
        &refresh(&app, b.body["refresh_token"].as_str().unwrap()).await,
        400,
        "refresh_token_not_found",
    );
    assert_error(
        &login(&app, "max@example.com", PASSWORD).await,
        400,
        "invalid_credentials",
    );
    assert_session(
        &login(&app, "max@example.com", "a brand new passphrase").await,
        "max@example.com",
    );
}

#[tokio::test]
async fn the_eleventh_wrong_password_in_a_minute_is_rate_limited() {
    let app = app_with(&[]).await;
    assert_session(&signup(&app, "ned@example.com").await, "ned@example.com");
    for i in 0..10 {
        let r = login(&app, "ned@example.com", "wrong password!").await;
        assert_error(&r, 400, "invalid_credentials");
        let _ = i;
    }
    let r = login(&app, "NED@example.com", PASSWORD).await;
    assert_error(&r, 429, "over_request_rate_limit");
    let retry: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    // Another account is not affected.
    assert_error(
        &login(&app, "other@example.com", "wrong password!").await,
        400,
        "invalid_credentials",
    );
}

#[tokio::test]
async fn bad_input_is_a_gotrue_4xx_never_a_5xx() {
    let app = app_with(&[]).await;
    let raw = |path: &'static str, ct: Option<&'static str>, body: Vec<u8>| {
        let mut req = app.client.post(format!("{}/auth/v1{path}", app.base));
        if let Some(ct) = ct {
            req = req.header(CONTENT_TYPE, ct);
        }
        req.body(body)
    };
    let long_email = format!("{}@example.com", "a".repeat(2048));
    let long_password = "p".repeat(10 * 1024);
    let cases: Vec<(&str, reqwest::RequestBuilder)> = vec![
        (
            "signup not json",
            raw("/signup", Some("application/json"), b"{not json".to_vec()),
        ),
        (
            "token not json",
            raw(
                "/token?grant_type=password",
                Some("application/json"),
                b"[1,2".to_vec(),
            ),
        ),
        (
            "json array",
            raw("/signup", Some("application/json"), b"[1,2]".to_vec()),
        ),
        (
            "text/plain",
            raw("/signup", Some("text/plain"), b"hello".to_vec()),
        ),
        (
            "signup missing fields",
            raw("/signup", Some("application/json"), b"{}".to_vec()),
        ),
        (
            "token missing fields",
            raw(
                "/token?grant_type=password",
                Some("application/json"),
                b"{}".to_vec(),
            ),
        ),
        (
            "refresh missing token",
            raw(
                "/token?grant_type=refresh_token",
                Some("application/json"),
                b"{}".to_vec(),
            ),
        ),
        (
            "no grant_type",
            raw("/token", Some("application/json"), b"{}".to_vec()),
        ),
        (
            "unknown grant_type",
            raw(
                "/token?grant_type=magic",
                Some("application/json"),
                b"{}".to_vec(),
            ),
        ),
        (
            "email is a number",
            raw(
                "/token?grant_type=password",
                Some("application/json"),
                br#"{"email":1,"password":"x"}"#.to_vec(),
            ),
        ),
        (
            "signup data not an object",
            raw(
                "/signup",
                Some("application/json"),
                br#"{"email":"x@example.com","password":"long enough pw","data":3}"#.to_vec(),
            ),
        ),
        (
            "2 KB email signup",
            raw(
                "/signup",
                Some("application/json"),
                json!({ "email": long_email, "password": PASSWORD })
                    .to_string()
                    .into_bytes(),
            ),
        ),
        (
            "2 KB email login",
            raw(
                "/token?grant_type=password",
                Some("application/json"),
                json!({ "email": long_email, "password": PASSWORD })
                    .to_string()
                    .into_bytes(),
            ),
        ),
        (
            "10 KB password signup",
            raw(
                "/signup",
                Some("application/json"),
                json!({ "email": "p@example.com", "password": long_password })
                    .to_string()
                    .into_bytes(),
            ),
        ),
        (
            "10 KB password login",
            raw(
                "/token?grant_type=password",
                Some("application/json"),
                json!({ "email": "p@example.com", "password": long_password })
                    .to_string()
                    .into_bytes(),
            ),
        ),
        (
            "invalid utf-8",
            raw(
                "/signup",
                Some("application/json"),
                b"{\"email\":\"\xff\"}".to_vec(),
            ),
        ),
        (
            "huge refresh token",
            raw(
                "/token?grant_type=refresh_token",
                Some("application/json"),
                json!({ "refresh_token": "r".repeat(5000) })
                    .to_string()
                    .into_bytes(),
            ),
        ),
    ];
    let mut problems = Vec::new();
    for (name, req) in cases {
        let res = req.send().await.unwrap();
        let status = res.status();
        let version = res.headers().get("x-supabase-api-version").cloned();
        let body: Value = res.json().await.unwrap_or(Value::Null);
        if !status.is_client_error()
            || !body["code"].is_string()
            || !body["msg"].is_string()
            || version.is_none()
        {
            problems.push(format!("{name}: {status} {body}"));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    // Specific codes.
    let r = auth(
        &app,
        Method::POST,
        "/token?grant_type=magic",
        None,
        Some(json!({})),
    )
    .await;
    assert_error(&r, 400, "unsupported_grant_type");
    // Form-encoded bodies work on /token.
    assert_session(&signup(&app, "oz@example.com").await, "oz@example.com");
    let res = app
        .client
        .post(format!("{}/auth/v1/token?grant_type=password", app.base))
        .form(&[("email", "oz@example.com"), ("password", PASSWORD)])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
}

/// What the OpenAPI document forbids is refused, GoTrue-shaped: a
/// `GET /verify` that is no emailed link, a `PUT /user` without a body, and
/// user metadata Postgres cannot store.
#[tokio::test]
async fn requests_outside_the_documented_shape_are_gotrue_400s() {
    let app = app_with(&[]).await;
    let no_redirects = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    for query in [
        "",
        "?type=signup",
        "?token=&type=signup",
        "?token=abc",
        "?token=abc&type=",
        "?token=abc&type=magiclink",
        "?redirect_to=https%3A%2F%2Fapp.example.com%2F",
    ] {
        let res = no_redirects
            .get(format!("{}/auth/v1/verify{query}", app.base))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::BAD_REQUEST, "{query}");
        assert_eq!(res.headers()[CONTENT_TYPE], "application/json", "{query}");
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["code"], "validation_failed", "{query}: {body}");
        assert!(body["msg"].is_string(), "{body}");
    }
    // A link of the right shape whose token is bad still lands on the site,
    // with the error in the fragment.
    let res = no_redirects
        .get(format!("{}/auth/v1/verify?token=abc&type=email", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    let location = res.headers()["location"].to_str().unwrap();
    assert!(location.contains("error_code=otp_expired"), "{location}");

    let r = signup(&app, "shape@example.com").await;
    let token = r.body["access_token"].as_str().unwrap().to_owned();
    assert_error(
        &auth(&app, Method::PUT, "/user", Some(&token), None).await,
        400,
        "bad_json",
    );
    let r = auth(&app, Method::PUT, "/user", Some(&token), Some(json!({}))).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    // jsonb cannot hold U+0000, in a value or a key.
    for data in [json!({ "a": "x\u{0}y" }), json!({ "a": [{ "b\u{0}": 1 }] })] {
        let r = auth(
            &app,
            Method::PUT,
            "/user",
            Some(&token),
            Some(json!({ "data": data })),
        )
        .await;
        assert_error(&r, 400, "validation_failed");
        let r = auth(
            &app,
            Method::POST,
            "/signup",
            None,
            Some(json!({ "email": "nul@example.com", "password": PASSWORD, "data": data })),
        )
        .await;
        assert_error(&r, 400, "validation_failed");
    }
    let me = auth(&app, Method::GET, "/user", Some(&token), None).await;
    assert_eq!(me.body["user_metadata"], json!({}));
    // Numbers come back as they went in, even next to f64's limits (jsonb
    // prints them in full; they are read back exactly).
    let data = json!({ "max": -1.7976931348623155e308, "tiny": 5e-324, "big": 3.402823466e38 });
    let r = auth(
        &app,
        Method::PUT,
        "/user",
        Some(&token),
        Some(json!({ "data": data })),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let me = auth(&app, Method::GET, "/user", Some(&token), None).await;
    assert_eq!(me.body["user_metadata"], data);
}

#[tokio::test]
async fn without_a_signing_key_no_session_is_issued_and_no_account_created() {
    // Production profile without AUTH_KEYS_SECRET: tokens verify, none is issued.
    let app = TestApp::spawn_with(&[("AUTH_AUTOCONFIRM", "true")], 5).await;
    let res = signup(&app, "nokey@example.com").await;
    assert_eq!(res.status, StatusCode::SERVICE_UNAVAILABLE, "{}", res.body);
    assert_eq!(res.body["code"], "signing_unavailable");
    let res = login(&app, "nokey@example.com", PASSWORD).await;
    assert_eq!(res.status, StatusCode::SERVICE_UNAVAILABLE, "{}", res.body);
    assert_eq!(res.body["code"], "signing_unavailable");
    let accounts: i64 = sqlx::query_scalar("select count(*) from app.auth_accounts")
        .fetch_one(&app.db.admin)
        .await
        .unwrap();
    assert_eq!(accounts, 0);
}

#[tokio::test]
async fn a_platform_admin_bans_a_user_which_ends_their_sessions() {
    let app = app_with(&[]).await;
    let s = signup(&app, "banned@example.com").await;
    assert_eq!(s.status, StatusCode::OK, "{}", s.body);
    let access = s.body["access_token"].as_str().unwrap().to_owned();
    let refresh_token = s.body["refresh_token"].as_str().unwrap().to_owned();
    let id = s.body["user"]["id"].as_str().unwrap().to_owned();
    let admin_put = |token: Option<String>, body: Value| {
        let req = app
            .client
            .put(format!("{}/auth/v1/admin/users/{id}", app.base))
            .json(&body);
        let req = match token {
            Some(t) => req.bearer_auth(t),
            None => req,
        };
        async move {
            let res = req.send().await.unwrap();
            let status = res.status();
            (status, res.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    // Not without a service_role key: the user's own token is refused.
    let (st, body) = admin_put(Some(access.clone()), json!({"ban_duration": "24h"})).await;
    assert_eq!(st, StatusCode::FORBIDDEN, "{body}");
    let (st, _) = admin_put(None, json!({"ban_duration": "24h"})).await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    let (st, body) = admin_put(Some(service_key()), json!({"ban_duration": "forever"})).await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{body}");

    let (st, body) = admin_put(Some(service_key()), json!({"ban_duration": "24h"})).await;
    assert_eq!(st, StatusCode::OK, "{body}");
    assert!(body["banned_until"].is_string(), "{body}");
    // Sessions are over: refresh fails, the access token no longer reads the user.
    let r = refresh(&app, &refresh_token).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);
    let r = auth(&app, Method::GET, "/user", Some(&access), None).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.body);
    // Signing in is refused while banned, allowed again once lifted.
    let r = login(&app, "banned@example.com", PASSWORD).await;
    assert_error(&r, 400, "user_banned");
    let (st, body) = admin_put(Some(service_key()), json!({"ban_duration": "none"})).await;
    assert_eq!(st, StatusCode::OK, "{body}");
    assert!(body["banned_until"].is_null(), "{body}");
    let r = login(&app, "banned@example.com", PASSWORD).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
}
