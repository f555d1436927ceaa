//! The job kinds Tenantry runs.

pub mod billing;
pub mod cleanup;
pub mod credits;
pub mod email;
pub mod import;
pub mod probe;
pub mod report;

use super::worker::Registry;

/// Registers every job kind.
pub fn register(r: Registry) -> Registry {
    r.register::<email::SendEmail>()
        .register::<probe::Probe>()
        .register::<probe::Noop>()
        .register::<cleanup::Cleanup>()
        .register::<credits::CreditsSweep>()
        .register::<report::BuildReport>()
        .register::<import::ImportMembers>()
        .register::<billing::Rollover>()
}
