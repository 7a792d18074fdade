"""Atomic writes and the byte-decoding policy.

Every output is written to a temporary name in the same folder and renamed into place, so a stage
that fails (or is killed) never leaves a half-written output that a later stage could read.
"""

import contextlib
import errno
import json
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from webtune.errors import InputError


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to `path`; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)  # DVC does not create an output's parent folder
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; outputs get the usual permissions
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_parquet(table: pa.Table, path: str | Path, schema: pa.Schema) -> None:
    """Write `table` (cast to `schema`, so column order and types are the contract's) atomically."""
    table = table.select(schema.names).cast(schema)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")


@contextlib.contextmanager
def parquet_writer(path: str | Path, schema: pa.Schema) -> Iterator[pq.ParquetWriter]:
    """Stream record batches into a Parquet file that appears at `path` only when complete."""
    with atomic_path(path) as tmp, pq.ParquetWriter(tmp, schema, compression="zstd") as writer:
        yield writer


@contextlib.contextmanager
def text_writer(path: str | Path) -> Iterator:
    """A text file (UTF-8) written in pieces that appears at `path` only when complete."""
    with atomic_path(path) as tmp, tmp.open("w", encoding="utf-8") as f:
        yield f


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temp folder next to `path`; it replaces `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    tmp.chmod(0o777 & ~_UMASK)  # mkdtemp makes it 0700; the output folder should be as readable as any other
    try:
        yield tmp
        old = None
        if path.exists():  # os.replace cannot overwrite a non-empty folder: move the old one aside first
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
            os.replace(path, old / path.name)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def parquet_file(path: str | Path, columns: list[str], written_by: str) -> pq.ParquetFile:
    """Open a Parquet input for streaming; InputError naming the file if it lacks `columns`."""
    try:
        parquet = pq.ParquetFile(path)
    except FileNotFoundError:  # pyarrow's has no .filename, which errors.reported names
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), str(path)) from None
    except pa.ArrowInvalid as e:
        raise InputError(f"{path}: not a Parquet file ({str(e).splitlines()[0]})") from None
    missing = [n for n in columns if n not in parquet.schema_arrow.names]
    if missing:
        raise InputError(f"{path}: missing columns {', '.join(missing)} (was it written by {written_by}?)")
    return parquet


def read_chat_rows(path: str | Path) -> tuple[list[str], list[list[dict]]]:
    """(pair ids, messages) of a chat-rows split (schema.CHAT_ROWS): what train and evaluate consume."""
    table = parquet_file(path, ["pair_id", "messages"],
                         "the format stage").read(columns=["pair_id", "messages"])
    return table.column("pair_id").to_pylist(), table.column("messages").to_pylist()


def stderr(line: str) -> None:
    """The default progress callback of long stages: one flushed line, readable in dvc's output."""
    print(line, file=sys.stderr, flush=True)


def write_json(obj, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def write_text(text: str, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def decode_bytes(raw: bytes) -> tuple[str, int]:
    """Decode scraped bytes with one stated policy; return (text, number of bad chars).

    Policy: UTF-8 (a BOM is dropped); bytes that are not valid UTF-8 become U+FFFD; NUL and other
    C0 control characters except tab/newline/carriage return are removed. Every replaced or removed
    char is counted so clean can drop documents that are mostly garbage (clean.max_bad_char_ratio)
    instead of training on mojibake.
    """
    text = raw.decode("utf-8-sig", errors="replace")
    n_bad = text.count("\ufffd")
    cleaned = _C0_CONTROLS.sub("", text)
    n_bad += len(text) - len(cleaned)
    return cleaned, n_bad


# The process umask, read once (os.umask can only be read by setting it): atomic_path applies it.
_UMASK = os.umask(0)
os.umask(_UMASK)

# C0 controls except \t \n \r, and DEL. A regex, not str.translate: ~10x faster (scrape decodes every page).
_C0_CONTROLS = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
