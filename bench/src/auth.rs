//! The credentials the benchmark authenticates with, and the `auth` config sections that
//! accept them.

use std::net::SocketAddr;
use std::path::Path;

use anyhow::anyhow;
use gantry_policy::auth::api_keys::{generate_key, KeyHash};
use gantry_testkit::jwt::{unix_now, TestIssuer};
use serde_json::json;

/// The API key's name in the config (`x-gantry-key` upstream).
pub const KEY_NAME: &str = "bench-key";
/// The API key's user: the principal's subject.
pub const KEY_USER: &str = "bench";
/// The team of both the API key and the token.
pub const TEAM: &str = "perf";
pub const JWT_ISSUER: &str = "https://issuer.gantry-bench.test";
pub const JWT_AUDIENCE: &str = "gantry-bench";
/// The token's `sub`: the principal's subject.
pub const JWT_SUBJECT: &str = "bench-user";
const JWT_KID: &str = "bench-rs256";
/// Long enough for any run; real tokens live minutes, which does not change verification.
const TOKEN_LIFETIME_SECS: i64 = 24 * 3600;

/// An API key as `gantry key new` makes them, and an RS256 token with its issuer's JWKS.
pub struct Credentials {
    pub api_key: String,
    pub token: String,
    /// The issuer's JWK Set (public keys only), as JSON text.
    pub jwks: String,
}

impl Credentials {
    /// Generates the key and an RSA 2048 signing key (a fraction of a second; run it off the
    /// async threads).
    pub fn generate() -> anyhow::Result<Credentials> {
        let api_key = generate_key().map_err(|e| anyhow!("cannot generate an API key: {e}"))?;
        let mut issuer = TestIssuer::new(JWT_ISSUER);
        issuer.add_rsa_key(JWT_KID);
        let now = unix_now();
        let token = issuer.mint(
            JWT_KID,
            json!({
                "iss": JWT_ISSUER,
                "sub": JWT_SUBJECT,
                "aud": JWT_AUDIENCE,
                "team": TEAM,
                "iat": now,
                "nbf": now,
                "exp": now + TOKEN_LIFETIME_SECS,
            }),
        );
        Ok(Credentials {
            api_key,
            token,
            jwks: issuer.jwks_all().to_string(),
        })
    }

    /// The `Authorization` header value that presents the API key.
    pub fn api_key_bearer(&self) -> String {
        format!("Bearer {}", self.api_key)
    }

    pub fn token_bearer(&self) -> String {
        format!("Bearer {}", self.token)
    }
}

/// The rules of the `api_key_rules` decision: every one is evaluated for the benchmark's
/// request (the deny does not match, and a matching allow does not stop evaluation).
pub const RULES: &[(&str, &str, &str)] = &[
    (
        "no-admin-paths",
        "deny",
        "request.path.startsWith('/admin')",
    ),
    (
        "perf-chat",
        "allow",
        "principal.team == 'perf' && request.path.startsWith('/v1/chat/')",
    ),
    (
        "research-anything",
        "allow",
        "principal.team in ['research', 'ml']",
    ),
];

/// What an `auth` section accepts besides the API key.
#[derive(Clone, Copy)]
pub struct Extras<'a> {
    /// A JWT issuer whose keys are in this JWKS file.
    pub jwks_file: Option<&'a Path>,
    /// The [`RULES`].
    pub rules: bool,
}

/// An `auth:` section on `listen` with the benchmark's API key (hash only), and `extras`.
pub fn auth_section(listen: SocketAddr, credentials: &Credentials, extras: Extras<'_>) -> String {
    let mut yaml = format!(
        "auth:\n  listen: {listen}\n  api_keys:\n    - {{ name: {KEY_NAME}, hash: '{}', user: {KEY_USER}, team: {TEAM} }}\n",
        KeyHash::of(&credentials.api_key)
    );
    if let Some(jwks_file) = extras.jwks_file {
        yaml.push_str(&format!(
            "  jwt:\n    - issuer: {JWT_ISSUER}\n      audiences: [{JWT_AUDIENCE}]\n      \
             jwks_file: '{}'\n      algorithms: [RS256]\n      team_claim: team\n",
            jwks_file.display().to_string().replace('\'', "''")
        ));
    }
    if extras.rules {
        yaml.push_str("  rules:\n");
        for (name, action, when) in RULES {
            yaml.push_str(&format!(
                "    - {{ name: {name}, action: {action}, when: \"{when}\" }}\n"
            ));
        }
    }
    yaml
}
