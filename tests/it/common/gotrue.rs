//! Calls to the auth server under `/auth/v1` as `@supabase/supabase-js`
//! makes them, and checks of GoTrue-shaped answers.
#![allow(dead_code)]

use reqwest::header::HeaderMap;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use super::{TestApp, sign_hs256};

/// A test-only `AUTH_KEYS_SECRET` (32 bytes, base64).
pub const KEYS_SECRET: &str = "dGVzdC1vbmx5LWF1dGgta2V5cy1zZWNyZXQtMzJieXQ=";
pub const PASSWORD: &str = "correct horse battery";

/// A Supabase `anon` key for the test apps (HS256 with the JWT secret).
pub fn anon_key() -> String {
    let now = chrono::Utc::now().timestamp();
    sign_hs256(&json!({ "iss": "supabase", "role": "anon", "iat": now, "exp": now + 3600 }))
}

/// One answer: status, headers and JSON body (Null when empty or not JSON).
pub struct Res {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Value,
}

/// Sends like supabase-js: the `apikey` header, JSON bodies, and a bearer
/// token when given.
pub async fn auth(
    app: &TestApp,
    method: Method,
    path: &str,
    bearer: Option<&str>,
    body: Option<Value>,
) -> Res {
    auth_with(app, method, path, bearer, body, &[]).await
}

/// [`auth`] with extra request headers (`X-Forwarded-For`, ...).
pub async fn auth_with(
    app: &TestApp,
    method: Method,
    path: &str,
    bearer: Option<&str>,
    body: Option<Value>,
    headers: &[(&str, &str)],
) -> Res {
    let mut req = app
        .client
        .request(method, format!("{}/auth/v1{path}", app.base))
        .header("apikey", anon_key())
        .header("X-Supabase-Api-Version", "2024-01-01");
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    if let Some(t) = bearer {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let res = req.send().await.expect("request");
    let status = res.status();
    let headers = res.headers().clone();
    let bytes = res.bytes().await.unwrap_or_default();
    Res {
        status,
        headers,
        body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    }
}

/// `POST /verify {type, token_hash}` (supabase-js `verifyOtp`).
pub async fn verify(app: &TestApp, kind: &str, token_hash: &str) -> Res {
    auth(
        app,
        Method::POST,
        "/verify",
        None,
        Some(json!({ "type": kind, "token_hash": token_hash })),
    )
    .await
}

pub async fn login(app: &TestApp, email: &str, password: &str) -> Res {
    auth(
        app,
        Method::POST,
        "/token?grant_type=password",
        None,
        Some(json!({ "email": email, "password": password })),
    )
    .await
}

/// A GoTrue error: the status, the code in `code` and `error_code`, a
/// message, and the API version header (without it supabase-js ignores `code`).
pub fn assert_error(r: &Res, status: u16, code: &str) {
    assert_eq!(r.status.as_u16(), status, "{code}: {}", r.body);
    assert_eq!(r.body["code"], code, "{}", r.body);
    assert_eq!(r.body["error_code"], code, "{}", r.body);
    assert!(
        r.body["msg"].is_string() && r.body["message"].is_string(),
        "{}",
        r.body
    );
    assert_eq!(
        r.headers
            .get("x-supabase-api-version")
            .and_then(|v| v.to_str().ok()),
        Some("2024-01-01")
    );
}

/// A session as GoTrue answers it: a JWT access token, bearer type, expiry,
/// a refresh token, and the user with `email`.
pub fn assert_session(r: &Res, email: &str) {
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let s = &r.body;
    assert!(
        s["access_token"]
            .as_str()
            .is_some_and(|t| t.split('.').count() == 3),
        "{s}"
    );
    assert_eq!(s["token_type"], "bearer");
    assert!(s["expires_in"].as_i64().unwrap() > 0);
    assert!(s["expires_at"].as_i64().unwrap() > chrono::Utc::now().timestamp());
    assert!(s["refresh_token"].as_str().is_some_and(|t| t.len() >= 32));
    assert_eq!(s["user"]["email"], email);
    assert_eq!(s["user"]["aud"], "authenticated");
    assert_eq!(s["user"]["role"], "authenticated");
}
