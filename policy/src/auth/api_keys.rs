//! API keys: generation, hashing, and the table requests are checked against.
//!
//! The config holds only `sha256:<hex>` digests. A presented key is hashed once and looked up
//! by digest, so the work per request does not depend on how many keys exist, and timing says
//! nothing about stored keys: an attacker cannot choose the digests being compared. The final
//! comparison is constant-time anyway.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::sync::Arc;

use base64::Engine;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Keys printed by `gantry key new` start with this, so they are recognisable in leaks.
pub const KEY_PREFIX: &str = "gk_";
const HASH_PREFIX: &str = "sha256:";

/// The SHA-256 digest of an API key.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyHash([u8; 32]);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyHashError {
    #[error("'{0}' is not a key hash: write sha256:<64 hex digits> (`gantry key new` prints one)")]
    Format(String),
}

impl KeyHash {
    /// The digest of a presented key.
    pub fn of(key: &str) -> KeyHash {
        KeyHash(Sha256::digest(key.as_bytes()).into())
    }

    /// Parses `sha256:<64 hex digits>` (upper or lower case).
    pub fn parse(text: &str) -> Result<KeyHash, KeyHashError> {
        let bad = || KeyHashError::Format(text.to_string());
        let hex = text.strip_prefix(HASH_PREFIX).ok_or_else(bad)?;
        if hex.len() != 64 {
            return Err(bad());
        }
        let mut digest = [0u8; 32];
        for (i, pair) in hex.as_bytes().chunks(2).enumerate() {
            let high = hex_value(pair[0]).ok_or_else(bad)?;
            let low = hex_value(pair[1]).ok_or_else(bad)?;
            digest[i] = (high << 4) | low;
        }
        Ok(KeyHash(digest))
    }
}

fn hex_value(byte: u8) -> Option<u8> {
    match byte {
        b'0'..=b'9' => Some(byte - b'0'),
        b'a'..=b'f' => Some(byte - b'a' + 10),
        b'A'..=b'F' => Some(byte - b'A' + 10),
        _ => None,
    }
}

impl fmt::Display for KeyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(HASH_PREFIX)?;
        for byte in self.0 {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for KeyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// A fresh random key: `gk_` and 32 random bytes in URL-safe base64.
pub fn generate_key() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)?;
    Ok(format!(
        "{KEY_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    ))
}

/// A declared key and what it grants.
#[derive(Debug)]
pub struct ApiKey {
    pub name: String,
    pub user: Option<String>,
    pub team: Option<String>,
    /// Model names this key may use; `None` means all.
    pub models: Option<Vec<String>>,
    pub labels: BTreeMap<String, String>,
    /// Unix seconds after which the key is refused.
    pub expires_at: Option<i64>,
    /// The expiry as written in the config, for messages.
    pub expires_at_text: Option<String>,
    pub enabled: bool,
    /// When a runtime key was revoked (RFC 3339), for messages.
    pub revoked_at: Option<String>,
    /// This secret was replaced by a rotation: it works until `expires_at` (the grace
    /// period's end), then is refused with a message that says so.
    pub superseded: bool,
    pub(crate) hash: KeyHash,
}

impl ApiKey {
    pub fn allows_model(&self, model: &str) -> bool {
        self.models
            .as_ref()
            .is_none_or(|models| models.iter().any(|m| m == model))
    }
}

/// Every declared key, by digest.
#[derive(Debug, Default)]
pub struct ApiKeyTable {
    by_hash: HashMap<KeyHash, Arc<ApiKey>>,
    names: HashSet<String>,
}

impl ApiKeyTable {
    /// Builds the table from a validated config section.
    pub fn compile(sections: &[crate::config::ApiKeySection]) -> ApiKeyTable {
        let mut by_hash = HashMap::with_capacity(sections.len());
        for section in sections {
            let Ok(hash) = KeyHash::parse(&section.hash.value) else {
                continue; // unreachable on a validated config
            };
            let expires_at_text = section.expires_at.as_ref().map(|e| e.value.clone());
            let expires_at = expires_at_text
                .as_deref()
                .and_then(|t| crate::config::parse_rfc3339(t).ok());
            by_hash.insert(
                hash,
                Arc::new(ApiKey {
                    name: section.name.value.clone(),
                    user: section.user.clone(),
                    team: section.team.clone(),
                    models: section
                        .models
                        .as_ref()
                        .map(|m| m.iter().map(|s| s.value.clone()).collect()),
                    labels: section.labels.clone(),
                    expires_at,
                    expires_at_text,
                    enabled: section.enabled,
                    revoked_at: None,
                    superseded: false,
                    hash,
                }),
            );
        }
        ApiKeyTable::from_keys(by_hash.into_values())
    }

    /// A table of the given keys (a rotated key appears once per accepted secret).
    pub fn from_keys(keys: impl IntoIterator<Item = Arc<ApiKey>>) -> ApiKeyTable {
        let mut table = ApiKeyTable::default();
        for key in keys {
            table.names.insert(key.name.clone());
            table.by_hash.insert(key.hash, key);
        }
        table
    }

    pub fn is_empty(&self) -> bool {
        self.by_hash.is_empty()
    }

    /// Whether a key of this name is in the table.
    pub fn has_name(&self, name: &str) -> bool {
        self.names.contains(name)
    }

    /// Every key, in no particular order (a rotated key once per accepted secret).
    pub fn keys(&self) -> impl Iterator<Item = &Arc<ApiKey>> {
        self.by_hash.values()
    }

    /// The digest of a key's secret.
    pub fn hash_of(key: &ApiKey) -> KeyHash {
        key.hash
    }

    /// The key matching a presented secret, if any.
    pub fn lookup(&self, presented: &str) -> Option<&Arc<ApiKey>> {
        let digest = KeyHash::of(presented);
        let key = self.by_hash.get(&digest)?;
        bool::from(key.hash.0.ct_eq(&digest.0)).then_some(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_are_distinct_and_hash_round_trips() {
        let a = generate_key().unwrap();
        let b = generate_key().unwrap();
        assert_ne!(a, b);
        assert!(a.starts_with(KEY_PREFIX) && a.len() == 3 + 43, "{a}");
        let hash = KeyHash::of(&a).to_string();
        assert!(hash.starts_with("sha256:") && hash.len() == 7 + 64);
        assert_eq!(KeyHash::parse(&hash).unwrap(), KeyHash::of(&a));
        assert_eq!(
            KeyHash::parse(&hash.to_uppercase().replace("SHA256:", "sha256:")).unwrap(),
            KeyHash::of(&a)
        );
    }

    #[test]
    fn known_digest_and_bad_hashes() {
        assert_eq!(
            KeyHash::of("abc").to_string(),
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        for bad in [
            "",
            "sha256:",
            "md5:abcd",
            "sha256:zz",
            &format!("sha256:{}", "g".repeat(64)),
        ] {
            assert!(KeyHash::parse(bad).is_err(), "{bad}");
        }
    }
}
