//! The client certificate's identity, from what Envoy reports about an mTLS peer.

use x509_parser::extensions::GeneralName;
use x509_parser::pem::parse_x509_pem;

/// Who the TLS peer is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    /// Envoy's view: the URI SAN, else the DNS SAN, else the subject.
    pub principal: String,
    /// The certificate subject (RFC 4514 style), when the certificate was sent along.
    pub subject: String,
    /// The first URI SAN (a SPIFFE ID in a mesh), when the certificate was sent along.
    pub uri_san: Option<String>,
}

impl PeerIdentity {
    /// From Envoy's `source.principal` and URL-encoded `source.certificate`; `None` when the
    /// connection had no client certificate.
    pub fn from_envoy(principal: &str, certificate: &str) -> Option<PeerIdentity> {
        if principal.is_empty() && certificate.is_empty() {
            return None;
        }
        let (subject, uri_san) = parse_certificate(certificate).unwrap_or_default();
        Some(PeerIdentity {
            principal: principal.to_string(),
            subject,
            uri_san,
        })
    }

    /// The principal's subject: the URI SAN (SPIFFE ID) when present, else the certificate
    /// subject, else what Envoy reported.
    pub fn identity(&self) -> &str {
        if let Some(uri) = &self.uri_san {
            return uri;
        }
        if !self.subject.is_empty() {
            return &self.subject;
        }
        &self.principal
    }
}

fn parse_certificate(url_encoded_pem: &str) -> Option<(String, Option<String>)> {
    if url_encoded_pem.is_empty() {
        return None;
    }
    let pem_text = percent_decode(url_encoded_pem)?;
    let (_, pem) = parse_x509_pem(pem_text.as_bytes()).ok()?;
    let cert = pem.parse_x509().ok()?;
    let subject = cert.subject().to_string();
    let uri_san = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .and_then(|san| {
            san.value.general_names.iter().find_map(|name| match name {
                GeneralName::URI(uri) => Some(uri.to_string()),
                _ => None,
            })
        });
    Some((subject, uri_san))
}

fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}
