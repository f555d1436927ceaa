//! The job system as operators run it: real `tenantry worker` processes,
//! killed with SIGKILL or stopped with SIGTERM, and a real Redis server
//! stopped and started again.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::smtp::SmtpSink;
use crate::common::*;
use reqwest::StatusCode;
use serde_json::json;
use uuid::Uuid;

/// A `tenantry worker` process on `db` with the test's broker prefix.
fn worker(db: &TestDb, redis_url: &str, prefix: &str, extra: &[(&str, &str)]) -> Child {
    let mut c = Command::new(env!("CARGO_BIN_EXE_tenantry"));
    c.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .arg("worker")
        .env("DATABASE_URL", &db.app_url)
        .env("REDIS_URL", redis_url)
        .env("JWT_SECRET", SECRET)
        .env("JOBS_PREFIX", prefix)
        .env("JOB_LEASE_SECS", "2")
        .env("LOG_FORMAT", "json")
        .env("RUST_LOG", "warn")
        .env(
            "REPORTS_STORE",
            std::env::temp_dir().join(format!("tenantry-reports-{prefix}")),
        );
    for (k, v) in extra {
        c.env(k, v);
    }
    c.stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start tenantry worker")
}

fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig}");
}

async fn wait_exit(child: &mut Child, secs: u64) -> std::process::ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        assert!(Instant::now() < deadline, "worker did not exit in {secs} s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Enqueues `n` probe jobs with `label` in one transaction.
async fn enqueue_probes(db: &TestDb, n: usize, label: &str, sleep_ms: u64) -> Vec<Uuid> {
    let job = tenantry::jobs::probe::Probe {
        label: label.into(),
        sleep_ms,
        fail_attempts: 0,
    };
    let mut tx = db.app.begin().await.unwrap();
    let mut ids = Vec::new();
    let envelopes: Vec<_> = (0..n)
        .map(|_| tenantry::jobs::envelope_for(&job, &Default::default()).unwrap())
        .collect();
    ids.extend(envelopes.iter().map(|e| e.id));
    tenantry::jobs::insert_outbox(&mut tx, &envelopes)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    ids
}

async fn probes(db: &TestDb, label: &str) -> (i64, i64) {
    sqlx::query_as(
        "select count(*), coalesce(sum(runs), 0)::bigint from app.job_probes where label = $1",
    )
    .bind(label)
    .fetch_one(&db.admin)
    .await
    .unwrap()
}

async fn broker_counts(db: &TestDb, redis_url: &str, prefix: &str) -> (u64, u64, u64, i64) {
    let config = test_config(
        &db.app_url,
        &[("REDIS_URL", redis_url), ("JOBS_PREFIX", prefix)],
    );
    let engine = tenantry::app::background::engine(db.app.clone(), &config).unwrap();
    let s = tenantry::jobs::admin::stats(&engine).await.unwrap();
    let ready: u64 = s.broker.queues.iter().map(|q| q.ready).sum();
    (ready, s.broker.running, s.broker.dead, s.outbox)
}

const REDIS: &str = "redis://127.0.0.1:6379/0";

#[tokio::test]
async fn a_worker_killed_mid_run_loses_no_job_and_repeats_no_effect() {
    let db = TestDb::new().await;
    let prefix = format!("test-{}", Uuid::new_v4().simple());
    let label = "sigkill";
    let ids = enqueue_probes(&db, 1000, label, 5).await;
    assert_eq!(ids.len(), 1000);

    let mut first = worker(&db, REDIS, &prefix, &[]);
    // Let it get part of the way, then kill it without warning.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (done, _) = probes(&db, label).await;
        if done >= 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the first worker ran only {done} jobs"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    signal(&first, "-KILL");
    wait_exit(&mut first, 10).await;
    let (done_at_kill, _) = probes(&db, label).await;
    assert!(
        done_at_kill < 1000,
        "the kill came too late to test anything"
    );

    let mut second = worker(&db, REDIS, &prefix, &[]);
    let deadline = Instant::now() + Duration::from_secs(90);
    let (done, runs) = loop {
        let (done, runs) = probes(&db, label).await;
        if done == 1000 {
            break (done, runs);
        }
        assert!(
            Instant::now() < deadline,
            "only {done} of 1000 jobs ran after the restart"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // Every job's effect exactly once (one row each); deliveries may repeat
    // for jobs that were running when the worker died.
    assert_eq!(done, 1000);
    assert!(runs >= 1000);
    let ids_done: i64 = sqlx::query_scalar(
        "select count(*) from app.job_probes where job_id = any($1) and label = $2",
    )
    .bind(&ids)
    .bind(label)
    .fetch_one(&db.admin)
    .await
    .unwrap();
    assert_eq!(ids_done, 1000, "every enqueued id ran");
    // Nothing left anywhere, nothing dead.
    let counts = eventually(20, "the broker to be empty", || async {
        let c = broker_counts(&db, REDIS, &prefix).await;
        (c == (0, 0, 0, 0)).then_some(c)
    })
    .await;
    assert_eq!(counts, (0, 0, 0, 0));
    eprintln!(
        "sigkill: {done_at_kill} done at the kill, {} repeated deliveries, 0 lost",
        runs - 1000
    );
    signal(&second, "-TERM");
    assert!(wait_exit(&mut second, 30).await.success());
}

#[tokio::test]
async fn sigterm_lets_running_jobs_finish_then_exits() {
    let db = TestDb::new().await;
    let prefix = format!("test-{}", Uuid::new_v4().simple());
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let mut w = worker(
        &db,
        REDIS,
        &prefix,
        &[("WORKER_METRICS_ADDR", addr.as_str())],
    );
    let ids = enqueue_probes(&db, 3, "slow", 2000).await;
    // Wait until all three run.
    eventually(30, "three running jobs", || async {
        let (_, running, _, _) = broker_counts(&db, REDIS, &prefix).await;
        (running == 3).then_some(())
    })
    .await;
    // The worker's own metrics: three probe attempts started, none finished.
    let metrics = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("tenantry_jobs_started_total{kind=\"jobs.probe\"} 3"),
        "{metrics}"
    );
    assert!(metrics.contains("tenantry_jobs_running 3"), "{metrics}");
    signal(&w, "-TERM");
    let status = wait_exit(&mut w, 30).await;
    assert!(status.success(), "{status:?}");
    let (done, runs) = probes(&db, "slow").await;
    assert_eq!(
        (done, runs),
        (3, 3),
        "all three finished before the exit: {ids:?}"
    );
    assert_eq!(broker_counts(&db, REDIS, &prefix).await, (0, 0, 0, 0));
}

/// A private redis-server on a free port, stopped on drop.
struct Redis {
    port: u16,
    child: Option<Child>,
}

impl Redis {
    fn start_on(port: u16) -> Redis {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server");
        let r = Redis {
            port,
            child: Some(child),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        r
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

#[tokio::test]
async fn with_redis_down_requests_succeed_jobs_wait_in_the_outbox_and_all_run_after() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut redis = Redis::start_on(port);
    let sink = SmtpSink::start().await;
    let smtp = sink.url();
    let redis_url = redis.url();
    let app = TestApp::spawn_with(
        &[
            ("REDIS_URL", redis_url.as_str()),
            ("SMTP_URL", smtp.as_str()),
        ],
        5,
    )
    .await;
    // More seats than the free plan's default allows.
    app.unlimited_seats().await;
    let prefix = app.state.config.jobs.prefix.clone();
    let mut w = worker(&app.db, &redis_url, &prefix, &[("SMTP_URL", smtp.as_str())]);
    let owner = app.user("owner@example.com");
    let org = app.create_org(&owner, "Acme").await;
    // What was enqueued so far (the new org's jobs) is relayed before Redis
    // goes: the outbox then holds exactly what is enqueued during the outage.
    eventually(30, "an empty outbox", || async {
        let n: i64 = sqlx::query_scalar("select count(*) from app.job_outbox")
            .fetch_one(&app.db.admin)
            .await
            .unwrap();
        (n == 0).then_some(())
    })
    .await;

    redis.stop();
    // Every request succeeds while Redis is down; each enqueues an email.
    for i in 0..10 {
        let (s, body) = app
            .post(
                &format!("/api/v1/orgs/{org}/invitations"),
                &owner,
                json!({"email": format!("user{i}@example.com"), "role": "member"}),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{body}");
    }
    let waiting: Vec<String> = sqlx::query_scalar("select envelope from app.job_outbox")
        .fetch_all(&app.db.admin)
        .await
        .unwrap();
    assert_eq!(
        waiting.len(),
        10,
        "the jobs wait in the outbox: {waiting:?}"
    );
    assert!(sink.messages().is_empty());

    let _redis = Redis::start_on(port);
    let got = sink.wait_for(10, Duration::from_secs(60)).await;
    let mut to: Vec<String> = got.iter().flat_map(|m| m.rcpt_to.clone()).collect();
    to.sort();
    to.dedup();
    assert_eq!(to.len(), 10, "{to:?}");
    let waiting: i64 = sqlx::query_scalar("select count(*) from app.job_outbox")
        .fetch_one(&app.db.admin)
        .await
        .unwrap();
    assert_eq!(waiting, 0);
    signal(&w, "-TERM");
    assert!(wait_exit(&mut w, 30).await.success());
}

/// `tenantry admin jobs ...` against a real database and Redis.
fn admin(db: &TestDb, prefix: &str, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tenantry"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .args(["admin", "jobs"])
        .args(args)
        .env("DATABASE_URL", &db.app_url)
        .env("REDIS_URL", REDIS)
        .env("JWT_SECRET", SECRET)
        .env("JOBS_PREFIX", prefix)
        .env("RUST_LOG", "warn")
        .env(
            "REPORTS_STORE",
            std::env::temp_dir().join(format!("tenantry-reports-{prefix}")),
        )
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn operators_list_inspect_retry_and_discard_dead_jobs_from_the_cli() {
    let db = TestDb::new().await;
    let prefix = format!("test-{}", Uuid::new_v4().simple());
    let mut w = worker(&db, REDIS, &prefix, &[]);
    // A healthy pipeline: probes run.
    let (ok, out, err) = admin(
        &db,
        &prefix,
        &["probe", "--count", "5", "--wait-secs", "30"],
    );
    assert!(ok, "{out}{err}");
    assert!(out.contains("all 5 ran"), "{out}");
    // A probe that fails all its attempts dies.
    let (ok, out, err) = admin(
        &db,
        &prefix,
        &["probe", "--fail-attempts", "3", "--wait-secs", "0"],
    );
    assert!(ok, "{out}{err}");
    let dead = eventually(30, "a dead job", || async {
        let (ok, out, _) = admin(&db, &prefix, &["dead"]);
        assert!(ok);
        let jobs: Vec<serde_json::Value> = serde_json::Deserializer::from_str(&out)
            .into_iter()
            .collect::<Result<_, _>>()
            .unwrap();
        jobs.into_iter().next()
    })
    .await;
    let id = dead["id"].as_str().unwrap().to_owned();
    assert_eq!(dead["attempts"], 3);
    let (ok, out, _) = admin(&db, &prefix, &["show", &id]);
    assert!(ok);
    let shown: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(shown["id"], dead["id"]);
    assert!(shown["error"].as_str().unwrap().contains("on purpose"));
    let (ok, out, _) = admin(&db, &prefix, &["stats"]);
    assert!(ok);
    let stats: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(stats["dead"], 1, "{stats}");

    // Retry: it runs again (and, failing again, dies again with 3 attempts).
    let (ok, out, err) = admin(&db, &prefix, &["retry", &id]);
    assert!(ok, "{out}{err}");
    let (ok, _, err) = admin(&db, &prefix, &["show", &id]);
    assert!(!ok, "not dead right after the retry");
    assert!(err.contains("no dead job"), "{err}");
    eventually(30, "the retried job to die again", || async {
        admin(&db, &prefix, &["show", &id]).0.then_some(())
    })
    .await;
    // Discard: gone; a second discard fails with a clear line.
    let (ok, out, _) = admin(&db, &prefix, &["discard", &id]);
    assert!(ok && out.contains("discarded"), "{out}");
    let (ok, _, err) = admin(&db, &prefix, &["discard", &id]);
    assert!(!ok);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    let (_, out, _) = admin(&db, &prefix, &["stats"]);
    let stats: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(stats["dead"], 0, "{stats}");
    signal(&w, "-TERM");
    assert!(wait_exit(&mut w, 30).await.success());
}
