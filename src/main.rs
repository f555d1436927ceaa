//! The `tenantry` binary: one program, several roles.

use clap::{Parser, Subcommand};
use tenantry::config::{Config, DbConfig, Profile};
use tenantry::core::{db, telemetry};

#[derive(Parser)]
#[command(name = "tenantry", version, about = "Multi-tenant SaaS backend")]
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
    /// Apply, revert or list migrations (with MIGRATION_DATABASE_URL).
    Migrate {
        #[command(subcommand)]
        action: Option<MigrateAction>,
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

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command.unwrap_or(Command::Dev) {
        Command::Dev => {
            let config = Config::from_env(Profile::Dev)?;
            telemetry::init(config.log_format);
            if config.jwt.secret.as_deref() == Some(tenantry::config::DEV_JWT_SECRET.as_bytes()) {
                tracing::warn!("JWT_SECRET is unset: using the built-in development secret");
            }
            db::create_database_if_missing(&config.migration_database_url).await?;
            db::migrate_up(&config.migration_database_url, &config.database_url).await?;
            tenantry::app::serve(config).await
        }
        Command::Serve => {
            let config = Config::from_env(Profile::Production)?;
            telemetry::init(config.log_format);
            tenantry::app::serve(config).await
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
                    db::migrate_up(&cfg.migration_database_url, &cfg.database_url).await?;
                    println!("migrations applied; app role ready");
                }
                MigrateAction::Down => match db::migrate_down(&cfg.migration_database_url).await? {
                    Some(v) => println!("reverted {v}"),
                    None => println!("nothing to revert"),
                },
                MigrateAction::Status => {
                    for (version, desc, applied) in
                        db::migrate_status(&cfg.migration_database_url).await?
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
