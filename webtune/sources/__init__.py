"""Sources: where raw documents come from. Adding a source is adding one module here, one line in
SOURCES, and its section under `scrape:` in params.yaml (the scrape stage lists only the selected one).

A source module exposes

    def fetch(params: ScrapeParams, *, sources_dir: Path, now: Callable[[], str]) -> Iterator[dict]

yielding rows of `schema.RAW_DOCS`, built with `raw_row` / `failed_row`. A document that cannot be
fetched is yielded as a failed row with a stable reason (`too_large`, `http_error`, ...): clean drops it
with that reason, so no failure disappears silently. A source that yields nothing is an error
(`EmptySourceError`), not an empty dataset.

`fetched_at` is when a document's content was first fetched: the scrape stage keeps the previous
run's time for a document whose bytes did not change, so re-scraping identical content changes no
output and re-runs nothing downstream.
"""

import datetime as dt
import hashlib
import importlib
from collections.abc import Callable, Iterator

from webtune.errors import UserError
from webtune.io import decode_bytes
from webtune.schema import doc_id

Fetch = Callable[..., Iterator[dict]]

# Source name (scrape.source) -> module.
SOURCES = {"pydoc": "webtune.sources.pydoc", "files": "webtune.sources.files", "http": "webtune.sources.http"}

# content_type values the pipeline understands.
HTML, MARKDOWN, TEXT, RECORD = "text/html", "text/markdown", "text/plain", "application/x-record+json"
CONTENT_TYPES = (HTML, MARKDOWN, TEXT, RECORD)


class EmptySourceError(UserError):
    """The source produced no documents at all."""


class SourceError(UserError, ValueError):
    """Bad source input (malformed file, bad URL list): the message names the file/line or URL."""


def utc_now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def get_fetch(name: str) -> Fetch:
    """The `fetch` function of source `name` (one of SOURCES)."""
    if name not in SOURCES:
        raise SourceError(f"scrape.source: unknown source {name!r} (known: {', '.join(SOURCES)})")
    return importlib.import_module(SOURCES[name]).fetch


def raw_row(
    *,
    source: str,
    url: str,
    raw: bytes,
    content_type: str,
    title: str,
    fetched_at: str,
    record: str | None = None,
) -> dict:
    """A RAW_DOCS row for fetched bytes, decoded with io.decode_bytes's policy."""
    assert content_type in CONTENT_TYPES, f"unknown content_type {content_type!r}"
    body, n_bad = decode_bytes(raw)
    return {
        "doc_id": doc_id(source, url),
        "source": source,
        "url": url,
        "fetched_at": fetched_at,
        "content_sha256": hashlib.sha256(raw).hexdigest(),
        "content_type": content_type,
        "title": title,
        "body": body,
        "record": record,
        "n_bytes": len(raw),
        "n_bad_chars": n_bad,
        "fetch_error": None,
        "fetch_detail": None,
    }


def failed_row(
    *, source: str, url: str, reason: str, fetched_at: str, n_bytes: int = 0, content_type: str = TEXT,
    detail: str = "",
) -> dict:
    """A RAW_DOCS row for a document that could not be fetched.

    `reason` is a stable snake_case string (what metrics count); `detail` says what exactly happened.
    """
    return {
        "doc_id": doc_id(source, url),
        "source": source,
        "url": url,
        "fetched_at": fetched_at,
        "content_sha256": hashlib.sha256(b"").hexdigest(),
        "content_type": content_type,
        "title": "",
        "body": "",
        "record": None,
        "n_bytes": n_bytes,
        "n_bad_chars": 0,
        "fetch_error": reason,
        "fetch_detail": detail or reason,
    }
