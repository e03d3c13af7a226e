//! The `guards` scenario: what Gantry's guards cost.
//!
//! 1. **Request guards per KiB of prompt**, in this process, without Envoy: two snapshots are
//!    compiled with `gantry_policy` from config text with the same provider and model alias as
//!    the gateways, one without a `guards` section and one with [`REQUEST_GUARDS`] (every PII
//!    and secret detector plus `high_entropy` in one `log` guard, `prompt_injection` in another,
//!    two operator patterns in a `mask` guard: nothing is refused). Chat-completion bodies whose
//!    user message is English prose of exactly 1, 16 and 256 KiB (mixed sentences with a few
//!    numbers and paragraph breaks, no detector hits: the probe checks that the guarded plan has
//!    no hits) go through `gantry_policy::plan_forward_in`, the call ext_proc and the dynamic
//!    module make for a buffered request body, with the inputs ext_proc gives it (an anonymous
//!    caller, `POST /v1/chat/completions`, no headers). Per size, batches alternate unguarded and
//!    guarded `--rounds` times, each batch timing calls one by one for `--seconds / --rounds`
//!    (at least [`MIN_CALLS`] calls) on one blocking thread while the gateways idle.
//! 2. **TTFT response guards add to a stream**: the stream request (`"stream": true`, ~1 KB)
//!    through baseline, gantry and gantry+response-guards (gantry with
//!    [`response_guards_section`]), with the mock steered to answer [`STREAM_REPLY`] in
//!    [`STREAM_CHUNKS`] content events [`STREAM_CHUNK_DELAY_MS`] ms apart. The reply has fewer
//!    words than events, so the mock cuts it into pieces of about 4 characters that end inside
//!    words, the way tokenizers cut text. Latency is taken to the first SSE event (the role
//!    event, empty content), to the first event that carries content (TTFT) and to the end of
//!    the stream; every reply is checked afterwards (status 200, `data: [DONE]`, the streamed
//!    text exactly [`STREAM_REPLY`]). The first piece, `Sure`, could still begin an e-mail
//!    address, so the email rule holds it back until the next event shows it does not: what
//!    response guards add to TTFT is about one event interval plus their scanning, as with a
//!    model whose first token is a word and whose second starts with a space. (With a first
//!    piece that ends at a space nothing is held and they add well under a millisecond.)

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use gantry_mock_provider::{controls, MockProvider};
use gantry_policy::governance::Caller;
use gantry_policy::routing::RequestContext;
use gantry_policy::{plan_forward_in, ConfigFile, LlmApi, Snapshot};
use gantry_testkit::StackPorts;
use serde_json::{json, Map, Value};
use tokio::task::JoinSet;

use crate::gateways::{gantry_config, indent, logs_tail, Gateway, Gateways};
use crate::load::{excerpt, http_client, RequestBodies, Window};
use crate::stats::{format_us, round1, RoundStats, Summary, Tally, Unit};
use crate::{Settings, ALIAS, CHAT_PATH, ROUND_NAME_WIDTH, UPSTREAM_MODEL};

/// The prompt sizes measured in process: the user message's bytes, in KiB.
pub const PROMPT_KIB: [usize; 3] = [1, 16, 256];
/// The fewest calls a batch times, however long they take.
const MIN_CALLS: usize = 5;
/// Unmeasured calls per variant and size before the first batch.
const WARMUP_CALLS: usize = 3;

/// The request guards of the guarded snapshot: every detector a prompt can have, in guards that
/// only log or mask, so that nothing is refused.
pub const REQUEST_GUARDS: &str = r"guards:
  request:
    - name: pii-and-secrets
      action: log
      detectors: [email, phone, credit_card, us_ssn, iban, secrets, high_entropy]
    - name: injection
      action: log
      detectors: [prompt_injection]
    - name: operator-terms
      action: mask
      patterns: ['(?i)project\s+falcon', '\bACME-[0-9]{6}\b']
";

/// gantry+response-guards' `guards` section.
pub fn response_guards_section() -> &'static str {
    r"guards:
  response:
    - name: scrub-leaks
      action: mask
      detectors: [email, secrets]
      patterns: ['(?i)project\s+falcon']
"
}

/// What the mock streams back (`x-mock-reply`): nothing in it for the response guards to mask.
/// 34 words in 48 events, so the pieces are cut inside words.
pub const STREAM_REPLY: &str = "Sure, here is the summary you asked for: delivery times \
     improved in most regions, support tickets were cleared faster than last year, and the new \
     billing templates cut complaints by a third during the quarter.";
pub const STREAM_CHUNKS: usize = 48;
pub const STREAM_CHUNK_DELAY_MS: u64 = 2;
/// The probe's reply, which gantry+response-guards must mask (an address and the pattern).
const PROBE_REPLY: &str = "contact me at someone@example.org about Project Falcon";
const PROBE_MASKED: [&str; 2] = ["[REDACTED:email]", "[REDACTED:pattern]"];
const PROBE_SECRETS: [&str; 2] = ["someone@example.org", "Project Falcon"];

/// The gateways the stream part compares, in the order each round visits them.
const STREAM_GATEWAYS: [Gateway; 3] = [
    Gateway::Baseline,
    Gateway::Gantry,
    Gateway::GantryResponseGuards,
];
const LABEL_WIDTH: usize = 26;

/// Sentences the prompts are made of: plain business English with a few numbers, nothing a
/// detector flags.
const SENTENCES: [&str; 20] = [
    "The quarterly review covered 14 regional offices and found that most teams met their delivery targets.",
    "Shipping times fell from 6.2 days to 4.8 days after the new warehouse opened near the river.",
    "Customers asked for clearer invoices, so the billing group rewrote the templates in plain language.",
    "Our support queue peaked at 312 open tickets on a Monday morning and was cleared by Thursday.",
    "The design team tested three layouts with 40 volunteers and kept the simplest one.",
    "Energy use in the main building dropped by 11 percent once the old heating system was replaced.",
    "Several managers noted that weekly meetings ran long and proposed a firm limit of 30 minutes.",
    "The mobile app now loads in under two seconds on most phones sold since 2019.",
    "Training sessions were recorded so that staff in other time zones could watch them later.",
    "A small pilot in the northern region showed that flexible hours did not hurt output.",
    "Supplier prices rose by about 3 percent, mostly because of higher transport costs.",
    "The hiring plan for next year adds 25 engineers, 8 designers and a handful of analysts.",
    "Feedback from the autumn survey was mostly positive, although parking remains a sore point.",
    "We moved the archive to cheaper storage and expect to save roughly 18 thousand a year.",
    "The finance team closed the books two days earlier than last quarter.",
    "Volunteers planted 120 trees along the new cycle path behind the office park.",
    "Late deliveries were traced to a scheduling error that has since been fixed.",
    "The board asked for a short summary of risks before the meeting in March.",
    "Most visitors to the website arrive from search and stay for about four minutes.",
    "The cafeteria will offer more vegetarian dishes after many requests from staff.",
];

/// English prose of exactly `bytes` bytes (ASCII): sentences in a fixed pseudo-random order, a
/// paragraph break every few sentences.
fn prose(bytes: usize) -> String {
    let mut text = String::with_capacity(bytes + 128);
    let mut state: u32 = 0x9e37_79b9;
    let mut in_paragraph = 0;
    while text.len() < bytes {
        // xorshift32: deterministic, good enough to avoid a visible cycle.
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        let sentence = SENTENCES[state as usize % SENTENCES.len()];
        if !text.is_empty() {
            if in_paragraph == 5 {
                text.push_str("\n\n");
                in_paragraph = 0;
            } else {
                text.push(' ');
            }
        }
        text.push_str(sentence);
        in_paragraph += 1;
    }
    text.truncate(bytes);
    text
}

/// A chat-completion body for the `bench` alias whose user message is `prompt`.
fn chat_body(prompt: &str) -> Vec<u8> {
    json!({
        "model": ALIAS,
        "messages": [
            {
                "role": "system",
                "content": "You are a concise assistant. Answer in plain text, without lists.",
            },
            { "role": "user", "content": prompt },
        ],
        "max_tokens": 64,
        "temperature": 0.2,
    })
    .to_string()
    .into_bytes()
}

/// The config text of an in-process snapshot: gantry's providers and models (the ports and the
/// endpoint are never used), then `guards`.
fn snapshot_config(guards: &str) -> String {
    let ports = StackPorts {
        listen: 10000,
        admin: 10002,
        ext_proc: 10001,
    };
    gantry_config(
        &ports,
        "127.0.0.1:18080".parse().expect("an address"),
        guards,
    )
}

fn compile(yaml: &str) -> anyhow::Result<Snapshot> {
    let config = ConfigFile::parse(yaml).map_err(|e| anyhow!("{e}"))?;
    Ok(Snapshot::compile(&config, &|_| None))
}

/// The two snapshots and the bodies, checked by [`PromptBench::prepare`].
pub struct PromptBench {
    unguarded: Snapshot,
    guarded: Snapshot,
    /// Per size in [`PROMPT_KIB`]: the body.
    bodies: Vec<Vec<u8>>,
}

/// Whether a batch plans with guards.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Variant {
    Unguarded,
    Guarded,
}

impl Variant {
    const ALL: [Variant; 2] = [Variant::Unguarded, Variant::Guarded];

    fn name(self) -> &'static str {
        match self {
            Variant::Unguarded => "unguarded",
            Variant::Guarded => "guarded",
        }
    }
}

/// The inputs ext_proc gives `plan_forward_in` for an anonymous chat request (no auth, no
/// routing rules or governance that would make it keep headers).
fn plan(snapshot: &Snapshot, body: &[u8]) -> Result<gantry_policy::ForwardPlan, String> {
    let caller = Caller::default();
    let request = RequestContext {
        caller: &caller,
        method: "POST",
        path: CHAT_PATH,
        headers: &[],
    };
    plan_forward_in(snapshot, LlmApi::ChatCompletions, body, &request).map_err(|reply| {
        format!(
            "plan_forward_in answered HTTP {}: {}",
            reply.status,
            excerpt(&reply.body)
        )
    })
}

impl PromptBench {
    /// Compiles both snapshots and checks them: the guarded one has request guards and finds
    /// (logs) an address and masks the pattern in a probe prompt, the unguarded one neither;
    /// every measured body plans on both, with the model rewritten and no guard hit.
    pub fn prepare() -> anyhow::Result<PromptBench> {
        let unguarded = compile(&snapshot_config("")).context("the unguarded config")?;
        let guarded = compile(&snapshot_config(REQUEST_GUARDS)).context("the guarded config")?;
        if unguarded.guards.has_request_guards() || !guarded.guards.has_request_guards() {
            bail!("guards probe: the guarded snapshot must have request guards, the other none");
        }
        let probe = chat_body(&format!(
            "{} Write to jane.doe@example.net about Project Falcon.",
            prose(512)
        ));
        let hits = plan(&guarded, &probe).map_err(anyhow::Error::msg)?;
        let found: Vec<String> = hits.guard_hits.iter().map(ToString::to_string).collect();
        let text = String::from_utf8_lossy(&hits.body);
        if !found.iter().any(|hit| hit.contains("email"))
            || !found.iter().any(|hit| hit.contains("patterns[0]"))
            || !text.contains("[REDACTED:pattern]")
            || !text.contains("jane.doe@example.net")
        {
            bail!(
                "guards probe: the guarded snapshot should log the address and mask the \
                 pattern; hits {found:?}, body {}",
                excerpt(&hits.body)
            );
        }
        let clean = plan(&unguarded, &probe).map_err(anyhow::Error::msg)?;
        if !clean.guard_hits.is_empty()
            || String::from_utf8_lossy(&clean.body).contains("[REDACTED")
        {
            bail!("guards probe: the unguarded snapshot found something");
        }
        let bodies: Vec<Vec<u8>> = PROMPT_KIB
            .iter()
            .map(|kib| chat_body(&prose(kib * 1024)))
            .collect();
        for (kib, body) in PROMPT_KIB.iter().zip(&bodies) {
            for (variant, snapshot) in [
                (Variant::Unguarded, &unguarded),
                (Variant::Guarded, &guarded),
            ] {
                let planned = plan(snapshot, body)
                    .map_err(|e| anyhow!("guards probe: {kib} KiB {}: {e}", variant.name()))?;
                let model = serde_json::from_slice::<Value>(&planned.body)
                    .ok()
                    .and_then(|v| v["model"].as_str().map(str::to_owned));
                if model.as_deref() != Some(UPSTREAM_MODEL) {
                    bail!(
                        "guards probe: {kib} KiB {}: the planned body has model {model:?}, not \
                         {UPSTREAM_MODEL:?}",
                        variant.name()
                    );
                }
                if !planned.guard_hits.is_empty() {
                    let hits: Vec<String> =
                        planned.guard_hits.iter().map(ToString::to_string).collect();
                    bail!(
                        "guards probe: the {kib} KiB prose prompt should have no guard hits, has \
                         {hits:?}"
                    );
                }
            }
        }
        Ok(PromptBench {
            unguarded,
            guarded,
            bodies,
        })
    }

    pub fn print_setup(&self) {
        println!(
            "guards (in process): gantry_policy::plan_forward_in on two snapshots of gantry's \
             providers and models, without guards and with these (only the guards section \
             differs):\n{}",
            indent(REQUEST_GUARDS.trim_end())
        );
        let sizes: Vec<String> = PROMPT_KIB
            .iter()
            .zip(&self.bodies)
            .map(|(kib, body)| format!("{kib} KiB ({} bytes of body)", body.len()))
            .collect();
        println!(
            "guards (in process): chat bodies whose user message is English prose of {}; no \
             detector hits (checked)",
            sizes.join(", ")
        );
    }

    fn snapshot(&self, variant: Variant) -> &Snapshot {
        match variant {
            Variant::Unguarded => &self.unguarded,
            Variant::Guarded => &self.guarded,
        }
    }

    /// Per size, `rounds` pairs of batches, alternating unguarded and guarded; each batch times
    /// calls for `seconds / rounds` (at least [`MIN_CALLS`]). Blocking: call it on a blocking
    /// thread.
    pub fn measure(&self, seconds: Duration, rounds: usize) -> PromptResults {
        let budget = seconds / u32::try_from(rounds.max(1)).unwrap_or(u32::MAX);
        let mut sizes = Vec::new();
        for (index, &kib) in PROMPT_KIB.iter().enumerate() {
            let body = &self.bodies[index];
            for variant in Variant::ALL {
                for _ in 0..WARMUP_CALLS {
                    drop(black_box(plan(self.snapshot(variant), black_box(body))));
                }
            }
            let mut batches: [Vec<Batch>; 2] = [Vec::new(), Vec::new()];
            for round in 1..=rounds {
                for (slot, variant) in Variant::ALL.into_iter().enumerate() {
                    let batch = time_batch(self.snapshot(variant), body, budget);
                    println!(
                        "  round {round}/{rounds} {kib:>3} KiB {:<9}  median {:>9}  p99 {:>9}  \
                         ({} calls, {} errors){}",
                        variant.name(),
                        format_us(batch.median_us),
                        format_us(batch.p99_us),
                        batch.calls,
                        batch.errors,
                        batch
                            .first_error
                            .as_deref()
                            .map(|e| format!("  FIRST ERROR: {e}"))
                            .unwrap_or_default()
                    );
                    batches[slot].push(batch);
                }
            }
            let [unguarded, guarded] = batches;
            sizes.push(SizeResult {
                kib,
                prompt_bytes: kib * 1024,
                body_bytes: body.len(),
                unguarded: CallSummary::of(unguarded),
                guarded: CallSummary::of(guarded),
            });
        }
        PromptResults {
            budget,
            rounds,
            sizes,
        }
    }
}

/// One batch of calls of one variant at one size.
struct Batch {
    calls: u64,
    errors: u64,
    first_error: Option<String>,
    median_us: f64,
    p99_us: f64,
}

/// Times `plan_forward_in` call by call for `budget` (and at least [`MIN_CALLS`] calls).
fn time_batch(snapshot: &Snapshot, body: &[u8], budget: Duration) -> Batch {
    let start = Instant::now();
    let mut times_ns: Vec<u64> = Vec::new();
    let mut errors = 0;
    let mut first_error = None;
    while times_ns.len() + (errors as usize) < MIN_CALLS || start.elapsed() < budget {
        let sent = Instant::now();
        let planned = plan(snapshot, black_box(body));
        let elapsed = sent.elapsed();
        match black_box(planned) {
            Ok(_) => times_ns.push(u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX)),
            Err(error) => {
                errors += 1;
                first_error.get_or_insert(error);
            }
        }
    }
    times_ns.sort_unstable();
    let at = |fraction: f64| {
        if times_ns.is_empty() {
            return 0.0;
        }
        let rank = (fraction * times_ns.len() as f64).ceil() as usize;
        times_ns[rank.clamp(1, times_ns.len()) - 1] as f64 / 1000.0
    };
    Batch {
        calls: times_ns.len() as u64,
        errors,
        first_error,
        median_us: at(0.5),
        p99_us: at(0.99),
    }
}

/// One variant at one size: medians across batches.
struct CallSummary {
    median_us: f64,
    p99_us: f64,
    calls: u64,
    errors: u64,
    first_error: Option<String>,
    batches: Vec<Batch>,
}

impl CallSummary {
    fn of(batches: Vec<Batch>) -> CallSummary {
        CallSummary {
            median_us: median(batches.iter().map(|b| b.median_us)),
            p99_us: median(batches.iter().map(|b| b.p99_us)),
            calls: batches.iter().map(|b| b.calls).sum(),
            errors: batches.iter().map(|b| b.errors).sum(),
            first_error: batches.iter().find_map(|b| b.first_error.clone()),
            batches,
        }
    }

    fn to_json(&self) -> Value {
        json!({
            "median_us": round3(self.median_us),
            "p99_us": round3(self.p99_us),
            "calls": self.calls,
            "errors": self.errors,
            "rounds": self.batches.iter().map(|b| json!({
                "median_us": round3(b.median_us),
                "p99_us": round3(b.p99_us),
                "calls": b.calls,
                "errors": b.errors,
            })).collect::<Vec<_>>(),
        })
    }
}

fn median(values: impl IntoIterator<Item = f64>) -> f64 {
    let mut values: Vec<f64> = values.into_iter().collect();
    values.sort_by(f64::total_cmp);
    let n = values.len();
    match n {
        0 => 0.0,
        _ if n % 2 == 1 => values[n / 2],
        _ => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

fn round3(value: f64) -> f64 {
    (value * 1000.0).round() / 1000.0
}

/// One prompt size.
struct SizeResult {
    kib: usize,
    prompt_bytes: usize,
    body_bytes: usize,
    unguarded: CallSummary,
    guarded: CallSummary,
}

impl SizeResult {
    fn added_us(&self) -> f64 {
        self.guarded.median_us - self.unguarded.median_us
    }

    fn added_us_per_kib(&self) -> f64 {
        self.added_us() / (self.prompt_bytes as f64 / 1024.0)
    }

    fn ratio(&self) -> f64 {
        if self.unguarded.median_us > 0.0 {
            self.guarded.median_us / self.unguarded.median_us
        } else {
            0.0
        }
    }
}

/// What the in-process part measured.
pub struct PromptResults {
    budget: Duration,
    rounds: usize,
    sizes: Vec<SizeResult>,
}

/// What the stream part measured for one gateway: the medians across rounds of the time to the
/// first event, to the first content (TTFT) and to the end of the stream.
struct StreamSummary {
    first_event: Summary,
    ttft: Summary,
    total: Summary,
}

impl StreamSummary {
    fn to_json(&self) -> Value {
        json!({
            "ttft": self.ttft.to_json(),
            "first_event": self.first_event.to_json(),
            "total": self.total.to_json(),
        })
    }
}

/// The stream part's results.
pub struct StreamResults {
    gateways: Vec<(Gateway, StreamSummary)>,
}

/// Everything the scenario measured.
pub struct GuardResults {
    pub prompt: PromptResults,
    pub stream: StreamResults,
}

/// The request the stream part sends to one gateway.
struct StreamJob {
    url: String,
    body: String,
    reply: &'static str,
}

/// When the events of one stream arrived, after sending the request.
struct StreamTimes {
    first_event: Duration,
    ttft: Duration,
    total: Duration,
}

fn describe(error: reqwest::Error) -> String {
    format!("{:#}", anyhow::Error::from(error))
}

/// Sends the stream request and reads its events as they arrive. Returns when each was seen
/// and the streamed text (the deltas' content, concatenated); anything but a 200 SSE reply
/// that ends with `data: [DONE]` is an error.
async fn stream_once(
    client: &reqwest::Client,
    job: &StreamJob,
) -> Result<(StreamTimes, String), String> {
    let sent = Instant::now();
    let mut response = client
        .post(&job.url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header(controls::REPLY, job.reply)
        .header(controls::CHUNKS, STREAM_CHUNKS.to_string())
        .header(controls::CHUNK_DELAY_MS, STREAM_CHUNK_DELAY_MS.to_string())
        .body(job.body.clone())
        .send()
        .await
        .map_err(describe)?;
    let status = response.status();
    if status != reqwest::StatusCode::OK {
        let body = response.bytes().await.unwrap_or_default();
        return Err(format!("HTTP {status}: {}", excerpt(&body)));
    }
    let mut pending: Vec<u8> = Vec::new();
    let mut text = String::new();
    let mut first_event = None;
    let mut ttft = None;
    let mut done = false;
    while let Some(chunk) = response.chunk().await.map_err(describe)? {
        let arrived = sent.elapsed();
        pending.extend_from_slice(&chunk);
        while let Some(end) = pending.windows(2).position(|w| w == b"\n\n") {
            let event: Vec<u8> = pending.drain(..end + 2).collect();
            let event = std::str::from_utf8(&event).map_err(|_| "an event is not UTF-8")?;
            first_event.get_or_insert(arrived);
            for data in event.lines().filter_map(|l| l.strip_prefix("data:")) {
                let data = data.trim();
                if data == "[DONE]" {
                    done = true;
                    continue;
                }
                if done {
                    return Err("an event after data: [DONE]".to_owned());
                }
                let value: Value = serde_json::from_str(data)
                    .map_err(|e| format!("an event is not JSON ({e}): {data}"))?;
                if value.get("error").is_some() {
                    return Err(format!("an error event: {data}"));
                }
                let choices = value["choices"].as_array().map(Vec::as_slice);
                for choice in choices.unwrap_or_default() {
                    if let Some(content) = choice["delta"]["content"].as_str() {
                        if !content.is_empty() {
                            ttft.get_or_insert(arrived);
                            text.push_str(content);
                        }
                    }
                }
            }
        }
    }
    let total = sent.elapsed();
    if !done || !pending.iter().all(u8::is_ascii_whitespace) {
        return Err(format!(
            "the stream did not end with data: [DONE] (left over: {})",
            excerpt(&pending)
        ));
    }
    let (Some(first_event), Some(ttft)) = (first_event, ttft) else {
        return Err("the stream carried no content".to_owned());
    };
    Ok((
        StreamTimes {
            first_event,
            ttft,
            total,
        },
        text,
    ))
}

/// [`stream_once`], and the streamed text must be the reply the mock was given, unmasked.
async fn stream_checked(client: &reqwest::Client, job: &StreamJob) -> Result<StreamTimes, String> {
    let (times, text) = stream_once(client, job).await?;
    if text != job.reply {
        return Err(format!(
            "the streamed text is {:?}, not the mock's reply {:?}",
            excerpt(text.as_bytes()),
            job.reply
        ));
    }
    Ok(times)
}

fn stream_job(gateways: &Gateways, gateway: Gateway, bodies: &RequestBodies) -> StreamJob {
    StreamJob {
        url: gateways.url(gateway),
        body: bodies.stream.clone(),
        reply: STREAM_REPLY,
    }
}

/// Checks each gateway before anything is measured: the measured stream arrives complete and
/// unmasked, the mock received the alias (baseline) or the upstream model (gantry); the probe
/// reply (an address and the pattern) comes back masked through gantry+response-guards and
/// unchanged through gantry and the baseline.
pub async fn probe_stream(
    mock: &MockProvider,
    gateways: &mut Gateways,
    bodies: &RequestBodies,
) -> anyhow::Result<()> {
    let client = http_client()?;
    for gateway in STREAM_GATEWAYS {
        let name = gateway.name();
        let job = stream_job(gateways, gateway, bodies);
        mock.clear_recorded();
        let outcome = stream_checked(&client, &job).await;
        let recorded = mock.recorded();
        let model = match recorded.as_slice() {
            [request] => request
                .json()
                .and_then(|body| body["model"].as_str().map(str::to_owned)),
            _ => None,
        };
        let outcome = outcome.and_then(|_| {
            if model.as_deref() == Some(gateway.upstream_model()) {
                Ok(())
            } else {
                Err(format!(
                    "the mock received {} requests, model {model:?}, instead of one with {:?}",
                    recorded.len(),
                    gateway.upstream_model()
                ))
            }
        });
        let probe = StreamJob {
            reply: PROBE_REPLY,
            ..job
        };
        let outcome = match outcome {
            Ok(()) => stream_once(&client, &probe).await.and_then(|(_, text)| {
                let masked = PROBE_MASKED.iter().all(|m| text.contains(m))
                    && PROBE_SECRETS.iter().all(|s| !text.contains(s));
                match (gateway == Gateway::GantryResponseGuards, masked) {
                    (true, true) => Ok(()),
                    (false, _) if text == PROBE_REPLY => Ok(()),
                    (true, false) => Err(format!(
                        "the probe reply {PROBE_REPLY:?} came back as {text:?}, not masked: are \
                         the response guards loaded?"
                    )),
                    (false, _) => Err(format!(
                        "the probe reply {PROBE_REPLY:?} came back as {text:?}, not unchanged"
                    )),
                }
            }),
            Err(error) => Err(error),
        };
        mock.clear_recorded();
        if let Err(error) = outcome {
            bail!(
                "guards stream probe, {name}: {error}\n{}",
                logs_tail(gateways.process(gateway))
            );
        }
    }
    println!(
        "probes: the guarded snapshot logs an address and masks the pattern in a probe prompt \
         (the unguarded one finds nothing) and the prose prompts have no hits; every gateway \
         streams the reply complete and unmasked, the mock received '{ALIAS}' from the baseline \
         and '{UPSTREAM_MODEL}' from gantry; {PROBE_REPLY:?} comes back masked ({}) through \
         gantry+response-guards and unchanged through gantry and the baseline",
        PROBE_MASKED.join(", ")
    );
    Ok(())
}

/// `settings.rounds` rounds alternating the three gateways, each a closed loop of the stream
/// request on `settings.concurrency` connections.
pub async fn measure_stream(
    settings: &Settings,
    mock: &MockProvider,
    gateways: &mut Gateways,
    bodies: &RequestBodies,
) -> anyhow::Result<StreamResults> {
    println!("guards stream: {}", describe_stream());
    let name_width = STREAM_GATEWAYS
        .iter()
        .map(|gateway| gateway.name().len())
        .fold(ROUND_NAME_WIDTH, usize::max);
    let mut rounds: Vec<[Vec<RoundStats>; 3]> = STREAM_GATEWAYS
        .iter()
        .map(|_| [Vec::new(), Vec::new(), Vec::new()])
        .collect();
    for round in 1..=settings.rounds {
        for (slot, &gateway) in STREAM_GATEWAYS.iter().enumerate() {
            let job = Arc::new(stream_job(gateways, gateway, bodies));
            let [first_event, ttft, total] = stream_round(job, settings).await?;
            mock.clear_recorded();
            println!(
                "  round {round}/{} {:<name_width$} ttft p50 {:>9} p99 {:>9}  total p50 {:>9} \
                 p99 {:>9}  first event p50 {:>9}  ({} requests, {} errors){}",
                settings.rounds,
                gateway.name(),
                format_us(ttft.p50_us),
                format_us(ttft.p99_us),
                format_us(total.p50_us),
                format_us(total.p99_us),
                format_us(first_event.p50_us),
                total.count,
                total.errors,
                total
                    .first_error
                    .as_deref()
                    .map(|e| format!("  FIRST ERROR: {e}"))
                    .unwrap_or_default()
            );
            gateways.ensure_running(gateway)?;
            let [a, b, c] = &mut rounds[slot];
            a.push(first_event);
            b.push(ttft);
            c.push(total);
        }
    }
    Ok(StreamResults {
        gateways: STREAM_GATEWAYS
            .iter()
            .copied()
            .zip(rounds)
            .map(|(gateway, [first_event, ttft, total])| {
                (
                    gateway,
                    StreamSummary {
                        first_event: Summary::of(Unit::Requests, first_event),
                        ttft: Summary::of(Unit::Requests, ttft),
                        total: Summary::of(Unit::Requests, total),
                    },
                )
            })
            .collect(),
    })
}

fn describe_stream() -> String {
    format!(
        "the stream request; the mock streams a {}-byte reply in {STREAM_CHUNKS} content events \
         {STREAM_CHUNK_DELAY_MS} ms apart (pieces of ~{:.1} characters, cut inside words); TTFT \
         = to the first event with content",
        STREAM_REPLY.len(),
        STREAM_REPLY.len() as f64 / STREAM_CHUNKS as f64
    )
}

/// A warm-up, then a measured window: per connection, stream after stream. Returns the
/// round's statistics of the time to the first event, to the first content and to the end
/// (errors are counted in the last).
async fn stream_round(job: Arc<StreamJob>, settings: &Settings) -> anyhow::Result<[RoundStats; 3]> {
    let clients = (0..settings.concurrency)
        .map(|_| http_client())
        .collect::<anyhow::Result<Vec<_>>>()?;
    let window = Window::starting_now(settings.seconds);
    let mut connections = JoinSet::new();
    for client in clients {
        connections.spawn(stream_loop(client, Arc::clone(&job), window));
    }
    let mut totals: [Tally; 3] = Default::default();
    while let Some(tallies) = connections.join_next().await {
        let tallies = tallies.context("a stream load task failed")?;
        for (total, tally) in totals.iter_mut().zip(tallies) {
            total.absorb(tally);
        }
    }
    Ok(totals.map(|tally| RoundStats::new(tally, settings.seconds)))
}

async fn stream_loop(client: reqwest::Client, job: Arc<StreamJob>, window: Window) -> [Tally; 3] {
    let [mut first_event, mut ttft, mut total]: [Tally; 3] = Default::default();
    loop {
        let sent = Instant::now();
        if sent >= window.until {
            return [first_event, ttft, total];
        }
        let measured = sent >= window.measure_from;
        match stream_checked(&client, &job).await {
            Ok(times) => {
                first_event.record(Ok(()), times.first_event, measured);
                ttft.record(Ok(()), times.ttft, measured);
                total.record(Ok(()), times.total, measured);
            }
            Err(error) => total.record(Err(error), sent.elapsed(), measured),
        }
    }
}

impl StreamResults {
    fn get(&self, gateway: Gateway) -> &StreamSummary {
        &self
            .gateways
            .iter()
            .find(|(g, _)| *g == gateway)
            .expect("every stream gateway is measured")
            .1
    }

    fn errors(&self) -> u64 {
        self.gateways.iter().map(|(_, s)| s.total.errors).sum()
    }

    /// The two differences: (label, JSON key, note, a, b).
    fn comparisons(&self) -> [(&'static str, &'static str, &'static str, Gateway, Gateway); 2] {
        [
            (
                "gantry - baseline",
                "gantry_minus_baseline",
                "(what gantry adds)",
                Gateway::Gantry,
                Gateway::Baseline,
            ),
            (
                "response-guards - gantry",
                "response_guards_minus_gantry",
                "(the TTFT response guards add; see below)",
                Gateway::GantryResponseGuards,
                Gateway::Gantry,
            ),
        ]
    }

    fn print(&self, settings: &Settings) {
        println!(
            "== guards stream ({}): medians of {} rounds x {} s at concurrency {} ==",
            describe_stream(),
            settings.rounds,
            settings.seconds.as_secs(),
            settings.concurrency
        );
        println!(
            "  {:<LABEL_WIDTH$} {:>10} {:>10} {:>12} {:>10} {:>10} {:>9} {:>7}",
            "gateway",
            "ttft p50",
            "ttft p99",
            "1st event",
            "total p50",
            "total p99",
            "requests",
            "errors"
        );
        for (gateway, summary) in &self.gateways {
            println!(
                "  {:<LABEL_WIDTH$} {:>10} {:>10} {:>12} {:>10} {:>10} {:>9} {:>7}",
                gateway.name(),
                format_us(summary.ttft.p50_us),
                format_us(summary.ttft.p99_us),
                format_us(summary.first_event.p50_us),
                format_us(summary.total.p50_us),
                format_us(summary.total.p99_us),
                summary.total.count,
                summary.total.errors
            );
        }
        for (label, _, note, a, b) in self.comparisons() {
            let (a, b) = (self.get(a), self.get(b));
            println!(
                "  {label:<LABEL_WIDTH$} {:>10} {:>10} {:>12} {:>10} {:>10}   {note}",
                signed_us(a.ttft.p50_us - b.ttft.p50_us),
                signed_us(a.ttft.p99_us - b.ttft.p99_us),
                signed_us(a.first_event.p50_us - b.first_event.p50_us),
                signed_us(a.total.p50_us - b.total.p50_us),
                signed_us(a.total.p99_us - b.total.p99_us),
            );
        }
        println!(
            "  (the reply's first piece {:?} could still begin an address: the email rule holds \
             it back until the next event shows it does not, so response guards add about one \
             event interval to TTFT besides their scanning; the first event has no text and is \
             not held)",
            first_piece()
        );
        println!();
    }

    fn to_json(&self) -> Value {
        let mut object = Map::new();
        object.insert("reply_bytes".into(), json!(STREAM_REPLY.len()));
        object.insert("first_piece".into(), json!(first_piece()));
        object.insert("chunks".into(), json!(STREAM_CHUNKS));
        object.insert("chunk_delay_ms".into(), json!(STREAM_CHUNK_DELAY_MS));
        for (gateway, summary) in &self.gateways {
            object.insert(gateway.key().into(), summary.to_json());
        }
        for (_, key, _, a, b) in self.comparisons() {
            let (a, b) = (self.get(a), self.get(b));
            object.insert(
                key.into(),
                json!({
                    "added_ttft_p50_us": round1(a.ttft.p50_us - b.ttft.p50_us),
                    "added_ttft_p99_us": round1(a.ttft.p99_us - b.ttft.p99_us),
                    "added_first_event_p50_us": round1(a.first_event.p50_us - b.first_event.p50_us),
                    "added_total_p50_us": round1(a.total.p50_us - b.total.p50_us),
                    "added_total_p99_us": round1(a.total.p99_us - b.total.p99_us),
                }),
            );
        }
        Value::Object(object)
    }
}

/// The text of the mock's first content event: the first of [`STREAM_CHUNKS`] equal runs of
/// characters (the reply has fewer words than events), as the mock cuts it.
fn first_piece() -> &'static str {
    let chars = STREAM_REPLY.chars().count();
    let end = STREAM_REPLY
        .char_indices()
        .nth(chars / STREAM_CHUNKS)
        .map_or(STREAM_REPLY.len(), |(at, _)| at);
    &STREAM_REPLY[..end]
}

fn signed_us(us: f64) -> String {
    let sign = if us >= 0.0 { "+" } else { "-" };
    format!("{sign}{}", format_us(us.abs()))
}

/// Microseconds with two decimals below 10 µs (the in-process figures are small).
fn fine_us(us: f64) -> String {
    if us.abs() < 10.0 {
        format!("{us:.2} µs")
    } else if us.abs() < 1000.0 {
        format!("{us:.1} µs")
    } else {
        format!("{:.2} ms", us / 1000.0)
    }
}

impl PromptResults {
    fn errors(&self) -> u64 {
        self.sizes
            .iter()
            .map(|s| s.unguarded.errors + s.guarded.errors)
            .sum()
    }

    fn print(&self) {
        println!(
            "== guards per KiB of prompt (in process, plan_forward_in): medians of {} batches of \
             {:.2} s per size and variant ==",
            self.rounds,
            self.budget.as_secs_f64()
        );
        println!(
            "  {:<8} {:>11} {:>11} {:>11} {:>13} {:>7} {:>17}",
            "prompt", "unguarded", "guarded", "added", "added/KiB", "ratio", "calls (u/g)"
        );
        for size in &self.sizes {
            println!(
                "  {:<8} {:>11} {:>11} {:>11} {:>13} {:>6.2}x {:>17}",
                format!("{} KiB", size.kib),
                fine_us(size.unguarded.median_us),
                fine_us(size.guarded.median_us),
                fine_us(size.added_us()),
                format!("{}/KiB", fine_us(size.added_us_per_kib())),
                size.ratio(),
                format!("{}/{}", size.unguarded.calls, size.guarded.calls)
            );
        }
        println!(
            "  (median per call; added = guarded - unguarded; added/KiB = added per KiB of user \
             message; ratio = guarded/unguarded)"
        );
        println!();
    }

    fn to_json(&self) -> Value {
        let mut sizes = Map::new();
        for size in &self.sizes {
            sizes.insert(
                format!("{}kib", size.kib),
                json!({
                    "prompt_bytes": size.prompt_bytes,
                    "body_bytes": size.body_bytes,
                    "unguarded": size.unguarded.to_json(),
                    "guarded": size.guarded.to_json(),
                    "added_us": round3(size.added_us()),
                    "added_us_per_kib": round3(size.added_us_per_kib()),
                    "ratio": round3(size.ratio()),
                }),
            );
        }
        json!({
            "entry_point": "gantry_policy::plan_forward_in",
            "request_guards": REQUEST_GUARDS,
            "prompt": "English prose, no detector hits",
            "batch_seconds": round3(self.budget.as_secs_f64()),
            "sizes": sizes,
        })
    }
}

impl GuardResults {
    pub fn errors(&self) -> u64 {
        self.prompt.errors() + self.stream.errors()
    }

    /// `(what, errors, first error)` for everything that had errors.
    pub fn failures(&self) -> Vec<(String, u64, Option<&str>)> {
        let mut failures = Vec::new();
        for size in &self.prompt.sizes {
            for (variant, summary) in [
                (Variant::Unguarded, &size.unguarded),
                (Variant::Guarded, &size.guarded),
            ] {
                if summary.errors > 0 {
                    failures.push((
                        format!("guards {} KiB / {}", size.kib, variant.name()),
                        summary.errors,
                        summary.first_error.as_deref(),
                    ));
                }
            }
        }
        for (gateway, summary) in &self.stream.gateways {
            if summary.total.errors > 0 {
                failures.push((
                    format!("guards stream / {}", gateway.name()),
                    summary.total.errors,
                    summary.total.first_error.as_deref(),
                ));
            }
        }
        failures
    }

    pub fn print(&self, settings: &Settings) {
        self.prompt.print();
        self.stream.print(settings);
    }

    pub fn to_json(&self) -> Value {
        json!({
            "prompt": self.prompt.to_json(),
            "stream": self.stream.to_json(),
            "response_guards": response_guards_section(),
        })
    }
}
