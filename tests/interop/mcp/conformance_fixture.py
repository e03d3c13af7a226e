"""An MCP server (mcp 2.3.0) with the fixtures the MCP conformance suite
(@modelcontextprotocol/conformance 0.2.0-alpha.12) looks up by name, so that its server
scenarios test protocol behaviour rather than fail on missing tools.

    conformance_fixture.py --port 18020            # http://127.0.0.1:18020/mcp
    node .../conformance/dist/index.js server --url http://127.0.0.1:18020/mcp [--requirements 2026-07-28]

It serves the handshake era and 2026-07-28 (the SDK is dual-era). Legacy-only fixtures (logging,
resource subscriptions, raw elicitation schemas) use the legacy back-channel; the
`test_input_required_result_*` fixtures build their 2026-07-28 input_required results by hand,
with the exact keys the suite expects.
"""

import argparse
import base64
import json
import struct
import sys
import warnings
import zlib
from typing import Annotated, Any, Literal

import anyio
import mcp_types as types
import uvicorn
from mcp.server.mcpserver import Context, Elicit, ElicitationResult, MCPServer, Resolve, Sample
from pydantic import BaseModel, Field

warnings.filterwarnings("ignore", category=DeprecationWarning)
warnings.filterwarnings("ignore", message=".*deprecated.*")

JSON_SCHEMA_2020_12_TOOL = "json_schema_2020_12_tool"
JSON_SCHEMA_2020_12 = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "$defs": {
        "address": {
            "$anchor": "addressDef",
            "type": "object",
            "properties": {"street": {"type": "string"}, "city": {"type": "string"}},
        }
    },
    "properties": {
        "name": {"type": "string"},
        "address": {"$ref": "#/$defs/address"},
        "contactMethod": {"type": "string", "enum": ["phone", "email"]},
        "phone": {"type": "string"},
        "email": {"type": "string"},
    },
    "allOf": [{"anyOf": [{"required": ["phone"]}, {"required": ["email"]}]}],
    "if": {"properties": {"contactMethod": {"const": "phone"}}, "required": ["contactMethod"]},
    "then": {"required": ["phone"]},
    "else": {"required": ["email"]},
    "additionalProperties": False,
}


def png_1x1_red() -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)  # 1x1, 8-bit RGB
    pixels = zlib.compress(b"\x00\xff\x00\x00")  # filter byte, then one red pixel
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


def wav_silence(samples: int = 80, rate: int = 8000) -> bytes:
    data = b"\x00\x00" * samples  # 16-bit mono
    fmt = struct.pack("<HHIIHH", 1, 1, rate, rate * 2, 2, 16)
    return (
        b"RIFF"
        + struct.pack("<I", 4 + 8 + len(fmt) + 8 + len(data))
        + b"WAVE"
        + b"fmt "
        + struct.pack("<I", len(fmt))
        + fmt
        + b"data"
        + struct.pack("<I", len(data))
        + data
    )


PNG_B64 = base64.b64encode(png_1x1_red()).decode()
WAV_B64 = base64.b64encode(wav_silence()).decode()


def text(value: str) -> types.TextContent:
    return types.TextContent(type="text", text=value)


def image() -> types.ImageContent:
    return types.ImageContent(type="image", data=PNG_B64, mime_type="image/png")


def embedded(uri: str, mime_type: str, body: str) -> types.EmbeddedResource:
    return types.EmbeddedResource(
        type="resource", resource=types.TextResourceContents(uri=uri, mime_type=mime_type, text=body)
    )


def elicit_request(message: str, schema: dict[str, Any]) -> types.ElicitRequest:
    return types.ElicitRequest(params=types.ElicitRequestFormParams(message=message, requested_schema=schema))


def name_schema(field: str) -> dict[str, Any]:
    return {"type": "object", "properties": {field: {"type": "string"}}, "required": [field]}


def sampling_request(prompt: str, max_tokens: int) -> types.CreateMessageRequest:
    return types.CreateMessageRequest(
        params=types.CreateMessageRequestParams(
            messages=[types.SamplingMessage(role="user", content=text(prompt))], max_tokens=max_tokens
        )
    )


def accepted(responses: types.InputResponses | None, key: str) -> dict[str, Any] | None:
    """The content of an accepted elicitation answer under `key`, if there is one."""
    answer = (responses or {}).get(key)
    if isinstance(answer, types.ElicitResult) and answer.action == "accept":
        return dict(answer.content or {})
    return None


class UserInfo(BaseModel):
    username: str = Field(description="User's response")
    email: str = Field(description="User's email address")


def ask_user_info(message: str) -> Elicit[UserInfo]:
    return Elicit(message, UserInfo)


def sample_prompt(prompt: str) -> Sample:
    return Sample([types.SamplingMessage(role="user", content=text(prompt))], max_tokens=100)


def sample_anything() -> Sample:
    return Sample([types.SamplingMessage(role="user", content=text("Say hi"))], max_tokens=10)


class ConformanceServer(MCPServer):
    async def list_tools(self) -> list[types.Tool]:
        tools = await super().list_tools()
        return [
            tool.model_copy(update={"input_schema": JSON_SCHEMA_2020_12}) if tool.name == JSON_SCHEMA_2020_12_TOOL else tool
            for tool in tools
        ]


def build_server() -> ConformanceServer:
    server = ConformanceServer("gantry-conformance-fixture", version="1.0.0", log_level="WARNING")
    plain = {"structured_output": False}

    @server.tool(description="Returns simple text.", **plain)
    def test_simple_text() -> str:
        return "This is a simple text response for testing."

    @server.tool(description="Returns an image.", **plain)
    def test_image_content() -> list[types.ContentBlock]:
        return [image()]

    @server.tool(description="Returns audio.", **plain)
    def test_audio_content() -> list[types.ContentBlock]:
        return [types.AudioContent(type="audio", data=WAV_B64, mime_type="audio/wav")]

    @server.tool(description="Returns an embedded resource.", **plain)
    def test_embedded_resource() -> list[types.ContentBlock]:
        return [embedded("test://embedded-resource", "text/plain", "This is an embedded resource content.")]

    @server.tool(description="Returns text, an image and a resource.", **plain)
    def test_multiple_content_types() -> list[types.ContentBlock]:
        return [
            text("Multiple content types test:"),
            image(),
            embedded("test://mixed-content-resource", "application/json", json.dumps({"test": "data", "value": 123})),
        ]

    @server.tool(description="Sends three log messages while it runs.", **plain)
    async def test_tool_with_logging(ctx: Context) -> str:
        await ctx.info("Tool execution started")
        await anyio.sleep(0.05)
        await ctx.info("Tool processing data")
        await anyio.sleep(0.05)
        await ctx.info("Tool execution completed")
        return "Tool with logging executed successfully"

    @server.tool(description="Reports progress 0, 50, 100 of 100.", **plain)
    async def test_tool_with_progress(ctx: Context) -> str:
        for step, progress in enumerate((0, 50, 100)):
            if step:
                await anyio.sleep(0.05)
            await ctx.report_progress(progress, 100)
        return "Tool with progress executed successfully"

    @server.tool(description="Always fails.", **plain)
    def test_error_handling() -> str:
        raise RuntimeError("This tool intentionally returns an error for testing")

    @server.tool(description="Samples the client's LLM with the prompt.", **plain)
    def test_sampling(
        prompt: str, reply: Annotated[types.CreateMessageResult, Resolve(sample_prompt)]
    ) -> str:
        content = reply.content
        said = content.text if isinstance(content, types.TextContent) else str(content)
        return f"LLM response: {said}"

    @server.tool(description="Asks the user for a username and email.", **plain)
    def test_elicitation(message: str, outcome: Annotated[ElicitationResult[UserInfo], Resolve(ask_user_info)]) -> str:
        content = outcome.data.model_dump() if outcome.action == "accept" else None
        return f"User response: action={outcome.action}, content={json.dumps(content)}"

    @server.tool(description="Elicits a form whose fields all have defaults (SEP-1034).", **plain)
    async def test_elicitation_sep1034_defaults(ctx: Context) -> str:
        schema = {
            "type": "object",
            "properties": {
                "name": {"type": "string", "default": "John Doe"},
                "age": {"type": "integer", "default": 30},
                "score": {"type": "number", "default": 95.5},
                "status": {"type": "string", "enum": ["active", "inactive", "pending"], "default": "active"},
                "verified": {"type": "boolean", "default": True},
            },
        }
        result = await ctx.session.elicit_form("Please review your details", schema, ctx.request_id)
        return f"Elicitation completed: action={result.action}, content={json.dumps(result.content)}"

    @server.tool(description="Elicits a form with the five enum shapes (SEP-1330).", **plain)
    async def test_elicitation_sep1330_enums(ctx: Context) -> str:
        schema = {
            "type": "object",
            "properties": {
                "untitledSingle": {"type": "string", "enum": ["option1", "option2", "option3"]},
                "titledSingle": {
                    "type": "string",
                    "oneOf": [
                        {"const": "value1", "title": "First Option"},
                        {"const": "value2", "title": "Second Option"},
                        {"const": "value3", "title": "Third Option"},
                    ],
                },
                "legacyEnum": {
                    "type": "string",
                    "enum": ["opt1", "opt2", "opt3"],
                    "enumNames": ["Option One", "Option Two", "Option Three"],
                },
                "untitledMulti": {
                    "type": "array",
                    "items": {"type": "string", "enum": ["option1", "option2", "option3"]},
                },
                "titledMulti": {
                    "type": "array",
                    "items": {
                        "anyOf": [
                            {"const": "value1", "title": "First Choice"},
                            {"const": "value2", "title": "Second Choice"},
                            {"const": "value3", "title": "Third Choice"},
                        ]
                    },
                },
            },
        }
        result = await ctx.session.elicit_form("Please choose", schema, ctx.request_id)
        return f"Elicitation completed: action={result.action}, content={json.dumps(result.content)}"

    @server.tool(name=JSON_SCHEMA_2020_12_TOOL, description="Tool with JSON Schema 2020-12 features", **plain)
    def json_schema_tool(
        name: str | None = None,
        address: dict[str, Any] | None = None,
        contactMethod: str | None = None,  # noqa: N803 - the suite's property name
        phone: str | None = None,
        email: str | None = None,
    ) -> str:
        return f"ok: {name}"

    @server.tool(description="Needs the sampling capability (SEP-2575).", **plain)
    def test_missing_capability(reply: Annotated[types.CreateMessageResult, Resolve(sample_anything)]) -> str:
        return "sampled"

    @server.tool(description="Mirrors region into the Mcp-Param-Region header (SEP-2243).", **plain)
    def test_custom_headers(
        region: Annotated[str, Field(description="Region", json_schema_extra={"x-mcp-header": "Region"})],
        query: str = "",
    ) -> str:
        return f"region={region} query={query}"

    # 2026-07-28 multi-round-trip (SEP-2322) fixtures, with the suite's keys.
    @server.tool(name="test_input_required_result_elicitation", description="MRTR elicitation.", **plain)
    def mrtr_elicitation(ctx: Context) -> str | types.InputRequiredResult:
        content = accepted(ctx.input_responses, "user_name")
        if content is not None and "name" in content:
            return f"Hello, {content['name']}!"
        return types.InputRequiredResult(
            input_requests={"user_name": elicit_request("What is your name?", name_schema("name"))}
        )

    @server.tool(name="test_input_required_result_sampling", description="MRTR sampling.", **plain)
    def mrtr_sampling(ctx: Context) -> str | types.InputRequiredResult:
        answer = (ctx.input_responses or {}).get("capital_question")
        if isinstance(answer, types.CreateMessageResult) and isinstance(answer.content, types.TextContent):
            return f"Sampling response: {answer.content.text}"
        return types.InputRequiredResult(
            input_requests={"capital_question": sampling_request("What is the capital of France?", 100)}
        )

    @server.tool(name="test_input_required_result_list_roots", description="MRTR roots.", **plain)
    def mrtr_list_roots(ctx: Context) -> str | types.InputRequiredResult:
        answer = (ctx.input_responses or {}).get("client_roots")
        if isinstance(answer, types.ListRootsResult):
            return "Roots: " + ", ".join(str(root.uri) for root in answer.roots)
        return types.InputRequiredResult(input_requests={"client_roots": types.ListRootsRequest()})

    @server.tool(name="test_input_required_result_request_state", description="MRTR with state.", **plain)
    def mrtr_request_state(ctx: Context) -> str | types.InputRequiredResult:
        content = accepted(ctx.input_responses, "confirm")
        if content is not None and ctx.request_state == "awaiting-confirm":
            return f"state-ok: confirmed={content.get('ok')}"
        schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}
        return types.InputRequiredResult(
            input_requests={"confirm": elicit_request("Please confirm", schema)}, request_state="awaiting-confirm"
        )

    @server.tool(name="test_input_required_result_multiple_inputs", description="MRTR, three inputs.", **plain)
    def mrtr_multiple_inputs(ctx: Context) -> str | types.InputRequiredResult:
        responses = ctx.input_responses or {}
        if ctx.request_state == "multi" and all(k in responses for k in ("user_name", "greeting", "client_roots")):
            return "All inputs received"
        return types.InputRequiredResult(
            input_requests={
                "user_name": elicit_request("What is your name?", name_schema("name")),
                "greeting": sampling_request("Generate a greeting", 50),
                "client_roots": types.ListRootsRequest(),
            },
            request_state="multi",
        )

    @server.tool(name="test_input_required_result_multi_round", description="MRTR, two rounds.", **plain)
    def mrtr_multi_round(ctx: Context) -> str | types.InputRequiredResult:
        state = ctx.request_state
        if state == "step2" and accepted(ctx.input_responses, "step2") is not None:
            return f"Done: color={accepted(ctx.input_responses, 'step2').get('color')}"  # type: ignore[union-attr]
        if state == "step1" and accepted(ctx.input_responses, "step1") is not None:
            return types.InputRequiredResult(
                input_requests={"step2": elicit_request("Step 2: What is your favorite color?", name_schema("color"))},
                request_state="step2",
            )
        return types.InputRequiredResult(
            input_requests={"step1": elicit_request("Step 1: What is your name?", name_schema("name"))},
            request_state="step1",
        )

    @server.tool(name="test_input_required_result_tampered_state", description="MRTR, sealed state.", **plain)
    def mrtr_tampered_state(ctx: Context) -> str | types.InputRequiredResult:
        if ctx.request_state == "sealed" and accepted(ctx.input_responses, "confirm") is not None:
            return "state-ok"
        return types.InputRequiredResult(
            input_requests={"confirm": elicit_request("Please confirm", name_schema("ok"))}, request_state="sealed"
        )

    @server.tool(name="test_input_required_result_capabilities", description="MRTR, declared only.", **plain)
    def mrtr_capabilities(ctx: Context) -> str | types.InputRequiredResult:
        if ctx.input_responses:
            return "Inputs received"
        caps = ctx.client_capabilities
        requests: dict[str, Any] = {}
        if caps is not None and caps.elicitation is not None:
            requests["user_name"] = elicit_request("What is your name?", name_schema("name"))
        if caps is not None and caps.sampling is not None:
            requests["greeting"] = sampling_request("Generate a greeting", 50)
        if caps is not None and caps.roots is not None:
            requests["client_roots"] = types.ListRootsRequest()
        if not requests:
            return "No client capabilities to ask with"
        return types.InputRequiredResult(input_requests=requests)

    @server.prompt(name="test_input_required_result_prompt", description="MRTR prompt.")
    def mrtr_prompt(ctx: Context) -> str | types.InputRequiredResult:
        content = accepted(ctx.input_responses, "user_context")
        if content is not None:
            return f"Prompt context: {content.get('context')}"
        return types.InputRequiredResult(
            input_requests={
                "user_context": elicit_request("What context should the prompt use?", name_schema("context"))
            }
        )

    # Prompts.
    @server.prompt(description="A simple prompt.")
    def test_simple_prompt() -> str:
        return "This is a simple prompt for testing."

    @server.prompt(description="A prompt with two arguments.")
    def test_prompt_with_arguments(arg1: str, arg2: str) -> str:
        return f"Prompt with arguments: arg1='{arg1}', arg2='{arg2}'"

    @server.prompt(description="A prompt embedding a resource.")
    def test_prompt_with_embedded_resource(resourceUri: str) -> list[dict[str, Any]]:  # noqa: N803
        resource = embedded(resourceUri, "text/plain", "Embedded resource content for testing.")
        return [
            {"role": "user", "content": resource.model_dump(mode="json", by_alias=True, exclude_none=True)},
            {"role": "user", "content": {"type": "text", "text": "Please process the embedded resource above."}},
        ]

    @server.prompt(description="A prompt with an image.")
    def test_prompt_with_image() -> list[dict[str, Any]]:
        return [
            {"role": "user", "content": image().model_dump(mode="json", by_alias=True, exclude_none=True)},
            {"role": "user", "content": {"type": "text", "text": "Please analyze the image above."}},
        ]

    # Resources.
    @server.resource("test://static-text", name="static-text", description="A static text.", mime_type="text/plain")
    def static_text() -> str:
        return "This is the content of the static text resource."

    @server.resource("test://static-binary", name="static-binary", description="A PNG.", mime_type="image/png")
    def static_binary() -> bytes:
        return png_1x1_red()

    @server.resource("test://watched-resource", name="watched-resource", description="Subscribable.", mime_type="text/plain")
    def watched() -> str:
        return "Watched resource content."

    @server.resource(
        "test://template/{id}/data", name="template-data", description="Data by id.", mime_type="application/json"
    )
    def template_data(id: str) -> str:
        return json.dumps({"id": id, "templateTest": True, "data": f"Data for ID: {id}"})

    @server.completion()
    async def complete(ref: Any, argument: Any, context: Any) -> types.Completion | None:
        if isinstance(ref, types.PromptReference) and ref.name == "test_prompt_with_arguments":
            values = [v for v in ("paris", "park", "party", "test-value") if v.startswith(argument.value)]
            return types.Completion(values=values, total=len(values), has_more=False)
        return types.Completion(values=[], total=0, has_more=False)

    # Legacy-era handlers MCPServer has no decorator for: logging/setLevel and subscriptions.
    lowlevel = server._lowlevel_server  # noqa: SLF001 - the low-level server is the supported seam

    async def set_level(ctx: Any, params: types.SetLevelRequestParams) -> types.EmptyResult:
        return types.EmptyResult()

    async def subscribe(ctx: Any, params: types.SubscribeRequestParams) -> types.EmptyResult:
        return types.EmptyResult()

    async def unsubscribe(ctx: Any, params: types.UnsubscribeRequestParams) -> types.EmptyResult:
        return types.EmptyResult()

    lowlevel.add_request_handler("logging/setLevel", types.SetLevelRequestParams, set_level)
    lowlevel.add_request_handler("resources/subscribe", types.SubscribeRequestParams, subscribe)
    lowlevel.add_request_handler("resources/unsubscribe", types.UnsubscribeRequestParams, unsubscribe)
    return server


async def serve(port: int, path: str) -> None:
    app = build_server().streamable_http_app(streamable_http_path=path)
    http = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))

    async def announce() -> None:
        while not http.started:
            await anyio.sleep(0.01)
        print(f"ready on http://127.0.0.1:{port}{path}", file=sys.stderr, flush=True)

    async with anyio.create_task_group() as tg:
        tg.start_soon(announce)
        await http.serve()
        tg.cancel_scope.cancel()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=18020, help="port on 127.0.0.1")
    parser.add_argument("--path", default="/mcp")
    args = parser.parse_args()
    anyio.run(serve, args.port, args.path)


if __name__ == "__main__":
    main()
