//! The API key as a credential: its format, parsing and hash. Keys are
//! managed (created, listed, revoked) in [`crate::apikeys`].
//!
//! A key is `tnt_<secret>_<org>`: `tnt_`, 43 base64url characters encoding 32
//! random bytes, `_`, and the org id as 32 lowercase hex digits (80 characters
//! in all). The org is read from the key, so the key is looked up inside that
//! org's tenant context, under RLS, like any tenant row. Only the key's
//! SHA-256 is stored; its first 12 characters (`tnt_` and 8 of the secret)
//! are kept as a `prefix` to tell keys apart.
//!
//! A key acts in its org with its role through the same RBAC as a member
//! ([`crate::auth::OrgContext`]), minus [`KEY_DENIED`]: the actions that are
//! attributed to a user (an invitation names its inviter, a report or import
//! job runs as the user who started it) and minting more keys.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::auth::permissions::Permission;

/// Every API key starts with this.
pub const KEY_PREFIX: &str = "tnt_";
/// Length of the secret part: base64url of 32 bytes, unpadded.
const SECRET_LEN: usize = 43;
/// Length of a whole key.
pub const KEY_LEN: usize = KEY_PREFIX.len() + SECRET_LEN + 1 + 32;
/// How many leading characters of a key are stored and shown.
pub const PREFIX_LEN: usize = 12;

/// Permissions an API key never exercises, whatever its role holds.
pub const KEY_DENIED: &[Permission] = &[
    Permission::InvitationsManage,
    Permission::ReportsCreate,
    Permission::ApikeysManage,
];

/// Whether a bearer token is meant as an API key (rather than an access token).
pub fn is_api_key(token: &str) -> bool {
    token.starts_with(KEY_PREFIX)
}

/// A well-formed key: the org it names and the SHA-256 to look it up by.
#[derive(Debug, Clone)]
pub struct PresentedKey {
    pub org_id: Uuid,
    pub hash: [u8; 32],
}

/// Parses a presented key; `None` when it is not shaped like one.
pub fn parse(token: &str) -> Option<PresentedKey> {
    if token.len() != KEY_LEN || !token.is_ascii() || !is_api_key(token) {
        return None;
    }
    let secret = &token[KEY_PREFIX.len()..KEY_PREFIX.len() + SECRET_LEN];
    let rest = &token[KEY_PREFIX.len() + SECRET_LEN..];
    let org = rest.strip_prefix('_')?;
    if !secret
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        || !org
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return None;
    }
    let org_id = Uuid::try_parse(org).ok()?;
    Some(PresentedKey {
        org_id,
        hash: hash(token),
    })
}

/// SHA-256 of a whole key, as stored.
pub fn hash(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// A fresh key for `org_id`: the key itself (shown once), its prefix and its hash.
pub fn generate(org_id: Uuid) -> (String, String, [u8; 32]) {
    let mut raw = [0u8; 32];
    rand::rng().fill_bytes(&mut raw);
    let key = format!(
        "{KEY_PREFIX}{}_{}",
        URL_SAFE_NO_PAD.encode(raw),
        org_id.simple()
    );
    let prefix = key[..PREFIX_LEN].to_owned();
    let hash = hash(&key);
    (key, prefix, hash)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_parse_back() {
        let org = Uuid::now_v7();
        let (key, prefix, h) = generate(org);
        assert_eq!(key.len(), KEY_LEN);
        assert!(key.starts_with(&prefix) && prefix.starts_with(KEY_PREFIX));
        let parsed = parse(&key).expect("parses");
        assert_eq!(parsed.org_id, org);
        assert_eq!(parsed.hash, h);
    }

    #[test]
    fn malformed_keys_do_not_parse() {
        let (key, _, _) = generate(Uuid::now_v7());
        assert!(parse("tnt_xxx").is_none());
        assert!(parse(&key[..KEY_LEN - 1]).is_none());
        assert!(parse(&format!("{key}0")).is_none());
        assert!(parse(&key.to_uppercase()).is_none());
        let mut bad = key.clone();
        bad.replace_range(10..11, "!");
        assert!(parse(&bad).is_none());
        let mut bad = key.clone();
        bad.replace_range(47..48, "-");
        assert!(parse(&bad).is_none());
    }
}
