//! Tenant-scoped read cache in Redis, with invalidation by epoch.
//!
//! Every org has an epoch counter. Cached values live under keys that include
//! the org and its epoch (`{prefix}:org:{org}:e{epoch}:...`), so one `INCR`
//! after a committed change makes every cached value of that org unreachable
//! at once; the old entries expire on their own (`CACHE_TTL_SECS`). A reader
//! takes the epoch, its membership entry and the cached body in one round
//! trip (a Lua script).
//!
//! The cache is an accelerator, never the source of truth: if Redis is slow
//! or down, lookups miss (within a short timeout) and requests go to Postgres.
//! If an invalidation cannot reach Redis, entries of the old epoch stay
//! readable until their TTL, which bounds staleness.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use uuid::Uuid;

const READ_SCRIPT: &str = r#"
local epoch = redis.call('GET', KEYS[1]) or '0'
local base = ARGV[1] .. epoch .. ':'
return { epoch, redis.call('GET', base .. ARGV[2]), redis.call('GET', base .. ARGV[3]) }
"#;

/// How long an org's epoch counter lives without changes; far longer than any entry.
const EPOCH_TTL_SECS: i64 = 7 * 24 * 3600;

/// After a failed call, reads and stores skip Redis for this long, so an
/// outage costs one timeout now and then instead of one per request.
const BACKOFF: Duration = Duration::from_secs(2);

#[derive(Clone)]
pub struct Cache {
    conn: Option<ConnectionManager>,
    /// Milliseconds since `epoch_start` until which Redis is considered down.
    down_until: std::sync::Arc<std::sync::atomic::AtomicU64>,
    epoch_start: std::time::Instant,
    prefix: String,
    ttl_secs: u64,
    read: std::sync::Arc<redis::Script>,
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
        let client = redis::Client::open(url.as_str())?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_millis(250)))
            .set_response_timeout(Some(Duration::from_millis(100)))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let conn = ConnectionManager::new_lazy_with_config(client, config)?;
        Ok(Cache {
            conn: Some(conn),
            down_until: Default::default(),
            epoch_start: std::time::Instant::now(),
            prefix: prefix.to_owned(),
            ttl_secs: ttl.as_secs().max(1),
            read: std::sync::Arc::new(redis::Script::new(READ_SCRIPT)),
        })
    }

    /// A cache that never hits (tests of the uncached path, or no Redis).
    pub fn disabled() -> Self {
        Cache {
            conn: None,
            down_until: Default::default(),
            epoch_start: std::time::Instant::now(),
            prefix: String::new(),
            ttl_secs: 1,
            read: std::sync::Arc::new(redis::Script::new(READ_SCRIPT)),
        }
    }

    /// The connection, unless Redis failed within the last `BACKOFF`.
    fn available(&self) -> Option<ConnectionManager> {
        let now = self.epoch_start.elapsed().as_millis() as u64;
        if now < self.down_until.load(std::sync::atomic::Ordering::Relaxed) {
            return None;
        }
        self.conn.clone()
    }

    fn failed(&self, what: &str, e: &redis::RedisError) {
        let until = (self.epoch_start.elapsed() + BACKOFF).as_millis() as u64;
        self.down_until
            .store(until, std::sync::atomic::Ordering::Relaxed);
        tracing::debug!(error = %e, "cache {what} failed; skipping Redis for {BACKOFF:?}");
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
    pub async fn lookup(&self, org: Uuid, user: Uuid, view: &str) -> Lookup {
        let Some(mut conn) = self.available() else {
            return Lookup::default();
        };
        let result: redis::RedisResult<(String, Option<String>, Option<Vec<u8>>)> = self
            .read
            .key(self.epoch_key(org))
            .arg(format!("{}:e", self.org_base(org)))
            .arg(Self::member_suffix(user))
            .arg(format!("view:{view}"))
            .invoke_async(&mut conn)
            .await;
        match result {
            Ok((epoch, member, body)) => Lookup {
                epoch: Some(epoch),
                membership: member.and_then(|m| {
                    let (role, perms) = m.split_once('\t')?;
                    Some((
                        role.to_owned(),
                        perms
                            .split(',')
                            .filter(|p| !p.is_empty())
                            .map(str::to_owned)
                            .collect(),
                    ))
                }),
                body,
            },
            Err(e) => {
                self.failed("lookup", &e);
                Lookup::default()
            }
        }
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
        self.set(
            self.entry_key(org, epoch, &Self::member_suffix(user)),
            value.into_bytes(),
        )
        .await;
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
        let r: redis::RedisResult<()> = redis::cmd("SET")
            .arg(key)
            .arg(value)
            .arg("EX")
            .arg(self.ttl_secs)
            .query_async(&mut conn)
            .await;
        if let Err(e) = r {
            self.failed("store", &e);
        }
    }

    /// Makes every cached value of these orgs unreachable. Call after the
    /// change committed.
    pub async fn invalidate_orgs(&self, orgs: &[Uuid]) {
        // Tried even while reads skip Redis: a missed invalidation is what
        // leaves stale entries behind.
        let Some(conn) = &self.conn else { return };
        if orgs.is_empty() {
            return;
        }
        let mut conn = conn.clone();
        let mut pipe = redis::pipe();
        for org in orgs {
            let key = self.epoch_key(*org);
            pipe.cmd("INCR").arg(&key).ignore();
            pipe.cmd("EXPIRE").arg(&key).arg(EPOCH_TTL_SECS).ignore();
        }
        let r: redis::RedisResult<()> = pipe.query_async(&mut conn).await;
        if let Err(e) = r {
            tracing::warn!(error = %e, "cache invalidation failed; entries expire within the TTL");
        }
    }

    pub async fn invalidate_org(&self, org: Uuid) {
        self.invalidate_orgs(&[org]).await
    }
}
