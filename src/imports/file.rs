//! The import file's format: UTF-8 CSV, the header `email,role`, then up
//! to [`MAX_ROWS`] data lines. Checked when the file is uploaded, and read
//! again by the job.

use axum::http::StatusCode;

use crate::core::error::ApiError;

/// Most data lines one file may hold.
pub const MAX_ROWS: usize = 10_000;

/// The header every file starts with (case and surrounding spaces aside).
pub const HEADER: [&str; 2] = ["email", "role"];

/// One data line of a file: its line number (the header is line 1) and its
/// fields, trimmed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CsvLine {
    pub line: i32,
    pub fields: Vec<String>,
}

fn invalid(code: &'static str, detail: impl Into<String>) -> ApiError {
    ApiError::Status {
        status: StatusCode::UNPROCESSABLE_ENTITY,
        code,
        detail: detail.into(),
    }
}

/// Parses an import file: UTF-8 (a leading BOM is dropped), CSV, the header
/// `email,role`, then 1 to [`MAX_ROWS`] data lines. Blank lines are ignored;
/// a line with the wrong number of fields is kept (it fails on its own).
pub fn parse(bytes: &[u8]) -> Result<Vec<CsvLine>, ApiError> {
    let text = std::str::from_utf8(bytes)
        .map_err(|e| invalid("invalid_csv", format!("the file is not UTF-8 text: {e}")))?;
    if text.contains('\0') {
        return Err(invalid("invalid_csv", "the file contains a NUL character"));
    }
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .trim(csv::Trim::All)
        .from_reader(text.as_bytes());
    let mut records = reader.records();
    let header = loop {
        match records.next() {
            None => {
                return Err(invalid(
                    "invalid_header",
                    "the file is empty; its first line must be the header email,role",
                ));
            }
            Some(Err(e)) => return Err(invalid("invalid_csv", format!("not CSV: {e}"))),
            Some(Ok(r)) if r.iter().all(str::is_empty) => continue,
            Some(Ok(r)) => break r,
        }
    };
    let names: Vec<String> = header.iter().map(|h| h.trim().to_lowercase()).collect();
    if names != HEADER {
        return Err(invalid(
            "invalid_header",
            format!(
                "the first line must be the header email,role (found {:?})",
                header.iter().collect::<Vec<_>>().join(",")
            ),
        ));
    }
    let mut lines = Vec::new();
    for record in records {
        let record = record.map_err(|e| invalid("invalid_csv", format!("not CSV: {e}")))?;
        if record.iter().all(str::is_empty) {
            continue;
        }
        if lines.len() == MAX_ROWS {
            return Err(invalid(
                "too_many_rows",
                format!("a file may hold at most {MAX_ROWS} lines besides the header"),
            ));
        }
        let line = line_of(text, &record);
        lines.push(CsvLine {
            line,
            fields: record.iter().map(str::to_owned).collect(),
        });
    }
    if lines.is_empty() {
        return Err(invalid(
            "no_rows",
            "the file has a header but no lines to import",
        ));
    }
    Ok(lines)
}

/// The line a record starts on (the header is line 1). The reader reports a
/// record after blank lines at the first of them: those are counted here.
fn line_of(text: &str, record: &csv::StringRecord) -> i32 {
    let Some(p) = record.position() else {
        return 0;
    };
    let mut line = p.line();
    for b in text.as_bytes().iter().skip(p.byte() as usize) {
        match b {
            b'\n' => line += 1,
            b'\r' => {}
            _ => break,
        }
    }
    i32::try_from(line).unwrap_or(i32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(e: ApiError) -> &'static str {
        match e {
            ApiError::Status { code, .. } => code,
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn files_are_checked_up_front() {
        let lines = parse(
            b"\xef\xbb\xbf Email , ROLE \r\na@x.io,member\n\n\r\nb@x.io , admin ,x\n\"c\n@x.io\",viewer\n  \nd@x.io,member",
        )
        .unwrap();
        let line = |line: i32, fields: &[&str]| CsvLine {
            line,
            fields: fields.iter().map(|f| f.to_string()).collect(),
        };
        assert_eq!(
            lines,
            vec![
                line(2, &["a@x.io", "member"]),
                line(5, &["b@x.io", "admin", "x"]),
                line(6, &["c\n@x.io", "viewer"]),
                line(9, &["d@x.io", "member"]),
            ]
        );
        assert_eq!(code(parse(b"").unwrap_err()), "invalid_header");
        assert_eq!(
            code(parse(b"mail,role\na@x.io,member").unwrap_err()),
            "invalid_header"
        );
        assert_eq!(
            code(parse(b"email,role,extra\n").unwrap_err()),
            "invalid_header"
        );
        assert_eq!(code(parse(b"email,role\n").unwrap_err()), "no_rows");
        assert_eq!(
            code(parse(b"email,role\n\xff,member").unwrap_err()),
            "invalid_csv"
        );
        assert_eq!(
            code(parse(b"email,role\na\0@x.io,member").unwrap_err()),
            "invalid_csv"
        );
        let mut big = String::from("email,role\n");
        for i in 0..=MAX_ROWS {
            big.push_str(&format!("u{i}@x.io,member\n"));
        }
        assert_eq!(code(parse(big.as_bytes()).unwrap_err()), "too_many_rows");
    }
}
