//! The `tenantry` binary: one program, several roles.

use clap::{Parser, Subcommand};
use secrecy::ExposeSecret;
use tenantry::config::{Config, DbConfig, Profile};
use tenantry::core::{db, telemetry};

#[derive(Parser)]
#[command(
    name = "tenantry",
    version,
    about = "Multi-tenant SaaS backend",
    after_help = "Run with --help for the environment variables.",
    after_long_help = tenantry::config::settings::help()
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Development: create the database if missing, migrate, then serve (the default).
    Dev,
    /// Serve the HTTP API (expects a migrated database).
    Serve,
    /// Run background jobs: the outbox relay, the worker and the scheduler.
    Worker,
    /// Operator tasks.
    Admin {
        #[command(subcommand)]
        action: AdminAction,
    },
    /// Apply, revert or list migrations (with MIGRATION_DATABASE_URL).
    Migrate {
        #[command(subcommand)]
        action: Option<MigrateAction>,
    },
}

#[derive(Subcommand)]
enum AdminAction {
    /// Background jobs: stats, dead letters, probes.
    Jobs {
        #[command(subcommand)]
        action: JobsAction,
    },
    /// Access-token signing keys and API keys.
    Keys {
        #[command(subcommand)]
        action: KeysAction,
    },
    /// The credit ledger.
    Credits {
        #[command(subcommand)]
        action: CreditsAction,
    },
    /// The plan catalog: list, show, create or replace, deactivate.
    Plans {
        #[command(subcommand)]
        action: PlansAction,
    },
}

#[derive(Subcommand)]
enum CreditsAction {
    /// Checks every org's stored balances, grant remainders and holds against
    /// the ledger's sums (with MIGRATION_DATABASE_URL, which sees every org);
    /// prints each difference and fails when there is one.
    Reconcile,
}

#[derive(Subcommand)]
enum PlansAction {
    /// Every plan, active or not (JSON).
    List,
    /// One plan (JSON).
    Show { code: String },
    /// Create or replace a plan from a JSON body, as `PUT /api/v1/admin/plans/{code}`.
    Set {
        code: String,
        /// The plan: {"name", "price_minor", "currency", "interval", "trial_days",
        /// "credits_per_period", "seat_limit", "features", "credit_overage_limit",
        /// "active", "sort_order"}.
        #[arg(long)]
        json: String,
    },
    /// Hide a plan from the catalog; orgs on it keep it (plans are never deleted).
    Deactivate { code: String },
}

#[derive(Subcommand)]
enum KeysAction {
    /// Retire the active signing key (published until its tokens expire, by
    /// this process's JWT_EXPIRY_SECS), activate the next one, create a new
    /// next one, and prune expired keys. Servers follow within 30 s.
    Rotate,
    /// List the signing keys: kid, state and dates (no private material).
    List,
    /// Delete retired keys whose tokens have all expired.
    Prune,
    /// Print a Supabase-style `anon` API key (HS256, JWT_SECRET, ten years).
    Anon,
    /// Print a Supabase-style `service_role` API key (HS256, JWT_SECRET, ten
    /// years): a platform administrator. Keep it secret.
    Service,
}

#[derive(Subcommand)]
enum JobsAction {
    /// Queue depths, scheduled, running and dead jobs, and the outbox (JSON).
    Stats,
    /// List dead jobs, most recent first (JSON lines).
    Dead {
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// Show one dead job with its payload and error (JSON).
    Show { id: uuid::Uuid },
    /// Put a dead job back on its queue with fresh attempts.
    Retry { id: uuid::Uuid },
    /// Delete a dead job for good.
    Discard { id: uuid::Uuid },
    /// Enqueue probe jobs and wait until they all ran (end-to-end check).
    Probe {
        #[arg(long, default_value_t = 1)]
        count: usize,
        /// Each probe sleeps this long.
        #[arg(long, default_value_t = 0)]
        sleep_ms: u64,
        /// Each probe fails this many attempts first.
        #[arg(long, default_value_t = 0)]
        fail_attempts: u32,
        /// Give up waiting after this many seconds (0: do not wait).
        #[arg(long, default_value_t = 60)]
        wait_secs: u64,
    },
    /// Benchmark: enqueue no-op jobs in committed transactions and measure
    /// throughput and enqueue-to-start latency (needs a running worker).
    Bench {
        #[arg(long, default_value_t = 20000)]
        count: usize,
        /// Jobs per enqueuing transaction.
        #[arg(long, default_value_t = 100)]
        batch: usize,
        /// Offer jobs at this rate (jobs per second) instead of all at once.
        #[arg(long)]
        rate: Option<f64>,
    },
}

#[derive(Subcommand, Clone, Copy)]
enum MigrateAction {
    /// Apply pending migrations and set up the app role (the default).
    Up,
    /// Revert the most recent migration.
    Down,
    /// List migrations and whether each is applied.
    Status,
}

fn main() {
    return_large_allocations_to_the_os();
    let cli = Cli::parse();
    let _ = dotenvy::dotenv();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    if let Err(e) = runtime.block_on(run(cli)) {
        // One line naming what failed, with its causes.
        eprintln!("tenantry: {e:#}");
        std::process::exit(1);
    }
}

/// Password hashing allocates 19 MiB per hash on the blocking pool's
/// threads. glibc raises its mmap threshold after the first such block is
/// freed, after which these blocks come from per-thread arenas and stay
/// mapped: hundreds of MB after a burst of sign-ins. A fixed threshold keeps
/// every large block an `mmap` that is returned when freed.
fn return_large_allocations_to_the_os() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter; it is called before
    // any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1024 * 1024);
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command.unwrap_or(Command::Dev) {
        Command::Dev => {
            let config = Config::from_env(Profile::Dev)?;
            telemetry::init(config.log_format);
            if config.jwt.secret.as_ref().map(|s| s.expose_secret())
                == Some(tenantry::config::DEV_JWT_SECRET.as_bytes())
            {
                tracing::warn!("JWT_SECRET is unset: using the built-in development secret");
            }
            if config.auth.keys_secret.as_ref().is_some_and(|s| s.is_dev()) {
                tracing::warn!(
                    "AUTH_KEYS_SECRET is unset: signing keys are encrypted with the built-in development secret"
                );
            }
            db::create_database_if_missing(config.migration_database_url.expose_secret()).await?;
            db::migrate_up(
                config.migration_database_url.expose_secret(),
                config.database_url.expose_secret(),
            )
            .await?;
            let with_worker = config.jobs.in_process_worker;
            tenantry::app::serve(config, with_worker).await
        }
        Command::Serve => {
            let config = Config::from_env(Profile::Production)?;
            telemetry::init(config.log_format);
            tenantry::app::serve(config, false).await
        }
        Command::Worker => {
            let config = Config::from_env(Profile::Production)?;
            telemetry::init(config.log_format);
            tenantry::app::work(config).await
        }
        Command::Admin { action } => {
            let config = Config::from_env(Profile::Production)?;
            telemetry::init_stderr(tenantry::config::LogFormat::Pretty);
            match action {
                AdminAction::Jobs { action } => admin_jobs(config, action).await,
                AdminAction::Keys { action } => admin_keys(config, action).await,
                AdminAction::Plans { action } => admin_plans(config, action).await,
                AdminAction::Credits { action } => admin_credits(config, action).await,
            }
        }
        Command::Migrate { action } => {
            let cfg = DbConfig::from_env(Profile::Production)?;
            if std::env::var("MIGRATION_DATABASE_URL").is_err() {
                // The API's role must own nothing: migrations need their own.
                anyhow::bail!(
                    "configuration error: MIGRATION_DATABASE_URL is required (the owner role for migrations)"
                );
            }
            telemetry::init(tenantry::config::LogFormat::Pretty);
            match action.unwrap_or(MigrateAction::Up) {
                MigrateAction::Up => {
                    db::migrate_up(
                        cfg.migration_database_url.expose_secret(),
                        cfg.database_url.expose_secret(),
                    )
                    .await?;
                    println!("migrations applied; app role ready");
                }
                MigrateAction::Down => {
                    match db::migrate_down(cfg.migration_database_url.expose_secret()).await? {
                        Some(v) => println!("reverted {v}"),
                        None => println!("nothing to revert"),
                    }
                }
                MigrateAction::Status => {
                    for (version, desc, applied) in
                        db::migrate_status(cfg.migration_database_url.expose_secret()).await?
                    {
                        println!(
                            "{version} {} {desc}",
                            if applied { "applied" } else { "pending" }
                        );
                    }
                }
            }
            Ok(())
        }
    }
}

async fn admin_jobs(config: Config, action: JobsAction) -> anyhow::Result<()> {
    use tenantry::jobs::admin;
    let pool = db::connect_pool(
        config.database_url.expose_secret(),
        2,
        config.db_acquire_timeout,
    )
    .await?;
    let engine = tenantry::app::background::engine(pool, &config)?;
    let print = |v: &dyn erased::Json| println!("{}", v.json());
    match action {
        JobsAction::Stats => print(&admin::stats(&engine).await?),
        JobsAction::Dead { limit } => {
            for job in admin::dead(&engine.broker, limit.clamp(1, 10_000), None).await? {
                print(&job);
            }
        }
        JobsAction::Show { id } => match engine.broker.dead_job(id).await? {
            Some(job) => print(&job),
            None => anyhow::bail!("no dead job {id}"),
        },
        JobsAction::Retry { id } => {
            if !admin::retry(&engine, id).await? {
                anyhow::bail!("no dead job {id}");
            }
            println!("requeued {id}");
        }
        JobsAction::Discard { id } => {
            if !admin::discard(&engine, id).await? {
                anyhow::bail!("no dead job {id}");
            }
            println!("discarded {id}");
        }
        JobsAction::Probe {
            count,
            sleep_ms,
            fail_attempts,
            wait_secs,
        } => {
            let label = format!("admin:{}", uuid::Uuid::now_v7());
            let ids = admin::probe(&engine, count, &label, sleep_ms, fail_attempts).await?;
            println!("enqueued {} probe jobs ({label})", ids.len());
            if wait_secs > 0 {
                let start = std::time::Instant::now();
                let deadline = start + std::time::Duration::from_secs(wait_secs);
                loop {
                    let done = admin::probes_done(&engine.pool, &label).await?;
                    if done >= count as i64 {
                        println!("all {count} ran in {:.2} s", start.elapsed().as_secs_f64());
                        break;
                    }
                    if std::time::Instant::now() > deadline {
                        anyhow::bail!("only {done} of {count} probes ran within {wait_secs} s");
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            }
        }
        JobsAction::Bench { count, batch, rate } => {
            let rate = rate.filter(|r| *r > 0.0);
            let report = admin::bench(&engine, count, batch.max(1), rate).await?;
            print(&report);
        }
    }
    Ok(())
}

async fn admin_credits(config: Config, action: CreditsAction) -> anyhow::Result<()> {
    match action {
        CreditsAction::Reconcile => {
            let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(
                config.migration_database_url.expose_secret(),
            )
            .await?;
            let found = tenantry::billing::credits::reconcile(&mut conn).await?;
            let orgs: i64 = sqlx::query_scalar("select count(*) from credit_accounts")
                .fetch_one(&mut conn)
                .await?;
            sqlx::Connection::close(conn).await?;
            for (org, item, stored, ledger) in &found {
                println!("{org} {item}: stored {stored}, ledger {ledger}");
            }
            if !found.is_empty() {
                anyhow::bail!(
                    "{} difference(s) between balances and the ledger",
                    found.len()
                );
            }
            println!("{orgs} credit account(s) match the ledger");
            Ok(())
        }
    }
}

async fn admin_plans(config: Config, action: PlansAction) -> anyhow::Result<()> {
    use tenantry::billing::{model::PlanInput, plans_admin};
    let pool = db::connect_pool(
        config.database_url.expose_secret(),
        2,
        config.db_acquire_timeout,
    )
    .await?;
    let print = |v: &dyn erased::Json| println!("{}", v.json());
    let result = match action {
        PlansAction::List => plans_admin::list(&pool)
            .await
            .map(|p| print(&p))
            .map_err(plan_error),
        PlansAction::Show { code } => plans_admin::get(&pool, &code)
            .await
            .map(|p| print(&p))
            .map_err(plan_error),
        PlansAction::Set { code, json } => {
            match tenantry::core::extract::parse_json::<PlanInput>(json.as_bytes()) {
                Ok(input) => plans_admin::put(&pool, &code, input)
                    .await
                    .map(|(p, _)| print(&p))
                    .map_err(plan_error),
                Err(e) => Err(json_error(e)),
            }
        }
        PlansAction::Deactivate { code } => plans_admin::deactivate(&pool, &code)
            .await
            .map(|p| print(&p))
            .map_err(plan_error),
    };
    pool.close().await;
    result
}

/// A refusal of plan administration as one line for the operator, with
/// each field error.
fn plan_error(e: tenantry::billing::plans_admin::PlanError) -> anyhow::Error {
    use tenantry::billing::plans_admin::PlanError;
    match e {
        PlanError::Invalid(invalid) => anyhow::anyhow!("invalid plan: {invalid}"),
        PlanError::Db(e) => anyhow::Error::new(e),
        other => anyhow::anyhow!("{other}"),
    }
}

/// The JSON parser's refusal (not JSON, or fields of the wrong shape) as
/// one line for the operator.
fn json_error(e: tenantry::core::extract::JsonError) -> anyhow::Error {
    use tenantry::core::extract::JsonError;
    match e {
        JsonError::Syntax(_) => anyhow::anyhow!("{e}"),
        JsonError::Invalid(_) => anyhow::anyhow!("invalid plan: {e}"),
    }
}

async fn admin_keys(config: Config, action: KeysAction) -> anyhow::Result<()> {
    use tenantry::auth::keys::{self, KeyRing};
    let date = |d: Option<chrono::DateTime<chrono::Utc>>| {
        d.map(|d| d.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
            .unwrap_or_else(|| "-".to_owned())
    };
    match action {
        KeysAction::Anon => println!("{}", keys::api_key(&config, "anon")?),
        KeysAction::Service => println!("{}", keys::api_key(&config, "service_role")?),
        KeysAction::Rotate => {
            let pool = db::connect_pool(
                config.database_url.expose_secret(),
                2,
                config.db_acquire_timeout,
            )
            .await?;
            let report = KeyRing::rotate(&pool, &config).await?;
            println!("active {}", report.active);
            println!("next {}", report.next);
            if let Some(kid) = &report.retired {
                println!(
                    "retired {kid} (published until {})",
                    date(report.retired_expires_at)
                );
            }
            for kid in &report.pruned {
                println!("pruned {kid}");
            }
            println!("published {}", report.published.join(" "));
            // Relying parties may cache the JWKS for 300 s.
            match report.active_published_secs {
                Some(secs) if secs < 300 => eprintln!(
                    "warning: the new active key was published only {secs} s ago; \
                     a relying party holding an older copy of the JWKS rejects its tokens until it refetches"
                ),
                None => eprintln!(
                    "warning: there was no next key: the new active key signs without having been published"
                ),
                _ => {}
            }
            pool.close().await;
        }
        KeysAction::Prune => {
            let pool = db::connect_pool(
                config.database_url.expose_secret(),
                2,
                config.db_acquire_timeout,
            )
            .await?;
            let pruned = KeyRing::prune(&pool).await?;
            for kid in &pruned {
                println!("pruned {kid}");
            }
            if pruned.is_empty() {
                println!("nothing to prune");
            }
            pool.close().await;
        }
        KeysAction::List => {
            let pool = db::connect_pool(
                config.database_url.expose_secret(),
                2,
                config.db_acquire_timeout,
            )
            .await?;
            let list = KeyRing::list(&pool).await?;
            println!("kid\tstate\tcreated\tactivated\tretired\texpires");
            for k in list {
                println!(
                    "{}\t{}\t{}\t{}\t{}\t{}",
                    k.kid,
                    k.state,
                    date(Some(k.created_at)),
                    date(k.activated_at),
                    date(k.retired_at),
                    date(k.expires_at)
                );
            }
            pool.close().await;
        }
    }
    Ok(())
}

mod erased {
    pub trait Json {
        fn json(&self) -> String;
    }
    impl<T: serde::Serialize> Json for T {
        fn json(&self) -> String {
            serde_json::to_string_pretty(self).unwrap_or_default()
        }
    }
}
