"""An A2A 1.0 test agent on the official Python SDK (a2a-sdk 1.3.0), for Gantry's A2A tests.

One process serves one agent on 127.0.0.1 only:

    agent_server.py --port 18010                          # card at /.well-known/agent-card.json
    agent_server.py --port 18010 --name beta --signed     # the card carries a JWS signature
    agent_server.py --port 18010 --push-log /tmp/push.jsonl

Routes:
  GET  /.well-known/agent-card.json   the card (weak ETag, 304 on If-None-Match)
  POST /                               JSON-RPC 1.0 (SendMessage, GetTask, ...) and, with no
                                       A2A-Version header, 0.3 (message/send, tasks/get, ...)
  /rest/...                            HTTP+JSON 1.0 (POST /rest/message:send, GET /rest/tasks/{id},
                                       ...) and 0.3 under /rest/v1/...

The card lists JSONRPC at http://127.0.0.1:PORT/ and HTTP+JSON at http://127.0.0.1:PORT/rest (both
protocolVersion 1.0), streaming and push notifications, skills `echo` and `admin`, and an apiKey
scheme `agent-key` (header X-Agent-Key) with a matching securityRequirements entry. The agent does
NOT enforce that scheme: it only describes one for the gateway to replace.

Executor: a message whose text starts with "wait" opens a task that stays WORKING until it is
cancelled (CancelTask succeeds on it) or 30 s pass (then FAILED). Any other text: a task,
WORKING, one artifact "echo: <text>" ("echo[skill=S]: <text>" when message.metadata or the
request metadata carries {"skill": S}), then COMPLETED.

Push notifications: an in-memory config store and the SDK's sender, with no URL screening (the
gateway is the one that polices webhook URLs). With --push-log FILE, every push config the agent
stores and every delivery it attempts is appended to FILE as one JSON line:
  {"event": "config-set", "task_id", "id", "url", "token", "authentication"}
  {"event": "delivery", "task_id", "url", "headers", "body", "status" | "error"}

--signed: the card is signed with HS256 (RFC 8785 canonical card without `signatures`), key id
`gantry-test-agent`, secret SIGNING_SECRET below.

Prints exactly one line "READY <port>" on stdout once it accepts connections.
"""

import argparse
import asyncio
import json
import sys
import threading
import time
from typing import Any

import httpx
import uvicorn
from google.protobuf.json_format import MessageToDict, ParseDict
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

from a2a.helpers import new_text_message, new_text_part
from a2a.server.agent_execution import AgentExecutor, RequestContext
from a2a.server.events import EventQueue
from a2a.server.request_handlers import DefaultRequestHandler
from a2a.server.routes import create_agent_card_routes, create_jsonrpc_routes, create_rest_routes
from a2a.server.tasks import (
    BasePushNotificationSender,
    InMemoryPushNotificationConfigStore,
    InMemoryTaskStore,
    TaskUpdater,
)
from a2a.types.a2a_pb2 import AgentCard, Role, Task, TaskState, TaskStatus

SIGNING_SECRET = "gantry-a2a-test-agent-signing-secret-0123456789"
SIGNING_KID = "gantry-test-agent"
WAIT_LIMIT_SECONDS = 30.0


class PushLog:
    """Appends JSON lines to a file (thread-safe); a no-op without a file."""

    def __init__(self, path: str | None) -> None:
        self.path = path
        self.lock = threading.Lock()

    def write(self, entry: dict[str, Any]) -> None:
        if not self.path:
            return
        entry = {"time": time.time(), **entry}
        with self.lock, open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(entry) + "\n")


class LoggingConfigStore(InMemoryPushNotificationConfigStore):
    def __init__(self, log: PushLog) -> None:
        super().__init__()
        self.log = log

    async def set_info(self, task_id, notification_config, context):  # type: ignore[override]
        stored = await super().set_info(task_id, notification_config, context)
        self.log.write(
            {
                "event": "config-set",
                "task_id": task_id,
                "id": stored.id,
                "url": stored.url,
                "token": stored.token,
                "authentication": MessageToDict(stored.authentication)
                if stored.HasField("authentication")
                else None,
            }
        )
        return stored


def logging_http_client(log: PushLog) -> httpx.AsyncClient:
    """The push sender's HTTP client: every webhook POST (and its outcome) goes to the push log."""

    pending: dict[int, dict[str, Any]] = {}

    async def on_request(request: httpx.Request) -> None:
        try:
            body: Any = json.loads(request.content or b"null")
        except ValueError:
            body = request.content.decode("utf-8", "replace")
        pending[id(request)] = {
            "event": "delivery",
            "url": str(request.url),
            "headers": {
                k: v
                for k, v in request.headers.items()
                if k.lower() in ("authorization", "x-a2a-notification-token", "content-type")
            },
            "body": body,
        }

    async def on_response(response: httpx.Response) -> None:
        entry = pending.pop(id(response.request), None) or {"event": "delivery", "url": str(response.request.url)}
        entry["status"] = response.status_code
        log.write(entry)

    class Transport(httpx.AsyncHTTPTransport):
        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            try:
                return await super().handle_async_request(request)
            except Exception as exc:
                entry = pending.pop(id(request), None) or {"event": "delivery", "url": str(request.url)}
                entry["error"] = f"{type(exc).__name__}: {exc}"
                log.write(entry)
                raise

    return httpx.AsyncClient(
        timeout=httpx.Timeout(5.0),
        transport=Transport(),
        event_hooks={"request": [on_request], "response": [on_response]},
    )


def skill_of(context: RequestContext) -> str | None:
    message = context.message
    if message is not None and "skill" in message.metadata:
        return str(message.metadata["skill"])
    skill = context.metadata.get("skill")
    return str(skill) if skill is not None else None


class EchoExecutor(AgentExecutor):
    async def execute(self, context: RequestContext, event_queue: EventQueue) -> None:
        text = context.get_user_input()
        task_id = context.task_id or ""
        context_id = context.context_id or ""
        if context.current_task is None:
            history = [context.message] if context.message is not None else []
            await event_queue.enqueue_event(
                Task(
                    id=task_id,
                    context_id=context_id,
                    status=TaskStatus(state=TaskState.TASK_STATE_SUBMITTED),
                    history=history,
                )
            )
        updater = TaskUpdater(event_queue, task_id, context_id)
        await updater.start_work()
        if text.startswith("wait"):
            # Stays WORKING until CancelTask (which cancels this coroutine) or the limit.
            await asyncio.sleep(WAIT_LIMIT_SECONDS)
            await updater.failed(
                new_text_message(
                    f"not cancelled within {WAIT_LIMIT_SECONDS:.0f} s",
                    context_id=context_id,
                    task_id=task_id,
                    role=Role.ROLE_AGENT,
                )
            )
            return
        skill = skill_of(context)
        prefix = f"echo[skill={skill}]" if skill else "echo"
        await updater.add_artifact([new_text_part(f"{prefix}: {text}")], name="echo")
        await updater.complete()

    async def cancel(self, context: RequestContext, event_queue: EventQueue) -> None:
        updater = TaskUpdater(event_queue, context.task_id or "", context.context_id or "")
        await updater.cancel()


def build_card(args: argparse.Namespace) -> AgentCard:
    base = f"http://127.0.0.1:{args.port}"
    card = {
        "name": args.name,
        "description": f"Gantry test agent {args.name}: echoes text back (a2a-sdk 1.3.0).",
        "version": "1.0.0",
        "provider": {"organization": "Gantry tests", "url": "https://gantry.invalid/tests"},
        "documentationUrl": "https://gantry.invalid/tests/a2a",
        "supportedInterfaces": [
            {"url": f"{base}/", "protocolBinding": "JSONRPC", "protocolVersion": "1.0"},
            {"url": f"{base}/rest", "protocolBinding": "HTTP+JSON", "protocolVersion": "1.0"},
        ],
        "capabilities": {"streaming": True, "pushNotifications": True},
        "securitySchemes": {
            "agent-key": {
                "apiKeySecurityScheme": {
                    "location": "header",
                    "name": "X-Agent-Key",
                    "description": "The agent's own API key (described, not enforced).",
                }
            }
        },
        "securityRequirements": [{"schemes": {"agent-key": {"list": []}}}],
        "defaultInputModes": ["text/plain"],
        "defaultOutputModes": ["text/plain"],
        "skills": [
            {
                "id": "echo",
                "name": "Echo",
                "description": "Echoes the message text back as an artifact.",
                "tags": ["echo"],
                "examples": ["hello"],
            },
            {
                "id": "admin",
                "name": "Admin",
                "description": "An administrative skill (for authorization tests); also echoes.",
                "tags": ["admin"],
            },
        ],
    }
    parsed = ParseDict(card, AgentCard())
    if args.signed:
        from a2a.utils.signing import create_agent_card_signer

        signer = create_agent_card_signer(
            SIGNING_SECRET.encode(),
            {"kid": SIGNING_KID, "alg": "HS256", "typ": "JOSE"},  # type: ignore[typeddict-item]
        )
        parsed = signer(parsed)
    return parsed


def v03_card(args: argparse.Namespace) -> dict[str, Any]:
    """The card in the A2A 0.3 shape (url, preferredTransport, additionalInterfaces, security)."""
    base = f"http://127.0.0.1:{args.port}"
    return {
        "protocolVersion": "0.3.0",
        "name": args.name,
        "description": "A 0.3-shaped card for Gantry's tests.",
        "url": f"{base}/",
        "preferredTransport": "JSONRPC",
        "additionalInterfaces": [
            {"url": f"{base}/", "transport": "JSONRPC"},
            {"url": f"{base}/rest", "transport": "HTTP+JSON"},
        ],
        "version": "1.0.0",
        "capabilities": {"streaming": True, "pushNotifications": True},
        "defaultInputModes": ["text/plain"],
        "defaultOutputModes": ["text/plain"],
        "skills": [
            {"id": "echo", "name": "Echo", "description": "Echoes text.", "tags": ["echo"]},
            {"id": "admin", "name": "Admin", "description": "Privileged echo.", "tags": ["admin"]},
        ],
        "securitySchemes": {"agent-key": {"type": "apiKey", "in": "header", "name": "X-Agent-Key"}},
        "security": [{"agent-key": []}],
    }


def v03_card_endpoint(args: argparse.Namespace) -> Any:
    body = v03_card(args)

    async def endpoint(request: Any) -> JSONResponse:
        return JSONResponse(body)

    return endpoint


def build_app(args: argparse.Namespace) -> Starlette:
    card = build_card(args)
    log = PushLog(args.push_log)
    config_store = LoggingConfigStore(log)
    sender = BasePushNotificationSender(logging_http_client(log), config_store)
    handler = DefaultRequestHandler(
        agent_executor=EchoExecutor(),
        task_store=InMemoryTaskStore(),
        agent_card=card,
        push_config_store=config_store,
        push_sender=sender,
    )
    routes = []
    if args.card_v03:
        routes.append(Route("/.well-known/agent-card.json", v03_card_endpoint(args), methods=["GET"]))
    routes += [
        *create_agent_card_routes(card),
        *create_jsonrpc_routes(handler, rpc_url="/", enable_v0_3_compat=True),
        *create_rest_routes(handler, enable_v0_3_compat=True, path_prefix="/rest"),
    ]
    return Starlette(routes=routes)


async def serve(args: argparse.Namespace) -> None:
    app = build_app(args)
    config = uvicorn.Config(
        app, host="127.0.0.1", port=args.port, log_level="warning", lifespan="off", timeout_graceful_shutdown=2
    )
    server = uvicorn.Server(config)

    async def announce() -> None:
        while not server.started:
            if server.should_exit:
                return
            await asyncio.sleep(0.01)
        print(f"READY {args.port}", flush=True)

    announcer = asyncio.create_task(announce())
    try:
        await server.serve()
    finally:
        announcer.cancel()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True, help="port on 127.0.0.1")
    parser.add_argument("--name", default="echo-agent", help="the card's name")
    parser.add_argument("--signed", action="store_true", help="sign the card (HS256, kid gantry-test-agent)")
    parser.add_argument("--push-log", help="append push config writes and webhook deliveries here (JSON lines)")
    parser.add_argument("--card-v03", action="store_true", help="serve the card in the A2A 0.3 shape")
    args = parser.parse_args()
    try:
        asyncio.run(serve(args))
    except KeyboardInterrupt:
        pass
    sys.exit(0)


if __name__ == "__main__":
    main()
