//! Token usage: read from JSON replies and from SSE streams.
//!
//! For a stream, [`StreamAccountant`] watches the events as they pass. When Gantry itself asked
//! the provider for `stream_options.include_usage` (the client did not), it also takes the
//! usage back out: the usage-only final chunk is dropped and the `"usage":null` field that
//! providers add to every other chunk is removed, so the client sees the stream it asked for.

use serde::Deserialize;

use crate::json_object::RawObject;
use crate::sse::{line_ending, single_data_payload, SseFramer};

/// Token counts of one exchange.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
    /// Prompt tokens served from the provider's cache (`prompt_tokens_details.cached_tokens`),
    /// part of `prompt_tokens`.
    pub cached_tokens: u64,
}

#[derive(Deserialize)]
struct PromptDetails {
    #[serde(default)]
    cached_tokens: Option<u64>,
}

#[derive(Deserialize)]
struct UsageFields {
    #[serde(default)]
    prompt_tokens: Option<u64>,
    #[serde(default)]
    completion_tokens: Option<u64>,
    #[serde(default)]
    total_tokens: Option<u64>,
    #[serde(default)]
    prompt_tokens_details: Option<PromptDetails>,
}

#[derive(Deserialize)]
struct WithUsage {
    #[serde(default)]
    usage: Option<UsageFields>,
}

impl From<UsageFields> for Usage {
    fn from(u: UsageFields) -> Usage {
        let prompt = u.prompt_tokens.unwrap_or(0);
        let completion = u.completion_tokens.unwrap_or(0);
        Usage {
            prompt_tokens: prompt,
            completion_tokens: completion,
            total_tokens: u.total_tokens.unwrap_or(prompt + completion),
            cached_tokens: u
                .prompt_tokens_details
                .and_then(|d| d.cached_tokens)
                .unwrap_or(0)
                .min(prompt),
        }
    }
}

/// The `usage` object of a JSON reply (chat, completions, embeddings), if it has one.
pub fn usage_from_json(body: &[u8]) -> Option<Usage> {
    serde_json::from_slice::<WithUsage>(body)
        .ok()?
        .usage
        .map(Usage::from)
}

/// What to do with one response body chunk of a stream.
#[derive(Debug, PartialEq, Eq)]
pub enum ChunkOutput {
    /// Pass the chunk on as it is.
    Unchanged,
    /// Pass these bytes on instead (possibly empty).
    Replace(Vec<u8>),
}

/// Follows one SSE response: collects usage, and strips it when Gantry injected the request.
#[derive(Debug)]
pub struct StreamAccountant {
    framer: SseFramer,
    strip_usage: bool,
    usage: Option<Usage>,
    /// Events carrying generated text: about one token each on OpenAI-style streams.
    text_events: u64,
}

impl StreamAccountant {
    /// `strip_usage`: Gantry added `include_usage` to the request, so the client must not see it.
    pub fn new(strip_usage: bool) -> StreamAccountant {
        StreamAccountant {
            framer: SseFramer::new(),
            strip_usage,
            usage: None,
            text_events: 0,
        }
    }

    pub fn usage(&self) -> Option<Usage> {
        self.usage
    }

    /// How many events so far carried generated text (`"content":"…"` or `"text":"…"`): the
    /// output tokens of a stream cut short before its usage chunk, to within a token or so
    /// per event on OpenAI-style streams.
    pub fn text_events(&self) -> u64 {
        self.text_events
    }

    fn count_text(&mut self, event: &[u8]) {
        if contains(event, b"\"content\":\"") || contains(event, b"\"text\":\"") {
            self.text_events += 1;
        }
    }

    pub fn on_chunk(&mut self, chunk: &[u8], end_of_stream: bool) -> ChunkOutput {
        let events = self.framer.push(chunk);
        if !self.strip_usage {
            for event in &events {
                self.count_text(event);
                self.observe(event);
            }
            if end_of_stream {
                let tail = self.framer.take_pending();
                self.count_text(&tail);
                self.observe(&tail);
            }
            return ChunkOutput::Unchanged;
        }
        let mut out = Vec::with_capacity(chunk.len());
        for event in &events {
            self.count_text(event);
            self.strip(event, &mut out);
        }
        if end_of_stream {
            let tail = self.framer.take_pending();
            self.count_text(&tail);
            self.strip(&tail, &mut out);
        }
        if out == chunk {
            ChunkOutput::Unchanged
        } else {
            ChunkOutput::Replace(out)
        }
    }

    fn observe(&mut self, event: &[u8]) {
        if !contains(event, b"\"usage\"") {
            return;
        }
        if let Some(usage) = single_data_payload(event).and_then(usage_from_json) {
            self.usage = Some(usage);
        }
    }

    /// Appends `event` to `out` without the usage Gantry asked for.
    fn strip(&mut self, event: &[u8], out: &mut Vec<u8>) {
        if !contains(event, b"\"usage\"") {
            out.extend_from_slice(event);
            return;
        }
        let Some(mut object) = single_data_payload(event).and_then(|p| RawObject::parse(p).ok())
        else {
            out.extend_from_slice(event);
            return;
        };
        if let Some(usage) = object
            .get("usage")
            .and_then(|raw| serde_json::from_str::<Option<UsageFields>>(raw.get()).ok())
            .flatten()
        {
            self.usage = Some(usage.into());
        }
        object.remove("usage");
        let no_choices = object
            .get("choices")
            .is_some_and(|raw| raw.get().trim() == "[]");
        if no_choices {
            // The usage-only chunk that exists only because Gantry asked for it.
            return;
        }
        let eol = line_ending(event);
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(&object.to_vec());
        out.extend_from_slice(eol);
        out.extend_from_slice(eol);
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    const WITH_USAGE: &str = concat!(
        "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"},\"finish_reason\":null}],\"usage\":null}\n\n",
        "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}],\"usage\":null}\n\n",
        "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":2,\"total_tokens\":7}}\n\n",
        "data: [DONE]\n\n",
    );
    const AS_CLIENT_ASKED: &str = concat!(
        "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"},\"finish_reason\":null}]}\n\n",
        "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n",
        "data: [DONE]\n\n",
    );

    fn run(accountant: &mut StreamAccountant, input: &[u8], chunk: usize) -> Vec<u8> {
        let mut out = Vec::new();
        let pieces: Vec<&[u8]> = input.chunks(chunk).collect();
        for (i, piece) in pieces.iter().enumerate() {
            match accountant.on_chunk(piece, i + 1 == pieces.len()) {
                ChunkOutput::Unchanged => out.extend_from_slice(piece),
                ChunkOutput::Replace(bytes) => out.extend_from_slice(&bytes),
            }
        }
        out
    }

    #[test]
    fn strips_injected_usage_whatever_the_chunking() {
        for chunk in [1, 7, 50, 1000] {
            let mut accountant = StreamAccountant::new(true);
            let out = run(&mut accountant, WITH_USAGE.as_bytes(), chunk);
            assert_eq!(
                String::from_utf8(out).unwrap(),
                AS_CLIENT_ASKED,
                "chunk size {chunk}"
            );
            assert_eq!(
                accountant.usage(),
                Some(Usage {
                    prompt_tokens: 5,
                    completion_tokens: 2,
                    total_tokens: 7,
                    cached_tokens: 0,
                })
            );
            assert_eq!(accountant.text_events(), 1, "one content delta");
        }
    }

    #[test]
    fn passes_through_when_the_client_asked_for_usage() {
        let mut accountant = StreamAccountant::new(false);
        let out = run(&mut accountant, WITH_USAGE.as_bytes(), 13);
        assert_eq!(String::from_utf8(out).unwrap(), WITH_USAGE);
        assert_eq!(accountant.usage().map(|u| u.total_tokens), Some(7));
    }

    #[test]
    fn stream_without_usage_reports_none() {
        let mut accountant = StreamAccountant::new(false);
        run(&mut accountant, AS_CLIENT_ASKED.as_bytes(), 10);
        assert_eq!(accountant.usage(), None);
    }

    #[test]
    fn reads_usage_from_json_replies() {
        let body = br#"{"id":"x","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7}}"#;
        assert_eq!(usage_from_json(body).map(|u| u.total_tokens), Some(7));
        let embeddings =
            br#"{"object":"list","data":[],"usage":{"prompt_tokens":6,"total_tokens":6}}"#;
        assert_eq!(
            usage_from_json(embeddings),
            Some(Usage {
                prompt_tokens: 6,
                completion_tokens: 0,
                total_tokens: 6,
                cached_tokens: 0,
            })
        );
        let cached = br#"{"usage":{"prompt_tokens":10,"completion_tokens":1,"prompt_tokens_details":{"cached_tokens":8}}}"#;
        assert_eq!(usage_from_json(cached).map(|u| u.cached_tokens), Some(8));
        assert_eq!(usage_from_json(b"not json"), None);
        assert_eq!(usage_from_json(br#"{"usage":null}"#), None);
    }
}
