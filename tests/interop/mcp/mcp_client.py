"""A scripted MCP client (mcp 2.3.0) that Gantry's Rust tests drive: one connection, a list of
steps, one JSON report line on stdout.

    mcp_client.py --url http://127.0.0.1:18001/mcp --mode auto \\
        --header 'Authorization: Bearer t' --elicitation-answer '{"answer": "blue"}' \\
        --steps '[{"op": "list_tools"}, {"op": "call_tool", "name": "echo", "args": {"text": "hi"}}]'
    mcp_client.py --stdio-cmd '["python3", "fixture_server.py", "--transport", "stdio"]' --steps ...

--mode: auto (server/discover, falling back to initialize), legacy (initialize), or a modern
version such as 2026-07-28 (adopted without a probe). --transport: streamable-http or sse;
by default sse when the URL's path ends in /sse.

Steps (each {"op": ..., ...}):
  list_tools [cursor] [all: true = follow nextCursor, result {"tools": [...], "pages": n}]
  call_tool name [args] [meta]      list_prompts [cursor]      get_prompt name [args]
  list_resources [cursor]           list_resource_templates    read_resource uri
  complete ref ({"type": "ref/prompt", "name": ...} | {"type": "ref/resource", "uri": ...})
           argument ({"name": ..., "value": ...}) [context_arguments]
  session_id (the Mcp-Session-Id the server issued, or null)   ping (legacy only)
  sleep seconds     touch path (create a file)     wait_file path [timeout] (until it exists)
The touch/wait_file pair lets a test act between two steps (e.g. kill an upstream).

--elicitation-answer: when set, the client declares the elicitation capability and answers every
elicitation with action "accept" and this JSON object as content (the JSON strings "decline" and
"cancel" answer with that action instead). Without it, no elicitation capability is declared.

Report: {"protocol_version", "server_info", "session_id", "steps": [{"op", "ok": true, "result"}
| {"op", "ok": false, "error": {"code", "message", "data"}}], "elicitations": [params...],
"notifications": [{"method", "params"}]} plus "session_error" when the connection broke after
connecting. An MCP error in a step does not stop later steps. Exit 0, unless connecting failed:
then {"connect_error": "..."} and exit 1.
"""

import argparse
import json
import os
import shlex
import sys
import traceback
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import httpx2
import mcp_types as types
from mcp.client import Client
from mcp.client.sse import sse_client
from mcp.client.stdio import StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from pydantic import BaseModel


def dump(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json", by_alias=True, exclude_unset=True)
    if isinstance(value, list):
        return [dump(v) for v in value]
    return value


def parse_header(text: str) -> tuple[str, str]:
    name, sep, value = text.partition(":")
    if not sep or not name.strip():
        raise SystemExit(f"mcp_client: --header must look like 'Name: value', got {text!r}")
    return name.strip(), value.strip()


def error_report(exc: BaseException) -> dict[str, Any]:
    if isinstance(exc, MCPError):
        return {"code": exc.code, "message": exc.message, "data": dump(exc.data)}
    if isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        return error_report(exc.exceptions[0])
    return {"code": None, "message": f"{type(exc).__name__}: {exc}"}


class Recorder:
    """What the connection saw besides step results: session id, elicitations, notifications."""

    def __init__(self) -> None:
        self.session_id: str | None = None
        self.elicitations: list[Any] = []
        self.notifications: list[Any] = []

    async def on_response(self, response: httpx2.Response) -> None:
        session_id = response.headers.get("mcp-session-id")
        if session_id:
            self.session_id = session_id

    def on_sse_session(self, session_id: str) -> None:
        self.session_id = session_id

    async def on_message(self, message: Any) -> None:
        if isinstance(message, types.ServerNotification):
            root = getattr(message, "root", message)
            self.notifications.append(
                {"method": getattr(root, "method", None), "params": dump(getattr(root, "params", None))}
            )
        await anyio.lowlevel.checkpoint()


@asynccontextmanager
async def http_transport(url: str, headers: dict[str, str], recorder: Recorder) -> AsyncIterator[Any]:
    http = httpx2.AsyncClient(
        headers=headers,
        timeout=httpx2.Timeout(30.0, read=300.0),
        event_hooks={"response": [recorder.on_response]},
    )
    async with http:
        async with streamable_http_client(url, http_client=http) as streams:
            yield streams


def make_server(args: argparse.Namespace, headers: dict[str, str], recorder: Recorder) -> Any:
    if args.stdio_cmd:
        text = args.stdio_cmd.strip()
        argv = json.loads(text) if text.startswith("[") else shlex.split(text)
        return StdioServerParameters(command=argv[0], args=argv[1:])
    transport = args.transport
    if transport == "auto":
        transport = "sse" if args.url.rstrip("/").endswith("/sse") else "streamable-http"
    if transport == "sse":
        return sse_client(args.url, headers=headers, on_session_created=recorder.on_sse_session)
    return http_transport(args.url, headers, recorder)


def make_elicitation_callback(answer: Any, recorder: Recorder) -> Any:
    async def on_elicit(context: Any, params: Any) -> types.ElicitResult:
        recorder.elicitations.append(dump(params))
        if answer in ("decline", "cancel"):
            return types.ElicitResult(action=answer)
        return types.ElicitResult(action="accept", content=answer)

    return on_elicit


async def run_step(client: Client, step: dict[str, Any], recorder: Recorder) -> Any:
    op = step.get("op")
    if op == "list_tools":
        if step.get("all"):
            tools: list[Any] = []
            cursor = None
            pages = 0
            while True:
                page = await client.list_tools(cursor=cursor)
                pages += 1
                tools.extend(dump(page.tools))
                cursor = page.next_cursor
                if cursor is None or pages >= 1000:
                    return {"tools": tools, "pages": pages}
        return await client.list_tools(cursor=step.get("cursor"))
    if op == "call_tool":
        return await client.call_tool(step["name"], step.get("args") or {}, meta=step.get("meta"))
    if op == "list_prompts":
        return await client.list_prompts(cursor=step.get("cursor"))
    if op == "get_prompt":
        return await client.get_prompt(step["name"], step.get("args") or {})
    if op == "list_resources":
        return await client.list_resources(cursor=step.get("cursor"))
    if op == "list_resource_templates":
        return await client.list_resource_templates(cursor=step.get("cursor"))
    if op == "read_resource":
        return await client.read_resource(step["uri"])
    if op == "complete":
        raw_ref = step["ref"]
        if raw_ref.get("type") == "ref/resource":
            ref: Any = types.ResourceTemplateReference(type="ref/resource", uri=raw_ref["uri"])
        else:
            ref = types.PromptReference(type="ref/prompt", name=raw_ref["name"])
        return await client.complete(ref, step["argument"], step.get("context_arguments"))
    if op == "session_id":
        return recorder.session_id
    if op == "ping":
        return await client.send_ping()
    if op == "sleep":
        await anyio.sleep(float(step["seconds"]))
        return None
    if op == "touch":
        with open(step["path"], "w"):
            pass
        return None
    if op == "wait_file":
        with anyio.fail_after(float(step.get("timeout", 30))):
            while not os.path.exists(step["path"]):
                await anyio.sleep(0.02)
        return None
    raise ValueError(f"unknown op {op!r}")


async def run(args: argparse.Namespace) -> int:
    headers = dict(parse_header(h) for h in args.header)
    steps = json.loads(args.steps)
    if not isinstance(steps, list):
        raise SystemExit("mcp_client: --steps must be a JSON list")
    recorder = Recorder()
    answer = json.loads(args.elicitation_answer) if args.elicitation_answer is not None else None
    client = Client(
        make_server(args, headers, recorder),
        mode=args.mode,
        cache=None,
        read_timeout_seconds=args.step_timeout,
        elicitation_callback=make_elicitation_callback(answer, recorder) if answer is not None else None,
        message_handler=recorder.on_message,
        client_info=types.Implementation(name="gantry-test-client", version="1.0.0"),
    )
    report: dict[str, Any] = {}
    results: list[dict[str, Any]] = []
    connected = False
    try:
        async with client:
            connected = True
            report["protocol_version"] = client.protocol_version
            report["server_info"] = dump(client.server_info)
            for step in steps:
                entry: dict[str, Any] = {"op": step.get("op")}
                try:
                    with anyio.fail_after(args.step_timeout):
                        entry["result"] = dump(await run_step(client, step, recorder))
                    entry["ok"] = True
                except Exception as exc:  # an MCP error in one step must not stop the next
                    entry["ok"] = False
                    entry["error"] = error_report(exc)
                results.append(entry)
    except Exception as exc:  # the report must come out whatever broke
        traceback.print_exc(file=sys.stderr)
        if not connected:
            print(json.dumps({"connect_error": error_report(exc)["message"]}), flush=True)
            return 1
        report["session_error"] = error_report(exc)["message"]
    report["session_id"] = recorder.session_id
    report["steps"] = results
    report["elicitations"] = recorder.elicitations
    report["notifications"] = recorder.notifications
    print(json.dumps(report), flush=True)
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--url", help="the server's MCP endpoint (Streamable HTTP, or /sse)")
    target.add_argument("--stdio-cmd", help="a stdio server command: a JSON list, or a shell-quoted string")
    parser.add_argument("--transport", choices=["auto", "streamable-http", "sse"], default="auto")
    parser.add_argument("--mode", default="auto", help="auto, legacy, or a modern version (2026-07-28)")
    parser.add_argument("--header", action="append", default=[], help="'Name: value', repeatable")
    parser.add_argument("--elicitation-answer", help="JSON content to accept every elicitation with")
    parser.add_argument("--steps", default="[]", help="a JSON list of steps")
    parser.add_argument(
        "--step-timeout", type=float, default=60.0, help="seconds for the handshake's and each step's requests"
    )
    args = parser.parse_args()
    sys.exit(anyio.run(run, args))


if __name__ == "__main__":
    main()
