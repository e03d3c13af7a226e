//! Malicious-definition defences at run time: each tool, prompt and resource definition an
//! upstream lists is scanned (results cached by digest), tools are pinned by digest on first
//! sight (or by the config's `pins`), and a later definition that differs is handled per
//! `definitions.on_change`. The latest verdict per tool is kept so that a call can be checked
//! before it is forwarded. Every verdict is logged and counted.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use gantry_policy::config::{DriftAction, VerdictAction};
use gantry_policy::mcp::pin::{check_pin, definition_digest, DefinitionDigest, PinCheck};
use gantry_policy::mcp::scan::{scan_definition, DefinitionKind, Finding, ForeignNames};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::settings::{BridgeSettings, UpstreamSettings};

/// Whether an item is offered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Serve,
    Withhold { reason: String },
}

/// What is remembered of a tool's latest definition.
#[derive(Debug, Clone)]
pub struct LatestTool {
    pub digest: DefinitionDigest,
    pub verdict: Verdict,
    pub seen: Instant,
}

/// The defences' state, shared by all requests (short critical sections, never across
/// `.await`).
#[derive(Default)]
pub struct Defences {
    /// Pins taken on first sight, by (upstream, upstream tool name).
    first_seen: Mutex<HashMap<(String, String), DefinitionDigest>>,
    latest: Mutex<HashMap<(String, String), LatestTool>>,
    scans: Mutex<HashMap<ScanKey, Arc<Vec<Finding>>>>,
    /// The other upstreams' names as of each upstream's latest tools list.
    foreign: Mutex<HashMap<String, Foreign>>,
    counts: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
    /// Where first-sight pins are kept across restarts, if configured.
    pin_file: Option<PathBuf>,
    /// A pin was taken since the file was last written.
    pins_dirty: AtomicBool,
    pins_changed: tokio::sync::Notify,
}

/// The pin file's format: `{"version": 1, "pins": {"<upstream>": {"<tool>": "sha256:…"}}}`.
#[derive(Serialize, Deserialize)]
struct PinFileContents {
    version: u32,
    pins: BTreeMap<String, BTreeMap<String, DefinitionDigest>>,
}

/// Why the pin file could not be used.
#[derive(Debug, thiserror::Error)]
#[error("MCP pin file {path}: {problem}")]
pub struct PinFileError {
    pub path: String,
    pub problem: String,
}

/// A scan result is cached by the definition and the foreign names it was judged against.
type ScanKey = (DefinitionDigest, u64);

/// The names a definition must not mention (other upstreams' tools and prompts), with a key
/// that identifies the set (for the scan cache).
#[derive(Clone)]
pub struct Foreign {
    pub names: Arc<ForeignNames>,
    pub key: u64,
}

impl Foreign {
    pub fn none() -> Foreign {
        Foreign {
            names: Arc::new(ForeignNames::new(std::iter::empty::<(String, String)>())),
            key: 0,
        }
    }
}

/// At most this many scan results are cached (a list of 10k tools still fits).
const SCAN_CACHE_LIMIT: usize = 50_000;

impl Defences {
    /// Empty defences, with the pins of `pin_file` when it exists. A pin file that cannot be
    /// read or parsed is an error: starting without the pins would accept drifted definitions
    /// as new.
    pub fn load(pin_file: Option<PathBuf>) -> Result<Defences, PinFileError> {
        let mut first_seen = HashMap::new();
        if let Some(path) = &pin_file {
            let error = |problem: String| PinFileError {
                path: path.display().to_string(),
                problem,
            };
            match std::fs::read(path) {
                Ok(bytes) => {
                    let contents: PinFileContents = serde_json::from_slice(&bytes)
                        .map_err(|e| error(format!("not a pin file: {e}")))?;
                    if contents.version != 1 {
                        return Err(error(format!("unknown version {}", contents.version)));
                    }
                    for (upstream, tools) in contents.pins {
                        for (tool, digest) in tools {
                            first_seen.insert((upstream.clone(), tool), digest);
                        }
                    }
                    tracing::info!(path = %path.display(), pins = first_seen.len(), "loaded MCP tool pins");
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(error(e.to_string())),
            }
        }
        Ok(Defences {
            first_seen: Mutex::new(first_seen),
            pin_file,
            ..Defences::default()
        })
    }

    /// Writes new pins to the pin file whenever some were taken, until `stop`; then once more.
    pub async fn keep_pin_file(self: Arc<Self>, stop: tokio_util::sync::CancellationToken) {
        if self.pin_file.is_none() {
            return;
        }
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = self.pins_changed.notified() => {}
            }
            let defences = self.clone();
            let _ = tokio::task::spawn_blocking(move || defences.write_pin_file()).await;
        }
        self.write_pin_file();
    }

    /// Writes the pin file if pins changed (atomically: a temporary file, then a rename).
    pub fn write_pin_file(&self) {
        let Some(path) = &self.pin_file else { return };
        if !self.pins_dirty.swap(false, Ordering::AcqRel) {
            return;
        }
        let mut pins: BTreeMap<String, BTreeMap<String, DefinitionDigest>> = BTreeMap::new();
        if let Ok(first) = self.first_seen.lock() {
            for ((upstream, tool), digest) in first.iter() {
                pins.entry(upstream.clone())
                    .or_default()
                    .insert(tool.clone(), *digest);
            }
        }
        let contents = PinFileContents { version: 1, pins };
        if let Err(e) = write_atomically(path, &contents) {
            self.pins_dirty.store(true, Ordering::Release);
            tracing::error!(path = %path.display(), error = %e, "cannot write the MCP pin file; new pins are kept in memory only");
        }
    }

    /// Judges one listed definition of `upstream`'s `raw_name`.
    pub fn judge(
        &self,
        settings: &BridgeSettings,
        upstream: &UpstreamSettings,
        kind: DefinitionKind,
        raw_name: &str,
        definition: &Value,
        foreign: &Foreign,
    ) -> Verdict {
        let digest = definition_digest(kind, definition);
        let mut verdict = Verdict::Serve;
        if settings.scan_action != VerdictAction::Off {
            let findings = self.scan(settings, kind, &digest, definition, foreign);
            if !findings.is_empty() {
                let summary: Vec<String> = findings
                    .iter()
                    .map(|f| format!("{:?} in {}: {}", f.kind, f.field, f.detail))
                    .collect();
                let blocked = settings.scan_action == VerdictAction::Block;
                tracing::warn!(
                    upstream = %upstream.name,
                    item = %raw_name,
                    kind = ?kind,
                    findings = %summary.join("; "),
                    action = if blocked { "withheld" } else { "served (alert)" },
                    "MCP definition flagged by the scanner"
                );
                self.count("scan", if blocked { "blocked" } else { "alerted" });
                if blocked {
                    verdict = Verdict::Withhold {
                        reason: format!(
                            "its definition was flagged ({})",
                            findings
                                .iter()
                                .map(|f| format!("{:?}", f.kind))
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    };
                }
            }
        }
        if kind == DefinitionKind::Tool {
            let drift = self.check_drift(settings, upstream, raw_name, &digest);
            verdict = match (verdict, drift) {
                (Verdict::Serve, drift) => drift,
                (flagged, Verdict::Serve) => flagged,
                (Verdict::Withhold { reason: first }, Verdict::Withhold { reason: second }) => {
                    Verdict::Withhold {
                        reason: format!("{first}; {second}"),
                    }
                }
            };
            if let Ok(mut latest) = self.latest.lock() {
                latest.insert(
                    (upstream.name.clone(), raw_name.to_string()),
                    LatestTool {
                        digest,
                        verdict: verdict.clone(),
                        seen: Instant::now(),
                    },
                );
            }
        }
        verdict
    }

    fn scan(
        &self,
        settings: &BridgeSettings,
        kind: DefinitionKind,
        digest: &DefinitionDigest,
        definition: &Value,
        foreign: &Foreign,
    ) -> Arc<Vec<Finding>> {
        // Shadowing findings depend on the other upstreams' names: the cache key has both.
        let key = (*digest, foreign.key);
        if let Some(found) = self.scans.lock().ok().and_then(|s| s.get(&key).cloned()) {
            return found;
        }
        let findings = Arc::new(scan_definition(
            &settings.scan,
            kind,
            definition,
            &foreign.names,
        ));
        if let Ok(mut scans) = self.scans.lock() {
            if scans.len() >= SCAN_CACHE_LIMIT {
                scans.clear();
            }
            scans.insert(key, findings.clone());
        }
        findings
    }

    /// The pin check: `Serve` when unchanged or first seen, else per `on_change`.
    fn check_drift(
        &self,
        settings: &BridgeSettings,
        upstream: &UpstreamSettings,
        raw_name: &str,
        digest: &DefinitionDigest,
    ) -> Verdict {
        let key = (upstream.name.clone(), raw_name.to_string());
        let configured = upstream.pins.get(raw_name).cloned();
        let pinned = match configured {
            Some(pin) => Some(pin),
            None => self
                .first_seen
                .lock()
                .ok()
                .and_then(|p| p.get(&key).copied()),
        };
        match check_pin(pinned.as_ref(), digest) {
            PinCheck::FirstSeen => {
                if let Ok(mut first) = self.first_seen.lock() {
                    first.insert(key, *digest);
                }
                if self.pin_file.is_some() {
                    self.pins_dirty.store(true, Ordering::Release);
                    self.pins_changed.notify_one();
                }
                self.count("pin", "first_seen");
                tracing::info!(upstream = %upstream.name, tool = %raw_name, %digest, "pinned MCP tool definition on first sight");
                Verdict::Serve
            }
            PinCheck::Unchanged => Verdict::Serve,
            PinCheck::Changed { pinned, seen } => match settings.on_change {
                DriftAction::Alert => {
                    self.count("drift", "alerted");
                    tracing::warn!(upstream = %upstream.name, tool = %raw_name, %pinned, %seen, "MCP tool definition changed since it was pinned (served: on_change is alert)");
                    Verdict::Serve
                }
                DriftAction::Block => {
                    self.count("drift", "blocked");
                    tracing::warn!(upstream = %upstream.name, tool = %raw_name, %pinned, %seen, "MCP tool definition changed since it was pinned: withheld");
                    Verdict::Withhold {
                        reason: "its definition changed since it was approved".into(),
                    }
                }
                DriftAction::Reapprove => {
                    self.count("drift", "awaiting_approval");
                    tracing::warn!(
                        upstream = %upstream.name, tool = %raw_name, %pinned, %seen,
                        "MCP tool definition changed: withheld until approved; to approve, set mcp.upstreams[{}].pins.{raw_name}: '{seen}'",
                        upstream.name
                    );
                    Verdict::Withhold {
                            reason: format!(
                                "its definition changed and awaits an operator's approval (digest {seen})"
                            ),
                        }
                }
            },
        }
    }

    /// Remembers the names `upstream`'s tools were judged against.
    pub fn remember_foreign(&self, upstream: &str, names: Foreign) {
        if let Ok(mut foreign) = self.foreign.lock() {
            foreign.insert(upstream.to_string(), names);
        }
    }

    /// The names `upstream`'s tools were last judged against (none before its first list).
    pub fn foreign(&self, upstream: &str) -> Foreign {
        self.foreign
            .lock()
            .ok()
            .and_then(|f| f.get(upstream).cloned())
            .unwrap_or_else(Foreign::none)
    }

    /// The latest verdict on a tool, if it was listed.
    pub fn latest(&self, upstream: &str, raw_name: &str) -> Option<LatestTool> {
        self.latest.lock().ok().and_then(|l| {
            l.get(&(upstream.to_string(), raw_name.to_string()))
                .cloned()
        })
    }

    pub fn count(&self, defence: &'static str, outcome: &'static str) {
        if let Ok(mut counts) = self.counts.lock() {
            *counts.entry((defence, outcome)).or_default() += 1;
        }
    }

    /// The counts in the Prometheus text format (`gantry_mcp_definition_verdicts_total`).
    pub fn render_prometheus(&self) -> String {
        let mut out = String::from(
            "# HELP gantry_mcp_definition_verdicts_total MCP definition defences' verdicts: scanner findings, pins, drift, name collisions.\n# TYPE gantry_mcp_definition_verdicts_total counter\n",
        );
        for ((defence, outcome), count) in self.counts() {
            out.push_str(&format!(
                "gantry_mcp_definition_verdicts_total{{defence=\"{defence}\",outcome=\"{outcome}\"}} {count}\n"
            ));
        }
        out
    }

    /// Verdict counts by (defence, outcome).
    pub fn counts(&self) -> BTreeMap<(&'static str, &'static str), u64> {
        self.counts.lock().map(|c| c.clone()).unwrap_or_default()
    }
}

fn write_atomically(path: &Path, contents: &PinFileContents) -> std::io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let bytes = serde_json::to_vec_pretty(contents).map_err(std::io::Error::other)?;
    let temporary = path.with_extension("tmp");
    std::fs::write(&temporary, bytes)?;
    std::fs::rename(&temporary, path)
}
