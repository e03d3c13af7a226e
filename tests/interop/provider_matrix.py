"""Every front door x provider pair with the official SDKs: the OpenAI SDK (chat completions)
and the Anthropic SDK (Messages API), each against every model given, plain, streamed, and a
tool call followed by its result.

Run by tests/e2e/interop.rs; prints one JSON report line: {"<sdk>/<model>": {...}}.
"""

import argparse
import json
import sys

import anthropic
import openai

WEATHER_OPENAI = [{
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "the weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}]
WEATHER_ANTHROPIC = [{
    "name": "get_weather",
    "description": "the weather in a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}]


def with_openai(client, model):
    out = {}
    messages = [{"role": "user", "content": "hello"}]
    chat = client.chat.completions.create(model=model, messages=messages, max_tokens=64)
    out["text"] = chat.choices[0].message.content
    out["total_tokens"] = chat.usage.total_tokens
    pieces = []
    for chunk in client.chat.completions.create(model=model, messages=messages, max_tokens=64, stream=True):
        if chunk.choices and chunk.choices[0].delta.content:
            pieces.append(chunk.choices[0].delta.content)
    out["stream_text"] = "".join(pieces)
    ask = [{"role": "user", "content": "weather in Paris?"}]
    call = client.chat.completions.create(model=model, messages=ask, tools=WEATHER_OPENAI, max_tokens=64)
    tool_call = call.choices[0].message.tool_calls[0]
    out["finish_reason"] = call.choices[0].finish_reason
    out["tool"] = tool_call.function.name
    out["tool_arguments"] = json.loads(tool_call.function.arguments)
    # Streamed tool call: the SDK's stream helper assembles the fragments.
    name, arguments = "", ""
    for chunk in client.chat.completions.create(model=model, messages=ask, tools=WEATHER_OPENAI, max_tokens=64, stream=True):
        deltas = (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []
        for delta in deltas:
            if delta.function is not None:
                name += delta.function.name or ""
                arguments += delta.function.arguments or ""
    out["stream_tool"] = name
    out["stream_tool_arguments"] = json.loads(arguments) if arguments else None
    follow = ask + [
        {"role": "assistant", "content": None, "tool_calls": [tool_call.model_dump()]},
        {"role": "tool", "tool_call_id": tool_call.id, "content": "sunny"},
    ]
    answer = client.chat.completions.create(model=model, messages=follow, tools=WEATHER_OPENAI, max_tokens=64)
    out["after_tool"] = answer.choices[0].message.content
    return out


def with_anthropic(client, model):
    out = {}
    messages = [{"role": "user", "content": "hello"}]
    reply = client.messages.create(model=model, max_tokens=64, messages=messages)
    out["text"] = "".join(b.text for b in reply.content if b.type == "text")
    out["total_tokens"] = reply.usage.input_tokens + reply.usage.output_tokens
    with client.messages.stream(model=model, max_tokens=64, messages=messages) as stream:
        out["stream_text"] = "".join(stream.text_stream)
        final = stream.get_final_message()
    out["stream_output_tokens"] = final.usage.output_tokens
    ask = [{"role": "user", "content": "weather in Paris?"}]
    call = client.messages.create(model=model, max_tokens=64, tools=WEATHER_ANTHROPIC, messages=ask)
    tool_use = next(b for b in call.content if b.type == "tool_use")
    out["finish_reason"] = call.stop_reason
    out["tool"] = tool_use.name
    out["tool_arguments"] = tool_use.input
    with client.messages.stream(model=model, max_tokens=64, tools=WEATHER_ANTHROPIC, messages=ask) as stream:
        streamed = stream.get_final_message()
    streamed_use = next(b for b in streamed.content if b.type == "tool_use")
    out["stream_tool"] = streamed_use.name
    out["stream_tool_arguments"] = streamed_use.input
    follow = ask + [
        {"role": "assistant", "content": [tool_use.model_dump()]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": tool_use.id, "content": "sunny"}]},
    ]
    answer = client.messages.create(model=model, max_tokens=64, tools=WEATHER_ANTHROPIC, messages=follow)
    out["after_tool"] = "".join(b.text for b in answer.content if b.type == "text")
    return out


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--base-url", required=True, help="the gateway, without /v1")
    parser.add_argument("--models", required=True, help="comma-separated aliases")
    args = parser.parse_args()
    # The SDKs insist on a key; Gantry replaces it with the provider's own.
    oai = openai.OpenAI(base_url=args.base_url + "/v1", api_key="sk-placeholder", max_retries=0, timeout=30)
    ant = anthropic.Anthropic(base_url=args.base_url, api_key="sk-ant-placeholder", max_retries=0, timeout=30)
    report = {}
    for model in args.models.split(","):
        for sdk, run, client in (("openai", with_openai, oai), ("anthropic", with_anthropic, ant)):
            try:
                report[f"{sdk}/{model}"] = run(client, model)
            except Exception as error:  # reported, and the Rust test names the pair
                report[f"{sdk}/{model}"] = {"error": f"{type(error).__name__}: {error}"}
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
