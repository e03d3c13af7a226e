//! TLS for tests: a throwaway CA that issues server and client (mTLS) certificates, and a
//! TLS-terminating Envoy that stands in front of a plain-HTTP mock provider, so the https
//! provider path (TLS, SNI, certificate verification) runs for real.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

use crate::{free_ports, loopback, EnvoyProcess};

/// A certificate authority whose files live in a temporary directory.
pub struct TestCa {
    dir: tempfile::TempDir,
    issuer: Issuer<'static, KeyPair>,
    certs_issued: AtomicUsize,
}

/// A server certificate and its key, as PEM files.
pub struct ServerCert {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A client certificate (for mTLS) and its key, as PEM files.
pub struct ClientCert {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl ClientCert {
    /// The certificate PEM followed by the key PEM: what `reqwest::Identity::from_pem` (and
    /// `curl --cert`) take.
    pub fn identity_pem(&self) -> String {
        let cert = std::fs::read_to_string(&self.cert).expect("read client cert");
        let key = std::fs::read_to_string(&self.key).expect("read client key");
        let mut pem = cert;
        if !pem.ends_with('\n') {
            pem.push('\n');
        }
        pem.push_str(&key);
        pem
    }

    /// The certificate and key as a reqwest client identity (rustls).
    pub fn reqwest_identity(&self) -> reqwest::Identity {
        reqwest::Identity::from_pem(self.identity_pem().as_bytes())
            .expect("client certificate as a reqwest identity")
    }
}

impl TestCa {
    /// A new CA; its certificate is at [`TestCa::ca_file`].
    pub fn new(name: &str) -> TestCa {
        let dir = tempfile::Builder::new()
            .prefix("gantry-test-ca")
            .tempdir()
            .expect("create temp dir");
        let key = KeyPair::generate().expect("generate CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let cert = params.self_signed(&key).expect("self-sign CA");
        std::fs::write(dir.path().join("ca.pem"), cert.pem()).expect("write CA");
        TestCa {
            dir,
            issuer: Issuer::new(params, key),
            certs_issued: AtomicUsize::new(0),
        }
    }

    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// Issues a certificate for `dns_name`.
    pub fn issue(&self, dns_name: &str) -> ServerCert {
        let key = KeyPair::generate().expect("generate server key");
        let mut params = CertificateParams::new(vec![dns_name.to_string()]).expect("params");
        params.distinguished_name.push(DnType::CommonName, dns_name);
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("sign server cert");
        let cert_path = self.dir.path().join(format!("{dns_name}.pem"));
        let key_path = self.dir.path().join(format!("{dns_name}.key"));
        std::fs::write(&cert_path, cert.pem()).expect("write cert");
        std::fs::write(&key_path, key.serialize_pem()).expect("write key");
        ServerCert {
            cert: cert_path,
            key: key_path,
        }
    }

    /// The CA certificate PEM.
    pub fn ca_pem(&self) -> String {
        std::fs::read_to_string(self.ca_file()).expect("read CA")
    }

    /// The CA certificate as a reqwest root to trust.
    pub fn reqwest_ca_certificate(&self) -> reqwest::Certificate {
        reqwest::Certificate::from_pem(self.ca_pem().as_bytes()).expect("CA as a reqwest root")
    }

    /// A server certificate for a listener on loopback: SANs `DNS:localhost`, `IP:127.0.0.1`
    /// and `IP:::1`, CN `localhost`, EKU serverAuth. Clients may connect by IP or by name.
    /// Each call writes a new pair of files.
    pub fn issue_server_for_loopback(&self) -> ServerCert {
        let key = KeyPair::generate().expect("generate server key");
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![
            SanType::DnsName("localhost".try_into().expect("DNS SAN")),
            SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            SanType::IpAddress(IpAddr::V6(Ipv6Addr::LOCALHOST)),
        ];
        params
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("sign loopback server cert");
        let n = self.certs_issued.fetch_add(1, Ordering::SeqCst);
        let cert_path = self.dir.path().join(format!("loopback-server-{n}.pem"));
        let key_path = self.dir.path().join(format!("loopback-server-{n}.key"));
        std::fs::write(&cert_path, cert.pem()).expect("write cert");
        std::fs::write(&key_path, key.serialize_pem()).expect("write key");
        ServerCert {
            cert: cert_path,
            key: key_path,
        }
    }

    /// A client certificate with subject CN `common_name`, the single SAN `URI:<spiffe_id>`
    /// (e.g. `spiffe://gantry.test/ns/default/sa/app`) and EKU clientAuth. Each call writes a
    /// new pair of files.
    pub fn issue_client(&self, spiffe_id: &str, common_name: &str) -> ClientCert {
        let key = KeyPair::generate().expect("generate client key");
        let mut params = CertificateParams::default();
        let uri = spiffe_id
            .try_into()
            .unwrap_or_else(|e| panic!("{spiffe_id:?} is not a valid URI SAN: {e}"));
        params.subject_alt_names = vec![SanType::URI(uri)];
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("sign client cert");
        let n = self.certs_issued.fetch_add(1, Ordering::SeqCst);
        let cert_path = self.dir.path().join(format!("client-{n}.pem"));
        let key_path = self.dir.path().join(format!("client-{n}.key"));
        std::fs::write(&cert_path, cert.pem()).expect("write client cert");
        std::fs::write(&key_path, key.serialize_pem()).expect("write client key");
        ClientCert {
            cert: cert_path,
            key: key_path,
        }
    }
}

/// An Envoy that terminates TLS for `server_name` only (connections with another SNI, or
/// none, are refused) and forwards plain HTTP to `upstream`.
pub struct TlsFront {
    pub envoy: EnvoyProcess,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl TlsFront {
    pub fn start(upstream: SocketAddr, server_name: &str, cert: &ServerCert) -> TlsFront {
        let ports = free_ports(2);
        let (port, admin) = (ports[0], ports[1]);
        let dir = tempfile::Builder::new()
            .prefix("gantry-tls-front")
            .tempdir()
            .expect("create temp dir");
        let bootstrap = dir.path().join("envoy.yaml");
        std::fs::write(
            &bootstrap,
            tls_front_bootstrap(port, admin, upstream, server_name, &cert.cert, &cert.key),
        )
        .expect("write bootstrap");
        let envoy = EnvoyProcess::start(&bootstrap, loopback(admin));
        TlsFront {
            envoy,
            port,
            _dir: dir,
        }
    }
}

fn tls_front_bootstrap(
    port: u16,
    admin: u16,
    upstream: SocketAddr,
    server_name: &str,
    cert: &Path,
    key: &Path,
) -> String {
    format!(
        r#"admin:
  address: {{ socket_address: {{ address: 127.0.0.1, port_value: {admin} }} }}
static_resources:
  listeners:
  - name: tls_front
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }}
    listener_filters:
    - name: envoy.filters.listener.tls_inspector
      typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector }}
    filter_chains:
    - filter_chain_match: {{ server_names: ["{server_name}"] }}
      transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          common_tls_context:
            tls_certificates:
            - certificate_chain: {{ filename: "{cert}" }}
              private_key: {{ filename: "{key}" }}
      filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: tls_front
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes: [{{ match: {{ prefix: "/" }}, route: {{ cluster: upstream }} }}]
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }}
  clusters:
  - name: upstream
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: upstream
      endpoints:
      - lb_endpoints:
        - endpoint: {{ address: {{ socket_address: {{ address: {ip}, port_value: {upstream_port} }} }} }}
"#,
        cert = cert.display(),
        key = key.display(),
        ip = upstream.ip(),
        upstream_port = upstream.port(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use x509_parser::certificate::X509Certificate;
    use x509_parser::extensions::GeneralName;

    fn with_cert<T>(path: &Path, check: impl FnOnce(&X509Certificate<'_>) -> T) -> T {
        let bytes = std::fs::read(path).expect("read cert");
        let (_, pem) = x509_parser::pem::parse_x509_pem(&bytes).expect("PEM");
        let cert = pem.parse_x509().expect("X.509");
        check(&cert)
    }

    fn common_name(name: &x509_parser::x509::X509Name<'_>) -> Option<String> {
        name.iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .map(str::to_string)
    }

    fn sans(cert: &X509Certificate<'_>) -> Vec<String> {
        let san = cert
            .subject_alternative_name()
            .expect("valid SAN extension")
            .expect("a SAN extension");
        san.value
            .general_names
            .iter()
            .map(|name| match name {
                GeneralName::URI(uri) => format!("URI:{uri}"),
                GeneralName::DNSName(dns) => format!("DNS:{dns}"),
                GeneralName::IPAddress(ip) => match ip.len() {
                    4 => format!("IP:{}", Ipv4Addr::new(ip[0], ip[1], ip[2], ip[3])),
                    16 => format!(
                        "IP:{}",
                        Ipv6Addr::from(<[u8; 16]>::try_from(*ip).expect("16 bytes"))
                    ),
                    _ => format!("IP:?{ip:?}"),
                },
                other => format!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn client_cert_carries_the_spiffe_id_and_cn() {
        let ca = TestCa::new("gantry test CA");
        let spiffe_id = "spiffe://gantry.test/ns/default/sa/billing";
        let client = ca.issue_client(spiffe_id, "billing-client");
        let ca_subject = with_cert(&ca.ca_file(), |cert| common_name(cert.subject()));
        assert_eq!(ca_subject.as_deref(), Some("gantry test CA"));

        with_cert(&client.cert, |cert| {
            assert_eq!(
                common_name(cert.subject()).as_deref(),
                Some("billing-client")
            );
            assert_eq!(common_name(cert.issuer()), ca_subject);
            assert_eq!(sans(cert), vec![format!("URI:{spiffe_id}")]);
            let eku = cert
                .extended_key_usage()
                .expect("valid EKU")
                .expect("an EKU extension");
            assert!(eku.value.client_auth, "EKU lacks clientAuth");
            assert!(!eku.value.server_auth, "client cert also allows serverAuth");
            assert!(!cert.is_ca());
        });

        // A second client gets its own files.
        let other = ca.issue_client("spiffe://gantry.test/ns/default/sa/other", "other");
        assert_ne!(other.cert, client.cert);
        with_cert(&client.cert, |cert| {
            assert_eq!(
                sans(cert),
                vec![format!("URI:{spiffe_id}")],
                "the first client's cert was overwritten"
            );
        });
    }

    #[test]
    fn client_identity_pem_loads_into_reqwest() {
        let ca = TestCa::new("gantry test CA");
        let client = ca.issue_client("spiffe://gantry.test/sa/app", "app");
        let pem = client.identity_pem();
        let cert_at = pem
            .find("-----BEGIN CERTIFICATE-----")
            .expect("cert section");
        let key_at = pem
            .find("-----BEGIN PRIVATE KEY-----")
            .expect("key section");
        assert!(cert_at < key_at);
        reqwest::Client::builder()
            .identity(client.reqwest_identity())
            .add_root_certificate(ca.reqwest_ca_certificate())
            .build()
            .expect("a client with the identity");
        assert!(reqwest::Identity::from_pem(b"not a pem").is_err());
    }

    #[test]
    fn loopback_server_cert_names_ip_and_localhost() {
        let ca = TestCa::new("gantry test CA");
        let server = ca.issue_server_for_loopback();
        with_cert(&server.cert, |cert| {
            let sans = sans(cert);
            for expected in ["DNS:localhost", "IP:127.0.0.1", "IP:::1"] {
                assert!(
                    sans.iter().any(|s| s == expected),
                    "{expected} missing: {sans:?}"
                );
            }
            let eku = cert
                .extended_key_usage()
                .expect("valid EKU")
                .expect("an EKU extension");
            assert!(eku.value.server_auth);
        });
        // The existing API still names IPs as IP SANs.
        let by_ip = ca.issue("127.0.0.1");
        with_cert(&by_ip.cert, |cert| {
            assert_eq!(sans(cert), vec!["IP:127.0.0.1".to_string()]);
        });
    }
}
