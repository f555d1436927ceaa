//! Tenant-scoped read cache in Redis, with invalidation by epoch.
//!
//! Every org has an epoch: a random token in Redis. Cached values live under
//! keys that include the org and its epoch (`{prefix}:org:{<org>}:e<epoch>:...`),
//! so replacing the token after a committed change makes every cached value of
//! that org unreachable at once; the old entries expire on their own. A random
//! token (not a counter) can never come back: an epoch lost to eviction or a
//! Redis restart just means a miss, never an old entry revived. A reader takes
//! the epoch, its membership entry and the cached body in one round trip (a
//! Lua script).
//!
//! The cache is an accelerator, never the source of truth: if Redis is slow
//! or down, lookups miss within a short timeout and requests go to Postgres.
//! Entries live `CACHE_TTL_SECS` (default 5 s). A reader whose membership entry
//! has expired goes to Postgres and refreshes both its membership and the
//! body; so if an invalidation cannot reach Redis (it is retried in the
//! background), stale reads and stale authorization end within that TTL.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use uuid::Uuid;

/// KEYS[1]: the org's epoch key. ARGV: entry key prefix (up to the epoch),
/// membership suffix, view suffix. Misses come back as empty strings.
const READ_SCRIPT: &str = r#"
local epoch = redis.call('GET', KEYS[1])
if not epoch then return { '', '', '' } end
local base = ARGV[1] .. epoch .. ':'
return { epoch, redis.call('GET', base .. ARGV[2]) or '', redis.call('GET', base .. ARGV[3]) or '' }
"#;

/// How long an org's epoch lives without changes; far longer than any entry.
const EPOCH_TTL_SECS: u64 = 7 * 24 * 3600;

/// After a failed call, reads and stores skip Redis for this long, so an
/// outage costs one timeout now and then instead of one per request.
const BACKOFF: Duration = Duration::from_secs(2);

/// The longest any request waits on Redis.
const CALL_TIMEOUT: Duration = Duration::from_millis(150);

/// A lazy, self-reconnecting Redis connection that gives up fast (250 ms to
/// connect, 100 ms per answer, one retry): for accelerators that must never
/// hold up a request (the cache, the rate limiter).
pub fn fast_connection(url: &url::Url) -> anyhow::Result<ConnectionManager> {
    let client = redis::Client::open(url.as_str())?;
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_millis(250)))
        .set_response_timeout(Some(Duration::from_millis(100)))
        .set_number_of_retries(1)
        .set_max_delay(Duration::from_millis(500));
    Ok(ConnectionManager::new_lazy_with_config(client, config)?)
}

#[derive(Clone)]
pub struct Cache {
    conn: Option<ConnectionManager>,
    /// Milliseconds since `started` until which Redis is considered down.
    down_until: Arc<AtomicU64>,
    started: Instant,
    prefix: Arc<str>,
    ttl_secs: u64,
    read: Arc<redis::Script>,
}

/// What one lookup found, and the epoch to store fresh values under.
#[derive(Debug, Default)]
pub struct Lookup {
    pub epoch: Option<String>,
    /// The caller's cached membership: role name and permission names.
    pub membership: Option<(String, Vec<String>)>,
    pub body: Option<Vec<u8>>,
}

impl Cache {
    /// A cache on `url`. Connects lazily and reconnects on its own.
    pub fn new(url: &url::Url, prefix: &str, ttl: Duration) -> anyhow::Result<Self> {
        let conn = fast_connection(url)?;
        Ok(Cache {
            conn: Some(conn),
            down_until: Default::default(),
            started: Instant::now(),
            prefix: prefix.into(),
            ttl_secs: ttl.as_secs().max(1),
            read: Arc::new(redis::Script::new(READ_SCRIPT)),
        })
    }

    /// The connection, unless Redis failed within the last `BACKOFF`.
    fn available(&self) -> Option<ConnectionManager> {
        let now = self.started.elapsed().as_millis() as u64;
        if now < self.down_until.load(Ordering::Relaxed) {
            return None;
        }
        self.conn.clone()
    }

    fn failed(&self, what: &str, e: &dyn std::fmt::Display) {
        let until = (self.started.elapsed() + BACKOFF).as_millis() as u64;
        self.down_until.store(until, Ordering::Relaxed);
        tracing::debug!(error = %e, "cache {what} failed; skipping Redis for {BACKOFF:?}");
    }

    /// Runs one Redis call within `CALL_TIMEOUT`.
    async fn call<T>(
        &self,
        what: &str,
        fut: impl Future<Output = redis::RedisResult<T>>,
    ) -> Option<T> {
        match tokio::time::timeout(CALL_TIMEOUT, fut).await {
            Ok(Ok(v)) => Some(v),
            Ok(Err(e)) => {
                self.failed(what, &e);
                None
            }
            Err(_) => {
                self.failed(what, &"timed out");
                None
            }
        }
    }

    fn org_base(&self, org: Uuid) -> String {
        format!("{}:org:{{{org}}}", self.prefix)
    }

    fn epoch_key(&self, org: Uuid) -> String {
        format!("{}:epoch", self.org_base(org))
    }

    fn entry_key(&self, org: Uuid, epoch: &str, suffix: &str) -> String {
        format!("{}:e{epoch}:{suffix}", self.org_base(org))
    }

    fn member_suffix(user: Uuid) -> String {
        format!("member:{user}")
    }

    /// The epoch, the caller's membership and the body cached under `view`.
    /// An org without an epoch gets one (a miss this time).
    pub async fn lookup(&self, org: Uuid, user: Uuid, view: &str) -> Lookup {
        let Some(mut conn) = self.available() else {
            return Lookup::default();
        };
        let mut script = self.read.key(self.epoch_key(org));
        script
            .arg(format!("{}:e", self.org_base(org)))
            .arg(Self::member_suffix(user))
            .arg(format!("view:{view}"));
        let found: Option<(String, String, Vec<u8>)> =
            self.call("lookup", script.invoke_async(&mut conn)).await;
        let Some((epoch, member, body)) = found else {
            return Lookup::default();
        };
        if epoch.is_empty() {
            // First read of this org (or its epoch was lost): start an epoch
            // and fill under it.
            return Lookup {
                epoch: self.start_epoch(org).await,
                ..Lookup::default()
            };
        }
        Lookup {
            membership: member.split_once('\t').map(|(role, perms)| {
                let perms = perms.split(',').filter(|p| !p.is_empty());
                (role.to_owned(), perms.map(str::to_owned).collect())
            }),
            body: (!body.is_empty()).then_some(body),
            epoch: Some(epoch),
        }
    }

    /// Sets a fresh random epoch for the org, replacing any other.
    async fn new_epoch(&self, org: Uuid) -> bool {
        let Some(mut conn) = self.conn.clone() else {
            return true;
        };
        let mut cmd = redis::cmd("SET");
        cmd.arg(self.epoch_key(org))
            .arg(Uuid::new_v4().simple().to_string())
            .arg("EX")
            .arg(EPOCH_TTL_SECS);
        let r: Option<redis::Value> = self.call("epoch", cmd.query_async(&mut conn)).await;
        r.is_some()
    }

    /// The org's epoch, set to a fresh random one if it has none (`SET NX GET`:
    /// whoever comes first wins, everyone gets the winner).
    async fn start_epoch(&self, org: Uuid) -> Option<String> {
        let mut conn = self.available()?;
        let mine = Uuid::new_v4().simple().to_string();
        let mut cmd = redis::cmd("SET");
        cmd.arg(self.epoch_key(org))
            .arg(&mine)
            .arg("NX")
            .arg("GET")
            .arg("EX")
            .arg(EPOCH_TTL_SECS);
        let previous: Option<Option<String>> = self.call("epoch", cmd.query_async(&mut conn)).await;
        previous.map(|p| p.unwrap_or(mine))
    }

    /// Stores the caller's membership under the epoch the lookup saw.
    pub async fn store_membership(
        &self,
        org: Uuid,
        user: Uuid,
        epoch: &str,
        role: &str,
        perms: &[String],
    ) {
        let value = format!("{role}\t{}", perms.join(","));
        let key = self.entry_key(org, epoch, &Self::member_suffix(user));
        self.set(key, value.into_bytes()).await;
    }

    /// Stores a response body for `view` under the epoch the lookup saw.
    pub async fn store_view(&self, org: Uuid, epoch: &str, view: &str, body: Vec<u8>) {
        self.set(self.entry_key(org, epoch, &format!("view:{view}")), body)
            .await;
    }

    async fn set(&self, key: String, value: Vec<u8>) {
        let Some(mut conn) = self.available() else {
            return;
        };
        let mut cmd = redis::cmd("SET");
        cmd.arg(key).arg(value).arg("EX").arg(self.ttl_secs);
        let _: Option<()> = self.call("store", cmd.query_async(&mut conn)).await;
    }

    /// Makes every cached value of these orgs unreachable. Call after the
    /// change committed. A failed attempt is retried in the background.
    pub async fn invalidate_orgs(&self, orgs: &[Uuid]) {
        if self.conn.is_none() {
            return;
        }
        let mut failed = Vec::new();
        for org in orgs {
            if !self.new_epoch(*org).await {
                failed.push(*org);
            }
        }
        if failed.is_empty() {
            return;
        }
        let cache = self.clone();
        tokio::spawn(async move {
            for delay in [200, 500, 1000, 2000] {
                tokio::time::sleep(Duration::from_millis(delay)).await;
                let mut still = Vec::new();
                for org in failed {
                    if !cache.new_epoch(org).await {
                        still.push(org);
                    }
                }
                if still.is_empty() {
                    return;
                }
                failed = still;
            }
            tracing::warn!(
                orgs = failed.len(),
                "cache invalidation failed; stale entries expire within CACHE_TTL_SECS"
            );
        });
    }

    pub async fn invalidate_org(&self, org: Uuid) {
        self.invalidate_orgs(&[org]).await
    }
}
