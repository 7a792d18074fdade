"""The http source against a real local server (127.0.0.1, port 0) whose routes inject faults.

Every route counts its requests server-side, so retry behaviour is asserted as exact attempt counts, and
the streaming routes count the bytes they managed to send, so "never read the whole body" is asserted
from the server's side. Sleeps are injected and recorded: backoff is asserted, never waited for. Nothing is
timed: a slow route holds its answer far past the client's timeout, so a fetch_timeout row (with its
exact attempt count) is itself the proof that the client gave up at the timeout.
"""

import collections
import dataclasses
import gzip
import hashlib
import socket
import sys
import threading
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from webtune import params as P
from webtune.errors import UserError
from webtune.params import load_section
from webtune.schema import doc_id
from webtune.sources import HTML, MARKDOWN, TEXT, EmptySourceError, SourceError, get_fetch
from webtune.sources.http import CHUNK_BYTES, fetch, parse_retry_after, retry_delay, title_for

PARAMS_YAML = Path(__file__).resolve().parents[3] / "params.yaml"
NOW = "2025-01-02T03:04:05Z"
MAX_DOC_BYTES = 1_000_000  # 1 MB cap in tests; the big routes serve 50x that
BIG = 50_000_000  # 50 MB
TIMEOUT_S = 0.3  # the slow routes hold the client for 5 s, far past this
BACKOFF_S = 0.01
RETRIES = 2  # so 3 attempts at most

PAGE = b"<html><head><title>Hello</title></head><body><p>Hello, page.</p></body></html>"
MARKDOWN_PAGE = b"# Heading\n\nSome *markdown* text.\n"
LATIN1_PAGE = "café au lait".encode("latin-1")  # b"caf\xe9 ...": not valid UTF-8
PNG = b"\x89PNG\r\n\x1a\n" + bytes(100)
GZIP_BOMB = gzip.compress(b"a" * 5_000_000)  # ~5 kB on the wire, 5 MB decoded
SMALL_GZIP_TEXT = b"plain words " * 100


class Recorder:
    """Server-side state shared with the tests: request counts, bytes sent, request headers."""

    def __init__(self):
        self.lock = threading.Lock()
        self.hits: collections.Counter[str] = collections.Counter()
        self.sent: collections.Counter[str] = collections.Counter()  # body bytes written, per route
        self.done = {path: threading.Event() for path in ("/big-chunked", "/big-length")}
        self.user_agents: list[str] = []
        self.release = threading.Event()  # set at teardown so stalled handlers stop waiting
        self.errors: list[str] = []  # tracebacks from handlers: a bug in this test server, not in the client

    def hit(self, path: str, user_agent: str) -> int:
        with self.lock:
            self.hits[path] += 1
            self.user_agents.append(user_agent)
            return self.hits[path]


def make_handler(rec: Recorder):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive and chunked transfer encoding, like real servers

        def log_message(self, format, *args):  # keep pytest output quiet
            pass

        def send(self, status: int, body: bytes = b"", content_type: str = "text/html; charset=utf-8",
                 **headers):
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            for name, value in headers.items():
                self.send_header(name.replace("_", "-"), value)
            self.end_headers()
            self.wfile.write(body)

        def stream_big(self, path: str, *, chunked: bool):
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            length = ("Transfer-Encoding", "chunked") if chunked else ("Content-Length", str(BIG))
            self.send_header(*length)
            self.end_headers()
            block = b"x" * CHUNK_BYTES
            try:
                while rec.sent[path] < BIG:
                    data = block[: BIG - rec.sent[path]]
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data) if chunked else data)
                    rec.sent[path] += len(data)
                if chunked:
                    self.wfile.write(b"0\r\n\r\n")
            except OSError:  # the client hung up: what we want
                self.close_connection = True
            finally:
                rec.done[path].set()

        def do_GET(self):
            path = self.path
            n = rec.hit(path, self.headers.get("User-Agent", ""))
            try:
                self.route(path, n)
            except OSError:  # the client gave up on a slow route
                self.close_connection = True

        def route(self, path: str, n: int):
            match path:
                case "/docs/page.html" | "/" | "/a%20b/":
                    self.send(200, PAGE)
                case "/doc.md":
                    self.send(200, MARKDOWN_PAGE, "text/markdown; charset=utf-8")
                case "/x-markdown":
                    self.send(200, MARKDOWN_PAGE, "text/x-markdown")
                case "/xhtml":
                    self.send(200, PAGE, "application/xhtml+xml")
                case "/plain.txt":
                    self.send(200, b"just text", "Text/Plain; Charset=UTF-8")
                case "/flaky-503":  # 503 twice, then fine
                    if n <= 2:
                        self.send(503, b"busy")
                    else:
                        self.send(200, PAGE)
                case "/always-500":
                    self.send(500, b"boom")
                case "/missing":
                    self.send(404, b"not here")
                case "/rate-limited":  # 429 asking for 1 s, then fine
                    if n == 1:
                        self.send(429, b"slow down", Retry_After="1")
                    else:
                        self.send(200, PAGE)
                case "/rate-limited-long":  # always 429, asking for an hour
                    self.send(429, b"slow down", Retry_After="3600")
                case "/busy-date":  # 503 with an HTTP-date Retry-After: not numeric, backoff applies
                    self.send(503, b"busy", Retry_After="Wed, 21 Oct 2037 07:28:00 GMT")
                case "/image.png":
                    self.send(200, PNG, "image/png")
                case "/no-type":
                    self.send_response(200)
                    self.send_header("Content-Length", "2")
                    self.end_headers()
                    self.wfile.write(b"hi")
                case "/big-chunked":
                    self.stream_big(path, chunked=True)
                case "/big-length":
                    self.stream_big(path, chunked=False)
                case "/gzip-bomb":
                    self.send(200, GZIP_BOMB, "text/plain", Content_Encoding="gzip")
                case "/gzip-small":
                    body = gzip.compress(SMALL_GZIP_TEXT)
                    self.send(200, body, "text/plain", Content_Encoding="gzip")
                case "/slow":  # no headers for 5 s
                    rec.release.wait(5)
                    self.send(200, PAGE)
                case "/stall":  # headers and part of the body, then 5 s of silence
                    self.send_response(200)
                    self.send_header("Content-Type", "text/html")
                    self.send_header("Content-Length", "1000")
                    self.end_headers()
                    self.wfile.write(b"x" * 100)
                    rec.release.wait(5)
                    self.wfile.write(b"x" * 900)
                case "/truncated":  # promises 1000 bytes, sends 100 and hangs up
                    self.send_response(200)
                    self.send_header("Content-Type", "text/html")
                    self.send_header("Content-Length", "1000")
                    self.end_headers()
                    self.wfile.write(b"x" * 100)
                    self.close_connection = True
                case "/latin1":
                    self.send(200, LATIN1_PAGE, "text/plain; charset=iso-8859-1")
                case "/moved":
                    self.send(301, b"", Location="/docs/page.html")
                case _:
                    self.send(404, b"no such route")

    return Handler


class QuietServer(ThreadingHTTPServer):
    def __init__(self, rec: Recorder):
        super().__init__(("127.0.0.1", 0), make_handler(rec))
        self.rec = rec

    def handle_error(self, request, client_address):
        # Clients hanging up mid-exchange is what half the routes provoke; that is not worth a traceback
        # on stderr (where the progress lines under test go). Anything else fails the test at teardown.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            self.rec.errors.append(traceback.format_exc())


@dataclasses.dataclass
class Site:
    base: str
    rec: Recorder

    def url(self, path: str) -> str:
        return self.base + path


@pytest.fixture
def site(monkeypatch):
    # A proxy from the environment must not intercept requests to the local server.
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    rec = Recorder()
    server = QuietServer(rec)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield Site(f"http://127.0.0.1:{server.server_address[1]}", rec)
    rec.release.set()
    server.shutdown()
    server.server_close()
    thread.join(5)
    assert not rec.errors, rec.errors[0]


class Sleeps(list):
    """An injected sleep that records the delays instead of waiting."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


def make_params(urls, **http):
    scrape = load_section("scrape", PARAMS_YAML)  # the real section, so this also checks it still loads
    http = {"timeout_s": TIMEOUT_S, "retries": RETRIES, "backoff_s": BACKOFF_S} | http
    return P.replace(
        scrape,
        source="http",
        max_doc_bytes=MAX_DOC_BYTES,
        http=dataclasses.replace(scrape.http, urls=tuple(urls), **http),
    )


def run(urls, sleeps=None, **http) -> list[dict]:
    sleep = Sleeps() if sleeps is None else sleeps
    return list(fetch(make_params(urls, **http), sources_dir=Path("unused"), now=lambda: NOW, sleep=sleep))


def fetch_one(site: Site, path: str, sleeps=None, **http) -> dict:
    (row,) = run([site.url(path)], sleeps, **http)
    return row


def test_get_fetch_finds_the_http_source():
    assert get_fetch("http") is fetch


def test_html_page_becomes_a_row_with_body_title_and_provenance(site):
    url = site.url("/docs/page.html")
    sleeps = Sleeps()
    row = fetch_one(site, "/docs/page.html", sleeps)
    assert row == {
        "doc_id": doc_id("http", url),
        "source": "http",
        "url": url,
        "fetched_at": NOW,
        "content_sha256": hashlib.sha256(PAGE).hexdigest(),
        "content_type": HTML,
        "title": "page.html",
        "body": PAGE.decode(),
        "record": None,
        "n_bytes": len(PAGE),
        "n_bad_chars": 0,
        "fetch_error": None,
        "fetch_detail": None,
    }
    assert site.rec.hits["/docs/page.html"] == 1
    assert sleeps == []


def test_requests_carry_the_configured_user_agent(site):
    fetch_one(site, "/docs/page.html", user_agent="webtune-test/9")
    assert site.rec.user_agents == ["webtune-test/9"]


@pytest.mark.parametrize(
    ("path", "content_type", "body"),
    [
        ("/doc.md", MARKDOWN, MARKDOWN_PAGE),
        ("/x-markdown", MARKDOWN, MARKDOWN_PAGE),
        ("/xhtml", HTML, PAGE),
        ("/plain.txt", TEXT, b"just text"),  # media type matched case-insensitively
    ],
)
def test_text_media_types_map_to_pipeline_content_types(site, path, content_type, body):
    row = fetch_one(site, path)
    assert (row["fetch_error"], row["content_type"], row["body"]) == (None, content_type, body.decode())


@pytest.mark.parametrize("path", ["/image.png", "/no-type"])
def test_non_text_content_is_a_failed_row_not_retried(site, path):
    sleeps = Sleeps()
    row = fetch_one(site, path, sleeps)
    assert row["fetch_error"] == "non_text_content_type"
    assert (row["body"], row["content_sha256"]) == ("", hashlib.sha256(b"").hexdigest())
    assert site.rec.hits[path] == 1
    assert sleeps == []


def test_503_twice_then_200_succeeds_on_the_third_attempt_with_exponential_backoff(site):
    sleeps = Sleeps()
    row = fetch_one(site, "/flaky-503", sleeps)
    assert row["fetch_error"] is None
    assert row["body"] == PAGE.decode()
    assert site.rec.hits["/flaky-503"] == 3
    assert sleeps == [BACKOFF_S, BACKOFF_S * 2]


def test_503_twice_with_one_retry_is_http_error(site):
    row = fetch_one(site, "/flaky-503", retries=1)
    assert row["fetch_error"] == "http_error"
    assert site.rec.hits["/flaky-503"] == 2


def test_always_500_is_http_error_after_every_retry(site):
    sleeps = Sleeps()
    row = fetch_one(site, "/always-500", sleeps, retries=3)
    assert row["fetch_error"] == "http_error"
    assert row["body"] == ""
    assert site.rec.hits["/always-500"] == 4  # 1 + 3 retries
    assert sleeps == [BACKOFF_S, BACKOFF_S * 2, BACKOFF_S * 4]


def test_404_is_final_http_error_without_retry(site):
    sleeps = Sleeps()
    row = fetch_one(site, "/missing", sleeps)
    assert row["fetch_error"] == "http_error"
    assert row["fetch_detail"] == "http_error (HTTP 404, 1 attempt)"
    assert site.rec.hits["/missing"] == 1
    assert sleeps == []


def test_429_waits_for_its_retry_after_then_succeeds(site):
    sleeps = Sleeps()
    row = fetch_one(site, "/rate-limited", sleeps)
    assert row["fetch_error"] is None
    assert site.rec.hits["/rate-limited"] == 2
    assert sleeps == [1.0]  # Retry-After: 1 beats the 0.01 s backoff


def test_retry_after_is_capped_at_60_seconds(site):
    sleeps = Sleeps()
    row = fetch_one(site, "/rate-limited-long", sleeps)
    assert row["fetch_error"] == "http_error"
    assert site.rec.hits["/rate-limited-long"] == 3
    assert sleeps == [60.0, 60.0]  # asked for 3600 s


def test_http_date_retry_after_falls_back_to_backoff(site):
    sleeps = Sleeps()
    fetch_one(site, "/busy-date", sleeps)
    assert sleeps == [BACKOFF_S, BACKOFF_S * 2]


def test_chunked_50mb_page_is_abandoned_just_past_the_cap(site):
    row = fetch_one(site, "/big-chunked")
    assert row["fetch_error"] == "too_large"
    assert MAX_DOC_BYTES < row["n_bytes"] <= MAX_DOC_BYTES + CHUNK_BYTES
    assert row["body"] == ""
    assert site.rec.hits["/big-chunked"] == 1  # too_large is final
    # The server could only push what fits in the socket buffers after the client hung up.
    assert site.rec.done["/big-chunked"].wait(5), "the server never noticed the client hang up"
    assert site.rec.sent["/big-chunked"] < BIG // 2


def test_content_length_over_the_cap_is_too_large_before_reading_the_body(site):
    row = fetch_one(site, "/big-length")
    assert row["fetch_error"] == "too_large"
    assert row["n_bytes"] == BIG  # the declared size: nothing was read to find out
    assert site.rec.hits["/big-length"] == 1
    assert site.rec.done["/big-length"].wait(5), "the server never noticed the client hang up"
    assert site.rec.sent["/big-length"] < BIG // 2


def test_cap_applies_to_decoded_bytes_of_a_gzip_body(site):
    assert len(GZIP_BOMB) < MAX_DOC_BYTES  # so only the decoded size can trip the cap
    row = fetch_one(site, "/gzip-bomb")
    assert row["fetch_error"] == "too_large"
    assert MAX_DOC_BYTES < row["n_bytes"] <= MAX_DOC_BYTES + CHUNK_BYTES


def test_gzip_body_is_stored_decoded(site):
    row = fetch_one(site, "/gzip-small")
    assert row["fetch_error"] is None
    assert row["body"] == SMALL_GZIP_TEXT.decode()
    assert row["n_bytes"] == len(SMALL_GZIP_TEXT)
    assert row["content_sha256"] == hashlib.sha256(SMALL_GZIP_TEXT).hexdigest()


@pytest.mark.parametrize("path", ["/slow", "/stall"])  # before the headers / in the middle of the body
def test_a_page_slower_than_the_timeout_is_fetch_timeout_after_every_retry(site, path):
    sleeps = Sleeps()
    row = fetch_one(site, path, sleeps)
    # Each route answers in full after 5 s: a timeout row after 3 attempts means the client gave up each time.
    assert row["fetch_error"] == "fetch_timeout"
    assert site.rec.hits[path] == 3
    assert sleeps == [BACKOFF_S, BACKOFF_S * 2]


def test_a_body_cut_short_is_connection_error_after_every_retry(site):
    row = fetch_one(site, "/truncated")
    assert row["fetch_error"] == "connection_error"
    assert site.rec.hits["/truncated"] == 3


def test_a_refused_connection_is_connection_error_after_every_retry():
    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there now
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    sleeps = Sleeps()
    (row,) = run([f"http://127.0.0.1:{port}/x"], sleeps)
    assert row["fetch_error"] == "connection_error"
    assert sleeps == [BACKOFF_S, BACKOFF_S * 2]  # 3 attempts


def test_non_utf8_bytes_are_kept_as_sent_and_counted_as_bad_chars(site):
    row = fetch_one(site, "/latin1")  # the declared charset is ignored: one decoding policy for all sources
    assert row["fetch_error"] is None
    assert row["body"] == "caf\ufffd au lait"
    assert row["n_bad_chars"] == 1
    assert row["n_bytes"] == len(LATIN1_PAGE)
    assert row["content_sha256"] == hashlib.sha256(LATIN1_PAGE).hexdigest()


def test_a_redirect_is_followed_but_the_row_keeps_the_listed_url(site):
    url = site.url("/moved")
    row = fetch_one(site, "/moved")
    assert (row["url"], row["doc_id"], row["fetch_error"]) == (url, doc_id("http", url), None)
    assert row["body"] == PAGE.decode()
    assert site.rec.hits["/moved"] == site.rec.hits["/docs/page.html"] == 1


def test_titles_come_from_the_last_path_segment_or_the_host():
    assert title_for("https://docs.python.org/3/tutorial/classes.html") == "classes.html"
    assert title_for("https://docs.python.org/3/tutorial/") == "tutorial"
    assert title_for("https://example.com/a%20b?q=1#frag") == "a b"
    assert title_for("https://example.com/") == "example.com"
    assert title_for("https://example.com") == "example.com"


def test_every_url_yields_one_row_in_list_order_whatever_fails(site, capsys):
    expected = [
        ("/docs/page.html", None),
        ("/always-500", "http_error"),
        ("/doc.md", None),
        ("/missing", "http_error"),
        ("/big-chunked", "too_large"),
        ("/image.png", "non_text_content_type"),
        ("/slow", "fetch_timeout"),
        ("/flaky-503", None),
        ("/truncated", "connection_error"),
        ("/latin1", None),
    ]
    urls = [site.url(path) for path, _ in expected]
    rows = run(urls)
    assert [r["url"] for r in rows] == urls
    assert [r["fetch_error"] for r in rows] == [reason for _, reason in expected]
    assert len({r["doc_id"] for r in rows}) == len(urls)
    # One progress line per URL on stderr, naming the URL and its outcome.
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == len(urls)
    for i, (line, url, (_, reason)) in enumerate(zip(lines, urls, expected, strict=True), 1):
        assert line.startswith(f"[{i}/{len(urls)}] {url} -> {reason or 'ok'}"), line
    assert lines[0].endswith(f"-> ok {len(PAGE) / 1000:.1f} kB")


@pytest.mark.parametrize(
    ("bad", "problem"),
    [
        ("ftp://example.com/file.txt", "is not an http or https URL"),
        ("example.com/page.html", "is not an http or https URL"),
        ("http:///no-host", "has no host"),
        ("", "is not an http or https URL"),
        ("https://example.com:99999/", "is not a valid URL"),
        ("https://example.com/a page", "contains whitespace"),
    ],
)
def test_a_bad_url_raises_source_error_naming_it_before_anything_is_fetched(site, bad, problem):
    urls = [site.url("/docs/page.html"), bad]
    with pytest.raises(SourceError) as err:
        run(urls)
    assert f"scrape.http.urls[1]: {bad!r} {problem}" in str(err.value)
    assert site.rec.hits["/docs/page.html"] == 0


def test_a_repeated_url_is_a_source_error(site):
    url = site.url("/docs/page.html")
    with pytest.raises(SourceError, match=r"urls\[2\].*repeats scrape\.http\.urls\[0\]"):
        run([url, site.url("/doc.md"), url])
    assert sum(site.rec.hits.values()) == 0


def test_an_empty_url_list_is_an_empty_source_error():
    with pytest.raises(EmptySourceError, match="scrape.http.urls is empty"):
        run([])


def test_source_errors_are_user_errors_so_the_stage_reports_them_in_one_line():
    assert issubclass(SourceError, UserError) and issubclass(EmptySourceError, UserError)


def test_get_fetch_names_the_known_sources_for_an_unknown_one():
    known = (r"^scrape\.source: unknown source 'ftp' \(known: pydoc, files, http, brightdata_unlocker, "
             r"brightdata_dataset\)$")
    with pytest.raises(SourceError, match=known):
        get_fetch("ftp")


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("1", 1.0), (" 2.5 ", 2.5), ("0", 0.0), (None, None), ("-3", None), ("nan", None), ("soon", None)],
)
def test_parse_retry_after(value, seconds):
    assert parse_retry_after(value) == seconds


@pytest.mark.parametrize(
    ("k", "retry_after", "delay"),
    [(0, None, 1.0), (1, None, 2.0), (2, None, 4.0), (0, 0.5, 1.0), (0, 10.0, 10.0), (3, 600.0, 60.0)],
)
def test_retry_delay_is_exponential_or_the_capped_retry_after_if_longer(k, retry_after, delay):
    assert retry_delay(k, backoff_s=1.0, retry_after_s=retry_after) == delay
