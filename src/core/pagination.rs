//! Keyset pagination: `?limit=&cursor=` in, `{data, next_cursor}` out. A
//! cursor is an opaque, URL-safe encoding of the last row's sort key.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

pub const DEFAULT_LIMIT: i64 = 50;
pub const MAX_LIMIT: i64 = 200;

#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// Page size, 1 to 200 (default 50).
    pub limit: Option<i64>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// A page request that cannot be served: a limit out of range, or a cursor
/// this API did not issue (400 at the HTTP edge).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PageError {
    #[error("limit must be between 1 and {MAX_LIMIT}")]
    Limit,
    #[error("cursor is not one this API issued")]
    Cursor,
}

impl PageError {
    /// The stable code: `invalid_limit` or `invalid_cursor`.
    pub fn code(&self) -> &'static str {
        match self {
            PageError::Limit => "invalid_limit",
            PageError::Cursor => "invalid_cursor",
        }
    }
}

impl PageQuery {
    /// The page size, validated.
    pub fn limit(&self) -> Result<i64, PageError> {
        match self.limit {
            None => Ok(DEFAULT_LIMIT),
            Some(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
            Some(_) => Err(PageError::Limit),
        }
    }

    /// The decoded sort key to continue after, if any.
    pub fn after<K: DeserializeOwned>(&self) -> Result<Option<K>, PageError> {
        let Some(c) = &self.cursor else {
            return Ok(None);
        };
        let bad = || PageError::Cursor;
        if c.len() > 512 {
            return Err(bad());
        }
        let bytes = URL_SAFE_NO_PAD.decode(c).map_err(|_| bad())?;
        let value: serde_json::Value = serde_json::from_slice(&bytes).map_err(|_| bad())?;
        if !storable(&value) {
            return Err(bad());
        }
        serde_json::from_value(value).map(Some).map_err(|_| bad())
    }
}

/// Whether Postgres can take every value of a decoded cursor as a parameter:
/// no NUL in strings, and timestamps within years 1..=9999.
fn storable(v: &serde_json::Value) -> bool {
    match v {
        serde_json::Value::String(s) => {
            !s.contains('\0')
                && s.len() <= 256
                && s.parse::<chrono::DateTime<chrono::Utc>>()
                    .map(|t| (1..=9999).contains(&chrono::Datelike::year(&t)))
                    .unwrap_or(true)
        }
        serde_json::Value::Array(items) => items.iter().all(storable),
        serde_json::Value::Object(map) => map.values().all(storable),
        _ => true,
    }
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Page<T> {
    pub data: Vec<T>,
    /// Pass as `cursor` to get the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

impl<T> Page<T> {
    /// Builds a page from up to `limit + 1` rows: the extra row only says that
    /// another page exists.
    pub fn from_rows<K: Serialize>(mut rows: Vec<T>, limit: i64, key: impl Fn(&T) -> K) -> Self {
        let more = rows.len() as i64 > limit;
        rows.truncate(limit as usize);
        let next_cursor = if more {
            rows.last().map(|last| {
                URL_SAFE_NO_PAD
                    .encode(serde_json::to_vec(&key(last)).expect("cursor key serializes"))
            })
        } else {
            None
        };
        Page {
            data: rows,
            next_cursor,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_round_trip_and_rejection() {
        let page = Page::from_rows(vec![1, 2, 3], 2, |v| (*v, "k"));
        assert_eq!(page.data, vec![1, 2]);
        let q = PageQuery {
            limit: Some(2),
            cursor: page.next_cursor,
        };
        let after: Option<(i32, String)> = q.after().unwrap();
        assert_eq!(after, Some((2, "k".to_owned())));

        let last = Page::from_rows(vec![1, 2], 2, |v| *v);
        assert!(last.next_cursor.is_none());

        let forged = |v: serde_json::Value| URL_SAFE_NO_PAD.encode(v.to_string());
        for bad in [
            "!!!".to_owned(),
            "e30".to_owned(),
            "bm90IGpzb24".to_owned(),
            forged(serde_json::json!("admin\u{0}")),
            forged(serde_json::json!(["-10000-01-01T00:00:00Z", "k"])),
        ] {
            let q = PageQuery {
                limit: None,
                cursor: Some(bad.clone()),
            };
            assert!(q.after::<(i32, String)>().is_err(), "{bad}");
        }
        assert!(
            PageQuery {
                limit: Some(0),
                cursor: None
            }
            .limit()
            .is_err()
        );
        assert!(
            PageQuery {
                limit: Some(201),
                cursor: None
            }
            .limit()
            .is_err()
        );
    }
}
