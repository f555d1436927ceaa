//! The tenant read cache (Redis): it serves repeated reads without Postgres,
//! every committed change makes the org's cached reads unreachable at once,
//! authorization is never served stale, and without Redis everything still works.
use crate::common::*;

use reqwest::StatusCode;
use serde_json::{Value, json};
use uuid::Uuid;

fn names(page: &Value) -> Vec<String> {
    page["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["display_name"].as_str().unwrap_or("").to_owned())
        .collect()
}

/// Changes a profile behind the API's back, so only a read that reaches
/// Postgres can see it.
async fn rename_in_db(app: &TestApp, user: Uuid, name: &str) {
    sqlx::query("update users set display_name = $2 where id = $1")
        .bind(user)
        .bind(name)
        .execute(&app.db.admin)
        .await
        .unwrap();
}

#[tokio::test]
async fn repeated_reads_come_from_the_cache_until_a_change_commits() {
    let app = TestApp::spawn().await;
    let ann = app.user("ann@cache.example");
    let bob = app.user("bob@cache.example");
    let org = app.create_org(&ann, "Cache Org").await;
    app.add_member(org, &ann, &bob, "member").await;
    let path = format!("/api/v1/orgs/{org}/members");

    let (s, first) = app.get(&path, &bob).await;
    assert_eq!(s, StatusCode::OK, "{first}");
    rename_in_db(&app, ann.id, "Renamed Behind The Back").await;
    // Give the background store a moment, then read again: still the cached page.
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let (_, second) = app.get(&path, &bob).await;
    assert_eq!(first, second, "second read should be served from the cache");

    // A committed change through the API invalidates the org's cached reads.
    let (s, _) = app
        .patch(
            &format!("/api/v1/orgs/{org}"),
            &ann,
            json!({ "name": "Cache Org 2" }),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let (_, third) = app.get(&path, &bob).await;
    assert!(
        names(&third).contains(&"Renamed Behind The Back".to_owned()),
        "{third}"
    );

    // Different query, different cache entry.
    let (_, limited) = app.get(&format!("{path}?limit=1"), &bob).await;
    assert_eq!(limited["data"].as_array().unwrap().len(), 1);
    assert!(limited["next_cursor"].is_string());
}

#[tokio::test]
async fn a_removed_or_demoted_member_loses_access_at_once() {
    let app = TestApp::spawn().await;
    let ann = app.user("ann2@cache.example");
    let bob = app.user("bob2@cache.example");
    let cat = app.user("cat2@cache.example");
    let org = app.create_org(&ann, "Access Org").await;
    app.add_member(org, &ann, &bob, "member").await;
    app.add_member(org, &ann, &cat, "member").await;
    let path = format!("/api/v1/orgs/{org}/members");
    for u in [&bob, &cat] {
        for _ in 0..2 {
            assert_eq!(app.get(&path, u).await.0, StatusCode::OK);
        }
    }
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;

    // Bob is removed: his cached membership must not keep serving him.
    let (s, _) = app.delete(&format!("{path}/{}", bob.id), &ann).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    assert_eq!(app.get(&path, &bob).await.0, StatusCode::NOT_FOUND);

    // Cat gets a role without members:read: 403 at once.
    let (s, body) = app
        .post(
            &format!("/api/v1/orgs/{org}/roles"),
            &ann,
            json!({ "name": "blind", "permissions": ["org:read"] }),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{body}");
    let (s, _) = app
        .patch(
            &format!("{path}/{}", cat.id),
            &ann,
            json!({ "role": "blind" }),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(app.get(&path, &cat).await.0, StatusCode::FORBIDDEN);

    // And a role's permissions changing also reaches cached memberships.
    let (s, _) = app
        .patch(
            &format!("/api/v1/orgs/{org}/roles/blind"),
            &ann,
            json!({ "permissions": ["org:read", "members:read"] }),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(app.get(&path, &cat).await.0, StatusCode::OK);
}

#[tokio::test]
async fn a_profile_change_refreshes_every_org_that_lists_the_user() {
    let app = TestApp::spawn().await;
    let ann = app.user("ann3@cache.example");
    let bob = app.user("bob3@cache.example");
    let org_a = app.create_org(&ann, "Org A").await;
    let org_b = app.create_org(&bob, "Org B").await;
    app.add_member(org_b, &bob, &ann, "viewer").await;
    for org in [org_a, org_b] {
        let (s, _) = app.get(&format!("/api/v1/orgs/{org}/members"), &ann).await;
        assert_eq!(s, StatusCode::OK);
    }
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let (s, _) = app
        .patch("/api/v1/me", &ann, json!({ "display_name": "Ann Cached" }))
        .await;
    assert_eq!(s, StatusCode::OK);
    for org in [org_a, org_b] {
        let (_, page) = app
            .get(&format!("/api/v1/orgs/{org}/members"), &bob.clone())
            .await;
        if org == org_a {
            // Bob is not in org A.
            assert!(page["code"] == "not_found", "{page}");
            let (_, page) = app.get(&format!("/api/v1/orgs/{org}/members"), &ann).await;
            assert!(names(&page).contains(&"Ann Cached".to_owned()), "{page}");
        } else {
            assert!(names(&page).contains(&"Ann Cached".to_owned()), "{page}");
        }
    }
}

#[tokio::test]
async fn one_orgs_change_leaves_another_orgs_cache_alone() {
    let app = TestApp::spawn().await;
    let ann = app.user("ann4@cache.example");
    let bob = app.user("bob4@cache.example");
    let org_a = app.create_org(&ann, "Alone A").await;
    let org_b = app.create_org(&bob, "Alone B").await;
    let (_, b_before) = app
        .get(&format!("/api/v1/orgs/{org_b}/members"), &bob)
        .await;
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    rename_in_db(&app, bob.id, "Changed In B").await;
    let (s, _) = app
        .patch(
            &format!("/api/v1/orgs/{org_a}"),
            &ann,
            json!({ "name": "A2" }),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let (_, b_after) = app
        .get(&format!("/api/v1/orgs/{org_b}/members"), &bob)
        .await;
    assert_eq!(
        b_before, b_after,
        "org B's cache was not invalidated by org A's change"
    );
}

#[tokio::test]
async fn without_redis_every_read_goes_to_postgres_and_works() {
    // Nothing listens on port 1: every cache call fails fast and misses.
    let app = TestApp::spawn_with(&[("REDIS_URL", "redis://127.0.0.1:1/0")], 5).await;
    let ann = app.user("ann5@cache.example");
    let org = app.create_org(&ann, "No Redis").await;
    let path = format!("/api/v1/orgs/{org}/members");
    let started = std::time::Instant::now();
    let (s, first) = app.get(&path, &ann).await;
    assert_eq!(s, StatusCode::OK, "{first}");
    rename_in_db(&app, ann.id, "Fresh Every Time").await;
    let (s, second) = app.get(&path, &ann).await;
    assert_eq!(s, StatusCode::OK);
    assert!(
        names(&second).contains(&"Fresh Every Time".to_owned()),
        "{second}"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
}

#[tokio::test]
async fn only_first_pages_are_cached() {
    let app = TestApp::spawn().await;
    let ann = app.user("ann6@cache.example");
    let bob = app.user("bob6@cache.example");
    let org = app.create_org(&ann, "Pages Org").await;
    app.add_member(org, &ann, &bob, "member").await;
    let path = format!("/api/v1/orgs/{org}/members?limit=1");
    let (_, first) = app.get(&path, &ann).await;
    let cursor = first["next_cursor"].as_str().unwrap().to_owned();
    let next = format!("{path}&cursor={cursor}");
    let (s, page2) = app.get(&next, &ann).await;
    assert_eq!(s, StatusCode::OK, "{page2}");
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    rename_in_db(&app, bob.id, "Second Page Fresh").await;
    let (_, again) = app.get(&next, &ann).await;
    assert_eq!(
        names(&again),
        vec!["Second Page Fresh".to_owned()],
        "{again}"
    );
}

#[tokio::test]
async fn one_entry_per_view_however_the_org_id_is_spelled() {
    let app = TestApp::spawn().await;
    let ann = app.user("ann7@cache.example");
    let org = app.create_org(&ann, "Spelling Org").await;
    let (_, lower) = app.get(&format!("/api/v1/orgs/{org}/members"), &ann).await;
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    rename_in_db(&app, ann.id, "Only In Postgres").await;
    let upper = org.to_string().to_uppercase();
    let (s, other) = app
        .get(&format!("/api/v1/orgs/{upper}/members"), &ann)
        .await;
    assert_eq!(s, StatusCode::OK, "{other}");
    assert_eq!(
        lower, other,
        "the uppercase spelling should hit the same entry"
    );
}

#[tokio::test]
async fn a_lost_epoch_never_brings_old_entries_back() {
    let app = TestApp::spawn().await;
    let ann = app.user("ann8@cache.example");
    let org = app.create_org(&ann, "Epoch Org").await;
    let path = format!("/api/v1/orgs/{org}/members");
    let (_, first) = app.get(&path, &ann).await;
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    // The epoch key vanishes (eviction, restart) while old entries still live.
    let client = redis::Client::open("redis://127.0.0.1:6379/0").unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let epoch_key = format!("{}:org:{{{org}}}:epoch", app.cache_prefix);
    let removed: i64 = redis::cmd("DEL")
        .arg(&epoch_key)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(removed, 1, "the org had an epoch");
    rename_in_db(&app, ann.id, "After The Loss").await;
    let (_, second) = app.get(&path, &ann).await;
    assert_ne!(first, second);
    assert!(
        names(&second).contains(&"After The Loss".to_owned()),
        "{second}"
    );
}

#[tokio::test]
async fn a_new_email_in_the_token_refreshes_member_lists() {
    let app = TestApp::spawn().await;
    let ann = app.user("ann9@cache.example");
    let org = app.create_org(&ann, "Email Org").await;
    let path = format!("/api/v1/orgs/{org}/members");
    let (_, before) = app.get(&path, &ann).await;
    assert_eq!(before["data"][0]["email"], "ann9@cache.example");
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let renamed = TestUser {
        id: ann.id,
        email: "ann9.new@cache.example".into(),
        token: token_for(ann.id, "ann9.new@cache.example"),
    };
    let (s, me) = app.get("/api/v1/me", &renamed).await;
    assert_eq!(s, StatusCode::OK, "{me}");
    let (_, after) = app.get(&path, &renamed).await;
    assert_eq!(
        after["data"][0]["email"], "ann9.new@cache.example",
        "{after}"
    );
}
