//! Billing over real HTTP and Postgres: the plan catalog and its
//! administration by platform admins (API and CLI).

use crate::common::*;

use std::process::Command;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

#[tokio::test]
async fn the_plan_catalog_is_public_and_lists_active_plans_in_order() {
    let app = TestApp::spawn().await;
    let (status, body) = app.call(Method::GET, "/api/v1/plans", None, None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let plans = body.as_array().unwrap();
    let codes: Vec<&str> = plans.iter().map(|p| p["code"].as_str().unwrap()).collect();
    assert_eq!(codes, ["free", "pro", "business"]);
    assert_eq!(plans[0]["price_minor"], 0);
    assert_eq!(plans[1]["price_minor"], 2900);
    assert_eq!(plans[1]["currency"], "USD");
    assert_eq!(plans[1]["interval"], "month");
    assert_eq!(plans[1]["trial_days"], 14);
    assert_eq!(plans[0]["seat_limit"], 3);
    assert!(
        plans[2]["seat_limit"].is_null(),
        "business has no seat limit"
    );
    assert_eq!(plans[1]["credits_per_period"], 5000);
    assert_eq!(plans[1]["features"]["api_keys"], 20);

    // An inactive plan leaves the catalog; a signed-in caller sees the same.
    sqlx::query("update plans set active = false where code = 'pro'")
        .execute(&app.db.admin)
        .await
        .unwrap();
    let user = app.user("ann@example.com");
    let (status, body) = app.get("/api/v1/plans", &user).await;
    assert_eq!(status, StatusCode::OK);
    let codes: Vec<&str> = body
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["code"].as_str().unwrap())
        .collect();
    assert_eq!(codes, ["free", "business"]);
}

#[tokio::test]
async fn the_catalog_rejects_malformed_plans_in_the_database() {
    let app = TestApp::spawn().await;
    for (what, sql) in [
        (
            "negative price",
            "insert into plans (code, name, price_minor, currency, billing_interval) values ('x', 'X', -1, 'USD', 'month')",
        ),
        (
            "bad currency",
            "insert into plans (code, name, price_minor, currency, billing_interval) values ('x', 'X', 1, 'usd', 'month')",
        ),
        (
            "bad interval",
            "insert into plans (code, name, price_minor, currency, billing_interval) values ('x', 'X', 1, 'USD', 'week')",
        ),
        (
            "bad code",
            "insert into plans (code, name, price_minor, currency, billing_interval) values ('Not Ok', 'X', 1, 'USD', 'month')",
        ),
        (
            "zero seats",
            "insert into plans (code, name, price_minor, currency, billing_interval, seat_limit) values ('x', 'X', 1, 'USD', 'month', 0)",
        ),
    ] {
        let r = sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&app.db.admin)
            .await;
        assert!(r.is_err(), "{what} was accepted");
    }
    // The app role reads the catalog but cannot change it outside a plan
    // administrator's transaction: updates see no row, inserts and deletes fail.
    let mut tx = app.db.app.begin().await.unwrap();
    sqlx::query("select set_config('role', 'tenantry_app', true)")
        .execute(&mut *tx)
        .await
        .unwrap();
    let n = sqlx::query("update plans set price_minor = 0")
        .execute(&mut *tx)
        .await
        .unwrap()
        .rows_affected();
    assert_eq!(n, 0, "the app role changed a price");
    let r = sqlx::query(
        "insert into plans (code, name, price_minor, currency, billing_interval) values ('x', 'X', 1, 'USD', 'month')",
    )
    .execute(&mut *tx)
    .await;
    assert!(r.is_err(), "the app role added a plan");
    tx.rollback().await.unwrap();
    let mut tx = app.db.app.begin().await.unwrap();
    sqlx::query(
        "select set_config('role', 'tenantry_app', true), set_config('app.plan_admin', 'on', true)",
    )
    .execute(&mut *tx)
    .await
    .unwrap();
    let r = sqlx::query("delete from plans where code = 'business'")
        .execute(&mut *tx)
        .await;
    assert!(r.is_err(), "a plan was deleted");
    let price: i64 = sqlx::query_scalar("select price_minor from plans where code = 'pro'")
        .fetch_one(&app.db.admin)
        .await
        .unwrap();
    assert_eq!(price, 2900);
}

// ------------------------------------------------------------ plan administration

fn pro_eur() -> Value {
    json!({
        "name": "Pro (EUR)",
        "price_minor": 2500,
        "currency": "EUR",
        "interval": "month",
        "trial_days": 7,
        "credits_per_period": 4000,
        "seat_limit": 10,
        "features": { "reports_per_month": 50, "sso": false, "api_keys": null },
        "credit_overage_limit": 500,
        "sort_order": 5
    })
}

async fn put_plan(app: &TestApp, code: &str, body: Value) -> (StatusCode, Value) {
    app.call(
        Method::PUT,
        &format!("/api/v1/admin/plans/{code}"),
        Some(&service_key()),
        Some(body),
    )
    .await
}

fn codes(list: &Value) -> Vec<String> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|p| p["code"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn platform_admins_create_replace_and_deactivate_plans() {
    let app = TestApp::spawn().await;
    let ann = app.user("ann@example.com");

    // Only a service_role key: a user is 403, nobody 401.
    let (s, _) = app.get("/api/v1/admin/plans", &ann).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, _) = app
        .call(Method::GET, "/api/v1/admin/plans", None, None)
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, _) = app
        .call(
            Method::PUT,
            "/api/v1/admin/plans/team",
            Some(&ann.token),
            Some(pro_eur()),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);

    let (s, list) = app
        .call(
            Method::GET,
            "/api/v1/admin/plans",
            Some(&service_key()),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{list}");
    assert_eq!(codes(&list), ["free", "pro", "business"]);
    assert_eq!(list[1]["active"], true);
    assert_eq!(list[1]["credit_overage_limit"], 0);

    // Created: 201, with every field as sent (and defaults for the rest).
    let (s, plan) = put_plan(&app, "pro-eur", pro_eur()).await;
    assert_eq!(s, StatusCode::CREATED, "{plan}");
    assert_eq!(plan["code"], "pro-eur");
    assert_eq!(plan["currency"], "EUR");
    assert_eq!(plan["seat_limit"], 10);
    assert_eq!(plan["credit_overage_limit"], 500);
    assert_eq!(plan["features"]["reports_per_month"], 50);
    assert_eq!(plan["active"], true);
    let (s, catalog) = app.call(Method::GET, "/api/v1/plans", None, None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(codes(&catalog), ["free", "pro", "business", "pro-eur"]);

    // Replaced: 200; omitted optional fields go back to their defaults.
    let (s, plan) = put_plan(
        &app,
        "pro-eur",
        json!({ "name": "Pro €", "price_minor": 2700, "currency": "EUR", "interval": "year" }),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{plan}");
    assert_eq!(plan["name"], "Pro €");
    assert_eq!(plan["price_minor"], 2700);
    assert_eq!(plan["interval"], "year");
    assert!(plan["seat_limit"].is_null());
    assert_eq!(plan["trial_days"], 0);
    assert_eq!(plan["features"], json!({}));

    // An org on a plan keeps it when the plan is deactivated; the catalog hides it.
    let org = app.create_org(&ann, "Acme").await;
    let (s, sub) = app
        .call(
            Method::PUT,
            &format!("/api/v1/orgs/{org}/subscription"),
            Some(&ann.token),
            Some(json!({ "plan": "pro" })),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{sub}");
    let mut body = list[1].clone();
    for k in ["code", "updated_at", "created_at"] {
        body.as_object_mut().unwrap().remove(k);
    }
    body["active"] = json!(false);
    let (s, plan) = put_plan(&app, "pro", body.clone()).await;
    assert_eq!(s, StatusCode::OK, "{plan}");
    assert_eq!(plan["active"], false);
    let (_, catalog) = app.call(Method::GET, "/api/v1/plans", None, None).await;
    assert!(!codes(&catalog).contains(&"pro".to_owned()));
    let (s, sub) = app
        .get(&format!("/api/v1/orgs/{org}/subscription"), &ann)
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(sub["plan_code"], "pro");
    assert_eq!(sub["plan"]["code"], "pro");
    // ... and others cannot pick it any more.
    let bob = app.user("bob@example.com");
    let other = app.create_org(&bob, "Other").await;
    let (s, err) = app
        .call(
            Method::PUT,
            &format!("/api/v1/orgs/{other}/subscription"),
            Some(&bob.token),
            Some(json!({ "plan": "pro" })),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{err}");
    assert_eq!(err["code"], "unknown_plan");

    // Its currency cannot change while an org subscribes to it ...
    let mut eur = body.clone();
    eur["currency"] = json!("EUR");
    let (s, err) = put_plan(&app, "pro", eur).await;
    assert_eq!(s, StatusCode::CONFLICT, "{err}");
    assert_eq!(err["code"], "plan_in_use");
    let currency: String = sqlx::query_scalar("select currency from plans where code = 'pro'")
        .fetch_one(&app.db.admin)
        .await
        .unwrap();
    assert_eq!(currency, "USD");
    // ... but a plan nobody is on may change currency.
    let mut gbp = pro_eur();
    gbp["currency"] = json!("GBP");
    let (s, plan) = put_plan(&app, "pro-eur", gbp).await;
    assert_eq!(s, StatusCode::OK, "{plan}");
    assert_eq!(plan["currency"], "GBP");

    // The free plan is every org's fallback: it stays active and free.
    let (s, free) = app
        .call(
            Method::GET,
            "/api/v1/admin/plans",
            Some(&service_key()),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let mut free = free[0].clone();
    for k in ["code", "updated_at", "created_at"] {
        free.as_object_mut().unwrap().remove(k);
    }
    free["active"] = json!(false);
    free["price_minor"] = json!(100);
    let (s, err) = put_plan(&app, "free", free).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{err}");
    let fields: Vec<&str> = err["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    assert!(
        fields.contains(&"active") && fields.contains(&"price_minor"),
        "{err}"
    );
}

#[tokio::test]
async fn bad_plans_are_422_with_every_field_named_and_nothing_written() {
    let app = TestApp::spawn().await;
    let before: i64 = app.count("plans").await;
    let (s, err) = put_plan(
        &app,
        "team",
        json!({
            "name": "",
            "price_minor": -1,
            "currency": "usd",
            "interval": "week",
            "trial_days": 400,
            "credits_per_period": -5,
            "seat_limit": 0,
            "features": { "Bad Key": 1, "reports": -3, "label": "x" },
            "credit_overage_limit": -1
        }),
    )
    .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{err}");
    assert_eq!(err["code"], "validation_failed");
    let fields: Vec<&str> = err["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    for f in [
        "name",
        "price_minor",
        "currency",
        "interval",
        "trial_days",
        "credits_per_period",
        "seat_limit",
        "features",
        "features.reports",
        "features.label",
        "credit_overage_limit",
    ] {
        assert!(fields.contains(&f), "{f} not reported: {err}");
    }
    let ok = json!({ "name": "Team", "price_minor": 1, "currency": "USD", "interval": "month" });
    for (what, code, body) in [
        ("bad code", "Not A Code", ok.clone()),
        ("unknown field", "team", {
            let mut b = ok.clone();
            b["colour"] = json!("red");
            b
        }),
        (
            "missing field",
            "team",
            json!({ "name": "Team", "price_minor": 1, "currency": "USD" }),
        ),
        ("wrong type", "team", {
            let mut b = ok.clone();
            b["price_minor"] = json!("1");
            b
        }),
        ("past i64", "team", {
            let mut b = ok.clone();
            b["credits_per_period"] = json!(u64::MAX);
            b
        }),
        ("features not an object", "team", {
            let mut b = ok.clone();
            b["features"] = json!([1]);
            b
        }),
    ] {
        let (s, err) = put_plan(&app, &urlencoding(code), body).await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{what}: {err}");
    }
    let (s, _) = app
        .call(
            Method::PUT,
            "/api/v1/admin/plans/team",
            Some(&service_key()),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(app.count("plans").await, before);

    // A rule of the database the code does not know is still a 422, not a 500.
    sqlx::query(
        "alter table plans add constraint plans_test_cap check (credits_per_period < 1000000)",
    )
    .execute(&app.db.admin)
    .await
    .unwrap();
    let mut big = ok.clone();
    big["credits_per_period"] = json!(2_000_000);
    let (s, err) = put_plan(&app, "team", big).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{err}");
    assert_eq!(err["errors"][0]["code"], "check_violation", "{err}");
    assert_eq!(app.count("plans").await, before);
}

fn urlencoding(s: &str) -> String {
    s.replace(' ', "%20")
}

/// `tenantry admin plans ...` against the test database.
fn cli(db: &TestDb, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tenantry"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .args(["admin", "plans"])
        .args(args)
        .env("DATABASE_URL", &db.app_url)
        .env("JWT_SECRET", SECRET)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn operators_manage_plans_from_the_cli() {
    let db = TestDb::new().await;
    let (ok, out, err) = cli(&db, &["list"]);
    assert!(ok, "{err}");
    let list: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(codes(&list), ["free", "pro", "business"]);

    let body = pro_eur().to_string();
    let (ok, out, err) = cli(&db, &["set", "pro-eur", "--json", &body]);
    assert!(ok, "{err}");
    let plan: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(plan["code"], "pro-eur");
    assert_eq!(plan["price_minor"], 2500);

    let (ok, out, _) = cli(&db, &["show", "pro-eur"]);
    assert!(ok);
    let plan: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(plan["currency"], "EUR");
    assert_eq!(plan["active"], true);

    // Invalid input: a non-zero exit naming the fields, nothing written.
    let (ok, out, err) = cli(
        &db,
        &[
            "set",
            "team",
            "--json",
            r#"{"name": "Team", "price_minor": -1, "currency": "usd", "interval": "month"}"#,
        ],
    );
    assert!(!ok, "{out}");
    assert!(
        err.contains("price_minor") && err.contains("currency"),
        "{err}"
    );
    let (ok, _, err) = cli(&db, &["set", "team", "--json", "not json"]);
    assert!(!ok);
    assert!(err.contains("JSON"), "{err}");
    let n: i64 = sqlx::query_scalar("select count(*) from plans where code = 'team'")
        .fetch_one(&db.admin)
        .await
        .unwrap();
    assert_eq!(n, 0);

    let (ok, out, err) = cli(&db, &["deactivate", "pro-eur"]);
    assert!(ok, "{err}");
    let plan: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(plan["active"], false);
    let active: bool = sqlx::query_scalar("select active from plans where code = 'pro-eur'")
        .fetch_one(&db.admin)
        .await
        .unwrap();
    assert!(!active);

    let (ok, _, err) = cli(&db, &["deactivate", "free"]);
    assert!(!ok);
    assert!(err.contains("free plan"), "{err}");
    let (ok, _, err) = cli(&db, &["show", "nope"]);
    assert!(!ok);
    assert!(err.contains("not found"), "{err}");
}
