//! The broker: jobs in Redis, every transition one Lua script.
//!
//! Keys, under the configured prefix `P`:
//! * `P:job:<id>`   hash: `env` (the envelope), `queue`, `attempts`, `max`,
//!   `err` (last error), `died` (ms, when dead)
//! * `P:q:<queue>`  list of ready job ids (FIFO)
//! * `P:sched`      sorted set: job id -> due time (delays and retry backoff)
//! * `P:run`        sorted set: job id -> lease deadline of its running attempt
//! * `P:dead`       sorted set: job id -> time of death (the dead letters)
//! * `P:done:<id>`  marker of a finished job, kept an hour, so a relay that
//!   pushes a job again after a crash does not run it twice
//! * `P:wake:<q>`   list used as a doorbell by idle workers (`BLPOP`)
//! * `P:queues`     set of queue names seen
//!
//! An attempt is identified by the job's `attempts` counter when it was
//! fetched: acks, failures and lease renewals of an attempt that lost its
//! lease (and was handed to another worker) are ignored.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::{AsyncConnectionConfig, Script};
use uuid::Uuid;

use super::outbox::Envelope;

/// Every script reads the time from Redis (`TIME`), so the clocks of worker
/// machines never decide when a lease has expired or a job is due.
const NOW: &str = r#"
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
"#;

/// ARGV: prefix, then groups of (id, queue, due_ms or 0, envelope, max).
/// Returns the number of jobs added (known or finished ids are skipped).
const PUSH: &str = r#"
local p = ARGV[1]
local now = now_ms()
local added = 0
local woken = {}
for i = 2, #ARGV, 5 do
  local id, queue, due, env, max = ARGV[i], ARGV[i+1], tonumber(ARGV[i+2]), ARGV[i+3], ARGV[i+4]
  local key = p .. ':job:' .. id
  if redis.call('EXISTS', key) == 0 and redis.call('EXISTS', p .. ':done:' .. id) == 0 then
    redis.call('HSET', key, 'env', env, 'queue', queue, 'attempts', 0, 'max', max)
    redis.call('SADD', p .. ':queues', queue)
    if due > now then
      redis.call('ZADD', p .. ':sched', due, id)
    else
      redis.call('RPUSH', p .. ':q:' .. queue, id)
      woken[queue] = true
    end
    added = added + 1
  end
end
for q, _ in pairs(woken) do
  redis.call('LPUSH', p .. ':wake:' .. q, 1)
  redis.call('LTRIM', p .. ':wake:' .. q, 0, 0)
end
return added
"#;

/// ARGV: prefix, queue, max jobs, lease ms, dead ttl ms.
/// Promotes due scheduled jobs, reclaims expired leases, then takes up to
/// `max` ready jobs of `queue`. Returns {taken, lost, next_in}: taken and
/// lost are flat lists of (id, envelope, attempts); lost jobs were killed by
/// an expired lease on their last attempt and are now dead; next_in is the
/// time in ms until the next scheduled job is due or lease runs out (-1: none).
const FETCH: &str = r#"
local p, queue, n, lease, dead_ttl = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local now = now_ms()
local function wake(q)
  redis.call('LPUSH', p .. ':wake:' .. q, 1)
  redis.call('LTRIM', p .. ':wake:' .. q, 0, 0)
end
local due = redis.call('ZRANGEBYSCORE', p .. ':sched', '-inf', now, 'LIMIT', 0, 1000)
for _, id in ipairs(due) do
  redis.call('ZREM', p .. ':sched', id)
  local q = redis.call('HGET', p .. ':job:' .. id, 'queue')
  if q then
    redis.call('RPUSH', p .. ':q:' .. q, id)
    if q ~= queue then wake(q) end
  end
end
local lost = {}
local expired = redis.call('ZRANGEBYSCORE', p .. ':run', '-inf', now, 'LIMIT', 0, 200)
for _, id in ipairs(expired) do
  redis.call('ZREM', p .. ':run', id)
  local key = p .. ':job:' .. id
  local job = redis.call('HMGET', key, 'queue', 'attempts', 'max', 'env')
  if job[1] then
    if tonumber(job[2]) >= tonumber(job[3]) then
      redis.call('HSET', key, 'err', 'lease expired on the last attempt: the worker running it stopped', 'died', now)
      redis.call('PEXPIRE', key, dead_ttl)
      redis.call('ZADD', p .. ':dead', now, id)
      table.insert(lost, id); table.insert(lost, job[4]); table.insert(lost, job[2])
    else
      redis.call('HSET', key, 'err', 'lease expired: the worker running it stopped')
      redis.call('RPUSH', p .. ':q:' .. job[1], id)
      if job[1] ~= queue then wake(job[1]) end
    end
  end
end
local taken = {}
local got = 0
while got < n do
  local id = redis.call('LPOP', p .. ':q:' .. queue)
  if not id then break end
  local key = p .. ':job:' .. id
  local env = redis.call('HGET', key, 'env')
  if env then
    local attempts = redis.call('HINCRBY', key, 'attempts', 1)
    redis.call('ZADD', p .. ':run', now + lease, id)
    table.insert(taken, id); table.insert(taken, env); table.insert(taken, attempts)
    got = got + 1
  end
end
if redis.call('LLEN', p .. ':q:' .. queue) > 0 then wake(queue) end
local nd = -1
local next_due = redis.call('ZRANGE', p .. ':sched', 0, 0, 'WITHSCORES')
if next_due[2] then nd = tonumber(next_due[2]) end
local next_lease = redis.call('ZRANGE', p .. ':run', 0, 0, 'WITHSCORES')
if next_lease[2] and (nd < 0 or tonumber(next_lease[2]) < nd) then nd = tonumber(next_lease[2]) end
local next_in = -1
if nd >= 0 then next_in = math.max(0, nd - now) end
return { taken, lost, tostring(next_in) }
"#;

/// ARGV: prefix, done ttl ms, then triples of (id, attempt, started ms).
/// Finishes attempts that still hold their job; the done marker keeps when
/// the attempt started. Returns how many were finished.
const ACK: &str = r#"
local p, ttl = ARGV[1], tonumber(ARGV[2])
local n = 0
for i = 3, #ARGV, 3 do
  local id, attempt, started = ARGV[i], ARGV[i+1], ARGV[i+2]
  local key = p .. ':job:' .. id
  if redis.call('HGET', key, 'attempts') == attempt then
    redis.call('ZREM', p .. ':run', id)
    redis.call('DEL', key)
    redis.call('SET', p .. ':done:' .. id, started, 'PX', ttl)
    n = n + 1
  end
end
return n
"#;

/// ARGV: prefix, id, attempt, retry delay ms or -1 for dead, error,
/// counted (1, or 0 when the attempt should not count: an outage of the
/// database or broker, not the job's fault), dead ttl ms.
/// Applies only while the attempt still holds its lease; returns 1 then, 0
/// when the lease had expired and the job was already handed on.
const FAIL: &str = r#"
local p, id, attempt, delay, err, counted, dead_ttl = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4]), ARGV[5], ARGV[6], tonumber(ARGV[7])
local key = p .. ':job:' .. id
if redis.call('HGET', key, 'attempts') ~= attempt then return 0 end
if not redis.call('ZSCORE', p .. ':run', id) then return 0 end
local now = now_ms()
redis.call('ZREM', p .. ':run', id)
redis.call('HSET', key, 'err', err)
if delay < 0 then
  redis.call('HSET', key, 'died', now)
  redis.call('PEXPIRE', key, dead_ttl)
  redis.call('ZADD', p .. ':dead', now, id)
else
  if counted == '0' then redis.call('HINCRBY', key, 'attempts', -1) end
  redis.call('ZADD', p .. ':sched', now + delay, id)
end
return 1
"#;

/// ARGV: prefix, lease ms, then pairs of (id, attempt): renews leases.
const RENEW: &str = r#"
local p, lease = ARGV[1], tonumber(ARGV[2])
local deadline = now_ms() + lease
for i = 3, #ARGV, 2 do
  local id, attempt = ARGV[i], ARGV[i+1]
  if redis.call('HGET', p .. ':job:' .. id, 'attempts') == attempt then
    redis.call('ZADD', p .. ':run', 'XX', deadline, id)
  end
end
return 1
"#;

/// ARGV: prefix, id. Moves a dead job back to its queue with fresh attempts.
const REVIVE: &str = r#"
local p, id = ARGV[1], ARGV[2]
if redis.call('ZREM', p .. ':dead', id) == 0 then return 0 end
local key = p .. ':job:' .. id
local q = redis.call('HGET', key, 'queue')
if not q then return 0 end
redis.call('PERSIST', key)
redis.call('HSET', key, 'attempts', 0)
redis.call('HDEL', key, 'died')
redis.call('RPUSH', p .. ':q:' .. q, id)
redis.call('LPUSH', p .. ':wake:' .. q, 1)
redis.call('LTRIM', p .. ':wake:' .. q, 0, 0)
return 1
"#;

/// ARGV: prefix, id. Deletes a dead job.
const DISCARD: &str = r#"
local p, id = ARGV[1], ARGV[2]
if redis.call('ZREM', p .. ':dead', id) == 0 then return 0 end
redis.call('DEL', p .. ':job:' .. id)
return 1
"#;

/// Dead jobs are kept this long, then expire (their payload may hold links
/// with secrets, such as an invitation's).
pub const DEAD_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// How long the done marker of a finished job is kept.
const DONE_TTL: Duration = Duration::from_secs(3600);

#[derive(Clone)]
pub struct Broker {
    client: redis::Client,
    conn: ConnectionManager,
    prefix: String,
    push: Script,
    fetch: Script,
    ack: Script,
    fail: Script,
    renew: Script,
    revive: Script,
    discard: Script,
}

/// A job handed to a worker: its envelope and the attempt it runs as.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub id: Uuid,
    pub envelope: Result<Envelope, String>,
    pub attempt: u32,
}

#[derive(Debug, Default)]
pub struct Fetched {
    pub taken: Vec<Delivery>,
    /// Jobs found dead by an expired lease on their last attempt.
    pub lost: Vec<Delivery>,
    /// Time until the next scheduled job is due or the next lease runs out.
    pub next_in: Option<Duration>,
}

/// A dead job as operators see it.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct DeadJob {
    pub id: Uuid,
    pub kind: String,
    pub queue: String,
    pub attempts: u32,
    pub max_attempts: u32,
    /// Why it died: the last attempt's error.
    pub error: String,
    pub died_at: chrono::DateTime<chrono::Utc>,
    pub enqueued_at: Option<chrono::DateTime<chrono::Utc>>,
    pub request_id: Option<String>,
    pub org_id: Option<Uuid>,
    /// The payload (JSON, or the raw text when it is not JSON), with secrets
    /// redacted: query strings of URLs (invitation and reset links carry
    /// their tokens there) and fields named like tokens, passwords, secrets.
    pub payload: serde_json::Value,
}

/// Counts per queue and overall.
#[derive(Debug, Clone, Default, serde::Serialize, utoipa::ToSchema)]
pub struct QueueStats {
    pub queues: Vec<QueueDepth>,
    pub scheduled: u64,
    pub running: u64,
    pub dead: u64,
}

#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct QueueDepth {
    pub queue: String,
    pub ready: u64,
}

impl Broker {
    pub fn new(url: &url::Url, prefix: &str) -> anyhow::Result<Self> {
        let client = redis::Client::open(url.as_str())?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(5)))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_secs(1));
        let conn = ConnectionManager::new_lazy_with_config(client.clone(), config)?;
        Ok(Broker {
            client,
            conn,
            prefix: format!("{prefix}:jobs"),
            push: Script::new(&format!("{NOW}{PUSH}")),
            fetch: Script::new(&format!("{NOW}{FETCH}")),
            ack: Script::new(ACK),
            fail: Script::new(&format!("{NOW}{FAIL}")),
            renew: Script::new(&format!("{NOW}{RENEW}")),
            revive: Script::new(REVIVE),
            discard: Script::new(DISCARD),
        })
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Adds envelopes (as their JSON text); ids the broker already holds or
    /// finished within the last hour are skipped.
    pub async fn push(
        &self,
        jobs: &[(Uuid, String, Option<i64>, String, u32)],
    ) -> redis::RedisResult<u64> {
        if jobs.is_empty() {
            return Ok(0);
        }
        let mut inv = self.push.prepare_invoke();
        inv.arg(&self.prefix);
        for (id, queue, due, env, max) in jobs {
            inv.arg(id.to_string())
                .arg(queue)
                .arg(due.unwrap_or(0))
                .arg(env)
                .arg(*max);
        }
        inv.invoke_async(&mut self.conn.clone()).await
    }

    pub async fn fetch(
        &self,
        queue: &str,
        max: usize,
        lease: Duration,
    ) -> redis::RedisResult<Fetched> {
        let (taken, lost, next): (Vec<String>, Vec<String>, String) = self
            .fetch
            .prepare_invoke()
            .arg(&self.prefix)
            .arg(queue)
            .arg(max)
            .arg(lease.as_millis() as u64)
            .arg(DEAD_TTL.as_millis() as u64)
            .invoke_async(&mut self.conn.clone())
            .await?;
        let next = next
            .parse::<i64>()
            .ok()
            .filter(|n| *n >= 0)
            .map(|ms| Duration::from_millis(ms as u64));
        Ok(Fetched {
            taken: deliveries(taken),
            lost: deliveries(lost),
            next_in: next,
        })
    }

    /// Finishes attempts; returns how many still held their job.
    pub async fn ack(&self, done: &[(Uuid, u32, i64)]) -> redis::RedisResult<u64> {
        if done.is_empty() {
            return Ok(0);
        }
        let mut inv = self.ack.prepare_invoke();
        inv.arg(&self.prefix).arg(DONE_TTL.as_millis() as u64);
        for (id, attempt, started) in done {
            inv.arg(id.to_string()).arg(*attempt).arg(*started);
        }
        inv.invoke_async(&mut self.conn.clone()).await
    }

    /// Records a failed attempt: retry after `retry_in`, or dead when
    /// `None`. `counted: false` gives the attempt back (an outage, not the
    /// job's fault). `false`: the attempt had lost its lease; nothing changed.
    pub async fn fail(
        &self,
        id: Uuid,
        attempt: u32,
        retry_in: Option<Duration>,
        error: &str,
        counted: bool,
    ) -> redis::RedisResult<bool> {
        let applied: i64 = self
            .fail
            .prepare_invoke()
            .arg(&self.prefix)
            .arg(id.to_string())
            .arg(attempt)
            .arg(retry_in.map(|d| d.as_millis() as i64).unwrap_or(-1))
            .arg(truncate(error, 2000))
            .arg(if counted { "1" } else { "0" })
            .arg(DEAD_TTL.as_millis() as u64)
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok(applied == 1)
    }

    pub async fn renew(&self, running: &[(Uuid, u32)], lease: Duration) -> redis::RedisResult<()> {
        if running.is_empty() {
            return Ok(());
        }
        let mut inv = self.renew.prepare_invoke();
        inv.arg(&self.prefix).arg(lease.as_millis() as u64);
        for (id, attempt) in running {
            inv.arg(id.to_string()).arg(*attempt);
        }
        let _: i64 = inv.invoke_async(&mut self.conn.clone()).await?;
        Ok(())
    }

    /// Waits until a job may be ready on `queue`, at most `timeout`. Uses its
    /// own connection (`BLPOP` blocks the connection it runs on).
    pub async fn wait(
        &self,
        conn: &mut MultiplexedConnection,
        queue: &str,
        timeout: Duration,
    ) -> redis::RedisResult<()> {
        let secs = timeout.as_secs_f64().max(0.01);
        let _: Option<(String, String)> = redis::cmd("BLPOP")
            .arg(format!("{}:wake:{queue}", self.prefix))
            .arg(format!("{secs:.3}"))
            .query_async(conn)
            .await?;
        Ok(())
    }

    /// A connection for [`Broker::wait`], without a response timeout.
    pub async fn blocking_connection(&self) -> redis::RedisResult<MultiplexedConnection> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(None);
        self.client
            .get_multiplexed_async_connection_with_config(&config)
            .await
    }

    pub async fn stats(&self) -> redis::RedisResult<QueueStats> {
        let mut conn = self.conn.clone();
        let mut queues: Vec<String> = redis::cmd("SMEMBERS")
            .arg(format!("{}:queues", self.prefix))
            .query_async(&mut conn)
            .await?;
        queues.sort();
        let mut pipe = redis::pipe();
        for q in &queues {
            pipe.cmd("LLEN").arg(format!("{}:q:{q}", self.prefix));
        }
        pipe.cmd("ZCARD").arg(format!("{}:sched", self.prefix));
        pipe.cmd("ZCARD").arg(format!("{}:run", self.prefix));
        pipe.cmd("ZCARD").arg(format!("{}:dead", self.prefix));
        let counts: Vec<u64> = pipe.query_async(&mut conn).await?;
        let n = queues.len();
        Ok(QueueStats {
            queues: queues
                .into_iter()
                .zip(counts.iter())
                .map(|(queue, ready)| QueueDepth {
                    queue,
                    ready: *ready,
                })
                .collect(),
            scheduled: counts[n],
            running: counts[n + 1],
            dead: counts[n + 2],
        })
    }

    /// Dead jobs, newest first: up to `limit` that died before `before_ms`.
    pub async fn dead(
        &self,
        limit: usize,
        before_ms: Option<i64>,
    ) -> redis::RedisResult<Vec<DeadJob>> {
        let mut conn = self.conn.clone();
        let max = match before_ms {
            Some(b) => format!("({b}"),
            None => "+inf".to_owned(),
        };
        let ids: Vec<String> = redis::cmd("ZRANGE")
            .arg(format!("{}:dead", self.prefix))
            .arg(max)
            .arg("-inf")
            .arg("BYSCORE")
            .arg("REV")
            .arg("LIMIT")
            .arg(0)
            .arg(limit)
            .query_async(&mut conn)
            .await?;
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            if let Ok(id) = id.parse::<Uuid>()
                && let Some(job) = self.dead_job(id).await?
            {
                out.push(job);
            }
        }
        Ok(out)
    }

    pub async fn dead_job(&self, id: Uuid) -> redis::RedisResult<Option<DeadJob>> {
        let mut conn = self.conn.clone();
        let (score, fields): (Option<f64>, Vec<Option<String>>) = redis::pipe()
            .cmd("ZSCORE")
            .arg(format!("{}:dead", self.prefix))
            .arg(id.to_string())
            .cmd("HMGET")
            .arg(format!("{}:job:{id}", self.prefix))
            .arg(&["env", "queue", "attempts", "max", "err"])
            .query_async(&mut conn)
            .await?;
        let Some(score) = score else {
            return Ok(None);
        };
        let Some(env) = fields.first().cloned().flatten() else {
            // Its data expired (DEAD_TTL): forget the entry too.
            let _: i64 = redis::cmd("ZREM")
                .arg(format!("{}:dead", self.prefix))
                .arg(id.to_string())
                .query_async(&mut conn)
                .await?;
            return Ok(None);
        };
        let field = |i: usize| fields.get(i).cloned().flatten().unwrap_or_default();
        let parsed: Option<Envelope> = serde_json::from_str(&env).ok();
        let raw: serde_json::Value =
            serde_json::from_str(&env).unwrap_or(serde_json::Value::String(env.clone()));
        Ok(Some(DeadJob {
            id,
            kind: parsed
                .as_ref()
                .map(|e| e.kind.clone())
                .or_else(|| raw.get("kind").and_then(|k| k.as_str()).map(str::to_owned))
                .unwrap_or_default(),
            queue: field(1),
            attempts: field(2).parse().unwrap_or(0),
            max_attempts: field(3).parse().unwrap_or(0),
            error: field(4),
            died_at: chrono::DateTime::from_timestamp_millis(score as i64).unwrap_or_default(),
            enqueued_at: parsed
                .as_ref()
                .and_then(|e| chrono::DateTime::from_timestamp_millis(e.enqueued_at_ms)),
            request_id: parsed.as_ref().and_then(|e| e.request_id.clone()),
            org_id: parsed.as_ref().and_then(|e| e.org_id),
            payload: redact(
                parsed
                    .map(|e| e.payload)
                    .unwrap_or_else(|| raw.get("payload").cloned().unwrap_or(raw)),
            ),
        }))
    }

    /// Puts a dead job back on its queue with its attempts reset.
    pub async fn revive(&self, id: Uuid) -> redis::RedisResult<bool> {
        self.on_dead_job(&self.revive, id).await
    }

    /// Deletes a dead job.
    pub async fn discard(&self, id: Uuid) -> redis::RedisResult<bool> {
        self.on_dead_job(&self.discard, id).await
    }

    /// Runs a script taking (prefix, id); true when it found the dead job.
    async fn on_dead_job(&self, script: &Script, id: Uuid) -> redis::RedisResult<bool> {
        let n: i64 = script
            .prepare_invoke()
            .arg(&self.prefix)
            .arg(id.to_string())
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok(n == 1)
    }

    /// When each finished job's successful attempt started (ms), from its
    /// done marker.
    pub async fn done_at(&self, ids: &[Uuid]) -> redis::RedisResult<Vec<Option<i64>>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = ids
            .iter()
            .map(|id| format!("{}:done:{id}", self.prefix))
            .collect();
        redis::cmd("MGET")
            .arg(keys)
            .query_async(&mut self.conn.clone())
            .await
    }
}

/// Hides secrets in a payload shown to operators.
pub fn redact(v: serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match v {
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(k, v)| {
                    let lower = k.to_ascii_lowercase();
                    let secret = ["token", "password", "secret", "key"]
                        .iter()
                        .any(|s| lower.contains(s));
                    if secret && !v.is_null() {
                        (k, Value::String("[redacted]".into()))
                    } else {
                        (k, redact(v))
                    }
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.into_iter().map(redact).collect()),
        Value::String(s) => match url::Url::parse(&s) {
            Ok(mut u) if u.query().is_some() && matches!(u.scheme(), "http" | "https") => {
                u.set_query(Some("redacted"));
                Value::String(u.to_string())
            }
            _ => Value::String(s),
        },
        other => other,
    }
}

fn deliveries(flat: Vec<String>) -> Vec<Delivery> {
    flat.chunks_exact(3)
        .filter_map(|c| {
            let id = c[0].parse::<Uuid>().ok()?;
            Some(Delivery {
                id,
                envelope: serde_json::from_str::<Envelope>(&c[1])
                    .map_err(|e| format!("the job's envelope cannot be decoded: {e}")),
                attempt: c[2].parse().unwrap_or(1),
            })
        })
        .collect()
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn secrets_in_payloads_are_redacted_for_operators() {
        let v = redact(json!({
            "to": "ann@example.com",
            "template": "invitation",
            "accept_url": "https://app.example.com/invitations/accept?token=inv_secret",
            "nested": [{"reset_token": "abc", "note": "plain text ?token=x"}],
            "api_key": null,
        }));
        assert_eq!(v["to"], "ann@example.com");
        assert_eq!(
            v["accept_url"],
            "https://app.example.com/invitations/accept?redacted"
        );
        assert_eq!(v["nested"][0]["reset_token"], "[redacted]");
        assert_eq!(v["nested"][0]["note"], "plain text ?token=x");
        assert!(v["api_key"].is_null());
        assert!(!v.to_string().contains("inv_secret"));
    }
}
