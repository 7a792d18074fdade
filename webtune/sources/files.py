"""Local files: JSON, JSONL, CSV, HTML, Markdown and text under the sources folder.

- .html/.htm, .md/.markdown, .txt: one document per file.
- .json: an array of objects (one record each, e.g. a Bright Data Amazon snapshot), or one object.
- .jsonl: one object per line. .csv: one record per row (header = field names).
An object with a `text`, `markdown` or `html` field is a document; any other object is a structured
record (content_type application/x-record+json) that task `product_copy` turns into prompts. An object
with a non-empty `error` or `error_code` (a saved Bright Data snapshot collected with include_errors=true:
`{"error": "Page does not exist", "error_code": "dead_page", "input": {"url": ...}}`) is a failed row
whose reason is its error code, `record_error` when it has no snake_case one.
Malformed JSON/CSV raises SourceError naming the file and line. A file over `max_doc_bytes` is
recorded as too_large from its size alone, never read.
"""

import csv
import dataclasses
import io
import json
from collections.abc import Callable, Iterator
from pathlib import Path

from webtune.params import knob
from webtune.sources import HTML, MARKDOWN, TEXT, ScrapeParams, SourceError, failed_row, raw_row, record_row


@dataclasses.dataclass(frozen=True)
class FilesParams:
    patterns: tuple[str, ...] = knob()


PARAMS = FilesParams  # this variant's section (webtune.registry; webtune.params builds it)

SOURCE = "files"
DOCUMENT_SUFFIXES = {".html": HTML, ".htm": HTML, ".md": MARKDOWN, ".markdown": MARKDOWN, ".txt": TEXT}
RECORD_SUFFIXES = {".json", ".jsonl", ".csv"}


def fetch(params: ScrapeParams, *, sources_dir: Path, now: Callable[[], str]) -> Iterator[dict]:
    for path in list_files(Path(sources_dir), params.files.patterns):
        size = path.stat().st_size
        if size > params.max_doc_bytes:
            yield failed_row(source=SOURCE, url=str(path), reason="too_large", fetched_at=now(), n_bytes=size,
                             detail=f"{size:,} bytes > scrape.max_doc_bytes={params.max_doc_bytes:,}")
            continue
        suffix = path.suffix.lower()
        raw = path.read_bytes()
        if suffix in DOCUMENT_SUFFIXES:
            yield raw_row(
                source=SOURCE,
                url=str(path),
                raw=raw,
                content_type=DOCUMENT_SUFFIXES[suffix],
                title=path.stem,
                fetched_at=now(),
            )
        else:
            for i, obj in enumerate(read_objects(path, raw)):
                yield object_row(obj, path=path, index=i, fetched_at=now())


def list_files(sources_dir: Path, patterns: tuple[str, ...]) -> list[Path]:
    """Matching files in a stable order. The folder's own README (it documents the folder) is skipped."""
    if not sources_dir.is_dir():
        raise SourceError(f"files source: folder {sources_dir} does not exist")
    found = {p for pattern in patterns for p in sources_dir.glob(pattern) if p.is_file()}
    found.discard(sources_dir / "README.md")
    unsupported = sorted(p for p in found
                         if p.suffix.lower() not in DOCUMENT_SUFFIXES.keys() | RECORD_SUFFIXES)
    if unsupported:
        raise SourceError(f"files source: unsupported file type {unsupported[0]} (supported: "
                          f"{', '.join(sorted(DOCUMENT_SUFFIXES.keys() | RECORD_SUFFIXES))})")
    return sorted(found)


def read_objects(path: Path, raw: bytes) -> list[dict]:
    """Parse a .json/.jsonl/.csv file into objects; errors name the file and line."""
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise SourceError(f"{path}:{line}: not valid UTF-8 ({e.reason} at byte {e.start})") from None
    suffix = path.suffix.lower()
    if suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise SourceError(f"{path}:{e.lineno}: malformed JSON: {e.msg} (column {e.colno})") from None
        objects = data if isinstance(data, list) else [data]
        for i, obj in enumerate(objects):
            if not isinstance(obj, dict):
                raise SourceError(f"{path}: item {i} is a {type(obj).__name__}, expected an object")
        return objects
    if suffix == ".jsonl":
        objects = []
        for lineno, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise SourceError(f"{path}:{lineno}: malformed JSON line: {e.msg} "
                                  f"(column {e.colno})") from None
            if not isinstance(obj, dict):
                raise SourceError(f"{path}:{lineno}: expected an object, got {type(obj).__name__}")
            objects.append(obj)
        return objects
    if suffix == ".csv":
        reader = csv.reader(io.StringIO(text, newline=""), strict=True)
        try:
            header = next(reader, None)
            if not header:
                return []
            objects = []
            for row in reader:
                if not row:
                    continue
                if len(row) != len(header):
                    raise SourceError(
                        f"{path}:{reader.line_num}: {len(row)} fields, header has {len(header)}"
                    )
                objects.append(dict(zip(header, row, strict=True)))
        except csv.Error as e:
            raise SourceError(f"{path}:{reader.line_num}: malformed CSV: {e}") from None
        return objects
    raise SourceError(f"{path}: not a record file")


def object_row(obj: dict, *, path: Path, index: int, fetched_at: str) -> dict:
    """One object of a record file; one rule for every source (webtune.sources.record_row)."""
    return record_row(obj, source=SOURCE, fallback_url=f"{path}#{index}", fetched_at=fetched_at)
