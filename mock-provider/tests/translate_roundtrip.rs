//! The policy's translation core against the mock's native formats over real HTTP: for every
//! provider format, a canonical chat request is built into a provider call
//! (`ProviderFormat::call`, credentials and SigV4 included), sent to the mock, and its reply
//! (JSON or stream) read back into canonical form: plain text, then a tool call and its result.

use std::time::SystemTime;

use gantry_mock_provider::{MockConfig, MockProvider};
use gantry_policy::translate::bedrock::AwsCredentials;
use gantry_policy::translate::provider::{ProviderCall, ProviderCredential, ProviderFormat};
use serde_json::{json, Value};

const KEY: &str = "roundtrip-secret";

async fn mock() -> MockProvider {
    MockProvider::start(
        ([127, 0, 0, 1], 0).into(),
        MockConfig {
            name: "native".into(),
            expected_api_key: Some(KEY.into()),
            chunk_delay: std::time::Duration::from_millis(1),
            ..MockConfig::default()
        },
    )
    .await
    .expect("mock starts")
}

fn credential(format: ProviderFormat) -> ProviderCredential {
    match format {
        ProviderFormat::Bedrock => ProviderCredential::Aws {
            credentials: AwsCredentials {
                access_key_id: "AKIDROUNDTRIP".into(),
                secret_access_key: KEY.into(),
                session_token: None,
            },
            region: "us-east-1".into(),
        },
        _ => ProviderCredential::ApiKey(KEY.into()),
    }
}

fn model(format: ProviderFormat) -> &'static str {
    match format {
        ProviderFormat::OpenAi => "gpt-4o-mini",
        ProviderFormat::Anthropic => "claude-sonnet-4-5",
        ProviderFormat::Gemini => "gemini-2.5-flash",
        ProviderFormat::Bedrock => "anthropic.claude-3-5-sonnet-20240620-v1:0",
    }
}

async fn send(server: &MockProvider, call: &ProviderCall) -> reqwest::Response {
    let mut request = reqwest::Client::new()
        .post(format!("{}{}", server.base_url(), call.path))
        .body(call.body.clone());
    for (name, value) in &call.headers {
        request = request.header(name, value);
    }
    request.send().await.expect("the mock answers")
}

/// Sends `chat` in `format`'s wire format and returns the canonical reply (for a stream: the
/// `chat.completion.chunk` payloads, `[DONE]` last).
async fn round_trip(server: &MockProvider, format: ProviderFormat, chat: &Value) -> Vec<Value> {
    let host = server.addr().to_string();
    let call = format
        .call(
            chat,
            model(format),
            &credential(format),
            &host,
            SystemTime::now(),
        )
        .unwrap_or_else(|e| panic!("{format:?}: {e}"));
    let response = send(server, &call).await;
    let status = response.status().as_u16();
    assert_eq!(status, 200, "{format:?}: {:?}", response.text().await);
    if !call.stream {
        let body = response.bytes().await.unwrap();
        let reply = format.reply(status, &body, None, "alias");
        assert_eq!(reply.status, 200, "{format:?}");
        return vec![serde_json::from_slice(&reply.body).unwrap()];
    }
    let bytes = response.bytes().await.unwrap();
    let canonical = match format.stream("alias", true) {
        None => bytes.to_vec(),
        Some(mut translator) => {
            // Fed in small pieces, as Envoy would hand them over.
            let mut out = Vec::new();
            for piece in bytes.chunks(7) {
                out.extend(translator.push(piece));
            }
            out.extend(translator.finish());
            out
        }
    };
    let text = String::from_utf8(canonical).unwrap();
    text.split("\n\n")
        .filter_map(|event| event.strip_prefix("data: "))
        .map(|data| {
            if data == "[DONE]" {
                Value::String("[DONE]".into())
            } else {
                serde_json::from_str(data).unwrap_or_else(|e| panic!("{format:?} {data}: {e}"))
            }
        })
        .collect()
}

const FORMATS: [ProviderFormat; 4] = [
    ProviderFormat::OpenAi,
    ProviderFormat::Anthropic,
    ProviderFormat::Gemini,
    ProviderFormat::Bedrock,
];

#[tokio::test]
async fn plain_and_streamed_text_in_every_format() {
    let server = mock().await;
    for format in FORMATS {
        let chat = json!({"model": "alias", "max_tokens": 64, "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "say hello"},
        ]});
        let replies = round_trip(&server, format, &chat).await;
        let reply = &replies[0];
        let text = reply["choices"][0]["message"]["content"]
            .as_str()
            .unwrap_or_default();
        assert!(text.contains("mock"), "{format:?}: {reply}");
        // Translated replies answer for the name they are given; OpenAI's pass through as
        // the provider wrote them.
        let expected_model = match format {
            ProviderFormat::OpenAi => model(format),
            _ => "alias",
        };
        assert_eq!(reply["model"], expected_model, "{format:?}");
        assert_eq!(reply["choices"][0]["finish_reason"], "stop", "{format:?}");
        assert!(
            reply["usage"]["completion_tokens"].as_u64().unwrap_or(0) > 0,
            "{format:?}: {reply}"
        );

        let mut chat = chat;
        chat["stream"] = json!(true);
        chat["stream_options"] = json!({"include_usage": true});
        let chunks = round_trip(&server, format, &chat).await;
        assert_eq!(
            chunks.last(),
            Some(&Value::String("[DONE]".into())),
            "{format:?}"
        );
        let streamed: String = chunks
            .iter()
            .filter_map(|c| {
                c.pointer("/choices/0/delta/content")
                    .and_then(Value::as_str)
            })
            .collect();
        assert_eq!(
            streamed, text,
            "{format:?}: the stream and the JSON reply differ"
        );
        let usage = chunks
            .iter()
            .rev()
            .find_map(|c| c.get("usage").filter(|u| u.is_object()));
        assert!(usage.is_some(), "{format:?}: no usage chunk in {chunks:?}");
    }
}

#[tokio::test]
async fn a_tool_call_and_its_result_in_every_format() {
    let server = mock().await;
    let tools = json!([{"type": "function", "function": {
        "name": "get_weather",
        "description": "the weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    }}]);
    for format in FORMATS {
        let chat = json!({"model": "alias", "max_tokens": 64, "tools": tools, "messages": [
            {"role": "user", "content": "weather in Paris?"},
        ]});
        let reply = &round_trip(&server, format, &chat).await[0];
        let choice = &reply["choices"][0];
        assert_eq!(choice["finish_reason"], "tool_calls", "{format:?}: {reply}");
        let call = &choice["message"]["tool_calls"][0];
        assert_eq!(call["function"]["name"], "get_weather", "{format:?}");
        let arguments: Value =
            serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
        assert_eq!(arguments, json!({"city": "Paris"}), "{format:?}");

        // Streamed, the call arrives in fragments that add up to the same call.
        let mut streamed_chat = chat.clone();
        streamed_chat["stream"] = json!(true);
        let chunks = round_trip(&server, format, &streamed_chat).await;
        let mut name = String::new();
        let mut streamed_arguments = String::new();
        for chunk in &chunks {
            if let Some(call) = chunk.pointer("/choices/0/delta/tool_calls/0") {
                name.push_str(
                    call.pointer("/function/name")
                        .and_then(Value::as_str)
                        .unwrap_or(""),
                );
                streamed_arguments.push_str(
                    call.pointer("/function/arguments")
                        .and_then(Value::as_str)
                        .unwrap_or(""),
                );
            }
        }
        assert_eq!(name, "get_weather", "{format:?}: {chunks:?}");
        assert_eq!(
            serde_json::from_str::<Value>(&streamed_arguments).ok(),
            Some(json!({"city": "Paris"})),
            "{format:?}: {streamed_arguments}"
        );

        // The result goes back in the format's own shape, and the mock reports it.
        let follow_up = json!({"model": "alias", "max_tokens": 64, "tools": tools, "messages": [
            {"role": "user", "content": "weather in Paris?"},
            {"role": "assistant", "content": null, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": call["id"], "content": "sunny, 21C"},
        ]});
        let reply = &round_trip(&server, format, &follow_up).await[0];
        assert_eq!(
            reply["choices"][0]["message"]["content"], "the tool said: sunny, 21C",
            "{format:?}: {reply}"
        );
    }
}

#[tokio::test]
async fn provider_errors_keep_their_status_as_openai_error_objects() {
    let server = mock().await;
    for format in FORMATS {
        let chat = json!({"model": "alias", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]});
        let call = format
            .call(
                &chat,
                model(format),
                &credential(format),
                &server.addr().to_string(),
                SystemTime::now(),
            )
            .unwrap();
        let mut request = reqwest::Client::new()
            .post(format!("{}{}", server.base_url(), call.path))
            .header("x-mock-status", "429")
            .body(call.body.clone());
        for (name, value) in &call.headers {
            request = request.header(name, value);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let error_type = response
            .headers()
            .get("x-amzn-errortype")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = response.bytes().await.unwrap();
        let reply = format.reply(status, &body, error_type.as_deref(), "alias");
        assert_eq!(reply.status, 429, "{format:?}");
        let json: Value = serde_json::from_slice(&reply.body).unwrap();
        assert!(json["error"]["message"].is_string(), "{format:?}: {json}");
    }
}
