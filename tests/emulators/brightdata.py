"""A local Bright Data API over real HTTP, scriptable per test: Web Unlocker and the Web Scraper API.

    with BrightDataEmulator(token="fake-token-123") as bd:
        bd.pages["https://a.test/x"] = Page("# X\\n\\ntext")
        bd.pages["https://a.test/y"] = Page("", faults=[Fault(429, {"Retry-After": "1"})])
        ... scrape with api_url=bd.url ...
        bd.requests_to("/request")        # every request it saw, in order

It answers what REFERENCE-APIS (section 6 first) says the real API answers:
- POST /request {"zone", "url", "format", "data_format"}: 401 without the right Bearer token, 400 for an
  unknown zone; else 200 with the page's markdown and `x-brd-status-code`, or an unlocker failure as 200
  with `x-brd-error*` headers. A page's `faults` are served first, one per request (429, 5xx, a hang, an
  error header), then the page itself.
- POST /datasets/v3/trigger, GET /datasets/v3/progress/{id}, GET /datasets/v3/snapshot/{id}[/parts]:
  a collection's records come from `products` by input; its script sets the progress statuses, the
  number of 202 "building" replies, failed / expired / empty snapshots.
"""

import dataclasses
import json
import math
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler

from tests.emulators import LocalServer


@dataclasses.dataclass
class Fault:
    """One scripted reply served instead of the real one: a status and headers, or a hang."""

    status: int = 200
    headers: dict = dataclasses.field(default_factory=dict)
    body: str = ""
    hang_s: float = 0.0  # sleep this long before answering (longer than the client's deadline: a timeout)


@dataclasses.dataclass
class Page:
    markdown: str
    target_status: int = 200  # x-brd-status-code
    faults: list = dataclasses.field(default_factory=list)  # served first, one per request


@dataclasses.dataclass
class Collection:
    """A triggered collection (snapshot) and its script."""

    snapshot_id: str
    dataset_id: str
    records: list
    progress: list = dataclasses.field(default_factory=lambda: ["running", "ready"])  # then "ready" forever
    building_replies: int = 0  # 202 "building" replies to the download before the records
    expired: bool = False
    polls: int = 0


@dataclasses.dataclass
class Seen:
    t: float
    method: str
    path: str
    query: dict
    body: object
    authorized: bool


class BrightDataEmulator(LocalServer):
    def __init__(self, *, token: str, zones=("web_unlocker1",), latency_s: float = 0.0):
        self.token, self.zones, self.latency_s = token, set(zones), latency_s
        self.pages: dict[str, Page] = {}
        self.products: dict[str, dict] = {}  # input value (URL or keyword) -> record(s) a collection returns
        self.collection_script: dict = {}  # Collection fields of the next trigger
        self.trigger_faults: list[Fault] = []
        self.collections: dict[str, Collection] = {}
        self.seen: list[Seen] = []
        super().__init__(self._handler())

    def requests_to(self, path_prefix: str) -> list[Seen]:
        with self.lock:
            return [s for s in self.seen if s.path.startswith(path_prefix)]

    def fetched_urls(self) -> list[str]:
        return [s.body["url"] for s in self.requests_to("/request")]

    # ---- the handlers' logic (called on the server's threads) ----

    def unlocker(self, body: dict) -> tuple[int, dict, bytes]:
        if body.get("zone") not in self.zones:
            return 400, {}, f"zone '{body.get('zone')}' not found".encode()
        with self.lock:
            page = self.pages.get(body.get("url"))
            fault = page.faults.pop(0) if page and page.faults else None
        if fault:
            time.sleep(fault.hang_s)
            return fault.status, fault.headers, fault.body.encode()
        if page is None:
            return 200, {"x-brd-status-code": "404"}, b""
        return 200, {"x-brd-status-code": str(page.target_status)}, page.markdown.encode()

    def trigger(self, query: dict, body) -> tuple[int, dict, bytes]:
        with self.lock:
            fault = self.trigger_faults.pop(0) if self.trigger_faults else None
        if fault:
            return fault.status, fault.headers, fault.body.encode()
        inputs = body["input"] if isinstance(body, dict) else body
        if not inputs:
            return 400, {}, b'{"error":"No data to trigger"}'
        records = []
        for item in inputs:
            value = item.get("url") or item.get("keyword") or item.get("category_url")
            found = self.products.get(value)
            if found is None:
                found = {"error": "Page does not exist", "error_code": "dead_page", "input": item}
            records += found if isinstance(found, list) else [found]
        snapshot_id = f"s_emulated{self.next_id():04d}"
        with self.lock:
            self.collections[snapshot_id] = Collection(
                snapshot_id, query.get("dataset_id", ""), records, **self.collection_script
            )
        return 200, {}, json.dumps({"snapshot_id": snapshot_id}).encode()

    def progress(self, snapshot_id: str) -> tuple[int, dict, bytes]:
        c = self.collections.get(snapshot_id)
        if c is None:
            return 404, {}, b"Snapshot not found"
        with self.lock:
            status = c.progress[min(c.polls, len(c.progress) - 1)]
            c.polls += 1
        reply = {"snapshot_id": snapshot_id, "dataset_id": c.dataset_id, "status": status}
        if status == "failed":
            reply["error_message"] = "Collection failed: emulated"
        return 200, {}, json.dumps(reply).encode()

    def snapshot(self, snapshot_id: str, query: dict, parts: bool) -> tuple[int, dict, bytes]:
        c = self.collections.get(snapshot_id)
        if c is None:
            return 404, {}, b"Snapshot not found"
        if c.expired:
            return 400, {}, b"Snapshot is expired"
        with self.lock:
            if c.building_replies > 0:
                c.building_replies -= 1
                return 202, {}, b'{"status":"building","message":"Snapshot is building, try again in 10s"}'
        if not c.records:
            return 400, {}, b"Snapshot is empty"
        size = int(query.get("batch_size", 0)) or len(c.records)
        if parts:
            return 200, {}, json.dumps({"parts": math.ceil(len(c.records) / size)}).encode()
        part = int(query.get("part", 1))
        return 200, {}, json.dumps(c.records[(part - 1) * size : part * size]).encode()

    def _handler(self):
        emulator = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet: the tests read `seen`
                pass

            def _serve(self, method: str):
                split = urllib.parse.urlsplit(self.path)
                query = dict(urllib.parse.parse_qsl(split.query))
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                body = json.loads(raw) if raw else None
                authorized = self.headers.get("Authorization") == f"Bearer {emulator.token}"
                with emulator.lock:
                    emulator.seen.append(Seen(time.monotonic(), method, split.path, query, body, authorized))
                time.sleep(emulator.latency_s)
                if not authorized:
                    status, headers, out = 401, {}, b"Invalid credentials"
                else:
                    status, headers, out = emulator.route(method, split.path, query, body)
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            def do_GET(self):
                self._serve("GET")

            def do_POST(self):
                self._serve("POST")

        return Handler

    def route(self, method: str, path: str, query: dict, body) -> tuple[int, dict, bytes]:
        if method == "POST" and path == "/request":
            return self.unlocker(body or {})
        if method == "GET" and path == "/zone/get_active_zones":
            return (
                200,
                {},
                json.dumps([{"name": z, "type": "unblocker"} for z in sorted(self.zones)]).encode(),
            )
        if method == "POST" and path == "/datasets/v3/trigger":
            return self.trigger(query, body)
        prefix = "/datasets/v3/"
        if method == "GET" and path.startswith(prefix + "progress/"):
            return self.progress(path.rsplit("/", 1)[1])
        if method == "GET" and path.startswith(prefix + "snapshot/"):
            rest = path[len(prefix + "snapshot/") :]
            if rest.endswith("/parts"):
                return self.snapshot(rest[: -len("/parts")], query, parts=True)
            return self.snapshot(rest, query, parts=False)
        return 404, {}, b"not found"
