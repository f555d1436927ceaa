//! The credit ledger against the real Postgres: exact under concurrency,
//! idempotent writes, draw-down order, expiry, point-in-time balances,
//! holds, overage and the reconcile check.

use crate::common;

use std::time::Duration;

use crate::common::{TestApp, TestUser, service_key};
use chrono::{DateTime, Utc};
use reqwest::StatusCode;
use serde_json::{Value, json};
use uuid::Uuid;

/// An app whose free plan grants no credits, so tests set balances exactly.
async fn app_with(pool: u32) -> TestApp {
    let app = TestApp::spawn_with(&[], pool).await;
    sqlx::query("update plans set credits_per_period = 0")
        .execute(&app.db.admin)
        .await
        .unwrap();
    app
}

struct Res {
    status: StatusCode,
    replayed: Option<String>,
    body: Value,
}

async fn send(
    app: &TestApp,
    path: &str,
    token: &str,
    key: Option<&str>,
    body: Option<Value>,
) -> Res {
    let mut req = app
        .client
        .post(format!("{}{}", app.base, path))
        .bearer_auth(token);
    if let Some(k) = key {
        req = req.header("Idempotency-Key", k);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let res = req.send().await.unwrap();
    let status = res.status();
    let replayed = res
        .headers()
        .get("idempotent-replayed")
        .map(|v| v.to_str().unwrap().to_owned());
    let bytes = res.bytes().await.unwrap();
    Res {
        status,
        replayed,
        body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    }
}

async fn grant(app: &TestApp, org: Uuid, body: Value) -> Value {
    let r = send(
        app,
        &format!("/api/v1/orgs/{org}/credits/grants"),
        &service_key(),
        Some(&Uuid::new_v4().to_string()),
        Some(body),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "grant: {}", r.body);
    r.body
}

async fn spend(app: &TestApp, org: Uuid, user: &TestUser, amount: i64) -> Res {
    send(
        app,
        &format!("/api/v1/orgs/{org}/credits/spend"),
        &user.token,
        Some(&Uuid::new_v4().to_string()),
        Some(json!({ "amount": amount })),
    )
    .await
}

async fn credits(app: &TestApp, org: Uuid, user: &TestUser) -> Value {
    let (s, body) = app.get(&format!("/api/v1/orgs/{org}/credits"), user).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    body
}

async fn balance(app: &TestApp, org: Uuid, user: &TestUser) -> i64 {
    credits(app, org, user).await["balance"].as_i64().unwrap()
}

async fn reconcile(app: &TestApp) -> Vec<(Uuid, String, i64, i64)> {
    let mut conn = app.db.admin.acquire().await.unwrap();
    tenantry::billing::credits::reconcile(&mut conn)
        .await
        .unwrap()
}

async fn setup(app: &TestApp) -> (TestUser, Uuid) {
    let owner = app.user(&format!("owner-{}@example.com", Uuid::new_v4().simple()));
    let org = app.create_org(&owner, "Credits Org").await;
    (owner, org)
}

#[tokio::test]
async fn two_hundred_concurrent_spends_against_150_credits_give_exactly_150() {
    let app = app_with(40).await;
    let (owner, org) = setup(&app).await;
    grant(&app, org, json!({ "amount": 150, "source": "promotion" })).await;

    let mut tasks = Vec::new();
    for _ in 0..200 {
        let (client, base, token) = (app.client.clone(), app.base.clone(), owner.token.clone());
        tasks.push(tokio::spawn(async move {
            client
                .post(format!("{base}/api/v1/orgs/{org}/credits/spend"))
                .bearer_auth(token)
                .header("Idempotency-Key", Uuid::new_v4().to_string())
                .json(&json!({ "amount": 1 }))
                .send()
                .await
                .unwrap()
                .status()
        }));
    }
    let mut ok = 0;
    let mut refused = 0;
    for t in tasks {
        match t.await.unwrap() {
            StatusCode::OK => ok += 1,
            StatusCode::PAYMENT_REQUIRED => refused += 1,
            other => panic!("unexpected status {other}"),
        }
    }
    assert_eq!((ok, refused), (150, 50));
    let c = credits(&app, org, &owner).await;
    assert_eq!(c["balance"], 0);
    assert_eq!(c["grants"], json!([]));
    let spent: i64 = sqlx::query_scalar(
        "select coalesce(sum(amount), 0)::bigint from credit_ledger where org_id = $1 and dst = 'spent'",
    )
    .bind(org)
    .fetch_one(&app.db.admin)
    .await
    .unwrap();
    assert_eq!(spent, 150);
    assert!(reconcile(&app).await.is_empty());
}

#[tokio::test]
async fn one_idempotency_key_applies_once_replays_and_refuses_other_bodies() {
    let app = app_with(30).await;
    let (owner, org) = setup(&app).await;
    grant(&app, org, json!({ "amount": 1000, "source": "promotion" })).await;
    let path = format!("/api/v1/orgs/{org}/credits/spend");

    // 20 concurrent duplicates: one applies; the rest replay it or are told it is in progress.
    let key = Uuid::new_v4().to_string();
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let (client, url, token, key) = (
            app.client.clone(),
            format!("{}{path}", app.base),
            owner.token.clone(),
            key.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let res = client
                .post(url)
                .bearer_auth(token)
                .header("Idempotency-Key", key)
                .json(&json!({ "amount": 7, "description": "render" }))
                .send()
                .await
                .unwrap();
            let status = res.status();
            let body: Value = res.json().await.unwrap();
            (status, body)
        }));
    }
    let mut ids = std::collections::HashSet::new();
    for t in tasks {
        let (status, body) = t.await.unwrap();
        match status {
            StatusCode::OK => {
                ids.insert(body["id"].as_str().unwrap().to_owned());
            }
            StatusCode::CONFLICT => assert_eq!(body["code"], "idempotency_key_in_use"),
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert_eq!(ids.len(), 1, "all successes are the same spend");
    assert_eq!(balance(&app, org, &owner).await, 993);

    // A later repeat replays the recorded response, marked as a replay.
    let again = send(
        &app,
        &path,
        &owner.token,
        Some(&key),
        Some(json!({ "amount": 7, "description": "render" })),
    )
    .await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(again.replayed.as_deref(), Some("true"));
    assert_eq!(
        again.body["id"].as_str().unwrap(),
        ids.iter().next().unwrap()
    );
    assert_eq!(again.body["balance"], 993, "the first response, as it was");
    assert_eq!(balance(&app, org, &owner).await, 993);

    // The same key with another body: 422, nothing spent.
    let other = send(
        &app,
        &path,
        &owner.token,
        Some(&key),
        Some(json!({ "amount": 8, "description": "render" })),
    )
    .await;
    assert_eq!(
        other.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        other.body
    );
    assert_eq!(other.body["code"], "idempotency_key_reused");

    // A fresh key is a new spend; its first response is not a replay.
    let fresh = spend(&app, org, &owner, 7).await;
    assert_eq!(fresh.status, StatusCode::OK);
    assert_eq!(fresh.replayed.as_deref(), Some("false"));
    assert_eq!(fresh.body["balance"], 986);

    // Keys are per org: the same key in another org is another operation.
    let org2 = app.create_org(&owner, "Other").await;
    grant(&app, org2, json!({ "amount": 10, "source": "promotion" })).await;
    let r = send(
        &app,
        &format!("/api/v1/orgs/{org2}/credits/spend"),
        &owner.token,
        Some(&key),
        Some(json!({ "amount": 7, "description": "render" })),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.replayed.as_deref(), Some("false"));
    assert_eq!(r.body["balance"], 3);
}

#[tokio::test]
async fn grants_are_drawn_by_priority_then_soonest_expiry_then_age() {
    let app = app_with(5).await;
    let (owner, org) = setup(&app).await;
    let days = |n: i64| (Utc::now() + chrono::Duration::days(n)).to_rfc3339();
    let a = grant(&app, org, json!({ "amount": 100, "source": "purchase" })).await;
    let b = grant(
        &app,
        org,
        json!({ "amount": 100, "source": "promotion", "expires_at": days(2) }),
    )
    .await;
    let c = grant(
        &app,
        org,
        json!({ "amount": 100, "source": "plan_period", "priority": 5, "expires_at": days(10) }),
    )
    .await;
    let d = grant(
        &app,
        org,
        json!({ "amount": 100, "source": "adjustment", "expires_at": days(1) }),
    )
    .await;
    let e = grant(&app, org, json!({ "amount": 100, "source": "purchase" })).await;
    let id = |g: &Value| g["grant"]["id"].as_str().unwrap().to_owned();

    let listed: Vec<String> = credits(&app, org, &owner).await["grants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(listed, vec![id(&c), id(&d), id(&b), id(&a), id(&e)]);

    let drawn = |r: &Res| -> Vec<(String, i64)> {
        r.body["drawn"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| {
                (
                    d["grant_id"].as_str().unwrap().to_owned(),
                    d["amount"].as_i64().unwrap(),
                )
            })
            .collect()
    };
    let r = spend(&app, org, &owner, 150).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(drawn(&r), vec![(id(&c), 100), (id(&d), 50)]);
    let r = spend(&app, org, &owner, 100).await;
    assert_eq!(drawn(&r), vec![(id(&d), 50), (id(&b), 50)]);
    // Among grants without expiry, the older goes first.
    let r = spend(&app, org, &owner, 120).await;
    assert_eq!(drawn(&r), vec![(id(&b), 50), (id(&a), 70)]);
    assert_eq!(r.body["balance"], 130);

    // The ledger records which grant each debit drew from.
    let (s, page) = app
        .get(
            &format!("/api/v1/orgs/{org}/credits/ledger?limit=2"),
            &owner,
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let lines = page["data"].as_array().unwrap();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["kind"], "spend");
    assert_eq!(lines[0]["from"], "available");
    assert_eq!(lines[0]["to"], "spent");
    assert_eq!(lines[0]["grant_id"].as_str().unwrap(), id(&a));
    assert_eq!(lines[0]["amount"], 70);
    assert_eq!(lines[1]["grant_id"].as_str().unwrap(), id(&b));
    assert_eq!(lines[0]["transaction_id"], lines[1]["transaction_id"]);
    // Pages walk the whole ledger: 5 grants + 6 spend lines.
    let mut total = lines.len();
    let mut cursor = page["next_cursor"].as_str().map(str::to_owned);
    while let Some(c) = cursor {
        let (_, p) = app
            .get(
                &format!("/api/v1/orgs/{org}/credits/ledger?limit=2&cursor={c}"),
                &owner,
            )
            .await;
        total += p["data"].as_array().unwrap().len();
        cursor = p["next_cursor"].as_str().map(str::to_owned);
    }
    assert_eq!(total, 11);
    assert!(reconcile(&app).await.is_empty());
}

#[tokio::test]
async fn expired_remainders_are_booked_and_past_balances_are_exact() {
    let app = app_with(5).await;
    let (owner, org) = setup(&app).await;
    let before_any = Utc::now();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let expires = Utc::now() + chrono::Duration::seconds(2);
    let x = grant(
        &app,
        org,
        json!({ "amount": 100, "source": "promotion", "expires_at": expires.to_rfc3339() }),
    )
    .await;
    grant(&app, org, json!({ "amount": 50, "source": "purchase" })).await;
    let t0 = Utc::now();
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(spend(&app, org, &owner, 30).await.body["balance"], 120);
    let t1 = Utc::now();

    tokio::time::sleep(Duration::from_millis(2300)).await;
    // Reading books the expiry: X's 70 left are gone; the purchase remains.
    let c = credits(&app, org, &owner).await;
    assert_eq!(c["balance"], 50, "{c}");
    let x_id = x["grant"]["id"].as_str().unwrap();
    let (expired, effective): (i64, DateTime<Utc>) = sqlx::query_as(
        "select amount, effective_at from credit_ledger
         where org_id = $1 and kind = 'expire' and grant_id = $2::uuid",
    )
    .bind(org)
    .bind(x_id)
    .fetch_one(&app.db.admin)
    .await
    .unwrap();
    assert_eq!(expired, 70);
    assert_eq!(
        effective.timestamp_micros(),
        expires.timestamp_micros(),
        "the expiry counts from the instant the grant ran out"
    );

    let at = |t: DateTime<Utc>| {
        let (app, owner) = (&app, &owner);
        async move {
            let q = urlencoding(&t.to_rfc3339());
            let (s, b) = app
                .get(&format!("/api/v1/orgs/{org}/credits?at={q}"), owner)
                .await;
            assert_eq!(s, StatusCode::OK, "{b}");
            b["balance"].as_i64().unwrap()
        }
    };
    assert_eq!(at(before_any).await, 0);
    assert_eq!(at(t0).await, 150);
    assert_eq!(at(t1).await, 120);
    assert_eq!(at(expires - chrono::Duration::milliseconds(1)).await, 120);
    assert_eq!(at(expires).await, 50);
    // An org nobody touches has its expiry booked by the sweep job's function.
    let (_, idle) = setup(&app).await;
    let soon = Utc::now() + chrono::Duration::milliseconds(800);
    grant(
        &app,
        idle,
        json!({ "amount": 9, "source": "promotion", "expires_at": soon.to_rfc3339() }),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let swept = tenantry::billing::credits::sweep::sweep(&app.db.app)
        .await
        .unwrap();
    assert_eq!(swept, 1, "only the idle org had something due");
    let booked: i64 = sqlx::query_scalar(
        "select amount from credit_ledger where org_id = $1 and kind = 'expire'",
    )
    .bind(idle)
    .fetch_one(&app.db.admin)
    .await
    .unwrap();
    assert_eq!(booked, 9);

    let future = urlencoding(&(Utc::now() + chrono::Duration::hours(1)).to_rfc3339());
    let (s, b) = app
        .get(&format!("/api/v1/orgs/{org}/credits?at={future}"), &owner)
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{b}");
    for bad in ["1900-01-01T00:00:00Z", "-5000-01-01T00:00:00Z", "yesterday"] {
        let (s, b) = app
            .get(
                &format!("/api/v1/orgs/{org}/credits?at={}", urlencoding(bad)),
                &owner,
            )
            .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{bad}: {b}");
    }
    assert!(reconcile(&app).await.is_empty());
}

fn urlencoding(s: &str) -> String {
    s.replace('+', "%2B").replace(':', "%3A")
}

#[tokio::test]
async fn holds_reserve_then_capture_release_or_expire() {
    let app = app_with(5).await;
    let (owner, org) = setup(&app).await;
    grant(&app, org, json!({ "amount": 100, "source": "promotion" })).await;
    let holds = format!("/api/v1/orgs/{org}/credits/holds");
    let key = || Some(Uuid::new_v4().to_string());

    let h = send(
        &app,
        &holds,
        &owner.token,
        key().as_deref(),
        Some(json!({ "amount": 60 })),
    )
    .await;
    assert_eq!(h.status, StatusCode::CREATED, "{}", h.body);
    assert_eq!(
        (h.body["balance"].clone(), h.body["held"].clone()),
        (json!(40), json!(60))
    );
    let hold_id = h.body["hold"]["id"].as_str().unwrap().to_owned();

    // Held credits cannot be spent.
    let r = spend(&app, org, &owner, 50).await;
    assert_eq!(r.status, StatusCode::PAYMENT_REQUIRED);
    assert_eq!(r.body["code"], "insufficient_credits");

    // Capturing more than the hold: 422, nothing changes.
    let r = send(
        &app,
        &format!("{holds}/{hold_id}/capture"),
        &owner.token,
        key().as_deref(),
        Some(json!({ "amount": 61 })),
    )
    .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.body);

    let r = send(
        &app,
        &format!("{holds}/{hold_id}/capture"),
        &owner.token,
        key().as_deref(),
        Some(json!({ "amount": 25 })),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["hold"]["status"], "captured");
    assert_eq!(r.body["hold"]["captured"], 25);
    assert_eq!(
        (r.body["balance"].clone(), r.body["held"].clone()),
        (json!(75), json!(0))
    );
    let again = send(
        &app,
        &format!("{holds}/{hold_id}/release"),
        &owner.token,
        key().as_deref(),
        None,
    )
    .await;
    assert_eq!(again.status, StatusCode::CONFLICT);
    assert_eq!(again.body["code"], "hold_closed");

    // Release returns everything.
    let h2 = send(
        &app,
        &holds,
        &owner.token,
        key().as_deref(),
        Some(json!({ "amount": 75 })),
    )
    .await;
    assert_eq!(h2.body["balance"], 0);
    let id2 = h2.body["hold"]["id"].as_str().unwrap();
    let r = send(
        &app,
        &format!("{holds}/{id2}/release"),
        &owner.token,
        key().as_deref(),
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["hold"]["status"], "released");
    assert_eq!(r.body["balance"], 75);

    // A hold expires on its own and gives its credits back.
    let h3 = send(
        &app,
        &holds,
        &owner.token,
        key().as_deref(),
        Some(json!({ "amount": 30, "ttl_seconds": 1 })),
    )
    .await;
    assert_eq!(h3.body["balance"], 45);
    let id3 = h3.body["hold"]["id"].as_str().unwrap().to_owned();
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let (s, hold) = app.get(&format!("{holds}/{id3}"), &owner).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(hold["status"], "expired");
    assert_eq!(balance(&app, org, &owner).await, 75);
    let r = send(
        &app,
        &format!("{holds}/{id3}/capture"),
        &owner.token,
        key().as_deref(),
        Some(json!({})),
    )
    .await;
    assert_eq!(r.status, StatusCode::GONE);
    assert_eq!(r.body["code"], "hold_expired");
    let (s, _) = app
        .get(&format!("{holds}/{}", Uuid::new_v4()), &owner)
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert!(reconcile(&app).await.is_empty());
}

#[tokio::test]
async fn overage_goes_to_the_plan_limit_and_new_credit_pays_it_back() {
    let app = app_with(5).await;
    let (owner, org) = setup(&app).await;
    sqlx::query("update plans set credit_overage_limit = 50 where code = 'free'")
        .execute(&app.db.admin)
        .await
        .unwrap();
    grant(&app, org, json!({ "amount": 10, "source": "promotion" })).await;
    let r = spend(&app, org, &owner, 40).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["balance"], -30);
    assert_eq!(
        r.body["drawn"][1],
        json!({ "grant_id": null, "amount": 30 })
    );
    let r = spend(&app, org, &owner, 21).await;
    assert_eq!(r.status, StatusCode::PAYMENT_REQUIRED, "{}", r.body);
    assert_eq!(spend(&app, org, &owner, 20).await.body["balance"], -50);

    // The database itself refuses a balance past the floor.
    let err = sqlx::query("update credit_accounts set overage = -51 where org_id = $1")
        .bind(org)
        .execute(&app.db.admin)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("credit_accounts_overage"), "{err}");

    // A hold reserves granted credits only, never overage.
    let h = send(
        &app,
        &format!("/api/v1/orgs/{org}/credits/holds"),
        &owner.token,
        Some("hold-in-debt"),
        Some(json!({ "amount": 1 })),
    )
    .await;
    assert_eq!(h.status, StatusCode::PAYMENT_REQUIRED, "{}", h.body);

    let g = grant(&app, org, json!({ "amount": 100, "source": "purchase" })).await;
    assert_eq!(g["balance"], 50);
    assert_eq!(g["grant"]["remaining"], 50, "half of it paid the debt back");
    assert_eq!(
        app.count(&format!(
            "credit_ledger where org_id = '{org}' and kind = 'settle'"
        ))
        .await,
        1
    );
    assert!(reconcile(&app).await.is_empty());
}

#[tokio::test]
async fn the_ledger_is_append_only_and_reconcile_finds_corruption() {
    let app = app_with(5).await;
    let (owner, org) = setup(&app).await;
    grant(&app, org, json!({ "amount": 500, "source": "promotion" })).await;
    for n in [5, 10, 20] {
        assert_eq!(spend(&app, org, &owner, n).await.status, StatusCode::OK);
    }
    assert!(reconcile(&app).await.is_empty());

    // Not even the superuser edits the ledger; the app role has no right to try.
    let err = sqlx::query("update credit_ledger set amount = 1 where org_id = $1")
        .bind(org)
        .execute(&app.db.admin)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("append-only"), "{err}");
    let err = sqlx::query("delete from credit_ledger where org_id = $1")
        .bind(org)
        .execute(&app.db.admin)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("append-only"), "{err}");
    let mut tx = app.db.app.begin().await.unwrap();
    sqlx::query(
        "select set_config('role', 'tenantry_app', true), set_config('app.org_id', $1, true)",
    )
    .bind(org.to_string())
    .execute(&mut *tx)
    .await
    .unwrap();
    for sql in [
        "update credit_ledger set amount = 1",
        "delete from credit_ledger",
        "update credit_accounts set overage = -1000",
    ] {
        let mut sp = sqlx::Acquire::begin(&mut *tx).await.unwrap();
        let err = sqlx::query(sql).execute(&mut *sp).await.unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("permission denied") || msg.contains("credit_accounts_overage"),
            "{sql}: {msg}"
        );
        drop(sp);
    }
    drop(tx);

    // A corrupted balance is found, by the function and by the CLI.
    sqlx::query("update credit_accounts set available = available + 7 where org_id = $1")
        .bind(org)
        .execute(&app.db.admin)
        .await
        .unwrap();
    let found = reconcile(&app).await;
    assert_eq!(found, vec![(org, "available".to_owned(), 472, 465)]);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tenantry"))
        .args(["admin", "credits", "reconcile"])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("DATABASE_URL", &app.db.app_url)
        .env("MIGRATION_DATABASE_URL", &app.db.owner_url)
        .env("JWT_SECRET", common::SECRET)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "reconcile must fail: {stdout}");
    assert!(
        stdout.contains(&org.to_string()) && stdout.contains("available"),
        "{stdout}"
    );
}

#[tokio::test]
async fn bad_input_is_a_clear_4xx_and_writes_nothing() {
    let app = app_with(5).await;
    let (owner, org) = setup(&app).await;
    grant(&app, org, json!({ "amount": 100, "source": "promotion" })).await;
    let spend_path = format!("/api/v1/orgs/{org}/credits/spend");
    let grant_path = format!("/api/v1/orgs/{org}/credits/grants");
    let hold_path = format!("/api/v1/orgs/{org}/credits/holds");
    let before = app.snapshot().await;
    let k = || Some(Uuid::new_v4().to_string());

    let cases: Vec<(&str, &str, Option<String>, Value, StatusCode)> = vec![
        (
            &spend_path,
            "user",
            k(),
            json!({ "amount": 0 }),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            &spend_path,
            "user",
            k(),
            json!({ "amount": -5 }),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            &spend_path,
            "user",
            k(),
            serde_json::from_str(r#"{"amount": 100000000000000000000}"#).unwrap(),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            &spend_path,
            "user",
            k(),
            json!({ "amount": 9223372036854775807i64 }),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            &spend_path,
            "user",
            k(),
            json!({ "amount": "5" }),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            &spend_path,
            "user",
            k(),
            json!({}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            &spend_path,
            "user",
            k(),
            json!({ "amount": 1, "extra": true }),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            &spend_path,
            "user",
            k(),
            json!({ "amount": 1, "description": "x".repeat(501) }),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            &spend_path,
            "user",
            None,
            json!({ "amount": 1 }),
            StatusCode::BAD_REQUEST,
        ),
        (
            &spend_path,
            "user",
            Some("é".into()),
            json!({ "amount": 1 }),
            StatusCode::BAD_REQUEST,
        ),
        (
            &spend_path,
            "user",
            Some("k".repeat(256)),
            json!({ "amount": 1 }),
            StatusCode::BAD_REQUEST,
        ),
        (
            &spend_path,
            "user",
            k(),
            json!({ "amount": 101 }),
            StatusCode::PAYMENT_REQUIRED,
        ),
        (
            &hold_path,
            "user",
            k(),
            json!({ "amount": 10, "ttl_seconds": 0 }),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            &hold_path,
            "user",
            k(),
            json!({ "amount": 10, "ttl_seconds": 604801 }),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            &hold_path,
            "user",
            k(),
            json!({ "amount": 1000 }),
            StatusCode::PAYMENT_REQUIRED,
        ),
        (
            &grant_path,
            "admin",
            k(),
            json!({ "amount": 10, "source": "gift" }),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            &grant_path,
            "admin",
            k(),
            json!({ "amount": 10, "source": "promotion", "expires_at": "2020-01-01T00:00:00Z" }),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            &grant_path,
            "admin",
            k(),
            json!({ "amount": 10, "source": "promotion", "priority": 5000 }),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            &grant_path,
            "admin",
            None,
            json!({ "amount": 10, "source": "promotion" }),
            StatusCode::BAD_REQUEST,
        ),
        (
            &grant_path,
            "user",
            k(),
            json!({ "amount": 10, "source": "promotion" }),
            StatusCode::FORBIDDEN,
        ),
    ];
    for (path, who, key, body, want) in cases {
        let token = if who == "admin" {
            service_key()
        } else {
            owner.token.clone()
        };
        let r = send(&app, path, &token, key.as_deref(), Some(body.clone())).await;
        assert_eq!(r.status, want, "{path} {body}: {}", r.body);
        assert!(r.body["code"].is_string(), "a problem document: {}", r.body);
    }
    // Not JSON at all.
    let res = app
        .client
        .post(format!("{}{spend_path}", app.base))
        .bearer_auth(&owner.token)
        .header("Idempotency-Key", "raw")
        .header("content-type", "application/json")
        .body("{amount: 1")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    // A grant to an org that does not exist.
    let r = send(
        &app,
        &format!("/api/v1/orgs/{}/credits/grants", Uuid::new_v4()),
        &service_key(),
        k().as_deref(),
        Some(json!({ "amount": 10, "source": "promotion" })),
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);

    assert_eq!(app.snapshot().await, before, "nothing was written");
    assert_eq!(balance(&app, org, &owner).await, 100);
}

#[tokio::test]
async fn roles_and_api_keys_on_credit_routes() {
    let app = app_with(5).await;
    let (owner, org) = setup(&app).await;
    grant(&app, org, json!({ "amount": 100, "source": "promotion" })).await;
    let viewer = app.user("viewer@example.com");
    app.add_member(org, &owner, &viewer, "viewer").await;
    let member = app.user("member@example.com");
    app.add_member(org, &owner, &member, "member").await;

    assert_eq!(balance(&app, org, &viewer).await, 100);
    let r = spend(&app, org, &viewer, 1).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(spend(&app, org, &member, 1).await.status, StatusCode::OK);

    // An API key with the member role spends; the ledger names the key.
    let (s, key) = app
        .post(
            &format!("/api/v1/orgs/{org}/api-keys"),
            &owner,
            json!({ "name": "worker", "role": "member" }),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{key}");
    let r = send(
        &app,
        &format!("/api/v1/orgs/{org}/credits/spend"),
        key["key"].as_str().unwrap(),
        Some("from-key"),
        Some(json!({ "amount": 2 })),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["balance"], 97);
    let (_, page) = app
        .get(
            &format!("/api/v1/orgs/{org}/credits/ledger?limit=1"),
            &owner,
        )
        .await;
    assert_eq!(page["data"][0]["actor_api_key_id"], key["id"]);
    assert_eq!(page["data"][0]["actor_user_id"], Value::Null);

    // Another org's owner sees nothing of this org.
    let stranger = app.user("stranger@example.com");
    app.create_org(&stranger, "Elsewhere").await;
    let (s, _) = app
        .get(&format!("/api/v1/orgs/{org}/credits"), &stranger)
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_eq!(
        spend(&app, org, &stranger, 1).await.status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn a_credit_usage_report_lists_what_was_spent() {
    let app = app_with(5).await;
    let (owner, org) = setup(&app).await;
    grant(&app, org, json!({ "amount": 100, "source": "promotion" })).await;
    for (n, d) in [(3, "first"), (4, "=cmd()")] {
        let r = send(
            &app,
            &format!("/api/v1/orgs/{org}/credits/spend"),
            &owner.token,
            Some(&Uuid::new_v4().to_string()),
            Some(json!({ "amount": n, "description": d })),
        )
        .await;
        assert_eq!(r.status, StatusCode::OK);
    }
    // A captured hold counts; a released one does not.
    let holds = format!("/api/v1/orgs/{org}/credits/holds");
    let h = send(
        &app,
        &holds,
        &owner.token,
        Some("h1"),
        Some(json!({ "amount": 10 })),
    )
    .await;
    let id = h.body["hold"]["id"].as_str().unwrap();
    send(
        &app,
        &format!("{holds}/{id}/capture"),
        &owner.token,
        Some("c1"),
        Some(json!({ "amount": 6 })),
    )
    .await;

    let (s, rec) = app
        .post(
            &format!("/api/v1/orgs/{org}/reports"),
            &owner,
            json!({ "kind": "credit_usage" }),
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{rec}");
    let rid = rec["id"].as_str().unwrap().to_owned();
    let worker = app.start_worker();
    common::eventually(30, "report built", || {
        let (app, owner, rid) = (&app, &owner, rid.clone());
        async move {
            let (_, r) = app
                .get(&format!("/api/v1/orgs/{org}/reports/{rid}"), owner)
                .await;
            (r["state"] == "succeeded").then_some(())
        }
    })
    .await;
    worker.stop().await;
    let csv = app
        .client
        .get(format!(
            "{}/api/v1/orgs/{org}/reports/{rid}/download",
            app.base
        ))
        .bearer_auth(&owner.token)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(
        lines[0],
        "id,effective_at,transaction_id,kind,amount,grant_id,hold_id,description,actor_user_id,actor_api_key_id"
    );
    assert_eq!(lines.len(), 4, "{csv}");
    let cells = |l: &str| l.split(',').map(str::to_owned).collect::<Vec<_>>();
    assert_eq!(cells(lines[1])[3..5], ["spend".to_owned(), "3".to_owned()]);
    assert_eq!(cells(lines[2])[7], "'=cmd()", "formula cells are escaped");
    assert_eq!(
        cells(lines[3])[3..5],
        ["capture".to_owned(), "6".to_owned()]
    );
    assert_eq!(cells(lines[3])[8], owner.id.to_string());
}

/// Spends in flight together are batched into one statement across orgs and
/// callers: each must still be authorised as its own caller, in its own org,
/// and booked with its own actor.
#[tokio::test]
async fn concurrent_spends_of_many_callers_and_orgs_keep_their_own_rights() {
    let app = app_with(20).await;
    let mut orgs = Vec::new();
    for n in 0..4 {
        let (owner, org) = setup(&app).await;
        grant(&app, org, json!({ "amount": 1000, "source": "promotion" })).await;
        let viewer = app.user(&format!("viewer-{n}@example.com"));
        app.add_member(org, &owner, &viewer, "viewer").await;
        let (s, key) = app
            .post(
                &format!("/api/v1/orgs/{org}/api-keys"),
                &owner,
                json!({ "name": "spender", "role": "member" }),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED);
        orgs.push((org, owner, viewer, key));
    }
    let outsider = app.user("outsider@example.com");

    // Per org: 10 spends of 1 by the owner, 10 of 2 by the key, 5 by the
    // viewer (403) and 5 by an outsider (404), all at once across the orgs.
    let mut tasks = Vec::new();
    for (org, owner, viewer, key) in &orgs {
        let callers: Vec<(String, i64, StatusCode)> = std::iter::empty()
            .chain((0..10).map(|_| (owner.token.clone(), 1, StatusCode::OK)))
            .chain((0..10).map(|_| (key["key"].as_str().unwrap().to_owned(), 2, StatusCode::OK)))
            .chain((0..5).map(|_| (viewer.token.clone(), 1, StatusCode::FORBIDDEN)))
            .chain((0..5).map(|_| (outsider.token.clone(), 1, StatusCode::NOT_FOUND)))
            .collect();
        for (token, amount, want) in callers {
            let (client, url) = (
                app.client.clone(),
                format!("{}/api/v1/orgs/{org}/credits/spend", app.base),
            );
            tasks.push(tokio::spawn(async move {
                let res = client
                    .post(url)
                    .bearer_auth(token)
                    .header("Idempotency-Key", Uuid::new_v4().to_string())
                    .json(&json!({ "amount": amount }))
                    .send()
                    .await
                    .unwrap();
                (res.status(), want)
            }));
        }
    }
    for t in tasks {
        let (got, want) = t.await.unwrap();
        assert_eq!(got, want);
    }
    for (org, owner, _, key) in &orgs {
        assert_eq!(balance(&app, *org, owner).await, 1000 - 10 - 20);
        let by_key: i64 = sqlx::query_scalar(
            "select count(*) from credit_ledger where org_id = $1 and kind = 'spend'
             and actor_api_key_id = $2::uuid and actor_user_id is null and amount = 2",
        )
        .bind(org)
        .bind(key["id"].as_str().unwrap())
        .fetch_one(&app.db.admin)
        .await
        .unwrap();
        let by_owner: i64 = sqlx::query_scalar(
            "select count(*) from credit_ledger where org_id = $1 and kind = 'spend'
             and actor_user_id = $2 and actor_api_key_id is null and amount = 1",
        )
        .bind(org)
        .bind(owner.id)
        .fetch_one(&app.db.admin)
        .await
        .unwrap();
        assert_eq!(
            (by_key, by_owner),
            (10, 10),
            "each line names its own actor"
        );
    }
    assert!(reconcile(&app).await.is_empty());
}

#[tokio::test]
async fn idempotency_keys_are_forgotten_after_a_week() {
    let app = app_with(5).await;
    let (owner, org) = setup(&app).await;
    grant(&app, org, json!({ "amount": 10, "source": "promotion" })).await;
    for key in ["old", "new"] {
        let r = send(
            &app,
            &format!("/api/v1/orgs/{org}/credits/spend"),
            &owner.token,
            Some(key),
            Some(json!({ "amount": 1 })),
        )
        .await;
        assert_eq!(r.status, StatusCode::OK);
    }
    sqlx::query(
        "update idempotency_keys set created_at = now() - interval '8 days' where key = 'old'",
    )
    .execute(&app.db.admin)
    .await
    .unwrap();
    // As the daily cleanup runs it: the app role, no org context.
    let mut tx = app.db.app.begin().await.unwrap();
    sqlx::query("select set_config('role', 'tenantry_app', true)")
        .execute(&mut *tx)
        .await
        .unwrap();
    let pruned: i64 = sqlx::query_scalar("select app.idempotency_prune(interval '7 days')")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(pruned, 1);
    let left: Vec<String> = sqlx::query_scalar("select key from idempotency_keys order by key")
        .fetch_all(&app.db.admin)
        .await
        .unwrap();
    assert!(!left.contains(&"old".to_owned()) && left.contains(&"new".to_owned()));
}
