//! The handles the engine's parts share: the database (outbox, records,
//! cron ticks) and the broker.

use sqlx::PgPool;

use super::broker::Broker;

/// The database and the broker, as the relay, the worker and the operator
/// actions use them. Cheap to clone.
#[derive(Clone)]
pub struct Engine {
    pub pool: PgPool,
    pub broker: Broker,
}

impl Engine {
    /// The engine on `pool`, with the broker at `redis_url` under the key
    /// prefix `prefix`.
    pub fn new(pool: PgPool, redis_url: &url::Url, prefix: &str) -> anyhow::Result<Engine> {
        let broker = Broker::new(redis_url, prefix)?;
        Ok(Engine { pool, broker })
    }
}
