//! The `admin_api` section: Gantry's own gRPC admin API (`gantry.admin.v1`), where API keys,
//! budgets and metadata are managed at runtime and spend is queried.

use std::collections::HashMap;

use serde::Deserialize;
use serde_saphyr::Spanned;

use super::{check_name, check_socket_addr, issue, ConfigIssue};
use crate::auth::api_keys::KeyHash;

/// Where the admin API listens unless configured.
pub const DEFAULT_ADMIN_API_LISTEN: &str = "127.0.0.1:10005";
/// How often each replica asks the store whether admin records changed, unless configured.
pub const DEFAULT_ADMIN_SYNC_INTERVAL_MS: u64 = 250;
/// How long a rotated key's previous secret keeps working unless the rotation says otherwise.
pub const DEFAULT_ROTATION_GRACE_SECS: u64 = 86_400;

/// The admin API. It needs the `governance` section: what it creates is kept in the store.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminApiSection {
    /// `IP:port` on loopback (default `127.0.0.1:10005`). Reach it from elsewhere through an
    /// SSH tunnel or `kubectl port-forward`.
    #[serde(default)]
    pub listen: Option<Spanned<String>>,
    /// Admin credentials: a call must carry one of these tokens (`authorization: Bearer
    /// <token>`). Only their SHA-256 digests are written here (`gantry key new` prints one).
    pub tokens: Vec<AdminTokenSection>,
    /// How often each replica polls the store for changes made on other replicas, in ms
    /// (default 250): a change takes effect everywhere within this plus one store call.
    #[serde(default)]
    pub sync_interval_ms: Option<u64>,
    /// How long a rotated key's previous secret keeps working, seconds (default 86400).
    #[serde(default)]
    pub rotation_grace_secs: Option<u64>,
}

/// One admin credential.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminTokenSection {
    /// Who uses it: the audit log's `actor`.
    pub name: Spanned<String>,
    /// `sha256:<64 hex digits>` of the token.
    pub hash: Spanned<String>,
}

impl AdminApiSection {
    pub fn listen_addr(&self) -> std::net::SocketAddr {
        self.listen
            .as_ref()
            .and_then(|l| l.value.parse().ok())
            .unwrap_or_else(|| {
                DEFAULT_ADMIN_API_LISTEN
                    .parse()
                    .unwrap_or(std::net::SocketAddr::from(([127, 0, 0, 1], 10005)))
            })
    }

    pub fn sync_interval(&self) -> std::time::Duration {
        std::time::Duration::from_millis(
            self.sync_interval_ms
                .unwrap_or(DEFAULT_ADMIN_SYNC_INTERVAL_MS),
        )
    }

    pub fn rotation_grace_secs(&self) -> u64 {
        self.rotation_grace_secs
            .unwrap_or(DEFAULT_ROTATION_GRACE_SECS)
    }

    /// Checks the section; `has_governance` says whether the config has a store to keep
    /// records in. Returns the listen address when valid (for port clash checks).
    pub(super) fn validate(
        &self,
        has_governance: bool,
        issues: &mut Vec<ConfigIssue>,
    ) -> Option<std::net::SocketAddr> {
        if !has_governance {
            issues.push(issue(
                "admin_api",
                0,
                "needs a governance section: keys and budgets created at runtime are kept in governance.store (add `governance: {}` for the embedded store)".into(),
            ));
        }
        let addr = match &self.listen {
            Some(listen) => {
                let addr = check_socket_addr(listen, "admin_api.listen", issues);
                if let Some(addr) = addr.filter(|a| !a.ip().is_loopback()) {
                    issues.push(issue(
                        "admin_api.listen",
                        listen.referenced.line(),
                        format!("'{addr}' is not a loopback address: the admin API can create keys and change budgets, keep it on 127.0.0.1 or ::1 and reach it through an SSH tunnel or kubectl port-forward"),
                    ));
                }
                addr
            }
            None => Some(self.listen_addr()),
        };
        if self.tokens.is_empty() {
            issues.push(issue(
                "admin_api.tokens",
                0,
                "needs at least one admin token (`gantry key new --name ops` prints a token and its hash)".into(),
            ));
        }
        let mut names: HashMap<&str, usize> = HashMap::new();
        let mut hashes: HashMap<String, usize> = HashMap::new();
        for (i, token) in self.tokens.iter().enumerate() {
            let path = format!("admin_api.tokens[{i}]");
            check_name(&token.name, &format!("{path}.name"), issues);
            if let Some(first) = names.insert(token.name.value.as_str(), i) {
                issues.push(issue(
                    &format!("{path}.name"),
                    token.name.referenced.line(),
                    format!(
                        "duplicate token name '{}' (first declared at admin_api.tokens[{first}])",
                        token.name.value
                    ),
                ));
            }
            match KeyHash::parse(&token.hash.value) {
                Ok(hash) => {
                    if let Some(first) = hashes.insert(hash.to_string(), i) {
                        issues.push(issue(
                            &format!("{path}.hash"),
                            token.hash.referenced.line(),
                            format!(
                                "the same hash is already declared at admin_api.tokens[{first}]"
                            ),
                        ));
                    }
                }
                Err(e) => issues.push(issue(
                    &format!("{path}.hash"),
                    token.hash.referenced.line(),
                    e.to_string(),
                )),
            }
        }
        if self.sync_interval_ms == Some(0) {
            issues.push(issue(
                "admin_api.sync_interval_ms",
                0,
                "must be at least 1".into(),
            ));
        }
        addr
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{ConfigError, ConfigFile};

    const HASH: &str = "sha256:e28c8ac9ad20bde3e20e98e37c6a662d0dba23b63b44ae7c24e719011d76c6ef";

    fn config(admin_api: &str, governance: bool) -> Result<ConfigFile, ConfigError> {
        let governance = if governance { "governance: {}\n" } else { "" };
        ConfigFile::parse(&format!(
            "listen: 127.0.0.1:10000\n{governance}admin_api:\n{admin_api}"
        ))
    }

    fn problems(admin_api: &str, governance: bool) -> String {
        match config(admin_api, governance) {
            Err(ConfigError::Invalid(issues)) => issues
                .iter()
                .map(|i| format!("{}: {}", i.path, i.message))
                .collect::<Vec<_>>()
                .join("\n"),
            other => panic!("not refused: {other:?}"),
        }
    }

    #[test]
    fn a_valid_section_and_its_defaults() {
        let parsed = config(
            &format!("  tokens: [{{ name: ops, hash: '{HASH}' }}]\n"),
            true,
        )
        .unwrap();
        let section = parsed.admin_api.unwrap();
        assert_eq!(section.listen_addr().to_string(), "127.0.0.1:10005");
        assert_eq!(section.sync_interval().as_millis(), 250);
        assert_eq!(section.rotation_grace_secs(), 86_400);
        let policy = crate::admin::AdminApiPolicy::compile(&section);
        assert_eq!(
            policy.actor("gat_demo_admin_token_do_not_use_in_production"),
            Some("ops")
        );
        assert_eq!(policy.actor("gat_wrong"), None);
    }

    #[test]
    fn every_problem_is_named() {
        let tokens = format!("  tokens: [{{ name: ops, hash: '{HASH}' }}]\n");
        assert!(problems(&tokens, false).contains("admin_api: needs a governance section"));
        let remote = problems(&format!("  listen: 0.0.0.0:10005\n{tokens}"), true);
        assert!(
            remote.contains("admin_api.listen: '0.0.0.0:10005' is not a loopback address"),
            "{remote}"
        );
        assert!(problems("  tokens: []\n", true)
            .contains("admin_api.tokens: needs at least one admin token"));
        let bad = problems(
            &format!(
                "  tokens:\n    - {{ name: ops, hash: '{HASH}' }}\n    - {{ name: ops, hash: 'md5:x' }}\n    - {{ name: 'a b', hash: '{HASH}' }}\n"
            ),
            true,
        );
        assert!(
            bad.contains("admin_api.tokens[1].name: duplicate token name 'ops'"),
            "{bad}"
        );
        assert!(
            bad.contains("admin_api.tokens[1].hash: 'md5:x' is not a key hash"),
            "{bad}"
        );
        assert!(
            bad.contains("admin_api.tokens[2].name: 'a b' is not a valid name"),
            "{bad}"
        );
        assert!(bad.contains("admin_api.tokens[2].hash: the same hash is already declared at admin_api.tokens[0]"), "{bad}");
        let clash = problems(&format!("  listen: 127.0.0.1:10000\n{tokens}"), true);
        assert!(
            clash.contains("admin_api.listen: port 10000 is already used by listen"),
            "{clash}"
        );
        assert!(problems(&format!("{tokens}  sync_interval_ms: 0\n"), true)
            .contains("admin_api.sync_interval_ms: must be at least 1"));
    }
}
