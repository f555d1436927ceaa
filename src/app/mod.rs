//! The composition root: the only place that knows every module. It builds
//! the process's state ([`state`]), assembles the routes, middleware and
//! OpenAPI document ([`http`]), registers the job handlers with their
//! dependencies and names the cron schedules ([`background`]), and runs the
//! server and worker processes ([`serve`]).

pub mod background;
pub mod http;
pub mod serve;
pub mod state;

pub use http::{api, router};
pub use serve::{serve, server_limits, work};
pub use state::AppState;
