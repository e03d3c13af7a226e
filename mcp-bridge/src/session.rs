//! Downstream sessions for handshake-era clients, sealed into the session id itself.
//!
//! The `Mcp-Session-Id` the bridge hands out is the session's whole state (the caller it is
//! bound to, the negotiated version, the client's capabilities, and the upstream session of
//! every upstream), encrypted and authenticated with XChaCha20-Poly1305 under one key derived
//! (HKDF-SHA256) from the configured secret when the process starts. Any replica with the same
//! secret can open it; nobody can forge or read one; a random 192-bit nonce per session makes
//! nonce reuse practically impossible. Opening is one AEAD decryption (microseconds), not a
//! password hash per session.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use chacha20poly1305::aead::{Aead, KeyInit};
use chacha20poly1305::{Key, XChaCha20Poly1305, XNonce};
use serde::{Deserialize, Serialize};

/// Format version inside the sealed payload.
const VERSION: u8 = 1;
/// HKDF `info`: binds the key to this use.
const KEY_INFO: &[u8] = b"gantry mcp-bridge session id v1";
/// Session ids start with this, so they are recognisable in logs.
const ID_PREFIX: &str = "g1.";

/// What a downstream session is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionState {
    #[serde(rename = "v")]
    pub version: u8,
    /// `McpCaller::binding()` of the caller that initialized it.
    #[serde(rename = "p")]
    pub binding: String,
    /// Unix seconds of `initialize`.
    #[serde(rename = "t")]
    pub created: u64,
    /// The protocol version agreed with the client.
    #[serde(rename = "pv")]
    pub protocol_version: String,
    /// The client's `capabilities`, as sent.
    #[serde(rename = "c")]
    pub client_capabilities: serde_json::Value,
    /// The client's `clientInfo`, as sent.
    #[serde(rename = "ci")]
    pub client_info: serde_json::Value,
    /// One entry per upstream reached through its own handshake-era session.
    #[serde(rename = "u")]
    pub upstreams: Vec<UpstreamSession>,
    /// Random bytes: two sessions of the same caller in the same second differ.
    #[serde(rename = "r")]
    pub nonce: u64,
}

/// An upstream session inside a downstream session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpstreamSession {
    #[serde(rename = "n")]
    pub upstream: String,
    /// The upstream's `Mcp-Session-Id` (absent when the upstream issued none).
    #[serde(rename = "s", default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    /// The protocol version the upstream agreed to.
    #[serde(rename = "pv")]
    pub protocol_version: String,
}

/// Why a presented session id is refused. Every variant means 404 to the client (it must
/// re-initialize); the variants exist for the log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    #[error("the session id is not one of this gateway's")]
    Malformed,
    #[error("the session id does not open with this gateway's key")]
    Forged,
    #[error("the session expired")]
    Expired,
    #[error("the session belongs to another caller")]
    OtherCaller,
    #[error("the operating system's random number generator is unavailable")]
    NoRandomness,
}

/// Seals and opens session ids with the process's one key.
pub struct SessionSealer {
    cipher: XChaCha20Poly1305,
    ttl_secs: u64,
}

impl std::fmt::Debug for SessionSealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SessionSealer(ttl {} s)", self.ttl_secs)
    }
}

impl SessionSealer {
    /// Derives the key from `secret` once.
    pub fn new(secret: &[u8], ttl_secs: u64) -> SessionSealer {
        let hkdf = hkdf::Hkdf::<sha2::Sha256>::new(Some(b"gantry"), secret);
        let mut key = [0u8; 32];
        // 32 bytes is far below HKDF-SHA256's output limit: expand cannot fail.
        let _ = hkdf.expand(KEY_INFO, &mut key);
        SessionSealer {
            cipher: XChaCha20Poly1305::new(&Key::from(key)),
            ttl_secs,
        }
    }

    /// A sealer with a random key (no secret configured): sessions stay on this process.
    pub fn random(ttl_secs: u64) -> Result<SessionSealer, SessionError> {
        let mut secret = [0u8; 32];
        fill_random(&mut secret)?;
        Ok(SessionSealer::new(&secret, ttl_secs))
    }

    /// A fresh state for a new session.
    pub fn new_state(
        binding: String,
        now: u64,
        protocol_version: String,
        client_capabilities: serde_json::Value,
        client_info: serde_json::Value,
    ) -> Result<SessionState, SessionError> {
        let mut nonce = [0u8; 8];
        fill_random(&mut nonce)?;
        Ok(SessionState {
            version: VERSION,
            binding,
            created: now,
            protocol_version,
            client_capabilities,
            client_info,
            upstreams: Vec::new(),
            nonce: u64::from_le_bytes(nonce),
        })
    }

    /// The session id for `state`: visible ASCII (base64url), as `Mcp-Session-Id` requires.
    pub fn seal(&self, state: &SessionState) -> Result<String, SessionError> {
        let plain = serde_json::to_vec(state).map_err(|_| SessionError::Malformed)?;
        let mut nonce = [0u8; 24];
        fill_random(&mut nonce)?;
        let sealed = self
            .cipher
            .encrypt(&XNonce::from(nonce), plain.as_slice())
            .map_err(|_| SessionError::Malformed)?;
        let mut bytes = Vec::with_capacity(24 + sealed.len());
        bytes.extend_from_slice(&nonce);
        bytes.extend_from_slice(&sealed);
        Ok(format!("{ID_PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes)))
    }

    /// Opens `id` for the caller `binding` at `now` (Unix seconds).
    pub fn open(&self, id: &str, binding: &str, now: u64) -> Result<SessionState, SessionError> {
        let encoded = id.strip_prefix(ID_PREFIX).ok_or(SessionError::Malformed)?;
        let bytes = URL_SAFE_NO_PAD
            .decode(encoded)
            .map_err(|_| SessionError::Malformed)?;
        if bytes.len() < 24 + 16 {
            return Err(SessionError::Malformed);
        }
        let (nonce, sealed) = bytes.split_at(24);
        let nonce: [u8; 24] = nonce.try_into().map_err(|_| SessionError::Malformed)?;
        let plain = self
            .cipher
            .decrypt(&XNonce::from(nonce), sealed)
            .map_err(|_| SessionError::Forged)?;
        let state: SessionState =
            serde_json::from_slice(&plain).map_err(|_| SessionError::Malformed)?;
        if state.version != VERSION {
            return Err(SessionError::Malformed);
        }
        if now.saturating_sub(state.created) > self.ttl_secs {
            return Err(SessionError::Expired);
        }
        // Not constant-time: the binding is not a secret, and the id already authenticated.
        if state.binding != binding {
            return Err(SessionError::OtherCaller);
        }
        Ok(state)
    }
}

/// Fills `buf` from the OS. Without OS randomness the bridge refuses to make ids at all
/// rather than make predictable ones.
fn fill_random(buf: &mut [u8]) -> Result<(), SessionError> {
    getrandom::fill(buf).map_err(|_| SessionError::NoRandomness)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> SessionState {
        let mut state = SessionSealer::new_state(
            "api_key:alice".into(),
            1_000,
            "2025-11-25".into(),
            serde_json::json!({"elicitation": {}}),
            serde_json::json!({"name": "test", "version": "1"}),
        )
        .unwrap();
        state.upstreams.push(UpstreamSession {
            upstream: "alpha".into(),
            session_id: Some("abc-123".into()),
            protocol_version: "2025-11-25".into(),
        });
        state
    }

    #[test]
    fn a_sealed_id_opens_on_another_sealer_with_the_same_secret() {
        let one = SessionSealer::new(b"shared secret", 3600);
        let two = SessionSealer::new(b"shared secret", 3600);
        let state = state();
        let id = one.seal(&state).unwrap();
        assert!(id.starts_with("g1."));
        assert!(id.bytes().all(|b| (0x21..=0x7e).contains(&b)));
        assert_eq!(two.open(&id, "api_key:alice", 1_010), Ok(state.clone()));
        // Two seals of the same state differ (fresh nonce).
        assert_ne!(id, one.seal(&state).unwrap());
    }

    #[test]
    fn other_secrets_callers_tampering_and_age_are_refused() {
        let sealer = SessionSealer::new(b"shared secret", 3600);
        let id = sealer.seal(&state()).unwrap();
        assert_eq!(
            SessionSealer::new(b"other", 3600).open(&id, "api_key:alice", 1_010),
            Err(SessionError::Forged)
        );
        assert_eq!(
            sealer.open(&id, "api_key:mallory", 1_010),
            Err(SessionError::OtherCaller)
        );
        assert_eq!(
            sealer.open(&id, "api_key:alice", 1_000 + 3601),
            Err(SessionError::Expired)
        );
        let mut tampered = id.clone().into_bytes();
        let last = tampered.len() - 5;
        tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
        assert_eq!(
            sealer.open(
                std::str::from_utf8(&tampered).unwrap(),
                "api_key:alice",
                1_010
            ),
            Err(SessionError::Forged)
        );
        assert_eq!(
            sealer.open("not-ours", "api_key:alice", 1_010),
            Err(SessionError::Malformed)
        );
        assert_eq!(
            sealer.open("g1.!!!", "api_key:alice", 1_010),
            Err(SessionError::Malformed)
        );
    }
}
