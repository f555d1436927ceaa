//! The auth server's email flows over real HTTP, Postgres, Redis and SMTP:
//! confirmation links (`/verify`), password recovery (`/recover`) and email
//! change, as `@supabase/supabase-js` drives them.

use crate::common::gotrue::*;
use crate::common::smtp::SmtpSink;
use crate::common::*;

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::json;
use url::Url;

const SITE: &str = "https://app.example.com";

/// An app with a signing key, mail through `sink`, links to [`SITE`].
async fn app_with(sink: Option<&SmtpSink>, extra: &[(&str, &str)]) -> TestApp {
    let smtp = sink.map(|s| s.url());
    let mut vars = vec![
        ("AUTH_KEYS_SECRET", KEYS_SECRET),
        ("AUTH_SITE_URL", SITE),
        ("AUTH_AUTOCONFIRM", "false"),
    ];
    if let Some(url) = &smtp {
        vars.push(("SMTP_URL", url));
    }
    vars.extend_from_slice(extra);
    TestApp::spawn_with(&vars, 5).await
}

async fn signup(app: &TestApp, email: &str, redirect_to: Option<&str>) -> Res {
    let path = match redirect_to {
        Some(r) => format!("/signup?redirect_to={}", urlencode(r)),
        None => "/signup".to_owned(),
    };
    auth(
        app,
        Method::POST,
        &path,
        None,
        Some(json!({ "email": email, "password": PASSWORD })),
    )
    .await
}

async fn recover(app: &TestApp, email: &str) -> Res {
    auth(
        app,
        Method::POST,
        "/recover",
        None,
        Some(json!({ "email": email })),
    )
    .await
}

fn urlencode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

async fn link_to(sink: &SmtpSink, to: &str, nth: usize) -> Url {
    sink.link_to(to, nth).await
}

fn param(url: &Url, name: &str) -> Option<String> {
    url.query_pairs()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

fn token_of(link: &Url) -> String {
    param(link, "token").expect("token in the link")
}

/// `GET /verify?<query>` without following the redirect: the Location.
async fn follow_link(app: &TestApp, query: &str) -> Url {
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let res = client
        .get(format!("{}/auth/v1/verify?{query}", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    assert_eq!(res.headers()["cache-control"], "no-store");
    Url::parse(res.headers()["location"].to_str().unwrap()).unwrap()
}

fn fragment(url: &Url) -> std::collections::HashMap<String, String> {
    url::form_urlencoded::parse(url.fragment().unwrap_or("").as_bytes())
        .into_owned()
        .collect()
}

#[tokio::test]
async fn the_emailed_token_confirms_once_and_sign_in_then_works() {
    let sink = SmtpSink::start().await;
    let app = app_with(Some(&sink), &[]).await;
    let worker = app.start_worker();
    let r = signup(&app, "ann@example.com", None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert!(r.body["access_token"].is_null());
    assert_error(
        &login(&app, "ann@example.com", PASSWORD).await,
        400,
        "email_not_confirmed",
    );

    let link = link_to(&sink, "ann@example.com", 1).await;
    // The link is GoTrue's: GET {AUTH_EXTERNAL_URL (default AUTH_ISSUER)}/verify.
    assert_eq!(link.path(), "/auth/v1/verify");
    assert_eq!(param(&link, "type").as_deref(), Some("signup"));
    assert_eq!(param(&link, "redirect_to"), None);
    let token = token_of(&link);

    // Wrong type: the token is not used up.
    assert_error(&verify(&app, "recovery", &token).await, 403, "otp_expired");
    let r = verify(&app, "signup", &token).await;
    assert_session(&r, "ann@example.com");
    assert!(r.body["user"]["email_confirmed_at"].is_string());
    let me = auth(
        &app,
        Method::GET,
        "/user",
        r.body["access_token"].as_str(),
        None,
    )
    .await;
    assert_eq!(me.status, StatusCode::OK, "{}", me.body);
    assert_session(
        &login(&app, "ann@example.com", PASSWORD).await,
        "ann@example.com",
    );

    // Single use.
    let again = verify(&app, "signup", &token).await;
    assert_error(&again, 403, "otp_expired");
    assert_eq!(again.body["msg"], "Email link is invalid or has expired");
    assert_error(
        &verify(&app, "email", "no-such-token").await,
        403,
        "otp_expired",
    );
    assert_error(
        &verify(&app, "magiclink", &token).await,
        400,
        "validation_failed",
    );
    assert_error(
        &auth(
            &app,
            Method::POST,
            "/verify",
            None,
            Some(json!({ "type": "signup" })),
        )
        .await,
        400,
        "validation_failed",
    );

    // {type, token, email}: the email must be the account's.
    let r = signup(&app, "bea@example.com", None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let token = token_of(&link_to(&sink, "bea@example.com", 1).await);
    let with_email =
        |email: &'static str| json!({ "type": "email", "token": token.clone(), "email": email });
    let r = auth(
        &app,
        Method::POST,
        "/verify",
        None,
        Some(with_email("ann@example.com")),
    )
    .await;
    assert_error(&r, 403, "otp_expired");
    let r = auth(
        &app,
        Method::POST,
        "/verify",
        None,
        Some(with_email("BEA@example.com")),
    )
    .await;
    assert_session(&r, "bea@example.com");
    worker.stop().await;
}

#[tokio::test]
async fn the_link_redirects_with_the_session_and_never_off_site() {
    let sink = SmtpSink::start().await;
    let app = app_with(
        Some(&sink),
        &[(
            "AUTH_REDIRECT_ALLOW_LIST",
            "https://mobile.example.com/cb, com.example.app://login-callback",
        )],
    )
    .await;
    let worker = app.start_worker();

    // An allowed redirect_to goes into the link, and the link lands there.
    let r = signup(
        &app,
        "cy@example.com",
        Some("https://app.example.com/welcome"),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let link = link_to(&sink, "cy@example.com", 1).await;
    assert_eq!(
        param(&link, "redirect_to").as_deref(),
        Some("https://app.example.com/welcome")
    );
    let location = follow_link(&app, link.query().unwrap()).await;
    assert_eq!(
        location.as_str().split('#').next().unwrap(),
        "https://app.example.com/welcome"
    );
    let f = fragment(&location);
    assert_eq!(f["token_type"], "bearer");
    assert_eq!(f["type"], "signup");
    assert!(f["expires_in"].parse::<i64>().unwrap() > 0);
    assert!(f["refresh_token"].len() >= 32);
    let me = auth(&app, Method::GET, "/user", Some(&f["access_token"]), None).await;
    assert_eq!(me.status, StatusCode::OK, "{}", me.body);
    assert_eq!(me.body["email"], "cy@example.com");
    assert!(me.body["email_confirmed_at"].is_string());

    // The used link again: the error in the fragment, on the allowed target.
    let location = follow_link(&app, link.query().unwrap()).await;
    let f = fragment(&location);
    assert_eq!(f["error"], "access_denied");
    assert_eq!(f["error_code"], "otp_expired");
    assert_eq!(
        f["error_description"],
        "Email link is invalid or has expired"
    );
    assert!(!f.contains_key("access_token"));
    // The allow list also counts.
    let q = format!(
        "token={}&type=signup&redirect_to={}",
        token_of(&link),
        urlencode("https://mobile.example.com/cb/done")
    );
    let location = follow_link(&app, &q).await;
    assert!(
        location
            .as_str()
            .starts_with("https://mobile.example.com/cb/done#error=access_denied"),
        "{location}"
    );

    // An attacker's redirect_to is left out of the email, and the site URL
    // replaces it on the link.
    let r = signup(&app, "dan@example.com", Some("https://evil.example/steal")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let link = link_to(&sink, "dan@example.com", 1).await;
    assert_eq!(param(&link, "redirect_to"), None);
    let q = format!(
        "token={}&type=signup&redirect_to={}",
        token_of(&link),
        urlencode("https://evil.example/steal")
    );
    let location = follow_link(&app, &q).await;
    assert_eq!(location.host_str(), Some("app.example.com"), "{location}");
    assert_eq!(location.path(), "/");
    assert!(fragment(&location)["access_token"].len() > 20);
    // Look-alike hosts are not under the site either.
    for evil in [
        "https://app.example.com.evil.example/",
        "https://app.example.com@evil.example/",
        "//evil.example/",
        "javascript:alert(1)",
    ] {
        let q = format!("token=x&type=signup&redirect_to={}", urlencode(evil));
        let location = follow_link(&app, &q).await;
        assert_eq!(
            location.host_str(),
            Some("app.example.com"),
            "{evil}: {location}"
        );
        assert_eq!(fragment(&location)["error_code"], "otp_expired");
    }
    worker.stop().await;
}

#[tokio::test]
async fn recover_answers_alike_and_its_link_resets_the_password() {
    let sink = SmtpSink::start().await;
    let app = app_with(Some(&sink), &[("AUTH_AUTOCONFIRM", "true")]).await;
    let worker = app.start_worker();
    let s = signup(&app, "eve@example.com", None).await;
    assert_session(&s, "eve@example.com");
    let other = login(&app, "eve@example.com", PASSWORD).await;
    assert_session(&other, "eve@example.com");

    let unknown = recover(&app, "nobody@example.com").await;
    let known = auth(
        &app,
        Method::POST,
        &format!(
            "/recover?redirect_to={}",
            urlencode("https://app.example.com/reset")
        ),
        None,
        Some(json!({ "email": "Eve@Example.com" })),
    )
    .await;
    assert_eq!(unknown.status, StatusCode::OK, "{}", unknown.body);
    assert_eq!(known.status, StatusCode::OK, "{}", known.body);
    assert_eq!(unknown.body, json!({}));
    assert_eq!(known.body, json!({}));
    let link = link_to(&sink, "eve@example.com", 1).await;
    assert_eq!(param(&link, "type").as_deref(), Some("recovery"));
    assert_eq!(
        param(&link, "redirect_to").as_deref(),
        Some("https://app.example.com/reset")
    );
    // Only hashes are stored, and recovery links last an hour.
    let (hash_is_token, ttl_ok): (bool, bool) = sqlx::query_as(
        "select token_hash = convert_to($1, 'UTF8'),
                expires_at between now() + interval '59 minutes' and now() + interval '61 minutes'
         from app.auth_one_time_tokens where kind = 'recovery'",
    )
    .bind(token_of(&link))
    .fetch_one(&app.db.admin)
    .await
    .unwrap();
    assert!(!hash_is_token && ttl_ok);

    // A second request within a minute: the same answer, no second email.
    assert_eq!(recover(&app, "eve@example.com").await.body, json!({}));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let messages = sink.messages();
    assert_eq!(messages.len(), 1, "{messages:#?}");
    assert_eq!(messages[0].rcpt_to, vec!["eve@example.com".to_owned()]);
    assert!(messages[0].subject().unwrap().contains("Reset"));

    // The link's token signs in; the new password replaces the old one.
    let r = verify(&app, "recovery", &token_of(&link)).await;
    assert_session(&r, "eve@example.com");
    let token = r.body["access_token"].as_str().unwrap().to_owned();
    let r = auth(
        &app,
        Method::PUT,
        "/user",
        Some(&token),
        Some(json!({ "password": "a brand new passphrase" })),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_error(
        &login(&app, "eve@example.com", PASSWORD).await,
        400,
        "invalid_credentials",
    );
    assert_session(
        &login(&app, "eve@example.com", "a brand new passphrase").await,
        "eve@example.com",
    );
    // The sessions from before the reset are gone.
    let r = auth(
        &app,
        Method::GET,
        "/user",
        other.body["access_token"].as_str(),
        None,
    )
    .await;
    assert_error(&r, 403, "session_not_found");
    assert_error(
        &verify(&app, "recovery", &token_of(&link)).await,
        403,
        "otp_expired",
    );
    worker.stop().await;
}

#[tokio::test]
async fn an_expired_token_is_otp_expired() {
    let sink = SmtpSink::start().await;
    let app = app_with(Some(&sink), &[]).await;
    let worker = app.start_worker();
    assert_eq!(
        signup(&app, "fay@example.com", None).await.status,
        StatusCode::OK
    );
    let link = link_to(&sink, "fay@example.com", 1).await;
    let expiry_ok: bool = sqlx::query_scalar(
        "select expires_at between now() + interval '23 hours' and now() + interval '25 hours'
         from app.auth_one_time_tokens where kind = 'confirmation'",
    )
    .fetch_one(&app.db.admin)
    .await
    .unwrap();
    assert!(expiry_ok);
    sqlx::query("update app.auth_one_time_tokens set expires_at = now() - interval '1 minute'")
        .execute(&app.db.admin)
        .await
        .unwrap();
    assert_error(
        &verify(&app, "signup", &token_of(&link)).await,
        403,
        "otp_expired",
    );
    let location = follow_link(&app, link.query().unwrap()).await;
    assert_eq!(fragment(&location)["error_code"], "otp_expired");
    let confirmed: Option<chrono::DateTime<chrono::Utc>> =
        sqlx::query_scalar("select email_confirmed_at from app.auth_accounts")
            .fetch_one(&app.db.admin)
            .await
            .unwrap();
    assert!(confirmed.is_none());
    worker.stop().await;
}

#[tokio::test]
async fn email_change_is_confirmed_from_the_new_address() {
    let sink = SmtpSink::start().await;
    let app = app_with(Some(&sink), &[]).await;
    let worker = app.start_worker();
    assert_eq!(
        signup(&app, "gus@example.com", None).await.status,
        StatusCode::OK
    );
    let token = token_of(&link_to(&sink, "gus@example.com", 1).await);
    let s = verify(&app, "signup", &token).await;
    assert_session(&s, "gus@example.com");
    let access = s.body["access_token"].as_str().unwrap().to_owned();

    let r = auth(
        &app,
        Method::PUT,
        "/user",
        Some(&access),
        Some(json!({ "email": "Gus.New@example.com" })),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["email"], "gus@example.com");
    assert_eq!(r.body["new_email"], "gus.new@example.com");
    assert!(r.body["email_change_sent_at"].is_string(), "{}", r.body);
    // Another change within a minute: too soon.
    let r = auth(
        &app,
        Method::PUT,
        "/user",
        Some(&access),
        Some(json!({ "email": "gus.other@example.com" })),
    )
    .await;
    assert_error(&r, 429, "over_email_send_rate_limit");
    assert!(r.headers.contains_key("retry-after"));

    let link = link_to(&sink, "gus.new@example.com", 1).await;
    assert_eq!(param(&link, "type").as_deref(), Some("email_change"));
    let mail = sink
        .messages()
        .into_iter()
        .find(|m| m.rcpt_to == vec!["gus.new@example.com".to_owned()])
        .unwrap();
    assert!(mail.text_body().unwrap().contains("gus.new@example.com"));
    // Nothing changed yet.
    assert_session(
        &login(&app, "gus@example.com", PASSWORD).await,
        "gus@example.com",
    );

    let r = verify(&app, "email_change", &token_of(&link)).await;
    assert_session(&r, "gus.new@example.com");
    assert!(r.body["user"]["new_email"].is_null(), "{}", r.body);
    let profile: Option<String> = sqlx::query_scalar("select email from users")
        .fetch_one(&app.db.admin)
        .await
        .unwrap();
    assert_eq!(profile.as_deref(), Some("gus.new@example.com"));
    assert_session(
        &login(&app, "gus.new@example.com", PASSWORD).await,
        "gus.new@example.com",
    );
    assert_error(
        &login(&app, "gus@example.com", PASSWORD).await,
        400,
        "invalid_credentials",
    );

    // An address taken between the request and the link: 422 email_exists,
    // and nothing changes.
    let access = r.body["access_token"].as_str().unwrap().to_owned();
    let r = auth(
        &app,
        Method::PUT,
        "/user",
        Some(&access),
        Some(json!({ "email": "taken@example.com" })),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let link = link_to(&sink, "taken@example.com", 1).await;
    assert_eq!(
        signup(&app, "taken@example.com", None).await.status,
        StatusCode::OK
    );
    assert_error(
        &verify(&app, "email_change", &token_of(&link)).await,
        422,
        "email_exists",
    );
    // Asking for a taken address at once is refused.
    let r = auth(
        &app,
        Method::PUT,
        "/user",
        Some(&access),
        Some(json!({ "email": "taken@example.com" })),
    )
    .await;
    assert_error(&r, 422, "email_exists");
    let me = auth(&app, Method::GET, "/user", Some(&access), None).await;
    assert_eq!(me.body["email"], "gus.new@example.com");
    worker.stop().await;
}

#[tokio::test]
async fn recover_is_rate_limited_per_address_and_verify_per_ip() {
    let app = app_with(None, &[]).await;
    for _ in 0..5 {
        let r = recover(&app, "hal@example.com").await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        assert_eq!(r.body, json!({}));
    }
    let r = recover(&app, "HAL@example.com").await;
    assert_error(&r, 429, "over_request_rate_limit");
    let retry: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(retry >= 1, "{retry}");
    // Another address is not affected.
    assert_eq!(
        recover(&app, "ida@example.com").await.status,
        StatusCode::OK
    );
    assert_error(&recover(&app, "").await, 400, "validation_failed");

    // Guessing tokens: 20 attempts per client IP in ten minutes.
    for i in 0..20 {
        let r = verify(&app, "signup", &format!("guess-{i}")).await;
        assert_error(&r, 403, "otp_expired");
    }
    let r = verify(&app, "signup", "guess-21").await;
    assert_error(&r, 429, "over_request_rate_limit");
    assert!(r.headers.contains_key("retry-after"));
}
