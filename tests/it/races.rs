//! Concurrency invariants: real concurrent HTTP requests against one org, and
//! deterministic interleavings forced by holding the org row lock.
//!
//! Invariants (src/organizations/service.rs): an org always has at least one
//! owner; only an owner makes or unmakes owners; nobody grants permissions they
//! do not hold; an invitation works once.

use crate::common::*;
use reqwest::StatusCode;
use serde_json::json;
use std::future::Future;
use std::time::{Duration, Instant};
use uuid::Uuid;

/// How many times each real race is run, each on a fresh org.
const ROUNDS: usize = 20;

/// Pool large enough for both racers plus the test's own reads.
async fn spawn() -> TestApp {
    TestApp::spawn_with(&[], 8).await
}

async fn owners(app: &TestApp, org: Uuid) -> Vec<Uuid> {
    let mut v: Vec<Uuid> =
        sqlx::query_scalar("select user_id from memberships where org_id = $1 and role = 'owner'")
            .bind(org)
            .fetch_all(&app.db.admin)
            .await
            .unwrap();
    v.sort();
    v
}

/// Orgs (of the whole database) left without an owner.
async fn ownerless_orgs(app: &TestApp) -> i64 {
    sqlx::query_scalar(
        "select count(*) from organizations o
         where not exists (select 1 from memberships m where m.org_id = o.id and m.role = 'owner')",
    )
    .fetch_one(&app.db.admin)
    .await
    .unwrap()
}

fn sorted(mut v: Vec<Uuid>) -> Vec<Uuid> {
    v.sort();
    v
}

fn member_path(org: Uuid, user: Uuid) -> String {
    format!("/api/v1/orgs/{org}/members/{user}")
}

// ------------------------------------------------------------------ real races

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_owners_demoting_each_other_leave_exactly_one_owner() {
    let app = spawn().await;
    let mut orders = [0usize; 2];
    for i in 0..ROUNDS {
        let ann = app.user(&format!("ann{i}@example.com"));
        let bob = app.user(&format!("bob{i}@example.com"));
        let org = app.create_org(&ann, &format!("Demote Race {i}")).await;
        app.add_member(org, &ann, &bob, "owner").await;
        assert_eq!(owners(&app, org).await, sorted(vec![ann.id, bob.id]));

        let body = json!({ "role": "admin" });
        let (to_bob, to_ann) = (member_path(org, bob.id), member_path(org, ann.id));
        let ((sa, ba), (sb, bb)) = tokio::join!(
            app.patch(&to_bob, &ann, body.clone()),
            app.patch(&to_ann, &bob, body.clone()),
        );
        let refused = |s: StatusCode| s == StatusCode::FORBIDDEN || s == StatusCode::CONFLICT;
        let winner = match (sa, sb) {
            (StatusCode::OK, s) if refused(s) => ann.id,
            (s, StatusCode::OK) if refused(s) => bob.id,
            _ => panic!(
                "round {i}: expected one 200 and one 403/409, got ann {sa} {ba}, bob {sb} {bb}"
            ),
        };
        orders[usize::from(winner == bob.id)] += 1;
        assert_eq!(owners(&app, org).await, vec![winner], "round {i}");
        assert_eq!(
            app.audit_count(org, "member.role_changed").await,
            1,
            "round {i}"
        );
    }
    assert_eq!(ownerless_orgs(&app).await, 0);
    eprintln!("demotion race winners: ann {} bob {}", orders[0], orders[1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_owners_leaving_at_once_leave_one_owner() {
    let app = spawn().await;
    for i in 0..ROUNDS {
        let ann = app.user(&format!("ann{i}@example.com"));
        let bob = app.user(&format!("bob{i}@example.com"));
        let org = app.create_org(&ann, &format!("Leave Race {i}")).await;
        app.add_member(org, &ann, &bob, "owner").await;

        let (ann_self, bob_self) = (member_path(org, ann.id), member_path(org, bob.id));
        let ((sa, ba), (sb, bb)) =
            tokio::join!(app.delete(&ann_self, &ann), app.delete(&bob_self, &bob),);
        let stayed = match (sa, sb) {
            (StatusCode::NO_CONTENT, StatusCode::CONFLICT) => {
                assert_eq!(bb["code"], "last_owner", "round {i}: {bb}");
                bob.id
            }
            (StatusCode::CONFLICT, StatusCode::NO_CONTENT) => {
                assert_eq!(ba["code"], "last_owner", "round {i}: {ba}");
                ann.id
            }
            _ => {
                panic!("round {i}: expected one 204 and one 409, got ann {sa} {ba}, bob {sb} {bb}")
            }
        };
        assert_eq!(owners(&app, org).await, vec![stayed], "round {i}");
        let members: i64 = sqlx::query_scalar("select count(*) from memberships where org_id = $1")
            .bind(org)
            .fetch_one(&app.db.admin)
            .await
            .unwrap();
        assert_eq!(members, 1, "round {i}");
        assert_eq!(app.audit_count(org, "member.left").await, 1, "round {i}");
    }
    assert_eq!(ownerless_orgs(&app).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_invitation_accepted_twice_at_once_works_once() {
    let app = spawn().await;
    for i in 0..ROUNDS {
        let ann = app.user(&format!("ann{i}@example.com"));
        let bob = app.user(&format!("bob{i}@example.com"));
        let org = app.create_org(&ann, &format!("Accept Race {i}")).await;
        let (s, inv) = app
            .post(
                &format!("/api/v1/orgs/{org}/invitations"),
                &ann,
                json!({ "email": bob.email, "role": "member" }),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{inv}");
        let inv_id: Uuid = inv["id"].as_str().unwrap().parse().unwrap();
        let body = json!({ "token": inv["token"] });

        let ((s1, b1), (s2, b2)) = tokio::join!(
            app.post("/api/v1/invitations/accept", &bob, body.clone()),
            app.post("/api/v1/invitations/accept", &bob, body.clone()),
        );
        let mut statuses = [s1, s2];
        statuses.sort();
        assert_eq!(
            statuses,
            [StatusCode::OK, StatusCode::CONFLICT],
            "round {i}: {s1} {b1} / {s2} {b2}"
        );

        let memberships: i64 = sqlx::query_scalar(
            "select count(*) from memberships where org_id = $1 and user_id = $2",
        )
        .bind(org)
        .bind(bob.id)
        .fetch_one(&app.db.admin)
        .await
        .unwrap();
        assert_eq!(memberships, 1, "round {i}");
        assert_eq!(
            app.stored_role(org, bob.id).await.as_deref(),
            Some("member")
        );
        let (accepted_at, accepted_by): (Option<chrono::DateTime<chrono::Utc>>, Option<Uuid>) =
            sqlx::query_as("select accepted_at, accepted_by from invitations where id = $1")
                .bind(inv_id)
                .fetch_one(&app.db.admin)
                .await
                .unwrap();
        assert!(accepted_at.is_some(), "round {i}: accepted_at not set");
        assert_eq!(accepted_by, Some(bob.id), "round {i}");
        // Accepted once: one acceptance and one member.added in the log.
        assert_eq!(
            app.audit_count(org, "invitation.accepted").await,
            1,
            "round {i}"
        );
        assert_eq!(app.audit_count(org, "member.added").await, 1, "round {i}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn transfer_racing_a_demotion_of_the_transferring_owner_keeps_an_owner() {
    let app = spawn().await;
    // (a) A co-owner demotes the owner who is transferring ownership.
    for i in 0..ROUNDS {
        let ann = app.user(&format!("ann{i}@example.com"));
        let bob = app.user(&format!("bob{i}@example.com"));
        let carl = app.user(&format!("carl{i}@example.com"));
        let org = app.create_org(&ann, &format!("Transfer Race {i}")).await;
        app.add_member(org, &ann, &carl, "owner").await;
        app.add_member(org, &ann, &bob, "admin").await;

        let (transfer, to_ann) = (
            format!("/api/v1/orgs/{org}/transfer-ownership"),
            member_path(org, ann.id),
        );
        let ((st, bt), (sd, bd)) = tokio::join!(
            app.post(&transfer, &ann, json!({ "user_id": bob.id })),
            app.patch(&to_ann, &carl, json!({ "role": "admin" })),
        );
        // The demotion always ends with ann an admin (a no-op when the
        // transfer already made her one).
        assert_eq!(sd, StatusCode::OK, "round {i}: demotion {bd}");
        assert_eq!(app.stored_role(org, ann.id).await.as_deref(), Some("admin"));
        let expected = match st {
            StatusCode::OK => sorted(vec![bob.id, carl.id]),
            StatusCode::FORBIDDEN => {
                assert_eq!(app.stored_role(org, bob.id).await.as_deref(), Some("admin"));
                vec![carl.id]
            }
            _ => panic!("round {i}: transfer {st} {bt}"),
        };
        assert_eq!(owners(&app, org).await, expected, "round {i}");
    }
    // (b) The sole owner transfers ownership and demotes herself at once.
    for i in 0..ROUNDS {
        let ann = app.user(&format!("solo-ann{i}@example.com"));
        let bob = app.user(&format!("solo-bob{i}@example.com"));
        let org = app
            .create_org(&ann, &format!("Solo Transfer Race {i}"))
            .await;
        app.add_member(org, &ann, &bob, "admin").await;

        let (transfer, to_ann) = (
            format!("/api/v1/orgs/{org}/transfer-ownership"),
            member_path(org, ann.id),
        );
        let ((st, bt), (sd, bd)) = tokio::join!(
            app.post(&transfer, &ann, json!({ "user_id": bob.id })),
            app.patch(&to_ann, &ann, json!({ "role": "admin" })),
        );
        // Demotion first: refused as last owner, then the transfer goes through.
        // Transfer first: the demotion finds her already an admin.
        assert_eq!(st, StatusCode::OK, "round {i}: transfer {bt}");
        assert!(
            sd == StatusCode::OK || (sd == StatusCode::CONFLICT && bd["code"] == "last_owner"),
            "round {i}: demotion {sd} {bd}"
        );
        assert_eq!(owners(&app, org).await, vec![bob.id], "round {i}");
        assert_eq!(app.stored_role(org, ann.id).await.as_deref(), Some("admin"));
    }
    assert_eq!(ownerless_orgs(&app).await, 0);
}

// ------------------------------------------------------------------ forced interleavings
//
// The races above depend on timing. The tests below force the interleaving
// that matters for authorization: request B opens its tenant transaction (and
// so reads its caller's role) while request A is waiting for the org lock, and
// A gets the lock first. The test holds the org row lock itself to line the
// two up; that only widens a window that exists without it (any request that
// holds the lock for a moment does the same). Service code must decide on the
// role read after the lock, not on the one read when the request came in.

/// Waits until `n` backends of the app role wait on a lock in this database.
async fn wait_for_lock_waiters(app: &TestApp, n: i64) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "select count(*) from pg_stat_activity
             where datname = current_database() and usename = $1 and wait_event_type = 'Lock'",
        )
        .bind(APP_ROLE)
        .fetch_one(&app.db.admin)
        .await
        .unwrap();
        if waiting >= n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {n} requests to wait on the org lock ({waiting} do)"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Runs `first` and `second` so that both wait on `org`'s row lock, `second`
/// entered its tenant transaction before `first` committed, and `first` gets
/// the lock before `second`.
async fn first_then_stale_second<A: Future, B: Future>(
    app: &TestApp,
    org: Uuid,
    first: A,
    second: B,
) -> (A::Output, B::Output) {
    let mut hold = app.db.admin.begin().await.unwrap();
    sqlx::query("select 1 from organizations where id = $1 for update")
        .bind(org)
        .execute(&mut *hold)
        .await
        .unwrap();
    let second = async {
        wait_for_lock_waiters(app, 1).await;
        second.await
    };
    let release = async {
        wait_for_lock_waiters(app, 2).await;
        hold.rollback().await.unwrap();
    };
    let (a, b, ()) = tokio::join!(first, second, release);
    (a, b)
}

/// Two owners, ann and bob, in a fresh org.
async fn two_owners(app: &TestApp, name: &str) -> (Uuid, TestUser, TestUser) {
    let ann = app.user(&format!("ann-{name}@example.com"));
    let bob = app.user(&format!("bob-{name}@example.com"));
    let org = app.create_org(&ann, name).await;
    app.add_member(org, &ann, &bob, "owner").await;
    (org, ann, bob)
}

/// Control: the interleaving harness with an operation that re-reads the
/// caller's role under the lock (change_member_role): the demoted owner is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn forced_demotion_race_is_decided_on_the_role_read_under_the_lock() {
    let app = spawn().await;
    let (org, ann, bob) = two_owners(&app, "forced-demote").await;
    let ((s1, b1), (s2, b2)) = first_then_stale_second(
        &app,
        org,
        app.patch(&member_path(org, bob.id), &ann, json!({ "role": "admin" })),
        app.patch(&member_path(org, ann.id), &bob, json!({ "role": "admin" })),
    )
    .await;
    assert_eq!(s1, StatusCode::OK, "{b1}");
    assert_eq!(s2, StatusCode::FORBIDDEN, "{b2}");
    assert_eq!(owners(&app, org).await, vec![ann.id]);
}

/// A demoted owner's request that waited for the lock must not invite an owner.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn owner_demoted_while_waiting_cannot_invite_an_owner() {
    let app = spawn().await;
    let (org, ann, bob) = two_owners(&app, "forced-invite").await;
    let ((s1, b1), (s2, b2)) = first_then_stale_second(
        &app,
        org,
        app.patch(&member_path(org, bob.id), &ann, json!({ "role": "admin" })),
        app.post(
            &format!("/api/v1/orgs/{org}/invitations"),
            &bob,
            json!({ "email": "mallory@example.com", "role": "owner" }),
        ),
    )
    .await;
    assert_eq!(s1, StatusCode::OK, "{b1}");
    assert_eq!(app.stored_role(org, bob.id).await.as_deref(), Some("admin"));
    let owner_invites: i64 = sqlx::query_scalar(
        "select count(*) from invitations where org_id = $1 and email = 'mallory@example.com'",
    )
    .bind(org)
    .fetch_one(&app.db.admin)
    .await
    .unwrap();
    assert_eq!(
        (s2, owner_invites),
        (StatusCode::FORBIDDEN, 0),
        "an admin (demoted while the request waited) invited an owner: {b2}"
    );
}

/// A demoted owner's request that waited for the lock must not delete the org.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn owner_demoted_while_waiting_cannot_delete_the_org() {
    let app = spawn().await;
    let (org, ann, bob) = two_owners(&app, "forced-delete").await;
    let ((s1, b1), (s2, b2)) = first_then_stale_second(
        &app,
        org,
        app.patch(&member_path(org, bob.id), &ann, json!({ "role": "admin" })),
        app.delete(&format!("/api/v1/orgs/{org}"), &bob),
    )
    .await;
    assert_eq!(s1, StatusCode::OK, "{b1}");
    let exists = app.org_exists(org).await;
    assert_eq!(
        (s2, exists),
        (StatusCode::FORBIDDEN, true),
        "an admin (demoted while the request waited) deleted the org: {b2}"
    );
    assert_eq!(owners(&app, org).await, vec![ann.id]);
}

/// A member removed while their request waited must not write into the org.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn member_removed_while_waiting_cannot_invite() {
    let app = spawn().await;
    let ann = app.user("ann-removed@example.com");
    let bob = app.user("bob-removed@example.com");
    let org = app.create_org(&ann, "forced-remove").await;
    app.add_member(org, &ann, &bob, "admin").await;
    let ((s1, b1), (s2, b2)) = first_then_stale_second(
        &app,
        org,
        app.delete(&member_path(org, bob.id), &ann),
        app.post(
            &format!("/api/v1/orgs/{org}/invitations"),
            &bob,
            json!({ "email": "mallory@example.com", "role": "admin" }),
        ),
    )
    .await;
    assert_eq!(s1, StatusCode::NO_CONTENT, "{b1}");
    assert_eq!(app.stored_role(org, bob.id).await, None);
    let invites_by_bob: i64 = sqlx::query_scalar(
        "select count(*) from invitations where org_id = $1 and invited_by = $2",
    )
    .bind(org)
    .bind(bob.id)
    .fetch_one(&app.db.admin)
    .await
    .unwrap();
    assert!(
        (s2 == StatusCode::NOT_FOUND || s2 == StatusCode::FORBIDDEN) && invites_by_bob == 0,
        "a removed member invited someone: {s2} {b2}"
    );
}
