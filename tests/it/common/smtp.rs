//! A small real SMTP server for tests: it accepts every message (or rejects
//! every recipient with a chosen code) and keeps what it received, with
//! helpers to read the subject and the decoded text and HTML parts.
//!
//! It speaks just enough SMTP for lettre in clear text: no STARTTLS, no AUTH.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

/// One message as the sink received it.
#[derive(Debug, Clone)]
pub struct Received {
    /// The envelope sender (`MAIL FROM`), without angle brackets.
    pub mail_from: String,
    /// The envelope recipients (`RCPT TO`), without angle brackets.
    pub rcpt_to: Vec<String>,
    /// The message (headers and body) as sent after `DATA`, dot-stuffing
    /// undone, lines ending in CRLF.
    pub data: String,
}

/// The SMTP server; stops when dropped.
pub struct SmtpSink {
    pub addr: SocketAddr,
    messages: Arc<Mutex<Vec<Received>>>,
    task: JoinHandle<()>,
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        // Dropping the accept task drops its JoinSet, which aborts the sessions.
        self.task.abort();
    }
}

impl SmtpSink {
    /// A sink accepting every message.
    pub async fn start() -> SmtpSink {
        Self::start_with(None).await
    }

    /// A sink answering every `RCPT TO` with `code` (550: permanent, 451:
    /// transient), so that no message is ever accepted.
    pub async fn start_rejecting(code: u16) -> SmtpSink {
        assert!((400..600).contains(&code), "a rejection code is 4xx or 5xx");
        Self::start_with(Some(code)).await
    }

    async fn start_with(reject: Option<u16>) -> SmtpSink {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind smtp sink");
        let addr = listener.local_addr().expect("smtp sink address");
        let messages = Arc::new(Mutex::new(Vec::new()));
        let store = Arc::clone(&messages);
        let task = tokio::spawn(async move {
            let mut sessions = JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((stream, _)) = accepted else { continue };
                        let store = Arc::clone(&store);
                        sessions.spawn(async move {
                            let _ = session(stream, store, reject).await;
                        });
                    }
                    Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
                }
            }
        });
        SmtpSink {
            addr,
            messages,
            task,
        }
    }

    /// `smtp://127.0.0.1:PORT`, for [`tenantry::mail::Mailer::new`].
    pub fn url(&self) -> String {
        format!("smtp://{}", self.addr)
    }

    /// The messages received so far, in order.
    pub fn messages(&self) -> Vec<Received> {
        self.messages.lock().unwrap().clone()
    }

    /// Waits until at least `n` messages arrived; panics with what did
    /// arrive after `timeout`.
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Received> {
        let deadline = Instant::now() + timeout;
        loop {
            let messages = self.messages();
            if messages.len() >= n {
                return messages;
            }
            if Instant::now() >= deadline {
                panic!(
                    "expected {n} message(s) within {timeout:?}, {} arrived: {messages:#?}",
                    messages.len()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl SmtpSink {
    /// The messages to `to`, waiting (15 s at most) until there are `n`.
    pub async fn wait_for_to(&self, to: &str, n: usize) -> Vec<Received> {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let mine: Vec<Received> = self
                .messages()
                .into_iter()
                .filter(|m| m.rcpt_to == vec![to.to_owned()])
                .collect();
            if mine.len() >= n {
                return mine;
            }
            assert!(
                Instant::now() < deadline,
                "no message {n} to {to}: {:#?}",
                self.messages()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The `/verify` link of the `nth` message to `to` (waiting for it).
    pub async fn link_to(&self, to: &str, nth: usize) -> url::Url {
        let mine = self.wait_for_to(to, nth).await;
        mine[nth - 1].verify_link()
    }
}

impl Received {
    /// The `/verify` link in the text part.
    pub fn verify_link(&self) -> url::Url {
        let text = self.text_body().expect("a text part");
        let line = text
            .lines()
            .map(str::trim)
            .find(|l| l.starts_with("http") && l.contains("/verify?"))
            .unwrap_or_else(|| panic!("no verify link in {text}"));
        url::Url::parse(line).unwrap()
    }
}

const EHLO_REPLY: &str = "250-localhost\r\n250-8BITMIME\r\n250 SMTPUTF8\r\n";

async fn session(
    stream: TcpStream,
    store: Arc<Mutex<Vec<Received>>>,
    reject: Option<u16>,
) -> std::io::Result<()> {
    let (reader, mut writer) = stream.into_split();
    let mut reader = BufReader::new(reader);
    writer
        .write_all(b"220 localhost ESMTP test sink\r\n")
        .await?;

    let mut mail_from: Option<String> = None;
    let mut rcpt_to: Vec<String> = Vec::new();
    let mut line = Vec::new();
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line).await? == 0 {
            return Ok(());
        }
        let command = String::from_utf8_lossy(&line);
        let command = command.trim_end_matches(['\r', '\n']);
        let verb = command
            .split_whitespace()
            .next()
            .unwrap_or("")
            .to_ascii_uppercase();
        let reply: String = match verb.as_str() {
            "EHLO" => {
                mail_from = None;
                rcpt_to.clear();
                EHLO_REPLY.to_owned()
            }
            "HELO" => {
                mail_from = None;
                rcpt_to.clear();
                "250 localhost\r\n".to_owned()
            }
            "MAIL" => match path_after(command, "MAIL FROM:") {
                Some(from) => {
                    mail_from = Some(from);
                    rcpt_to.clear();
                    "250 2.1.0 OK\r\n".to_owned()
                }
                None => "501 5.5.4 syntax: MAIL FROM:<address>\r\n".to_owned(),
            },
            "RCPT" => match (&mail_from, path_after(command, "RCPT TO:"), reject) {
                (None, _, _) => "503 5.5.1 MAIL first\r\n".to_owned(),
                (_, None, _) => "501 5.5.4 syntax: RCPT TO:<address>\r\n".to_owned(),
                (_, Some(_), Some(code)) if code >= 500 => {
                    format!("{code} 5.1.1 mailbox unavailable (test sink)\r\n")
                }
                (_, Some(_), Some(code)) => {
                    format!("{code} 4.3.0 try again later (test sink)\r\n")
                }
                (_, Some(to), None) => {
                    rcpt_to.push(to);
                    "250 2.1.5 OK\r\n".to_owned()
                }
            },
            "DATA" => {
                if mail_from.is_none() || rcpt_to.is_empty() {
                    "503 5.5.1 need MAIL and RCPT first\r\n".to_owned()
                } else {
                    writer
                        .write_all(b"354 end data with <CR><LF>.<CR><LF>\r\n")
                        .await?;
                    let Some(data) = read_data(&mut reader).await? else {
                        return Ok(());
                    };
                    store.lock().unwrap().push(Received {
                        mail_from: mail_from.take().unwrap_or_default(),
                        rcpt_to: std::mem::take(&mut rcpt_to),
                        data,
                    });
                    "250 2.0.0 OK queued\r\n".to_owned()
                }
            }
            "RSET" => {
                mail_from = None;
                rcpt_to.clear();
                "250 2.0.0 OK\r\n".to_owned()
            }
            "NOOP" => "250 2.0.0 OK\r\n".to_owned(),
            "QUIT" => {
                writer.write_all(b"221 2.0.0 bye\r\n").await?;
                return Ok(());
            }
            _ => "502 5.5.2 command not implemented\r\n".to_owned(),
        };
        writer.write_all(reply.as_bytes()).await?;
    }
}

/// `<address>` after `prefix` (case-insensitive), ignoring ESMTP parameters.
fn path_after(command: &str, prefix: &str) -> Option<String> {
    let head = command.get(..prefix.len())?;
    if !head.eq_ignore_ascii_case(prefix) {
        return None;
    }
    let rest = command[prefix.len()..].trim_start();
    let path = match rest.strip_prefix('<') {
        Some(inner) => &inner[..inner.find('>')?],
        None => rest.split_whitespace().next()?,
    };
    Some(path.to_owned())
}

/// Reads the message after `DATA` up to the lone `.`, undoing dot-stuffing.
/// `None` if the client hung up first.
async fn read_data<R: tokio::io::AsyncBufRead + Unpin>(
    reader: &mut R,
) -> std::io::Result<Option<String>> {
    let mut data = String::new();
    let mut line = Vec::new();
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line).await? == 0 {
            return Ok(None);
        }
        let text = String::from_utf8_lossy(&line);
        let text = text.trim_end_matches(['\r', '\n']);
        if text == "." {
            return Ok(Some(data));
        }
        data.push_str(text.strip_prefix('.').unwrap_or(text));
        data.push_str("\r\n");
    }
}

impl Received {
    /// The header block and the body.
    fn split(data: &str) -> (&str, &str) {
        match data.find("\r\n\r\n") {
            Some(i) => (&data[..i], &data[i + 4..]),
            None => (data, ""),
        }
    }

    /// The message's headers, unfolded, as (name, raw value).
    pub fn headers(&self) -> Vec<(String, String)> {
        parse_headers(Self::split(&self.data).0)
    }

    /// The raw (unfolded, not decoded) value of the first header `name`.
    pub fn header(&self, name: &str) -> Option<String> {
        header_in(&self.headers(), name)
    }

    /// The subject, RFC 2047 encoded words decoded.
    pub fn subject(&self) -> Option<String> {
        self.header("Subject").map(|s| decode_rfc2047(&s))
    }

    /// The decoded `text/plain` part (line endings as `\n`).
    pub fn text_body(&self) -> Option<String> {
        self.part("text/plain")
    }

    /// The decoded `text/html` part (line endings as `\n`).
    pub fn html_body(&self) -> Option<String> {
        self.part("text/html")
    }

    fn part(&self, mime: &str) -> Option<String> {
        let (head, body) = Self::split(&self.data);
        find_part(&parse_headers(head), body, mime)
    }
}

fn parse_headers(block: &str) -> Vec<(String, String)> {
    let mut headers: Vec<(String, String)> = Vec::new();
    for line in block.split("\r\n") {
        if line.starts_with([' ', '\t']) {
            if let Some((_, value)) = headers.last_mut() {
                value.push(' ');
                value.push_str(line.trim_start());
            }
        } else if let Some((name, value)) = line.split_once(':') {
            headers.push((name.trim().to_owned(), value.trim().to_owned()));
        }
    }
    headers
}

fn header_in(headers: &[(String, String)], name: &str) -> Option<String> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.clone())
}

/// A parameter (`boundary`, `charset`) of a structured header value.
fn header_param(value: &str, param: &str) -> Option<String> {
    value.split(';').skip(1).find_map(|p| {
        let (k, v) = p.split_once('=')?;
        k.trim()
            .eq_ignore_ascii_case(param)
            .then(|| v.trim().trim_matches('"').to_owned())
    })
}

/// The first part of type `mime` in the entity with `headers` and `body`,
/// searching multiparts recursively, decoded.
fn find_part(headers: &[(String, String)], body: &str, mime: &str) -> Option<String> {
    let content_type = header_in(headers, "Content-Type").unwrap_or_else(|| "text/plain".into());
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if essence.starts_with("multipart/") {
        let boundary = header_param(&content_type, "boundary")?;
        let body = format!("\r\n{body}");
        let delimiter = format!("\r\n--{boundary}");
        for segment in body.split(delimiter.as_str()).skip(1) {
            if segment.starts_with("--") {
                break;
            }
            // The rest of the delimiter line (transport padding), then the part.
            let part = segment.split_once("\r\n").map_or("", |(_, p)| p);
            let (part_head, part_body) = match part.find("\r\n\r\n") {
                Some(i) => (&part[..i], &part[i + 4..]),
                None if part.starts_with("\r\n") => ("", &part[2..]),
                None => (part, ""),
            };
            if let Some(found) = find_part(&parse_headers(part_head), part_body, mime) {
                return Some(found);
            }
        }
        return None;
    }
    if essence != mime {
        return None;
    }
    let encoding = header_in(headers, "Content-Transfer-Encoding")
        .unwrap_or_else(|| "7bit".into())
        .to_ascii_lowercase();
    let bytes = match encoding.as_str() {
        "base64" => {
            let compact: String = body.chars().filter(|c| !c.is_ascii_whitespace()).collect();
            BASE64.decode(compact).expect("valid base64 body")
        }
        "quoted-printable" => decode_quoted_printable(body),
        _ => body.as_bytes().to_vec(),
    };
    Some(
        String::from_utf8(bytes)
            .expect("utf-8 body")
            .replace("\r\n", "\n"),
    )
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

fn decode_quoted_printable(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'=' {
            let rest = &b[i + 1..];
            if rest.starts_with(b"\r\n") {
                i += 3; // soft line break
                continue;
            }
            if rest.starts_with(b"\n") {
                i += 2;
                continue;
            }
            if let (Some(&h), Some(&l)) = (rest.first(), rest.get(1))
                && let (Some(h), Some(l)) = (hex(h), hex(l))
            {
                out.push((h << 4) | l);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

/// Decodes the RFC 2047 encoded words (`=?utf-8?b?...?=`, `=?utf-8?q?...?=`)
/// of a header value; whitespace between adjacent encoded words is dropped.
pub fn decode_rfc2047(value: &str) -> String {
    let mut out = String::new();
    let mut rest = value;
    let mut after_word = false;
    while let Some(i) = rest.find("=?") {
        let (before, candidate) = rest.split_at(i);
        match encoded_word(candidate) {
            Some((decoded, len)) => {
                if !(after_word && before.trim().is_empty()) {
                    out.push_str(before);
                }
                out.push_str(&decoded);
                rest = &candidate[len..];
                after_word = true;
            }
            None => {
                out.push_str(before);
                out.push_str("=?");
                rest = &candidate[2..];
                after_word = false;
            }
        }
    }
    out.push_str(rest);
    out
}

/// One encoded word at the start of `s`: its text and its length in `s`.
fn encoded_word(s: &str) -> Option<(String, usize)> {
    let inner = s.strip_prefix("=?")?;
    let (charset, inner) = inner.split_once('?')?;
    let (encoding, inner) = inner.split_once('?')?;
    let end = inner.find("?=")?;
    let text = &inner[..end];
    if text.contains(char::is_whitespace) {
        return None;
    }
    let bytes = match encoding {
        "b" | "B" => BASE64.decode(text).ok()?,
        "q" | "Q" => {
            let underscores = text.replace('_', " ");
            decode_quoted_printable(&underscores)
        }
        _ => return None,
    };
    let _ = charset; // lettre always writes utf-8
    let len = 2 + charset.len() + 1 + encoding.len() + 1 + end + 2;
    Some((String::from_utf8_lossy(&bytes).into_owned(), len))
}
