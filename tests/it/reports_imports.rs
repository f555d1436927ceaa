//! Reports (CSV exports built by a background job, streamed from the report
//! store) and member imports (an uploaded CSV whose lines become
//! invitations), end to end over HTTP with the worker running in process.

use crate::common::*;

use std::collections::{HashMap, HashSet};

use reqwest::StatusCode;
use serde_json::{Value, json};
use tenantry::imports::job::ImportMembers;
use tenantry::jobs::{Job, JobContext};
use tenantry::organizations::service::InviteSettings;
use uuid::Uuid;

// ---------------------------------------------------------------- helpers

fn assert_problem(status: StatusCode, body: &Value, expected: StatusCode, code: &str) {
    assert_eq!(status, expected, "{body}");
    assert_eq!(body["code"], code, "{body}");
}

async fn start_report(app: &TestApp, org: Uuid, user: &TestUser, kind: &str) -> Uuid {
    let (status, body) = app
        .post(
            &format!("/api/v1/orgs/{org}/reports"),
            user,
            json!({ "kind": kind, "format": "csv" }),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["kind"], "report", "{body}");
    assert_eq!(body["params"]["kind"], kind, "{body}");
    body["id"].as_str().unwrap().parse().unwrap()
}

/// Waits until the record reaches `succeeded` (panics on `failed`/`dead`).
async fn finished(app: &TestApp, path: &str, user: &TestUser, secs: u64) -> Value {
    eventually(secs, path, || async {
        let (status, body) = app.get(path, user).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        match body["state"].as_str() {
            Some("succeeded") => Some(body),
            Some("failed" | "dead") => panic!("job gave up: {body}"),
            _ => None,
        }
    })
    .await
}

struct Download {
    status: StatusCode,
    content_type: String,
    disposition: String,
    length: Option<u64>,
    body: String,
}

async fn download(app: &TestApp, org: Uuid, id: Uuid, user: &TestUser) -> Download {
    let res = app
        .client
        .get(format!(
            "{}/api/v1/orgs/{org}/reports/{id}/download",
            app.base
        ))
        .bearer_auth(&user.token)
        .send()
        .await
        .unwrap();
    let header = |name: &str| {
        res.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let content_type = header("content-type");
    let disposition = header("content-disposition");
    let length = header("content-length").parse().ok();
    let status = res.status();
    let body = res.text().await.unwrap();
    Download {
        status,
        content_type,
        disposition,
        length,
        body,
    }
}

/// Posts a raw body with a content type.
async fn post_raw(
    app: &TestApp,
    path: &str,
    user: &TestUser,
    content_type: &str,
    body: impl Into<reqwest::Body>,
) -> (StatusCode, Value) {
    let res = app
        .client
        .post(format!("{}{}", app.base, path))
        .bearer_auth(&user.token)
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .unwrap();
    let status = res.status();
    let bytes = res.bytes().await.unwrap_or_default();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

async fn start_import(app: &TestApp, org: Uuid, user: &TestUser, csv: &str) -> Uuid {
    let (status, body) = post_raw(
        app,
        &format!("/api/v1/orgs/{org}/imports"),
        user,
        "text/csv",
        csv.to_owned(),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["kind"], "import", "{body}");
    body["id"].as_str().unwrap().parse().unwrap()
}

/// Every per-line result of an import, following the cursor.
async fn import_rows(app: &TestApp, org: Uuid, id: Uuid, user: &TestUser) -> Vec<Value> {
    let mut rows = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            None => format!("/api/v1/orgs/{org}/imports/{id}?limit=200"),
            Some(c) => format!("/api/v1/orgs/{org}/imports/{id}?limit=200&cursor={c}"),
        };
        let (status, body) = app.get(&path, user).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        rows.extend(body["rows"].as_array().unwrap().iter().cloned());
        match body["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => return rows,
        }
    }
}

/// Open invitations of an org per email (superuser, ignoring RLS).
async fn invitations(app: &TestApp, org: Uuid) -> HashMap<String, (String, i64)> {
    let rows: Vec<(String, String, i64)> = sqlx::query_as(
        "select email, min(role), count(*) from invitations where org_id = $1 group by email",
    )
    .bind(org)
    .fetch_all(&app.db.admin)
    .await
    .unwrap();
    rows.into_iter().map(|(e, r, n)| (e, (r, n))).collect()
}

fn job_context(app: &TestApp, org: Uuid, id: Uuid) -> JobContext {
    JobContext {
        pool: app.state.pool.clone(),
        id,
        attempt: 1,
        max_attempts: 5,
        request_id: None,
        org_id: Some(org),
    }
}

// ---------------------------------------------------------------- reports

#[tokio::test]
async fn members_report_has_one_line_per_member_of_this_org_only() {
    let app = TestApp::spawn().await;
    let owner = app.user("owner@example.com");
    let org = app.create_org(&owner, "Acme").await;
    let ann = app.user("ann@example.com");
    let bob = app.user("bob@example.com");
    app.add_member(org, &owner, &ann, "member").await;
    app.add_member(org, &owner, &bob, "viewer").await;
    // A display name a spreadsheet would run as a formula.
    sqlx::query("update users set display_name = '=HYPERLINK(\"http://evil\")' where id = $1")
        .bind(ann.id)
        .execute(&app.db.admin)
        .await
        .unwrap();

    let other_owner = app.user("other@example.com");
    let other = app.create_org(&other_owner, "Other").await;
    let carl = app.user("carl@example.com");
    app.add_member(other, &other_owner, &carl, "member").await;

    // No worker yet: the report is queued and cannot be downloaded.
    let id = start_report(&app, org, &ann, "members").await;
    let dl = download(&app, org, id, &ann).await;
    assert_eq!(dl.status, StatusCode::CONFLICT, "{}", dl.body);
    assert!(dl.body.contains("report_not_ready"), "{}", dl.body);
    let (status, body) = app
        .get(&format!("/api/v1/orgs/{org}/reports/{id}"), &bob)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["state"], "queued");

    // Another org's member cannot see it, through either org.
    let (status, _) = app
        .get(&format!("/api/v1/orgs/{other}/reports/{id}"), &other_owner)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = app
        .get(&format!("/api/v1/orgs/{org}/reports/{id}"), &other_owner)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let dl = download(&app, other, id, &other_owner).await;
    assert_eq!(dl.status, StatusCode::NOT_FOUND, "{}", dl.body);

    let _worker = app.start_worker();
    let record = finished(&app, &format!("/api/v1/orgs/{org}/reports/{id}"), &ann, 30).await;
    assert_eq!(record["result"]["rows"], 3, "{record}");
    assert_eq!(record["progress"], 3, "{record}");
    assert_eq!(record["total"], 3, "{record}");
    assert_eq!(record["result"]["content_type"], "text/csv", "{record}");

    // The viewer (reports:read) downloads it.
    let dl = download(&app, org, id, &bob).await;
    assert_eq!(dl.status, StatusCode::OK, "{}", dl.body);
    assert!(
        dl.content_type.starts_with("text/csv"),
        "{}",
        dl.content_type
    );
    assert!(
        dl.disposition.starts_with("attachment; filename="),
        "{}",
        dl.disposition
    );
    assert!(dl.disposition.contains(".csv"), "{}", dl.disposition);
    assert_eq!(dl.length, Some(dl.body.len() as u64));
    assert_eq!(record["result"]["bytes"], dl.body.len() as u64);
    let lines: Vec<&str> = dl.body.lines().collect();
    assert_eq!(lines[0], "user_id,email,display_name,role,joined_at");
    assert_eq!(lines.len(), 4, "{}", dl.body);
    for (user, role) in [(&owner, "owner"), (&ann, "member"), (&bob, "viewer")] {
        let line = lines
            .iter()
            .find(|l| l.starts_with(&user.id.to_string()))
            .unwrap_or_else(|| panic!("no line for {}: {}", user.email, dl.body));
        assert!(line.contains(&format!(",{},", user.email)), "{line}");
        assert!(line.contains(&format!(",{role},")), "{line}");
    }
    assert!(!dl.body.contains(&carl.id.to_string()), "{}", dl.body);
    assert!(!dl.body.contains("carl@example.com"), "{}", dl.body);
    assert!(
        !dl.body.contains(&other_owner.id.to_string()),
        "{}",
        dl.body
    );
    // Formula injection is defused (the CSV quotes the cell: it has quotes).
    assert!(
        dl.body.contains("\"'=HYPERLINK(\"\"http://evil\"\")\""),
        "{}",
        dl.body
    );

    // It is listed, and the file is where the result says.
    let (status, page) = app.get(&format!("/api/v1/orgs/{org}/reports"), &bob).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(page["data"][0]["id"], id.to_string(), "{page}");
    let (status, page) = app
        .get(&format!("/api/v1/orgs/{other}/reports"), &other_owner)
        .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(page["data"], json!([]), "{page}");
    assert_eq!(
        record["result"]["path"],
        format!("reports/{org}/{id}.csv"),
        "{record}"
    );
}

#[tokio::test]
async fn audit_log_report_needs_audit_read() {
    let app = TestApp::spawn().await;
    let owner = app.user("owner@example.com");
    let org = app.create_org(&owner, "Acme").await;
    let ann = app.user("ann@example.com");
    app.add_member(org, &owner, &ann, "member").await;

    // `member` holds reports:create but not audit:read.
    let (status, body) = app
        .post(
            &format!("/api/v1/orgs/{org}/reports"),
            &ann,
            json!({ "kind": "audit_log", "format": "csv" }),
        )
        .await;
    assert_problem(status, &body, StatusCode::FORBIDDEN, "permission_denied");
    assert_eq!(app.count("job_records").await, 0);

    let _worker = app.start_worker();
    let id = start_report(&app, org, &owner, "audit_log").await;
    let record = finished(
        &app,
        &format!("/api/v1/orgs/{org}/reports/{id}"),
        &owner,
        30,
    )
    .await;
    let entries: i64 = sqlx::query_scalar("select count(*) from audit_log where org_id = $1")
        .bind(org)
        .fetch_one(&app.db.admin)
        .await
        .unwrap();
    assert!(
        entries >= 3,
        "org creation and the invitation leave audit entries"
    );
    assert_eq!(record["result"]["rows"], entries, "{record}");
    // Reading the audit log through a report needs audit:read too: a member
    // (reports:read only) cannot download what an owner built.
    let dl = download(&app, org, id, &ann).await;
    assert_eq!(dl.status, StatusCode::FORBIDDEN, "{}", dl.body);
    assert!(dl.body.contains("permission_denied"), "{}", dl.body);
    let dl = download(&app, org, id, &owner).await;
    assert_eq!(dl.status, StatusCode::OK, "{}", dl.body);
    let lines: Vec<&str> = dl.body.lines().collect();
    assert_eq!(
        lines[0],
        "id,created_at,actor_id,action,target_type,target_id,request_id"
    );
    assert_eq!(lines.len() as i64, entries + 1, "{}", dl.body);
    assert!(
        dl.body.contains(",org.created,organization,"),
        "{}",
        dl.body
    );

    // A requester who lost audit:read before the job ran: the job fails for good.
    let admin = app.user("admin@example.com");
    app.add_member(org, &owner, &admin, "admin").await;
    _worker.stop().await;
    let id = start_report(&app, org, &admin, "audit_log").await;
    let (status, body) = app
        .patch(
            &format!("/api/v1/orgs/{org}/members/{}", admin.id),
            &owner,
            json!({ "role": "member" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let _worker = app.start_worker();
    let path = format!("/api/v1/orgs/{org}/reports/{id}");
    let record = eventually(30, "the report to fail", || async {
        let (_, body) = app.get(&path, &owner).await;
        matches!(body["state"].as_str(), Some("failed" | "dead")).then_some(body)
    })
    .await;
    assert!(
        record["error"].as_str().unwrap().contains("audit:read"),
        "{record}"
    );
    let dl = download(&app, org, id, &owner).await;
    assert_eq!(dl.status, StatusCode::CONFLICT, "{}", dl.body);
}

#[tokio::test]
async fn viewers_read_reports_but_cannot_start_them() {
    let app = TestApp::spawn().await;
    let owner = app.user("owner@example.com");
    let org = app.create_org(&owner, "Acme").await;
    let viewer = app.user("viewer@example.com");
    app.add_member(org, &owner, &viewer, "viewer").await;

    let (status, body) = app
        .post(
            &format!("/api/v1/orgs/{org}/reports"),
            &viewer,
            json!({ "kind": "members", "format": "csv" }),
        )
        .await;
    assert_problem(status, &body, StatusCode::FORBIDDEN, "permission_denied");
    let (status, body) = app
        .get(&format!("/api/v1/orgs/{org}/reports"), &viewer)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // A stranger sees no org at all.
    let stranger = app.user("stranger@example.com");
    let (status, _) = app
        .post(
            &format!("/api/v1/orgs/{org}/reports"),
            &stranger,
            json!({ "kind": "members", "format": "csv" }),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(app.count("job_records").await, 0);
}

#[tokio::test]
async fn unknown_kind_or_format_is_rejected_with_field_errors() {
    let app = TestApp::spawn().await;
    let owner = app.user("owner@example.com");
    let org = app.create_org(&owner, "Acme").await;
    let path = format!("/api/v1/orgs/{org}/reports");

    let (status, body) = app
        .post(
            &path,
            &owner,
            json!({ "kind": "secrets", "format": "xlsx" }),
        )
        .await;
    assert_problem(
        status,
        &body,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    );
    let fields: HashSet<(&str, &str)> = body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["field"].as_str().unwrap(), e["code"].as_str().unwrap()))
        .collect();
    assert_eq!(
        fields,
        HashSet::from([("kind", "unknown_kind"), ("format", "unsupported_format")])
    );

    let (status, body) = app
        .post(&path, &owner, json!({ "kind": "members", "format": "pdf" }))
        .await;
    assert_problem(
        status,
        &body,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    );
    assert_eq!(body["errors"][0]["field"], "format", "{body}");

    let (status, body) = app
        .post(
            &path,
            &owner,
            json!({ "kind": "members", "format": "csv", "where": "1=1" }),
        )
        .await;
    assert_problem(
        status,
        &body,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    );
    assert_eq!(body["errors"][0]["code"], "unknown_field", "{body}");
    assert_eq!(app.count("job_records").await, 0);

    // Unknown report ids and malformed ones.
    let (status, _) = app.get(&format!("{path}/{}", Uuid::now_v7()), &owner).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = app.get(&format!("{path}/nope/download"), &owner).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

/// 100,000 members: the job streams them (never holding every row) and the
/// file has a header and one line each. Setup takes a few seconds.
#[tokio::test]
async fn report_of_100k_members_streams_every_row() {
    const MEMBERS: i64 = 100_000;
    let app = TestApp::spawn().await;
    let owner = app.user("owner@example.com");
    let org = app.create_org(&owner, "Big").await;
    let started = std::time::Instant::now();
    sqlx::query(
        "insert into users (id, email, display_name)
         select gen_random_uuid(), 'bulk' || g || '@example.com', 'Bulk ' || g
         from generate_series(1, $1) g",
    )
    .bind(MEMBERS - 1)
    .execute(&app.db.admin)
    .await
    .unwrap();
    sqlx::query(
        "insert into memberships (org_id, user_id, role)
         select $1, id, 'member' from users where email like 'bulk%@example.com'",
    )
    .bind(org)
    .execute(&app.db.admin)
    .await
    .unwrap();
    sqlx::raw_sql("analyze users; analyze memberships")
        .execute(&app.db.admin)
        .await
        .unwrap();

    let _worker = app.start_worker();
    let id = start_report(&app, org, &owner, "members").await;
    let record = finished(
        &app,
        &format!("/api/v1/orgs/{org}/reports/{id}"),
        &owner,
        90,
    )
    .await;
    assert_eq!(record["result"]["rows"], MEMBERS, "{record}");
    assert_eq!(record["total"], MEMBERS, "{record}");
    assert_eq!(record["progress"], MEMBERS, "{record}");

    let dl = download(&app, org, id, &owner).await;
    assert_eq!(dl.status, StatusCode::OK);
    assert_eq!(dl.length, Some(dl.body.len() as u64));
    assert!(
        dl.body.len() > 256 * 1024 * 4,
        "several chunks were uploaded"
    );
    let lines: Vec<&str> = dl.body.lines().collect();
    assert_eq!(lines.len() as i64, MEMBERS + 1);
    assert_eq!(lines[0], "user_id,email,display_name,role,joined_at");
    let distinct: HashSet<&str> = lines[1..]
        .iter()
        .map(|l| l.split(',').next().unwrap())
        .collect();
    assert_eq!(distinct.len() as i64, MEMBERS);
    eprintln!(
        "100k-member report built and downloaded in {:?}",
        started.elapsed()
    );
}

// ---------------------------------------------------------------- imports

#[tokio::test]
async fn import_records_a_result_per_line_and_invites_only_good_rows() {
    let app = TestApp::spawn().await;
    // More seats than the free plan's default allows.
    app.unlimited_seats().await;
    let owner = app.user("owner@example.com");
    let org = app.create_org(&owner, "Acme").await;
    let member = app.user("member@example.com");
    app.add_member(org, &owner, &member, "member").await;
    let (status, body) = app
        .post(
            &format!("/api/v1/orgs/{org}/invitations"),
            &owner,
            json!({ "email": "dave@example.com", "role": "member" }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let other_owner = app.user("other@example.com");
    let other = app.create_org(&other_owner, "Other").await;

    let csv = "Email , Role\n\
               ann@example.com,member\n\
               not-an-email,member\n\
               bob@example.com,wizard\n\
               ANN@example.com,admin\n\
               member@example.com,viewer\n\
               dave@example.com,member\n\
               \n\
               carol@example.com , viewer\n\
               erin@example.com,viewer,extra\n";
    let id = start_import(&app, org, &owner, csv).await;
    assert_eq!(app.count("import_files").await, 1);

    // Other orgs do not see it.
    let (status, _) = app
        .get(&format!("/api/v1/orgs/{other}/imports/{id}"), &other_owner)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let _worker = app.start_worker();
    let record = finished(
        &app,
        &format!("/api/v1/orgs/{org}/imports/{id}"),
        &owner,
        30,
    )
    .await;
    assert_eq!(
        record["result"],
        json!({ "invited": 2, "skipped": 3, "errors": 3 }),
        "{record}"
    );
    assert_eq!(record["params"]["rows"], 8, "{record}");
    assert_eq!(record["progress"], 8, "{record}");
    assert_eq!(app.count("import_files").await, 0, "the file is deleted");

    let rows = import_rows(&app, org, id, &owner).await;
    let by_line: HashMap<i64, &Value> = rows
        .iter()
        .map(|r| (r["line"].as_i64().unwrap(), r))
        .collect();
    assert_eq!(by_line.len(), 8, "{rows:?}");
    let expect = [
        (2, "invited", None),
        (3, "error", Some("email")),
        (4, "error", Some("wizard")),
        (5, "skipped", Some("duplicate of line 2")),
        (6, "skipped", Some("member")),
        (7, "skipped", Some("invitation")),
        (9, "invited", None),
        (10, "error", Some("expected 2 fields")),
    ];
    for (line, status, error) in expect {
        let row = by_line[&line];
        assert_eq!(row["status"], status, "line {line}: {row}");
        match error {
            None => {
                assert!(row["error"].is_null(), "{row}");
                assert!(row["invitation_id"].is_string(), "{row}");
            }
            Some(e) => {
                assert!(
                    row["error"].as_str().unwrap().contains(e),
                    "line {line}: {row}"
                );
                assert!(row["invitation_id"].is_null(), "{row}");
            }
        }
    }
    assert_eq!(by_line[&5]["email"], "ann@example.com");
    assert_eq!(by_line[&9]["email"], "carol@example.com");

    // Invitations exist exactly for the good lines (dave's was there before).
    let inv = invitations(&app, org).await;
    let mut emails: Vec<&str> = inv.keys().map(String::as_str).collect();
    emails.sort();
    assert_eq!(
        emails,
        [
            "ann@example.com",
            "carol@example.com",
            "dave@example.com",
            "member@example.com"
        ]
    );
    assert_eq!(inv["ann@example.com"], ("member".to_owned(), 1));
    assert_eq!(inv["carol@example.com"], ("viewer".to_owned(), 1));
    assert_eq!(inv["dave@example.com"].1, 1);
    let invited: Vec<Uuid> = sqlx::query_scalar(
        "select id from invitations where org_id = $1 and email in ('ann@example.com', 'carol@example.com')",
    )
    .bind(org)
    .fetch_all(&app.db.admin)
    .await
    .unwrap();
    for id in invited {
        assert!(rows.iter().any(|r| r["invitation_id"] == id.to_string()));
    }
    assert!(invitations(&app, other).await.is_empty());

    // The list shows it, and the invitation emails were queued with them.
    let (status, page) = app
        .get(&format!("/api/v1/orgs/{org}/imports"), &owner)
        .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(page["data"][0]["id"], id.to_string(), "{page}");
    // Members without invitations:manage see nothing of imports.
    let (status, _) = app
        .get(&format!("/api/v1/orgs/{org}/imports/{id}"), &member)
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn running_an_import_again_never_invites_twice() {
    const LINES: usize = 250;
    let app = TestApp::spawn().await;
    // More seats than the free plan's default allows.
    app.unlimited_seats().await;
    let owner = app.user("owner@example.com");
    let org = app.create_org(&owner, "Acme").await;
    let mut csv = String::from("email,role\n");
    for i in 0..LINES {
        csv.push_str(&format!("user{i}@example.com,member\n"));
    }
    let id = start_import(&app, org, &owner, &csv).await;
    let worker = app.start_worker();
    let record = finished(
        &app,
        &format!("/api/v1/orgs/{org}/imports/{id}"),
        &owner,
        60,
    )
    .await;
    assert_eq!(
        record["result"],
        json!({ "invited": LINES, "skipped": 0, "errors": 0 })
    );
    worker.stop().await;
    let before = import_rows(&app, org, id, &owner).await;
    assert_eq!(before.len(), LINES);

    // A redelivery of the finished job does nothing.
    let job = ImportMembers {
        org_id: org,
        requested_by: owner.id,
    };
    let settings = InviteSettings::from_config(&app.state.config);
    job.clone()
        .run(&settings, job_context(&app, org, id))
        .await
        .expect("a finished import runs again as a no-op");
    assert_eq!(invitations(&app, org).await.len(), LINES);

    // A crash after the second batch: the third batch never committed (no
    // results, no invitations), the record is still running and the file
    // is still there. Two deliveries then race to finish it.
    sqlx::query("update job_records set state = 'running', result = null where id = $1")
        .bind(id)
        .execute(&app.db.admin)
        .await
        .unwrap();
    sqlx::query("insert into import_files (org_id, job_id, content) values ($1, $2, $3)")
        .bind(org)
        .bind(id)
        .bind(&csv)
        .execute(&app.db.admin)
        .await
        .unwrap();
    let cut = 201; // lines 2..=201 are the first two batches
    let dropped: Vec<String> = sqlx::query_scalar(
        "delete from import_rows where job_id = $1 and line > $2 returning email",
    )
    .bind(id)
    .bind(cut)
    .fetch_all(&app.db.admin)
    .await
    .unwrap();
    assert_eq!(dropped.len(), LINES + 1 - cut as usize);
    sqlx::query("delete from invitations where org_id = $1 and email = any($2)")
        .bind(org)
        .bind(&dropped)
        .execute(&app.db.admin)
        .await
        .unwrap();
    let kept_before: HashMap<String, String> =
        sqlx::query_as("select email, id::text from invitations where org_id = $1")
            .bind(org)
            .fetch_all(&app.db.admin)
            .await
            .unwrap()
            .into_iter()
            .collect();

    let (a, b) = tokio::join!(
        job.clone().run(&settings, job_context(&app, org, id)),
        job.clone().run(&settings, job_context(&app, org, id)),
    );
    // The slower one may find the file already gone (permanent, harmless).
    assert!(a.is_ok() || b.is_ok(), "{a:?} {b:?}");

    let inv = invitations(&app, org).await;
    assert_eq!(inv.len(), LINES);
    assert!(
        inv.values().all(|(_, n)| *n == 1),
        "no address invited twice"
    );
    let kept_after: HashMap<String, String> =
        sqlx::query_as("select email, id::text from invitations where org_id = $1")
            .bind(org)
            .fetch_all(&app.db.admin)
            .await
            .unwrap()
            .into_iter()
            .collect();
    for (email, id) in &kept_before {
        assert_eq!(
            kept_after.get(email),
            Some(id),
            "{email} was not invited again"
        );
    }
    let after = import_rows(&app, org, id, &owner).await;
    assert_eq!(after.len(), LINES);
    assert!(after.iter().all(|r| r["status"] == "invited"));
    for r in &after {
        let email = r["email"].as_str().unwrap();
        assert_eq!(
            r["invitation_id"].as_str(),
            kept_after.get(email).map(String::as_str)
        );
    }
    let (status, record) = app
        .get(&format!("/api/v1/orgs/{org}/imports/{id}"), &owner)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(record["state"], "succeeded", "{record}");
    assert_eq!(
        record["result"],
        json!({ "invited": LINES, "skipped": 0, "errors": 0 })
    );
    assert_eq!(app.count("import_files").await, 0);

    // The same job enqueued again through the outbox (a second delivery).
    let envelope = tenantry::jobs::envelope_for(
        &job,
        &tenantry::jobs::Options {
            id: Some(id),
            record_org: Some(org),
            ..Default::default()
        },
    )
    .unwrap();
    let mut conn = app.db.admin.acquire().await.unwrap();
    tenantry::jobs::insert_outbox(&mut conn, &[envelope])
        .await
        .unwrap();
    drop(conn);
    let _worker = app.start_worker();
    eventually(30, "the outbox to drain", || async {
        (app.count("app.job_outbox").await == 0).then_some(())
    })
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(invitations(&app, org).await.len(), LINES);
    assert_eq!(import_rows(&app, org, id, &owner).await.len(), LINES);
}

#[tokio::test]
async fn import_uploads_are_checked_up_front() {
    let app = TestApp::spawn().await;
    let owner = app.user("owner@example.com");
    let org = app.create_org(&owner, "Acme").await;
    let path = format!("/api/v1/orgs/{org}/imports");

    let (status, body) = post_raw(
        &app,
        &path,
        &owner,
        "text/csv",
        "mail,role\na@x.io,member\n",
    )
    .await;
    assert_problem(
        status,
        &body,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_header",
    );
    let (status, body) = post_raw(&app, &path, &owner, "text/csv", "email\na@x.io\n").await;
    assert_problem(
        status,
        &body,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_header",
    );
    let (status, body) = post_raw(&app, &path, &owner, "text/csv", "email,role\n").await;
    assert_problem(status, &body, StatusCode::UNPROCESSABLE_ENTITY, "no_rows");
    let (status, body) = post_raw(
        &app,
        &path,
        &owner,
        "text/csv",
        b"email,role\n\xff\xfe,member\n".to_vec(),
    )
    .await;
    assert_problem(
        status,
        &body,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_csv",
    );
    let mut many = String::from("email,role\n");
    for i in 0..10_001 {
        many.push_str(&format!("u{i}@x.io,member\n"));
    }
    let (status, body) = post_raw(&app, &path, &owner, "text/csv", many).await;
    assert_problem(
        status,
        &body,
        StatusCode::UNPROCESSABLE_ENTITY,
        "too_many_rows",
    );

    let (status, body) = post_raw(
        &app,
        &path,
        &owner,
        "application/json",
        r#"{"email":"a@x.io","role":"member"}"#,
    )
    .await;
    assert_problem(
        status,
        &body,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
    );
    let (status, body) = post_raw(
        &app,
        &path,
        &owner,
        "text/plain",
        "email,role\na@x.io,member\n",
    )
    .await;
    assert_problem(
        status,
        &body,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
    );

    // Larger than the global body limit (256 KiB) but within MAX_IMPORT_BYTES.
    let mut big = String::from("email,role\n");
    for i in 0..9_000 {
        big.push_str(&format!(
            "someone.with.a.long.name.{i:05}@example.com,member\n"
        ));
    }
    assert!(big.len() > 256 * 1024);
    let (status, body) = post_raw(&app, &path, &owner, "text/csv; charset=utf-8", big).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["params"]["rows"], 9_000, "{body}");

    // Only invitations:manage may import.
    let ann = app.user("ann@example.com");
    app.add_member(org, &owner, &ann, "member").await;
    let (status, body) =
        post_raw(&app, &path, &ann, "text/csv", "email,role\na@x.io,member\n").await;
    assert_problem(status, &body, StatusCode::FORBIDDEN, "permission_denied");
    assert_eq!(app.count("job_records").await, 1);
    assert_eq!(app.count("import_files").await, 1);
}

#[tokio::test]
async fn import_over_max_import_bytes_is_413() {
    let app = TestApp::spawn_with(&[("MAX_IMPORT_BYTES", "1000")], 5).await;
    let owner = app.user("owner@example.com");
    let org = app.create_org(&owner, "Acme").await;
    let path = format!("/api/v1/orgs/{org}/imports");
    let mut csv = String::from("email,role\n");
    while csv.len() <= 1000 {
        csv.push_str("someone@example.com,member\n");
    }
    let (status, body) = post_raw(&app, &path, &owner, "text/csv", csv.clone()).await;
    assert_problem(
        status,
        &body,
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
    );

    // Without a content length (a chunked body) the limit holds too.
    let stream = futures_util::stream::iter(
        csv.into_bytes()
            .chunks(100)
            .map(|c| Ok::<_, std::io::Error>(c.to_vec()))
            .collect::<Vec<_>>(),
    );
    let (status, body) = post_raw(
        &app,
        &path,
        &owner,
        "text/csv",
        reqwest::Body::wrap_stream(stream),
    )
    .await;
    assert_problem(
        status,
        &body,
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
    );

    let (status, body) = post_raw(
        &app,
        &path,
        &owner,
        "text/csv",
        "email,role\na@example.com,member\n",
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(app.count("job_records").await, 1);
}
