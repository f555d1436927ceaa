//! Rate limiting in Redis with GCRA (the generic cell rate algorithm).
//!
//! A [`Quota`] of `burst` requests `per` period spaces requests one emission
//! interval `T = per / burst` apart and tolerates a burst of `burst` requests
//! at once: a bucket remembers one number, its theoretical arrival time (TAT),
//! and a request at `now` is allowed when `max(TAT, now) + T - now` does not
//! exceed the tolerance `T * burst`. So 10 per minute allows 10 requests at
//! once, then one every 6 s; an idle bucket refills completely after a minute.
//!
//! Each check is one Lua script (atomic in Redis, so concurrent replicas
//! cannot both take the last slot), timed by the Redis server clock
//! (`TIME`), so the API replicas' clocks do not matter. The TAT is stored in
//! milliseconds under `{prefix}:rl:{key}` and expires when the bucket is full
//! again, so idle keys vanish. Keys longer than [`MAX_RAW_KEY_BYTES`] are
//! stored as their SHA-256, so callers cannot grow Redis key sizes.
//!
//! When Redis is down or slow (each call is bounded by a short timeout, and
//! after a failure Redis is skipped for a moment) the answer follows the
//! [`FailMode`]: [`FailMode::Open`] (the default) allows, which suits general
//! API limits where an outage of the limiter must not become an outage of the
//! API; [`FailMode::Closed`] denies with a short `retry_after`;
//! [`FailMode::Local`] counts in this process's memory instead (the same
//! GCRA, per replica), which suits brute-force protection (login, OTP,
//! password reset): an attacker gains no unlimited guesses by knocking Redis
//! over, and users can still sign in during the outage. Set it per limiter
//! with [`RateLimiter::with_fail_mode`] or per call with
//! [`RateLimiter::check_with`].
//!
//! [`RateLimiter::peek`] reads a bucket without counting, for limits that
//! count only failures (wrong passwords): peek before the attempt, count
//! with [`RateLimiter::check`] after a failure.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use redis::aio::ConnectionManager;
use sha2::{Digest, Sha256};

/// KEYS[1]: the bucket. ARGV[1]: emission interval (ms), ARGV[2]: tolerance
/// (ms). Returns `{1, remaining}` when allowed (and records the request), or
/// `{0, retry_after_ms}` when limited (and changes nothing).
const CHECK_SCRIPT: &str = r#"
if redis.replicate_commands then pcall(redis.replicate_commands) end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '') or now
if tat < now then tat = now end
local new_tat = tat + interval
local ahead = new_tat - now
if ahead > tolerance then
  return { 0, ahead - tolerance }
end
redis.call('SET', KEYS[1], string.format('%d', new_tat), 'PX', string.format('%d', ahead))
return { 1, math.floor((tolerance - ahead) / interval) }
"#;

/// As [`CHECK_SCRIPT`], but records nothing. Returns `{allowed, value,
/// pristine}`: `pristine` is 1 when the bucket is full (nothing counted in it).
const PEEK_SCRIPT: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '') or now
if tat < now then tat = now end
local pristine = 0
if tat == now then pristine = 1 end
local ahead = tat + interval - now
if ahead > tolerance then
  return { 0, ahead - tolerance, pristine }
end
return { 1, math.floor((tolerance - ahead) / interval), pristine }
"#;

/// Most buckets [`FailMode::Local`] keeps per process; past it (after
/// dropping expired ones) new keys are refused until some expire.
const MAX_LOCAL_BUCKETS: usize = 100_000;

/// The longest a check waits on Redis.
const CALL_TIMEOUT: Duration = Duration::from_millis(150);

/// After a failed call, checks skip Redis (and follow the fail mode) for this
/// long, so an outage costs one timeout now and then, not one per request.
const BACKOFF: Duration = Duration::from_secs(1);

/// What [`FailMode::Closed`] tells callers to wait when Redis is unavailable.
pub const FAIL_CLOSED_RETRY_AFTER: Duration = Duration::from_secs(1);

/// Caller keys longer than this are stored as their SHA-256 (hex).
pub const MAX_RAW_KEY_BYTES: usize = 128;

/// Periods are capped at this (keeps the millisecond arithmetic exact).
const MAX_PERIOD: Duration = Duration::from_secs(366 * 24 * 3600);

/// `burst` requests per `per`: one request every `per / burst`, and up to
/// `burst` at once after being idle for `per`. A burst of 0 counts as 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    pub burst: u32,
    pub per: Duration,
}

impl Quota {
    pub const fn new(burst: u32, per: Duration) -> Self {
        Quota { burst, per }
    }

    pub const fn per_second(burst: u32) -> Self {
        Quota::new(burst, Duration::from_secs(1))
    }

    pub const fn per_minute(burst: u32) -> Self {
        Quota::new(burst, Duration::from_secs(60))
    }

    pub const fn per_hour(burst: u32) -> Self {
        Quota::new(burst, Duration::from_secs(3600))
    }

    /// The emission interval and the burst tolerance, in whole milliseconds
    /// (the interval rounded up, at least 1 ms).
    fn gcra_ms(self) -> (u64, u64) {
        let burst = u64::from(self.burst.max(1));
        let per_ms = self.per.min(MAX_PERIOD).as_millis() as u64;
        let interval = per_ms.div_ceil(burst).max(1);
        (interval, interval * burst)
    }
}

/// What to answer when Redis cannot be asked (down, slow, or in backoff).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FailMode {
    /// Allow the request: for general API limits.
    #[default]
    Open,
    /// Deny it with `retry_after` = [`FAIL_CLOSED_RETRY_AFTER`].
    Closed,
    /// Count it in this process's memory (per replica): for brute-force
    /// protection that must keep working through a Redis outage.
    Local,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Allowed; `remaining` more requests would be allowed right now.
    Allowed { remaining: u32 },
    /// Denied; the next request is allowed after `retry_after`.
    Limited { retry_after: Duration },
}

impl Decision {
    pub fn is_allowed(&self) -> bool {
        matches!(self, Decision::Allowed { .. })
    }

    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Decision::Allowed { .. } => None,
            Decision::Limited { retry_after } => Some(*retry_after),
        }
    }

    /// The answer when Redis cannot be asked (for [`FailMode::Local`], the
    /// caller counts locally instead).
    fn fallback(mode: FailMode, quota: Quota) -> Self {
        match mode {
            FailMode::Open => Decision::Allowed {
                remaining: quota.burst.saturating_sub(1),
            },
            FailMode::Closed | FailMode::Local => Decision::Limited {
                retry_after: FAIL_CLOSED_RETRY_AFTER,
            },
        }
    }

    /// Reads the script's reply.
    fn from_reply(allowed: i64, value: i64, quota: Quota) -> Self {
        let value = value.max(0) as u64;
        if allowed == 1 {
            Decision::Allowed {
                remaining: value.min(u64::from(quota.burst)) as u32,
            }
        } else {
            Decision::Limited {
                retry_after: Duration::from_millis(value.max(1)),
            }
        }
    }
}

/// What [`RateLimiter::peek`] saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peek {
    /// What a [`RateLimiter::check`] now would answer.
    pub decision: Decision,
    /// Nothing is counted in the bucket (it is full).
    pub pristine: bool,
}

/// A GCRA rate limiter in Redis. Cheap to clone; clones share the connection.
#[derive(Clone)]
pub struct RateLimiter {
    conn: ConnectionManager,
    /// Milliseconds since `started` until which Redis is considered down.
    down_until: Arc<AtomicU64>,
    started: Instant,
    prefix: String,
    fail_mode: FailMode,
    timeout: Duration,
    script: Arc<redis::Script>,
    peek_script: Arc<redis::Script>,
    /// The buckets of [`FailMode::Local`]: key → TAT in ms since `started`.
    local: Arc<std::sync::Mutex<std::collections::HashMap<String, u64>>>,
}

impl RateLimiter {
    /// A limiter on `url` with keys under `{prefix}:rl:`, failing open.
    /// Connects lazily and reconnects on its own.
    pub fn new(url: &url::Url, prefix: &str) -> anyhow::Result<Self> {
        let conn = super::cache::fast_connection(url)?;
        Ok(RateLimiter {
            conn,
            down_until: Default::default(),
            started: Instant::now(),
            prefix: prefix.to_owned(),
            fail_mode: FailMode::default(),
            timeout: CALL_TIMEOUT,
            script: Arc::new(redis::Script::new(CHECK_SCRIPT)),
            peek_script: Arc::new(redis::Script::new(PEEK_SCRIPT)),
            local: Default::default(),
        })
    }

    /// The answer [`check`](Self::check) gives when Redis cannot be asked.
    pub fn with_fail_mode(mut self, mode: FailMode) -> Self {
        self.fail_mode = mode;
        self
    }

    /// The longest a call waits on Redis (default 150 ms).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    pub fn fail_mode(&self) -> FailMode {
        self.fail_mode
    }

    /// Counts one request against `key`'s bucket, if the quota allows it.
    /// Without Redis, answers per the limiter's fail mode.
    pub async fn check(&self, key: &str, quota: Quota) -> Decision {
        self.check_with(key, quota, self.fail_mode).await
    }

    /// [`check`](Self::check) with an explicit fail mode for this call.
    pub async fn check_with(&self, key: &str, quota: Quota, mode: FailMode) -> Decision {
        let reply: Option<(i64, i64)> = match self.available() {
            Some(mut conn) => {
                let (interval, tolerance) = quota.gcra_ms();
                let mut script = self.script.key(bucket_key(&self.prefix, key));
                script.arg(interval).arg(tolerance);
                self.call("check", script.invoke_async(&mut conn)).await
            }
            None => None,
        };
        match reply {
            Some((allowed, value)) => Decision::from_reply(allowed, value, quota),
            None if mode == FailMode::Local => self.local_gcra(key, quota, true).decision,
            None => Decision::fallback(mode, quota),
        }
    }

    /// What [`check`](Self::check) would answer now, without counting.
    pub async fn peek(&self, key: &str, quota: Quota) -> Peek {
        let reply: Option<(i64, i64, i64)> = match self.available() {
            Some(mut conn) => {
                let (interval, tolerance) = quota.gcra_ms();
                let mut script = self.peek_script.key(bucket_key(&self.prefix, key));
                script.arg(interval).arg(tolerance);
                self.call("peek", script.invoke_async(&mut conn)).await
            }
            None => None,
        };
        match reply {
            Some((allowed, value, pristine)) => Peek {
                decision: Decision::from_reply(allowed, value, quota),
                pristine: pristine == 1,
            },
            None if self.fail_mode == FailMode::Local => self.local_gcra(key, quota, false),
            None => Peek {
                decision: Decision::fallback(self.fail_mode, quota),
                pristine: false,
            },
        }
    }

    /// The GCRA of the Lua scripts, in this process (for [`FailMode::Local`]).
    fn local_gcra(&self, key: &str, quota: Quota, count: bool) -> Peek {
        let (interval, tolerance) = quota.gcra_ms();
        let now = self.started.elapsed().as_millis() as u64;
        let mut buckets = self.local.lock().unwrap_or_else(|e| e.into_inner());
        let tat = buckets.get(key).copied().unwrap_or(now).max(now);
        let pristine = tat == now;
        let ahead = tat + interval - now;
        if ahead > tolerance {
            let decision = Decision::Limited {
                retry_after: Duration::from_millis(ahead - tolerance),
            };
            return Peek { decision, pristine };
        }
        if count {
            if buckets.len() >= MAX_LOCAL_BUCKETS && !buckets.contains_key(key) {
                buckets.retain(|_, t| *t > now);
                if buckets.len() >= MAX_LOCAL_BUCKETS {
                    let decision = Decision::fallback(FailMode::Closed, quota);
                    return Peek { decision, pristine };
                }
            }
            buckets.insert(key.to_owned(), tat + interval);
        }
        let remaining = ((tolerance - ahead) / interval).min(u64::from(quota.burst)) as u32;
        Peek {
            decision: Decision::Allowed { remaining },
            pristine,
        }
    }

    /// Empties `key`'s bucket (e.g. after a successful login). Returns whether
    /// Redis confirmed it.
    pub async fn reset(&self, key: &str) -> bool {
        self.local
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
        let Some(mut conn) = self.available() else {
            return false;
        };
        let mut cmd = redis::cmd("DEL");
        cmd.arg(bucket_key(&self.prefix, key));
        let r: Option<i64> = self.call("reset", cmd.query_async(&mut conn)).await;
        r.is_some()
    }

    /// The connection, unless Redis failed within the last `BACKOFF`.
    fn available(&self) -> Option<ConnectionManager> {
        let now = self.started.elapsed().as_millis() as u64;
        if now < self.down_until.load(Ordering::Relaxed) {
            return None;
        }
        Some(self.conn.clone())
    }

    fn failed(&self, what: &str, e: &dyn std::fmt::Display) {
        let until = (self.started.elapsed() + BACKOFF).as_millis() as u64;
        self.down_until.store(until, Ordering::Relaxed);
        tracing::warn!(
            error = %e,
            "rate limiter {what} failed; following the fail mode for {BACKOFF:?}"
        );
    }

    /// Runs one Redis call within the timeout.
    async fn call<T>(
        &self,
        what: &str,
        fut: impl Future<Output = redis::RedisResult<T>>,
    ) -> Option<T> {
        match tokio::time::timeout(self.timeout, fut).await {
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
}

/// `{prefix}:rl:{key}`, with long keys (and keys that could pass for a hashed
/// one) replaced by `#` and their SHA-256 in hex.
fn bucket_key(prefix: &str, key: &str) -> String {
    if key.len() <= MAX_RAW_KEY_BYTES && !key.starts_with('#') {
        return format!("{prefix}:rl:{key}");
    }
    format!(
        "{prefix}:rl:#{}",
        hex::encode(Sha256::digest(key.as_bytes()))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gcra_parameters() {
        assert_eq!(Quota::per_minute(10).gcra_ms(), (6_000, 60_000));
        assert_eq!(
            Quota::new(5, Duration::from_millis(500)).gcra_ms(),
            (100, 500)
        );
        // Rounded up, so the quota is never looser than asked.
        assert_eq!(Quota::per_second(3).gcra_ms(), (334, 1_002));
        // Degenerate quotas stay usable.
        assert_eq!(
            Quota::new(0, Duration::from_secs(1)).gcra_ms(),
            (1_000, 1_000)
        );
        assert_eq!(Quota::new(10, Duration::ZERO).gcra_ms(), (1, 10));
        let (i, t) = Quota::new(1, Duration::MAX).gcra_ms();
        assert_eq!(
            (i, t),
            (MAX_PERIOD.as_millis() as u64, MAX_PERIOD.as_millis() as u64)
        );
    }

    #[test]
    fn short_keys_are_kept() {
        assert_eq!(bucket_key("t", "login:ann@x.io"), "t:rl:login:ann@x.io");
        let k = "a".repeat(MAX_RAW_KEY_BYTES);
        assert_eq!(bucket_key("t", &k), format!("t:rl:{k}"));
    }

    #[test]
    fn long_and_hash_like_keys_are_hashed() {
        let long = "a".repeat(MAX_RAW_KEY_BYTES + 1);
        let k = bucket_key("t", &long);
        assert_eq!(k.len(), "t:rl:#".len() + 64);
        assert!(k.starts_with("t:rl:#"));
        assert!(k[6..].bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(k, bucket_key("t", &"a".repeat(MAX_RAW_KEY_BYTES + 2)));
        // A caller cannot name the hashed bucket of another key.
        let forged = bucket_key("t", &k["t:rl:".len()..]);
        assert_ne!(forged, k);
        assert!(forged.starts_with("t:rl:#"));
        // The hex SHA-256 of the key ("#abc" is hashed: it starts with '#').
        assert_eq!(
            bucket_key("t", "#abc"),
            "t:rl:#00e16e1d31c0ba2b3b3d17583bb2ac3b898666620ddf540aae5bd0703d7d02e7"
        );
    }

    #[test]
    fn fallback_follows_the_fail_mode() {
        let q = Quota::per_minute(10);
        assert_eq!(
            Decision::fallback(FailMode::Open, q),
            Decision::Allowed { remaining: 9 }
        );
        assert_eq!(
            Decision::fallback(FailMode::Closed, q),
            Decision::Limited {
                retry_after: FAIL_CLOSED_RETRY_AFTER
            }
        );
        assert_eq!(FailMode::default(), FailMode::Open);
    }

    #[test]
    fn replies_are_read_defensively() {
        let q = Quota::per_minute(10);
        assert_eq!(
            Decision::from_reply(1, 9, q),
            Decision::Allowed { remaining: 9 }
        );
        assert_eq!(
            Decision::from_reply(1, 1_000, q),
            Decision::Allowed { remaining: 10 }
        );
        assert_eq!(
            Decision::from_reply(1, -3, q),
            Decision::Allowed { remaining: 0 }
        );
        assert_eq!(
            Decision::from_reply(0, 6_000, q).retry_after(),
            Some(Duration::from_secs(6))
        );
        assert_eq!(
            Decision::from_reply(0, 0, q).retry_after(),
            Some(Duration::from_millis(1))
        );
        assert!(!Decision::from_reply(0, 5, q).is_allowed());
    }
}
