"""Drives a Gantry stack with the official OpenAI Python SDK.

Run by tests/e2e/interop.rs. Exercises a non-streamed and a streamed chat completion (with and
without stream_options.include_usage), embeddings, the model list and an unknown model, then
prints one JSON report line for the Rust test to check.
"""

import argparse
import json
import sys

import openai
from openai import OpenAI


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--model", required=True)
    args = parser.parse_args()

    # The SDK insists on a key; Gantry replaces it with the provider's own.
    client = OpenAI(base_url=args.base_url, api_key="sk-client-side-placeholder", max_retries=0, timeout=30)
    messages = [{"role": "user", "content": "hello from the openai sdk"}]
    report = {"sdk_version": openai.__version__}

    chat = client.chat.completions.create(model=args.model, messages=messages)
    report["chat_model"] = chat.model
    report["chat_text"] = chat.choices[0].message.content
    report["chat_total_tokens"] = chat.usage.total_tokens

    pieces = []
    chunks_with_usage = 0
    for chunk in client.chat.completions.create(model=args.model, messages=messages, stream=True):
        if getattr(chunk, "usage", None) is not None:
            chunks_with_usage += 1
        if chunk.choices and chunk.choices[0].delta.content:
            pieces.append(chunk.choices[0].delta.content)
    report["stream_text"] = "".join(pieces)
    report["stream_chunks_with_usage"] = chunks_with_usage

    usage_total = None
    for chunk in client.chat.completions.create(
        model=args.model, messages=messages, stream=True, stream_options={"include_usage": True}
    ):
        if chunk.usage is not None:
            usage_total = chunk.usage.total_tokens
    report["stream_with_usage_total_tokens"] = usage_total

    embedding = client.embeddings.create(model=args.model, input="embed me")
    report["embedding_dimensions"] = len(embedding.data[0].embedding)

    report["models"] = [m.id for m in client.models.list()]

    try:
        client.chat.completions.create(model="no-such-model", messages=messages)
        report["unknown_model_status"] = None
    except openai.NotFoundError as error:
        report["unknown_model_status"] = error.status_code
        report["unknown_model_code"] = error.code

    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
