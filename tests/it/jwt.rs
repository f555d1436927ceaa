//! The JWT attack suite and the JWKS cache.
//!
//! Every attack is sent over real HTTP to a user route (`GET /api/v1/me`) and
//! an org route (`GET /api/v1/orgs/{org}/members` of an org the impersonated
//! user owns) and must get a 401 problem with `WWW-Authenticate: Bearer`,
//! write nothing, while the same user's valid token keeps working, so each
//! rejection is due to the attack and not to the setup.
//!
//! The keys under `tests/it/fixtures/` are TEST-ONLY keys generated with openssl
//! for this suite (see `tests/it/fixtures/README.md`); they are public and must
//! never be used for anything real.

use crate::common::*;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderValue, WWW_AUTHENTICATE};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tenantry::auth::jwt::{TokenError, Verifier};
use uuid::Uuid;

// Test-only key material: never use these keys outside this test suite.
const ES256_PEM: &[u8] = include_bytes!("fixtures/es256.pem");
const ES256_PUB_PEM: &[u8] = include_bytes!("fixtures/es256.pub.pem");
const ES256_NEXT_PEM: &[u8] = include_bytes!("fixtures/es256_next.pem");
const ES256_ATTACKER_PEM: &[u8] = include_bytes!("fixtures/es256_attacker.pem");
const RS256_PEM: &[u8] = include_bytes!("fixtures/rs256.pem");
const RS256_PUB_PEM: &[u8] = include_bytes!("fixtures/rs256.pub.pem");
const JWKS_JSON: &str = include_str!("fixtures/jwks.json");

const ES_KID: &str = "es256-main";
const ES_NEXT_KID: &str = "es256-next";
const ES_ATTACKER_KID: &str = "es256-attacker";
const RS_KID: &str = "rs256-main";
const ISSUER: &str = "https://project-ref.supabase.test/auth/v1";

// ---------------------------------------------------------------------------
// Keys and tokens
// ---------------------------------------------------------------------------

/// The public JWK with this `kid` from the fixture set.
fn jwk(kid: &str) -> Value {
    let set: Value = serde_json::from_str(JWKS_JSON).expect("jwks fixture");
    set["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == kid)
        .unwrap_or_else(|| panic!("no fixture key {kid}"))
        .clone()
}

/// A base64url (no padding) member of a JWK, decoded.
fn jwk_bytes(kid: &str, member: &str) -> Vec<u8> {
    URL_SAFE_NO_PAD
        .decode(jwk(kid)[member].as_str().unwrap())
        .unwrap()
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn b64_json(v: &Value) -> String {
    b64(v.to_string().as_bytes())
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

fn header(alg: Algorithm, kid: Option<&str>) -> Header {
    Header {
        kid: kid.map(str::to_owned),
        ..Header::new(alg)
    }
}

fn encode(header: &Header, claims: &Value, key: &EncodingKey) -> String {
    jsonwebtoken::encode(header, claims, key).expect("sign token")
}

fn es256_key(pem: &[u8]) -> EncodingKey {
    EncodingKey::from_ec_pem(pem).expect("EC PKCS#8 key")
}

fn rs256_key() -> EncodingKey {
    EncodingKey::from_rsa_pem(RS256_PEM).expect("RSA PKCS#8 key")
}

/// ES256 token signed with `pem`, naming `kid`.
fn es256(pem: &[u8], kid: Option<&str>, claims: &Value) -> String {
    encode(&header(Algorithm::ES256, kid), claims, &es256_key(pem))
}

/// RS256 token signed with the fixture RSA key, naming `kid`.
fn rs256(kid: Option<&str>, claims: &Value) -> String {
    encode(&header(Algorithm::RS256, kid), claims, &rs256_key())
}

/// HS256 token with an arbitrary HMAC secret.
fn hs256_with(secret: &[u8], kid: Option<&str>, claims: &Value) -> String {
    encode(
        &header(Algorithm::HS256, kid),
        claims,
        &EncodingKey::from_secret(secret),
    )
}

/// Replaces one of the three parts of a compact JWS.
fn with_part(token: &str, index: usize, part: &str) -> String {
    let mut parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3, "not a compact JWS: {token}");
    parts[index] = part;
    parts.join(".")
}

// ---------------------------------------------------------------------------
// A JWKS server with a hit counter and a swappable key set
// ---------------------------------------------------------------------------

#[derive(Clone)]
struct KeyServerState {
    hits: Arc<AtomicUsize>,
    keys: Arc<Mutex<Vec<Value>>>,
}

/// Serves `{"keys": [...]}` on every path of 127.0.0.1:<random> and counts requests.
struct KeyServer {
    /// The JWKS URL.
    url: String,
    /// Origin, to build other URLs on the same server.
    origin: String,
    state: KeyServerState,
    task: tokio::task::JoinHandle<()>,
}

async fn serve_keys(State(s): State<KeyServerState>) -> Json<Value> {
    s.hits.fetch_add(1, Ordering::SeqCst);
    let keys = s.keys.lock().unwrap().clone();
    Json(json!({ "keys": keys }))
}

impl KeyServer {
    async fn start(kids: &[&str]) -> KeyServer {
        let state = KeyServerState {
            hits: Arc::new(AtomicUsize::new(0)),
            keys: Arc::new(Mutex::new(kids.iter().map(|k| jwk(k)).collect())),
        };
        let app = axum::Router::new()
            .fallback(serve_keys)
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        KeyServer {
            url: format!("http://{addr}/auth/v1/.well-known/jwks.json"),
            origin: format!("http://{addr}"),
            state,
            task,
        }
    }

    fn hits(&self) -> usize {
        self.state.hits.load(Ordering::SeqCst)
    }

    /// Replaces the served key set with the fixture keys `kids`.
    fn serve(&self, kids: &[&str]) {
        self.serve_jwks(kids.iter().map(|k| jwk(k)).collect());
    }

    fn serve_jwks(&self, keys: Vec<Value>) {
        *self.state.keys.lock().unwrap() = keys;
    }
}

impl Drop for KeyServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Config with a JWKS and an issuer, for verifier-only tests (no database is
/// contacted: the URL only has to parse).
fn jwks_config(jwks_url: &str) -> tenantry::config::Config {
    test_config(
        "postgres://unused@127.0.0.1:5432/unused",
        &[("JWKS_URL", jwks_url), ("JWT_ISSUER", ISSUER)],
    )
}

fn verifier(jwks_url: &str, max_age: Duration, min_refetch: Duration) -> Verifier {
    Verifier::with_jwks_timing(&jwks_config(jwks_url).jwt, max_age, min_refetch).expect("verifier")
}

/// Valid Supabase-shaped claims (with our issuer) for a fresh user.
fn user_claims(id: Uuid) -> Value {
    let mut c = claims_for(id, &format!("u-{}@example.com", id.simple()));
    c["iss"] = json!(ISSUER);
    c
}

// ---------------------------------------------------------------------------
// The app under attack
// ---------------------------------------------------------------------------

/// One attempt: a label for failure messages and the raw `Authorization`
/// header value (None: no header at all).
struct Attack {
    label: String,
    authorization: Option<Vec<u8>>,
}

fn bearer(label: impl Into<String>, token: &str) -> Attack {
    raw(label, format!("Bearer {token}"))
}

fn raw(label: impl Into<String>, value: impl Into<Vec<u8>>) -> Attack {
    Attack {
        label: label.into(),
        authorization: Some(value.into()),
    }
}

/// The app (HS256 secret + JWKS serving `es256-main` and `rs256-main`, issuer
/// configured), a victim user who owns an org, and helpers to attack them.
struct Harness {
    app: TestApp,
    jwks: KeyServer,
    victim: Uuid,
    org: Uuid,
    hs256_enabled: bool,
}

impl Harness {
    async fn start() -> Harness {
        Self::start_with(&[]).await
    }

    async fn start_with(extra: &[(&str, &str)]) -> Harness {
        let jwks = KeyServer::start(&[ES_KID, RS_KID]).await;
        let db = TestDb::new().await;
        let mut vars = vec![("JWKS_URL", jwks.url.as_str()), ("JWT_ISSUER", ISSUER)];
        vars.extend_from_slice(extra);
        let config = test_config(&db.app_url, &vars);
        let hs256_enabled = config.jwt.secret.is_some();
        let verifier = Verifier::with_jwks_timing(
            &config.jwt,
            Duration::from_secs(600),
            Duration::from_secs(30),
        )
        .expect("verifier");
        let app = TestApp::spawn_on(db, config, verifier).await;
        let mut h = Harness {
            app,
            jwks,
            victim: Uuid::new_v4(),
            org: Uuid::nil(),
            hs256_enabled,
        };
        let (status, body) = h
            .app
            .call(
                Method::POST,
                "/api/v1/orgs",
                Some(&h.valid_es256()),
                Some(json!({ "name": "Victim Corp" })),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "create victim org: {body}");
        h.org = body["id"].as_str().unwrap().parse().unwrap();
        h
    }

    /// The victim's valid claims.
    fn claims(&self) -> Value {
        user_claims(self.victim)
    }

    fn valid_hs256(&self) -> String {
        sign_hs256(&self.claims())
    }

    fn valid_es256(&self) -> String {
        es256(ES256_PEM, Some(ES_KID), &self.claims())
    }

    fn valid_rs256(&self) -> String {
        rs256(Some(RS_KID), &self.claims())
    }

    /// The victim's claims changed by `edit`, signed with the right HS256
    /// secret and with the right ES256 key: only the claims are wrong.
    fn signed_both_ways(&self, label: &str, edit: impl Fn(&mut Value)) -> Vec<Attack> {
        let mut claims = self.claims();
        edit(&mut claims);
        vec![
            bearer(format!("{label} (HS256)"), &sign_hs256(&claims)),
            bearer(
                format!("{label} (ES256)"),
                &es256(ES256_PEM, Some(ES_KID), &claims),
            ),
        ]
    }

    fn members_path(&self) -> String {
        format!("/api/v1/orgs/{}/members", self.org)
    }

    async fn send(
        &self,
        path: &str,
        authorization: Option<&[u8]>,
    ) -> (StatusCode, HeaderMap, Value) {
        let mut req = self.app.client.get(format!("{}{}", self.app.base, path));
        if let Some(a) = authorization {
            req = req.header(
                AUTHORIZATION,
                HeaderValue::from_bytes(a).expect("sendable header value"),
            );
        }
        let res = req.send().await.expect("request");
        let status = res.status();
        let headers = res.headers().clone();
        let bytes = res.bytes().await.unwrap_or_default();
        (
            status,
            headers,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    /// `token` is the victim's: 200 on /me (as the victim) and on the org route.
    async fn assert_accepted(&self, token: &str) {
        let auth = format!("Bearer {token}");
        let (status, _, me) = self.send("/api/v1/me", Some(auth.as_bytes())).await;
        assert_eq!(status, StatusCode::OK, "valid token refused on /me: {me}");
        assert_eq!(me["id"], self.victim.to_string(), "{me}");
        let (status, _, page) = self.send(&self.members_path(), Some(auth.as_bytes())).await;
        assert_eq!(
            status,
            StatusCode::OK,
            "valid token refused on members: {page}"
        );
    }

    async fn assert_valid_tokens_work(&self) {
        self.assert_accepted(&self.valid_es256()).await;
        self.assert_accepted(&self.valid_rs256()).await;
        if self.hs256_enabled {
            self.assert_accepted(&self.valid_hs256()).await;
        }
    }

    /// Every attack gets a 401 problem with `WWW-Authenticate: Bearer` on both
    /// routes and changes no data; valid tokens work before and after.
    async fn assert_rejected(&self, attacks: &[Attack]) {
        assert!(!attacks.is_empty());
        self.assert_valid_tokens_work().await;
        let before = self.app.snapshot().await;
        for attack in attacks {
            for path in ["/api/v1/me".to_owned(), self.members_path()] {
                let (status, headers, body) =
                    self.send(&path, attack.authorization.as_deref()).await;
                let label = &attack.label;
                assert_eq!(
                    status,
                    StatusCode::UNAUTHORIZED,
                    "{label}: GET {path} answered {status}: {body}"
                );
                assert_eq!(
                    headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()),
                    Some("application/problem+json"),
                    "{label}: GET {path}"
                );
                assert_eq!(body["code"], "unauthorized", "{label}: GET {path}: {body}");
                assert_eq!(body["status"], 401, "{label}: GET {path}: {body}");
                let challenge = headers
                    .get(WWW_AUTHENTICATE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default();
                assert!(
                    challenge.starts_with("Bearer"),
                    "{label}: GET {path}: WWW-Authenticate is {challenge:?}"
                );
            }
        }
        assert_eq!(
            self.app.snapshot().await,
            before,
            "a rejected request changed data"
        );
        self.assert_valid_tokens_work().await;
    }
}

// ---------------------------------------------------------------------------
// Attacks
// ---------------------------------------------------------------------------

#[tokio::test]
async fn unsigned_alg_none_tokens_are_rejected() {
    let h = Harness::start().await;
    let payload = b64_json(&h.claims());
    let valid_signature = h.valid_hs256().rsplit('.').next().unwrap().to_owned();
    let mut attacks = Vec::new();
    for alg in ["none", "None", "NONE", "nOnE"] {
        let hdr = b64_json(&json!({ "alg": alg, "typ": "JWT" }));
        attacks.push(bearer(format!("alg {alg}"), &format!("{hdr}.{payload}.")));
        let hdr_kid = b64_json(&json!({ "alg": alg, "typ": "JWT", "kid": ES_KID }));
        attacks.push(bearer(
            format!("alg {alg} with kid"),
            &format!("{hdr_kid}.{payload}."),
        ));
    }
    // alg none with a signature that is valid for the same payload under HS256.
    let hdr = b64_json(&json!({ "alg": "none", "typ": "JWT" }));
    attacks.push(bearer(
        "alg none keeping a real signature",
        &format!("{hdr}.{payload}.{valid_signature}"),
    ));
    h.assert_rejected(&attacks).await;
}

#[tokio::test]
async fn hs256_signed_with_a_public_key_is_rejected() {
    let h = Harness::start().await;
    let claims = h.claims();
    let (x, y) = (jwk_bytes(ES_KID, "x"), jwk_bytes(ES_KID, "y"));
    let xy = [x.as_slice(), y.as_slice()].concat();
    let uncompressed = [&[4u8][..], &x, &y].concat();
    let pem_trimmed = std::str::from_utf8(ES256_PUB_PEM).unwrap().trim();
    let secrets: Vec<(&str, Vec<u8>, &str)> = vec![
        ("EC public key PEM", ES256_PUB_PEM.to_vec(), ES_KID),
        (
            "EC public key PEM, trimmed",
            pem_trimmed.as_bytes().to_vec(),
            ES_KID,
        ),
        ("EC JWK x||y", xy, ES_KID),
        ("EC point 04||x||y", uncompressed, ES_KID),
        (
            "EC JWK as JSON",
            jwk(ES_KID).to_string().into_bytes(),
            ES_KID,
        ),
        ("RSA public key PEM", RS256_PUB_PEM.to_vec(), RS_KID),
        ("RSA modulus n", jwk_bytes(RS_KID, "n"), RS_KID),
    ];
    let mut attacks = Vec::new();
    for (what, secret, kid) in &secrets {
        attacks.push(bearer(
            format!("HS256 keyed with {what}, kid {kid}"),
            &hs256_with(secret, Some(kid), &claims),
        ));
        attacks.push(bearer(
            format!("HS256 keyed with {what}, no kid"),
            &hs256_with(secret, None, &claims),
        ));
    }
    h.assert_rejected(&attacks).await;
}

#[tokio::test]
async fn hs256_tokens_are_refused_when_only_a_jwks_is_configured() {
    // An empty JWT_SECRET is unset: only the JWKS verifies tokens.
    let h = Harness::start_with(&[("JWT_SECRET", "")]).await;
    assert!(!h.hs256_enabled);
    let claims = h.claims();
    let (x, y) = (jwk_bytes(ES_KID, "x"), jwk_bytes(ES_KID, "y"));
    h.assert_rejected(&[
        bearer(
            "HS256 keyed with EC public PEM, kid",
            &hs256_with(ES256_PUB_PEM, Some(ES_KID), &claims),
        ),
        bearer(
            "HS256 keyed with EC public PEM, no kid",
            &hs256_with(ES256_PUB_PEM, None, &claims),
        ),
        bearer(
            "HS256 keyed with x||y, kid",
            &hs256_with(&[x, y].concat(), Some(ES_KID), &claims),
        ),
        bearer(
            "HS256 keyed with RSA public PEM, kid",
            &hs256_with(RS256_PUB_PEM, Some(RS_KID), &claims),
        ),
        bearer("HS256 with the test secret", &sign_hs256(&claims)),
        bearer(
            "HS256 with the empty secret",
            &hs256_with(b"", Some(ES_KID), &claims),
        ),
    ])
    .await;
}

#[tokio::test]
async fn expired_tokens_are_rejected_beyond_the_leeway() {
    let h = Harness::start().await;
    // Within the 30 s leeway an expired token still passes (clock skew)...
    let mut recent = h.claims();
    recent["exp"] = json!(now() - 5);
    h.assert_accepted(&sign_hs256(&recent)).await;
    // ...well past it, it does not.
    let mut attacks = h.signed_both_ways("expired 300 s ago", |c| {
        c["iat"] = json!(now() - 3900);
        c["exp"] = json!(now() - 300);
    });
    attacks.extend(h.signed_both_ways("no exp", |c| {
        c.as_object_mut().unwrap().remove("exp");
    }));
    attacks.extend(h.signed_both_ways("exp not a number", |c| {
        c["exp"] = json!("9999999999");
    }));
    h.assert_rejected(&attacks).await;
}

#[tokio::test]
async fn tokens_not_yet_valid_are_rejected() {
    let h = Harness::start().await;
    let attacks = h.signed_both_ways("nbf in 300 s", |c| {
        c["nbf"] = json!(now() + 300);
    });
    h.assert_rejected(&attacks).await;
}

#[tokio::test]
async fn tokens_for_another_audience_are_rejected() {
    let h = Harness::start().await;
    let mut attacks = Vec::new();
    for (label, aud) in [
        ("aud anon", json!("anon")),
        ("aud service_role", json!("service_role")),
        ("aud of another app", json!("https://other.example")),
        ("aud list without ours", json!(["other", "another"])),
        ("aud empty string", json!("")),
        ("aud differing in case", json!("Authenticated")),
    ] {
        attacks.extend(h.signed_both_ways(label, |c| c["aud"] = aud.clone()));
    }
    attacks.extend(h.signed_both_ways("no aud", |c| {
        c.as_object_mut().unwrap().remove("aud");
    }));
    h.assert_rejected(&attacks).await;
}

#[tokio::test]
async fn tokens_from_another_issuer_are_rejected() {
    let h = Harness::start().await;
    let mut attacks = Vec::new();
    for (label, iss) in [
        (
            "iss of another project",
            json!("https://evil.supabase.test/auth/v1"),
        ),
        ("iss with a trailing slash", json!(format!("{ISSUER}/"))),
        ("iss in another case", json!(ISSUER.to_uppercase())),
        ("iss as a list of others", json!(["https://evil.example"])),
        ("iss empty", json!("")),
    ] {
        attacks.extend(h.signed_both_ways(label, |c| c["iss"] = iss.clone()));
    }
    h.assert_rejected(&attacks).await;
}

/// JWT_ISSUER is configured, so a token without `iss` cannot prove it comes
/// from that issuer (e.g. a token minted by another service sharing the secret
/// or the signing key) and must be refused.
#[tokio::test]
async fn tokens_without_an_issuer_are_rejected_when_one_is_configured() {
    let h = Harness::start().await;
    let attacks = h.signed_both_ways("no iss", |c| {
        c.as_object_mut().unwrap().remove("iss");
    });
    h.assert_rejected(&attacks).await;
}

#[tokio::test]
async fn tokens_without_a_uuid_subject_are_rejected() {
    let h = Harness::start().await;
    let victim = h.victim;
    let mut attacks = h.signed_both_ways("no sub", |c| {
        c.as_object_mut().unwrap().remove("sub");
    });
    for (label, sub) in [
        ("sub not a uuid", json!("admin")),
        ("sub empty", json!("")),
        (
            "sub with SQL appended",
            json!(format!("{victim}' OR 1=1 --")),
        ),
        ("sub null", Value::Null),
        ("sub a number", json!(12345)),
        ("sub a list", json!([victim.to_string()])),
    ] {
        attacks.extend(h.signed_both_ways(label, |c| c["sub"] = sub.clone()));
    }
    h.assert_rejected(&attacks).await;
    assert_eq!(h.app.count("users").await, 1, "only the victim exists");
}

#[tokio::test]
async fn tokens_signed_with_a_key_outside_the_jwks_are_rejected() {
    let h = Harness::start().await;
    let claims = h.claims();
    h.assert_rejected(&[
        bearer(
            "unknown kid, attacker key",
            &es256(ES256_ATTACKER_PEM, Some(ES_ATTACKER_KID), &claims),
        ),
        bearer(
            "served kid, attacker key",
            &es256(ES256_ATTACKER_PEM, Some(ES_KID), &claims),
        ),
        bearer("ES256 without kid", &es256(ES256_PEM, None, &claims)),
        bearer("RS256 without kid", &rs256(None, &claims)),
        bearer(
            "not-yet-published kid",
            &es256(ES256_NEXT_PEM, Some(ES_NEXT_KID), &claims),
        ),
    ])
    .await;
    // The victim's first request loaded the JWKS; the unknown kids that followed
    // within min_refetch (30 s here) did not make the server fetch it again.
    assert_eq!(h.jwks.hits(), 1, "unknown kids hammered the JWKS endpoint");
}

#[tokio::test]
async fn kid_header_injection_is_inert() {
    let h = Harness::start().await;
    let claims = h.claims();
    let mut attacks = Vec::new();
    for kid in [
        "../../etc/passwd' OR 1=1 --",
        "../../../../../../dev/null",
        "' UNION SELECT 'test-secret' --",
        "es256-main' OR '1'='1",
        "es256-main\u{0}",
        "es256-main ",
        "ES256-MAIN",
        "http://127.0.0.1:1/jwks.json",
        "$(touch /tmp/pwned)",
        "",
        &"k".repeat(4000),
    ] {
        let shown: String = kid.chars().take(40).collect();
        attacks.push(bearer(
            format!("ES256 attacker key, kid {shown:?}"),
            &es256(ES256_ATTACKER_PEM, Some(kid), &claims),
        ));
    }
    // "kid: /dev/null" classically makes a file-reading verifier use an empty key.
    attacks.push(bearer(
        "HS256 with an empty key, kid /dev/null",
        &hs256_with(b"", Some("../../../../../../dev/null"), &claims),
    ));
    attacks.push(bearer(
        "HS256 keyed with the injected string itself",
        &hs256_with(
            b"' UNION SELECT 'k' --",
            Some("' UNION SELECT 'k' --"),
            &claims,
        ),
    ));
    h.assert_rejected(&attacks).await;
}

#[tokio::test]
async fn jku_header_is_never_followed() {
    let h = Harness::start().await;
    let attacker = KeyServer::start(&[ES_ATTACKER_KID]).await;
    let key = es256_key(ES256_ATTACKER_PEM);
    let claims = h.claims();
    let mut attacks = Vec::new();
    for kid in [Some(ES_ATTACKER_KID), Some(ES_KID), None] {
        let hdr = Header {
            jku: Some(attacker.url.clone()),
            ..header(Algorithm::ES256, kid)
        };
        attacks.push(bearer(
            format!("jku to the attacker's JWKS, kid {kid:?}"),
            &encode(&hdr, &claims, &key),
        ));
    }
    h.assert_rejected(&attacks).await;
    assert_eq!(attacker.hits(), 0, "the verifier fetched the jku URL");
}

#[tokio::test]
async fn x5u_header_is_never_followed() {
    let h = Harness::start().await;
    let attacker = KeyServer::start(&[ES_ATTACKER_KID]).await;
    let key = es256_key(ES256_ATTACKER_PEM);
    let claims = h.claims();
    let cert_url = format!("{}/cert.pem", attacker.origin);
    let mut attacks = Vec::new();
    for kid in [Some(ES_ATTACKER_KID), Some(ES_KID), None] {
        let hdr = Header {
            x5u: Some(cert_url.clone()),
            ..header(Algorithm::ES256, kid)
        };
        attacks.push(bearer(
            format!("x5u to the attacker's server, kid {kid:?}"),
            &encode(&hdr, &claims, &key),
        ));
    }
    h.assert_rejected(&attacks).await;
    assert_eq!(attacker.hits(), 0, "the verifier fetched the x5u URL");
}

#[tokio::test]
async fn embedded_jwk_header_is_not_trusted() {
    let h = Harness::start().await;
    let key = es256_key(ES256_ATTACKER_PEM);
    let claims = h.claims();
    let embedded: jsonwebtoken::jwk::Jwk = serde_json::from_value(jwk(ES_ATTACKER_KID)).unwrap();
    let mut attacks = Vec::new();
    for kid in [Some(ES_ATTACKER_KID), Some(ES_KID), None] {
        let hdr = Header {
            jwk: Some(embedded.clone()),
            ..header(Algorithm::ES256, kid)
        };
        attacks.push(bearer(
            format!("embedded attacker jwk, kid {kid:?}"),
            &encode(&hdr, &claims, &key),
        ));
    }
    h.assert_rejected(&attacks).await;
}

#[tokio::test]
async fn tampered_payloads_are_rejected() {
    let h = Harness::start().await;
    let mut other = user_claims(Uuid::new_v4());
    other["email"] = json!("mallory@example.com");
    let mut longer = h.claims();
    longer["exp"] = json!(now() + 10 * 365 * 24 * 3600);
    let mut reemailed = h.claims();
    reemailed["email"] = json!("mallory@example.com");
    let mut attacks = Vec::new();
    for (alg, valid) in [
        ("HS256", h.valid_hs256()),
        ("ES256", h.valid_es256()),
        ("RS256", h.valid_rs256()),
    ] {
        for (what, payload) in [
            ("another user's claims", &other),
            ("a later exp", &longer),
            ("another email", &reemailed),
        ] {
            attacks.push(bearer(
                format!("{alg} token, payload swapped for {what}"),
                &with_part(&valid, 1, &b64_json(payload)),
            ));
        }
        attacks.push(bearer(
            format!("{alg} token, signature removed"),
            &with_part(&valid, 2, ""),
        ));
        let sig = valid.rsplit('.').next().unwrap();
        let mut flipped = sig.as_bytes().to_vec();
        flipped[3] = if flipped[3] == b'A' { b'B' } else { b'A' };
        attacks.push(bearer(
            format!("{alg} token, one signature character changed"),
            &with_part(&valid, 2, std::str::from_utf8(&flipped).unwrap()),
        ));
    }
    h.assert_rejected(&attacks).await;
    assert_eq!(h.app.count("users").await, 1, "no user was provisioned");
}

#[tokio::test]
async fn supabase_anon_and_service_role_keys_are_not_user_credentials() {
    let h = Harness::start().await;
    let mut attacks = Vec::new();
    for role in ["anon", "service_role"] {
        // Exactly as Supabase issues its API keys: no sub, no aud.
        let key = json!({
            "iss": "supabase",
            "ref": "abcdefghijklmnopqrst",
            "role": role,
            "iat": now() - 60,
            "exp": now() + 10 * 365 * 24 * 3600,
        });
        attacks.push(bearer(format!("Supabase {role} key"), &sign_hs256(&key)));
        // Same, but with our issuer and audience, so only role and sub are wrong.
        let key = json!({
            "iss": ISSUER,
            "aud": "authenticated",
            "role": role,
            "iat": now() - 60,
            "exp": now() + 3600,
        });
        attacks.push(bearer(
            format!("{role} key with our iss and aud"),
            &sign_hs256(&key),
        ));
        // And with the victim's sub: the role alone must be refused.
        attacks.extend(
            h.signed_both_ways(&format!("victim's token with role {role}"), |c| {
                c["role"] = json!(role);
            }),
        );
    }
    attacks.extend(h.signed_both_ways("no role", |c| {
        c.as_object_mut().unwrap().remove("role");
    }));
    h.assert_rejected(&attacks).await;
}

#[tokio::test]
async fn tokens_signed_with_another_secret_are_rejected() {
    let h = Harness::start().await;
    let claims = h.claims();
    h.assert_rejected(&[
        bearer(
            "another 32+ byte secret",
            &hs256_with(b"another-secret-another-secret-another-0123", None, &claims),
        ),
        bearer(
            "the built-in development secret",
            &hs256_with(tenantry::config::DEV_JWT_SECRET.as_bytes(), None, &claims),
        ),
        bearer(
            "the test secret with one more byte",
            &hs256_with(format!("{SECRET}x").as_bytes(), None, &claims),
        ),
        bearer(
            "the test secret minus its last byte",
            &hs256_with(&SECRET.as_bytes()[..SECRET.len() - 1], None, &claims),
        ),
        bearer("an empty secret", &hs256_with(b"", None, &claims)),
    ])
    .await;
}

#[tokio::test]
async fn token_algorithm_must_match_the_key() {
    let h = Harness::start().await;
    let claims = h.claims();
    let es = es256_key(ES256_PEM);
    let rsa = rs256_key();
    let secret = EncodingKey::from_secret(SECRET.as_bytes());
    h.assert_rejected(&[
        bearer(
            "ES256 naming the RSA kid",
            &encode(&header(Algorithm::ES256, Some(RS_KID)), &claims, &es),
        ),
        bearer(
            "RS256 naming the EC kid",
            &encode(&header(Algorithm::RS256, Some(ES_KID)), &claims, &rsa),
        ),
        bearer(
            "PS256 with the RSA key and kid",
            &encode(&header(Algorithm::PS256, Some(RS_KID)), &claims, &rsa),
        ),
        bearer(
            "RS512 with the RSA key and kid",
            &encode(&header(Algorithm::RS512, Some(RS_KID)), &claims, &rsa),
        ),
        bearer(
            "HS512 with the right secret",
            &encode(&header(Algorithm::HS512, None), &claims, &secret),
        ),
        bearer(
            "HS384 with the right secret, EC kid",
            &encode(&header(Algorithm::HS384, Some(ES_KID)), &claims, &secret),
        ),
        // Header says ES256, signature is the valid HS256 one for the same payload.
        bearer(
            "header switched from HS256 to ES256",
            &with_part(
                &h.valid_hs256(),
                0,
                &b64_json(&json!({ "alg": "ES256", "typ": "JWT", "kid": ES_KID })),
            ),
        ),
        bearer(
            "header switched from ES256 to HS256",
            &with_part(
                &h.valid_es256(),
                0,
                &b64_json(&json!({ "alg": "HS256", "typ": "JWT", "kid": ES_KID })),
            ),
        ),
    ])
    .await;
}

#[tokio::test]
async fn garbage_bearer_values_are_rejected() {
    let h = Harness::start().await;
    let valid = h.valid_hs256();
    let mut huge = h.claims();
    huge["user_metadata"] = json!({ "padding": "p".repeat(9000) });
    let oversized = sign_hs256(&huge);
    assert!(oversized.len() > 8 * 1024);
    let non_json_header = format!("{}.{}.", b64(b"not json"), b64_json(&h.claims()));
    let array_header = format!("{}.{}.", b64(b"[]"), b64_json(&h.claims()));
    h.assert_rejected(&[
        bearer("a word", "garbage"),
        bearer("three dots", "..."),
        bearer("two dots", ".."),
        bearer("a.b.c", "a.b.c"),
        bearer("non base64", "!!!.@@@.###"),
        bearer("header only", "eyJhbGciOiJIUzI1NiJ9"),
        bearer("header not JSON", &non_json_header),
        bearer("header a JSON array", &array_header),
        bearer("valid token with a fourth part", &format!("{valid}.x")),
        bearer("valid token cut short", &valid[..valid.len() - 10]),
        bearer("valid token twice", &format!("{valid} {valid}")),
        bearer("validly signed but over 8 KiB", &oversized),
        bearer("10 KiB of A", &"A".repeat(10 * 1024)),
        raw("non-ASCII bytes", b"Bearer \xff\xfe\xfd".to_vec()),
    ])
    .await;
}

#[tokio::test]
async fn only_the_bearer_scheme_is_accepted() {
    let h = Harness::start().await;
    let valid = h.valid_hs256();
    h.assert_rejected(&[
        raw("Basic credentials", "Basic dXNlcjpwYXNzd29yZA=="),
        raw("Basic with a valid token", format!("Basic {valid}")),
        raw("Token scheme", format!("Token {valid}")),
        raw("Digest scheme", format!("Digest {valid}")),
        raw("no scheme", valid.clone()),
        raw("Bearer without a space", format!("Bearer{valid}")),
        raw("Bearer with a colon", format!("Bearer: {valid}")),
    ])
    .await;
}

#[tokio::test]
async fn missing_or_empty_bearer_is_rejected() {
    let h = Harness::start().await;
    h.assert_rejected(&[
        Attack {
            label: "no Authorization header".into(),
            authorization: None,
        },
        raw("empty header", ""),
        raw("Bearer alone", "Bearer"),
        raw("Bearer and a space", "Bearer "),
        raw("Bearer and spaces", "Bearer     "),
        raw("Bearer and a tab", "Bearer \t"),
    ])
    .await;
}

// ---------------------------------------------------------------------------
// Accepted JWKS tokens
// ---------------------------------------------------------------------------

/// A new user signs in with `token`; /me provisions them from the claims.
async fn assert_token_provisions_user(sign: impl Fn(&Value) -> String) {
    let h = Harness::start().await;
    let id = Uuid::new_v4();
    let email = format!("new-{}@example.com", id.simple());
    let mut claims = user_claims(id);
    claims["email"] = json!(email);
    let token = sign(&claims);
    assert_eq!(h.app.count("users").await, 1);
    let (status, me) = h
        .app
        .call(Method::GET, "/api/v1/me", Some(&token), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{me}");
    assert_eq!(me["id"], id.to_string(), "{me}");
    assert_eq!(me["email"], email, "{me}");
    let stored: Option<String> = sqlx::query_scalar("select email from users where id = $1")
        .bind(id)
        .fetch_one(&h.app.db.admin)
        .await
        .expect("the user row exists");
    assert_eq!(stored.as_deref(), Some(email.as_str()));
    assert_eq!(h.app.count("users").await, 2);
}

#[tokio::test]
async fn es256_token_with_a_served_kid_is_accepted_and_provisions_the_user() {
    assert_token_provisions_user(|c| es256(ES256_PEM, Some(ES_KID), c)).await;
}

#[tokio::test]
async fn rs256_token_with_a_served_kid_is_accepted_and_provisions_the_user() {
    assert_token_provisions_user(|c| rs256(Some(RS_KID), c)).await;
}

// ---------------------------------------------------------------------------
// JWKS cache
// ---------------------------------------------------------------------------

#[tokio::test]
async fn known_kid_is_verified_from_cache_without_refetching() {
    let jwks = KeyServer::start(&[ES_KID, RS_KID]).await;
    let v = verifier(&jwks.url, Duration::from_secs(60), Duration::from_secs(60));
    let es = es256(ES256_PEM, Some(ES_KID), &user_claims(Uuid::new_v4()));
    let rs = rs256(Some(RS_KID), &user_claims(Uuid::new_v4()));
    assert_eq!(jwks.hits(), 0, "no fetch before the first token");
    for _ in 0..5 {
        v.verify(&es).await.expect("ES256 accepted");
        v.verify(&rs).await.expect("RS256 accepted");
    }
    assert_eq!(jwks.hits(), 1, "one fetch serves every later verification");
}

#[tokio::test]
async fn unknown_kid_triggers_one_refetch_then_is_rate_limited() {
    let min_refetch = Duration::from_millis(400);
    let jwks = KeyServer::start(&[ES_KID]).await;
    let v = verifier(&jwks.url, Duration::from_secs(60), min_refetch);
    let claims = user_claims(Uuid::new_v4());
    let known = es256(ES256_PEM, Some(ES_KID), &claims);
    let unknown = |kid: &str| es256(ES256_ATTACKER_PEM, Some(kid), &claims);

    v.verify(&known).await.expect("known kid");
    assert_eq!(jwks.hits(), 1);
    tokio::time::sleep(min_refetch + Duration::from_millis(50)).await;

    assert_eq!(
        v.verify(&unknown("unknown-1")).await.unwrap_err(),
        TokenError::UnknownKey
    );
    assert_eq!(jwks.hits(), 2, "an unknown kid refetches once");
    assert_eq!(
        v.verify(&unknown("unknown-2")).await.unwrap_err(),
        TokenError::UnknownKey
    );
    assert_eq!(
        v.verify(&unknown("unknown-1")).await.unwrap_err(),
        TokenError::UnknownKey
    );
    assert_eq!(
        jwks.hits(),
        2,
        "unknown kids within min_refetch do not refetch"
    );
    v.verify(&known).await.expect("known kid still accepted");
    assert_eq!(jwks.hits(), 2);

    // The limit is a window, not a ban.
    tokio::time::sleep(min_refetch + Duration::from_millis(50)).await;
    assert_eq!(
        v.verify(&unknown("unknown-3")).await.unwrap_err(),
        TokenError::UnknownKey
    );
    assert_eq!(jwks.hits(), 3);
}

#[tokio::test]
async fn concurrent_verifications_share_one_fetch() {
    let jwks = KeyServer::start(&[ES_KID]).await;
    let v = Arc::new(verifier(
        &jwks.url,
        Duration::from_secs(60),
        Duration::from_secs(60),
    ));
    let claims = user_claims(Uuid::new_v4());
    let mut set = tokio::task::JoinSet::new();
    for i in 0..16 {
        let v = v.clone();
        let token = if i % 2 == 0 {
            es256(ES256_PEM, Some(ES_KID), &claims)
        } else {
            es256(ES256_ATTACKER_PEM, Some(&format!("flood-{i}")), &claims)
        };
        set.spawn(async move { (i, v.verify(&token).await) });
    }
    while let Some(res) = set.join_next().await {
        let (i, res) = res.unwrap();
        if i % 2 == 0 {
            res.expect("known kid accepted");
        } else {
            assert_eq!(res.unwrap_err(), TokenError::UnknownKey);
        }
    }
    assert_eq!(jwks.hits(), 1, "a burst of tokens causes one fetch");
}

#[tokio::test]
async fn rotated_in_key_is_accepted_after_one_refetch() {
    let min_refetch = Duration::from_millis(200);
    let jwks = KeyServer::start(&[ES_KID]).await;
    let v = verifier(&jwks.url, Duration::from_secs(60), min_refetch);
    let claims = user_claims(Uuid::new_v4());
    let old = es256(ES256_PEM, Some(ES_KID), &claims);
    let new = es256(ES256_NEXT_PEM, Some(ES_NEXT_KID), &claims);

    v.verify(&old).await.expect("current key");
    assert_eq!(jwks.hits(), 1);
    jwks.serve(&[ES_KID, ES_NEXT_KID]);
    tokio::time::sleep(min_refetch + Duration::from_millis(50)).await;

    let got = v.verify(&new).await.expect("rotated-in key accepted");
    assert_eq!(got.sub, claims["sub"].as_str().map(str::to_owned));
    assert_eq!(jwks.hits(), 2, "one refetch for the new kid");
    v.verify(&new).await.expect("new key, cached");
    v.verify(&old).await.expect("old key still published");
    assert_eq!(jwks.hits(), 2);
}

#[tokio::test]
async fn cached_keys_expire_after_max_age_so_withdrawn_keys_stop_working() {
    let max_age = Duration::from_millis(300);
    let jwks = KeyServer::start(&[ES_KID, ES_NEXT_KID]).await;
    let v = verifier(&jwks.url, max_age, Duration::from_millis(20));
    let claims = user_claims(Uuid::new_v4());
    let old = es256(ES256_PEM, Some(ES_KID), &claims);
    let new = es256(ES256_NEXT_PEM, Some(ES_NEXT_KID), &claims);

    v.verify(&old).await.expect("known kid");
    v.verify(&old).await.expect("known kid, cached");
    assert_eq!(jwks.hits(), 1);
    tokio::time::sleep(max_age + Duration::from_millis(50)).await;
    v.verify(&old).await.expect("known kid after max_age");
    assert_eq!(
        jwks.hits(),
        2,
        "a known kid is refetched once max_age passed"
    );

    // The issuer withdraws the old key; once the cache is stale, it stops working.
    jwks.serve(&[ES_NEXT_KID]);
    tokio::time::sleep(max_age + Duration::from_millis(50)).await;
    assert_eq!(v.verify(&old).await.unwrap_err(), TokenError::UnknownKey);
    assert_eq!(jwks.hits(), 3);
    v.verify(&new).await.expect("remaining key");
    assert_eq!(jwks.hits(), 3);
}

#[tokio::test]
async fn jwks_entries_not_for_signing_or_with_another_alg_are_ignored() {
    let jwks = KeyServer::start(&[]).await;
    let mut enc = jwk(ES_KID);
    enc["use"] = json!("enc");
    let mut wrong_alg = jwk(RS_KID);
    wrong_alg["alg"] = json!("RS512");
    let mut wrong_curve = jwk(ES_NEXT_KID);
    wrong_curve["crv"] = json!("P-384");
    jwks.serve_jwks(vec![enc, wrong_alg, wrong_curve]);
    let v = verifier(&jwks.url, Duration::from_secs(60), Duration::from_secs(60));
    let claims = user_claims(Uuid::new_v4());
    for token in [
        es256(ES256_PEM, Some(ES_KID), &claims),
        rs256(Some(RS_KID), &claims),
        es256(ES256_NEXT_PEM, Some(ES_NEXT_KID), &claims),
    ] {
        assert_eq!(v.verify(&token).await.unwrap_err(), TokenError::UnknownKey);
    }
    assert_eq!(jwks.hits(), 1);
}

#[tokio::test]
async fn unreachable_jwks_fails_closed() {
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let v = verifier(
        &format!("http://{closed}/jwks.json"),
        Duration::from_secs(60),
        Duration::from_secs(60),
    );
    let claims = user_claims(Uuid::new_v4());
    let started = std::time::Instant::now();
    let err = v
        .verify(&es256(ES256_PEM, Some(ES_KID), &claims))
        .await
        .unwrap_err();
    assert_eq!(err, TokenError::UnknownKey);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "no hang on a refused connection"
    );
    // HS256 verification does not depend on the JWKS.
    v.verify(&sign_hs256(&claims))
        .await
        .expect("HS256 still works");
}

#[tokio::test]
async fn key_rotation_over_http_fetches_once_per_new_kid() {
    let min_refetch = Duration::from_millis(200);
    let jwks = KeyServer::start(&[ES_KID]).await;
    let db = TestDb::new().await;
    let config = test_config(
        &db.app_url,
        &[("JWKS_URL", jwks.url.as_str()), ("JWT_ISSUER", ISSUER)],
    );
    let verifier = Verifier::with_jwks_timing(&config.jwt, Duration::from_secs(600), min_refetch)
        .expect("verifier");
    let app = TestApp::spawn_on(db, config, verifier).await;
    let (ann, bob) = (Uuid::new_v4(), Uuid::new_v4());
    let ann_token = es256(ES256_PEM, Some(ES_KID), &user_claims(ann));
    let bob_token = es256(ES256_NEXT_PEM, Some(ES_NEXT_KID), &user_claims(bob));

    for _ in 0..3 {
        let (status, me) = app
            .call(Method::GET, "/api/v1/me", Some(&ann_token), None)
            .await;
        assert_eq!(status, StatusCode::OK, "{me}");
        assert_eq!(me["id"], ann.to_string());
    }
    assert_eq!(jwks.hits(), 1, "repeated requests reuse the cached key");

    jwks.serve(&[ES_KID, ES_NEXT_KID]);
    tokio::time::sleep(min_refetch + Duration::from_millis(50)).await;
    for _ in 0..3 {
        let (status, me) = app
            .call(Method::GET, "/api/v1/me", Some(&bob_token), None)
            .await;
        assert_eq!(status, StatusCode::OK, "{me}");
        assert_eq!(me["id"], bob.to_string());
    }
    assert_eq!(jwks.hits(), 2, "the new kid caused exactly one refetch");
    let (status, _) = app
        .call(Method::GET, "/api/v1/me", Some(&ann_token), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(jwks.hits(), 2);
}
