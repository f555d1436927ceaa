//! The job system in process: outbox semantics, retries and dead letters,
//! operator routes, cron ticks with several workers, the invitation email
//! over real SMTP, metrics. (Killed and stopped processes: `jobs_process.rs`.)

use std::time::Duration;

use crate::common::smtp::SmtpSink;
use crate::common::*;
use reqwest::{Method, StatusCode};
use serde_json::json;
use tenantry::jobs::probe::Probe;
use tenantry::jobs::{self, Options};
use uuid::Uuid;

async fn probe_runs(app: &TestApp, id: Uuid) -> Option<i32> {
    sqlx::query_scalar("select runs from app.job_probes where job_id = $1")
        .bind(id)
        .fetch_optional(&app.db.admin)
        .await
        .unwrap()
}

fn probe(label: &str) -> Probe {
    Probe {
        label: label.into(),
        sleep_ms: 0,
        fail_attempts: 0,
    }
}

async fn outbox_len(app: &TestApp) -> i64 {
    sqlx::query_scalar("select count(*) from app.job_outbox")
        .fetch_one(&app.db.admin)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_job_exists_if_and_only_if_its_transaction_commits() {
    let app = TestApp::spawn().await;
    let pool = &app.state.pool;

    let mut tx = pool.begin().await.unwrap();
    let rolled_back = jobs::enqueue(&mut tx, &probe("rollback")).await.unwrap();
    tx.rollback().await.unwrap();

    let mut tx = pool.begin().await.unwrap();
    let committed = jobs::enqueue(&mut tx, &probe("commit")).await.unwrap();
    // Not in the outbox for anyone else before the commit.
    assert_eq!(outbox_len(&app).await, 0);
    tx.commit().await.unwrap();
    assert_eq!(outbox_len(&app).await, 1);

    let worker = app.start_worker();
    let runs = eventually(20, "the committed job to run", || async {
        probe_runs(&app, committed).await
    })
    .await;
    // Give a duplicate delivery time to show up, then check: once, and never the other.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(probe_runs(&app, committed).await, Some(1), "runs: {runs}");
    assert_eq!(probe_runs(&app, rolled_back).await, None);
    assert_eq!(outbox_len(&app).await, 0, "the relay empties the outbox");
    let stats = tenantry::jobs::admin::stats(&app.state.jobs.engine)
        .await
        .unwrap();
    assert_eq!(
        (stats.broker.running, stats.broker.dead, stats.outbox),
        (0, 0, 0)
    );
    worker.stop().await;
}

#[tokio::test]
async fn a_delayed_job_waits_for_its_time() {
    let app = TestApp::spawn().await;
    let worker = app.start_worker();
    let mut tx = app.state.pool.begin().await.unwrap();
    let id = jobs::enqueue_with(
        &mut tx,
        &probe("later"),
        Options::delay(Duration::from_secs(2)),
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    let start = std::time::Instant::now();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(probe_runs(&app, id).await, None, "ran before its time");
    eventually(10, "the delayed job", || async {
        probe_runs(&app, id).await
    })
    .await;
    assert!(start.elapsed() >= Duration::from_secs(2));
    worker.stop().await;
}

#[tokio::test]
async fn failures_are_retried_with_backoff_then_dead_and_operators_can_retry_or_discard() {
    let app = TestApp::spawn().await;
    let worker = app.start_worker();
    // Fails twice then succeeds: within its 3 attempts.
    let flaky = Probe {
        fail_attempts: 2,
        ..probe("flaky")
    };
    // Fails all 3 attempts: dead.
    let doomed = Probe {
        fail_attempts: 3,
        ..probe("doomed")
    };
    let mut tx = app.state.pool.begin().await.unwrap();
    let flaky_id = jobs::enqueue(&mut tx, &flaky).await.unwrap();
    let doomed_id = jobs::enqueue(&mut tx, &doomed).await.unwrap();
    tx.commit().await.unwrap();
    let started = std::time::Instant::now();

    eventually(30, "the flaky job to succeed", || async {
        probe_runs(&app, flaky_id).await
    })
    .await;
    // Two backoffs of at least 250 ms and 500 ms (half of 0.5 s and 1 s, jittered).
    assert!(started.elapsed() >= Duration::from_millis(750));

    let key = service_key();
    let dead = eventually(30, "the doomed job in the dead letters", || async {
        let (s, body) = app
            .call(Method::GET, "/api/v1/admin/jobs/dead", Some(&key), None)
            .await;
        assert_eq!(s, StatusCode::OK, "{body}");
        let items = body["data"].as_array().unwrap().clone();
        (!items.is_empty()).then_some(items)
    })
    .await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0]["id"], json!(doomed_id));
    assert_eq!(dead[0]["kind"], "jobs.probe");
    assert_eq!(dead[0]["attempts"], 3);
    assert_eq!(dead[0]["max_attempts"], 3);
    assert!(
        dead[0]["error"].as_str().unwrap().contains("attempt 3"),
        "{}",
        dead[0]
    );
    assert_eq!(dead[0]["payload"]["label"], "doomed");
    assert_eq!(probe_runs(&app, doomed_id).await, None);

    let (s, one) = app
        .call(
            Method::GET,
            &format!("/api/v1/admin/jobs/dead/{doomed_id}"),
            Some(&key),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(one["id"], json!(doomed_id));

    // Retry from the dead letters: attempts start again at 1, so it fails
    // three more times and is dead again — proving it ran.
    let (s, body) = app
        .call(
            Method::POST,
            &format!("/api/v1/admin/jobs/dead/{doomed_id}/retry"),
            Some(&key),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let (s, _) = app
        .call(
            Method::GET,
            &format!("/api/v1/admin/jobs/dead/{doomed_id}"),
            Some(&key),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "no longer dead once requeued");
    let again = eventually(30, "the retried job to die again", || async {
        tenantry::jobs::admin::dead(&app.state.jobs.engine.broker, 10, None)
            .await
            .unwrap()
            .into_iter()
            .find(|j| j.id == doomed_id)
    })
    .await;
    assert_eq!(again.attempts, 3);

    // Discard: gone for good; a second discard is 404.
    let path = format!("/api/v1/admin/jobs/dead/{doomed_id}");
    let (s, _) = app.call(Method::DELETE, &path, Some(&key), None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _) = app.call(Method::DELETE, &path, Some(&key), None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    worker.stop().await;
}

#[tokio::test]
async fn an_undecodable_payload_goes_to_the_dead_letters_with_the_reason() {
    let app = TestApp::spawn().await;
    let worker = app.start_worker();
    // A probe envelope whose payload does not match the type, and one whose
    // envelope is not JSON at all: neither may poison the queue.
    let bad_payload = Uuid::now_v7();
    let envelope = json!({
        "id": bad_payload, "kind": "jobs.probe", "queue": "default",
        "payload": {"label": 42, "surprise": true}, "max_attempts": 3,
        "enqueued_at_ms": 0,
    });
    let garbage = Uuid::now_v7();
    let unknown_kind = Uuid::now_v7();
    let unknown = json!({
        "id": unknown_kind, "kind": "no.such.kind", "queue": "default",
        "payload": {}, "max_attempts": 3, "enqueued_at_ms": 0,
    });
    for (id, body) in [
        (bad_payload, envelope.to_string()),
        (garbage, "{not json".to_owned()),
        (unknown_kind, unknown.to_string()),
    ] {
        sqlx::query("insert into app.job_outbox (id, queue, envelope) values ($1, 'default', $2)")
            .bind(id)
            .bind(body)
            .execute(&app.db.admin)
            .await
            .unwrap();
    }
    // A good job behind them still runs.
    let mut tx = app.state.pool.begin().await.unwrap();
    let good = jobs::enqueue(&mut tx, &probe("good")).await.unwrap();
    tx.commit().await.unwrap();
    eventually(20, "the good job", || async {
        probe_runs(&app, good).await
    })
    .await;

    let dead = eventually(20, "three dead jobs", || async {
        let d = tenantry::jobs::admin::dead(&app.state.jobs.engine.broker, 10, None)
            .await
            .unwrap();
        (d.len() == 3).then_some(d)
    })
    .await;
    let reason = |id: Uuid| dead.iter().find(|j| j.id == id).unwrap().error.clone();
    assert!(
        reason(bad_payload).contains("cannot be decoded"),
        "{}",
        reason(bad_payload)
    );
    assert!(
        reason(garbage).contains("cannot be decoded"),
        "{}",
        reason(garbage)
    );
    assert!(
        reason(unknown_kind).contains("unknown job kind"),
        "{}",
        reason(unknown_kind)
    );
    // Dead at once: no retries for what cannot succeed.
    assert!(dead.iter().all(|j| j.attempts == 1), "{dead:?}");
    worker.stop().await;
}

#[tokio::test]
async fn operator_routes_need_a_service_role_key() {
    let app = TestApp::spawn().await;
    let user = app.user("ann@example.com");
    let (s, body) = app
        .call(Method::GET, "/api/v1/admin/jobs", None, None)
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{body}");
    let (s, body) = app.get("/api/v1/admin/jobs", &user).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{body}");
    // A service key signed with another secret is no key.
    let forged = {
        let claims = json!({"role": "service_role", "exp": 4102444800i64});
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(b"another-secret-another-secret-0123456789"),
        )
        .unwrap()
    };
    let (s, _) = app
        .call(Method::GET, "/api/v1/admin/jobs", Some(&forged), None)
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, body) = app
        .call(
            Method::GET,
            "/api/v1/admin/jobs",
            Some(&service_key()),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(body["outbox"], 0);
    let (s, body) = app
        .call(
            Method::GET,
            "/api/v1/admin/jobs/dead/not-a-uuid",
            Some(&service_key()),
            None,
        )
        .await;
    assert!(s.is_client_error(), "{s} {body}");
    let (s, body) = app
        .call(
            Method::GET,
            "/api/v1/admin/jobs/dead?cursor=garbage",
            Some(&service_key()),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{body}");
}

#[tokio::test]
async fn a_cron_schedule_fires_once_per_tick_with_three_workers() {
    let app = TestApp::spawn_with(&[("CRON_PROBE", "* * * * * *")], 5).await;
    // Three workers, each with its own pool and broker client, as three
    // processes would have.
    let mut workers = Vec::new();
    for _ in 0..3 {
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(4)
            .connect(&app.db.app_url)
            .await
            .unwrap();
        let background =
            tenantry::app::background::Background::new(pool, app.state.config.clone()).unwrap();
        let (stop, stopped) = tenantry::jobs::worker::Shutdown::new();
        let task = tokio::spawn(tenantry::app::background::run(background, stopped));
        workers.push((stop, task));
    }
    tokio::time::sleep(Duration::from_millis(4500)).await;
    for (stop, _) in &workers {
        let _ = stop.send(true);
    }
    for (_, task) in workers {
        task.await.unwrap();
    }
    // Let the last fired ticks run (a fresh worker drains them).
    let worker = app.start_worker();
    let ticks: i64 =
        sqlx::query_scalar("select count(*) from app.cron_ticks where name = 'jobs.probe'")
            .fetch_one(&app.db.admin)
            .await
            .unwrap();
    assert!((3..=6).contains(&ticks), "ticks claimed: {ticks}");
    let rows: Vec<(String, i64, i64)> = eventually(20, "every tick's probe to run", || async {
        let rows: Vec<(String, i64, i64)> = sqlx::query_as(
            "select label, count(*), sum(runs)::bigint from app.job_probes
             where label like 'cron:%' group by label order by label",
        )
        .fetch_all(&app.db.admin)
        .await
        .unwrap();
        (rows.len() as i64 == ticks).then_some(rows)
    })
    .await;
    for (label, jobs, runs) in &rows {
        assert_eq!(
            (*jobs, *runs),
            (1, 1),
            "tick {label} fired {jobs} jobs, {runs} runs"
        );
    }
    worker.stop().await;
}

#[tokio::test]
async fn creating_an_invitation_emails_its_link_and_a_rolled_back_one_sends_nothing() {
    let sink = SmtpSink::start().await;
    let url = sink.url();
    let app = TestApp::spawn_with(
        &[
            ("SMTP_URL", url.as_str()),
            ("MAIL_FROM", "Acme Team <team@acme.test>"),
            ("APP_URL", "https://app.acme.test/"),
        ],
        5,
    )
    .await;
    let worker = app.start_worker();
    let owner = app.user("owner@example.com");
    let org = app.create_org(&owner, "Acme <Rockets>").await;
    let (s, inv) = app
        .post(
            &format!("/api/v1/orgs/{org}/invitations"),
            &owner,
            json!({"email": "Ann@Example.com", "role": "member"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{inv}");
    // A request that fails validation enqueues nothing.
    let (s, _) = app
        .post(
            &format!("/api/v1/orgs/{org}/invitations"),
            &owner,
            json!({"email": "not-an-email", "role": "member"}),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);

    let got = sink.wait_for(1, Duration::from_secs(20)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(sink.messages().len(), 1, "exactly one email");
    let m = &got[0];
    assert_eq!(m.rcpt_to, vec!["ann@example.com".to_owned()]);
    assert_eq!(m.mail_from, "team@acme.test");
    let token = inv["token"].as_str().unwrap();
    let link = format!("https://app.acme.test/invitations/accept?token={token}");
    let text = m.text_body().unwrap();
    assert!(text.contains(&link), "{text}");
    assert!(text.contains("Acme <Rockets>"), "{text}");
    let html = m.html_body().unwrap();
    assert!(html.contains("Acme &lt;Rockets&gt;"), "{html}");
    assert!(m.subject().unwrap().contains("Acme"), "{:?}", m.subject());
    worker.stop().await;
}

#[tokio::test]
async fn a_rejected_recipient_is_dead_at_once_and_a_down_smtp_server_is_retried() {
    let rejecting = SmtpSink::start_rejecting(550).await;
    let url = rejecting.url();
    let app = TestApp::spawn_with(&[("SMTP_URL", url.as_str())], 5).await;
    let worker = app.start_worker();
    let owner = app.user("owner@example.com");
    let org = app.create_org(&owner, "Acme").await;
    let (s, inv) = app
        .post(
            &format!("/api/v1/orgs/{org}/invitations"),
            &owner,
            json!({"email": "ann@example.com", "role": "member"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{inv}");
    let dead = eventually(20, "the email job in the dead letters", || async {
        tenantry::jobs::admin::dead(&app.state.jobs.engine.broker, 10, None)
            .await
            .unwrap()
            .pop()
    })
    .await;
    assert_eq!(dead.kind, "email.send");
    assert_eq!(dead.attempts, 1, "a permanent rejection is not retried");
    assert!(dead.error.contains("550"), "{}", dead.error);
    assert_eq!(dead.payload["to"], "ann@example.com");
    worker.stop().await;
}

#[tokio::test]
async fn metrics_count_jobs_per_kind_and_show_queue_depths() {
    let app = TestApp::spawn_with(&[("METRICS_TOKEN", "scrape-me-0123456789")], 5).await;
    let worker = app.start_worker();
    let mut tx = app.state.pool.begin().await.unwrap();
    let id = jobs::enqueue(&mut tx, &probe("metrics")).await.unwrap();
    tx.commit().await.unwrap();
    eventually(20, "the probe", || async { probe_runs(&app, id).await }).await;
    let res = app
        .client
        .get(format!("{}/metrics", app.base))
        .bearer_auth("scrape-me-0123456789")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let body = res.text().await.unwrap();
    let value = |line_start: &str| -> f64 {
        body.lines()
            .find(|l| l.starts_with(line_start))
            .unwrap_or_else(|| panic!("no {line_start} in\n{body}"))
            .rsplit(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    // Counters are per process and tests share one: at least this job.
    assert!(value("tenantry_jobs_succeeded_total{kind=\"jobs.probe\"}") >= 1.0);
    assert!(value("tenantry_job_run_seconds_count{kind=\"jobs.probe\"}") >= 1.0);
    assert!(value("tenantry_job_start_latency_seconds_count{kind=\"jobs.probe\"}") >= 1.0);
    assert_eq!(value("tenantry_jobs_outbox "), 0.0);
    assert_eq!(value("tenantry_jobs_dead "), 0.0);
    assert!(
        body.contains("tenantry_jobs_queue_depth{queue=\"default\"} 0"),
        "{body}"
    );
    worker.stop().await;
}

#[tokio::test]
async fn a_stopping_worker_lets_running_jobs_finish() {
    let app = TestApp::spawn().await;
    let worker = app.start_worker();
    let mut tx = app.state.pool.begin().await.unwrap();
    let id = jobs::enqueue(
        &mut tx,
        &Probe {
            sleep_ms: 1500,
            ..probe("slow")
        },
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    // Wait until it runs, then stop: the stop waits for it to finish.
    eventually(20, "the slow job to start", || async {
        let s = tenantry::jobs::admin::stats(&app.state.jobs.engine)
            .await
            .unwrap();
        (s.broker.running == 1).then_some(())
    })
    .await;
    worker.stop().await;
    assert_eq!(probe_runs(&app, id).await, Some(1));
    let s = tenantry::jobs::admin::stats(&app.state.jobs.engine)
        .await
        .unwrap();
    assert_eq!(
        s.broker.running, 0,
        "acknowledged before the worker stopped"
    );
}

#[tokio::test]
async fn metrics_need_the_metrics_token_when_one_is_set() {
    let app = TestApp::spawn_with(&[("METRICS_TOKEN", "scrape-me-0123456789")], 5).await;
    let url = format!("{}/metrics", app.base);
    let res = app.client.get(&url).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    let res = app
        .client
        .get(&url)
        .bearer_auth("wrong-token")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    let res = app
        .client
        .get(&url)
        .bearer_auth("scrape-me-0123456789")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert!(res.text().await.unwrap().contains("tenantry_jobs_outbox 0"));
}

#[tokio::test]
async fn a_late_result_of_an_attempt_that_lost_its_lease_changes_nothing() {
    let app = TestApp::spawn().await;
    let broker = &app.state.jobs.engine.broker;
    let id = Uuid::now_v7();
    let env = tenantry::jobs::envelope_for(
        &probe("lease"),
        &Options {
            id: Some(id),
            ..Default::default()
        },
    )
    .unwrap();
    let text = serde_json::to_string(&env).unwrap();
    let added = broker
        .push(&[(id, "default".into(), None, text.clone(), 3)])
        .await
        .unwrap();
    assert_eq!(added, 1);
    // Pushing the same id again (a relay retry) adds nothing.
    let again = broker
        .push(&[(id, "default".into(), None, text, 3)])
        .await
        .unwrap();
    assert_eq!(again, 0);

    let first = broker
        .fetch("default", 1, Duration::from_millis(50))
        .await
        .unwrap();
    assert_eq!(first.taken.len(), 1);
    assert_eq!(first.taken[0].attempt, 1);
    tokio::time::sleep(Duration::from_millis(120)).await;
    // The lease ran out: the next fetch hands the job on as attempt 2.
    let second = broker
        .fetch("default", 1, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(second.taken.len(), 1);
    assert_eq!(second.taken[0].attempt, 2);

    // The first attempt's late failure and late ack change nothing.
    let applied = broker
        .fail(id, 1, Some(Duration::ZERO), "late failure", true)
        .await
        .unwrap();
    assert!(!applied);
    assert_eq!(broker.ack(&[(id, 1, 0)]).await.unwrap(), 0);
    let s = broker.stats().await.unwrap();
    assert_eq!(
        (s.running, s.scheduled),
        (1, 0),
        "still only attempt 2 runs"
    );

    // An outage failure gives its attempt back: the next delivery is attempt 2 again.
    assert!(
        broker
            .fail(id, 2, Some(Duration::ZERO), "database down", false)
            .await
            .unwrap()
    );
    let third = broker
        .fetch("default", 1, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(third.taken.len(), 1);
    assert_eq!(third.taken[0].attempt, 2);
    assert_eq!(broker.ack(&[(id, 2, 0)]).await.unwrap(), 1);
    let s = broker.stats().await.unwrap();
    assert_eq!((s.running, s.scheduled, s.dead), (0, 0, 0));
    // Finished: a late push of the same id does not run it again.
    let env_text = serde_json::to_string(&env).unwrap();
    assert_eq!(
        broker
            .push(&[(id, "default".into(), None, env_text, 3)])
            .await
            .unwrap(),
        0
    );
}
