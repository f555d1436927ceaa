//! Migrations are reversible, and `migrate` leaves the app role as the
//! tenancy rules need it.
use crate::common::*;

use sqlx::{Connection, PgConnection};
use tenantry::core::db;

async fn table_count(url: &str) -> i64 {
    let mut c = PgConnection::connect(url).await.unwrap();
    sqlx::query_scalar(
        "select count(*) from pg_tables where schemaname = 'public' and tablename <> '_sqlx_migrations'",
    )
    .fetch_one(&mut c)
    .await
    .unwrap()
}

#[tokio::test]
async fn migrations_go_down_and_up_again() {
    let test_db = TestDb::new().await;
    let url = test_db.owner_url.clone();
    assert!(table_count(&url).await >= 6);
    let status = db::migrate_status(&url).await.unwrap();
    assert!(!status.is_empty());
    assert!(status.iter().all(|(_, _, applied)| *applied), "{status:?}");

    // Revert everything, one migration at a time.
    while db::migrate_down(&url).await.unwrap().is_some() {}
    assert_eq!(table_count(&url).await, 0);
    let status = db::migrate_status(&url).await.unwrap();
    assert!(status.iter().all(|(_, _, applied)| !*applied), "{status:?}");
    assert_eq!(db::migrate_down(&url).await.unwrap(), None);

    db::migrate_up(&url, &test_db.app_url).await.unwrap();
    assert!(table_count(&url).await >= 6);
    // Idempotent: a second run changes nothing and succeeds.
    db::migrate_up(&url, &test_db.app_url).await.unwrap();
}

#[tokio::test]
async fn migrate_creates_a_restricted_login_role_from_database_url() {
    let test_db = TestDb::new().await;
    let role = format!(
        "tenantry_mig_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let app_url = {
        let mut u = url::Url::parse(&test_db.owner_url).unwrap();
        u.set_username(&role).unwrap();
        u.set_password(Some("pa'ss\"word")).unwrap();
        u.to_string()
    };
    db::migrate_up(&test_db.owner_url, &app_url).await.unwrap();
    let (login, superuser, bypass, member): (bool, bool, bool, bool) = sqlx::query_as(
        "select rolcanlogin, rolsuper, rolbypassrls, pg_has_role(oid, 'tenantry_app', 'member')
         from pg_roles where rolname = $1",
    )
    .bind(&role)
    .fetch_one(&test_db.admin)
    .await
    .unwrap();
    assert!(login && member);
    assert!(!superuser && !bypass);

    // The role can log in and reach tenant tables only through the tenant context.
    let mut c = PgConnection::connect(&app_url).await.unwrap();
    let n: i64 = sqlx::query_scalar("select count(*) from organizations")
        .fetch_one(&mut c)
        .await
        .unwrap_or(-1);
    assert!(n <= 0);
    c.close().await.unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "revoke connect on database \"{}\" from \"{role}\"; drop owned by \"{role}\"; drop role \"{role}\"",
        test_db.name
    )))
    .execute(&test_db.admin)
    .await
    .unwrap();
}
