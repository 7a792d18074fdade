"""Bright Data Web Unlocker source: a URL list -> one markdown page per URL.

Selected with `scrape.source: brightdata_unlocker`; its knobs are `scrape.brightdata_unlocker`, the
token is BRIGHTDATA_API_TOKEN (environment or `.env`, webtune.secrets). Each URL is one
POST {api_url}/request {"zone", "url", "format": "raw", "data_format": "markdown"}.

Why the REST endpoint and not brightdata-sdk 2.5.2's `scrape_url`: the SDK cannot ask for markdown (its
/request payload has no `data_format`), counts a reply as fetched when the outer status is 200 (a blocked
page came back as success with an empty body), and has no retries, no 429 handling and a default rate
(10 requests/s) above a trial account's limit (REFERENCE-APIS section 6). Everything here is what the
SDK would have to be wrapped in anyway.

A page counts as fetched only if the reply is 200, carries no `x-brd-error*` header, its
`x-brd-status-code` (the target's status) is absent or 2xx, and the body is not empty. Anything else is
a failed row with a stable reason, the headers' text in its detail:

    blocked           the unlocker reported an error (x-brd-error / x-brd-error-code) on a 2xx target
    target_<status>   the target answered non-2xx (target_404, target_500, ...)
    empty_body        everything said 200 and the body was empty
    timeout           no complete reply within timeout_s (the per-request deadline), after the retries
    connection_error  refused, reset or broken connection, after the retries
    unlocker_error    Bright Data answered 5xx, after the retries
    request_refused   Bright Data answered 4xx for this URL (e.g. 400 for a URL it will not fetch)
    rate_limited      still 429 after five backoffs (2/4/8/16/32 s, or the server's Retry-After)
    too_large         the body passed scrape.max_doc_bytes

One failing URL never stops the run. Two things do, with one line and everything fetched so far kept
in the ledger: Bright Data refusing the token (401/403: every URL would fail), and the 429 fuse (too
many 429s within 5 minutes, before Bright Data blocks the IP at 25).

Requests run on `concurrency` threads (webtune.sources.pool) behind one shared, evenly spaced limit
(`requests_per_period` per `period_s`); retries and the 429 policy are the shared client's
(webtune.sources.brightdata_client). Finished pages go to the ledger as they arrive, so a killed run
resumes with only the missing URLs; rows are yielded in URL-list order once all are done.
"""

import dataclasses
import time
from collections.abc import Callable, Iterator, Mapping
from functools import partial
from typing import Unpack

import requests

from webtune.params import api_url, at_least, between, knob, positive
from webtune.sources import MARKDOWN, EmptySourceError, ScrapeParams, SourceError, failed_row, raw_row
from webtune.sources.brightdata_client import (
    TOKEN_ENV,
    AuthRefusedError,
    BrightDataClient,
    Hooks,
    Verdict,
    one_line,
)
from webtune.sources.http import parse_retry_after, title_for, url_problem
from webtune.sources.ledger import Fetch, Ledger, normalise_url
from webtune.sources.pool import Pool, Tally


def zone_name(v) -> str | None:
    """Bright Data zone names are ASCII letters, digits, '_' and '-'."""
    ok = bool(v) and v.isascii() and all(c.isalnum() or c in "_-" for c in v)
    return None if ok else f"{v!r} is not a zone name (letters, digits, _ and - only)"


@dataclasses.dataclass(frozen=True)
class UnlockerParams:
    urls: tuple[str, ...] = knob()
    zone: str = knob(zone_name)
    country: str = knob()
    api_url: str = knob(api_url)
    requests_per_period: int = knob(at_least(1))
    period_s: float = knob(positive)
    concurrency: int = knob(between(1, 30))
    timeout_s: float = knob(positive)
    retries: int = knob(at_least(0))
    backoff_s: float = knob(at_least(0))
    stop_at_429s: int = knob(between(1, 24))
    retry_failed: bool = knob()
    refresh: int = knob(at_least(0))


PARAMS = UnlockerParams  # this variant's section (webtune.registry; webtune.params builds it)

SOURCE = "brightdata_unlocker"
CHUNK_BYTES = 64 * 1024
CONNECT_TIMEOUT_S = 10.0  # reaching api.brightdata.com; the rest of the deadline is the unlock itself
ERROR_HEADERS = ("x-brd-error", "x-brd-error-code", "x-brd-err-code", "x-brd-err-msg")


def fetch(params: ScrapeParams, *, sources_dir, now: Callable[[], str], ledger: Ledger, token: str,
          **hooks: Unpack[Hooks]) -> Iterator[dict]:
    """Yield one RAW_DOCS row per URL of `scrape.brightdata_unlocker.urls`, in list order.

    URLs the ledger already holds (at this `refresh` generation) are not requested again; failed ones
    are retried when `retry_failed` is on. The URL list is checked before any request. `hooks`: fake
    time for tests, the stage's progress (brightdata_client.Hooks).
    """
    del sources_dir
    knobs = params.brightdata_unlocker
    keys = check_urls(knobs.urls)
    client = BrightDataClient(token, knobs, rate=(knobs.requests_per_period, knobs.period_s), **hooks)
    return _fetch_all(knobs, keys, client, max_doc_bytes=params.max_doc_bytes, now=now, ledger=ledger)


def check_urls(urls: tuple[str, ...]) -> dict[str, str]:
    """URL -> ledger key; SourceError for a URL that cannot be fetched or repeats another."""
    if not urls:
        raise EmptySourceError(f"scrape.{SOURCE}.urls is empty: list the pages to fetch in params.yaml")
    keys, seen = {}, {}
    for i, url in enumerate(urls):
        problem = url_problem(url)
        if problem:
            raise SourceError(f"scrape.{SOURCE}.urls[{i}]: {url!r} {problem}")
        key = normalise_url(url)
        if key in seen:
            raise SourceError(
                f"scrape.{SOURCE}.urls[{i}]: {url!r} is the same page as scrape.{SOURCE}.urls[{seen[key]}]"
            )
        seen[key] = i
        keys[url] = key
    return keys


def _fetch_all(
    knobs: UnlockerParams,
    keys: dict[str, str],
    client: BrightDataClient,
    *,
    max_doc_bytes: int,
    now: Callable[[], str],
    ledger: Ledger,
) -> Iterator[dict]:
    pages = ledger.scope(SOURCE, generation=knobs.refresh)

    def reusable(key: str) -> bool:
        done = pages.fetched(key)
        return done is not None and (done.ok or not knobs.retry_failed)

    def commit(url: str, result: Fetch) -> bool:  # on this thread (pool.py says why)
        pages.record_fetch(keys[url], result)
        ledger.counts["requested"] += 1  # pages asked of Bright Data this run, whatever came back
        ledger.counts["fetched"] += result.ok
        return result.ok

    todo = [url for url, key in keys.items() if not reusable(key)]
    ledger.counts["cached"] += len(keys) - len(todo)
    if todo:
        with client:
            work = partial(fetch_page, client, knobs=knobs, max_doc_bytes=max_doc_bytes, now=now)
            tally = Tally(len(todo), desc=f"scrape {SOURCE}", unit="page", progress=client.progress,
                          line="scrape: {done}/{total} pages requested, {failed} failed")
            Pool(work, commit, workers=knobs.concurrency, stop=client.stop, tally=tally).run(todo)
    for url, key in keys.items():
        yield to_row(url, pages.fetched(key))


def fetch_page(
    client: BrightDataClient,
    url: str,
    *,
    knobs: UnlockerParams,
    max_doc_bytes: int,
    now: Callable[[], str],
) -> Fetch:
    """One URL through the unlocker, retried by `client`; the Fetch the ledger keeps.

    5xx, timeouts and connection errors are retried `retries` times (backoff_s * 2**k); 429s follow the
    fuse's delays and pause every worker. Raises AuthRefusedError, RateLimitedError, or StopRequested
    once another worker has stopped the run.
    """
    result = client.call(partial(attempt, url=url, knobs=knobs, max_doc_bytes=max_doc_bytes), what=url)
    verdict, ok = result.verdict, result.verdict.kind == "ok"
    detail = client.redact(verdict.detail)
    if verdict.kind == "auth":
        raise AuthRefusedError(
            f"Bright Data refused the request for {url} ({detail}): check "
            f"{TOKEN_ENV} and that zone {knobs.zone!r} belongs to that account"
        )
    return Fetch(
        ok=ok,
        attempts=result.attempts,
        reason=verdict.reason,  # None when ok
        detail=detail,
        content_type=MARKDOWN,
        body=result.value if ok else b"",
        fetched_at=now(),
    )


def attempt(
    session: requests.Session, url: str, *, knobs: UnlockerParams, max_doc_bytes: int
) -> tuple[Verdict, bytes]:
    """One POST /request; (verdict, body). The whole reply must arrive within timeout_s."""
    payload = {"zone": knobs.zone, "url": url, "format": "raw", "data_format": "markdown"}
    if knobs.country:
        payload["country"] = knobs.country
    deadline = time.monotonic() + knobs.timeout_s
    try:
        with session.post(
            f"{knobs.api_url.rstrip('/')}/request",
            json=payload,
            stream=True,
            timeout=(min(CONNECT_TIMEOUT_S, knobs.timeout_s), knobs.timeout_s),
        ) as response:
            chunks, n_bytes = [], 0
            for chunk in response.iter_content(CHUNK_BYTES):
                n_bytes += len(chunk)
                if n_bytes > max_doc_bytes:
                    return Verdict("failed", "too_large", f"more than {max_doc_bytes:,} bytes"), b""
                if time.monotonic() > deadline:
                    return Verdict("retry", "timeout", f"no complete reply within {knobs.timeout_s:g} s"), b""
                chunks.append(chunk)
            body = b"".join(chunks)
            return classify(response.status_code, response.headers, body), body
    except requests.Timeout:
        return Verdict("retry", "timeout", f"no reply within {knobs.timeout_s:g} s"), b""
    except (requests.ConnectionError, requests.exceptions.ChunkedEncodingError) as e:
        return Verdict("retry", "connection_error", type(e).__name__), b""


def classify(status: int, headers: Mapping[str, str], body: bytes) -> Verdict:
    """The verdict on one unlocker reply (headers: a case-insensitive mapping, as requests gives).

    How a 429 arrives is not documented (a real 429, or 200 with x-brd-status-code 429): both count.
    """
    brd = "; ".join(f"{h}: {headers[h]}" for h in ("x-brd-status-code", *ERROR_HEADERS) if h in headers)
    if status == 429 or headers.get("x-brd-status-code", "").strip() == "429":
        return Verdict(
            "rate_limited",
            "rate_limited",
            f"HTTP {status}; {brd}".rstrip("; "),
            parse_retry_after(headers.get("Retry-After")),
        )
    if status in (401, 403):
        return Verdict("auth", "auth", f"HTTP {status}: {one_line(body)}")
    if status >= 500:
        return Verdict("retry", "unlocker_error", f"HTTP {status}: {one_line(body)}")
    if status != 200:
        return Verdict("failed", "request_refused", f"HTTP {status}: {one_line(body)}")
    target = headers.get("x-brd-status-code", "").strip()
    target_ok = not target or (target.isdigit() and 200 <= int(target) < 300)
    if not target_ok:
        return Verdict("failed", f"target_{target}" if target.isdigit() else "blocked", brd)
    if any(h in headers for h in ERROR_HEADERS):
        return Verdict("failed", "blocked", brd)
    if not body.strip():
        return Verdict("failed", "empty_body", brd or "HTTP 200 with an empty body")
    return Verdict("ok")


def to_row(url: str, done: Fetch | None) -> dict:
    assert done is not None, f"{url}: every URL has a ledger entry once the pool is done"
    if not done.ok:
        return failed_row(
            source=SOURCE,
            url=url,
            reason=done.reason or "failed",
            fetched_at=done.fetched_at,
            content_type=MARKDOWN,
            detail=f"{done.detail} ({done.attempts} attempt{'s' if done.attempts != 1 else ''})",
        )
    return raw_row(
        source=SOURCE,
        url=url,
        raw=done.body,
        content_type=MARKDOWN,
        title=title_for(url),
        fetched_at=done.fetched_at,
    )
