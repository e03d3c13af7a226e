//! Push-notification webhook URLs: an agent POSTs task updates to whatever URL a client
//! names, so an unchecked URL lets any client make the agent call into the network behind it
//! (SSRF). A URL passes when its scheme is allowed, it carries no credentials, its host is on
//! the allow-list (when there is one) and every address it stands for is public.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::config::PushNotificationsSection;

/// The compiled `a2a.push_notifications`.
#[derive(Debug, Clone, Default)]
pub struct WebhookPolicy {
    /// Exact host names, lower case.
    exact: Vec<String>,
    /// `*.domain` patterns as `.domain`.
    suffixes: Vec<String>,
    allow_private: bool,
    allow_http: bool,
}

/// The first look at a URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WebhookCheck {
    Allowed,
    Refused(String),
    /// A host name whose addresses decide: resolve it, then [`WebhookPolicy::check_addresses`].
    Resolve {
        host: String,
        port: u16,
    },
}

impl WebhookPolicy {
    pub fn compile(section: &PushNotificationsSection) -> WebhookPolicy {
        let mut policy = WebhookPolicy {
            allow_private: section.allow_private_networks,
            allow_http: section.allow_http,
            ..WebhookPolicy::default()
        };
        for host in &section.allowed_hosts {
            let host = host.value.to_ascii_lowercase();
            match host.strip_prefix('*') {
                Some(suffix) => policy.suffixes.push(suffix.to_string()),
                None => policy.exact.push(host),
            }
        }
        policy
    }

    fn listed(&self, host: &str) -> bool {
        self.exact.iter().any(|h| h == host)
            || self
                .suffixes
                .iter()
                .any(|s| host.ends_with(s.as_str()) && host.len() > s.len())
    }

    /// Checks what the URL itself says.
    pub fn check_url(&self, url: &str) -> WebhookCheck {
        let refused = |why: String| WebhookCheck::Refused(why);
        let (scheme, rest) = match url.split_once("://") {
            Some((s, rest)) => (s.to_ascii_lowercase(), rest),
            None => return refused(format!("'{url}' is not an absolute http(s) URL")),
        };
        let default_port = match scheme.as_str() {
            "https" => 443,
            "http" if self.allow_http => 80,
            "http" => return refused("only https:// webhooks are allowed".into()),
            other => return refused(format!("scheme '{other}' is not allowed (use https)")),
        };
        let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
        if authority.contains('@') {
            return refused("a webhook URL must not carry credentials".into());
        }
        let (host, port) = match split_host_port(authority) {
            Some(hp) => hp,
            None => return refused(format!("'{url}' has no valid host")),
        };
        let port = port.unwrap_or(default_port);
        let host = host.to_ascii_lowercase();
        let has_list = !(self.exact.is_empty() && self.suffixes.is_empty());
        if has_list && !self.listed(&host) {
            return refused(format!(
                "host '{host}' is not in a2a.push_notifications.allowed_hosts"
            ));
        }
        if let Ok(ip) = host.parse::<IpAddr>() {
            return match non_public(ip) {
                Some(kind) if !self.allow_private => refused(format!("{ip} is a {kind} address")),
                _ => WebhookCheck::Allowed,
            };
        }
        if !is_host_name(&host) {
            return refused(format!("'{host}' is not a valid host name"));
        }
        if self.allow_private {
            return WebhookCheck::Allowed;
        }
        if host == "localhost"
            || [
                ".localhost",
                ".local",
                ".internal",
                ".localdomain",
                ".home.arpa",
            ]
            .iter()
            .any(|s| host.ends_with(s))
        {
            return refused(format!("'{host}' is a local host name"));
        }
        WebhookCheck::Resolve { host, port }
    }

    /// Checks the addresses a host name resolved to: all of them must be public (one private
    /// answer is enough for the agent to be steered there).
    pub fn check_addresses(&self, host: &str, addresses: &[IpAddr]) -> Result<(), String> {
        if self.allow_private {
            return Ok(());
        }
        if addresses.is_empty() {
            return Err(format!("'{host}' does not resolve"));
        }
        for ip in addresses {
            if let Some(kind) = non_public(*ip) {
                return Err(format!("'{host}' resolves to {ip}, a {kind} address"));
            }
        }
        Ok(())
    }
}

fn split_host_port(authority: &str) -> Option<(&str, Option<u16>)> {
    if let Some(rest) = authority.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p.parse().ok()?),
            None if after.is_empty() => None,
            None => return None,
        };
        return Some((host, port));
    }
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) => (h, Some(p.parse().ok()?)),
        None => (authority, None),
    };
    (!host.is_empty()).then_some((host, port))
}

fn is_host_name(host: &str) -> bool {
    host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// What kind of non-public address `ip` is, if it is one.
pub fn non_public(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => non_public_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return non_public_v4(v4);
            }
            let s = v6.segments();
            // NAT64 (64:ff9b::/96) carries an IPv4 address in its last 32 bits.
            if s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0, 0, 0, 0] {
                let v4 =
                    Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
                return non_public_v4(v4);
            }
            if v6.is_loopback() {
                Some("loopback")
            } else if v6.is_unspecified() {
                Some("unspecified")
            } else if (s[0] & 0xfe00) == 0xfc00 {
                Some("unique-local (private)")
            } else if (s[0] & 0xffc0) == 0xfe80 {
                Some("link-local")
            } else if v6.is_multicast() {
                Some("multicast")
            } else if s[0] == 0x2001 && s[1] == 0x0db8 {
                Some("documentation")
            } else if v6 == Ipv6Addr::from([0u8; 16]) {
                Some("unspecified")
            } else {
                None
            }
        }
    }
}

fn non_public_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let o = ip.octets();
    if ip.is_loopback() {
        Some("loopback")
    } else if ip.is_private() {
        Some("private")
    } else if ip.is_link_local() {
        Some("link-local (cloud metadata)")
    } else if ip.is_unspecified() || o[0] == 0 {
        Some("unspecified")
    } else if o[0] == 100 && (o[1] & 0xc0) == 64 {
        Some("carrier-grade NAT (shared)")
    } else if ip.is_broadcast() || ip.is_multicast() || o[0] >= 240 {
        Some("multicast or reserved")
    } else if ip.is_documentation() || (o[0] == 198 && (o[1] & 0xfe) == 18) {
        Some("documentation or benchmarking")
    } else if o[0] == 192 && o[1] == 0 && o[2] == 0 {
        Some("IETF protocol assignment")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(yaml: &str) -> WebhookPolicy {
        let section: PushNotificationsSection = serde_saphyr::from_str(yaml).unwrap();
        WebhookPolicy::compile(&section)
    }

    fn refused(check: WebhookCheck) -> String {
        match check {
            WebhookCheck::Refused(why) => why,
            other => panic!("not refused: {other:?}"),
        }
    }

    #[test]
    fn private_and_metadata_addresses_are_refused_by_default() {
        let p = policy("{}");
        for (url, why) in [
            ("http://127.0.0.1:9/hook", "loopback"),
            ("http://10.1.2.3/hook", "private"),
            ("http://169.254.169.254/latest/meta-data", "link-local"),
            ("http://[::1]:8080/", "loopback"),
            ("http://[::ffff:192.168.0.1]/", "private"),
            ("http://[fd00::1]/", "unique-local"),
            ("http://[64:ff9b::a00:1]/", "private"),
            ("http://0.0.0.0/", "unspecified"),
            ("http://100.64.0.1/", "carrier-grade"),
            ("http://localhost:8080/", "local host name"),
            ("http://metadata.google.internal/", "local host name"),
            ("http://user:pw@example.com/", "credentials"),
            ("ftp://example.com/", "scheme 'ftp'"),
            ("/relative", "absolute"),
        ] {
            let message = refused(p.check_url(url));
            assert!(message.contains(why), "{url}: {message}");
        }
        assert_eq!(
            p.check_url("https://203.0.113.9/x"),
            WebhookCheck::Refused("203.0.113.9 is a documentation or benchmarking address".into())
        );
        assert_eq!(p.check_url("https://8.8.8.8/x"), WebhookCheck::Allowed);
        // The section's defaults (no `push_notifications` at all) are the same.
        let defaults = WebhookPolicy::compile(&PushNotificationsSection::default());
        assert_eq!(
            defaults.check_url("http://8.8.8.8/x"),
            WebhookCheck::Allowed
        );
        assert!(matches!(
            defaults.check_url("http://10.0.0.1/x"),
            WebhookCheck::Refused(_)
        ));
        assert_eq!(
            p.check_url("https://Hooks.Example.com:8443/x?y"),
            WebhookCheck::Resolve {
                host: "hooks.example.com".into(),
                port: 8443
            }
        );
    }

    #[test]
    fn resolved_addresses_must_all_be_public() {
        let p = policy("{}");
        let public: IpAddr = "93.184.216.34".parse().unwrap();
        let private: IpAddr = "192.168.1.5".parse().unwrap();
        assert!(p.check_addresses("a.example", &[public]).is_ok());
        let err = p
            .check_addresses("a.example", &[public, private])
            .unwrap_err();
        assert!(err.contains("resolves to 192.168.1.5"), "{err}");
        assert!(p.check_addresses("a.example", &[]).is_err());
    }

    #[test]
    fn an_allow_list_admits_only_its_hosts_and_settings_relax_the_defaults() {
        let p = policy("allowed_hosts: [hooks.example.com, '*.corp.example']\n");
        assert!(matches!(
            p.check_url("https://hooks.example.com/x"),
            WebhookCheck::Resolve { .. }
        ));
        assert!(matches!(
            p.check_url("https://a.corp.example/x"),
            WebhookCheck::Resolve { .. }
        ));
        assert!(refused(p.check_url("https://corp.example/x")).contains("allowed_hosts"));
        assert!(refused(p.check_url("https://evil.example/x")).contains("allowed_hosts"));

        let p = policy("allow_private_networks: true\nallow_http: false\n");
        assert_eq!(p.check_url("https://127.0.0.1/x"), WebhookCheck::Allowed);
        assert_eq!(p.check_url("https://svc.internal/x"), WebhookCheck::Allowed);
        assert!(refused(p.check_url("http://8.8.8.8/x")).contains("https"));
    }
}
