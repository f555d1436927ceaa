//! The integration tests: one binary (one link of the crate), a module per
//! area. Each test gets its own database and, where it needs them, its own
//! server, Redis prefix, SMTP sink or Postgres cluster (`common`), so tests
//! of every module run side by side.

mod common;

mod api_keys;
mod architecture;
mod auth_flows;
mod auth_keys;
mod auth_server;
mod authz_matrix;
mod bad_input;
mod billing;
mod billing_payments;
mod billing_stripe_plans;
mod billing_subscriptions;
mod cache;
mod credits;
mod hardening;
mod jobs;
mod jobs_process;
mod jwt;
mod mail;
mod migrations;
mod organizations;
mod outages;
mod process;
mod races;
mod ratelimit;
mod reports_imports;
mod smoke;
mod supabase_js;
mod tenancy;
