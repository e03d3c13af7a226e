//! One streamed (SSE) reply as the adapters pass it on: the usage accountant first (it reads
//! the usage and strips what Gantry injected), then the response guards over the text the client
//! will see. Both adapters (ext_proc and the dynamic module) feed every upstream chunk through
//! [`ResponseStream::on_chunk`] and send what it returns.

use crate::guard::response::{ResponseGuardStream, ResponseGuards};
use crate::guard::{GuardHit, GuardSelection};
use crate::openai_api::LlmApi;
use crate::usage::{ChunkOutput, StreamAccountant, Usage};

pub struct ResponseStream {
    accountant: StreamAccountant,
    /// `None` without response guards.
    guard: Option<ResponseGuardStream>,
    /// A guard refused the answer: nothing more of the upstream body goes out.
    rejected: bool,
}

impl ResponseStream {
    /// `strip_usage`: Gantry injected `include_usage`, so the client must not see the usage.
    pub fn new(api: LlmApi, strip_usage: bool, guards: &ResponseGuards) -> ResponseStream {
        ResponseStream::selected(api, strip_usage, guards, &GuardSelection::all())
    }

    /// [`ResponseStream::new`] running only the response guards `selection` leaves on (the
    /// request's [`ForwardPlan::guard_selection`](crate::ForwardPlan::guard_selection)).
    pub fn selected(
        api: LlmApi,
        strip_usage: bool,
        guards: &ResponseGuards,
        selection: &GuardSelection,
    ) -> ResponseStream {
        let runs_any = guards
            .names()
            .enumerate()
            .any(|(i, _)| selection.runs_response(i));
        ResponseStream {
            accountant: StreamAccountant::new(strip_usage),
            guard: runs_any.then(|| guards.stream_selected(api, selection)),
            rejected: false,
        }
    }

    /// What to send in place of `chunk`. After a refusal (the error event and `[DONE]` were
    /// sent), every later chunk is replaced by nothing; the accountant still reads them all.
    pub fn on_chunk(&mut self, chunk: &[u8], end_of_stream: bool) -> ChunkOutput {
        let accounted = self.accountant.on_chunk(chunk, end_of_stream);
        let Some(guard) = self.guard.as_mut() else {
            return accounted;
        };
        if self.rejected {
            return ChunkOutput::Replace(Vec::new());
        }
        let visible: &[u8] = match &accounted {
            ChunkOutput::Unchanged => chunk,
            ChunkOutput::Replace(bytes) => bytes,
        };
        let guarded = guard.on_chunk(visible, end_of_stream);
        if let Some(rejection) = &guarded.rejected {
            self.rejected = true;
            tracing::info!(hit = %rejection.hit, "a response guard ended the stream");
        }
        guarded.into_output(chunk)
    }

    pub fn usage(&self) -> Option<Usage> {
        self.accountant.usage()
    }

    pub fn text_events(&self) -> u64 {
        self.accountant.text_events()
    }

    /// Whether a guard refused the answer mid-stream.
    pub fn rejected(&self) -> bool {
        self.rejected
    }

    /// What the response guards found so far (never the matched text).
    pub fn guard_hits(&self) -> Vec<GuardHit> {
        self.guard.as_ref().map(|g| g.hits()).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ResponseGuardSection;

    fn guards(yaml: &str) -> ResponseGuards {
        let sections: Vec<ResponseGuardSection> = serde_saphyr::from_str(yaml).unwrap();
        ResponseGuards::compile(&sections).unwrap()
    }

    fn event(content: &str) -> String {
        format!(
            "data: {{\"choices\":[{{\"index\":0,\"delta\":{{\"content\":{content:?}}},\"finish_reason\":null}}],\"usage\":null}}\n\n"
        )
    }

    fn run(stream: &mut ResponseStream, chunks: &[String]) -> String {
        let mut out = String::new();
        for (i, chunk) in chunks.iter().enumerate() {
            match stream.on_chunk(chunk.as_bytes(), i + 1 == chunks.len()) {
                ChunkOutput::Unchanged => out.push_str(chunk),
                ChunkOutput::Replace(bytes) => out.push_str(&String::from_utf8(bytes).unwrap()),
            }
        }
        out
    }

    #[test]
    fn usage_is_stripped_then_text_is_masked_across_events() {
        let g = guards("- { name: m, action: mask, detectors: [credit_card] }\n");
        let mut stream = ResponseStream::new(LlmApi::ChatCompletions, true, &g);
        let usage = r#"data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}}"#;
        let out = run(
            &mut stream,
            &[
                event("card 4111 1111"),
                event(" 1111 1111 ok"),
                format!("{usage}\n\n"),
                "data: [DONE]\n\n".into(),
            ],
        );
        assert!(!out.contains("4111") && !out.contains("usage\":{"), "{out}");
        assert!(out.contains("[REDACTED:credit_card]"), "{out}");
        assert!(out.trim_end().ends_with("data: [DONE]"), "{out}");
        assert_eq!(stream.usage().unwrap().total_tokens, 5);
        assert_eq!(stream.guard_hits().len(), 1);
    }

    #[test]
    fn a_reject_ends_the_stream_but_usage_is_still_read() {
        let g = guards("- { name: r, action: reject, detectors: [us_ssn] }\n");
        let mut stream = ResponseStream::new(LlmApi::ChatCompletions, false, &g);
        let usage = r#"data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":9,"total_tokens":12}}"#;
        let out = run(
            &mut stream,
            &[
                event("hello "),
                event("ssn 123-45-6789 and more"),
                event("after"),
                format!("{usage}\n\n"),
                "data: [DONE]\n\n".into(),
            ],
        );
        assert!(stream.rejected());
        assert!(out.contains("response_guard_rejected"), "{out}");
        assert!(!out.contains("123-45") && !out.contains("after"), "{out}");
        assert_eq!(out.matches("[DONE]").count(), 1, "{out}");
        assert_eq!(stream.usage().unwrap().total_tokens, 12);
    }

    #[test]
    fn without_guards_it_is_the_accountant() {
        let mut stream =
            ResponseStream::new(LlmApi::ChatCompletions, false, &ResponseGuards::default());
        let chunk = event("plain");
        assert!(matches!(
            stream.on_chunk(chunk.as_bytes(), false),
            ChunkOutput::Unchanged
        ));
    }
}
