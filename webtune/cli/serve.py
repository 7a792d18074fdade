"""serve: an OpenAI-compatible HTTP API over a base and its adapter (FastAPI on uvicorn), CPU or GPU.

    python -m webtune.cli.serve --base models/base --adapter models/adapter [--port 8000] [--name webtune]

    from openai import OpenAI
    client = OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="unused")
    client.chat.completions.create(model="webtune", messages=[{"role": "user", "content": "Hi"}])

Endpoints: GET /v1/models, POST /v1/chat/completions (with and without `stream`: server-sent events,
`data: [DONE]` at the end). Errors are OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`,
with 400 for a bad request (the message names the field), 404 for an unknown model or path, 500 when
generation fails.

The adapter is merged into the base's weights at start (`--no-merge` keeps it separate): one matmul per
projection instead of three. One model, one generation worker: requests wait in a queue and the worker
takes them in order. Waiting non-streaming requests with the same sampling are answered together in
one left-padded batch (each request is its own row: left padding gives each the answer it would get
alone), which on a CPU costs little more than one; a streaming request or one with a seed runs alone.
Nothing ever mixes two requests in one sequence (serve_engine.py). Prompts, stops and sampling are the
ChatModel's (webtune.models.inference), the same as `chat` and evaluate use. This module is the HTTP side:
requests checked and parsed, answers shaped as OpenAI's, the app and the command.
"""

import argparse
import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

from webtune.cli.serve_engine import MAX_BATCH, Engine, Job, Request
from webtune.models.chat import Answer, Sampling, check_conversation
from webtune.models.inference import ChatModel

MAX_NEW_TOKENS = 2048  # the most a request may ask for (max_tokens)
ENGINES = ("hf", "llamacpp")
DEFAULT_MAX_TOKENS = 256


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


def parse_request(body, model_name: str, chat: ChatModel) -> Request:
    """A /v1/chat/completions body -> Request; ApiError(400/404) naming the field that is wrong."""
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise ApiError(400, "model is required (GET /v1/models lists it)", "model")
    if model != model_name:
        raise ApiError(404, f"the model {model!r} does not exist; this server serves {model_name!r}", "model",
                       "model_not_found")
    messages = body.get("messages")
    if not isinstance(messages, list):
        raise ApiError(400, "messages must be a list of {role, content} objects", "messages")
    conversation = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise ApiError(400, f"messages[{i}] must be an object with a role", f"messages[{i}]")
        conversation.append({"role": m["role"], "content": text_content(m.get("content"), i)})
    try:
        check_conversation(conversation)
    except ValueError as e:
        raise ApiError(400, str(e), "messages") from None
    for unsupported in ("tools", "functions", "logprobs", "stop"):
        if body.get(unsupported) not in (None, False, []):
            raise ApiError(400, f"{unsupported} is not supported by this server", unsupported)
    if body.get("n", 1) != 1:
        raise ApiError(400, "n must be 1", "n")
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens", DEFAULT_MAX_TOKENS))
    is_int = isinstance(max_tokens, int) and not isinstance(max_tokens, bool)
    if not is_int or not 1 <= max_tokens <= MAX_NEW_TOKENS:
        raise ApiError(400, f"max_tokens must be an integer from 1 to {MAX_NEW_TOKENS}", "max_tokens")
    sampling = {"max_new_tokens": max_tokens}
    for key, field in (("temperature", "temperature"), ("top_p", "top_p")):
        if body.get(key) is not None:
            if not isinstance(body[key], int | float) or isinstance(body[key], bool):
                raise ApiError(400, f"{key} must be a number", key)
            sampling[field] = float(body[key])
    if body.get("seed") is not None:
        if not isinstance(body["seed"], int) or isinstance(body["seed"], bool):
            raise ApiError(400, "seed must be an integer", "seed")
        sampling["seed"] = body["seed"]
    if body.get("reasoning_effort") is not None:
        if chat.chat_format.name != "harmony":
            raise ApiError(400, f"reasoning_effort is a gpt-oss feature; this model's format is "
                                f"{chat.chat_format.name}", "reasoning_effort")
        sampling["reasoning"] = body["reasoning_effort"]
    parsed = Sampling(**sampling)
    if problem := parsed.problems():
        raise ApiError(400, problem, problem.split()[0])
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise ApiError(400, "stream must be true or false", "stream")
    return Request(conversation, parsed, stream)


def text_content(content, index: int) -> str:
    """A message's content: a string, or a list of text parts (what newer clients send)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text"
                                         and isinstance(p.get("text"), str) for p in content):
        return "".join(p["text"] for p in content)
    raise ApiError(400, f"messages[{index}].content must be a string or a list of text parts",
                   f"messages[{index}].content")


def completion(completion_id: str, model: str, answer: Answer, prompt_tokens: int) -> dict:
    return {
        "id": completion_id, "object": "chat.completion", "created": int(time.time()), "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": answer.text},
                     "finish_reason": "stop" if answer.stopped else "length", "logprobs": None}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": answer.tokens,
                  "total_tokens": prompt_tokens + answer.tokens},
    }


def chunk(completion_id: str, model: str, delta: dict, finish_reason: str | None = None) -> str:
    body = {"id": completion_id, "object": "chat.completion.chunk", "created": int(time.time()),
            "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}]}
    return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"


def create_app(chat: ChatModel, *, model_name: str = "webtune", max_batch: int = MAX_BATCH):
    """The ASGI app (a FastAPI app; its engine is app.state.engine, closed on shutdown)."""
    from fastapi import FastAPI
    from fastapi import Request as HttpRequest
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, StreamingResponse
    from starlette.exceptions import HTTPException

    engine = Engine(chat, max_batch=max_batch)
    app = FastAPI(title="webtune serve", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.engine = engine
    app.router.add_event_handler("shutdown", engine.close)

    @app.exception_handler(ApiError)
    async def api_error(_request, e: ApiError):
        return JSONResponse(e.body(), status_code=e.status)

    @app.exception_handler(HTTPException)
    async def http_error(_request, e: HTTPException):
        error = ApiError(e.status_code, str(e.detail), code="not_found" if e.status_code == 404 else None)
        return JSONResponse(error.body(), status_code=e.status_code)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_request, e: RequestValidationError):
        return JSONResponse(ApiError(400, str(e)).body(), status_code=400)

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": 0,
                                            "owned_by": "webtune"}]}

    @app.post("/v1/chat/completions")
    async def chat_completions(http: HttpRequest):
        try:
            body = json.loads(await http.body())
        except ValueError:
            raise ApiError(400, "the request body is not valid JSON") from None
        request = parse_request(body, model_name, chat)
        completion_id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        prompt_tokens = len(chat.conversation_ids(request.conversation, request.sampling.reasoning))
        if prompt_tokens + request.sampling.max_new_tokens > chat.context_length:
            raise ApiError(400, f"the prompt ({prompt_tokens} tokens) and max_tokens "
                           f"({request.sampling.max_new_tokens}) do not fit the model's "
                           f"{chat.context_length}-token context", "max_tokens", "context_length_exceeded")
        job = engine.submit(request)
        if not request.stream:
            try:
                answer = await asyncio.wrap_future(job.result)
            except Exception as e:  # noqa: BLE001 -- the error object, not a traceback, reaches the client
                raise ApiError(500, f"generation failed: {type(e).__name__}: {e}",
                               kind="server_error") from None
            return completion(completion_id, model_name, answer, prompt_tokens)
        return StreamingResponse(sse(job, completion_id, model_name), media_type="text/event-stream")

    return app


async def sse(job: Job, completion_id: str, model: str) -> AsyncIterator[str]:
    """The streamed answer as server-sent events: the role, the text pieces, the finish reason, [DONE]."""
    yield chunk(completion_id, model, {"role": "assistant", "content": ""})
    while True:
        item = await asyncio.to_thread(job.pieces.get)
        if isinstance(item, Exception):
            error = ApiError(500, f"generation failed: {type(item).__name__}: {item}", kind="server_error")
            yield f"data: {json.dumps(error.body())}\n\n"
            return
        if isinstance(item, Answer):
            yield chunk(completion_id, model, {}, "stop" if item.stopped else "length")
            yield "data: [DONE]\n\n"
            return
        if item:
            yield chunk(completion_id, model, {"content": item})


def merged(chat: ChatModel) -> ChatModel:
    """The chat model with its adapter folded into the base's weights (PEFT's merge_and_unload): the same
    answers (to float rounding) with a plain matmul per projection instead of three, which is what a
    GPU spends its time launching at this size. A base without an adapter is returned as it is."""
    if not hasattr(chat.model, "merge_and_unload"):
        return chat
    return ChatModel(chat.model.merge_and_unload(), chat.tokenizer, chat.chat_format)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", type=Path, default=Path("models/base"))
    parser.add_argument("--adapter", type=Path, default=Path("models/adapter"),
                        help="the adapter folder; --no-adapter serves the base alone")
    parser.add_argument("--no-adapter", action="store_true")
    parser.add_argument("--name", default="webtune", help="the model id clients ask for")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--threads", type=int, default=0,
                        help="CPU threads of torch or llama.cpp (0: their default)")
    parser.add_argument("--no-merge", action="store_true",
                        help="hf: keep the adapter separate (by default it is merged at start)")
    parser.add_argument("--dtype", choices=("auto", "float32", "bfloat16"), default="auto",
                        help="hf: the weights' dtype; auto: bfloat16 on a GPU or a CPU with native bf16 "
                             "(AVX-512-BF16, AMX), float32 elsewhere")
    parser.add_argument("--engine", choices=ENGINES, default="hf",
                        help="hf (transformers: CPU or GPU) or llamacpp (a GGUF through llama.cpp: CPUs)")
    parser.add_argument("--gguf", type=Path, default=None,
                        help="llamacpp: this GGUF file (default: the adapter exported on the fly, cached)")
    parser.add_argument("--quant", default="q8_0", help="llamacpp: the on-the-fly export's quant type")
    args = parser.parse_args(argv)
    import uvicorn

    from webtune import errors, io

    with errors.reported("serve"):
        adapter = None if args.no_adapter else args.adapter
        if args.engine == "llamacpp":
            from webtune.models.llamacpp_chat import LlamaCppChat, gguf_for

            gguf = args.gguf or gguf_for(args.base, adapter, args.quant, progress=io.stderr)
            chat, max_batch = LlamaCppChat.load(gguf, args.base, threads=args.threads), 1
        else:
            chat = hf_chat(args.base, adapter, args.threads, merge=not args.no_merge, dtype=args.dtype)
            max_batch = MAX_BATCH
    uvicorn.run(create_app(chat, model_name=args.name, max_batch=max_batch), host=args.host, port=args.port,
                log_level="info")


def hf_chat(base: Path, adapter: Path | None, threads: int, merge: bool, dtype: str = "auto") -> ChatModel:
    """The transformers engine's model. bf16 halves the bytes every decoded token reads, which is what
    bounds a CPU's tokens/s: 16.9 -> 24.2 tokens/s for SmolLM2-135M on 2 AVX-512-BF16 cores (the same 64
    greedy tokens). A static KV cache changed nothing there; torch.compile on top gave 28.9 after 71 s
    of compiling and a recompile on the next shape, so serve does not compile."""
    import torch

    from webtune.training.device import native_cpu_bf16

    if threads:
        torch.set_num_threads(threads)
    chat = ChatModel.load(base, adapter)
    if merge:
        chat = merged(chat)
    cuda = torch.cuda.is_available()
    if dtype == "auto":
        native = torch.cuda.is_bf16_supported() if cuda else native_cpu_bf16()
        dtype = "bfloat16" if native else "float32"
    chat.model.to(device="cuda" if cuda else "cpu", dtype=getattr(torch, dtype))
    return chat


if __name__ == "__main__":
    main()
