//! The Redis rate limiter against a real Redis (REDIS_URL, default
//! redis://127.0.0.1:6379): exact bursts, refill, atomicity under concurrency,
//! reset, and the fail mode when Redis is unreachable.
use std::time::{Duration, Instant};

use tenantry::core::ratelimit::{Decision, FailMode, Quota, RateLimiter};

fn redis_url() -> url::Url {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    url::Url::parse(&url).expect("REDIS_URL")
}

/// A limiter on the real Redis under a prefix no other test uses.
fn limiter() -> RateLimiter {
    let prefix = format!("test-rl-{}", uuid::Uuid::new_v4().simple());
    RateLimiter::new(&redis_url(), &prefix).unwrap()
}

async fn allowed_count(rl: &RateLimiter, key: &str, quota: Quota, tries: usize) -> usize {
    let mut n = 0;
    for _ in 0..tries {
        if rl.check(key, quota).await.is_allowed() {
            n += 1;
        }
    }
    n
}

#[tokio::test]
async fn a_burst_is_allowed_exactly_then_limited() {
    let rl = limiter();
    let quota = Quota::per_minute(10);
    for i in 0..10u32 {
        assert_eq!(
            rl.check("ann", quota).await,
            Decision::Allowed { remaining: 9 - i },
            "call {i}"
        );
    }
    let Decision::Limited { retry_after } = rl.check("ann", quota).await else {
        panic!("the 11th call should be limited");
    };
    assert!(
        retry_after >= Duration::from_secs(5) && retry_after <= Duration::from_secs(7),
        "{retry_after:?}"
    );
    // A limited call takes nothing, and other keys have their own buckets.
    assert!(!rl.check("ann", quota).await.is_allowed());
    assert_eq!(
        rl.check("bob", quota).await,
        Decision::Allowed { remaining: 9 }
    );
}

#[tokio::test]
async fn tokens_replenish() {
    let rl = limiter();
    let quota = Quota::new(5, Duration::from_millis(500));
    assert_eq!(allowed_count(&rl, "k", quota, 8).await, 5);
    let Decision::Limited { retry_after } = rl.check("k", quota).await else {
        panic!("should be limited");
    };
    assert!(retry_after <= Duration::from_millis(100), "{retry_after:?}");
    // One interval (100 ms) later, one more.
    tokio::time::sleep(Duration::from_millis(130)).await;
    assert!(rl.check("k", quota).await.is_allowed());
    assert!(!rl.check("k", quota).await.is_allowed());
    // After the whole period, the full burst again.
    tokio::time::sleep(Duration::from_millis(550)).await;
    assert_eq!(allowed_count(&rl, "k", quota, 8).await, 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_checks_allow_exactly_the_burst() {
    let rl = limiter();
    let quota = Quota::per_minute(10);
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let rl = rl.clone();
            tokio::spawn(async move { rl.check("shared", quota).await })
        })
        .collect();
    let mut allowed = 0;
    let mut remaining = Vec::new();
    for t in tasks {
        if let Decision::Allowed { remaining: r } = t.await.unwrap() {
            allowed += 1;
            remaining.push(r);
        }
    }
    assert_eq!(allowed, 10);
    remaining.sort_unstable();
    assert_eq!(remaining, (0..10).collect::<Vec<u32>>());
}

#[tokio::test]
async fn reset_empties_the_bucket() {
    let rl = limiter();
    let quota = Quota::per_minute(3);
    assert_eq!(allowed_count(&rl, "login:ann", quota, 5).await, 3);
    assert!(rl.reset("login:ann").await);
    assert_eq!(
        rl.check("login:ann", quota).await,
        Decision::Allowed { remaining: 2 }
    );
    // Resetting a key that has no bucket is fine.
    assert!(rl.reset("login:nobody").await);
}

#[tokio::test]
async fn long_keys_share_nothing_and_stay_short() {
    let rl = limiter();
    let quota = Quota::per_minute(1);
    let a = format!("{}a", "x".repeat(500));
    let b = format!("{}b", "x".repeat(500));
    assert!(rl.check(&a, quota).await.is_allowed());
    assert!(!rl.check(&a, quota).await.is_allowed());
    assert!(rl.check(&b, quota).await.is_allowed());
}

#[tokio::test]
async fn idle_buckets_expire() {
    let prefix = format!("test-rl-{}", uuid::Uuid::new_v4().simple());
    let rl = RateLimiter::new(&redis_url(), &prefix).unwrap();
    assert!(rl.check("k", Quota::per_minute(10)).await.is_allowed());
    let client = redis::Client::open(redis_url().as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let ttl: i64 = redis::cmd("PTTL")
        .arg(format!("{prefix}:rl:k"))
        .query_async(&mut conn)
        .await
        .unwrap();
    // One request fills one interval: the key lives about 6 s.
    assert!((5_000..=6_000).contains(&ttl), "{ttl}");
}

#[tokio::test]
async fn unreachable_redis_follows_the_fail_mode_quickly() {
    let url = url::Url::parse("redis://127.0.0.1:1").unwrap();
    let quota = Quota::per_minute(10);

    let open = RateLimiter::new(&url, "test-rl-down").unwrap();
    assert_eq!(open.fail_mode(), FailMode::Open);
    let started = Instant::now();
    assert!(open.check("k", quota).await.is_allowed());
    assert!(
        started.elapsed() < Duration::from_millis(300),
        "{:?}",
        started.elapsed()
    );
    assert!(!open.reset("k").await);

    let closed = RateLimiter::new(&url, "test-rl-down")
        .unwrap()
        .with_fail_mode(FailMode::Closed);
    let started = Instant::now();
    let d = closed.check("k", quota).await;
    assert!(
        started.elapsed() < Duration::from_millis(300),
        "{:?}",
        started.elapsed()
    );
    let Decision::Limited { retry_after } = d else {
        panic!("fail-closed should limit: {d:?}");
    };
    assert!(retry_after > Duration::ZERO && retry_after <= Duration::from_secs(5));

    // Per call, whatever the limiter's default; during the backoff no call
    // waits on Redis at all.
    let started = Instant::now();
    assert!(
        !closed
            .check_with("k", quota, FailMode::Closed)
            .await
            .is_allowed()
    );
    assert!(
        closed
            .check_with("k", quota, FailMode::Open)
            .await
            .is_allowed()
    );
    assert!(
        started.elapsed() < Duration::from_millis(50),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn peek_counts_nothing_and_tells_a_pristine_bucket() {
    let rl = limiter();
    let quota = Quota::per_minute(3);
    let p = rl.peek("bea", quota).await;
    assert!(p.pristine && p.decision.is_allowed(), "{p:?}");
    // Peeking many times uses nothing up.
    for _ in 0..10 {
        rl.peek("bea", quota).await;
    }
    assert!(rl.check("bea", quota).await.is_allowed());
    let p = rl.peek("bea", quota).await;
    assert!(!p.pristine && p.decision.is_allowed(), "{p:?}");
    assert_eq!(allowed_count(&rl, "bea", quota, 5).await, 2);
    let p = rl.peek("bea", quota).await;
    assert!(!p.pristine, "{p:?}");
    assert!(p.decision.retry_after().is_some(), "{p:?}");
}

#[tokio::test]
async fn without_redis_the_local_mode_counts_in_memory() {
    let url = url::Url::parse("redis://127.0.0.1:1").unwrap();
    let rl = RateLimiter::new(&url, "test-rl-down-local")
        .unwrap()
        .with_fail_mode(FailMode::Local);
    let quota = Quota::per_minute(5);
    // The same burst as in Redis, then limited: neither open nor closed.
    assert_eq!(allowed_count(&rl, "k", quota, 8).await, 5);
    let Decision::Limited { retry_after } = rl.check("k", quota).await else {
        panic!("the sixth is limited");
    };
    assert!(retry_after > Duration::from_secs(5) && retry_after <= Duration::from_secs(12));
    // Keys are separate, peeks count nothing, a reset empties the bucket.
    assert!(rl.peek("other", quota).await.pristine);
    assert!(rl.check("other", quota).await.is_allowed());
    assert!(!rl.peek("other", quota).await.pristine);
    rl.reset("k").await;
    assert!(rl.check("k", quota).await.is_allowed());
}
