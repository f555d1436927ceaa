//! The HTTP server's settings that take more than a number: the listen
//! address, the log format and the CORS origins.

use std::net::SocketAddr;

use url::Url;

use super::parse::{ConfigError, malformed};
pub use crate::core::telemetry::LogFormat;

/// `BIND_ADDR`, else `PORT` (default 8080) on loopback under `dev` and on
/// every address otherwise.
pub(super) fn bind_addr(
    dev: bool,
    get: &impl Fn(&str) -> Option<String>,
) -> Result<SocketAddr, ConfigError> {
    Ok(match (get("BIND_ADDR"), get("PORT")) {
        (Some(addr), _) => addr
            .parse::<SocketAddr>()
            .map_err(|e| malformed("BIND_ADDR", e))?,
        (None, port) => {
            let port = match port {
                Some(p) => p.parse::<u16>().map_err(|e| malformed("PORT", e))?,
                None => 8080,
            };
            let host = if dev { [127, 0, 0, 1] } else { [0, 0, 0, 0] };
            SocketAddr::from((host, port))
        }
    })
}

pub(super) fn log_format(
    dev: bool,
    get: &impl Fn(&str) -> Option<String>,
) -> Result<LogFormat, ConfigError> {
    Ok(match get("LOG_FORMAT").as_deref() {
        None if dev => LogFormat::Pretty,
        None => LogFormat::Json,
        Some("json") => LogFormat::Json,
        Some("pretty") => LogFormat::Pretty,
        Some(other) => {
            return Err(malformed(
                "LOG_FORMAT",
                format!("{other:?} is not json or pretty"),
            ));
        }
    })
}

pub(super) fn cors_allowed_origins(
    dev: bool,
    get: &impl Fn(&str) -> Option<String>,
) -> Result<Vec<String>, ConfigError> {
    Ok(match get("CORS_ALLOWED_ORIGINS") {
        Some(v) => {
            let mut origins = Vec::new();
            for o in v.split(',').map(str::trim) {
                if o == "*" {
                    origins.push(o.to_owned());
                    continue;
                }
                // Browsers send scheme://host[:port]; normalise what was configured.
                match Url::parse(o).map(|u| u.origin()) {
                    Ok(origin) if origin.is_tuple() => origins.push(origin.ascii_serialization()),
                    _ => {
                        return Err(malformed(
                            "CORS_ALLOWED_ORIGINS",
                            format!("{o:?} is not an origin"),
                        ));
                    }
                }
            }
            origins
        }
        None if dev => vec!["*".to_owned()],
        None => Vec::new(),
    })
}
