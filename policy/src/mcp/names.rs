//! Federated names: how an upstream's tools, prompts and resources are named to clients, and
//! how a client's name leads back to the upstream and its own name.
//!
//! Tools and prompts get `<upstream><separator><name>` (or keep their name with naming mode
//! `none`); resource URIs become `<upstream>+<uri>`, which keeps them valid URIs (the scheme
//! grows a `+` part) and routes `resources/read` back. Curation (include, exclude, rename,
//! description override) is applied to the upstream's names before prefixing.

use std::collections::HashMap;

use crate::config::{CurationSection, NamingMode};

/// Longest tool name the spec recommends.
pub const MAX_ITEM_NAME_CHARS: usize = 128;

/// Whether `name` is 1–128 characters of `[A-Za-z0-9_.-]` (the spec's tool-name guidance).
pub fn is_valid_item_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_ITEM_NAME_CHARS
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// A name pattern: literal text with `*` matching any run of characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamePattern {
    parts: Vec<String>,
    wildcard: bool,
}

impl NamePattern {
    pub fn new(pattern: &str) -> NamePattern {
        NamePattern {
            parts: pattern.split('*').map(str::to_string).collect(),
            wildcard: pattern.contains('*'),
        }
    }

    pub fn matches(&self, name: &str) -> bool {
        if !self.wildcard {
            return self.parts[0] == name;
        }
        let (first, rest) = self.parts.split_first().expect("split yields one part");
        let Some(mut remaining) = name.strip_prefix(first.as_str()) else {
            return false;
        };
        let (last, middle) = rest.split_last().expect("a wildcard gives two parts");
        for part in middle {
            match remaining.find(part.as_str()) {
                Some(at) => remaining = &remaining[at + part.len()..],
                None => return false,
            }
        }
        remaining.len() >= last.len() && remaining.ends_with(last.as_str())
    }
}

/// One upstream's curation of one kind of item, compiled.
#[derive(Debug, Clone, Default)]
pub struct Curation {
    include: Vec<NamePattern>,
    exclude: Vec<NamePattern>,
    /// upstream name → offered name (before prefixing).
    rename: HashMap<String, String>,
    /// offered name → upstream name.
    renamed_from: HashMap<String, String>,
    descriptions: HashMap<String, String>,
}

impl Curation {
    pub fn compile(section: &CurationSection) -> Curation {
        let rename: HashMap<String, String> = section
            .rename
            .iter()
            .map(|(from, to)| (from.clone(), to.value.clone()))
            .collect();
        Curation {
            include: section
                .include
                .iter()
                .map(|p| NamePattern::new(&p.value))
                .collect(),
            exclude: section
                .exclude
                .iter()
                .map(|p| NamePattern::new(&p.value))
                .collect(),
            renamed_from: rename
                .iter()
                .map(|(from, to)| (to.clone(), from.clone()))
                .collect(),
            rename,
            descriptions: section.descriptions.clone().into_iter().collect(),
        }
    }

    /// Whether the upstream's item `name` is offered at all.
    pub fn offers(&self, name: &str) -> bool {
        (self.include.is_empty() || self.include.iter().any(|p| p.matches(name)))
            && !self.exclude.iter().any(|p| p.matches(name))
    }

    /// The name offered for the upstream's `name`, before prefixing.
    pub fn offered_name<'a>(&'a self, name: &'a str) -> &'a str {
        self.rename.get(name).map_or(name, String::as_str)
    }

    /// The upstream's own name for an offered (unprefixed) name, if it is offered.
    pub fn upstream_name<'a>(&'a self, offered: &'a str) -> Option<&'a str> {
        let upstream = match self.renamed_from.get(offered) {
            Some(original) => original.as_str(),
            // A renamed item is no longer reachable under its old name.
            None if self.rename.contains_key(offered) => return None,
            None => offered,
        };
        self.offers(upstream).then_some(upstream)
    }

    /// The operator's description for the upstream's `name`, if overridden.
    pub fn description(&self, name: &str) -> Option<&str> {
        self.descriptions.get(name).map(String::as_str)
    }
}

/// How federated names are built and split.
#[derive(Debug, Clone)]
pub struct Naming {
    pub separator: String,
    pub mode: NamingMode,
}

impl Naming {
    /// The client-facing name of an upstream's (offered) item name.
    pub fn federated(&self, upstream: &str, name: &str) -> String {
        match self.mode {
            NamingMode::Prefix => format!("{upstream}{}{name}", self.separator),
            NamingMode::None => name.to_string(),
        }
    }

    /// Splits a prefixed name into (upstream, item name); `None` when it has no known prefix.
    /// Upstream names never contain the separator (config validation), so the first
    /// occurrence is the split point.
    pub fn split<'a>(&self, federated: &'a str) -> Option<(&'a str, &'a str)> {
        let at = federated.find(self.separator.as_str())?;
        let (upstream, rest) = federated.split_at(at);
        let name = &rest[self.separator.len()..];
        (!upstream.is_empty() && !name.is_empty()).then_some((upstream, name))
    }
}

/// The client-facing form of an upstream's resource URI (or URI template).
pub fn federated_uri(upstream: &str, uri: &str) -> String {
    format!("{upstream}+{uri}")
}

/// Splits a federated resource URI into (upstream, the upstream's URI).
pub fn split_uri(federated: &str) -> Option<(&str, &str)> {
    let (upstream, uri) = federated.split_once('+')?;
    (!upstream.is_empty()
        && !uri.is_empty()
        && upstream
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-')))
    .then_some((upstream, uri))
}

/// Whether `uri` is an expansion of the URI template `template` (RFC 6570 level 1: each
/// `{var}` stands for one or more characters other than `/`; `{+var}`, `{#var}` and
/// `{/var}`-style operators may also span `/`).
pub fn template_matches(template: &str, uri: &str) -> bool {
    // Split into literal parts and placeholders; placeholders match lazily but at least one
    // character, backtracking over the literal parts.
    fn go(parts: &[(bool, &str)], uri: &str) -> bool {
        match parts.split_first() {
            None => uri.is_empty(),
            Some(((false, literal), rest)) => {
                uri.strip_prefix(literal).is_some_and(|tail| go(rest, tail))
            }
            Some(((true, spans_slash), rest)) => {
                let spans = !spans_slash.is_empty();
                for (i, c) in uri.char_indices() {
                    if c == '/' && !spans {
                        return false;
                    }
                    let end = i + c.len_utf8();
                    if go(rest, &uri[end..]) {
                        return true;
                    }
                }
                false
            }
        }
    }
    let mut parts: Vec<(bool, &str)> = Vec::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        let Some(close) = rest[open..].find('}') else {
            break;
        };
        if open > 0 {
            parts.push((false, &rest[..open]));
        }
        let expression = &rest[open + 1..open + close];
        let spans = if expression.starts_with(['+', '#', '/', '.', ';', '?', '&']) {
            "y"
        } else {
            ""
        };
        parts.push((true, spans));
        rest = &rest[open + close + 1..];
    }
    if !rest.is_empty() {
        parts.push((false, rest));
    }
    go(&parts, uri)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_literals_and_wildcards() {
        assert!(NamePattern::new("echo").matches("echo"));
        assert!(!NamePattern::new("echo").matches("echo2"));
        assert!(NamePattern::new("get_*").matches("get_sum"));
        assert!(NamePattern::new("get_*").matches("get_"));
        assert!(!NamePattern::new("get_*").matches("set_sum"));
        assert!(NamePattern::new("*_file").matches("read_file"));
        assert!(NamePattern::new("a*b*c").matches("a-x-b-y-c"));
        assert!(!NamePattern::new("a*b*c").matches("a-x-c-y-b"));
        assert!(NamePattern::new("*").matches("anything"));
        // The suffix must not overlap the prefix.
        assert!(!NamePattern::new("ab*ba").matches("aba"));
    }

    fn section(yaml: &str) -> CurationSection {
        serde_saphyr::from_str(yaml).expect("curation yaml")
    }

    #[test]
    fn curation_includes_excludes_and_renames() {
        let curation = Curation::compile(&section(
            "include: ['get_*', echo]\nexclude: [get_secret]\nrename: { echo: say }\ndescriptions: { get_sum: Adds. }\n",
        ));
        assert!(curation.offers("get_sum"));
        assert!(curation.offers("echo"));
        assert!(!curation.offers("get_secret"));
        assert!(!curation.offers("delete_all"));
        assert_eq!(curation.offered_name("echo"), "say");
        assert_eq!(curation.offered_name("get_sum"), "get_sum");
        assert_eq!(curation.upstream_name("say"), Some("echo"));
        assert_eq!(curation.upstream_name("echo"), None);
        assert_eq!(curation.upstream_name("get_secret"), None);
        assert_eq!(curation.upstream_name("get_sum"), Some("get_sum"));
        assert_eq!(curation.description("get_sum"), Some("Adds."));
    }

    #[test]
    fn prefixed_names_split_back() {
        let naming = Naming {
            separator: "__".into(),
            mode: NamingMode::Prefix,
        };
        let name = naming.federated("alpha", "get__sum");
        assert_eq!(name, "alpha__get__sum");
        assert_eq!(naming.split(&name), Some(("alpha", "get__sum")));
        assert_eq!(naming.split("plain"), None);
        assert_eq!(naming.split("__x"), None);
        assert_eq!(naming.split("alpha__"), None);
        assert!(is_valid_item_name(&name));
        assert!(!is_valid_item_name("has space"));
        assert!(!is_valid_item_name(&"x".repeat(129)));
    }

    #[test]
    fn uri_templates_match_their_expansions() {
        assert!(template_matches("memo://notes/{id}", "memo://notes/7"));
        assert!(!template_matches("memo://notes/{id}", "memo://notes/"));
        assert!(!template_matches("memo://notes/{id}", "memo://notes/7/8"));
        assert!(template_matches(
            "test://template/{id}/data",
            "test://template/123/data"
        ));
        assert!(!template_matches(
            "test://template/{id}/data",
            "test://template/123/other"
        ));
        assert!(template_matches("file:///{+path}", "file:///a/b/c.txt"));
        assert!(template_matches("exact://x", "exact://x"));
        assert!(!template_matches("exact://x", "exact://y"));
    }

    #[test]
    fn resource_uris_round_trip() {
        let uri = federated_uri("docs", "file:///a/b.txt");
        assert_eq!(uri, "docs+file:///a/b.txt");
        assert_eq!(split_uri(&uri), Some(("docs", "file:///a/b.txt")));
        assert_eq!(split_uri("docs+memo://x+y"), Some(("docs", "memo://x+y")));
        assert_eq!(split_uri("file:///nothing"), None);
        assert_eq!(split_uri("a b+x"), None);
    }
}
