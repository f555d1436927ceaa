//! Stripe's webhook signatures: `Stripe-Signature: t=<unix>,v1=<hex>,...`,
//! where each `v1` is HMAC-SHA256 of `"{t}.{raw body}"` under an endpoint
//! secret. Several `v1` values (Stripe signs with every live secret while
//! one is rolled) and several configured secrets (ours, during rotation)
//! are allowed: one match of any pair is enough. `v0` (test-mode legacy) is
//! ignored. Comparisons are constant-time (`Mac::verify_slice`).

use hmac::{Hmac, Mac};
use sha2::Sha256;

use secrecy::{ExposeSecret, SecretString};

/// How far the signature's timestamp may be from now, either way.
pub const TOLERANCE_SECS: i64 = 300;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// No header, no `t`, no `v1`, or not of the expected shape.
    #[error("missing or malformed Stripe-Signature header (t=...,v1=...)")]
    Malformed,
    /// No `v1` matches any secret.
    #[error("no v1 signature matches a configured webhook secret")]
    Mismatch,
    /// A valid signature, made too long ago (or in the future).
    #[error("the signature's timestamp is more than {TOLERANCE_SECS} seconds from now")]
    Expired,
}

/// Verifies `header` over `body` with any of `secrets`, at `now` (unix seconds).
pub fn verify(
    header: Option<&str>,
    body: &[u8],
    secrets: &[SecretString],
    now: i64,
) -> Result<(), SignatureError> {
    let header = header.ok_or(SignatureError::Malformed)?;
    if header.len() > 4096 {
        return Err(SignatureError::Malformed);
    }
    let mut timestamp: Option<i64> = None;
    let mut candidates: Vec<Vec<u8>> = Vec::new();
    for part in header.split(',') {
        let Some((key, value)) = part.trim().split_once('=') else {
            continue;
        };
        match key.trim() {
            "t" => {
                timestamp = Some(
                    value
                        .trim()
                        .parse::<i64>()
                        .map_err(|_| SignatureError::Malformed)?,
                )
            }
            // A v1 that is not hex cannot match; it is skipped like any other.
            "v1" => {
                if let Some(bytes) = decode_hex(value.trim()) {
                    candidates.push(bytes);
                }
            }
            _ => {}
        }
    }
    let t = timestamp.ok_or(SignatureError::Malformed)?;
    if candidates.is_empty() || secrets.is_empty() {
        return Err(SignatureError::Malformed);
    }
    let matched = secrets.iter().any(|secret| {
        let mut mac = <Hmac<Sha256>>::new_from_slice(secret.expose_secret().as_bytes())
            .expect("HMAC takes keys of any length");
        mac.update(t.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        candidates
            .iter()
            .any(|sig| mac.clone().verify_slice(sig).is_ok())
    });
    if !matched {
        return Err(SignatureError::Mismatch);
    }
    if (now - t).abs() > TOLERANCE_SECS {
        return Err(SignatureError::Expired);
    }
    Ok(())
}

/// The `v1` signature of `body` at `t` under `secret`, as Stripe makes it.
pub fn sign(secret: &str, t: i64, body: &[u8]) -> String {
    let mut mac =
        <Hmac<Sha256>>::new_from_slice(secret.as_bytes()).expect("HMAC takes keys of any length");
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if s.len() > 256 {
        return None;
    }
    hex::decode(s).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secrets(list: &[&str]) -> Vec<SecretString> {
        list.iter().map(|s| SecretString::from(*s)).collect()
    }

    #[test]
    fn any_v1_under_any_secret_is_accepted() {
        let body = br#"{"id":"evt_1"}"#;
        let now = 1_700_000_000;
        let good = sign("whsec_b", now, body);
        let other = sign("whsec_x", now, body);
        let header = format!("t={now},v1={other},v1={good},v0={good}");
        assert_eq!(
            verify(Some(&header), body, &secrets(&["whsec_a", "whsec_b"]), now),
            Ok(())
        );
        assert_eq!(
            verify(Some(&header), body, &secrets(&["whsec_a"]), now),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify(
                Some(&header),
                b"{\"id\":\"evt_2\"}",
                &secrets(&["whsec_b"]),
                now
            ),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn stale_future_and_malformed_headers_are_refused() {
        let body = b"{}";
        let t = 1_700_000_000;
        let header = format!("t={t},v1={}", sign("s", t, body));
        let s = secrets(&["s"]);
        assert_eq!(verify(Some(&header), body, &s, t + 300), Ok(()));
        assert_eq!(
            verify(Some(&header), body, &s, t + 301),
            Err(SignatureError::Expired)
        );
        assert_eq!(
            verify(Some(&header), body, &s, t - 301),
            Err(SignatureError::Expired)
        );
        let v0_only = format!("t={t},v0={}", sign("s", t, body));
        for bad in [
            "",
            "garbage",
            "t=abc,v1=00",
            &format!("v1={}", sign("s", t, body)),
            &v0_only,
            &format!("t={t},v1=zz"),
        ] {
            assert_eq!(
                verify(Some(bad), body, &s, t),
                Err(SignatureError::Malformed),
                "{bad}"
            );
        }
        assert_eq!(verify(None, body, &s, t), Err(SignatureError::Malformed));
    }
}
