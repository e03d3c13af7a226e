"""A scripted A2A client on the official Python SDK (a2a-sdk 1.3.0) that Gantry's Rust tests drive.

    a2a_client.py --base http://127.0.0.1:18000 [--header 'K: V']... [--card-path PATH] \\
        [--rpc-url URL] [--timeout SECONDS] STEP...

--base is where the card is resolved (the gateway's public URL): the card is fetched from
BASE/.well-known/agent-card.json (or BASE/--card-path), and the SDK client then calls the URL the
card names. Every --header goes on every request (card, JSON-RPC, REST, raw). --rpc-url overrides
the JSON-RPC URL that the raw and 0.3 steps POST to (by default the card's JSONRPC interface URL,
so those steps resolve the card first). Every network call has a deadline of --timeout (20 s).

Steps run in order, sharing one httpx client and one resolved card; each prints ONE JSON line:

  card                  resolve the card (always refetched) -> {"card": <proto-JSON>, "jsonrpc_url",
                        "rest_url"}
  send:TEXT             non-streaming SendMessage (SDK client, JSONRPC) -> a result summary
  send-skill:SKILL:TEXT the same with message.metadata {"skill": SKILL}
  send-push:URL         SendMessage "push me" with configuration.taskPushNotificationConfig.url=URL
  stream:TEXT           SendStreamingMessage -> {"events": [task|statusUpdate|artifactUpdate|message],
                        "states", "final_state", "task_id", "artifacts"}
  get:last | get:ID     GetTask -> a task summary
  cancel-wait[:TEXT]    stream TEXT (default "wait for cancel"), take the task id from the first
                        event, wait (<= 5 s) for its WORKING statusUpdate, CancelTask it from the
                        same client -> {"task_id", "state" (CancelTask's answer), "first_event",
                        "events_before_cancel", "stream_after_cancel", "stream_states_after_cancel"}
  push:URL              CreateTaskPushNotificationConfig(last task, url=URL) -> {"config", "id", "url"}
  push-get[:ID]         GetTaskPushNotificationConfig(last task, ID or the last created config id)
  push-list             ListTaskPushNotificationConfigs(last task) -> {"configs": [...]}
  rest-send:TEXT        SendMessage over the card's HTTP+JSON interface (SDK REST transport)
  rest-get:last|ID      GetTask over HTTP+JSON
  v03-send:TEXT         a 0.3 client: raw JSON-RPC "message/send" with 0.3 shapes (kind, messageId,
                        parts [{"kind":"text"}]) and NO A2A-Version header -> {"http_status",
                        "body", plus the summary}
  v03-push:URL          raw 0.3 "tasks/pushNotificationConfig/set" for the last task, no A2A-Version
  v03-sdk-send:TEXT     the SDK's own 0.3 transport (CompatJsonRpcTransport: sends A2A-Version: 0.3)
  raw:METHOD:JSON       raw JSON-RPC POST with A2A-Version: 1.0 -> {"http_status", "content_type",
                        "body"} (SSE replies: "events", the list of data payloads)
  raw03:METHOD:JSON     the same with no A2A-Version header

Results carry "step" (the step as given) and "op". A failing step prints
{"step", "op", "error": {"type", "message", "http_status", "code"}} (code: the JSON-RPC error code
when there is one; http_status: the last HTTP status seen in the step) and the next step runs.
Exit 0, unless the arguments are bad (2).
"""

import argparse
import asyncio
import json
import re
import sys
import uuid
from typing import Any

import httpx
from google.protobuf.json_format import MessageToDict

from a2a.client import A2ACardResolver, ClientConfig, create_client
from a2a.client.errors import AgentCardResolutionError
from a2a.compat.v0_3.jsonrpc_transport import CompatJsonRpcTransport
from a2a.helpers import get_artifact_text, get_message_text, new_text_message
from a2a.types.a2a_pb2 import (
    AgentCard,
    CancelTaskRequest,
    GetTaskPushNotificationConfigRequest,
    GetTaskRequest,
    ListTaskPushNotificationConfigsRequest,
    Message,
    Role,
    SendMessageRequest,
    StreamResponse,
    Task,
    TaskPushNotificationConfig,
    TaskState,
)
from a2a.utils.constants import VERSION_HEADER
from a2a.utils.errors import JSON_RPC_ERROR_CODE_MAP, A2AError

STEP_NAMES = {
    "card", "send", "send-skill", "send-push", "stream", "get", "cancel-wait", "push", "push-get",
    "push-list", "rest-send", "rest-get", "v03-send", "v03-push", "v03-sdk-send", "raw", "raw03",
}  # fmt: skip
NEEDS_ARG = {"send", "send-skill", "send-push", "stream", "get", "push", "rest-send", "rest-get",
             "v03-send", "v03-push", "v03-sdk-send", "raw", "raw03"}  # fmt: skip


class StepError(Exception):
    pass


class UsageError(ValueError):
    pass


def parse_header(text: str) -> tuple[str, str]:
    name, sep, value = text.partition(":")
    if not sep or not name.strip():
        raise UsageError(f"--header must look like 'Name: value', got {text!r}")
    return name.strip(), value.strip()


def parse_step(step: str) -> tuple[str, str | None]:
    op, sep, arg = step.partition(":")
    if op not in STEP_NAMES:
        raise UsageError(f"unknown step {step!r}")
    if op in NEEDS_ARG and not sep:
        raise UsageError(f"step {op!r} needs an argument ({op}:...)")
    if op == "send-skill" and ":" not in arg:
        raise UsageError("send-skill needs SKILL:TEXT")
    if op in ("raw", "raw03"):
        method, _, params = arg.partition(":")
        if not method:
            raise UsageError(f"{op} needs METHOD:JSONPARAMS")
        try:
            json.loads(params or "{}")
        except ValueError as exc:
            raise UsageError(f"{op} params are not JSON: {exc}") from None
    return op, (arg if sep else None)


def state_name(state: int) -> str:
    return TaskState.Name(state)


def to_dict(message: Any) -> Any:
    return MessageToDict(message)


def task_summary(task: Task) -> dict[str, Any]:
    return {
        "kind": "task",
        "task_id": task.id,
        "context_id": task.context_id,
        "state": state_name(task.status.state),
        "artifacts": [get_artifact_text(a) for a in task.artifacts],
        "status_text": get_message_text(task.status.message) if task.status.HasField("message") else None,
    }


def message_summary(message: Message) -> dict[str, Any]:
    return {
        "kind": "message",
        "message_id": message.message_id,
        "task_id": message.task_id or None,
        "context_id": message.context_id or None,
        "text": get_message_text(message),
    }


def event_kind(event: StreamResponse) -> str:
    return {"task": "task", "message": "message", "status_update": "statusUpdate", "artifact_update": "artifactUpdate"}[
        event.WhichOneof("payload")
    ]


def summarize_v03_result(result: Any) -> dict[str, Any]:
    """A summary of a 0.3 `message/send` result (a Task or a Message, with `kind`)."""
    if not isinstance(result, dict):
        return {}
    if result.get("kind") == "task" or ("status" in result and "id" in result):
        return {
            "kind": "task",
            "task_id": result.get("id"),
            "context_id": result.get("contextId"),
            "state": (result.get("status") or {}).get("state"),
            "artifacts": [
                "\n".join(p.get("text", "") for p in a.get("parts", []) if p.get("kind") == "text")
                for a in result.get("artifacts", [])
            ],
        }
    return {
        "kind": "message",
        "message_id": result.get("messageId"),
        "text": "\n".join(p.get("text", "") for p in result.get("parts", []) if p.get("kind") == "text"),
    }


def jsonrpc_code(exc: BaseException) -> int | None:
    for cls, code in JSON_RPC_ERROR_CODE_MAP.items():
        if type(exc) is cls:
            return code
    match = re.search(r"JSON-RPC Error (-?\d+)", str(exc))
    return int(match.group(1)) if match else None


def cause_chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


class Driver:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.headers = dict(parse_header(h) for h in args.header)
        self.last_status: int | None = None
        self.http = httpx.AsyncClient(
            headers=self.headers,
            timeout=httpx.Timeout(args.timeout),
            event_hooks={"response": [self._on_response]},
        )
        self.card: AgentCard | None = None
        self.clients: dict[str, Any] = {}
        self.last_task_id: str | None = None
        self.last_push_id: str | None = None

    async def _on_response(self, response: httpx.Response) -> None:
        self.last_status = response.status_code

    async def close(self) -> None:
        for client in self.clients.values():
            try:
                await client.close()
            except Exception:
                pass
        await self.http.aclose()

    # --- card and clients ---------------------------------------------------------------------

    async def resolve_card(self) -> AgentCard:
        resolver = A2ACardResolver(self.http, self.args.base)
        self.card = await resolver.get_agent_card(relative_card_path=self.args.card_path)
        self.clients = {}
        return self.card

    async def get_card(self) -> AgentCard:
        return self.card if self.card is not None else await self.resolve_card()

    def interface_url(self, binding: str) -> str | None:
        if self.card is None:
            return None
        for interface in self.card.supported_interfaces:
            if interface.protocol_binding == binding:
                return interface.url
        return None

    async def client(self, kind: str) -> Any:
        """An SDK client: "stream" (streaming JSONRPC), "plain" (non-streaming JSONRPC), "rest"."""
        if kind not in self.clients:
            card = await self.get_card()
            config = ClientConfig(
                streaming=kind == "stream",
                httpx_client=self.http,
                supported_protocol_bindings=["HTTP+JSON"] if kind == "rest" else ["JSONRPC"],
            )
            self.clients[kind] = await create_client(card, config)
        return self.clients[kind]

    async def rpc_url(self) -> str:
        if self.args.rpc_url:
            return self.args.rpc_url
        await self.get_card()
        url = self.interface_url("JSONRPC")
        if not url:
            raise StepError("the card lists no JSONRPC interface")
        return url

    def need_task(self, arg: str | None) -> str:
        if arg and arg != "last":
            return arg
        if not self.last_task_id:
            raise StepError("no task yet (run a send/stream step first)")
        return self.last_task_id

    # --- steps --------------------------------------------------------------------------------

    async def send(self, kind: str, request: SendMessageRequest) -> dict[str, Any]:
        client = await self.client(kind)
        result: dict[str, Any] | None = None
        async for event in client.send_message(request):
            if event.HasField("task"):
                result = task_summary(event.task)
                self.last_task_id = event.task.id
            elif event.HasField("message"):
                result = message_summary(event.message)
            if result is not None:
                result["result"] = to_dict(event)
        if result is None:
            raise StepError("SendMessage returned nothing")
        return result

    def text_request(self, text: str, metadata: dict[str, Any] | None = None) -> SendMessageRequest:
        message = new_text_message(text, role=Role.ROLE_USER)
        if metadata:
            message.metadata.update(metadata)
        return SendMessageRequest(message=message)

    async def stream(self, text: str) -> dict[str, Any]:
        client = await self.client("stream")
        events: list[str] = []
        states: list[str] = []
        artifacts: list[str] = []
        task_id = None
        async for event in client.send_message(self.text_request(text)):
            kind = event_kind(event)
            events.append(kind)
            if kind == "task":
                task_id = event.task.id
                states.append(state_name(event.task.status.state))
            elif kind == "statusUpdate":
                task_id = task_id or event.status_update.task_id
                states.append(state_name(event.status_update.status.state))
            elif kind == "artifactUpdate":
                artifacts.append(get_artifact_text(event.artifact_update.artifact))
        if task_id:
            self.last_task_id = task_id
        return {
            "events": events,
            "states": states,
            "final_state": states[-1] if states else None,
            "task_id": task_id,
            "artifacts": artifacts,
        }

    async def cancel_wait(self, text: str) -> dict[str, Any]:
        client = await self.client("stream")
        stream = client.send_message(self.text_request(text)).__aiter__()
        try:
            first = await stream.__anext__()
            kind = event_kind(first)
            if kind == "task":
                task_id = first.task.id
            elif kind == "statusUpdate":
                task_id = first.status_update.task_id
            else:
                raise StepError(f"the first event is a {kind}, not a task")
            self.last_task_id = task_id
            # Let the executor reach WORKING before cancelling (if it says so within 5 s).
            before = [kind]
            try:
                async with asyncio.timeout(5):
                    while kind != "statusUpdate":
                        event = await stream.__anext__()
                        kind = event_kind(event)
                        before.append(kind)
            except TimeoutError:
                pass
            after: list[str] = []
            states: list[str] = []
            task = await client.cancel_task(CancelTaskRequest(id=task_id))
            try:
                async with asyncio.timeout(5):
                    async for event in stream:
                        k = event_kind(event)
                        after.append(k)
                        if k == "statusUpdate":
                            states.append(state_name(event.status_update.status.state))
                        elif k == "task":
                            states.append(state_name(event.task.status.state))
            except TimeoutError:
                after.append("(timeout)")
            except Exception as exc:  # the stream may end abruptly after a cancel
                after.append(f"(error: {type(exc).__name__})")
            return {
                "task_id": task_id,
                "first_event": before[0],
                "events_before_cancel": before,
                "state": state_name(task.status.state),
                "stream_after_cancel": after,
                "stream_states_after_cancel": states,
            }
        finally:
            try:
                await stream.aclose()
            except Exception:
                pass

    async def raw(self, method: str, params: Any, version: str | None, url: str | None = None) -> dict[str, Any]:
        url = url or await self.rpc_url()
        payload = {"jsonrpc": "2.0", "id": str(uuid.uuid4()), "method": method, "params": params}
        request = self.http.build_request("POST", url, json=payload)
        if version is None:
            if VERSION_HEADER in request.headers:
                del request.headers[VERSION_HEADER]
        else:
            request.headers[VERSION_HEADER] = version
        response = await self.http.send(request, stream=True)
        try:
            content_type = response.headers.get("content-type", "")
            out: dict[str, Any] = {"http_status": response.status_code, "content_type": content_type}
            if "text/event-stream" in content_type:
                events = []
                async for line in response.aiter_lines():
                    if line.startswith("data:"):
                        data = line[5:].strip()
                        try:
                            events.append(json.loads(data))
                        except ValueError:
                            events.append(data)
                out["events"] = events
            else:
                body = await response.aread()
                try:
                    out["body"] = json.loads(body)
                except ValueError:
                    out["body"] = body.decode("utf-8", "replace")
            return out
        finally:
            await response.aclose()

    async def v03_send(self, text: str) -> dict[str, Any]:
        params = {
            "message": {
                "kind": "message",
                "messageId": str(uuid.uuid4()),
                "role": "user",
                "parts": [{"kind": "text", "text": text}],
            }
        }
        out = await self.raw("message/send", params, None)
        body = out.get("body")
        if isinstance(body, dict) and "result" in body:
            out.update(summarize_v03_result(body["result"]))
            if out.get("kind") == "task" and out.get("task_id"):
                self.last_task_id = out["task_id"]
        return out

    async def run_step(self, op: str, arg: str | None) -> dict[str, Any]:
        if op == "card":
            card = await self.resolve_card()
            return {
                "card": to_dict(card),
                "jsonrpc_url": self.interface_url("JSONRPC"),
                "rest_url": self.interface_url("HTTP+JSON"),
            }
        if op == "send":
            return await self.send("plain", self.text_request(arg or ""))
        if op == "send-skill":
            skill, _, text = (arg or "").partition(":")
            return await self.send("plain", self.text_request(text, {"skill": skill}))
        if op == "send-push":
            request = self.text_request("push me")
            request.configuration.task_push_notification_config.url = arg or ""
            return await self.send("plain", request)
        if op == "stream":
            return await self.stream(arg or "")
        if op == "get":
            client = await self.client("plain")
            return task_summary(await client.get_task(GetTaskRequest(id=self.need_task(arg))))
        if op == "cancel-wait":
            return await self.cancel_wait(arg or "wait for cancel")
        if op == "push":
            client = await self.client("plain")
            config = await client.create_task_push_notification_config(
                TaskPushNotificationConfig(task_id=self.need_task(None), url=arg or "")
            )
            self.last_push_id = config.id
            return {"config": to_dict(config), "id": config.id, "url": config.url}
        if op == "push-get":
            client = await self.client("plain")
            config_id = arg or self.last_push_id
            if not config_id:
                raise StepError("no push config yet (run push:URL first)")
            config = await client.get_task_push_notification_config(
                GetTaskPushNotificationConfigRequest(task_id=self.need_task(None), id=config_id)
            )
            return {"config": to_dict(config), "id": config.id, "url": config.url}
        if op == "push-list":
            client = await self.client("plain")
            listed = await client.list_task_push_notification_configs(
                ListTaskPushNotificationConfigsRequest(task_id=self.need_task(None))
            )
            return {"configs": [to_dict(c) for c in listed.configs]}
        if op == "rest-send":
            return await self.send("rest", self.text_request(arg or ""))
        if op == "rest-get":
            client = await self.client("rest")
            return task_summary(await client.get_task(GetTaskRequest(id=self.need_task(arg))))
        if op == "v03-send":
            return await self.v03_send(arg or "")
        if op == "v03-push":
            task_id = self.need_task(None)
            params = {"taskId": task_id, "pushNotificationConfig": {"url": arg}}
            return await self.raw("tasks/pushNotificationConfig/set", params, None)
        if op == "v03-sdk-send":
            url = await self.rpc_url()
            transport = CompatJsonRpcTransport(self.http, self.card, url, is_shared_httpx=True)
            response = await transport.send_message(self.text_request(arg or ""))
            if response.HasField("task"):
                self.last_task_id = response.task.id
                out = task_summary(response.task)
            else:
                out = message_summary(response.message)
            out["result"] = to_dict(response)
            return out
        if op in ("raw", "raw03"):
            method, _, params = (arg or "").partition(":")
            return await self.raw(method, json.loads(params or "{}"), "1.0" if op == "raw" else None)
        raise StepError(f"unknown step {op!r}")

    def error_report(self, exc: BaseException) -> dict[str, Any]:
        chain = cause_chain(exc)
        http_status = None
        for e in chain:
            if isinstance(e, httpx.HTTPStatusError):
                http_status = e.response.status_code
                break
            if isinstance(e, AgentCardResolutionError) and e.status_code is not None:
                http_status = e.status_code
                break
        if http_status is None and not isinstance(exc, StepError):
            http_status = self.last_status
        code = None
        for e in chain:
            code = jsonrpc_code(e)
            if code is not None:
                break
        message = exc.message if isinstance(exc, A2AError) else str(exc)
        if isinstance(exc, TimeoutError) and not message:
            message = "step deadline exceeded"
        report: dict[str, Any] = {
            "type": type(exc).__name__,
            "message": message,
            "http_status": http_status,
            "code": code,
        }
        if isinstance(exc, A2AError) and exc.data:
            report["data"] = exc.data
        return report

    async def run(self, steps: list[str]) -> None:
        for step in steps:
            op, arg = parse_step(step)
            self.last_status = None
            entry: dict[str, Any] = {"step": step, "op": op}
            try:
                # The step deadline: each HTTP call already has --timeout; cancel-wait makes
                # several calls and waits for the stream's tail, so it gets more.
                async with asyncio.timeout(self.args.timeout * 2 + 10):
                    entry.update(await self.run_step(op, arg))
            except Exception as exc:  # a failing step must not stop the next one
                entry["error"] = self.error_report(exc)
            print(json.dumps(entry), flush=True)


async def main_async(args: argparse.Namespace) -> int:
    driver = Driver(args)
    try:
        await driver.run(args.steps)
    finally:
        await driver.close()
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", required=True, help="where the card is resolved (e.g. the gateway)")
    parser.add_argument("--header", action="append", default=[], help="'Name: value' on every request")
    parser.add_argument("--card-path", help="the card's path relative to --base (default /.well-known/agent-card.json)")
    parser.add_argument("--rpc-url", help="the JSON-RPC URL for raw/0.3 steps (default: the card's JSONRPC url)")
    parser.add_argument("--timeout", type=float, default=20.0, help="seconds per network call (default 20)")
    parser.add_argument("steps", nargs="+", metavar="STEP")
    args = parser.parse_args()
    try:  # bad arguments exit 2 before any network call
        for step in args.steps:
            parse_step(step)
        for header in args.header:
            parse_header(header)
    except UsageError as exc:
        parser.error(str(exc))
    sys.exit(asyncio.run(main_async(args)))


if __name__ == "__main__":
    main()
