//! Group commit of spends: the spends in flight in this process go to
//! Postgres together, as one statement (`app.credit_spend_batch`) that
//! authorises and applies each in order and commits once. A hot org's
//! account lock is then taken once per batch instead of once per request,
//! and the commit's flush is shared, while each request keeps its own
//! authorisation, idempotency key, ledger lines and answer.
//!
//! A request queues its spend; when fewer than [`MAX_RUNNERS`] batches are
//! running, it starts a runner: a task of its own (a client that goes away
//! cannot abandon the others) that takes whatever queued, up to
//! [`MAX_BATCH`], orders it by org (so concurrent batches, here or in other
//! processes, lock accounts in one order and cannot deadlock), runs it,
//! answers each waiter, and goes on until the queue is empty.

use std::sync::{Arc, Mutex};

use serde_json::Value;
use sqlx::PgPool;
use tokio::sync::oneshot;
use uuid::Uuid;

use super::error::CreditError;
use crate::core::error::DbTrouble;

/// Most spends in one statement.
pub const MAX_BATCH: usize = 256;
/// Most batches running at once (each holds one connection).
pub const MAX_RUNNERS: usize = 2;
/// Most spends waiting; more are refused at once (503 `busy`).
pub const MAX_PENDING: usize = 10_000;

/// One spend request, authorised by the statement itself.
pub struct SpendItem {
    pub org_id: Uuid,
    pub user_id: Option<Uuid>,
    pub key_hash: Option<[u8; 32]>,
    pub permission: &'static str,
    pub amount: i64,
    pub description: Option<String>,
    pub key: String,
    pub hash: [u8; 32],
}

type Reply = oneshot::Sender<Result<Value, CreditError>>;

#[derive(Default)]
struct Queue {
    pending: Vec<(SpendItem, Reply)>,
    runners: usize,
}

/// The spend queue of this process.
#[derive(Clone, Default)]
pub struct SpendBatcher {
    queue: Arc<Mutex<Queue>>,
}

impl SpendBatcher {
    /// Queues `item` and waits for its result: the item's own JSON from
    /// `app.credit_spend_batch`.
    pub async fn submit(&self, pool: &PgPool, item: SpendItem) -> Result<Value, CreditError> {
        let (reply, answer) = oneshot::channel();
        let start = {
            let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
            if q.pending.len() >= MAX_PENDING {
                return Err(CreditError::SpendQueueFull);
            }
            q.pending.push((item, reply));
            let start = q.runners < MAX_RUNNERS;
            if start {
                q.runners += 1;
            }
            start
        };
        if start {
            tokio::spawn(run(self.queue.clone(), pool.clone()));
        }
        answer.await.unwrap_or_else(|_| {
            Err(CreditError::Internal(anyhow::anyhow!(
                "the spend batch ended without an answer"
            )))
        })
    }
}

/// Gives a runner's slot back however it ends (a panic included: the
/// spends of its batch then fail, and the next request starts a runner).
struct Slot(Arc<Mutex<Queue>>);

impl Drop for Slot {
    fn drop(&mut self) {
        let mut q = self.0.lock().unwrap_or_else(|e| e.into_inner());
        q.runners -= 1;
    }
}

/// Runs batches until the queue is empty.
async fn run(queue: Arc<Mutex<Queue>>, pool: PgPool) {
    let _slot = Slot(queue.clone());
    loop {
        let mut batch: Vec<(SpendItem, Reply)> = {
            let mut q = queue.lock().unwrap_or_else(|e| e.into_inner());
            // A spend whose request is gone (the client left, or its
            // request timed out with a 503) is never made.
            q.pending.retain(|(_, reply)| !reply.is_closed());
            if q.pending.is_empty() {
                return;
            }
            let n = q.pending.len().min(MAX_BATCH);
            q.pending.drain(..n).collect()
        };
        // One lock order for every batch; arrival order within an org.
        batch.sort_by_key(|(item, _)| item.org_id);
        let (items, replies): (Vec<SpendItem>, Vec<Reply>) = batch.into_iter().unzip();
        match execute(&pool, &items).await {
            Ok(results) if results.len() == replies.len() => {
                for (reply, result) in replies.into_iter().zip(results) {
                    let _ = reply.send(Ok(result));
                }
            }
            Ok(results) => {
                tracing::error!(
                    sent = replies.len(),
                    got = results.len(),
                    "the spend batch returned a result count that does not match"
                );
                for reply in replies {
                    let _ = reply.send(Err(CreditError::Internal(anyhow::anyhow!(
                        "the spend batch returned a result count that does not match"
                    ))));
                }
            }
            Err(e) => {
                // Every request of the batch fails alike (an error of one
                // spend's own, like insufficient credits, is its result,
                // not an error of the batch). Mostly nothing was committed;
                // when the connection broke while the commit's answer was
                // on its way, it may have been: a retry with the same
                // idempotency key then answers what was stored.
                // A passing condition (busy, a deadlock between batches,
                // the database unreachable) is a 503 with Retry-After,
                // never a 500.
                let trouble = match &e {
                    sqlx::Error::Database(db) if db.code().as_deref() == Some("40P01") => {
                        Some(DbTrouble::Busy)
                    }
                    e => DbTrouble::of(e),
                };
                tracing::warn!(error = %e, ?trouble, spends = replies.len(), "spend batch failed");
                for reply in replies {
                    let _ = reply.send(Err(match trouble {
                        Some(trouble) => CreditError::SpendBatchTrouble(trouble),
                        None => CreditError::Internal(anyhow::anyhow!("spend batch failed: {e}")),
                    }));
                }
            }
        }
    }
}

async fn execute(pool: &PgPool, items: &[SpendItem]) -> Result<Vec<Value>, sqlx::Error> {
    let orgs: Vec<Uuid> = items.iter().map(|i| i.org_id).collect();
    let users: Vec<Option<Uuid>> = items.iter().map(|i| i.user_id).collect();
    let key_hashes: Vec<Option<Vec<u8>>> = items
        .iter()
        .map(|i| i.key_hash.map(|h| h.to_vec()))
        .collect();
    let perms: Vec<&str> = items.iter().map(|i| i.permission).collect();
    let amounts: Vec<i64> = items.iter().map(|i| i.amount).collect();
    let descriptions: Vec<Option<&str>> = items.iter().map(|i| i.description.as_deref()).collect();
    let keys: Vec<&str> = items.iter().map(|i| i.key.as_str()).collect();
    let hashes: Vec<Vec<u8>> = items.iter().map(|i| i.hash.to_vec()).collect();
    sqlx::query_scalar(
        "select r from app.credit_spend_batch($1, $2, $3, $4, $5, $6, $7, $8)
         with ordinality as t (r, n) order by n",
    )
    .bind(orgs)
    .bind(users)
    .bind(key_hashes)
    .bind(perms)
    .bind(amounts)
    .bind(descriptions)
    .bind(keys)
    .bind(hashes)
    .fetch_all(pool)
    .await
}
