//! Sessions that ended before their access tokens expired, known to every
//! API replica within a second or two, checked in memory on each request.
//!
//! Ending a session (sign-out, a ban, a password change, a refresh-token
//! replay) records it in `app.auth_ended_sessions` in the same transaction,
//! kept until the last access token it issued has expired. After the commit
//! the ending replica publishes the ids on a Redis channel; every replica
//! subscribes and adds them to an in-process set, which `AuthUser` consults
//! for the tokens Tenantry signs (no Postgres round trip on the request path).
//!
//! Postgres is the source of truth, Redis only the fast path: on start and
//! on every (re)subscription a replica reads the table, and it reads it
//! again every second whatever Redis does, so a message lost in flight, or
//! one a replica cut off from Redis could not publish, arrives within a
//! second anyway (one indexed query a second per replica, off the request
//! path). Each read covers the sessions ended since a minute before the
//! previous read, so a transaction that commits late is not missed.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_util::StreamExt as _;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

/// How often the table is read, subscribed or not.
const POLL: Duration = Duration::from_secs(1);
/// Each read starts this long before the previous one (late commits).
const OVERLAP_SECS: f64 = 60.0;
/// The longest a publish or a subscription attempt waits on Redis.
const REDIS_TIMEOUT: Duration = Duration::from_millis(500);
/// How often expired rows are deleted from the table.
const PRUNE_EVERY: Duration = Duration::from_secs(600);

/// Which of a user's sessions end.
#[derive(Debug, Clone, Copy)]
pub enum Ending {
    /// This one (`logout` local, a refresh-token replay).
    One(Uuid),
    /// Every one (`logout` global, a ban).
    All,
    /// Every one but this (`logout` others, a password change).
    AllBut(Uuid),
}

/// A session that ended, and when its last access token expires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ended {
    pub session_id: Uuid,
    pub expires_at: i64,
}

/// Deletes the user's sessions that `ending` names (their refresh tokens go
/// with them) and records them as ended, in the caller's transaction (an
/// auth-server transaction: `app.auth = on`). `token_ttl` is the lifetime of
/// the access tokens they may have issued. Publish the result with
/// [`EndedSessions::announce`] after the commit.
pub async fn end_sessions(
    conn: &mut PgConnection,
    user_id: Uuid,
    ending: Ending,
    token_ttl: Duration,
) -> Result<Vec<Ended>, sqlx::Error> {
    let (session, only) = match ending {
        Ending::One(s) => (Some(s), true),
        Ending::All => (None, true),
        Ending::AllBut(s) => (Some(s), false),
    };
    // One statement with the same parameters for every kind of ending.
    let rows: Vec<(Uuid, DateTime<Utc>)> = sqlx::query_as(
        "with ended as (
             delete from app.auth_sessions
             where user_id = $1 and ($2::uuid is null or (id = $2) = $3)
             returning id)
         insert into app.auth_ended_sessions (session_id, user_id, expires_at)
         select id, $1, now() + make_interval(secs => $4) from ended
         returning session_id, expires_at",
    )
    .bind(user_id)
    .bind(session)
    .bind(only)
    .bind(token_ttl.as_secs_f64() + LEEWAY_SECS)
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().map(ended).collect())
}

/// Records one session as ended without deleting it (a refresh-token replay
/// revokes the session but keeps it, so later replays are still recognised).
pub async fn record_ended(
    conn: &mut PgConnection,
    user_id: Uuid,
    session_id: Uuid,
    token_ttl: Duration,
) -> Result<Ended, sqlx::Error> {
    let row: (Uuid, DateTime<Utc>) = sqlx::query_as(
        "insert into app.auth_ended_sessions (session_id, user_id, expires_at)
         values ($1, $2, now() + make_interval(secs => $3))
         returning session_id, expires_at",
    )
    .bind(session_id)
    .bind(user_id)
    .bind(token_ttl.as_secs_f64() + LEEWAY_SECS)
    .fetch_one(conn)
    .await?;
    Ok(ended(row))
}

/// Tokens are accepted this long past `exp` (the verifier's leeway), plus a margin.
const LEEWAY_SECS: f64 = 120.0;

fn ended((session_id, expires_at): (Uuid, DateTime<Utc>)) -> Ended {
    Ended {
        session_id,
        expires_at: expires_at.timestamp(),
    }
}

/// This process's view of the ended sessions. Cheap to clone.
#[derive(Clone)]
pub struct EndedSessions {
    inner: Arc<Inner>,
}

struct Inner {
    /// Session id → unix second after which its tokens are expired anyway.
    ended: RwLock<HashMap<Uuid, i64>>,
    pool: PgPool,
    redis: Option<redis::Client>,
    publisher: Option<redis::aio::ConnectionManager>,
    channel: String,
    /// The subscription is up.
    subscribed: AtomicBool,
}

impl EndedSessions {
    /// A set fed from `pool` and, when `redis_url` is given, by the channel
    /// `{prefix}:auth:ended-sessions`. Call [`load`](Self::load) before
    /// serving and run [`follow`](Self::follow) in the background.
    pub fn new(pool: PgPool, redis_url: Option<&url::Url>, prefix: &str) -> anyhow::Result<Self> {
        let (redis, publisher) = match redis_url {
            Some(url) => (
                Some(redis::Client::open(url.as_str())?),
                Some(crate::core::cache::fast_connection(url)?),
            ),
            None => (None, None),
        };
        Ok(EndedSessions {
            inner: Arc::new(Inner {
                ended: RwLock::new(HashMap::new()),
                pool,
                redis,
                publisher,
                channel: format!("{prefix}:auth:ended-sessions"),
                subscribed: AtomicBool::new(false),
            }),
        })
    }

    /// Whether access tokens of `session_id` must be refused.
    pub fn is_ended(&self, session_id: Uuid) -> bool {
        let ended = self.inner.ended.read().unwrap_or_else(|e| e.into_inner());
        ended
            .get(&session_id)
            .is_some_and(|&until| until >= Utc::now().timestamp())
    }

    /// How many ended sessions this process knows of.
    pub fn len(&self) -> usize {
        self.inner
            .ended
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether the Redis subscription is up (else the table is polled).
    pub fn subscribed(&self) -> bool {
        self.inner.subscribed.load(Ordering::Relaxed)
    }

    fn remember(&self, sessions: impl IntoIterator<Item = Ended>) {
        let mut ended = self.inner.ended.write().unwrap_or_else(|e| e.into_inner());
        for e in sessions {
            ended.insert(e.session_id, e.expires_at);
        }
    }

    fn forget_expired(&self) {
        let now = Utc::now().timestamp();
        let mut ended = self.inner.ended.write().unwrap_or_else(|e| e.into_inner());
        ended.retain(|_, until| *until >= now);
    }

    /// Takes in sessions this process just ended (committed), and tells the
    /// other replicas. A failed publish is only logged: they read the table.
    pub async fn announce(&self, sessions: &[Ended]) {
        if sessions.is_empty() {
            return;
        }
        self.remember(sessions.iter().copied());
        let Some(mut conn) = self.inner.publisher.clone() else {
            return;
        };
        let message = encode(sessions);
        let mut cmd = redis::cmd("PUBLISH");
        cmd.arg(&self.inner.channel).arg(message);
        let publish = cmd.query_async::<i64>(&mut conn);
        match tokio::time::timeout(REDIS_TIMEOUT, publish).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "cannot publish ended sessions; replicas will read them from Postgres")
            }
            Err(_) => tracing::warn!(
                "publishing ended sessions timed out; replicas will read them from Postgres"
            ),
        }
    }

    /// Reads the sessions ended at or after `since` (all live ones when
    /// `None`); returns the database's clock at the read.
    pub async fn load(&self, since: Option<DateTime<Utc>>) -> Result<DateTime<Utc>, sqlx::Error> {
        let mut tx = crate::core::db::auth_tx(&self.inner.pool).await?;
        let now: DateTime<Utc> = sqlx::query_scalar("select now()")
            .fetch_one(&mut *tx)
            .await?;
        let rows: Vec<(Uuid, DateTime<Utc>)> = sqlx::query_as(
            "select session_id, expires_at from app.auth_ended_sessions
             where expires_at > now() and ($1::timestamptz is null or ended_at >= $1)",
        )
        .bind(since)
        .fetch_all(&mut *tx)
        .await?;
        tx.rollback().await?;
        self.remember(rows.into_iter().map(ended));
        Ok(now)
    }

    /// Deletes rows whose tokens have all expired.
    async fn prune(&self) -> Result<u64, sqlx::Error> {
        let mut tx = crate::core::db::auth_tx(&self.inner.pool).await?;
        let n = sqlx::query("delete from app.auth_ended_sessions where expires_at < now()")
            .execute(&mut *tx)
            .await?
            .rows_affected();
        tx.commit().await?;
        Ok(n)
    }

    /// Keeps the set current until `stopped`: the Redis subscription when it
    /// can be had, and the table, read after every (re)subscription and
    /// every second.
    pub async fn follow(self, mut stopped: tokio::sync::watch::Receiver<bool>) {
        let mut last_read: Option<DateTime<Utc>> = None;
        let mut last_prune = tokio::time::Instant::now();
        loop {
            if *stopped.borrow() {
                return;
            }
            let subscription = match &self.inner.redis {
                Some(client) => self.subscribe(client).await,
                None => None,
            };
            match subscription {
                Some(mut pubsub) => {
                    self.inner.subscribed.store(true, Ordering::Relaxed);
                    // Subscribed first, then read: nothing falls between.
                    self.catch_up(&mut last_read).await;
                    let mut messages = pubsub.on_message();
                    let mut tick = tokio::time::interval(POLL);
                    tick.reset();
                    loop {
                        tokio::select! {
                            msg = messages.next() => match msg {
                                Some(msg) => {
                                    if let Ok(payload) = msg.get_payload::<String>() {
                                        self.remember(decode(&payload));
                                    }
                                }
                                None => break,
                            },
                            _ = tick.tick() => {
                                self.catch_up(&mut last_read).await;
                                self.housekeeping(&mut last_prune).await;
                            }
                            _ = stopped.changed() => return,
                        }
                    }
                    self.inner.subscribed.store(false, Ordering::Relaxed);
                    tracing::warn!("ended-sessions subscription lost; polling Postgres");
                }
                None => {
                    self.catch_up(&mut last_read).await;
                    self.housekeeping(&mut last_prune).await;
                    tokio::select! {
                        _ = tokio::time::sleep(POLL) => {}
                        _ = stopped.changed() => return,
                    }
                }
            }
        }
    }

    async fn subscribe(&self, client: &redis::Client) -> Option<redis::aio::PubSub> {
        let attempt = async {
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(&self.inner.channel).await?;
            Ok::<_, redis::RedisError>(pubsub)
        };
        match tokio::time::timeout(REDIS_TIMEOUT, attempt).await {
            Ok(Ok(p)) => Some(p),
            _ => None,
        }
    }

    async fn catch_up(&self, last_read: &mut Option<DateTime<Utc>>) {
        let since =
            last_read.map(|t| t - chrono::Duration::milliseconds((OVERLAP_SECS * 1e3) as i64));
        match self.load(since).await {
            Ok(now) => *last_read = Some(now),
            Err(e) => tracing::warn!(error = %e, "cannot read ended sessions"),
        }
    }

    async fn housekeeping(&self, last_prune: &mut tokio::time::Instant) {
        if last_prune.elapsed() < PRUNE_EVERY {
            return;
        }
        *last_prune = tokio::time::Instant::now();
        self.forget_expired();
        if let Err(e) = self.prune().await {
            tracing::warn!(error = %e, "cannot prune ended sessions");
        }
    }
}

/// `<session>:<expires>,...`
fn encode(sessions: &[Ended]) -> String {
    sessions
        .iter()
        .map(|e| format!("{}:{}", e.session_id, e.expires_at))
        .collect::<Vec<_>>()
        .join(",")
}

fn decode(payload: &str) -> Vec<Ended> {
    payload
        .split(',')
        .filter_map(|item| {
            let (id, until) = item.split_once(':')?;
            Some(Ended {
                session_id: id.parse().ok()?,
                expires_at: until.parse().ok()?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_and_junk_is_skipped() {
        let a = Ended {
            session_id: Uuid::new_v4(),
            expires_at: 1_900_000_000,
        };
        let b = Ended {
            session_id: Uuid::new_v4(),
            expires_at: 1_900_000_060,
        };
        assert_eq!(decode(&encode(&[a, b])), vec![a, b]);
        assert_eq!(decode("nonsense,,x:y"), vec![]);
        assert_eq!(decode(&format!("junk,{}", encode(&[a]))), vec![a]);
    }
}
