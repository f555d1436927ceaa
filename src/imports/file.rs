//! The import file's format: UTF-8 CSV, the header `email,role`, then up
//! to [`MAX_ROWS`] data lines, and [`FileError`], what is wrong with a file
//! that is not one. Checked when the file is uploaded, and read again by
//! the job.

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

/// Why a file is not an import file.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("the file is not UTF-8 text: {0}")]
    NotUtf8(std::str::Utf8Error),
    #[error("the file contains a NUL character")]
    NulCharacter,
    #[error("not CSV: {0}")]
    NotCsv(csv::Error),
    /// No header line: the file is empty, or blank.
    #[error("the file is empty; its first line must be the header email,role")]
    Empty,
    /// The first line is not the header; holds it as read.
    #[error("the first line must be the header email,role (found {0:?})")]
    WrongHeader(String),
    #[error("a file may hold at most {MAX_ROWS} lines besides the header")]
    TooManyRows,
    #[error("the file has a header but no lines to import")]
    NoRows,
}

/// Parses an import file: UTF-8 (a leading BOM is dropped), CSV, the header
/// `email,role`, then 1 to [`MAX_ROWS`] data lines. Blank lines are ignored;
/// a line with the wrong number of fields is kept (it fails on its own).
pub fn parse(bytes: &[u8]) -> Result<Vec<CsvLine>, FileError> {
    let text = std::str::from_utf8(bytes).map_err(FileError::NotUtf8)?;
    if text.contains('\0') {
        return Err(FileError::NulCharacter);
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
            None => return Err(FileError::Empty),
            Some(Err(e)) => return Err(FileError::NotCsv(e)),
            Some(Ok(r)) if r.iter().all(str::is_empty) => continue,
            Some(Ok(r)) => break r,
        }
    };
    let names: Vec<String> = header.iter().map(|h| h.trim().to_lowercase()).collect();
    if names != HEADER {
        return Err(FileError::WrongHeader(
            header.iter().collect::<Vec<_>>().join(","),
        ));
    }
    let mut lines = Vec::new();
    for record in records {
        let record = record.map_err(FileError::NotCsv)?;
        if record.iter().all(str::is_empty) {
            continue;
        }
        if lines.len() == MAX_ROWS {
            return Err(FileError::TooManyRows);
        }
        let line = line_of(text, &record);
        lines.push(CsvLine {
            line,
            fields: record.iter().map(str::to_owned).collect(),
        });
    }
    if lines.is_empty() {
        return Err(FileError::NoRows);
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
        assert!(matches!(parse(b""), Err(FileError::Empty)));
        assert!(matches!(
            parse(b"mail,role\na@x.io,member"),
            Err(FileError::WrongHeader(h)) if h == "mail,role"
        ));
        assert!(matches!(
            parse(b"email,role,extra\n"),
            Err(FileError::WrongHeader(_))
        ));
        assert!(matches!(parse(b"email,role\n"), Err(FileError::NoRows)));
        assert!(matches!(
            parse(b"email,role\n\xff,member"),
            Err(FileError::NotUtf8(_))
        ));
        assert!(matches!(
            parse(b"email,role\na\0@x.io,member"),
            Err(FileError::NulCharacter)
        ));
        let mut big = String::from("email,role\n");
        for i in 0..=MAX_ROWS {
            big.push_str(&format!("u{i}@x.io,member\n"));
        }
        assert!(matches!(parse(big.as_bytes()), Err(FileError::TooManyRows)));
    }
}
