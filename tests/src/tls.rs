//! TLS for tests: a throwaway CA that issues server certificates, and a TLS-terminating Envoy
//! that stands in front of a plain-HTTP mock provider, so the https provider path (TLS, SNI,
//! certificate verification) runs for real.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};

use crate::{free_ports, loopback, EnvoyProcess};

/// A certificate authority whose files live in a temporary directory.
pub struct TestCa {
    dir: tempfile::TempDir,
    issuer: Issuer<'static, KeyPair>,
}

/// A server certificate and its key, as PEM files.
pub struct ServerCert {
    pub cert: PathBuf,
    pub key: PathBuf,
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
