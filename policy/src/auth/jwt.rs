//! JWT verification against an issuer's JSON Web Key Set.
//!
//! Pure logic: fetching and caching key sets is the adapter's job. What is enforced here:
//! - the header's `alg` must be on the issuer's allow-list (`none` cannot even be written there);
//! - the key must belong to the algorithm's family and, when the JWK names an `alg`, match it,
//!   so a token "signed" with HS256 using an RSA public key as the secret is refused;
//! - `exp`, `iss` and `aud` are required; `exp` and `nbf` are checked with a small leeway.

use std::str::FromStr;
use std::sync::Arc;

use jsonwebtoken::jwk::{Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};

use crate::config::{
    JwtIssuerSection, DEFAULT_JWKS_REFETCH_SECS, DEFAULT_JWKS_REFRESH_SECS, DEFAULT_JWT_LEEWAY_SECS,
};

/// Algorithms accepted from an issuer that does not list its own.
pub const DEFAULT_ALGORITHMS: &[Algorithm] = &[Algorithm::RS256, Algorithm::ES256];
/// At most this many keys are tried for a token without `kid`.
const MAX_KEYS_TRIED_WITHOUT_KID: usize = 8;

/// Parses an algorithm name from the config; `none` and unknown names are errors.
pub fn parse_algorithm(name: &str) -> Result<Algorithm, String> {
    if name.eq_ignore_ascii_case("none") {
        return Err("'none' is never accepted: unsigned tokens prove nothing".into());
    }
    Algorithm::from_str(name).map_err(|_| {
        format!("unknown algorithm '{name}' (use RS256/384/512, PS256/384/512, ES256/384, EdDSA or HS256/384/512)")
    })
}

/// Where an issuer's keys come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    Url {
        url: String,
        /// Minimum time between two fetches caused by an unknown `kid`.
        refetch_interval_secs: u64,
        /// Background refresh period.
        refresh_interval_secs: u64,
    },
    File(String),
}

/// A trusted issuer, compiled.
#[derive(Debug)]
pub struct JwtIssuer {
    pub issuer: String,
    pub audiences: Vec<String>,
    pub algorithms: Vec<Algorithm>,
    pub source: KeySource,
    pub user_claim: Option<String>,
    pub team_claim: Option<String>,
    /// One prepared validation per allowed algorithm.
    validations: Vec<(Algorithm, Validation)>,
}

impl JwtIssuer {
    pub fn compile(section: &JwtIssuerSection) -> JwtIssuer {
        let algorithms: Vec<Algorithm> = match &section.algorithms {
            Some(names) => names
                .iter()
                .filter_map(|n| parse_algorithm(&n.value).ok())
                .collect(),
            None => DEFAULT_ALGORITHMS.to_vec(),
        };
        let leeway = section.leeway_secs.unwrap_or(DEFAULT_JWT_LEEWAY_SECS);
        let validations = algorithms
            .iter()
            .map(|&alg| {
                let mut v = Validation::new(alg);
                v.leeway = leeway;
                v.validate_exp = true;
                v.validate_nbf = true;
                v.validate_aud = true;
                v.set_issuer(&[section.issuer.value.as_str()]);
                v.set_audience(&section.audiences);
                v.set_required_spec_claims(&["exp", "iss", "aud"]);
                (alg, v)
            })
            .collect();
        let source = match (&section.jwks_url, &section.jwks_file) {
            (Some(url), _) => KeySource::Url {
                url: url.value.clone(),
                refetch_interval_secs: section
                    .refetch_interval_secs
                    .unwrap_or(DEFAULT_JWKS_REFETCH_SECS),
                refresh_interval_secs: section
                    .refresh_interval_secs
                    .unwrap_or(DEFAULT_JWKS_REFRESH_SECS),
            },
            (None, Some(file)) => KeySource::File(file.value.clone()),
            (None, None) => KeySource::File(String::new()), // unreachable on a validated config
        };
        JwtIssuer {
            issuer: section.issuer.value.clone(),
            audiences: section.audiences.clone(),
            algorithms,
            source,
            user_claim: section.user_claim.clone(),
            team_claim: section.team_claim.clone(),
            validations,
        }
    }
}

/// One usable key of a key set.
struct SetKey {
    kid: Option<String>,
    /// The `alg` the JWK is restricted to, if it names one.
    alg: Option<Algorithm>,
    key: DecodingKey,
}

/// The verification keys of one issuer.
#[derive(Default)]
pub struct KeySet {
    keys: Vec<SetKey>,
}

impl std::fmt::Debug for KeySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kids: Vec<&str> = self
            .keys
            .iter()
            .map(|k| k.kid.as_deref().unwrap_or("<no kid>"))
            .collect();
        f.debug_struct("KeySet").field("kids", &kids).finish()
    }
}

impl KeySet {
    /// Parses a JWK Set document. Keys that are unusable for signatures (encryption keys,
    /// unknown types) are skipped; a document with no usable key is an error.
    pub fn from_json(document: &[u8]) -> Result<KeySet, String> {
        #[derive(serde::Deserialize)]
        struct Document {
            keys: Vec<Value>,
        }
        let doc: Document = serde_json::from_slice(document)
            .map_err(|e| format!("not a JWK Set ({{\"keys\": [...]}}): {e}"))?;
        let mut keys = Vec::new();
        for raw in doc.keys {
            let alg = match raw.get("alg").and_then(Value::as_str) {
                Some(name) => match Algorithm::from_str(name) {
                    Ok(alg) => Some(alg),
                    Err(_) => continue, // an encryption algorithm, or none
                },
                None => None,
            };
            let Ok(jwk) = serde_json::from_value::<Jwk>(raw) else {
                continue;
            };
            if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
                continue;
            }
            let Ok(key) = DecodingKey::from_jwk(&jwk) else {
                continue;
            };
            keys.push(SetKey {
                kid: jwk.common.key_id.clone(),
                alg,
                key,
            });
        }
        if keys.is_empty() {
            return Err("the JWK Set has no usable signature key".into());
        }
        Ok(KeySet { keys })
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn has_kid(&self, kid: &str) -> bool {
        self.keys.iter().any(|k| k.kid.as_deref() == Some(kid))
    }

    /// Keys that may verify a token with this header: the named `kid` (any key when the
    /// token names none), of the algorithm's family, and of the algorithm the JWK names.
    fn candidates<'a>(
        &'a self,
        kid: Option<&'a str>,
        alg: Algorithm,
    ) -> impl Iterator<Item = &'a SetKey> + 'a {
        self.keys
            .iter()
            .filter(move |k| kid.is_none() || k.kid.as_deref() == kid)
            .filter(move |k| k.key.family() == alg.family() && k.alg.is_none_or(|a| a == alg))
    }
}

/// Why a token was refused. Messages are safe to show to the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    #[error("the bearer token is not a well-formed JWT")]
    Malformed,
    #[error("tokens signed with '{0}' are not accepted")]
    AlgorithmNotAllowed(String),
    #[error("the token has no 'iss' claim")]
    NoIssuer,
    #[error("tokens from issuer '{0}' are not trusted")]
    UnknownIssuer(String),
    #[error("no key with id '{0}' is known for this issuer")]
    UnknownKey(String),
    #[error("no key of this issuer can verify a {0} token")]
    NoSuitableKey(String),
    #[error("the token's signature is invalid")]
    BadSignature,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet (nbf)")]
    NotYetValid,
    #[error("the token's audience is not accepted here")]
    WrongAudience,
    #[error("the token's issuer does not match")]
    WrongIssuer,
    #[error("the token lacks the required '{0}' claim")]
    MissingClaim(String),
    #[error("the token's keys could not be loaded for issuer '{0}'")]
    KeysUnavailable(String),
}

/// What the token claims before it is verified: used only to choose the issuer and key.
#[derive(Debug)]
pub struct UnverifiedToken {
    pub alg: Algorithm,
    pub kid: Option<String>,
    pub issuer: String,
}

/// Reads the header and `iss` of a token without trusting either.
pub fn peek(token: &str) -> Result<UnverifiedToken, JwtError> {
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(_sig), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwtError::Malformed);
    };
    let header = decode_segment(header)?;
    let alg_name = header
        .get("alg")
        .and_then(Value::as_str)
        .ok_or(JwtError::Malformed)?;
    let alg = Algorithm::from_str(alg_name)
        .map_err(|_| JwtError::AlgorithmNotAllowed(alg_name.to_string()))?;
    let kid = header
        .get("kid")
        .and_then(Value::as_str)
        .map(str::to_string);
    let payload = decode_segment(payload)?;
    let issuer = payload
        .get("iss")
        .and_then(Value::as_str)
        .ok_or(JwtError::NoIssuer)?
        .to_string();
    Ok(UnverifiedToken { alg, kid, issuer })
}

fn decode_segment(segment: &str) -> Result<Map<String, Value>, JwtError> {
    use base64::Engine;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(segment.trim_end_matches('='))
        .map_err(|_| JwtError::Malformed)?;
    serde_json::from_slice(&bytes).map_err(|_| JwtError::Malformed)
}

/// Verifies a token of `issuer` with `keys`; returns its claims.
pub fn verify(
    token: &str,
    unverified: &UnverifiedToken,
    issuer: &JwtIssuer,
    keys: &KeySet,
) -> Result<Arc<Map<String, Value>>, JwtError> {
    let alg = unverified.alg;
    let Some((_, validation)) = issuer.validations.iter().find(|(a, _)| *a == alg) else {
        return Err(JwtError::AlgorithmNotAllowed(format!("{alg:?}")));
    };
    if let Some(kid) = &unverified.kid {
        if !keys.has_kid(kid) {
            return Err(JwtError::UnknownKey(kid.clone()));
        }
    }
    let mut last_error = JwtError::NoSuitableKey(format!("{alg:?}"));
    for key in keys
        .candidates(unverified.kid.as_deref(), alg)
        .take(MAX_KEYS_TRIED_WITHOUT_KID)
    {
        match jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, validation) {
            Ok(data) => return Ok(Arc::new(data.claims)),
            Err(e) => {
                last_error = map_error(e.kind());
                // Only a bad signature means another key might fit.
                if last_error != JwtError::BadSignature {
                    return Err(last_error);
                }
            }
        }
    }
    Err(last_error)
}

fn map_error(kind: &jsonwebtoken::errors::ErrorKind) -> JwtError {
    use jsonwebtoken::errors::ErrorKind as K;
    match kind {
        K::ExpiredSignature => JwtError::Expired,
        K::ImmatureSignature => JwtError::NotYetValid,
        K::InvalidAudience => JwtError::WrongAudience,
        K::InvalidIssuer => JwtError::WrongIssuer,
        K::MissingRequiredClaim(claim) => JwtError::MissingClaim(claim.clone()),
        K::InvalidAlgorithm | K::MissingAlgorithm | K::InvalidAlgorithmName => {
            JwtError::AlgorithmNotAllowed("this algorithm".into())
        }
        K::InvalidSignature => JwtError::BadSignature,
        // A key that cannot be used with the algorithm, or a payload that is not JSON.
        _ => JwtError::BadSignature,
    }
}

/// A claim as a string, for the principal's user and team.
pub fn claim_string(claims: &Map<String, Value>, name: &str) -> Option<String> {
    match claims.get(name)? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}
