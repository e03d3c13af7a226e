//! Agent cards as clients see them through the gateway: every interface URL points at the
//! gateway (1.0 `supportedInterfaces[].url`; 0.3 `url` and `additionalInterfaces[].url`),
//! interfaces the gateway cannot police (gRPC) are left out, the security schemes are the
//! gateway's own, skills the caller may not use are left out, and signatures, which no longer
//! match, are removed (and the card flagged) or the card is refused.

use serde_json::{json, Map, Value};

use crate::config::{A2aSecuritySection, AuthSection, SignedCards};

/// Where A2A 0.3 and later serve the public card.
pub use crate::config::DEFAULT_CARD_PATH as WELL_KNOWN_CARD_PATH;

/// The extension entry that flags a card whose signatures the gateway removed.
pub const UNSIGNED_EXTENSION_URI: &str = "urn:gantry:a2a:card-rewritten-unsigned";

/// The security a rewritten card advertises, in both card versions' forms.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CardSecurity {
    v1_schemes: Map<String, Value>,
    /// A2A 1.0 `securityRequirements`: `[{"schemes": {name: {"list": []}}}]`.
    v1_requirements: Vec<Value>,
    v03_schemes: Map<String, Value>,
    /// A2A 0.3 `security`: `[{name: []}]`.
    v03_security: Vec<Value>,
}

impl CardSecurity {
    /// From `a2a.security`, else from the `auth` section (mTLS only when the listener asks for
    /// client certificates), else none (the gateway asks nothing of callers).
    pub fn compile(
        section: Option<&A2aSecuritySection>,
        auth: Option<&AuthSection>,
        client_certificates: bool,
    ) -> Self {
        let (schemes, requirements) = match (section, auth) {
            (Some(section), _) => {
                let requirements = if section.requirements.is_empty() {
                    section.schemes.keys().map(|k| vec![k.clone()]).collect()
                } else {
                    section.requirements.clone()
                };
                (section.schemes.clone(), requirements)
            }
            (None, Some(auth)) => {
                let mut schemes = Map::new();
                if !auth.api_keys.is_empty() {
                    schemes.insert(
                        "gantry_api_key".into(),
                        json!({ "apiKeySecurityScheme": {
                            "location": "header",
                            "name": "x-api-key",
                            "description": "A Gantry API key (also accepted as 'Authorization: Bearer <key>')",
                        }}),
                    );
                }
                if !auth.jwt.is_empty() {
                    schemes.insert(
                        "gantry_jwt".into(),
                        json!({ "httpAuthSecurityScheme": {
                            "scheme": "Bearer",
                            "bearerFormat": "JWT",
                            "description": "A JWT from an issuer the gateway trusts",
                        }}),
                    );
                }
                if auth.mtls_identity && client_certificates {
                    schemes.insert(
                        "gantry_mtls".into(),
                        json!({ "mtlsSecurityScheme": {
                            "description": "A client certificate the gateway trusts",
                        }}),
                    );
                }
                let requirements = schemes.keys().map(|k| vec![k.clone()]).collect();
                (schemes, requirements)
            }
            (None, None) => (Map::new(), Vec::new()),
        };
        let v1_requirements = requirements
            .iter()
            .map(|names| {
                let schemes: Map<String, Value> = names
                    .iter()
                    .map(|n| (n.clone(), json!({ "list": [] })))
                    .collect();
                json!({ "schemes": schemes })
            })
            .collect();
        let v03_security = requirements
            .iter()
            .map(|names| {
                let entry: Map<String, Value> =
                    names.iter().map(|n| (n.clone(), json!([]))).collect();
                Value::Object(entry)
            })
            .collect();
        let v03_schemes = schemes
            .iter()
            .map(|(name, scheme)| (name.clone(), scheme_v03(scheme)))
            .collect();
        CardSecurity {
            v1_schemes: schemes,
            v1_requirements,
            v03_schemes,
            v03_security,
        }
    }
}

/// A 1.0 `SecurityScheme` (one-of object) in the 0.3 form (`type` discriminator).
fn scheme_v03(scheme: &Value) -> Value {
    let Some((kind, body)) = scheme.as_object().and_then(|o| o.iter().next()) else {
        return Value::Null;
    };
    let field = |name: &str| body.get(name).cloned();
    let mut out = Map::new();
    let mut put = |k: &str, v: Option<Value>| {
        if let Some(v) = v {
            out.insert(k.to_string(), v);
        }
    };
    match kind.as_str() {
        "apiKeySecurityScheme" => {
            put("type", Some(json!("apiKey")));
            put("in", field("location"));
            put("name", field("name"));
        }
        "httpAuthSecurityScheme" => {
            put("type", Some(json!("http")));
            put(
                "scheme",
                field("scheme").map(|s| json!(s.as_str().unwrap_or("").to_ascii_lowercase())),
            );
            put("bearerFormat", field("bearerFormat"));
        }
        "oauth2SecurityScheme" => {
            put("type", Some(json!("oauth2")));
            put("flows", field("flows"));
            put("oauth2MetadataUrl", field("oauth2MetadataUrl"));
        }
        "openIdConnectSecurityScheme" => {
            put("type", Some(json!("openIdConnect")));
            put("openIdConnectUrl", field("openIdConnectUrl"));
        }
        _ => put("type", Some(json!("mutualTLS"))),
    }
    put("description", field("description"));
    Value::Object(out)
}

/// How one card is rewritten.
pub struct CardContext<'a> {
    /// The agent's public base URL at the gateway, without a trailing `/`
    /// (`https://gw.example.com/a2a/echo`).
    pub public_base: &'a str,
    /// The path of the agent's configured URL (`""` or `/x`): an interface URL under it maps
    /// to the same path under `public_base`.
    pub agent_base_path: &'a str,
    pub signed_cards: SignedCards,
    pub security: &'a CardSecurity,
    /// Whether the caller may use a skill (by id).
    pub skill_allowed: &'a dyn Fn(&str) -> bool,
}

/// What a rewrite changed, for logs and headers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CardChanges {
    pub signatures_removed: bool,
    /// Interfaces left out (their binding and URL).
    pub interfaces_dropped: Vec<String>,
    pub skills_hidden: usize,
}

/// Why a card cannot be served.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CardError {
    #[error("the agent's card is not a JSON object: {0}")]
    NotJson(String),
    #[error("the agent's card is signed, and a2a.signed_cards is 'refuse': the gateway must change the card's URLs, which breaks its signatures")]
    Signed,
    #[error("the agent's card offers no interface the gateway can carry (only gRPC, or none)")]
    NoInterface,
}

/// Rewrites a card in place (a card is a JSON object; unknown fields stay as they are).
pub fn rewrite_card(
    card: &mut Map<String, Value>,
    ctx: &CardContext<'_>,
) -> Result<CardChanges, CardError> {
    let mut changes = CardChanges::default();
    let signed = card
        .get("signatures")
        .is_some_and(|s| s.as_array().is_none_or(|a| !a.is_empty()));
    if signed && ctx.signed_cards == SignedCards::Refuse {
        return Err(CardError::Signed);
    }
    let is_v1 = card.contains_key("supportedInterfaces");
    if is_v1 {
        rewrite_v1_interfaces(card, ctx, &mut changes)?;
    }
    if card.get("url").is_some_and(Value::is_string) {
        rewrite_v03_interfaces(card, ctx, &mut changes, is_v1)?;
    } else if !is_v1 {
        return Err(CardError::NoInterface);
    }

    // The gateway's own security, in the card's version's form.
    for key in ["securitySchemes", "securityRequirements", "security"] {
        card.remove(key);
    }
    let security = ctx.security;
    if !security.v1_schemes.is_empty() {
        if is_v1 {
            card.insert(
                "securitySchemes".into(),
                Value::Object(security.v1_schemes.clone()),
            );
            card.insert(
                "securityRequirements".into(),
                Value::Array(security.v1_requirements.clone()),
            );
        } else {
            card.insert(
                "securitySchemes".into(),
                Value::Object(security.v03_schemes.clone()),
            );
            card.insert(
                "security".into(),
                Value::Array(security.v03_security.clone()),
            );
        }
    }

    if let Some(skills) = card.get_mut("skills").and_then(Value::as_array_mut) {
        let before = skills.len();
        skills.retain(|skill| {
            let id = skill.get("id").and_then(Value::as_str).unwrap_or("");
            (ctx.skill_allowed)(id)
        });
        changes.skills_hidden = before - skills.len();
        for skill in skills.iter_mut().filter_map(Value::as_object_mut) {
            skill.remove("securityRequirements");
            skill.remove("security");
        }
    }

    if signed {
        card.remove("signatures");
        changes.signatures_removed = true;
        let capabilities = card.entry("capabilities").or_insert_with(|| json!({}));
        if let Some(capabilities) = capabilities.as_object_mut() {
            let extensions = capabilities
                .entry("extensions")
                .or_insert_with(|| json!([]));
            if let Some(list) = extensions.as_array_mut() {
                list.push(json!({
                    "uri": UNSIGNED_EXTENSION_URI,
                    "description": "The gateway rewrote this card's URLs and security, so it removed the agent's signatures.",
                    "required": false,
                }));
            }
        }
    }
    Ok(changes)
}

/// Whether an interface's binding is one the gateway carries and polices.
fn carried(binding: &str) -> bool {
    !binding.eq_ignore_ascii_case("grpc")
}

fn rewrite_v1_interfaces(
    card: &mut Map<String, Value>,
    ctx: &CardContext<'_>,
    changes: &mut CardChanges,
) -> Result<(), CardError> {
    let Some(interfaces) = card
        .get_mut("supportedInterfaces")
        .and_then(Value::as_array_mut)
    else {
        return Err(CardError::NoInterface);
    };
    interfaces.retain(|i| {
        let binding = i
            .get("protocolBinding")
            .and_then(Value::as_str)
            .unwrap_or("");
        let keep = carried(binding);
        if !keep {
            changes.interfaces_dropped.push(format!(
                "{binding} {}",
                i.get("url").and_then(Value::as_str).unwrap_or("")
            ));
        }
        keep
    });
    if interfaces.is_empty() {
        return Err(CardError::NoInterface);
    }
    for interface in interfaces.iter_mut().filter_map(Value::as_object_mut) {
        if let Some(url) = interface.get("url").and_then(Value::as_str) {
            let public = gateway_url(ctx, url);
            interface.insert("url".into(), Value::String(public));
        }
    }
    Ok(())
}

fn rewrite_v03_interfaces(
    card: &mut Map<String, Value>,
    ctx: &CardContext<'_>,
    changes: &mut CardChanges,
    also_v1: bool,
) -> Result<(), CardError> {
    let transport_of =
        |v: Option<&Value>| v.and_then(Value::as_str).unwrap_or("JSONRPC").to_string();
    let main_url = card
        .get("url")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let main_transport = transport_of(card.get("preferredTransport"));
    let mut additional: Vec<Value> = card
        .get("additionalInterfaces")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    additional.retain(|i| {
        let transport = transport_of(i.get("transport"));
        let keep = carried(&transport);
        if !keep && !also_v1 {
            changes.interfaces_dropped.push(format!(
                "{transport} {}",
                i.get("url").and_then(Value::as_str).unwrap_or("")
            ));
        }
        keep
    });
    for interface in additional.iter_mut().filter_map(Value::as_object_mut) {
        if let Some(url) = interface.get("url").and_then(Value::as_str) {
            let public = gateway_url(ctx, url);
            interface.insert("url".into(), Value::String(public));
        }
    }
    let (url, transport) = if carried(&main_transport) {
        (gateway_url(ctx, &main_url), main_transport)
    } else {
        if !also_v1 {
            changes
                .interfaces_dropped
                .push(format!("{main_transport} {main_url}"));
        }
        // The first carried interface becomes the main one.
        let first = additional.first().ok_or(CardError::NoInterface)?;
        (
            first
                .get("url")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string(),
            transport_of(first.get("transport")),
        )
    };
    card.insert("url".into(), Value::String(url));
    if card.contains_key("preferredTransport") {
        card.insert("preferredTransport".into(), Value::String(transport));
    }
    if card.contains_key("additionalInterfaces") {
        card.insert("additionalInterfaces".into(), Value::Array(additional));
    }
    Ok(())
}

/// The gateway URL for an agent URL: its path (and query) under the agent's base path maps
/// under the agent's public base; any other path is kept whole under it. Every URL lands
/// under the public base, so a client cannot be sent around the gateway.
pub fn gateway_url(ctx: &CardContext<'_>, url: &str) -> String {
    let after_scheme = url.split_once("://").map_or(url, |(_, rest)| rest);
    let path = if url.contains("://") {
        after_scheme
            .find(['/', '?'])
            .map_or("", |i| &after_scheme[i..])
    } else {
        after_scheme
    };
    let relative = match path.strip_prefix(ctx.agent_base_path) {
        Some(rest)
            if !ctx.agent_base_path.is_empty()
                && (rest.is_empty() || rest.starts_with(['/', '?'])) =>
        {
            rest
        }
        _ => path,
    };
    format!("{}{}", ctx.public_base, relative)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn security() -> CardSecurity {
        let section: A2aSecuritySection = serde_saphyr::from_str(
            "schemes:\n  gw_key: { apiKeySecurityScheme: { location: header, name: x-api-key } }\n  gw_jwt: { httpAuthSecurityScheme: { scheme: Bearer, bearerFormat: JWT } }\n",
        )
        .unwrap();
        CardSecurity::compile(Some(&section), None, false)
    }

    fn ctx<'a>(security: &'a CardSecurity, allowed: &'a dyn Fn(&str) -> bool) -> CardContext<'a> {
        CardContext {
            public_base: "https://gw.example.com/a2a/echo",
            agent_base_path: "",
            signed_cards: SignedCards::Unsigned,
            security,
            skill_allowed: allowed,
        }
    }

    fn card(json: &str) -> Map<String, Value> {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn a_v1_card_points_at_the_gateway_and_advertises_its_security() {
        let security = security();
        let allow_all = |_: &str| true;
        let mut c = card(
            r#"{"name":"echo","supportedInterfaces":[
                {"url":"http://127.0.0.1:18010/","protocolBinding":"JSONRPC","protocolVersion":"1.0"},
                {"url":"http://127.0.0.1:18010/rest","protocolBinding":"HTTP+JSON","protocolVersion":"1.0"},
                {"url":"127.0.0.1:50051","protocolBinding":"GRPC","protocolVersion":"1.0"}],
               "securitySchemes":{"agent-key":{"apiKeySecurityScheme":{"location":"header","name":"k"}}},
               "securityRequirements":[{"schemes":{"agent-key":{"list":[]}}}],
               "skills":[{"id":"echo","name":"Echo","securityRequirements":[]}],
               "futureField":{"kept":true}}"#,
        );
        let changes = rewrite_card(&mut c, &ctx(&security, &allow_all)).unwrap();
        let urls: Vec<&str> = c["supportedInterfaces"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["url"].as_str().unwrap())
            .collect();
        assert_eq!(
            urls,
            [
                "https://gw.example.com/a2a/echo/",
                "https://gw.example.com/a2a/echo/rest"
            ]
        );
        assert_eq!(changes.interfaces_dropped, ["GRPC 127.0.0.1:50051"]);
        assert!(c["securitySchemes"].get("agent-key").is_none());
        assert_eq!(
            c["securitySchemes"]["gw_key"]["apiKeySecurityScheme"]["name"],
            "x-api-key"
        );
        assert_eq!(
            c["securityRequirements"],
            json!([{"schemes":{"gw_key":{"list":[]}}},{"schemes":{"gw_jwt":{"list":[]}}}])
        );
        assert!(c["skills"][0].get("securityRequirements").is_none());
        assert_eq!(c["futureField"]["kept"], true);
        assert!(!changes.signatures_removed);
    }

    #[test]
    fn a_v03_card_gets_its_url_and_additional_interfaces_rewritten() {
        let security = security();
        let allow_all = |_: &str| true;
        let mut c = card(
            r#"{"name":"old","protocolVersion":"0.3.0","url":"http://agent.internal:9000/base/rpc",
               "preferredTransport":"JSONRPC",
               "additionalInterfaces":[{"url":"http://agent.internal:9000/base/rpc","transport":"JSONRPC"},
                                       {"url":"http://agent.internal:9000/base/v1","transport":"HTTP+JSON"}],
               "securitySchemes":{"x":{"type":"http","scheme":"basic"}},"security":[{"x":[]}]}"#,
        );
        let mut context = ctx(&security, &allow_all);
        context.agent_base_path = "/base";
        rewrite_card(&mut c, &context).unwrap();
        assert_eq!(c["url"], "https://gw.example.com/a2a/echo/rpc");
        assert_eq!(
            c["additionalInterfaces"][1]["url"],
            "https://gw.example.com/a2a/echo/v1"
        );
        assert_eq!(
            c["securitySchemes"]["gw_key"],
            json!({"type":"apiKey","in":"header","name":"x-api-key"})
        );
        assert_eq!(
            c["securitySchemes"]["gw_jwt"],
            json!({"type":"http","scheme":"bearer","bearerFormat":"JWT"})
        );
        assert_eq!(c["security"], json!([{"gw_key":[]},{"gw_jwt":[]}]));
    }

    #[test]
    fn signed_cards_are_flagged_unsigned_or_refused() {
        let security = CardSecurity::default();
        let allow_all = |_: &str| true;
        let signed = r#"{"supportedInterfaces":[{"url":"http://a/","protocolBinding":"JSONRPC"}],
            "signatures":[{"protected":"eyJhbGciOiJFUzI1NiJ9","signature":"c2ln"}],
            "securitySchemes":{"a":{"mtlsSecurityScheme":{}}}}"#;
        let mut c = card(signed);
        let changes = rewrite_card(&mut c, &ctx(&security, &allow_all)).unwrap();
        assert!(changes.signatures_removed);
        assert!(c.get("signatures").is_none());
        assert_eq!(
            c["capabilities"]["extensions"][0]["uri"],
            UNSIGNED_EXTENSION_URI
        );
        // No gateway security: the agent's schemes are not advertised either.
        assert!(c.get("securitySchemes").is_none());

        let mut c = card(signed);
        let mut context = ctx(&security, &allow_all);
        context.signed_cards = SignedCards::Refuse;
        assert_eq!(rewrite_card(&mut c, &context), Err(CardError::Signed));
    }

    #[test]
    fn skills_the_caller_may_not_use_are_left_out() {
        let security = CardSecurity::default();
        let no_admin = |id: &str| id != "admin";
        let mut c = card(
            r#"{"supportedInterfaces":[{"url":"http://a/","protocolBinding":"JSONRPC"}],
               "skills":[{"id":"echo"},{"id":"admin"}]}"#,
        );
        let changes = rewrite_card(&mut c, &ctx(&security, &no_admin)).unwrap();
        assert_eq!(changes.skills_hidden, 1);
        assert_eq!(c["skills"], json!([{"id":"echo"}]));
    }

    #[test]
    fn without_a2a_security_the_auth_section_is_described() {
        let auth: AuthSection = serde_saphyr::from_str(
            "api_keys: [{ name: k, hash: 'sha256:7dd9b878f2f5f3c1330b04fcafbbb4a0241b74f9bc5b56d3bcb1101167764b24' }]\nmtls_identity: true\n",
        )
        .unwrap();
        let names =
            |security: &CardSecurity| security.v1_schemes.keys().cloned().collect::<Vec<_>>();
        // mTLS is advertised only when the listener asks for client certificates.
        assert_eq!(
            names(&CardSecurity::compile(None, Some(&auth), false)),
            ["gantry_api_key"]
        );
        assert_eq!(
            names(&CardSecurity::compile(None, Some(&auth), true)),
            ["gantry_api_key", "gantry_mtls"]
        );
        assert!(names(&CardSecurity::compile(None, None, true)).is_empty());
    }

    #[test]
    fn only_grpc_is_no_interface() {
        let security = CardSecurity::default();
        let allow_all = |_: &str| true;
        let mut c = card(r#"{"supportedInterfaces":[{"url":"a:1","protocolBinding":"GRPC"}]}"#);
        assert_eq!(
            rewrite_card(&mut c, &ctx(&security, &allow_all)),
            Err(CardError::NoInterface)
        );
        let mut c = card(r#"{"name":"no interfaces at all"}"#);
        assert_eq!(
            rewrite_card(&mut c, &ctx(&security, &allow_all)),
            Err(CardError::NoInterface)
        );
    }

    #[test]
    fn urls_outside_the_agents_path_still_land_under_the_gateway() {
        let security = CardSecurity::default();
        let allow_all = |_: &str| true;
        let mut context = ctx(&security, &allow_all);
        context.agent_base_path = "/base";
        assert_eq!(
            gateway_url(&context, "http://x/base"),
            "https://gw.example.com/a2a/echo"
        );
        assert_eq!(
            gateway_url(&context, "http://x/base/"),
            "https://gw.example.com/a2a/echo/"
        );
        assert_eq!(
            gateway_url(&context, "http://x/basement"),
            "https://gw.example.com/a2a/echo/basement"
        );
        assert_eq!(
            gateway_url(&context, "https://elsewhere/rpc?x=1"),
            "https://gw.example.com/a2a/echo/rpc?x=1"
        );
        assert_eq!(
            gateway_url(&context, "http://x"),
            "https://gw.example.com/a2a/echo"
        );
    }
}
