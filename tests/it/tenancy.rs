//! The tenant wall: what the database itself guarantees (catalog), that no
//! tenant context survives a request on a pooled connection, that RLS alone
//! (no `WHERE org_id`) keeps orgs apart for raw SQL run as the app role, and
//! that the HTTP API answers 404 for another org's resources.

use crate::common::*;
use reqwest::StatusCode;
use serde_json::{Value, json};
use sqlx::{PgPool, Postgres, Transaction};
use uuid::Uuid;

/// Every table holding tenant rows (`organizations` is the tenant itself).
const TENANT_TABLES: [&str; 5] = [
    "organizations",
    "roles",
    "memberships",
    "invitations",
    "audit_log",
];

/// The column that names a row's org (`organizations` is keyed by its own id).
fn org_col(table: &str) -> &'static str {
    if table == "organizations" {
        "id"
    } else {
        "org_id"
    }
}

// ------------------------------------------------------------------ helpers

/// The tenant context a raw-SQL transaction runs under.
#[derive(Clone, Copy, Debug)]
enum Ctx<'a> {
    /// The login role as it comes out of the pool: no role switch, no settings.
    Nothing,
    /// `app.enter_org(org, user)`.
    Org(Uuid, Uuid),
    /// `app.enter_user(user, invite_token_hash_hex)`.
    User(Uuid, Option<&'a str>),
}

async fn begin(pool: &PgPool, ctx: Ctx<'_>) -> Transaction<'static, Postgres> {
    let mut tx = pool.begin().await.unwrap();
    match ctx {
        Ctx::Nothing => {}
        Ctx::Org(org, user) => {
            sqlx::query("select * from app.enter_org($1, $2)")
                .bind(org)
                .bind(user)
                .fetch_all(&mut *tx)
                .await
                .unwrap();
        }
        Ctx::User(user, hash) => {
            sqlx::query("select app.enter_user($1, $2)")
                .bind(user)
                .bind(hash)
                .execute(&mut *tx)
                .await
                .unwrap();
        }
    }
    tx
}

/// Runs one statement under `ctx` in its own transaction, rolled back afterwards.
async fn exec(pool: &PgPool, ctx: Ctx<'_>, sql: &str) -> Result<u64, sqlx::Error> {
    let mut tx = begin(pool, ctx).await;
    let r = sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()))
        .execute(&mut *tx)
        .await
        .map(|r| r.rows_affected());
    tx.rollback().await.ok();
    r
}

/// One scalar bigint under `ctx` (rolled back afterwards).
async fn scalar(pool: &PgPool, ctx: Ctx<'_>, sql: &str) -> i64 {
    let mut tx = begin(pool, ctx).await;
    let v: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
        .fetch_one(&mut *tx)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    tx.rollback().await.ok();
    v
}

/// A column of uuids under `ctx`, sorted (rolled back afterwards).
async fn uuids(pool: &PgPool, ctx: Ctx<'_>, sql: &str) -> Vec<Uuid> {
    let mut tx = begin(pool, ctx).await;
    let mut v: Vec<Uuid> = sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
        .fetch_all(&mut *tx)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    tx.rollback().await.ok();
    v.sort();
    v
}

/// Asserts a statement failed with SQLSTATE 42501 and a message containing `needle`
/// ("row-level security" for a policy violation, "permission denied" for a missing grant;
/// Postgres uses 42501 for both).
#[track_caller]
fn assert_denied(what: &str, r: Result<u64, sqlx::Error>, needle: &str) {
    match r {
        Err(sqlx::Error::Database(e)) => {
            assert_eq!(
                e.code().as_deref(),
                Some("42501"),
                "{what}: expected SQLSTATE 42501, got {e}"
            );
            assert!(
                e.message().contains(needle),
                "{what}: expected an error mentioning {needle:?}, got {:?}",
                e.message()
            );
        }
        Err(e) => panic!("{what}: expected a database error, got {e}"),
        Ok(n) => panic!("{what}: expected SQLSTATE 42501, but the statement succeeded ({n} rows)"),
    }
}

async fn admin_count(app: &TestApp, sql: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
        .fetch_one(&app.db.admin)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

async fn invite(app: &TestApp, org: Uuid, by: &TestUser, email: &str, role: &str) -> Value {
    let (s, inv) = app
        .post(
            &format!("/api/v1/orgs/{org}/invitations"),
            by,
            json!({ "email": email, "role": role }),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "invite {email}: {inv}");
    inv
}

// ------------------------------------------------------------------ 1. catalog

/// table, index, is primary key, includes org_id, column names, column types, definition.
type UniqueIndex = (String, String, bool, bool, Vec<String>, Vec<String>, String);

#[tokio::test]
async fn catalog_every_tenant_table_is_walled_and_the_app_roles_are_powerless() {
    let db = TestDb::new().await;
    let admin = &db.admin;
    let roles = vec![APP_ROLE.to_owned(), "tenantry_app".to_owned()];

    // Tables in `public` with an org_id column, plus the tenant table itself.
    let tables: Vec<(String, bool, bool, i64)> = sqlx::query_as(
        "select c.relname::text, c.relrowsecurity, c.relforcerowsecurity,
                (select count(*) from pg_policy p where p.polrelid = c.oid)
         from pg_class c join pg_namespace n on n.oid = c.relnamespace
         where n.nspname = 'public' and c.relkind in ('r', 'p')
           and (c.relname = 'organizations' or exists (
                select 1 from pg_attribute a
                where a.attrelid = c.oid and a.attname = 'org_id' and not a.attisdropped))
         order by 1",
    )
    .fetch_all(admin)
    .await
    .unwrap();
    let names: Vec<&str> = tables.iter().map(|t| t.0.as_str()).collect();
    for t in TENANT_TABLES {
        assert!(names.contains(&t), "{t} missing from {names:?}");
    }
    for (name, rls, forced, policies) in &tables {
        assert!(rls, "{name}: row level security is not enabled");
        assert!(
            forced,
            "{name}: row level security is not forced (the owner would bypass it)"
        );
        assert!(*policies >= 1, "{name}: no policy");
    }

    // Neither the login role nor the group role is, or can become, all-powerful.
    let attrs: Vec<(String, bool, bool)> = sqlx::query_as(
        "select rolname::text, rolsuper, rolbypassrls from pg_roles where rolname = any($1)",
    )
    .bind(&roles)
    .fetch_all(admin)
    .await
    .unwrap();
    assert_eq!(attrs.len(), 2, "{attrs:?}");
    for (name, sup, bypass) in &attrs {
        assert!(!sup, "{name} is a superuser");
        assert!(!bypass, "{name} has BYPASSRLS");
    }
    // ... not even through membership of another role.
    let powerful: Vec<String> = sqlx::query_scalar(
        "select r.rolname::text from pg_roles r
         where pg_has_role($1, r.oid, 'MEMBER')
           and (r.rolsuper or r.rolbypassrls
                or r.rolname in ('pg_read_all_data', 'pg_write_all_data', 'pg_database_owner'))",
    )
    .bind(APP_ROLE)
    .fetch_all(admin)
    .await
    .unwrap();
    assert!(
        powerful.is_empty(),
        "{APP_ROLE} inherits power from {powerful:?}"
    );

    // They own nothing: an owner could disable RLS, drop policies, or (without
    // FORCE) read past them.
    let owned: Vec<(String, String)> = sqlx::query_as(
        "select 'relation', c.relname::text from pg_class c
            join pg_roles r on r.oid = c.relowner where r.rolname = any($1)
         union all
         select 'function', p.proname::text from pg_proc p
            join pg_roles r on r.oid = p.proowner where r.rolname = any($1)
         union all
         select 'schema', n.nspname::text from pg_namespace n
            join pg_roles r on r.oid = n.nspowner where r.rolname = any($1)
         union all
         select 'type', t.typname::text from pg_type t
            join pg_roles r on r.oid = t.typowner where r.rolname = any($1)
         union all
         select 'database', d.datname::text from pg_database d
            join pg_roles r on r.oid = d.datdba
            where r.rolname = any($1) and d.datname = current_database()",
    )
    .bind(&roles)
    .fetch_all(admin)
    .await
    .unwrap();
    assert!(owned.is_empty(), "the app roles own {owned:?}");

    // TRUNCATE ignores RLS, and CREATE would let them own (and so unwall) objects.
    for role in &roles {
        let truncatable: Vec<String> = sqlx::query_scalar(
            "select c.relname::text from pg_class c join pg_namespace n on n.oid = c.relnamespace
             where n.nspname in ('public', 'app') and c.relkind in ('r', 'p')
               and (has_table_privilege($1, c.oid, 'TRUNCATE')
                    or has_table_privilege($1, c.oid, 'TRIGGER'))",
        )
        .bind(role)
        .fetch_all(admin)
        .await
        .unwrap();
        assert!(
            truncatable.is_empty(),
            "{role} may TRUNCATE or add triggers to {truncatable:?}"
        );
        let (create_public, create_app, create_db): (bool, bool, bool) = sqlx::query_as(
            "select has_schema_privilege($1, 'public', 'CREATE'),
                    has_schema_privilege($1, 'app', 'CREATE'),
                    has_database_privilege($1, current_database(), 'CREATE')",
        )
        .bind(role)
        .fetch_one(admin)
        .await
        .unwrap();
        assert!(
            !create_public && !create_app && !create_db,
            "{role} may create objects (public {create_public}, app {create_app}, database {create_db})"
        );
    }

    // A SECURITY DEFINER function or a definer-rights view owned by the migration
    // (super)user would run tenant queries past RLS.
    let definers: Vec<String> = sqlx::query_scalar(
        "select p.oid::regprocedure::text from pg_proc p join pg_namespace n on n.oid = p.pronamespace
         where n.nspname in ('public', 'app') and p.prosecdef",
    )
    .fetch_all(admin)
    .await
    .unwrap();
    assert!(
        definers.is_empty(),
        "SECURITY DEFINER functions: {definers:?}"
    );
    let views: Vec<String> = sqlx::query_scalar(
        "select c.relname::text from pg_class c join pg_namespace n on n.oid = c.relnamespace
         where n.nspname in ('public', 'app') and c.relkind in ('v', 'm')
           and has_table_privilege('tenantry_app', c.oid, 'SELECT')
           and (c.relkind = 'm' or not coalesce('security_invoker=true' = any(c.reloptions)
                                                 or 'security_invoker=on' = any(c.reloptions), false))",
    )
    .fetch_all(admin)
    .await
    .unwrap();
    assert!(
        views.is_empty(),
        "views readable by the app that bypass RLS: {views:?}"
    );

    // org_id is the first column of some index on every table that has it.
    let unindexed: Vec<String> = sqlx::query_scalar(
        "select c.relname::text from pg_class c
         join pg_namespace n on n.oid = c.relnamespace
         join pg_attribute a on a.attrelid = c.oid and a.attname = 'org_id' and not a.attisdropped
         where n.nspname = 'public' and c.relkind in ('r', 'p')
           and not exists (select 1 from pg_index i
                           where i.indrelid = c.oid and i.indkey[0] = a.attnum)",
    )
    .fetch_all(admin)
    .await
    .unwrap();
    assert!(
        unindexed.is_empty(),
        "org_id leads no index on {unindexed:?}"
    );

    // Every unique constraint or index on a table with org_id includes org_id;
    // otherwise one org's rows would collide with another's (and the error
    // would reveal that the value exists elsewhere). Exceptions:
    // * a primary key on a single uuid `id`: ids are random v4/v7 uuids generated by
    //   the server, so uniqueness across orgs reveals nothing and never collides;
    // * invitations.token_hash: the accept flow looks invitations up by token
    //   before it knows the org, so the hash must be globally unique; it is the
    //   sha256 of 32 random bytes, never chosen by a client.
    // `organizations` is not checked here: it has no org_id (its slug is a
    // deliberately global namespace, since slugs appear in URLs).
    let uniques: Vec<UniqueIndex> =
        sqlx::query_as(
            "select c.relname::text, ic.relname::text, i.indisprimary,
                    a.attnum = any(i.indkey::int2[]) as has_org,
                    array(select coalesce(k.attname::text, '<expr>')
                          from unnest(i.indkey::int2[]) with ordinality as u(num, ord)
                          left join pg_attribute k on k.attrelid = c.oid and k.attnum = u.num
                          order by u.ord),
                    array(select coalesce(format_type(k.atttypid, k.atttypmod), '<expr>')
                          from unnest(i.indkey::int2[]) with ordinality as u(num, ord)
                          left join pg_attribute k on k.attrelid = c.oid and k.attnum = u.num
                          order by u.ord),
                    pg_get_indexdef(i.indexrelid)
             from pg_class c
             join pg_namespace n on n.oid = c.relnamespace
             join pg_attribute a on a.attrelid = c.oid and a.attname = 'org_id' and not a.attisdropped
             join pg_index i on i.indrelid = c.oid and i.indisunique
             join pg_class ic on ic.oid = i.indexrelid
             where n.nspname = 'public' and c.relkind in ('r', 'p')
             order by 1, 2",
        )
        .fetch_all(admin)
        .await
        .unwrap();
    assert!(
        uniques.len() >= 5,
        "expected the known unique indexes: {uniques:?}"
    );
    for (table, index, primary, has_org, cols, types, def) in &uniques {
        if *has_org {
            continue;
        }
        let uuid_pk = *primary && cols == &["id"] && types == &["uuid"];
        let token_hash =
            table == "invitations" && cols == &["token_hash"] && !def.contains("WHERE");
        assert!(
            uuid_pk || token_hash,
            "unique index {index} on {table} ({cols:?}) does not include org_id: {def}"
        );
    }
}

// ------------------------------------------------------------------ 2. context leak

/// Checks, on the app pool's single connection, that nothing of a tenant
/// context is left: settings empty, login role back, no tenant row visible.
async fn assert_no_context(app: &TestApp, step: &str, pid: &mut Option<i32>) {
    let (me, session, org, user, hash, no_org, backend): (
        String,
        String,
        String,
        String,
        String,
        bool,
        i32,
    ) = sqlx::query_as(
        "select current_user::text, session_user::text,
                coalesce(current_setting('app.org_id', true), ''),
                coalesce(current_setting('app.user_id', true), ''),
                coalesce(current_setting('app.invite_token_hash', true), ''),
                app.current_org_id() is null,
                pg_backend_pid()",
    )
    .fetch_one(&app.db.app)
    .await
    .unwrap();
    // One connection: every check (and every request between them) used it.
    match pid {
        None => *pid = Some(backend),
        Some(p) => assert_eq!(*p, backend, "{step}: the pool opened another connection"),
    }
    assert_eq!(me, APP_ROLE, "{step}: current_user leaked");
    assert_eq!(session, APP_ROLE, "{step}: session_user");
    assert_eq!(org, "", "{step}: app.org_id leaked");
    assert_eq!(user, "", "{step}: app.user_id leaked");
    assert_eq!(hash, "", "{step}: app.invite_token_hash leaked");
    assert!(no_org, "{step}: app.current_org_id() is not null");
    for t in TENANT_TABLES {
        let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!("select count(*) from {t}")))
            .fetch_one(&app.db.app)
            .await
            .unwrap();
        assert_eq!(n, 0, "{step}: {t} shows {n} rows with no tenant context");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_tenant_context_survives_a_request_on_a_pooled_connection() {
    let app = TestApp::spawn_with(&[], 1).await;
    assert_eq!(app.db.app.options().get_max_connections(), 1);
    let ann = app.user("ann@example.com");
    let bob = app.user("bob@example.com");
    let mut pid = None;
    assert_no_context(&app, "fresh pool", &mut pid).await;

    let org = app.create_org(&ann, "Leaky Org").await;
    assert_no_context(&app, "after create org", &mut pid).await;

    // Invite + accept: the accept flow runs with the invite token hash set.
    app.add_member(org, &ann, &bob, "viewer").await;
    assert_no_context(&app, "after invite and accept", &mut pid).await;

    let (s, page) = app.get(&format!("/api/v1/orgs/{org}/members"), &ann).await;
    assert_eq!(s, StatusCode::OK, "{page}");
    assert_eq!(page["data"].as_array().unwrap().len(), 2);
    assert_no_context(&app, "after GET members", &mut pid).await;

    invite(&app, org, &ann, "carol@example.com", "member").await;
    assert_no_context(&app, "after create invitation", &mut pid).await;

    let (s, _) = app
        .get(&format!("/api/v1/orgs/{org}/audit-log"), &ann)
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_no_context(&app, "after GET audit-log", &mut pid).await;

    // Failures after the context was set: the transaction is dropped, not committed.
    let (s, _) = app
        .get(&format!("/api/v1/orgs/{org}/audit-log"), &bob)
        .await;
    assert_eq!(
        s,
        StatusCode::FORBIDDEN,
        "a viewer cannot read the audit log"
    );
    assert_no_context(&app, "after a 403 in an org", &mut pid).await;

    let (s, _) = app
        .patch(
            &format!("/api/v1/orgs/{org}/members/{}", Uuid::new_v4()),
            &ann,
            json!({ "role": "member" }),
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_no_context(&app, "after a 404 under the org lock", &mut pid).await;

    let (s, _) = app
        .post(
            "/api/v1/invitations/accept",
            &bob,
            json!({ "token": "inv_no_such_invitation" }),
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_no_context(&app, "after a failed accept", &mut pid).await;

    let (s, mine) = app.get("/api/v1/me/organizations", &bob).await;
    assert_eq!(s, StatusCode::OK, "{mine}");
    assert_eq!(mine["data"].as_array().unwrap().len(), 1);
    assert_no_context(&app, "after GET /me/organizations", &mut pid).await;

    // Not vacuous: the rows are there, the superuser sees them.
    for t in TENANT_TABLES {
        assert!(app.count(t).await > 0, "{t} is empty");
    }
}

// ------------------------------------------------------------------ 3. raw SQL wall

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rls_alone_keeps_orgs_apart_for_raw_sql_as_the_app_role() {
    let app = TestApp::spawn().await;
    let ann = app.user("ann@example.com"); // owner of A
    let bob = app.user("bob@example.com"); // member of A, admin of C
    let cat = app.user("cat@example.com"); // owner of B
    let dan = app.user("dan@example.com"); // invited to A, member of nothing
    let org_a = app.create_org(&ann, "Org A").await;
    let org_b = app.create_org(&cat, "Org B").await;
    let org_c = app.create_org(&cat, "Org C").await;
    app.add_member(org_a, &ann, &bob, "member").await;
    app.add_member(org_c, &cat, &bob, "admin").await;
    let inv_a = invite(&app, org_a, &ann, &dan.email, "viewer").await;
    let inv_b = invite(&app, org_b, &cat, "erin@example.com", "member").await;
    let token_a = inv_a["token"].as_str().unwrap().to_owned();
    let inv_a_id: Uuid = inv_a["id"].as_str().unwrap().parse().unwrap();
    let inv_b_id: Uuid = inv_b["id"].as_str().unwrap().parse().unwrap();
    let before = app.snapshot().await;
    let pool = &app.db.app;
    let in_b = Ctx::Org(org_b, cat.id);

    for t in TENANT_TABLES {
        let col = org_col(t);
        let a_rows = admin_count(
            &app,
            &format!("select count(*) from {t} where {col} = '{org_a}'"),
        )
        .await;
        let b_rows = admin_count(
            &app,
            &format!("select count(*) from {t} where {col} = '{org_b}'"),
        )
        .await;
        assert!(a_rows > 0 && b_rows > 0, "{t}: fixtures missing");

        // No WHERE clause at all: exactly B's rows.
        let seen = scalar(pool, in_b, &format!("select count(*) from {t}")).await;
        assert_eq!(
            seen, b_rows,
            "{t}: org B's context sees {seen} rows, B has {b_rows}"
        );
        let other = scalar(
            pool,
            in_b,
            &format!("select count(*) from {t} where {col} <> '{org_b}'"),
        )
        .await;
        assert_eq!(other, 0, "{t}: org B's context sees other orgs' rows");
        let of_a = scalar(
            pool,
            in_b,
            &format!("select count(*) from {t} where {col} = '{org_a}'"),
        )
        .await;
        assert_eq!(of_a, 0, "{t}: org B's context sees org A's rows");

        // No context: nothing, both as the login role and as the group role.
        let none = scalar(pool, Ctx::Nothing, &format!("select count(*) from {t}")).await;
        assert_eq!(none, 0, "{t}: visible with no context");
        let mut tx = pool.begin().await.unwrap();
        sqlx::query("select set_config('role', 'tenantry_app', true)")
            .execute(&mut *tx)
            .await
            .unwrap();
        let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!("select count(*) from {t}")))
            .fetch_one(&mut *tx)
            .await
            .unwrap();
        tx.rollback().await.unwrap();
        assert_eq!(n, 0, "{t}: visible to tenantry_app with no org set");
    }

    // UPDATE and DELETE of org A's rows from org B's context touch nothing.
    for (what, sql) in [
        (
            "update A's org",
            format!("update organizations set name = 'pwned' where id = '{org_a}'"),
        ),
        (
            "update A's roles",
            format!("update roles set description = 'pwned' where org_id = '{org_a}'"),
        ),
        (
            "update A's members",
            format!("update memberships set role = 'viewer' where org_id = '{org_a}'"),
        ),
        (
            "update A's invitations",
            format!("update invitations set revoked_at = now() where org_id = '{org_a}'"),
        ),
        (
            "delete A's org",
            format!("delete from organizations where id = '{org_a}'"),
        ),
        (
            "delete A's members",
            format!("delete from memberships where org_id = '{org_a}'"),
        ),
        (
            "delete A's roles",
            format!("delete from roles where org_id = '{org_a}' and not builtin"),
        ),
        (
            "delete A's member bob by key",
            format!(
                "delete from memberships where org_id = '{org_a}' and user_id = '{}'",
                bob.id
            ),
        ),
    ] {
        let n = exec(pool, in_b, &sql)
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(n, 0, "{what}: {n} rows affected from org B's context");
    }
    // An unqualified UPDATE touches exactly B's rows.
    let b_members = admin_count(
        &app,
        &format!("select count(*) from memberships where org_id = '{org_b}'"),
    )
    .await;
    let n = exec(pool, in_b, "update memberships set updated_at = now()")
        .await
        .unwrap();
    assert_eq!(n as i64, b_members, "unqualified update reached other orgs");

    // Writing a row into org A, or moving a row there, violates the policy.
    let rls = "row-level security";
    let some_hash = "'\\x00'::bytea";
    for (what, sql) in [
        (
            "insert A's org row",
            format!(
                "insert into organizations (id, name, slug) values ('{org_a}', 'x', 'x-pwned')"
            ),
        ),
        (
            "insert an org",
            format!(
                "insert into organizations (id, name, slug) values ('{}', 'x', 'x-pwned')",
                Uuid::new_v4()
            ),
        ),
        (
            "insert a role in A",
            format!(
                "insert into roles (org_id, name, permissions) values ('{org_a}', 'evil', '{{}}')"
            ),
        ),
        (
            "insert a member in A",
            format!(
                "insert into memberships (org_id, user_id, role) values ('{org_a}', '{}', 'owner')",
                cat.id
            ),
        ),
        (
            "insert an invitation in A",
            format!(
                "insert into invitations (id, org_id, email, role, token_hash, expires_at) values ('{}', '{org_a}', 'x@example.com', 'owner', {some_hash}, now() + interval '1 day')",
                Uuid::new_v4()
            ),
        ),
        (
            "insert an audit row in A",
            format!(
                "insert into audit_log (id, org_id, action, target_type) values ('{}', '{org_a}', 'x', 'y')",
                Uuid::new_v4()
            ),
        ),
        (
            "move B's members to A",
            format!("update memberships set org_id = '{org_a}' where org_id = '{org_b}'"),
        ),
        (
            "move B's invitation to A",
            format!("update invitations set org_id = '{org_a}' where id = '{inv_b_id}'"),
        ),
    ] {
        assert_denied(what, exec(pool, in_b, &sql).await, rls);
    }

    // The audit log is append-only: no UPDATE or DELETE, even of one's own org's rows.
    let own_audit = scalar(pool, in_b, "select count(*) from audit_log").await;
    assert!(own_audit > 0);
    let denied = "permission denied";
    for (what, sql) in [
        (
            "update own audit rows",
            "update audit_log set action = 'forged'".to_owned(),
        ),
        ("delete own audit rows", "delete from audit_log".to_owned()),
        (
            "delete own audit row by org",
            format!("delete from audit_log where org_id = '{org_b}'"),
        ),
        (
            "delete invitations",
            format!("delete from invitations where id = '{inv_b_id}'"),
        ),
        ("truncate memberships", "truncate memberships".to_owned()),
    ] {
        assert_denied(what, exec(pool, in_b, &sql).await, denied);
    }

    // User-only context: bob's own memberships and orgs (A and C), nothing else.
    let as_bob = Ctx::User(bob.id, None);
    let members = uuids(pool, as_bob, "select org_id from memberships").await;
    let mut expected = vec![org_a, org_c];
    expected.sort();
    assert_eq!(members, expected, "bob's memberships");
    let users = uuids(pool, as_bob, "select distinct user_id from memberships").await;
    assert_eq!(users, vec![bob.id], "only bob's own membership rows");
    let orgs = uuids(pool, as_bob, "select id from organizations").await;
    assert_eq!(orgs, expected, "bob's organizations");
    let role_orgs = uuids(pool, as_bob, "select org_id from roles").await;
    assert_eq!(
        role_orgs, expected,
        "bob sees only his own role in each org"
    );
    assert_eq!(
        scalar(pool, as_bob, "select count(*) from invitations").await,
        0
    );
    assert_eq!(
        scalar(pool, as_bob, "select count(*) from audit_log").await,
        0
    );
    // ... and cannot write himself into an org without an org context.
    assert_denied(
        "self-insert into B with a user context",
        exec(
            pool,
            as_bob,
            &format!(
                "insert into memberships (org_id, user_id, role) values ('{org_b}', '{}', 'owner')",
                bob.id
            ),
        )
        .await,
        rls,
    );
    // A user context sees its memberships read-only: the update finds no row to change.
    assert_eq!(
        exec(pool, as_bob, "update memberships set role = 'owner'")
            .await
            .unwrap(),
        0,
        "promote oneself with a user context"
    );

    // Invite-token context: exactly the invitation with that hash, nothing else.
    let hash_hex: String =
        sqlx::query_scalar("select encode(sha256(convert_to($1, 'UTF8')), 'hex')")
            .bind(&token_a)
            .fetch_one(&app.db.admin)
            .await
            .unwrap();
    let as_dan = Ctx::User(dan.id, Some(&hash_hex));
    let invs = uuids(pool, as_dan, "select id from invitations").await;
    assert_eq!(
        invs,
        vec![inv_a_id],
        "the token shows its own invitation only"
    );
    for t in ["organizations", "roles", "memberships", "audit_log"] {
        let n = scalar(pool, as_dan, &format!("select count(*) from {t}")).await;
        assert_eq!(n, 0, "{t}: visible through an invitation token");
    }
    let wrong = "00".repeat(32);
    let as_guesser = Ctx::User(dan.id, Some(&wrong));
    assert_eq!(
        scalar(pool, as_guesser, "select count(*) from invitations").await,
        0
    );
    // The hash does not widen an org context either: in B, A's invitation stays hidden.
    let mut tx = begin(pool, in_b).await;
    sqlx::query("select set_config('app.invite_token_hash', $1, true)")
        .bind(&hash_hex)
        .execute(&mut *tx)
        .await
        .unwrap();
    let ids: Vec<Uuid> = sqlx::query_scalar("select id from invitations")
        .fetch_all(&mut *tx)
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    assert_eq!(ids, vec![inv_b_id], "org B's context with A's token hash");

    assert_eq!(app.snapshot().await, before, "raw SQL changed something");
}

// ------------------------------------------------------------------ 4. HTTP

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_orgs_resources_are_404_over_http_and_nothing_changes() {
    let app = TestApp::spawn().await;
    let ann = app.user("ann@example.com"); // owner of A
    let bob = app.user("bob@example.com"); // member of A
    let cat = app.user("cat@example.com"); // owner of B
    let dan = app.user("dan@example.com"); // member of B
    let org_a = app.create_org(&ann, "Org Alpha").await;
    let org_b = app.create_org(&cat, "Org Beta").await;
    app.add_member(org_a, &ann, &bob, "member").await;
    app.add_member(org_b, &cat, &dan, "member").await;
    let inv_b = invite(&app, org_b, &cat, "erin@example.com", "member").await;
    let inv_b_id = inv_b["id"].as_str().unwrap();
    let (s, b) = app.get(&format!("/api/v1/orgs/{org_b}"), &cat).await;
    assert_eq!(s, StatusCode::OK);
    let b_slug = b["slug"].as_str().unwrap().to_owned();
    let before = app.snapshot().await;

    let b = format!("/api/v1/orgs/{org_b}");
    let a = format!("/api/v1/orgs/{org_a}");
    let (dan_id, cat_id) = (dan.id, cat.id);
    use reqwest::Method as M;
    let requests: Vec<(M, String, Option<Value>)> = vec![
        (M::GET, b.clone(), None),
        (M::GET, format!("{b}/members"), None),
        (M::GET, format!("{b}/audit-log"), None),
        (M::GET, format!("{b}/roles"), None),
        (M::GET, format!("{b}/invitations"), None),
        (M::PATCH, b.clone(), Some(json!({ "name": "Pwned" }))),
        (M::DELETE, b.clone(), None),
        (
            M::PATCH,
            format!("{b}/members/{dan_id}"),
            Some(json!({ "role": "admin" })),
        ),
        (
            M::PATCH,
            format!("{b}/members/{cat_id}"),
            Some(json!({ "role": "viewer" })),
        ),
        (M::DELETE, format!("{b}/members/{dan_id}"), None),
        (
            M::POST,
            format!("{b}/invitations"),
            Some(json!({ "email": "x@example.com", "role": "owner" })),
        ),
        (M::DELETE, format!("{b}/invitations/{inv_b_id}"), None),
        (
            M::POST,
            format!("{b}/roles"),
            Some(json!({ "name": "spy", "permissions": ["audit:read"] })),
        ),
        (
            M::PATCH,
            format!("{b}/roles/member"),
            Some(json!({ "description": "x" })),
        ),
        (
            M::POST,
            format!("{b}/transfer-ownership"),
            Some(json!({ "user_id": ann.id })),
        ),
    ];
    for (method, path, body) in requests {
        for who in [&ann, &bob] {
            let (s, resp) = app
                .call(method.clone(), &path, Some(&who.token), body.clone())
                .await;
            assert_eq!(
                s,
                StatusCode::NOT_FOUND,
                "{method} {path} as {}: {resp}",
                who.email
            );
            assert_eq!(resp["code"], "not_found", "{method} {path}: {resp}");
            let text = resp.to_string();
            assert!(
                !text.contains(&b_slug) && !text.contains("Org Beta") && !text.contains(&dan.email),
                "{method} {path}: the 404 reveals B's data: {text}"
            );
        }
    }

    // B's ids through A's own routes, as A's owner (who holds every permission there).
    let requests: Vec<(M, String, Option<Value>)> = vec![
        (
            M::PATCH,
            format!("{a}/members/{dan_id}"),
            Some(json!({ "role": "admin" })),
        ),
        (
            M::PATCH,
            format!("{a}/members/{cat_id}"),
            Some(json!({ "role": "viewer" })),
        ),
        (M::DELETE, format!("{a}/members/{dan_id}"), None),
        (M::DELETE, format!("{a}/members/{cat_id}"), None),
        (M::DELETE, format!("{a}/invitations/{inv_b_id}"), None),
    ];
    for (method, path, body) in requests {
        let (s, resp) = app
            .call(method.clone(), &path, Some(&ann.token), body.clone())
            .await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{method} {path}: {resp}");
        assert_eq!(resp["code"], "not_found", "{method} {path}: {resp}");
    }

    // Transferring A to a member of B only: not a member of A.
    let (s, resp) = app
        .post(
            &format!("{a}/transfer-ownership"),
            &ann,
            json!({ "user_id": cat.id }),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{resp}");

    // No oracle: B's 404 reads like a 404 for an org that does not exist.
    let strip = |mut v: Value| {
        v.as_object_mut().unwrap().remove("request_id");
        v
    };
    let (s1, r1) = app.get(&b, &ann).await;
    let (s2, r2) = app
        .get(&format!("/api/v1/orgs/{}", Uuid::new_v4()), &ann)
        .await;
    assert_eq!((s1, strip(r1)), (s2, strip(r2)));

    assert_eq!(
        app.snapshot().await,
        before,
        "a cross-org request changed data"
    );
    // And B's owner still sees B intact.
    let (s, members) = app.get(&format!("{b}/members"), &cat).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(members["data"].as_array().unwrap().len(), 2);
}

/// A user context (no org) may read its own memberships and orgs, and an
/// invitation by its token, but may change nothing through those views: a
/// viewer could otherwise delete the org or leave past the last-owner rule.
#[tokio::test]
async fn a_user_context_reads_its_own_rows_but_writes_nothing() {
    let app = TestApp::spawn().await;
    let owner = app.user("owner-w@example.com");
    let viewer = app.user("viewer-w@example.com");
    let org = app.create_org(&owner, "Write Wall").await;
    app.add_member(org, &owner, &viewer, "viewer").await;
    let pool = &app.db.app;
    let as_viewer = Ctx::User(viewer.id, None);
    let as_owner = Ctx::User(owner.id, None);

    assert_eq!(
        scalar(pool, as_viewer, "select count(*) from memberships").await,
        1
    );
    assert_eq!(
        scalar(pool, as_viewer, "select count(*) from organizations").await,
        1
    );

    for (who, me, ctx) in [
        ("viewer", viewer.id, as_viewer),
        ("owner", owner.id, as_owner),
    ] {
        for sql in [
            "delete from organizations".to_owned(),
            "update organizations set name = 'hijacked'".to_owned(),
            "delete from memberships".to_owned(),
            "update memberships set role = 'owner'".to_owned(),
            "delete from roles".to_owned(),
            "update roles set permissions = '{org:delete}'".to_owned(),
            format!("update users set display_name = 'x' where id <> '{me}'"),
        ] {
            let n = exec(pool, ctx, &sql).await.unwrap_or(0);
            assert_eq!(n, 0, "{who}: {sql} changed {n} rows");
        }
    }
    // The user may change their own profile.
    let own = format!(
        "update users set display_name = 'me' where id = '{}'",
        viewer.id
    );
    assert_eq!(exec(pool, as_viewer, &own).await.unwrap(), 1);
    assert_eq!(
        admin_count(&app, "select count(*) from memberships").await,
        2
    );
    assert_eq!(
        admin_count(&app, "select count(*) from organizations").await,
        1
    );
}

/// The source files under `dir`, recursively.
fn rust_files(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Switching to the app role and entering an org with no user are the
/// tenant wall's own moves: only `core/db.rs` (`TenantTx`, `UserTx`,
/// `system_tx` and its scopes) makes them; everything else goes through it.
#[test]
fn only_the_db_module_switches_roles_or_enters_an_org_as_nobody() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    rust_files(&root.join("src"), &mut files);
    assert!(files.len() > 50, "the sources were not found");
    let mut found = Vec::new();
    for file in files {
        if file.ends_with("src/core/db.rs") {
            continue;
        }
        let text = std::fs::read_to_string(&file).unwrap();
        for (n, line) in text.lines().enumerate() {
            let compact: String = line.chars().filter(|c| !c.is_whitespace()).collect();
            if compact.contains("set_config('role'")
                || (compact.contains("TenantTx::enter(") && compact.contains("nil()"))
            {
                found.push(format!("{}:{}: {}", file.display(), n + 1, line.trim()));
            }
        }
    }
    assert!(
        found.is_empty(),
        "outside src/core/db.rs:\n{}",
        found.join("\n")
    );
}

/// Every audit row is written by `core/audit.rs` (one SQL, one actor rule).
#[test]
fn the_audit_log_has_one_writer() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    rust_files(&root.join("src"), &mut files);
    let writers: Vec<String> = files
        .iter()
        .filter(|f| {
            let text = std::fs::read_to_string(f).unwrap().to_lowercase();
            text.contains("insert into audit_log")
        })
        .map(|f| f.strip_prefix(root).unwrap().display().to_string())
        .collect();
    assert_eq!(writers, ["src/core/audit.rs"]);
}
