//! The shared means of reading settings: the profile that picks defaults,
//! the one-line error a bad setting stops the process with, and parsers for
//! numbers, durations and booleans.

use std::time::Duration;

use super::settings;

/// Which defaults apply: `dev` fills in everything for a local machine,
/// production roles (`serve`, `migrate`) require the essentials.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Profile {
    Dev,
    Production,
}

/// A setting that could not be used; its `Display` is the one line printed at start.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration error: {name} is required{hint}")]
    Missing {
        name: &'static str,
        hint: &'static str,
    },
    #[error("configuration error: {name} is malformed: {reason}")]
    Malformed { name: &'static str, reason: String },
}

/// `get` with blank values read as unset. Every name asked for must be in
/// the settings table (checked in debug builds), so `--help` lists it.
pub(super) fn non_blank(get: impl Fn(&str) -> Option<String>) -> impl Fn(&str) -> Option<String> {
    move |k: &str| {
        debug_assert!(
            settings::find(k).is_some(),
            "{k} is read but not in config::settings::SETTINGS"
        );
        get(k).filter(|v| !v.trim().is_empty())
    }
}

pub(super) fn malformed(name: &'static str, reason: impl ToString) -> ConfigError {
    ConfigError::Malformed {
        name,
        reason: reason.to_string(),
    }
}

pub(super) fn parse_or<T: std::str::FromStr>(
    get: &impl Fn(&str) -> Option<String>,
    name: &'static str,
    default: T,
) -> Result<T, ConfigError>
where
    T::Err: std::fmt::Display,
{
    match get(name) {
        Some(v) => v.trim().parse().map_err(|e| malformed(name, e)),
        None => Ok(default),
    }
}

/// A number of seconds within `range`.
pub(super) fn secs_in(
    get: &impl Fn(&str) -> Option<String>,
    name: &'static str,
    default: u64,
    range: std::ops::RangeInclusive<u64>,
) -> Result<Duration, ConfigError> {
    let secs = parse_or::<u64>(get, name, default)?;
    if !range.contains(&secs) {
        return Err(malformed(
            name,
            format!("must be between {} and {}", range.start(), range.end()),
        ));
    }
    Ok(Duration::from_secs(secs))
}

pub(super) fn parse_bool(
    get: &impl Fn(&str) -> Option<String>,
    name: &'static str,
    default: bool,
) -> Result<bool, ConfigError> {
    match get(name).as_deref().map(str::trim) {
        None => Ok(default),
        Some("true" | "1") => Ok(true),
        Some("false" | "0") => Ok(false),
        Some(_) => Err(malformed(name, "must be true or false")),
    }
}
