"""A local OpenAI API over real HTTP (the openai 3.x client runs on httpx2: mocks of httpx miss it),
scriptable per test: files, fine-tuning jobs and their events, models, chat completions.

    with OpenAIEmulator(key="sk-test-fake") as api:
        api.job_script = ["validating_files", "queued", "running", "succeeded"]   # one status per retrieve
        api.faults["POST /v1/fine_tuning/jobs"] = [Fault(403, "not eligible")]     # served first
        api.answer_for = lambda body: "[[A>B]]"   # per chat completion: text, (text, finish_reason) or Fault
        OpenAI(base_url=api.url + "/v1", api_key="sk-test-fake")

Every job response carries all the keys the SDK's FineTuningJob declares (REFERENCE-APIS section 4).
Errors are `{"error": {"message", "type", "param", "code"}}`; a scripted 429 carries retry-after-ms.
"""

import dataclasses
import email.parser
import email.policy
import json
import time
import urllib.parse
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler

from tests.emulators import LocalServer


@dataclasses.dataclass
class Fault:
    status: int
    message: str = "emulated failure"
    code: str | None = None
    retry_after_ms: int | None = None


@dataclasses.dataclass
class Seen:
    method: str
    path: str
    query: dict
    body: object


class OpenAIEmulator(LocalServer):
    def __init__(self, *, key: str):
        self.key = key
        self.files: dict[str, dict] = {}  # id -> {"filename", "bytes", "purpose", "content"}
        self.jobs: dict[str, dict] = {}
        self.job_polls: dict[str, int] = {}
        self.job_script = ["validating_files", "queued", "running", "succeeded"]
        self.final_error = {
            "code": "invalid_training_file",
            "message": "emulated: the file is invalid",
            "param": "training_file",
        }
        self.models = {"gpt-4o-mini-2024-07-18": {"shutdown_date": None}}
        self.answers: dict[str, str] = {}  # model -> the answer its chat completions give
        # when set, every chat completion's request body -> its reply: a text, (text, finish_reason), or a
        # Fault to serve instead (wins over `answers`)
        self.answer_for: Callable[[dict], str | tuple[str, str] | Fault] | None = None
        self.faults: dict[str, list[Fault]] = {}  # "METHOD /path" (ids as {id}) -> faults served first
        self.seen: list[Seen] = []
        super().__init__(self._handler())

    def calls(self, method: str, prefix: str) -> list[Seen]:
        with self.lock:
            return [s for s in self.seen if s.method == method and s.path.startswith(prefix)]

    # ---- behaviour ----

    def job_body(self, job_id: str) -> dict:
        job = self.jobs[job_id]
        status = job["status"]
        done = status == "succeeded"
        return {
            "id": job_id,
            "object": "fine_tuning.job",
            "created_at": job["created_at"],
            "model": job["model"],
            "organization_id": "org-emulated",
            "status": status,
            "training_file": job["training_file"],
            "validation_file": job.get("validation_file"),
            "fine_tuned_model": f"ft:{job['model']}:emulated:{job.get('suffix') or 'x'}:{job_id[-6:]}"
            if done
            else None,
            "finished_at": job["created_at"] + 60 if status in ("succeeded", "failed", "cancelled") else None,
            "trained_tokens": 12345 if done else None,
            "result_files": [job["result_file"]] if done else [],
            "seed": job.get("seed") or 42,
            "error": self.final_error if status == "failed" else None,
            "hyperparameters": {"batch_size": "auto", "learning_rate_multiplier": "auto", "n_epochs": "auto"},
            "method": job.get("method") or {"type": "supervised"},
            "estimated_finish": None,
            "integrations": [],
            "metadata": job.get("metadata"),
            "suffix": job.get("suffix"),
        }

    def advance(self, job_id: str) -> None:
        with self.lock:
            job = self.jobs[job_id]
            if job["status"] in ("succeeded", "failed", "cancelled"):
                return
            polls = self.job_polls[job_id] = self.job_polls.get(job_id, 0) + 1
            job["status"] = self.job_script[min(polls, len(self.job_script) - 1)]
            if job["status"] == "running":
                step = len([e for e in job["events"] if e["type"] == "metrics"]) + 1
                job["events"].append(
                    self.event(
                        job,
                        "metrics",
                        f"Step {step}: training loss={2.0 / step:.3f}",
                        {"step": step, "train_loss": 2.0 / step, "valid_loss": 2.2 / step},
                    )
                )
            if job["status"] == "succeeded":
                rows = "\n".join(f"{s},{2.0 / s:.4f},{2.2 / s:.4f}" for s in range(1, 4))
                result = self.add_file(
                    "step_metrics.csv", f"step,train_loss,valid_loss\n{rows}\n".encode(), "fine-tune-results"
                )
                job["result_file"] = result
                job["events"].append(self.event(job, "message", "The job has successfully completed", {}))

    def event(self, job: dict, kind: str, message: str, data: dict) -> dict:
        return {
            "object": "fine_tuning.job.event",
            "id": f"ftevent-{self.next_id()}",
            "created_at": int(time.time()),
            "level": "info",
            "message": message,
            "data": data,
            "type": kind,
        }

    def add_file(self, filename: str, content: bytes, purpose: str) -> str:
        file_id = f"file-{self.next_id():06d}"
        self.files[file_id] = {
            "filename": filename,
            "bytes": len(content),
            "purpose": purpose,
            "content": content,
        }
        return file_id

    def file_body(self, file_id: str) -> dict:
        f = self.files[file_id]
        return {
            "id": file_id,
            "object": "file",
            "bytes": f["bytes"],
            "created_at": 1764547200,
            "filename": f["filename"],
            "purpose": f["purpose"],
            "status": "processed",
            "expires_at": None,
            "status_details": None,
        }

    def route(self, method: str, path: str, query: dict, body, form) -> tuple[int, object]:
        parts = path.strip("/").split("/")  # v1, resource, ...
        if method == "POST" and path == "/v1/files":
            return 200, self.file_body(self.add_file(form["filename"], form["content"], form["purpose"]))
        if method == "GET" and len(parts) == 4 and parts[1] == "files" and parts[3] == "content":
            return (200, self.files[parts[2]]["content"]) if parts[2] in self.files else (404, None)
        if method == "GET" and len(parts) == 3 and parts[1] == "models":
            model = parts[2]
            if model not in self.models and not model.startswith("ft:"):
                return 404, None
            return 200, {
                "id": model,
                "object": "model",
                "created": 0,
                "owned_by": "system",
                **self.models.get(model, {}),
            }
        if path == "/v1/fine_tuning/jobs" and method == "POST":
            job_id = f"ftjob-emulated{self.next_id():04d}"
            with self.lock:
                self.jobs[job_id] = {
                    **body,
                    "status": self.job_script[0],
                    "created_at": 1764547200,
                    "events": [],
                }
                self.jobs[job_id]["events"].append(
                    self.event(self.jobs[job_id], "message", "Created fine-tuning job", {})
                )
            return 200, self.job_body(job_id)
        if path == "/v1/fine_tuning/jobs" and method == "GET":
            wanted = {k[len("metadata[") : -1]: v for k, v in query.items() if k.startswith("metadata[")}
            found = [
                self.job_body(j)
                for j, job in reversed(self.jobs.items())
                if all((job.get("metadata") or {}).get(k) == v for k, v in wanted.items())
            ]
            return 200, {"object": "list", "data": found, "has_more": False}
        if len(parts) >= 4 and parts[1] == "fine_tuning" and parts[2] == "jobs":
            job_id = parts[3]
            if job_id not in self.jobs:
                return 404, None
            if method == "GET" and len(parts) == 4:
                self.advance(job_id)
                return 200, self.job_body(job_id)
            if method == "GET" and parts[4:] == ["events"]:
                events = list(reversed(self.jobs[job_id]["events"]))  # newest first, as the API lists them
                return 200, {
                    "object": "list",
                    "data": events[: int(query.get("limit", 20))],
                    "has_more": False,
                }
            if method == "POST" and parts[4:] == ["cancel"]:
                self.jobs[job_id]["status"] = "cancelled"
                return 200, self.job_body(job_id)
        if method == "POST" and path == "/v1/chat/completions":
            model = body.get("model")
            if self.answer_for is not None:
                scripted = self.answer_for(body)
                if isinstance(scripted, Fault):
                    return scripted.status, scripted
                text, finish = (scripted, "stop") if isinstance(scripted, str) else scripted
            elif model in self.answers:
                text, finish = self.answers[model], "stop"
            else:
                return 404, None
            # tokens counted as words: enough for tests to sum usage exactly
            prompt_tokens = sum(len(str(m.get("content", "")).split()) for m in body.get("messages", []))
            return 200, {
                "id": "chatcmpl-emulated",
                "object": "chat.completion",
                "created": 0,
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": text},
                        "finish_reason": finish,
                        "logprobs": None,
                    }
                ],
                "usage": {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": len(text.split()),
                    "total_tokens": prompt_tokens + len(text.split()),
                },
            }
        return 404, None

    def _handler(self):
        emulator = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def reply(self, status: int, payload, headers=None):
                raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                self.send_response(status)
                self.send_header(
                    "Content-Type",
                    "application/octet-stream" if isinstance(payload, bytes) else "application/json",
                )
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def error(self, status: int, message: str, code=None, headers=None):
                kind = {
                    401: "invalid_request_error",
                    403: "invalid_request_error",
                    404: "invalid_request_error",
                    429: "rate_limit_error",
                }.get(status, "server_error")
                self.reply(
                    status,
                    {"error": {"message": message, "type": kind, "param": None, "code": code}},
                    headers,
                )

            def serve(self, method: str):
                split = urllib.parse.urlsplit(self.path)
                query = dict(urllib.parse.parse_qsl(split.query))
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                body, form = None, None
                kind = self.headers.get("Content-Type", "")
                if kind.startswith("multipart/form-data"):
                    form = multipart(kind, raw)
                elif raw:
                    body = json.loads(raw)
                with emulator.lock:
                    emulator.seen.append(
                        Seen(
                            method,
                            split.path,
                            query,
                            body if form is None else {k: v for k, v in form.items() if k != "content"},
                        )
                    )
                if self.headers.get("Authorization") != f"Bearer {emulator.key}":
                    return self.error(401, "Incorrect API key provided", "invalid_api_key")
                route = f"{method} " + "/".join(
                    "{id}" if p.startswith(("ftjob-", "file-", "ft:")) else p for p in split.path.split("/")
                )
                with emulator.lock:
                    queued = emulator.faults.get(route) or []
                    fault = queued.pop(0) if queued else None
                if fault:
                    status, payload = fault.status, fault
                else:
                    status, payload = emulator.route(method, split.path, query, body, form)
                if isinstance(payload, Fault):
                    ms = payload.retry_after_ms
                    headers = {"retry-after-ms": str(ms)} if ms else {}
                    return self.error(payload.status, payload.message, payload.code, headers)
                if status == 404:
                    return self.error(404, f"no such resource: {split.path}", "not_found")
                self.reply(status, payload)

            def do_GET(self):
                self.serve("GET")

            def do_POST(self):
                self.serve("POST")

        return Handler


def multipart(content_type: str, raw: bytes) -> dict:
    """The fields of a multipart/form-data body: purpose, and the file's name and bytes."""
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {content_type}\r\n\r\n".encode() + raw
    )
    form = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if part.get_filename():
            form["filename"], form["content"] = part.get_filename(), part.get_payload(decode=True)
        else:
            form[name] = part.get_payload(decode=True).decode()
    return form
