//! Billing over real HTTP and Postgres: the plan catalog.

mod common;
use common::*;

use reqwest::{Method, StatusCode};

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
    // The app role reads the catalog but cannot change it.
    let mut tx = app.db.app.begin().await.unwrap();
    sqlx::query("select set_config('role', 'tenantry_app', true)")
        .execute(&mut *tx)
        .await
        .unwrap();
    let r = sqlx::query("update plans set price_minor = 0")
        .execute(&mut *tx)
        .await;
    assert!(r.is_err(), "the app role changed a price");
}
