//! Test harness: each test gets a fresh database (migrated by the owner role,
//! the API connecting as the non-superuser app role), the real router served
//! over real HTTP on a random port, and helpers that read like user stories.
#![allow(dead_code)]

pub mod billing;
pub mod cluster;
pub mod gotrue;
pub mod smtp;
pub mod stripe;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection, PgConnection, PgPool};
use tenantry::app::AppState;
use tenantry::auth::jwt::Verifier;
use tenantry::config::{Config, Profile};
use uuid::Uuid;

pub const SECRET: &str = "test-secret-test-secret-test-secret-0123456789";
pub const APP_ROLE: &str = "tenantry_test_api";

/// Superuser URL used to create and drop test databases.
pub fn admin_url() -> String {
    std::env::var("TEST_ADMIN_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

fn with_db(url: &str, db: &str) -> String {
    let mut u = url::Url::parse(url).expect("admin url");
    u.set_path(&format!("/{db}"));
    u.to_string()
}

/// A fresh, migrated database, dropped when the value is dropped.
pub struct TestDb {
    pub name: String,
    /// Superuser connection pool on the test database (setup and inspection).
    pub admin: PgPool,
    /// The app login role's pool (what the API uses).
    pub app: PgPool,
    pub app_url: String,
    pub owner_url: String,
    /// Superuser URL of the cluster's maintenance database (drops this one).
    admin_url: String,
}

impl TestDb {
    pub async fn new() -> TestDb {
        Self::with_app_pool_size(5).await
    }

    pub async fn with_app_pool_size(size: u32) -> TestDb {
        Self::create(&admin_url(), |url| async move {
            PgPoolOptions::new()
                .max_connections(size)
                .connect(&url)
                .await
                .unwrap()
        })
        .await
    }

    /// A fresh database on the cluster of `admin_url` whose app pool is the
    /// one `tenantry serve` makes (`connect_pool`: short acquire timeout, no
    /// ping on checkout).
    pub async fn on_cluster(admin_url: &str, size: u32, acquire_timeout: Duration) -> TestDb {
        Self::create(admin_url, |url| async move {
            tenantry::core::db::connect_pool(&url, size, acquire_timeout)
                .await
                .expect("app pool")
        })
        .await
    }

    async fn create<F, Fut>(admin_url: &str, app_pool: F) -> TestDb
    where
        F: FnOnce(String) -> Fut,
        Fut: std::future::Future<Output = PgPool>,
    {
        let name = format!("tenantry_test_{}", Uuid::new_v4().simple());
        let mut conn = PgConnection::connect(admin_url)
            .await
            .expect("connect admin");
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("create database \"{name}\"")))
            .execute(&mut conn)
            .await
            .expect("create test database");
        conn.close().await.ok();
        let owner_url = with_db(admin_url, &name);
        let app_url = {
            let mut u = url::Url::parse(&owner_url).unwrap();
            u.set_username(APP_ROLE).unwrap();
            u.set_password(Some(APP_ROLE)).unwrap();
            u.to_string()
        };
        tenantry::core::db::migrate_up(&owner_url, &app_url)
            .await
            .expect("migrate");
        let admin = PgPoolOptions::new()
            .max_connections(3)
            .connect(&owner_url)
            .await
            .unwrap();
        let app = app_pool(app_url.clone()).await;
        TestDb {
            name,
            admin,
            app,
            app_url,
            owner_url,
            admin_url: admin_url.to_owned(),
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        let admin_url = self.admin_url.clone();
        // Drop the database from a thread with its own runtime: Drop cannot await.
        // `with (force)` ends the pools' connections; the pools belong to the
        // test's runtime and are not touched from here.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                if let Ok(mut c) = PgConnection::connect(&admin_url).await {
                    let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                        "drop database if exists \"{name}\" with (force)"
                    )))
                    .execute(&mut c)
                    .await;
                }
            });
        })
        .join();
    }
}

/// An in-process worker (relay, worker, scheduler).
pub struct Worker {
    stop: tokio::sync::watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Worker {
    /// Stops taking jobs and waits for running ones (the grace period).
    pub async fn stop(mut self) {
        let _ = self.stop.send(true);
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

/// A Supabase-style `service_role` key signed with the test secret: a
/// platform administrator.
pub fn service_key() -> String {
    let claims = json!({
        "iss": "supabase",
        "role": "service_role",
        "iat": chrono_now(),
        "exp": chrono_now() + 3600,
    });
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

fn chrono_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Polls `check` every 50 ms until it returns Some, or panics after `secs`.
pub async fn eventually<T, F, Fut>(secs: u64, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out after {secs} s waiting for {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// A signed-in user: id, email and a valid access token.
#[derive(Clone, Debug)]
pub struct TestUser {
    pub id: Uuid,
    pub email: String,
    pub token: String,
}

pub struct TestApp {
    pub addr: SocketAddr,
    /// Prefix of this app's Redis keys (one per test).
    pub cache_prefix: String,
    pub base: String,
    pub client: reqwest::Client,
    pub db: TestDb,
    pub state: AppState,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.server.abort();
    }
}

pub fn test_config(database_url: &str, extra: &[(&str, &str)]) -> Config {
    let mut vars: HashMap<String, String> = HashMap::from([
        ("DATABASE_URL".into(), database_url.into()),
        ("JWT_SECRET".into(), SECRET.into()),
        ("LOG_FORMAT".into(), "pretty".into()),
        ("BIND_ADDR".into(), "127.0.0.1:0".into()),
        (
            "CACHE_PREFIX".into(),
            format!("test-{}", Uuid::new_v4().simple()),
        ),
        (
            "JOBS_PREFIX".into(),
            format!("test-{}", Uuid::new_v4().simple()),
        ),
        (
            "REPORTS_STORE".into(),
            std::env::temp_dir()
                .join(format!("tenantry-test-reports-{}", Uuid::new_v4().simple()))
                .to_string_lossy()
                .into_owned(),
        ),
        // Short leases so a killed worker's jobs come back quickly in tests.
        ("JOB_LEASE_SECS".into(), "3".into()),
    ]);
    for (k, v) in extra {
        vars.insert((*k).into(), (*v).into());
    }
    Config::from_lookup(Profile::Production, |k| vars.get(k).cloned()).expect("test config")
}

impl TestApp {
    pub async fn spawn() -> TestApp {
        Self::spawn_with(&[], 5).await
    }

    /// Spawns with extra configuration variables and an app pool of `pool_size`.
    pub async fn spawn_with(extra: &[(&str, &str)], pool_size: u32) -> TestApp {
        let db = TestDb::with_app_pool_size(pool_size).await;
        let config = test_config(&db.app_url, extra);
        let verifier = Verifier::new(&config.jwt).expect("verifier");
        Self::spawn_on(db, config, verifier).await
    }

    pub async fn spawn_on(db: TestDb, config: Config, verifier: Verifier) -> TestApp {
        let prefix = config.cache_prefix.clone();
        let limits = tenantry::app::server_limits(&config);
        let state = AppState::new(db.app.clone(), config, verifier)
            .await
            .expect("app state");
        let app = tenantry::app::router(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        // The server loop `tenantry serve` runs (peer addresses, header timeout).
        let server = tokio::spawn(async move {
            tenantry::core::http_server::serve(listener, app, limits, std::future::pending())
                .await
                .unwrap();
        });
        TestApp {
            addr,
            cache_prefix: prefix,
            base: format!("http://{addr}"),
            client: reqwest::Client::new(),
            db,
            state,
            server,
        }
    }

    /// Runs the relay, a worker and the scheduler in this process until the
    /// returned handle is stopped or dropped.
    pub fn start_worker(&self) -> Worker {
        let (stop, stopped) = tenantry::jobs::worker::Shutdown::new();
        let task = tokio::spawn(tenantry::app::background::run(
            self.state.jobs.clone(),
            stopped,
        ));
        Worker {
            stop,
            task: Some(task),
        }
    }

    /// A new user with a token signed by the test secret.
    pub fn user(&self, email: &str) -> TestUser {
        let id = Uuid::new_v4();
        TestUser {
            id,
            email: email.to_owned(),
            token: token_for(id, email),
        }
    }

    /// Sends a request; `token` may be None (anonymous). Returns status and JSON body
    /// (Value::Null when the body is empty or not JSON).
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = self
            .client
            .request(method, format!("{}{}", self.base, path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let res = req.send().await.expect("request");
        let status = res.status();
        let bytes = res.bytes().await.unwrap_or_default();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    pub async fn get(&self, path: &str, user: &TestUser) -> (StatusCode, Value) {
        self.call(Method::GET, path, Some(&user.token), None).await
    }
    pub async fn post(&self, path: &str, user: &TestUser, body: Value) -> (StatusCode, Value) {
        self.call(Method::POST, path, Some(&user.token), Some(body))
            .await
    }
    pub async fn patch(&self, path: &str, user: &TestUser, body: Value) -> (StatusCode, Value) {
        self.call(Method::PATCH, path, Some(&user.token), Some(body))
            .await
    }
    pub async fn delete(&self, path: &str, user: &TestUser) -> (StatusCode, Value) {
        self.call(Method::DELETE, path, Some(&user.token), None)
            .await
    }

    /// Creates an org owned by `owner` and returns its id.
    pub async fn create_org(&self, owner: &TestUser, name: &str) -> Uuid {
        let (status, body) = self
            .post("/api/v1/orgs", owner, json!({ "name": name }))
            .await;
        assert_eq!(status, StatusCode::CREATED, "create org: {body}");
        body["id"].as_str().unwrap().parse().unwrap()
    }

    /// Invites `user` to `org` with `role` (as `inviter`) and accepts the invitation.
    pub async fn add_member(&self, org: Uuid, inviter: &TestUser, user: &TestUser, role: &str) {
        let (status, inv) = self
            .post(
                &format!("/api/v1/orgs/{org}/invitations"),
                inviter,
                json!({ "email": user.email, "role": role }),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "invite: {inv}");
        let (status, body) = self
            .post(
                "/api/v1/invitations/accept",
                user,
                json!({ "token": inv["token"] }),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "accept: {body}");
    }

    /// A member's role as stored (superuser, bypassing RLS); None if not a member.
    pub async fn stored_role(&self, org: Uuid, user: Uuid) -> Option<String> {
        sqlx::query_scalar("select role from memberships where org_id = $1 and user_id = $2")
            .bind(org)
            .bind(user)
            .fetch_optional(&self.db.admin)
            .await
            .unwrap()
    }

    /// Whether the org row exists (superuser, bypassing RLS).
    pub async fn org_exists(&self, org: Uuid) -> bool {
        sqlx::query_scalar("select exists (select 1 from organizations where id = $1)")
            .bind(org)
            .fetch_one(&self.db.admin)
            .await
            .unwrap()
    }

    /// Lifts the free plan's seat limit, for tests whose orgs need more
    /// members than the default free plan allows.
    pub async fn unlimited_seats(&self) {
        sqlx::query("update plans set seat_limit = null where code = 'free'")
            .execute(&self.db.admin)
            .await
            .unwrap();
    }

    /// Counts rows of a table as the superuser (ignores RLS).
    pub async fn count(&self, table: &str) -> i64 {
        sqlx::query_scalar(sqlx::AssertSqlSafe(format!("select count(*) from {table}")))
            .fetch_one(&self.db.admin)
            .await
            .unwrap()
    }

    /// How many times `action` was audited in `org` (superuser, ignores RLS).
    pub async fn audit_count(&self, org: Uuid, action: &str) -> i64 {
        sqlx::query_scalar("select count(*) from audit_log where org_id = $1 and action = $2")
            .bind(org)
            .bind(action)
            .fetch_one(&self.db.admin)
            .await
            .unwrap()
    }

    /// A fingerprint of every tenant table's contents, to prove a request changed nothing.
    pub async fn snapshot(&self) -> String {
        let mut out = String::new();
        for t in [
            "users",
            "organizations",
            "roles",
            "memberships",
            "invitations",
            "audit_log",
            "job_records",
            "import_rows",
            "import_files",
            "app.job_outbox",
            "api_keys",
            "subscriptions",
            "credit_accounts",
            "credit_grants",
            "credit_holds",
            "credit_ledger",
            "idempotency_keys",
        ] {
            let v: Option<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                "select md5(coalesce(string_agg(t::text, '|' order by t::text), '')) from {t} t"
            )))
            .fetch_one(&self.db.admin)
            .await
            .unwrap();
            out.push_str(&format!("{t}:{} ", v.unwrap_or_default()));
        }
        out
    }
}

/// Signs claims with the test HS256 secret.
pub fn sign_hs256(claims: &Value) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

/// Supabase-shaped claims for a user, valid for an hour.
pub fn claims_for(id: Uuid, email: &str) -> Value {
    let now = chrono::Utc::now().timestamp();
    json!({
        "sub": id.to_string(),
        "email": email,
        "role": "authenticated",
        "aud": "authenticated",
        "iat": now,
        "exp": now + 3600,
        "aal": "aal1",
        "session_id": Uuid::new_v4().to_string(),
        "is_anonymous": false,
        "app_metadata": { "provider": "email" },
        "user_metadata": {}
    })
}

pub fn token_for(id: Uuid, email: &str) -> String {
    sign_hs256(&claims_for(id, email))
}
