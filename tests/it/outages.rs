//! Outages of the servers Tenantry depends on, on servers the test owns:
//! a private Postgres cluster stopped (immediate mode, as a crash) and
//! started again under concurrent writers, and a private Redis stopped and
//! started again. Requests fail fast and clean (503 with `Retry-After`,
//! never 500, never a hang), nothing acknowledged is lost, and the server
//! recovers by itself.

use crate::common::cluster::{PgCluster, RedisServer};
use crate::common::gotrue::*;
use crate::common::smtp::SmtpSink;
use crate::common::*;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sqlx::{Connection, PgConnection};
use tenantry::auth::jwt::Verifier;
use uuid::Uuid;

/// The bound: no request takes longer than this, outage or not.
const MAX_LATENCY: Duration = Duration::from_secs(5);
/// How long Postgres stays down.
const OUTAGE: Duration = Duration::from_secs(4);
/// The load: four writers creating orgs (the issue's), and beside them
/// the other paths a request takes to Postgres: credit spends (a group
/// commit), password sign-ins (the auth server), and a reader.
const LOAD: [Kind; 8] = [
    Kind::CreateOrg,
    Kind::CreateOrg,
    Kind::CreateOrg,
    Kind::CreateOrg,
    Kind::Spend,
    Kind::Spend,
    Kind::SignIn,
    Kind::Read,
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// `POST /api/v1/orgs`: 201 with the org's id.
    CreateOrg,
    /// `POST /api/v1/orgs/{org}/credits/spend`: 200 with the ledger transaction's id.
    Spend,
    /// `POST /auth/v1/token?grant_type=password`: 200 with a new session.
    SignIn,
    /// `GET /api/v1/orgs/{org}`: 200.
    Read,
}

impl Kind {
    fn success(self) -> u16 {
        match self {
            Kind::CreateOrg => 201,
            _ => 200,
        }
    }
}

/// What every worker of the load needs.
struct Load {
    client: reqwest::Client,
    base: String,
    org: Uuid,
    owner: TestUser,
    signer: String,
    anon: String,
}

/// One request of the load.
#[derive(Debug, Clone)]
struct Outcome {
    kind: Kind,
    worker: usize,
    /// When it was sent, since the test began.
    sent: Duration,
    latency: Duration,
    /// None: no HTTP answer at all (the error is in `code`).
    status: Option<u16>,
    code: Option<String>,
    retry_after: Option<String>,
    /// What a success wrote: the org, the spend's ledger transaction or the session.
    wrote: Option<Uuid>,
}

impl Outcome {
    fn succeeded(&self) -> bool {
        self.status == Some(self.kind.success())
    }
}

/// One `/readyz` probe.
#[derive(Debug, Clone, Copy)]
struct Probe {
    sent: Duration,
    latency: Duration,
    status: Option<u16>,
}

fn session_of(access_token: &str) -> Option<Uuid> {
    use base64::Engine as _;
    let payload = access_token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()?;
    let claims: Value = serde_json::from_slice(&bytes).ok()?;
    claims["session_id"].as_str()?.parse().ok()
}

async fn send_one(load: &Load, kind: Kind, worker: usize, n: usize, t0: Instant) -> Outcome {
    let base = &load.base;
    let req = match kind {
        Kind::CreateOrg => load
            .client
            .post(format!("{base}/api/v1/orgs"))
            .bearer_auth(&load.owner.token)
            .json(&json!({ "name": format!("Worker {worker} org {n}") })),
        Kind::Spend => load
            .client
            .post(format!("{base}/api/v1/orgs/{}/credits/spend", load.org))
            .bearer_auth(&load.owner.token)
            .header("Idempotency-Key", Uuid::new_v4().to_string())
            .json(&json!({ "amount": 1 })),
        Kind::SignIn => load
            .client
            .post(format!("{base}/auth/v1/token?grant_type=password"))
            .header("apikey", &load.anon)
            .json(&json!({ "email": load.signer, "password": PASSWORD })),
        Kind::Read => load
            .client
            .get(format!("{base}/api/v1/orgs/{}", load.org))
            .bearer_auth(&load.owner.token),
    };
    let sent = t0.elapsed();
    let started = Instant::now();
    let mut out = Outcome {
        kind,
        worker,
        sent,
        latency: Duration::ZERO,
        status: None,
        code: None,
        retry_after: None,
        wrote: None,
    };
    let res = match req.send().await {
        Ok(r) => r,
        Err(e) => {
            out.latency = started.elapsed();
            out.code = Some(format!("{e}"));
            return out;
        }
    };
    let status = res.status().as_u16();
    out.retry_after = res
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body: Value = match res.bytes().await {
        Ok(b) => serde_json::from_slice(&b).unwrap_or(Value::Null),
        Err(e) => {
            out.latency = started.elapsed();
            out.code = Some(format!("body: {e}"));
            return out;
        }
    };
    out.latency = started.elapsed();
    out.status = Some(status);
    out.code = body["code"]
        .as_str()
        .or(body["error_code"].as_str())
        .map(str::to_owned);
    if out.succeeded() {
        out.wrote = match kind {
            Kind::CreateOrg | Kind::Spend => body["id"].as_str().and_then(|s| s.parse().ok()),
            Kind::SignIn => body["access_token"].as_str().and_then(session_of),
            Kind::Read => None,
        };
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_stopped_under_writers_answers_503_fast_loses_nothing_and_recovers() {
    let cluster = PgCluster::start();
    // The pool `tenantry serve` makes, with the default acquire timeout.
    let acquire_timeout = test_config(&cluster.admin_url(), &[]).db_acquire_timeout;
    assert_eq!(acquire_timeout, Duration::from_secs(2));
    let db = TestDb::on_cluster(&cluster.admin_url(), 8, acquire_timeout).await;
    let db_url = cluster.url(&db.name);
    let sink = SmtpSink::start().await;
    let smtp = sink.url();
    let config = test_config(
        &db.app_url,
        &[
            ("SMTP_URL", smtp.as_str()),
            ("AUTH_KEYS_SECRET", KEYS_SECRET),
            ("AUTH_AUTOCONFIRM", "true"),
            // One client signs in all the time.
            ("AUTH_IP_LIMIT_PER_MIN", "100000"),
        ],
    );
    let verifier = Verifier::new(&config.jwt).expect("verifier");
    let app = TestApp::spawn_on(db, config, verifier).await;
    // The relay, worker and scheduler run through the outage too, as in
    // `tenantry dev`.
    let worker = app.start_worker();
    let owner = app.user("owner@outage.example");
    let org = app.create_org(&owner, "Outage").await;
    let res = app
        .client
        .post(format!("{}/api/v1/orgs/{org}/credits/grants", app.base))
        .bearer_auth(service_key())
        .header("Idempotency-Key", Uuid::new_v4().to_string())
        .json(&json!({ "amount": 1_000_000, "source": "promotion" }))
        .send()
        .await
        .unwrap();
    let (s, body) = (res.status(), res.text().await.unwrap());
    assert_eq!(s, StatusCode::CREATED, "{body}");
    let signer = "signer@outage.example";
    let r = signup(&app, signer).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let (s, body) = invite(&app, org, &owner, "before@outage.example").await;
    assert_eq!(s, StatusCode::CREATED, "{body}");
    sink.wait_for(1, Duration::from_secs(30)).await;

    let t0 = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let outcomes: Arc<Mutex<Vec<Outcome>>> = Default::default();
    let probes: Arc<Mutex<Vec<Probe>>> = Default::default();
    let load = Arc::new(Load {
        client: reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap(),
        base: app.base.clone(),
        org,
        owner: owner.clone(),
        signer: signer.to_owned(),
        anon: anon_key(),
    });

    let mut workers = Vec::new();
    for (w, kind) in LOAD.into_iter().enumerate() {
        let (load, stop, outcomes) = (load.clone(), stop.clone(), outcomes.clone());
        workers.push(tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let out = send_one(&load, kind, w, n, t0).await;
                let ok = out.succeeded();
                outcomes.lock().unwrap().push(out);
                if !ok {
                    // Not a hot loop while the database is away.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }));
    }
    let poller = {
        let (load, stop, probes) = (load.clone(), stop.clone(), probes.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let sent = t0.elapsed();
                let status = load
                    .client
                    .get(format!("{}/readyz", load.base))
                    .send()
                    .await
                    .ok()
                    .map(|r| r.status().as_u16());
                probes.lock().unwrap().push(Probe {
                    sent,
                    latency: t0.elapsed() - sent,
                    status,
                });
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };

    // Every worker succeeds at least `n` times from `after` on.
    let all_succeed = |n: usize, after: Duration| {
        let o = outcomes.lock().unwrap();
        let done = (0..LOAD.len()).all(|w| {
            o.iter()
                .filter(|o| o.worker == w && o.sent >= after && o.succeeded())
                .count()
                >= n
        });
        async move { done.then_some(()) }
    };
    eventually(30, "every worker succeeding before the outage", || {
        all_succeed(3, Duration::ZERO)
    })
    .await;

    let stopped_at = t0.elapsed();
    tokio::task::block_in_place(|| cluster.stop_immediate());
    eventually(15, "/readyz answering 503 while Postgres is down", || {
        let seen = probes
            .lock()
            .unwrap()
            .iter()
            .any(|p| p.sent >= stopped_at && p.status == Some(503));
        async move { seen.then_some(()) }
    })
    .await;
    // A token naming a key this replica does not hold: the keys cannot be
    // read now, so the answer is 503 (retry), not 401 (the token may well
    // be good). After the outage the same token is 401.
    let unknown_kid = unknown_key_token();
    let me = |token: String| {
        let (client, base) = (load.client.clone(), load.base.clone());
        async move {
            let res = client
                .get(format!("{base}/api/v1/me"))
                .bearer_auth(token)
                .send()
                .await
                .unwrap();
            (res.status(), res.headers().contains_key("retry-after"))
        }
    };
    assert_eq!(
        me(unknown_kid.clone()).await,
        (StatusCode::SERVICE_UNAVAILABLE, true)
    );
    // The outage itself is a deliberate pause.
    let down_for = t0.elapsed() - stopped_at;
    if down_for < OUTAGE {
        tokio::time::sleep(OUTAGE - down_for).await;
    }
    tokio::task::block_in_place(|| cluster.start_server());
    let restarted_at = t0.elapsed();

    eventually(30, "/readyz answering 200 after the restart", || {
        let seen = probes
            .lock()
            .unwrap()
            .iter()
            .any(|p| p.sent >= restarted_at && p.status == Some(200));
        async move { seen.then_some(()) }
    })
    .await;
    assert_eq!(me(unknown_kid).await.0, StatusCode::UNAUTHORIZED);
    eventually(
        30,
        "every worker succeeding again after the restart",
        || all_succeed(3, restarted_at),
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    poller.await.unwrap();

    let outcomes = outcomes.lock().unwrap().clone();
    let probes = probes.lock().unwrap().clone();
    let ok = outcomes.iter().filter(|o| o.succeeded()).count();
    let unavailable = outcomes.iter().filter(|o| o.status == Some(503)).count();
    let slowest = outcomes.iter().map(|o| o.latency).max().unwrap();
    println!(
        "{} requests: {ok} succeeded, {unavailable} answered 503; slowest {slowest:?}; \
         Postgres down from {stopped_at:?} to {restarted_at:?}",
        outcomes.len(),
    );

    // Every answer is a success or a clean 503: no 500, no dropped connection.
    let unclean: Vec<&Outcome> = outcomes
        .iter()
        .filter(|o| match o.status {
            _ if o.succeeded() => false,
            Some(503) => {
                o.retry_after.is_none()
                    || !matches!(
                        o.code.as_deref(),
                        // The API's problems; the auth server's GoTrue errors.
                        Some("unavailable" | "busy" | "request_timeout")
                    )
            }
            _ => true,
        })
        .collect();
    assert!(unclean.is_empty(), "unclean answers: {unclean:#?}");
    // The outage was seen (the test can fail), and fast.
    assert!(unavailable > 0, "no request saw the outage");
    let slow: Vec<&Outcome> = outcomes
        .iter()
        .filter(|o| o.latency > MAX_LATENCY)
        .collect();
    assert!(slow.is_empty(), "requests over {MAX_LATENCY:?}: {slow:#?}");
    let slow: Vec<&Probe> = probes
        .iter()
        .filter(|p| p.latency > MAX_LATENCY || p.status.is_none())
        .collect();
    assert!(slow.is_empty(), "slow or failed /readyz: {slow:#?}");

    // Nothing acknowledged was lost.
    let mut conn = PgConnection::connect(&db_url).await.unwrap();
    for (kind, sql) in [
        (
            Kind::CreateOrg,
            "select count(*) from organizations where id = any($1)",
        ),
        (
            Kind::Spend,
            "select count(distinct txn) from credit_ledger where kind = 'spend' and txn = any($1)",
        ),
        (
            Kind::SignIn,
            "select count(*) from app.auth_sessions where id = any($1)",
        ),
    ] {
        let acknowledged: Vec<&Outcome> = outcomes
            .iter()
            .filter(|o| o.kind == kind && o.succeeded())
            .collect();
        let ids: Vec<Uuid> = acknowledged.iter().filter_map(|o| o.wrote).collect();
        assert_eq!(
            ids.len(),
            acknowledged.len(),
            "{kind:?}: a success without an id"
        );
        let present: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
            .bind(&ids)
            .fetch_one(&mut conn)
            .await
            .unwrap();
        assert_eq!(
            present as usize,
            ids.len(),
            "{kind:?}: acknowledged writes lost"
        );
    }
    conn.close().await.ok();

    // The background side recovered too: a job enqueued now runs.
    let (s, body) = invite(&app, org, &owner, "after@outage.example").await;
    assert_eq!(s, StatusCode::CREATED, "{body}");
    let got = sink.wait_for(2, Duration::from_secs(30)).await;
    assert_eq!(got[1].rcpt_to, ["after@outage.example"]);
    worker.stop().await;
}

async fn timed<T>(what: &str, fut: impl Future<Output = T>) -> T {
    let started = Instant::now();
    let out = fut.await;
    let took = started.elapsed();

    assert!(took <= MAX_LATENCY, "{what} took {took:?}");
    out
}

/// An ES256 token in Tenantry's shape, signed by a key nobody published.
fn unknown_key_token() -> String {
    let key = jsonwebtoken::EncodingKey::from_ec_pem(include_bytes!("fixtures/es256_attacker.pem"))
        .unwrap();
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    header.kid = Some(format!("unknown-{}", Uuid::new_v4().simple()));
    let mut claims = claims_for(Uuid::new_v4(), "kid@outage.example");
    claims["iss"] = json!("http://127.0.0.1:8080/auth/v1");
    jsonwebtoken::encode(&header, &claims, &key).unwrap()
}

async fn outbox_rows(app: &TestApp) -> i64 {
    app.count("app.job_outbox").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_stopped_api_answers_jobs_wait_in_the_outbox_and_sign_ins_work() {
    let mut redis = RedisServer::start();
    let sink = SmtpSink::start().await;
    let (redis_url, smtp) = (redis.url(), sink.url());
    let app = TestApp::spawn_with(
        &[
            ("REDIS_URL", redis_url.as_str()),
            ("SMTP_URL", smtp.as_str()),
            ("AUTH_KEYS_SECRET", KEYS_SECRET),
            ("AUTH_AUTOCONFIRM", "true"),
        ],
        5,
    )
    .await;
    let worker = app.start_worker();
    let owner = app.user("owner@redis-outage.example");
    let org = app.create_org(&owner, "Redis Outage").await;
    let members = format!("/api/v1/orgs/{org}/members");

    // With Redis up: reads (cached), a sign-up, and an invitation whose
    // email goes out through the broker.
    for _ in 0..2 {
        let (s, body) = app.get(&members, &owner).await;
        assert_eq!(s, StatusCode::OK, "{body}");
    }
    let r = signup(&app, "ann@redis-outage.example").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let (s, body) = invite(&app, org, &owner, "before@redis-outage.example").await;
    assert_eq!(s, StatusCode::CREATED, "{body}");
    let got = sink.wait_for(1, Duration::from_secs(30)).await;
    assert_eq!(got[0].rcpt_to, ["before@redis-outage.example"]);
    eventually(10, "an empty outbox", || async {
        (outbox_rows(&app).await == 0).then_some(())
    })
    .await;

    redis.stop();

    // Reads answer, from Postgres, without waiting on Redis.
    for _ in 0..3 {
        let (s, body) = timed("a read", app.get(&members, &owner)).await;
        assert_eq!(s, StatusCode::OK, "{body}");
    }
    // A write that enqueues a job answers; its job waits in the outbox
    // (the relay, running, cannot hand it to the broker).
    let (s, body) = timed(
        "an invitation",
        invite(&app, org, &owner, "during@redis-outage.example"),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{body}");
    assert_eq!(outbox_rows(&app).await, 1);
    let (s, body) = timed(
        "a rename",
        app.patch(
            &format!("/api/v1/orgs/{org}"),
            &owner,
            json!({ "name": "Renamed" }),
        ),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let (s, body) = timed(
        "a read after a write",
        app.get(&format!("/api/v1/orgs/{org}"), &owner),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(body["name"], "Renamed");

    // Sign-ups and sign-ins work: their limits count in this process.
    let r = timed(
        "a sign-in",
        login(&app, "ann@redis-outage.example", PASSWORD),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    // The brute-force limit still holds, counted in this process: ten
    // failures a minute per (address, client), then even the right
    // password waits.
    for _ in 0..10 {
        let r = timed(
            "a wrong password",
            login(&app, "ann@redis-outage.example", "wrong password"),
        )
        .await;
        assert_error(&r, 400, "invalid_credentials");
    }
    let r = timed(
        "a sign-in past the limit",
        login(&app, "ann@redis-outage.example", PASSWORD),
    )
    .await;
    assert_error(&r, 429, "over_request_rate_limit");
    let r = timed("a sign-up", signup(&app, "bob@redis-outage.example")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let r = timed(
        "a sign-in",
        login(&app, "bob@redis-outage.example", PASSWORD),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let bob_token = r.body["access_token"].as_str().unwrap().to_owned();
    let r = timed(
        "the user",
        auth(&app, Method::GET, "/user", Some(&bob_token), None),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["email"], "bob@redis-outage.example");
    let (s, body) = timed(
        "an org of a signed-in user",
        app.call(
            Method::POST,
            "/api/v1/orgs",
            Some(&bob_token),
            Some(json!({ "name": "Bob's" })),
        ),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{body}");

    // Still waiting, and nothing was sent.
    assert_eq!(outbox_rows(&app).await, 1);
    assert_eq!(sink.messages().len(), 1);

    // Redis is back: the outbox drains and the email goes out.
    redis.start_again();
    let got = sink.wait_for(2, Duration::from_secs(60)).await;
    assert!(
        got.iter()
            .any(|m| m.rcpt_to == ["during@redis-outage.example"]),
        "{got:#?}"
    );
    eventually(30, "an empty outbox", || async {
        (outbox_rows(&app).await == 0).then_some(())
    })
    .await;

    // The cache and the sign-in limits use Redis again, by themselves (it
    // came back empty: whatever is there now was written since).
    let prefix = app.cache_prefix.clone();
    eventually(30, "reads filling the cache again", || async {
        let (s, body) = timed("a read after the outage", app.get(&members, &owner)).await;
        assert_eq!(s, StatusCode::OK, "{body}");
        (!redis_keys(&redis_url, &format!("{prefix}:org:*"))
            .await
            .is_empty())
        .then_some(())
    })
    .await;
    eventually(30, "sign-ins counted in Redis again", || async {
        login(&app, "bob@redis-outage.example", PASSWORD).await;
        tokio::time::sleep(Duration::from_millis(250)).await;
        (!redis_keys(&redis_url, &format!("{prefix}:rl:*"))
            .await
            .is_empty())
        .then_some(())
    })
    .await;
    let r = timed(
        "a sign-in after the outage",
        login(&app, "bob@redis-outage.example", PASSWORD),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    worker.stop().await;
}

/// The keys matching `pattern` in the Redis at `url` (none when it cannot be asked).
async fn redis_keys(url: &str, pattern: &str) -> Vec<String> {
    let Ok(client) = redis::Client::open(url) else {
        return Vec::new();
    };
    let Ok(mut conn) = client.get_multiplexed_async_connection().await else {
        return Vec::new();
    };
    redis::cmd("KEYS")
        .arg(pattern)
        .query_async(&mut conn)
        .await
        .unwrap_or_default()
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

async fn invite(app: &TestApp, org: Uuid, inviter: &TestUser, email: &str) -> (StatusCode, Value) {
    app.post(
        &format!("/api/v1/orgs/{org}/invitations"),
        inviter,
        json!({ "email": email, "role": "member" }),
    )
    .await
}
