"""HTTP source: fetch the pages listed in `scrape.http.urls`, one RAW_DOCS row per URL, in list order.

Selected with `scrape.source: http` in params.yaml. The web fails in many ways; each one ends as a failed
row with a stable reason (clean drops it and counts it), never as a stopped run or a missing row:

    non_text_content_type  the Content-Type is not html / xhtml / markdown / plain text
    too_large              Content-Length, or the bytes actually read, exceed scrape.max_doc_bytes
    http_error             a final status (4xx other than 429), or 429/5xx still failing after the retries;
                           also a request that cannot succeed as sent (redirect loop, bad Content-Encoding)
    fetch_timeout          nothing arrived for timeout_s (connect, headers or mid-body), after the retries
    connection_error       refused, reset, truncated body, DNS or TLS failure, after the retries

Connection errors, timeouts, 429 and 5xx are retried `scrape.http.retries` times; retry k waits
backoff_s * 2**k, or longer if a 429/503 asks for it with a numeric Retry-After (capped at 60 s, so one
server cannot stall the run). Bodies are streamed and reading stops as soon as the cap is passed, so a
50 GB page costs max_doc_bytes + one chunk of memory. Bytes are kept exactly as received (after any
Content-Encoding is undone) and decoded by raw_row with the pipeline's single UTF-8 policy, whatever
charset the server declares, so content_sha256 is the hash of what was served.
"""

import dataclasses
import math
import sys
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import requests
from urllib3.exceptions import ReadTimeoutError

from webtune.params import at_least, knob, positive
from webtune.sources import (
    HTML,
    MARKDOWN,
    TEXT,
    EmptySourceError,
    ScrapeParams,
    SourceError,
    failed_row,
    raw_row,
)


@dataclasses.dataclass(frozen=True)
class HttpParams:
    urls: tuple[str, ...] = knob()
    timeout_s: float = knob(positive)
    retries: int = knob(at_least(0))
    backoff_s: float = knob(at_least(0))
    user_agent: str = knob()


PARAMS = HttpParams  # this variant's section (webtune.registry; webtune.params builds it)

SOURCE = "http"

# Media types we keep, mapped to the pipeline's content_type; anything else is non_text_content_type.
MEDIA_TYPES = {
    "text/html": HTML,
    "application/xhtml+xml": HTML,
    "text/markdown": MARKDOWN,
    "text/x-markdown": MARKDOWN,
    "text/plain": TEXT,
}
CHUNK_BYTES = 64 * 1024  # read granularity: a too_large page is abandoned at most one chunk past the cap
MAX_RETRY_AFTER_S = 60.0  # a Retry-After longer than this is waited on for this long, not longer
RETRY_AFTER_STATUSES = (429, 503)  # the statuses whose Retry-After we honour


@dataclass(frozen=True)
class Outcome:
    """What one attempt at one URL came to: a body, or a failure reason."""

    raw: bytes | None = None  # the body when the fetch succeeded
    content_type: str = TEXT
    reason: str | None = None  # stable failure reason; None on success
    n_bytes: int = 0  # body size, or for too_large the bytes seen / declared
    retryable: bool = False
    retry_after_s: float | None = None  # from a Retry-After header on 429/503
    detail: str = ""  # for the progress line only ("HTTP 404", "image/png")


def fetch(
    params: ScrapeParams,
    *,
    sources_dir: Path,
    now: Callable[[], str],
    sleep: Callable[[float], None] = time.sleep,
) -> Iterator[dict]:
    """Yield one RAW_DOCS row per URL of `params.http.urls`, in order; `sleep` is injectable for tests.

    The URL list is checked before anything is fetched, so a typo fails the stage at once (SourceError
    naming the URL and its index) instead of after an hour of fetching.
    """
    del sources_dir  # the URLs live in params; nothing is read from data/sources/
    check_http_params(params.http)
    return _fetch_all(params, now=now, sleep=sleep)


def check_http_params(http: HttpParams) -> None:
    """Raise SourceError for a URL list that cannot be fetched as written, ValueError for bad knobs."""
    if http.retries < 0:
        raise ValueError(f"scrape.http.retries: must be >= 0, got {http.retries}")
    if not http.timeout_s > 0:
        raise ValueError(f"scrape.http.timeout_s: must be > 0, got {http.timeout_s}")
    if not http.urls:
        raise EmptySourceError("scrape.http.urls is empty: list the pages to fetch in params.yaml")
    seen: dict[str, int] = {}
    for i, url in enumerate(http.urls):
        problem = url_problem(url)
        if problem:
            raise SourceError(f"scrape.http.urls[{i}]: {url!r} {problem}")
        if url in seen:
            # doc_id is a hash of the URL: a repeated URL would give two rows with one id.
            raise SourceError(f"scrape.http.urls[{i}]: {url!r} repeats scrape.http.urls[{seen[url]}]")
        seen[url] = i


def url_problem(url: str) -> str | None:
    """Why `url` is not a fetchable http(s) URL, or None if it is."""
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 -- raises ValueError for a non-numeric or out-of-range port
    except ValueError as e:
        return f"is not a valid URL ({e})"
    if parts.scheme not in ("http", "https"):
        return "is not an http or https URL"
    if not parts.hostname:
        return "has no host"
    if any(c.isspace() for c in url):
        return "contains whitespace"
    return None


def _fetch_all(params: ScrapeParams, *, now: Callable[[], str],
               sleep: Callable[[float], None]) -> Iterator[dict]:
    urls = params.http.urls
    with requests.Session() as session:  # one Session: connections to one host are reused
        session.headers["User-Agent"] = params.http.user_agent
        for i, url in enumerate(urls, 1):
            outcome, attempts = fetch_url(session, url, http=params.http, max_doc_bytes=params.max_doc_bytes,
                                          sleep=sleep)
            print(f"[{i}/{len(urls)}] {url} -> {progress(outcome, attempts)}", file=sys.stderr, flush=True)
            yield to_row(url, outcome, fetched_at=now(), attempts=attempts)


def fetch_url(
    session: requests.Session,
    url: str,
    *,
    http: HttpParams,
    max_doc_bytes: int,
    sleep: Callable[[float], None],
) -> tuple[Outcome, int]:
    """Fetch one URL with retries; return the last attempt's outcome and the number of attempts."""
    attempt = 0
    while True:
        outcome = _attempt(session, url, timeout_s=http.timeout_s, max_doc_bytes=max_doc_bytes)
        if not outcome.retryable or attempt == http.retries:
            return outcome, attempt + 1
        sleep(retry_delay(attempt, backoff_s=http.backoff_s, retry_after_s=outcome.retry_after_s))
        attempt += 1


def retry_delay(k: int, *, backoff_s: float, retry_after_s: float | None) -> float:
    """Seconds to wait before retry k (0-based): backoff_s * 2**k, or the server's capped Retry-After if
    longer."""
    delay = backoff_s * 2**k  # 1 s, 2 s, 4 s with the default backoff_s
    if retry_after_s is not None:
        delay = max(delay, min(retry_after_s, MAX_RETRY_AFTER_S))
    return delay


def _attempt(session: requests.Session, url: str, *, timeout_s: float, max_doc_bytes: int) -> Outcome:
    try:
        # stream=True: only the headers are read here; the body is read by _read, chunk by chunk.
        # Leaving the `with` closes the connection, so an abandoned body is never drained.
        with session.get(url, timeout=timeout_s, stream=True) as response:
            return _read(response, max_doc_bytes=max_doc_bytes)
    except requests.Timeout:  # ConnectTimeout is also a ConnectionError: this branch must come first
        return Outcome(reason="fetch_timeout", retryable=True)
    except requests.ConnectionError as e:
        # requests reports a read timeout in the middle of a streamed body as a ConnectionError.
        if e.args and isinstance(e.args[0], ReadTimeoutError):
            return Outcome(reason="fetch_timeout", retryable=True)
        return Outcome(reason="connection_error", retryable=True, detail=type(e).__name__)
    except requests.exceptions.ChunkedEncodingError as e:
        # The body stopped short of its Content-Length or final chunk: the connection broke mid-body.
        return Outcome(reason="connection_error", retryable=True, detail=type(e).__name__)
    except requests.RequestException as e:
        # Redirect loop, undecodable Content-Encoding, bad redirect target: sending the same request
        # again would fail the same way, so this is final.
        return Outcome(reason="http_error", detail=type(e).__name__)


def _read(response: requests.Response, *, max_doc_bytes: int) -> Outcome:
    status = response.status_code
    if not 200 <= status < 300:
        retry_after = None
        if status in RETRY_AFTER_STATUSES:
            retry_after = parse_retry_after(response.headers.get("Retry-After"))
        return Outcome(
            reason="http_error",
            retryable=status == 429 or status >= 500,
            retry_after_s=retry_after,
            detail=f"HTTP {status}",
        )
    header = response.headers.get("Content-Type", "")
    content_type = MEDIA_TYPES.get(media_type(header))
    declared = content_length(response.headers.get("Content-Length"))
    if content_type is None:
        return Outcome(reason="non_text_content_type", n_bytes=declared or 0,
                       detail=header or "no Content-Type")
    # Content-Length counts encoded bytes; a compressed body is smaller than its decoded text, so a
    # declared length over the cap means the decoded body is over it too.
    if declared is not None and declared > max_doc_bytes:
        return Outcome(reason="too_large", content_type=content_type, n_bytes=declared,
                       detail="Content-Length")
    chunks: list[bytes] = []
    n_bytes = 0
    for chunk in response.iter_content(CHUNK_BYTES):  # decoded (gunzipped) bytes
        n_bytes += len(chunk)
        if n_bytes > max_doc_bytes:
            return Outcome(reason="too_large", content_type=content_type, n_bytes=n_bytes, detail="read")
        chunks.append(chunk)
    return Outcome(raw=b"".join(chunks), content_type=content_type, n_bytes=n_bytes)


def media_type(content_type_header: str) -> str:
    """'Text/HTML; charset=UTF-8' -> 'text/html'."""
    return content_type_header.split(";", 1)[0].strip().lower()


def content_length(value: str | None) -> int | None:
    """The declared body size, or None when absent or not a plain non-negative integer."""
    if value is None or not value.strip().isdigit():
        return None
    return int(value)


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a numeric Retry-After; None when absent, an HTTP-date, negative or not finite."""
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None  # an HTTP-date: rare, and the exponential backoff covers it
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def title_for(url: str) -> str:
    """The URL's last path segment, else its host (clean extracts a better title from the page)."""
    parts = urllib.parse.urlsplit(url)
    last = urllib.parse.unquote(parts.path.rstrip("/").rsplit("/", 1)[-1])
    return last or parts.hostname or url


def to_row(url: str, outcome: Outcome, *, fetched_at: str, attempts: int = 1) -> dict:
    if outcome.reason is not None:
        return failed_row(
            source=SOURCE,
            url=url,
            reason=outcome.reason,
            fetched_at=fetched_at,
            n_bytes=outcome.n_bytes,
            content_type=outcome.content_type,
            detail=progress(outcome, attempts),
        )
    assert outcome.raw is not None, f"{url}: an outcome without a reason must carry a body"
    return raw_row(
        source=SOURCE,
        url=url,
        raw=outcome.raw,
        content_type=outcome.content_type,
        title=title_for(url),
        fetched_at=fetched_at,
    )


def progress(outcome: Outcome, attempts: int) -> str:
    """'ok 12.3 kB' or 'too_large (5,000,001 bytes, 1 attempt)' for the per-URL progress line."""
    tries = f"{attempts} attempt{'s' if attempts != 1 else ''}"
    if outcome.reason is None:
        return f"ok {outcome.n_bytes / 1000:.1f} kB" + (f" ({tries})" if attempts > 1 else "")
    details = [outcome.detail] if outcome.detail else []
    if outcome.reason == "too_large":
        details.append(f"{outcome.n_bytes:,} bytes")
    return f"{outcome.reason} ({', '.join([*details, tries])})"
