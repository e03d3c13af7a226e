//! AWS Signature Version 4 for requests to Bedrock: the canonical request, the string to sign,
//! the derived signing key and the `Authorization` header, following
//! <https://docs.aws.amazon.com/IAM/latest/UserGuide/create-signed-request.html>.
//!
//! Pure: the time is a parameter. Written here (with `sha2` and `hmac`) rather than taken from
//! the `aws-sigv4` crate, which brings `tokio` (through `aws-smithy-async`), a second
//! SHA-2/HMAC stack and the AWS SDK's runtime types into the policy core.

use std::collections::BTreeMap;
use std::fmt;
use std::time::SystemTime;

use hmac::{Hmac, Mac};
use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use sha2::{Digest, Sha256};

/// Every byte but the unreserved characters `A-Z a-z 0-9 - . _ ~` is percent-encoded (with
/// upper-case hex), as SigV4 and Bedrock's path labels require.
pub(crate) const AWS_URI_ENCODE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

const ALGORITHM: &str = "AWS4-HMAC-SHA256";
const AMZ_DATE_FORMAT: &str = "%Y%m%dT%H%M%SZ";

/// Long-term (`AKIA...`) or temporary (`ASIA...` with a session token) AWS credentials.
#[derive(Clone, PartialEq, Eq)]
pub struct AwsCredentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    /// The STS session token of temporary credentials, sent as `x-amz-security-token`.
    pub session_token: Option<String>,
}

impl fmt::Debug for AwsCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AwsCredentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .field(
                "session_token",
                &self.session_token.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// Signs one request and returns the headers to add to it: `authorization`, `x-amz-date` and,
/// with a session token, `x-amz-security-token`.
///
/// - `path_and_query` is the request target exactly as it is sent (already percent-encoded,
///   e.g. `/model/anthropic.claude-3-haiku-20240307-v1%3A0/converse`). The canonical URI
///   encodes each path segment once more (`%3A` becomes `%253A`), as every service but S3
///   expects.
/// - `headers` are the other headers to sign (e.g. `content-type`), sent unchanged; `host`,
///   `x-amz-date`, `x-amz-security-token` and `authorization` among them are ignored, since
///   `host` is its own parameter and the others come from this function. `x-amz-content-sha256`
///   is not added (Bedrock does not need it).
/// - A `timestamp` outside the years 0000–9999 signs as 1970-01-01 (and is refused by AWS).
#[allow(clippy::too_many_arguments)] // The brief's shape: every input of the signature, spelled out.
pub fn sign(
    method: &str,
    host: &str,
    path_and_query: &str,
    headers: &[(String, String)],
    body: &[u8],
    region: &str,
    service: &str,
    credentials: &AwsCredentials,
    timestamp: SystemTime,
) -> Vec<(String, String)> {
    let amz_date = format_amz_date(timestamp);
    let date = &amz_date[..8];

    let mut canonical_headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
    canonical_headers
        .entry("host".to_owned())
        .or_default()
        .push(canonical_header_value(host));
    for (name, value) in headers {
        let name = name.trim().to_ascii_lowercase();
        if matches!(
            name.as_str(),
            "host" | "x-amz-date" | "x-amz-security-token" | "authorization"
        ) {
            continue;
        }
        canonical_headers
            .entry(name)
            .or_default()
            .push(canonical_header_value(value));
    }
    canonical_headers
        .entry("x-amz-date".to_owned())
        .or_default()
        .push(amz_date.clone());
    if let Some(token) = &credentials.session_token {
        canonical_headers
            .entry("x-amz-security-token".to_owned())
            .or_default()
            .push(canonical_header_value(token));
    }
    let signed_headers = canonical_headers
        .keys()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join(";");
    let header_block: String = canonical_headers
        .iter()
        .map(|(name, values)| format!("{name}:{}\n", values.join(",")))
        .collect();

    let (path, query) = path_and_query
        .split_once('?')
        .unwrap_or((path_and_query, ""));
    let canonical_request = format!(
        "{}\n{}\n{}\n{header_block}\n{signed_headers}\n{}",
        method.to_ascii_uppercase(),
        canonical_uri(path),
        canonical_query(query),
        hex(&Sha256::digest(body)),
    );
    let scope = format!("{date}/{region}/{service}/aws4_request");
    let string_to_sign = format!(
        "{ALGORITHM}\n{amz_date}\n{scope}\n{}",
        hex(&Sha256::digest(canonical_request.as_bytes()))
    );
    tracing::debug!(%canonical_request, %string_to_sign, "sigv4");

    let secret = format!("AWS4{}", credentials.secret_access_key);
    let k_date = hmac_sha256(secret.as_bytes(), date.as_bytes());
    let k_region = hmac_sha256(&k_date, region.as_bytes());
    let k_service = hmac_sha256(&k_region, service.as_bytes());
    let k_signing = hmac_sha256(&k_service, b"aws4_request");
    let signature = hex(&hmac_sha256(&k_signing, string_to_sign.as_bytes()));

    let mut out = vec![
        (
            "authorization".to_owned(),
            format!(
                "{ALGORITHM} Credential={}/{scope}, SignedHeaders={signed_headers}, Signature={signature}",
                credentials.access_key_id
            ),
        ),
        ("x-amz-date".to_owned(), amz_date),
    ];
    if let Some(token) = &credentials.session_token {
        out.push(("x-amz-security-token".to_owned(), token.clone()));
    }
    out
}

/// `YYYYMMDDTHHMMSSZ` (UTC), the `x-amz-date` form.
pub fn format_amz_date(timestamp: SystemTime) -> String {
    jiff::Timestamp::try_from(timestamp)
        .unwrap_or(jiff::Timestamp::UNIX_EPOCH)
        .strftime(AMZ_DATE_FORMAT)
        .to_string()
}

/// Reads an `x-amz-date` value (`YYYYMMDDTHHMMSSZ`, UTC).
pub fn parse_amz_date(value: &str) -> Option<SystemTime> {
    if value.len() != 16 {
        return None;
    }
    let civil = jiff::civil::DateTime::strptime(AMZ_DATE_FORMAT, value).ok()?;
    let zoned = civil.to_zoned_datetime(jiff::tz::TimeZone::UTC).ok()?;
    SystemTime::try_from(zoned.timestamp()).ok()
}

/// Header values are trimmed and runs of spaces inside them become one space.
fn canonical_header_value(value: &str) -> String {
    value.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Each segment of the path as sent, URI-encoded again; `/` when the path is empty.
fn canonical_uri(path: &str) -> String {
    if path.is_empty() {
        return "/".to_owned();
    }
    path.split('/')
        .map(|segment| utf8_percent_encode(segment, AWS_URI_ENCODE).to_string())
        .collect::<Vec<_>>()
        .join("/")
}

/// Parameters sorted by name then value, each name and value decoded and URI-encoded with the
/// SigV4 rules; a parameter without `=` has an empty value.
fn canonical_query(query: &str) -> String {
    let normalise = |part: &str| {
        let decoded = percent_decode_str(part).decode_utf8_lossy();
        utf8_percent_encode(&decoded, AWS_URI_ENCODE).to_string()
    };
    let mut pairs: Vec<(String, String)> = query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            (normalise(name), normalise(value))
        })
        .collect();
    pairs.sort();
    pairs
        .iter()
        .map(|(name, value)| format!("{name}={value}"))
        .collect::<Vec<_>>()
        .join("&")
}

fn hmac_sha256(key: &[u8], data: &[u8]) -> [u8; 32] {
    match <Hmac<Sha256> as Mac>::new_from_slice(key) {
        Ok(mut mac) => {
            mac.update(data);
            mac.finalize().into_bytes().into()
        }
        // HMAC takes keys of any length; this arm is never taken.
        Err(_) => [0; 32],
    }
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        out.push(char::from(DIGITS[usize::from(byte >> 4)]));
        out.push(char::from(DIGITS[usize::from(byte & 0x0f)]));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    // The AWS Signature Version 4 test suite (once at
    // https://docs.aws.amazon.com/general/latest/gr/signature-v4-test-suite.html, kept in the
    // AWS SDKs' test fixtures): credentials, region, service and time shared by every case.
    const SUITE_HOST: &str = "example.amazonaws.com";
    const SUITE_SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
    const SUITE_TOKEN: &str = "AQoDYXdzEPT//////////wEXAMPLEtc764bNrC9SAPBSM22wDOk4x4HIZ8j4FZTwdQWLWsKWHGBuFqwAeMicRXmxfpSPfIeoIYRqTflfKD8YUuwthAx7mSEI/qkPpKPi/kMcGdQrmGdeehM4IC1NtBmUpp2wUE8phUZampKsburEDy0KPkyQDYwT7WZ0wq5VSXDvp75YU9HFvlRd8Tx6q6fE8YQcHNVXAkiY9q6d+xo0rKwT38xVqr7ZD0u0iPPkUL64lIZbqBAz+scqKmlzm8FDrypNC9Yjc8fPOLn9FX9KSYvKTr4rvx3iSIlTJabIQwj2ICCR/oLxBA==";

    fn suite_credentials(token: Option<&str>) -> AwsCredentials {
        AwsCredentials {
            access_key_id: "AKIDEXAMPLE".to_owned(),
            secret_access_key: SUITE_SECRET.to_owned(),
            session_token: token.map(str::to_owned),
        }
    }

    fn suite_time() -> SystemTime {
        parse_amz_date("20150830T123600Z").unwrap()
    }

    fn suite_sign(
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
        body: &[u8],
        token: Option<&str>,
    ) -> Vec<(String, String)> {
        let headers: Vec<(String, String)> = headers
            .iter()
            .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
            .collect();
        sign(
            method,
            SUITE_HOST,
            target,
            &headers,
            body,
            "us-east-1",
            "service",
            &suite_credentials(token),
            suite_time(),
        )
    }

    fn authorization(signed: &[(String, String)]) -> &str {
        &signed
            .iter()
            .find(|(name, _)| name == "authorization")
            .unwrap()
            .1
    }

    const SCOPE: &str =
        "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request";

    #[test]
    fn get_vanilla() {
        let signed = suite_sign("GET", "/", &[], b"", None);
        assert_eq!(
            authorization(&signed),
            format!("{SCOPE}, SignedHeaders=host;x-amz-date, Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31")
        );
        assert_eq!(
            signed[1],
            ("x-amz-date".to_owned(), "20150830T123600Z".to_owned())
        );
        assert_eq!(signed.len(), 2);
    }

    #[test]
    fn post_vanilla() {
        let signed = suite_sign("POST", "/", &[], b"", None);
        assert_eq!(
            authorization(&signed),
            format!("{SCOPE}, SignedHeaders=host;x-amz-date, Signature=5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b")
        );
    }

    #[test]
    fn get_vanilla_query_order_key_case() {
        let signed = suite_sign("GET", "/?Param2=value2&Param1=value1", &[], b"", None);
        assert_eq!(
            authorization(&signed),
            format!("{SCOPE}, SignedHeaders=host;x-amz-date, Signature=b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500")
        );
    }

    #[test]
    fn post_header_value_case() {
        let signed = suite_sign("POST", "/", &[("My-Header1", "VALUE1")], b"", None);
        assert_eq!(
            authorization(&signed),
            format!("{SCOPE}, SignedHeaders=host;my-header1;x-amz-date, Signature=cdbc9802e29d2942e5e10b5bccfdd67c5f22c7c4e8ae67b53629efa58b974b7d")
        );
    }

    #[test]
    fn get_header_value_trim() {
        let signed = suite_sign(
            "GET",
            "/",
            &[("My-Header1", " value1"), ("My-Header2", " \"a   b   c\"")],
            b"",
            None,
        );
        assert_eq!(
            authorization(&signed),
            format!("{SCOPE}, SignedHeaders=host;my-header1;my-header2;x-amz-date, Signature=acc3ed3afb60bb290fc8d2dd0098b9911fcaa05412b367055dee359757a9c736")
        );
    }

    /// A signed body: the payload hash is the SHA-256 of `Param1=value1`.
    #[test]
    fn post_x_www_form_urlencoded() {
        let signed = suite_sign(
            "POST",
            "/",
            &[("Content-Type", "application/x-www-form-urlencoded")],
            b"Param1=value1",
            None,
        );
        assert_eq!(
            authorization(&signed),
            format!("{SCOPE}, SignedHeaders=content-type;host;x-amz-date, Signature=ff11897932ad3f4e8b18135d722051e5ac45fc38421b1da7b9d196a0fe09473a")
        );
    }

    /// Temporary credentials: the session token is signed (`post-sts-header-after`).
    #[test]
    fn post_sts_header_after() {
        let signed = suite_sign("POST", "/", &[], b"", Some(SUITE_TOKEN));
        assert_eq!(
            authorization(&signed),
            format!("{SCOPE}, SignedHeaders=host;x-amz-date;x-amz-security-token, Signature=85d96828115b5dc0cfc3bd16ad9e210dd772bbebba041836c64533a82be05ead")
        );
        assert_eq!(
            signed[2],
            ("x-amz-security-token".to_owned(), SUITE_TOKEN.to_owned())
        );
    }

    #[test]
    fn get_unreserved() {
        let signed = suite_sign(
            "GET",
            "/-._~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz",
            &[],
            b"",
            None,
        );
        assert_eq!(
            authorization(&signed),
            format!("{SCOPE}, SignedHeaders=host;x-amz-date, Signature=07ef7494c76fa4850883e2b006601f940f8a34d404d0cfa977f52a65bbf5f24f")
        );
    }

    /// Bedrock's canonical URI encodes the already-encoded model id again, as the
    /// service's own "canonical string should have been" error messages show
    /// (`/model/us.anthropic.claude-sonnet-4-20250514-v1%253A0/converse-stream`).
    #[test]
    fn bedrock_paths_are_encoded_twice() {
        assert_eq!(
            canonical_uri("/model/us.anthropic.claude-sonnet-4-20250514-v1%3A0/converse-stream"),
            "/model/us.anthropic.claude-sonnet-4-20250514-v1%253A0/converse-stream"
        );
        assert_eq!(
            canonical_uri("/model/arn%3Aaws%3Abedrock%3Aus-east-1%3A123456789012%3Ainference-profile%2Fus.x-v1%3A0/converse"),
            "/model/arn%253Aaws%253Abedrock%253Aus-east-1%253A123456789012%253Ainference-profile%252Fus.x-v1%253A0/converse"
        );
        assert_eq!(canonical_uri(""), "/");
        assert_eq!(canonical_query("b=2&a=1&a=0&c"), "a=0&a=1&b=2&c=");
        assert_eq!(canonical_query("x=a%20b&y=a+b"), "x=a%20b&y=a%2Bb");
    }

    #[test]
    fn a_bedrock_request_signs_and_changes_with_every_input() {
        let credentials = AwsCredentials {
            access_key_id: "AKIAIOSFODNN7EXAMPLE".to_owned(),
            secret_access_key: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY".to_owned(),
            session_token: None,
        };
        let headers = vec![("content-type".to_owned(), "application/json".to_owned())];
        let base = |path: &str, body: &[u8], region: &str, time: &str| {
            sign(
                "POST",
                "bedrock-runtime.us-east-1.amazonaws.com",
                path,
                &headers,
                body,
                region,
                "bedrock",
                &credentials,
                parse_amz_date(time).unwrap(),
            )
        };
        let path = "/model/anthropic.claude-3-haiku-20240307-v1%3A0/converse";
        let one = base(path, b"{}", "us-east-1", "20240601T101500Z");
        let auth = authorization(&one);
        assert!(auth.starts_with("AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20240601/us-east-1/bedrock/aws4_request, SignedHeaders=content-type;host;x-amz-date, Signature="));
        let signature = auth.rsplit('=').next().unwrap();
        assert_eq!(signature.len(), 64);
        assert!(signature.bytes().all(|b| b.is_ascii_hexdigit()));
        // Deterministic, and every input matters.
        assert_eq!(one, base(path, b"{}", "us-east-1", "20240601T101500Z"));
        for other in [
            base(path, b"{ }", "us-east-1", "20240601T101500Z"),
            base(path, b"{}", "us-west-2", "20240601T101500Z"),
            base(path, b"{}", "us-east-1", "20240601T101501Z"),
            base(
                "/model/anthropic.claude-3-haiku-20240307-v1%3A0/converse-stream",
                b"{}",
                "us-east-1",
                "20240601T101500Z",
            ),
        ] {
            assert_ne!(authorization(&other), auth);
        }
    }

    #[test]
    fn amz_dates_round_trip() {
        let time = parse_amz_date("20150830T123600Z").unwrap();
        assert_eq!(
            time.duration_since(SystemTime::UNIX_EPOCH)
                .unwrap()
                .as_secs(),
            1_440_938_160
        );
        assert_eq!(format_amz_date(time), "20150830T123600Z");
        assert_eq!(parse_amz_date("2015-08-30T12:36:00Z"), None);
        assert_eq!(parse_amz_date("20150830T123600"), None);
        assert_eq!(parse_amz_date("20151330T123600Z"), None);
    }

    #[test]
    fn credentials_debug_hides_secrets() {
        let text = format!("{:?}", suite_credentials(Some("tok")));
        assert!(text.contains("AKIDEXAMPLE"));
        assert!(!text.contains(SUITE_SECRET));
        assert!(!text.contains("tok\""));
    }
}
