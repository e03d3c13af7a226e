//! A provider's base URL, parsed once into what Envoy's cluster and route need.

use std::net::{IpAddr, SocketAddr};

/// `http(s)://host[:port][/base/path]`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderEndpoint {
    pub tls: bool,
    /// Host name or IP literal (without brackets).
    pub host: String,
    pub port: u16,
    /// Whether the port was written in the URL (it then belongs in the `Host` header).
    pub explicit_port: bool,
    /// Path prefix to put in front of client paths; empty or starting with `/`, never ending
    /// with `/`.
    pub base_path: String,
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum EndpointError {
    #[error("'{0}' is not a URL (expected http(s)://host[:port][/path])")]
    NotAUrl(String),
    #[error("scheme '{0}' is not supported (use http or https)")]
    Scheme(String),
    #[error("'{0}' has no host")]
    NoHost(String),
    #[error("'{0}' must not carry a query, fragment or credentials")]
    Extras(String),
}

impl ProviderEndpoint {
    pub fn parse(text: &str) -> Result<ProviderEndpoint, EndpointError> {
        let url = url::Url::parse(text).map_err(|_| EndpointError::NotAUrl(text.to_string()))?;
        let tls = match url.scheme() {
            "http" => false,
            "https" => true,
            other => return Err(EndpointError::Scheme(other.to_string())),
        };
        if url.query().is_some()
            || url.fragment().is_some()
            || !url.username().is_empty()
            || url.password().is_some()
        {
            return Err(EndpointError::Extras(text.to_string()));
        }
        let host = match url.host() {
            Some(url::Host::Domain(d)) => d.to_string(),
            Some(url::Host::Ipv4(ip)) => ip.to_string(),
            Some(url::Host::Ipv6(ip)) => ip.to_string(),
            None => return Err(EndpointError::NoHost(text.to_string())),
        };
        let explicit_port = url.port().is_some();
        let port = url
            .port_or_known_default()
            .unwrap_or(if tls { 443 } else { 80 });
        let base_path = url.path().trim_end_matches('/').to_string();
        Ok(ProviderEndpoint {
            tls,
            host,
            port,
            explicit_port,
            base_path,
        })
    }

    pub fn ip(&self) -> Option<IpAddr> {
        self.host.parse().ok()
    }

    /// The address the built-in mock listens on, if this endpoint can host it.
    pub fn mock_listen_addr(&self) -> Option<SocketAddr> {
        let ip = self.ip()?;
        (!self.tls && ip.is_loopback() && self.explicit_port)
            .then(|| SocketAddr::new(ip, self.port))
    }

    /// The `Host`/`:authority` the provider expects.
    pub fn authority(&self) -> String {
        let host = match self.ip() {
            Some(IpAddr::V6(_)) => format!("[{}]", self.host),
            _ => self.host.clone(),
        };
        if self.explicit_port {
            format!("{host}:{}", self.port)
        } else {
            host
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_base_paths_ports_and_tls() {
        let e = ProviderEndpoint::parse("https://api.groq.com/openai/").unwrap();
        assert!(e.tls);
        assert_eq!(
            (e.host.as_str(), e.port, e.base_path.as_str()),
            ("api.groq.com", 443, "/openai")
        );
        assert_eq!(e.authority(), "api.groq.com");
        let e = ProviderEndpoint::parse("http://127.0.0.1:18080").unwrap();
        assert_eq!(e.base_path, "");
        assert_eq!(
            e.mock_listen_addr(),
            Some("127.0.0.1:18080".parse().unwrap())
        );
        assert_eq!(e.authority(), "127.0.0.1:18080");
    }

    #[test]
    fn rejects_what_envoy_cannot_use() {
        assert!(matches!(
            ProviderEndpoint::parse("ftp://x"),
            Err(EndpointError::Scheme(_))
        ));
        assert!(matches!(
            ProviderEndpoint::parse("nonsense"),
            Err(EndpointError::NotAUrl(_))
        ));
        assert!(matches!(
            ProviderEndpoint::parse("https://h/?a=1"),
            Err(EndpointError::Extras(_))
        ));
        assert!(ProviderEndpoint::parse("http://example.com:80")
            .unwrap()
            .mock_listen_addr()
            .is_none());
    }
}
