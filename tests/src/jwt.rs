//! JWTs for tests: a [`TestIssuer`] that holds RSA and EC signing keys under kids the test
//! chooses, publishes their public halves as a JWK Set, mints tokens, and forges the classic
//! bad tokens (`alg: none`, HS256 keyed with the RSA public key, a payload swapped under an
//! intact signature) for negative tests.
//!
//! RSA key generation is slow, so RSA keys come from a small process-wide pool: the first RSA
//! key an issuer adds is pool key 0, the second pool key 1, and so on. Two issuers in one test
//! therefore share RSA key material for their n-th kid; use [`TestIssuer::add_fresh_rsa_key`]
//! when a key must be unrelated to every other issuer's. EC keys are always fresh.

use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rsa::pkcs1::{EncodeRsaPrivateKey, EncodeRsaPublicKey};
use rsa::pkcs8::{EncodePublicKey, LineEnding};
use rsa::traits::PublicKeyParts;
use rsa::{RsaPrivateKey, RsaPublicKey};
use serde_json::{json, Value};

/// Lifetime of the tokens [`TestIssuer::claims`] describes, in seconds.
pub const TOKEN_LIFETIME_SECS: i64 = 600;

const RSA_BITS: usize = 2048;
const RSA_POOL_SIZE: usize = 3;

static RSA_POOL: [OnceLock<RsaPrivateKey>; RSA_POOL_SIZE] =
    [const { OnceLock::new() }; RSA_POOL_SIZE];

fn generate_rsa_key() -> RsaPrivateKey {
    RsaPrivateKey::new(&mut rsa::rand_core::OsRng, RSA_BITS).expect("generate an RSA key")
}

/// Pool key `index` (generated on first use, then shared by the whole process), or a fresh key
/// past the end of the pool.
fn pooled_rsa_key(index: usize) -> RsaPrivateKey {
    match RSA_POOL.get(index) {
        Some(slot) => slot.get_or_init(generate_rsa_key).clone(),
        None => generate_rsa_key(),
    }
}

/// How the RSA public key is serialised into the HMAC secret of an algorithm-confusion forgery
/// (see [`TestIssuer::hs256_with_public_key_as`]). A verifier that wrongly accepts HS256 with
/// an RSA key would use whichever of these bytes it holds as the secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublicKeyEncoding {
    /// `-----BEGIN PUBLIC KEY-----` PEM text, exactly as [`TestIssuer::public_key_pem`].
    SpkiPem,
    /// DER of the SubjectPublicKeyInfo.
    SpkiDer,
    /// `-----BEGIN RSA PUBLIC KEY-----` PEM text.
    Pkcs1Pem,
    /// DER of the PKCS#1 RSAPublicKey.
    Pkcs1Der,
}

enum PublicKey {
    Rsa(RsaPublicKey),
    Ec { spki_pem: String },
}

struct SigningKey {
    kid: String,
    alg: Algorithm,
    encoding: EncodingKey,
    public: PublicKey,
    jwk: Value,
}

/// A JWT issuer for tests. Kids are chosen by the test and must be unique per issuer; every
/// method that takes a kid panics if the issuer does not hold it.
pub struct TestIssuer {
    issuer: String,
    keys: Vec<SigningKey>,
    rsa_keys_added: usize,
}

impl TestIssuer {
    /// An issuer with no keys yet; `issuer_url` is the `iss` of [`TestIssuer::claims`].
    pub fn new(issuer_url: &str) -> TestIssuer {
        TestIssuer {
            issuer: issuer_url.to_string(),
            keys: Vec::new(),
            rsa_keys_added: 0,
        }
    }

    /// The issuer URL (`iss`).
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// Adds an RSA 2048 key (tokens: RS256) from the process-wide pool: the n-th RSA key this
    /// issuer adds is pool key n, so distinct kids of one issuer have distinct keys (beyond the
    /// pool size, keys are generated fresh).
    pub fn add_rsa_key(&mut self, kid: &str) -> &mut Self {
        let private = pooled_rsa_key(self.rsa_keys_added);
        self.rsa_keys_added += 1;
        self.insert_rsa(kid, private)
    }

    /// Adds a freshly generated RSA 2048 key (slow: about a second unoptimised), shared with
    /// no other issuer.
    pub fn add_fresh_rsa_key(&mut self, kid: &str) -> &mut Self {
        self.insert_rsa(kid, generate_rsa_key())
    }

    /// Adds a fresh EC P-256 key (tokens: ES256).
    pub fn add_ec_key(&mut self, kid: &str) -> &mut Self {
        let pair = rcgen::KeyPair::generate().expect("generate an EC P-256 key");
        let encoding =
            EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).expect("EC encoding key");
        let point = pair.public_key_raw();
        assert!(
            point.len() == 65 && point[0] == 0x04,
            "expected an uncompressed P-256 point, got {} bytes",
            point.len()
        );
        let jwk = json!({
            "kty": "EC",
            "kid": kid,
            "alg": "ES256",
            "use": "sig",
            "crv": "P-256",
            "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
            "y": URL_SAFE_NO_PAD.encode(&point[33..65]),
        });
        self.insert(SigningKey {
            kid: kid.to_string(),
            alg: Algorithm::ES256,
            encoding,
            public: PublicKey::Ec {
                spki_pem: pair.public_key_pem(),
            },
            jwk,
        })
    }

    fn insert_rsa(&mut self, kid: &str, private: RsaPrivateKey) -> &mut Self {
        let der = private.to_pkcs1_der().expect("PKCS#1 DER of the RSA key");
        let encoding = EncodingKey::from_rsa_der(der.as_bytes());
        let public = private.to_public_key();
        let jwk = json!({
            "kty": "RSA",
            "kid": kid,
            "alg": "RS256",
            "use": "sig",
            "n": URL_SAFE_NO_PAD.encode(public.n().to_bytes_be()),
            "e": URL_SAFE_NO_PAD.encode(public.e().to_bytes_be()),
        });
        self.insert(SigningKey {
            kid: kid.to_string(),
            alg: Algorithm::RS256,
            encoding,
            public: PublicKey::Rsa(public),
            jwk,
        })
    }

    fn insert(&mut self, key: SigningKey) -> &mut Self {
        assert!(
            self.keys.iter().all(|k| k.kid != key.kid),
            "kid {:?} already exists in issuer {}",
            key.kid,
            self.issuer
        );
        self.keys.push(key);
        self
    }

    fn key(&self, kid: &str) -> &SigningKey {
        self.keys
            .iter()
            .find(|k| k.kid == kid)
            .unwrap_or_else(|| panic!("issuer {} has no key {kid:?}", self.issuer))
    }

    /// The kids held, in the order they were added.
    pub fn kids(&self) -> Vec<String> {
        self.keys.iter().map(|k| k.kid.clone()).collect()
    }

    /// The algorithm `mint` uses for `kid`: RS256 or ES256.
    pub fn algorithm(&self, kid: &str) -> Algorithm {
        self.key(kid).alg
    }

    /// The public JWK of `kid` (`kty`, `kid`, `alg`, `use: sig`, and `n`/`e` or `crv`/`x`/`y`).
    pub fn jwk(&self, kid: &str) -> Value {
        self.key(kid).jwk.clone()
    }

    /// A JWK Set `{"keys": [...]}` with the public keys of `kids`, in that order.
    pub fn jwks_json(&self, kids: &[&str]) -> Value {
        let keys: Vec<Value> = kids.iter().map(|kid| self.jwk(kid)).collect();
        json!({ "keys": keys })
    }

    /// A JWK Set with every key the issuer holds.
    pub fn jwks_all(&self) -> Value {
        let keys: Vec<Value> = self.keys.iter().map(|k| k.jwk.clone()).collect();
        json!({ "keys": keys })
    }

    /// The SubjectPublicKeyInfo PEM (`-----BEGIN PUBLIC KEY-----`) of `kid`.
    pub fn public_key_pem(&self, kid: &str) -> String {
        match &self.key(kid).public {
            PublicKey::Rsa(public) => public
                .to_public_key_pem(LineEnding::LF)
                .expect("SPKI PEM of the RSA key"),
            PublicKey::Ec { spki_pem } => spki_pem.clone(),
        }
    }

    /// `{iss, sub, aud, iat, nbf, exp}` with `iat = nbf = now` and `exp = now + 600`.
    pub fn claims(&self, sub: &str, aud: &str) -> Value {
        let now = unix_now();
        json!({
            "iss": self.issuer,
            "sub": sub,
            "aud": aud,
            "iat": now,
            "nbf": now,
            "exp": now + TOKEN_LIFETIME_SECS,
        })
    }

    /// A token signed by `kid` (RS256 or ES256) with header `{alg, typ: JWT, kid}`.
    pub fn mint(&self, kid: &str, claims: Value) -> String {
        let key = self.key(kid);
        let mut header = Header::new(key.alg);
        header.kid = Some(kid.to_string());
        self.mint_with_header(kid, header, claims)
    }

    /// A token signed by `kid` under a header of the test's making (e.g. with no `kid`, or
    /// another key's `kid`). `header.alg` must be of the key's family.
    pub fn mint_with_header(&self, kid: &str, header: Header, claims: Value) -> String {
        let key = self.key(kid);
        jsonwebtoken::encode(&header, &claims, &key.encoding).unwrap_or_else(|e| {
            panic!(
                "cannot sign with {kid:?} ({:?}) under header alg {:?}: {e}",
                key.alg, header.alg
            )
        })
    }

    /// The algorithm-confusion forgery: an HS256 token (header kid = `kid`) whose HMAC secret
    /// is the RSA public key of `kid` as SPKI PEM text, i.e. exactly
    /// [`TestIssuer::public_key_pem`]. A verifier that lets the token pick HS256 and feeds the
    /// RSA public key in as the secret accepts it.
    pub fn hs256_with_public_key(&self, kid: &str, claims: Value) -> String {
        self.hs256_with_public_key_as(kid, claims, PublicKeyEncoding::SpkiPem)
    }

    /// [`TestIssuer::hs256_with_public_key`] with the secret being the public key encoded as
    /// `encoding`.
    pub fn hs256_with_public_key_as(
        &self,
        kid: &str,
        claims: Value,
        encoding: PublicKeyEncoding,
    ) -> String {
        let secret = self.public_key_bytes(kid, encoding);
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(kid.to_string());
        jsonwebtoken::encode(&header, &claims, &EncodingKey::from_secret(&secret))
            .expect("sign the HS256 forgery")
    }

    /// The RSA public key of `kid` in `encoding`; panics for an EC kid.
    pub fn public_key_bytes(&self, kid: &str, encoding: PublicKeyEncoding) -> Vec<u8> {
        let PublicKey::Rsa(public) = &self.key(kid).public else {
            panic!("key {kid:?} is not an RSA key");
        };
        match encoding {
            PublicKeyEncoding::SpkiPem => self.public_key_pem(kid).into_bytes(),
            PublicKeyEncoding::SpkiDer => public
                .to_public_key_der()
                .expect("SPKI DER")
                .as_bytes()
                .to_vec(),
            PublicKeyEncoding::Pkcs1Pem => public
                .to_pkcs1_pem(LineEnding::LF)
                .expect("PKCS#1 PEM")
                .into_bytes(),
            PublicKeyEncoding::Pkcs1Der => public
                .to_pkcs1_der()
                .expect("PKCS#1 DER")
                .as_bytes()
                .to_vec(),
        }
    }
}

/// Seconds since the Unix epoch, now.
pub fn unix_now() -> i64 {
    let elapsed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970");
    i64::try_from(elapsed.as_secs()).expect("time fits in i64")
}

/// A compact JWS from raw parts: `b64url(header).b64url(claims).b64url(signature)`; nothing is
/// checked, so any malformed token a test wants can be built with it.
pub fn assemble(header: &Value, claims: &Value, signature: &[u8]) -> String {
    format!(
        "{}.{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string()),
        URL_SAFE_NO_PAD.encode(signature)
    )
}

/// An unsigned token: header `{"alg":"none","typ":"JWT"}` and an empty signature (`xxx.yyy.`).
pub fn alg_none(claims: Value) -> String {
    assemble(&json!({ "alg": "none", "typ": "JWT" }), &claims, &[])
}

/// `token` with its payload replaced by `new_claims`, header and signature kept as they were.
pub fn tamper_payload(token: &str, new_claims: Value) -> String {
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3, "not a compact JWS: {token:?}");
    format!(
        "{}.{}.{}",
        parts[0],
        URL_SAFE_NO_PAD.encode(new_claims.to_string()),
        parts[2]
    )
}

/// The decoded header of a compact JWS (not verified).
pub fn header_of(token: &str) -> Value {
    segment_json(token, 0)
}

/// The decoded payload of a compact JWS (not verified).
pub fn claims_of(token: &str) -> Value {
    segment_json(token, 1)
}

fn segment_json(token: &str, index: usize) -> Value {
    let segment = token
        .split('.')
        .nth(index)
        .unwrap_or_else(|| panic!("token has no segment {index}: {token:?}"));
    let bytes = URL_SAFE_NO_PAD
        .decode(segment)
        .unwrap_or_else(|e| panic!("segment {index} is not base64url: {e}"));
    serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("segment {index} is not JSON: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::errors::ErrorKind;
    use jsonwebtoken::jwk::{Jwk, JwkSet};
    use jsonwebtoken::{decode, DecodingKey, TokenData, Validation};

    const ISS: &str = "https://issuer.test";
    const AUD: &str = "gantry";

    fn issuer() -> TestIssuer {
        let mut issuer = TestIssuer::new(ISS);
        issuer
            .add_rsa_key("rsa-1")
            .add_rsa_key("rsa-2")
            .add_ec_key("ec-1");
        issuer
    }

    /// The key for `kid` as a relying party would get it: from the JWK Set JSON.
    fn decoding_key(jwks: &Value, kid: &str) -> DecodingKey {
        let set: JwkSet = serde_json::from_value(jwks.clone()).expect("a valid JWK Set");
        let jwk = set.find(kid).unwrap_or_else(|| panic!("no {kid} in set"));
        DecodingKey::from_jwk(jwk).expect("decoding key from JWK")
    }

    fn validation(alg: Algorithm) -> Validation {
        let mut validation = Validation::new(alg);
        validation.set_issuer(&[ISS]);
        validation.set_audience(&[AUD]);
        validation
    }

    fn verify(
        token: &str,
        key: &DecodingKey,
        alg: Algorithm,
    ) -> jsonwebtoken::errors::Result<TokenData<Value>> {
        decode::<Value>(token, key, &validation(alg))
    }

    #[test]
    fn minted_tokens_verify_against_the_published_jwks() {
        let issuer = issuer();
        let jwks = issuer.jwks_json(&["rsa-1", "ec-1"]);
        for (kid, alg) in [("rsa-1", Algorithm::RS256), ("ec-1", Algorithm::ES256)] {
            let claims = issuer.claims("alice", AUD);
            let token = issuer.mint(kid, claims.clone());
            let header = header_of(&token);
            assert_eq!(header["kid"], kid);
            assert_eq!(header["alg"], format!("{alg:?}"));
            let data = verify(&token, &decoding_key(&jwks, kid), alg)
                .unwrap_or_else(|e| panic!("{kid} token does not verify: {e}"));
            assert_eq!(data.claims, claims);
            assert_eq!(data.header.kid.as_deref(), Some(kid));
        }
    }

    #[test]
    fn claims_have_the_standard_shape() {
        let issuer = TestIssuer::new(ISS);
        let before = unix_now();
        let claims = issuer.claims("bob", AUD);
        let after = unix_now();
        assert_eq!(claims["iss"], ISS);
        assert_eq!(claims["sub"], "bob");
        assert_eq!(claims["aud"], AUD);
        let iat = claims["iat"].as_i64().expect("iat");
        assert!((before..=after).contains(&iat), "iat {iat} not now");
        assert_eq!(claims["nbf"].as_i64(), Some(iat));
        assert_eq!(claims["exp"].as_i64(), Some(iat + TOKEN_LIFETIME_SECS));
    }

    #[test]
    fn jwks_holds_only_public_parts_matching_the_signing_keys() {
        let issuer = issuer();
        let jwks = issuer.jwks_json(&["rsa-1", "rsa-2", "ec-1"]);
        let keys = jwks["keys"].as_array().expect("keys array");
        assert_eq!(keys.len(), 3);
        for (jwk, kid) in keys.iter().zip(["rsa-1", "rsa-2", "ec-1"]) {
            assert_eq!(jwk["kid"], kid);
            assert_eq!(jwk["use"], "sig");
            let members: Vec<&String> = jwk.as_object().expect("object").keys().collect();
            for private in ["d", "p", "q", "dp", "dq", "qi", "k"] {
                assert!(
                    !members.iter().any(|m| *m == private),
                    "{kid} JWK leaks {private}: {jwk}"
                );
            }
            // The library's own derivation of the public key from the private one agrees.
            let key = issuer.key(kid);
            let derived = serde_json::to_value(
                Jwk::from_encoding_key(&key.encoding, key.alg).expect("JWK from encoding key"),
            )
            .expect("serialise JWK");
            for member in ["kty", "alg", "n", "e", "crv", "x", "y"] {
                assert_eq!(jwk.get(member), derived.get(member), "{kid}: {member}");
            }
        }
        assert_eq!(keys[0]["kty"], "RSA");
        assert_eq!(keys[2]["kty"], "EC");
        assert_eq!(keys[2]["crv"], "P-256");
        assert_ne!(keys[0]["n"], keys[1]["n"], "two kids share an RSA key");
        assert_eq!(issuer.jwks_all(), jwks);
    }

    #[test]
    fn a_token_does_not_verify_under_another_kids_key() {
        let issuer = issuer();
        let jwks = issuer.jwks_all();
        let token = issuer.mint("rsa-1", issuer.claims("alice", AUD));
        let err = verify(&token, &decoding_key(&jwks, "rsa-2"), Algorithm::RS256)
            .expect_err("verified under the wrong key");
        assert_eq!(err.kind(), &ErrorKind::InvalidSignature);
    }

    #[test]
    fn tampered_payload_fails_verification() {
        let issuer = issuer();
        let jwks = issuer.jwks_all();
        for (kid, alg) in [("rsa-1", Algorithm::RS256), ("ec-1", Algorithm::ES256)] {
            let token = issuer.mint(kid, issuer.claims("alice", AUD));
            let forged = tamper_payload(&token, issuer.claims("admin", AUD));
            assert_eq!(claims_of(&forged)["sub"], "admin");
            assert_eq!(header_of(&forged), header_of(&token));
            assert_eq!(forged.rsplit('.').next(), token.rsplit('.').next());
            let err = verify(&forged, &decoding_key(&jwks, kid), alg)
                .expect_err("tampered token verified");
            assert_eq!(err.kind(), &ErrorKind::InvalidSignature, "{kid}");
        }
    }

    #[test]
    fn alg_none_token_is_rejected() {
        let issuer = issuer();
        let token = alg_none(issuer.claims("alice", AUD));
        assert!(token.ends_with('.'), "signature not empty: {token}");
        assert_eq!(token.split('.').count(), 3);
        assert_eq!(header_of(&token), json!({ "alg": "none", "typ": "JWT" }));
        let key = decoding_key(&issuer.jwks_all(), "rsa-1");
        assert!(verify(&token, &key, Algorithm::RS256).is_err());
        assert!(jsonwebtoken::decode_header(&token).is_err());
    }

    #[test]
    fn hs256_forgery_is_genuine_yet_rejected_by_an_rs256_verifier() {
        let issuer = issuer();
        let rsa_key = decoding_key(&issuer.jwks_all(), "rsa-1");
        for encoding in [
            PublicKeyEncoding::SpkiPem,
            PublicKeyEncoding::SpkiDer,
            PublicKeyEncoding::Pkcs1Pem,
            PublicKeyEncoding::Pkcs1Der,
        ] {
            let claims = issuer.claims("alice", AUD);
            let forged = issuer.hs256_with_public_key_as("rsa-1", claims.clone(), encoding);
            assert_eq!(header_of(&forged)["alg"], "HS256");
            assert_eq!(header_of(&forged)["kid"], "rsa-1");

            // A verifier that keys HMAC with the public key accepts it: the forgery is real.
            let secret = issuer.public_key_bytes("rsa-1", encoding);
            let naive = verify(
                &forged,
                &DecodingKey::from_secret(&secret),
                Algorithm::HS256,
            )
            .unwrap_or_else(|e| panic!("{encoding:?} forgery is not well formed: {e}"));
            assert_eq!(naive.claims, claims);

            // One that allows RS256 with the RSA JWK refuses it.
            let err = verify(&forged, &rsa_key, Algorithm::RS256)
                .expect_err("HS256 forgery accepted under RS256");
            assert_eq!(err.kind(), &ErrorKind::InvalidAlgorithm, "{encoding:?}");
        }
        assert_eq!(
            issuer.hs256_with_public_key("rsa-1", json!({ "sub": "x" })),
            issuer.hs256_with_public_key_as(
                "rsa-1",
                json!({ "sub": "x" }),
                PublicKeyEncoding::SpkiPem
            )
        );
        assert!(issuer
            .public_key_pem("rsa-1")
            .starts_with("-----BEGIN PUBLIC KEY-----"));
    }

    #[test]
    fn mint_with_header_signs_what_the_test_asks() {
        let issuer = issuer();
        let token = issuer.mint_with_header(
            "rsa-1",
            Header::new(Algorithm::RS256),
            issuer.claims("alice", AUD),
        );
        assert!(header_of(&token).get("kid").is_none());
        let key = decoding_key(&issuer.jwks_all(), "rsa-1");
        verify(&token, &key, Algorithm::RS256).expect("kid-less token verifies with its key");
    }

    #[test]
    #[should_panic(expected = "already exists")]
    fn duplicate_kids_are_refused() {
        let mut issuer = TestIssuer::new(ISS);
        issuer.add_ec_key("k").add_ec_key("k");
    }
}
