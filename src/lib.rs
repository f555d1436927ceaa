//! Tenantry: a multi-tenant SaaS backend. Organizations with members and
//! roles, Supabase-compatible authentication, and tenant isolation enforced by
//! Postgres Row Level Security behind a single door, [`core::db::TenantTx`].

pub mod apikeys;
pub mod app;
pub mod auth;
pub mod billing;
pub mod config;
pub mod core;
pub mod identity;
pub mod imports;
pub mod jobs;
pub mod mail;
pub mod organizations;
pub mod reports;
pub mod users;
