//! Database access: pools, migrations, the app role, and the tenant wall.
//!
//! Tenant data is reachable only through [`TenantTx`] (one org, one user) or
//! [`UserTx`] (one user, no org). Both are transactions that switch to the
//! restricted `tenantry_app` role and set the tenant context with
//! `set_config(..., true)`, so the context dies with the transaction and can
//! never leak into the next request that gets the pooled connection.

use std::time::Duration;

use anyhow::Context as _;
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgConnection, PgPool, Postgres, Transaction};
use uuid::Uuid;

pub static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// The NOLOGIN role that holds the application's grants; created by the migrations.
pub const APP_GROUP_ROLE: &str = "tenantry_app";

/// The app's pool. `acquire_timeout` bounds how long a request waits for a
/// connection (the pool connects, retrying, within it): past it, and for a
/// connection that breaks, the request answers 503 `unavailable` fast.
pub async fn connect_pool(
    url: &str,
    max_connections: u32,
    acquire_timeout: Duration,
) -> anyhow::Result<PgPool> {
    let opts: PgConnectOptions = url.parse().context("DATABASE_URL is malformed")?;
    // A request that waits too long on a lock or a query fails (503) instead of
    // holding a connection; a transaction abandoned mid-way cannot hold locks.
    let opts = opts
        .log_statements(tracing::log::LevelFilter::Trace)
        .options([
            ("lock_timeout", "5s"),
            ("statement_timeout", "20s"),
            ("idle_in_transaction_session_timeout", "30s"),
        ]);
    PgPoolOptions::new()
        .max_connections(max_connections)
        .min_connections(1)
        .acquire_timeout(acquire_timeout)
        // A broken connection fails its query and is discarded; pinging every
        // connection on checkout would add a round trip to every request.
        .test_before_acquire(false)
        .connect_with(opts)
        .await
        .context("cannot connect to Postgres (DATABASE_URL)")
}

/// Creates the database named by `url` when it does not exist (development only).
pub async fn create_database_if_missing(url: &str) -> anyhow::Result<()> {
    let opts: PgConnectOptions = url.parse().context("MIGRATION_DATABASE_URL is malformed")?;
    let name = opts.get_database().unwrap_or("postgres").to_owned();
    let mut conn = opts
        .clone()
        .database("postgres")
        .connect()
        .await
        .context("cannot connect to Postgres (MIGRATION_DATABASE_URL)")?;
    let exists: bool =
        sqlx::query_scalar("select exists (select 1 from pg_database where datname = $1)")
            .bind(&name)
            .fetch_one(&mut conn)
            .await?;
    if !exists {
        let sql = format!("create database {}", quote_ident(&name));
        match sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(&mut conn)
            .await
        {
            Ok(_) => tracing::info!(database = %name, "created database"),
            // Another process created it first.
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P04") => {}
            Err(e) => return Err(e).context("cannot create database"),
        }
    }
    conn.close().await?;
    Ok(())
}

/// Applies pending migrations with the owner role, then makes sure the API's
/// login role (user and password of `database_url`) exists with the grants it
/// needs and no more.
pub async fn migrate_up(migration_url: &str, database_url: &str) -> anyhow::Result<()> {
    // Statements are not logged on this connection: role DDL carries a password.
    let opts: PgConnectOptions = migration_url
        .parse()
        .context("MIGRATION_DATABASE_URL is malformed")?;
    let mut conn = opts
        .log_statements(tracing::log::LevelFilter::Off)
        .log_slow_statements(tracing::log::LevelFilter::Off, Duration::from_secs(3600))
        .connect()
        .await
        .context("cannot connect to Postgres (MIGRATION_DATABASE_URL)")?;
    MIGRATOR.run(&mut conn).await.context("migration failed")?;
    ensure_app_role(&mut conn, database_url).await?;
    conn.close().await?;
    Ok(())
}

/// Reverts the most recent applied migration.
pub async fn migrate_down(migration_url: &str) -> anyhow::Result<Option<i64>> {
    let mut conn = PgConnection::connect(migration_url).await?;
    let applied = applied_versions(&mut conn).await?;
    let Some(&last) = applied.last() else {
        return Ok(None);
    };
    let target = applied.iter().rev().nth(1).copied().unwrap_or(0);
    MIGRATOR
        .undo(&mut conn, target)
        .await
        .context("revert failed")?;
    conn.close().await?;
    Ok(Some(last))
}

/// `(version, description, applied)` for every known migration.
pub async fn migrate_status(migration_url: &str) -> anyhow::Result<Vec<(i64, String, bool)>> {
    let mut conn = PgConnection::connect(migration_url).await?;
    let applied = applied_versions(&mut conn).await?;
    conn.close().await?;
    Ok(MIGRATOR
        .iter()
        .filter(|m| m.migration_type.is_up_migration())
        .map(|m| {
            (
                m.version,
                m.description.to_string(),
                applied.contains(&m.version),
            )
        })
        .collect())
}

async fn applied_versions(conn: &mut PgConnection) -> anyhow::Result<Vec<i64>> {
    let exists: bool = sqlx::query_scalar("select to_regclass('_sqlx_migrations') is not null")
        .fetch_one(&mut *conn)
        .await?;
    if !exists {
        return Ok(Vec::new());
    }
    Ok(
        sqlx::query_scalar("select version from _sqlx_migrations where success order by version")
            .fetch_all(&mut *conn)
            .await?,
    )
}

/// Creates or updates the login role named in `database_url`: LOGIN with its
/// password, member of `tenantry_app`, never superuser or BYPASSRLS.
pub async fn ensure_app_role(conn: &mut PgConnection, database_url: &str) -> anyhow::Result<()> {
    let url = url::Url::parse(database_url).context("DATABASE_URL is malformed")?;
    let user = percent_decode(url.username());
    if user.is_empty() {
        anyhow::bail!("DATABASE_URL names no user");
    }
    let current: String = sqlx::query_scalar("select current_user::text")
        .fetch_one(&mut *conn)
        .await?;
    if user == current {
        tracing::warn!(
            role = %user,
            "DATABASE_URL uses the migration role; tenant transactions still switch to {APP_GROUP_ROLE}"
        );
        return Ok(());
    }
    let existing: Option<(bool, bool)> =
        sqlx::query_as("select rolsuper, rolbypassrls from pg_roles where rolname = $1")
            .bind(&user)
            .fetch_optional(&mut *conn)
            .await?;
    if existing.is_some_and(|(sup, bypass)| sup || bypass) {
        anyhow::bail!(
            "DATABASE_URL names the role {user:?}, which is a superuser or has BYPASSRLS; \
             the API needs a role of its own (it is created when it does not exist)"
        );
    }
    let password = url.password().map(percent_decode);
    let db: String = sqlx::query_scalar("select current_database()::text")
        .fetch_one(&mut *conn)
        .await?;
    let role = quote_ident(&user);
    let password_sql = match &password {
        Some(p) => format!("password {}", quote_literal(p)),
        // No password in the URL: leave whatever the operator set.
        None => String::new(),
    };
    let statements = [
        format!(
            "do $$ begin create role {role} login; \
             exception when duplicate_object or unique_violation then null; end $$"
        ),
        format!(
            "alter role {role} login nosuperuser nobypassrls nocreatedb nocreaterole inherit {password_sql}"
        ),
        format!("grant {APP_GROUP_ROLE} to {role}"),
        format!("grant connect on database {} to {role}", quote_ident(&db)),
    ];
    for sql in statements {
        // Roles are cluster-wide: concurrent migrations of different databases
        // (parallel tests) may touch the same role at once. Retry those races.
        let mut attempt = 0;
        loop {
            match sqlx::raw_sql(sqlx::AssertSqlSafe(sql.clone()))
                .execute(&mut *conn)
                .await
            {
                Ok(_) => break,
                Err(sqlx::Error::Database(e))
                    if attempt < 20
                        && matches!(
                            e.code().as_deref(),
                            Some("XX000" | "23505" | "40001" | "40P01")
                        ) =>
                {
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(20 * attempt)).await;
                }
                Err(e) => {
                    return Err(anyhow::Error::new(e))
                        .with_context(|| format!("cannot set up the app role {user:?}"));
                }
            }
        }
    }
    Ok(())
}

/// Decodes a URL's user or password as sqlx does (`+` stays `+`).
fn percent_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// An escape-string literal (`E'...'`): correct whatever
/// `standard_conforming_strings` says.
fn quote_literal(s: &str) -> String {
    format!("E'{}'", s.replace('\\', "\\\\").replace('\'', "''"))
}

/// The caller's role in an org and the permissions it carries, as read by
/// `app.enter_org` in the same statement that set the context.
#[derive(Debug, Clone)]
pub struct MembershipRow {
    pub role: String,
    pub permissions: Vec<String>,
}

/// A transaction inside one org's tenant context, as one user.
///
/// Built only by the authorisation layer (`OrgContext`, org creation, invitation
/// acceptance); there is no other way to run a query that sees tenant rows.
pub struct TenantTx {
    tx: Transaction<'static, Postgres>,
    org_id: Uuid,
    /// `Uuid::nil()` when an API key acts (there is no user).
    user_id: Uuid,
    api_key_id: Option<Uuid>,
}

/// A live API key as read by `app.enter_api_key`: its id, role and permissions.
#[derive(Debug, Clone)]
pub struct ApiKeyRow {
    pub key_id: Uuid,
    pub membership: MembershipRow,
    /// `last_used_at` is due (see [`touch_api_key`]).
    pub touch: bool,
}

/// Records that an API key was used (at most once a minute), in a short
/// transaction of its own: the request's transaction must not hold the key
/// row while it waits for the org row lock (a revocation holds that lock and
/// then writes the key row).
pub(crate) async fn touch_api_key(
    pool: &PgPool,
    org_id: Uuid,
    key_id: Uuid,
) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query("select app.touch_api_key($1, $2)")
        .bind(org_id)
        .bind(key_id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await
}

impl TenantTx {
    /// Begins a transaction, switches to the app role, sets the org and user
    /// context and reads the user's membership, in one statement.
    pub(crate) async fn enter(
        pool: &PgPool,
        org_id: Uuid,
        user_id: Uuid,
    ) -> Result<(TenantTx, Option<MembershipRow>), sqlx::Error> {
        let mut tx = pool.begin().await?;
        let row: Option<(String, Vec<String>)> =
            sqlx::query_as("select role, permissions from app.enter_org($1, $2)")
                .bind(org_id)
                .bind(user_id)
                .fetch_optional(&mut *tx)
                .await?;
        let membership = row.map(|(role, permissions)| MembershipRow { role, permissions });
        Ok((
            TenantTx {
                tx,
                org_id,
                user_id,
                api_key_id: None,
            },
            membership,
        ))
    }

    /// Begins a transaction in `org_id` as the system (scheduled work, the
    /// worker, payment webhooks): the org's context with no user and no
    /// membership. `scope` adds its flag, if it has one, in the same
    /// transaction.
    pub(crate) async fn enter_as_system(
        pool: &PgPool,
        org_id: Uuid,
        scope: SystemScope,
    ) -> Result<TenantTx, sqlx::Error> {
        let (mut tx, _) = Self::enter(pool, org_id, Uuid::nil()).await?;
        if let Some(sql) = scope.flag_sql() {
            sqlx::query(sql).execute(tx.conn()).await?;
        }
        Ok(tx)
    }

    /// Begins a transaction in `org_id` as the API key whose SHA-256 is
    /// `secret_hash`: switches to the app role, sets the org context with no
    /// user, and reads the key (live only: not revoked, not expired, its role
    /// still there) in one statement. `None`: no such live key in this org.
    pub(crate) async fn enter_api_key(
        pool: &PgPool,
        org_id: Uuid,
        secret_hash: &[u8],
    ) -> Result<(TenantTx, Option<ApiKeyRow>), sqlx::Error> {
        let mut tx = pool.begin().await?;
        let row: Option<(Uuid, String, Vec<String>, bool)> = sqlx::query_as(
            "select key_id, role, permissions, touch from app.enter_api_key($1, $2)",
        )
        .bind(org_id)
        .bind(secret_hash)
        .fetch_optional(&mut *tx)
        .await?;
        let key = row.map(|(key_id, role, permissions, touch)| ApiKeyRow {
            key_id,
            membership: MembershipRow { role, permissions },
            touch,
        });
        Ok((
            TenantTx {
                tx,
                org_id,
                user_id: Uuid::nil(),
                api_key_id: key.as_ref().map(|k| k.key_id),
            },
            key,
        ))
    }

    /// Moves a user-only transaction into an org it has just proved a right to
    /// (creating the org, or holding an invitation to it).
    pub(crate) async fn from_user_tx(
        user_tx: UserTx,
        org_id: Uuid,
    ) -> Result<TenantTx, sqlx::Error> {
        let UserTx { mut tx, user_id } = user_tx;
        sqlx::query("select 1 from app.enter_org($1, $2)")
            .bind(org_id)
            .bind(user_id)
            .execute(&mut *tx)
            .await?;
        Ok(TenantTx {
            tx,
            org_id,
            user_id,
            api_key_id: None,
        })
    }

    /// Takes the org's row lock, then reads the user's membership (or the API
    /// key's role) again: a statement after the lock sees what concurrent
    /// changes committed while this transaction waited. `None`: the user (or
    /// the org) is gone, or the key was revoked, expired or lost its role.
    pub(crate) async fn lock_org(&mut self) -> Result<Option<MembershipRow>, sqlx::Error> {
        let locked: Option<(Uuid,)> =
            sqlx::query_as("select id from organizations where id = $1 for update")
                .bind(self.org_id)
                .fetch_optional(&mut *self.tx)
                .await?;
        if locked.is_none() {
            return Ok(None);
        }
        if let Some(key_id) = self.api_key_id {
            let row: Option<(String, Vec<String>)> = sqlx::query_as(
                "select k.role, r.permissions from api_keys k
                 join roles r on r.org_id = k.org_id and r.name = k.role
                 where k.org_id = $1 and k.id = $2 and k.revoked_at is null
                   and (k.expires_at is null or k.expires_at > now())",
            )
            .bind(self.org_id)
            .bind(key_id)
            .fetch_optional(&mut *self.tx)
            .await?;
            return Ok(row.map(|(role, permissions)| MembershipRow { role, permissions }));
        }
        let row: Option<(String, Vec<String>)> = sqlx::query_as(
            "select m.role, r.permissions from memberships m
             join roles r on r.org_id = m.org_id and r.name = m.role
             where m.org_id = $1 and m.user_id = $2",
        )
        .bind(self.org_id)
        .bind(self.user_id)
        .fetch_optional(&mut *self.tx)
        .await?;
        Ok(row.map(|(role, permissions)| MembershipRow { role, permissions }))
    }

    pub fn org_id(&self) -> Uuid {
        self.org_id
    }

    /// The acting user; `Uuid::nil()` when an API key acts (see [`Self::api_key_id`]).
    pub fn user_id(&self) -> Uuid {
        self.user_id
    }

    /// The API key acting in this transaction, if one does (there is then no user).
    pub fn api_key_id(&self) -> Option<Uuid> {
        self.api_key_id
    }

    pub fn conn(&mut self) -> &mut PgConnection {
        &mut self.tx
    }

    pub async fn commit(self) -> Result<(), sqlx::Error> {
        self.tx.commit().await
    }
}

/// What a transaction of the system's own (no user's request behind it)
/// may see. Each scope is the app role (RLS in force) with no org context,
/// plus at most one flag that the policies of its tables read: the only
/// way in for work outside an org (see [`system_tx`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SystemScope {
    /// The job engine's own tables (outbox writes, cron ticks, probes,
    /// clean-up) and the due lists of scheduled work (credit grants).
    Jobs,
    /// The outbox relay: reads and deletes outbox rows (`app.job_relay`).
    JobRelay,
    /// The auth server's tables, `app.auth_*` (`app.auth`).
    Auth,
    /// The signing-key ring (`app.auth_keys`).
    SigningKeys,
    /// The payment provider's webhooks: events and the customer-to-org map
    /// (`app.webhooks`).
    Webhooks,
    /// The plan catalog as a platform operator changes it (`app.plan_admin`).
    PlanAdmin,
    /// A platform operator's change inside one org (credit grants, manual
    /// invoices): no flag.
    Operator,
    /// The subscription bookkeeping: the rollover's due list across orgs
    /// (the org context explicitly empty), and inside one org its rollover
    /// and plan-change leases.
    Billing,
}

impl SystemScope {
    /// The one statement that enters the scope.
    fn enter_sql(self) -> &'static str {
        match self {
            SystemScope::Jobs => "select set_config('role', 'tenantry_app', true)",
            SystemScope::JobRelay => {
                "select set_config('role', 'tenantry_app', true),
                        set_config('app.job_relay', 'on', true)"
            }
            SystemScope::Auth => {
                "select set_config('role', 'tenantry_app', true), set_config('app.auth', 'on', true)"
            }
            SystemScope::SigningKeys => {
                "select set_config('role', 'tenantry_app', true),
                        set_config('app.auth_keys', 'on', true)"
            }
            SystemScope::Webhooks => {
                "select set_config('role', 'tenantry_app', true),
                        set_config('app.webhooks', 'on', true)"
            }
            SystemScope::PlanAdmin => {
                "select set_config('role', 'tenantry_app', true), set_config('app.org_id', '', true),
                        set_config('app.plan_admin', 'on', true)"
            }
            SystemScope::Operator | SystemScope::Billing => {
                "select set_config('role', 'tenantry_app', true), set_config('app.org_id', '', true)"
            }
        }
    }

    /// The flag this scope turns on inside an org's transaction (webhooks
    /// that update one org's billing mirror), if any.
    fn flag_sql(self) -> Option<&'static str> {
        match self {
            SystemScope::Webhooks => Some("select set_config('app.webhooks', 'on', true)"),
            _ => None,
        }
    }
}

/// A transaction of the system's own in `scope`: the app role, so RLS
/// holds, and nothing in view beyond what the scope names. Every system
/// transaction outside an org begins here; inside one org it is
/// [`TenantTx::enter_as_system`].
pub async fn system_tx(
    pool: &PgPool,
    scope: SystemScope,
) -> Result<Transaction<'static, Postgres>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query(scope.enter_sql()).execute(&mut *tx).await?;
    Ok(tx)
}

/// A transaction of the auth server: [`SystemScope::Auth`].
pub async fn auth_tx(pool: &PgPool) -> Result<Transaction<'static, Postgres>, sqlx::Error> {
    system_tx(pool, SystemScope::Auth).await
}

/// A transaction as one user with no org context: their profile, and their
/// own memberships across orgs (RLS shows nothing else).
pub struct UserTx {
    tx: Transaction<'static, Postgres>,
    user_id: Uuid,
}

impl UserTx {
    pub(crate) async fn enter(
        pool: &PgPool,
        user_id: Uuid,
        invite_token_hash: Option<&[u8]>,
    ) -> Result<UserTx, sqlx::Error> {
        let mut tx = pool.begin().await?;
        sqlx::query("select app.enter_user($1, $2)")
            .bind(user_id)
            .bind(invite_token_hash.map(hex::encode))
            .execute(&mut *tx)
            .await?;
        Ok(UserTx { tx, user_id })
    }

    pub fn user_id(&self) -> Uuid {
        self.user_id
    }

    pub fn conn(&mut self) -> &mut PgConnection {
        &mut self.tx
    }

    pub async fn commit(self) -> Result<(), sqlx::Error> {
        self.tx.commit().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_parts_decode_as_sqlx_decodes_them() {
        assert_eq!(percent_decode("a+b%2Fc%40d"), "a+b/c@d");
    }

    #[test]
    fn identifiers_and_literals_are_quoted() {
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(quote_literal("it's\\"), "E'it''s\\\\'");
    }
}
