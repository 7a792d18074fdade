"""Sources: where raw documents come from. Adding a source is adding one module here, one line in
webtune.registry.SOURCES, and its section under `scrape:` in params.yaml (the scrape stage lists only the
selected one).

A source module exposes its section's dataclass as `PARAMS` and

    def fetch(params: ScrapeParams, *, sources_dir: Path, now: Callable[[], str]) -> Iterator[dict]

yielding rows of `schema.RAW_DOCS`, built with `raw_row` / `failed_row`. A document that cannot be
fetched is yielded as a failed row with a stable reason (`too_large`, `http_error`, ...): clean drops it
with that reason, so no failure disappears silently. A source that yields nothing is an error
(`EmptySourceError`), not an empty dataset.

A paid source also takes `ledger=`, `token=` and `progress=` (see `token_env`).

`fetched_at` is when a document's content was first fetched: the scrape stage keeps the previous
run's time for a document whose bytes did not change, so re-scraping identical content changes no
output and re-runs nothing downstream.
"""

import dataclasses
import datetime as dt
import hashlib
import importlib
import json
import re
from collections.abc import Callable, Iterator
from types import ModuleType

from webtune.errors import UserError
from webtune.io import decode_bytes
from webtune.params import Sectioned, Variants, at_least, knob, one_of, variant_sections
from webtune.registry import SOURCES
from webtune.schema import doc_id


@dataclasses.dataclass(frozen=True)
class ScrapeParams(Sectioned):
    """scrape: the selected source, the size cap, and each source's own section (its module's PARAMS)."""

    source: str = knob(one_of(*SOURCES))
    max_doc_bytes: int = knob(at_least(1))
    shard_docs: int = knob(at_least(1))
    variants: Variants = variant_sections(SOURCES, selector="source")  # scrape.pydoc, scrape.http, ...


Fetch = Callable[..., Iterator[dict]]


# content_type values the pipeline understands.
HTML, MARKDOWN, TEXT, RECORD = "text/html", "text/markdown", "text/plain", "application/x-record+json"
CONTENT_TYPES = (HTML, MARKDOWN, TEXT, RECORD)


class EmptySourceError(UserError):
    """The source produced no documents at all."""


class SourceError(UserError, ValueError):
    """Bad source input (malformed file, bad URL list): the message names the file/line or URL."""


def utc_now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def get_source(name: str) -> ModuleType:
    """The module of source `name` (one of SOURCES)."""
    if name not in SOURCES:
        raise SourceError(f"scrape.source: unknown source {name!r} (known: {', '.join(SOURCES)})")
    return importlib.import_module(SOURCES[name])


def get_fetch(name: str) -> Fetch:
    """The `fetch` function of source `name` (one of SOURCES)."""
    return get_source(name).fetch


def token_env(name: str) -> str | None:
    """The environment variable holding source `name`'s API token; None for a source that needs none.

    A source that pays per request declares `TOKEN_ENV`; its `fetch` then also takes `ledger=` (what was
    already paid for, webtune.sources.ledger), `token=` and `progress=` (where its progress lines go).
    """
    return getattr(get_source(name), "TOKEN_ENV", None)


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


# Fields that make an object a document rather than a record, and the content type each implies.
DOCUMENT_FIELDS = {"markdown": MARKDOWN, "html": HTML, "text": TEXT}
# An error code that can be a drop reason as it is (lowercased): reasons are what metrics count, so free
# text ("Page does not exist") would make one reason per message.
ERROR_CODE = re.compile(r"[a-z][a-z0-9]*(?:_[a-z0-9]+)*")


def record_row(obj: dict, *, source: str, fallback_url: str, fetched_at: str) -> dict:
    """The RAW_DOCS row of one JSON object: a Bright Data snapshot record, a JSONL line, a CSV row.

    - an object with a non-empty `error` or `error_code` (a Web Scraper API error record, collected with
      include_errors=true: a dead page, a blocked input) is a failed row: its reason is the error code
      (`dead_page`), `record_error` when it has no snake_case one; its detail, the error text;
    - an object with a `markdown`, `html` or `text` string is a document of that type;
    - anything else is a structured record (content_type application/x-record+json), which task
      `product_copy` turns into prompts.
    The URL is the object's `url`, else `fallback_url`; an error object, which keeps only what it was
    asked for, falls back to its input's URL first (`{"input": {"url": ...}}`; a keyword input has none).
    """
    if obj.get("error") or obj.get("error_code"):
        given = obj.get("input")
        input_url = given.get("url") if isinstance(given, dict) else None
        code = str(obj.get("error_code") or "").strip().lower()
        error = obj.get("error") or obj.get("error_code")  # the code says what happened when there is no text
        return failed_row(source=source, url=str(obj.get("url") or input_url or fallback_url),
                          reason=code if ERROR_CODE.fullmatch(code) else "record_error",
                          fetched_at=fetched_at,
                          content_type=RECORD, detail=error if isinstance(error, str)
                          else json.dumps(error, ensure_ascii=False, sort_keys=True))
    url = str(obj.get("url") or fallback_url)
    title = str(obj.get("title") or obj.get("name") or "")
    for field, content_type in DOCUMENT_FIELDS.items():
        if isinstance(obj.get(field), str):
            return raw_row(source=source, url=url, raw=obj[field].encode(), content_type=content_type,
                           title=title, fetched_at=fetched_at)
    record = json.dumps(obj, ensure_ascii=False, sort_keys=True)
    return raw_row(source=source, url=url, raw=record.encode(), content_type=RECORD, title=title,
                   fetched_at=fetched_at, record=record)
