"""The scrape ledger: what a paid source already fetched or triggered, so a re-run never pays twice.

    ledger = Ledger.open(path)               # created on first use; `Ledger.open(":memory:")` in tests
    done = ledger.fetched("brightdata_unlocker", key, generation=0)
    ledger.record_fetch("brightdata_unlocker", key, generation=0, fetch=Fetch(...))
    pages = ledger.scope("brightdata_unlocker", generation=0)  # the same, for one source's run
    pages.record_fetch(key, Fetch(...))

One SQLite file. Every `record_*`/`save_*` call is one committed transaction (synchronous=FULL), so a
run killed at any point leaves exactly the pages, snapshot ids and snapshot parts that had finished,
never a torn row, and the next run picks up from there. SQLite is the right tool here: it commits
atomically and durably without us writing a journal, and it keeps the page bodies (what was paid for)
next to their status.

The ledger lives outside DVC's outputs (its path is passed by dvc.yaml; it is git-ignored): it is a
resume cache of what a provider was paid for, not a dataset. The dataset is the raw table the scrape
stage writes from it, which DVC versions. Keys are per source:
- a page: its normalised URL (`normalise_url`);
- a snapshot: a hash of everything that defines the collection (dataset id, discovery mode, inputs).
`generation` is the source's `refresh` knob: bumping it makes every earlier entry stale on purpose, and
a killed refresh run still resumes what that refresh already fetched.

Secrets never reach the ledger: it stores URLs, statuses, bodies and ids, never request headers.
"""

import collections
import sqlite3
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS fetches (
    source TEXT NOT NULL, key TEXT NOT NULL, generation INTEGER NOT NULL,
    ok INTEGER NOT NULL,              -- 1: the page counts as fetched; 0: a failed row with `reason`
    attempts INTEGER NOT NULL, reason TEXT, detail TEXT NOT NULL,
    content_type TEXT NOT NULL, body BLOB NOT NULL, fetched_at TEXT NOT NULL,
    PRIMARY KEY (source, key, generation));
CREATE TABLE IF NOT EXISTS snapshots (
    source TEXT NOT NULL, key TEXT NOT NULL, generation INTEGER NOT NULL,
    snapshot_id TEXT NOT NULL, dataset_id TEXT NOT NULL, triggered_at TEXT NOT NULL,
    status TEXT NOT NULL,             -- the last status polled: running, ready, failed, downloaded, ...
    PRIMARY KEY (source, key, generation));
CREATE TABLE IF NOT EXISTS snapshot_parts (
    snapshot_id TEXT NOT NULL, part INTEGER NOT NULL, body BLOB NOT NULL,
    PRIMARY KEY (snapshot_id, part));
"""


@dataclass(frozen=True)
class Fetch:
    """One URL's outcome as the ledger keeps it."""

    ok: bool
    attempts: int
    reason: str | None  # stable failure reason (None when ok)
    detail: str  # what exactly happened (the x-brd-* headers, "HTTP 502", ...)
    content_type: str
    body: bytes
    fetched_at: str


@dataclass(frozen=True)
class Snapshot:
    snapshot_id: str
    dataset_id: str
    triggered_at: str
    status: str


class Ledger:
    def __init__(self, connection: sqlite3.Connection):
        self.db = connection
        # What the sources did this run ("fetched", "cached", "triggered", "resumed", ...): the scrape
        # stage's metrics report them.
        self.counts: collections.Counter[str] = collections.Counter()

    @classmethod
    def open(cls, path: str | Path) -> "Ledger":
        if str(path) != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(str(path))
        db.execute("PRAGMA journal_mode=WAL")  # readers never block the writer; commits stay atomic
        db.execute("PRAGMA synchronous=FULL")  # a commit is on disk before the call returns
        db.executescript(SCHEMA)
        return cls(db)

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> "Ledger":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def scope(self, source: str, *, generation: int) -> "Scope":
        """The entries of `source` at `generation` (its `refresh`), keyed by `key` alone."""
        return Scope(self, source, generation)

    def fetched(self, source: str, key: str, *, generation: int) -> Fetch | None:
        row = self.db.execute(
            "SELECT ok, attempts, reason, detail, content_type, body, fetched_at FROM fetches "
            "WHERE source = ? AND key = ? AND generation = ?",
            (source, key, generation),
        ).fetchone()
        return None if row is None else Fetch(bool(row[0]), *row[1:])

    def record_fetch(self, source: str, key: str, *, generation: int, fetch: Fetch) -> None:
        with self.db:  # one transaction: committed on exit, rolled back on an exception
            self.db.execute(
                "INSERT OR REPLACE INTO fetches VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    source,
                    key,
                    generation,
                    int(fetch.ok),
                    fetch.attempts,
                    fetch.reason,
                    fetch.detail,
                    fetch.content_type,
                    fetch.body,
                    fetch.fetched_at,
                ),
            )

    def snapshot(self, source: str, key: str, *, generation: int) -> Snapshot | None:
        row = self.db.execute(
            "SELECT snapshot_id, dataset_id, triggered_at, status FROM snapshots "
            "WHERE source = ? AND key = ? AND generation = ?",
            (source, key, generation),
        ).fetchone()
        return None if row is None else Snapshot(*row)

    def save_snapshot(self, source: str, key: str, *, generation: int, snapshot: Snapshot) -> None:
        with self.db:
            self.db.execute(
                "INSERT OR REPLACE INTO snapshots VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    source,
                    key,
                    generation,
                    snapshot.snapshot_id,
                    snapshot.dataset_id,
                    snapshot.triggered_at,
                    snapshot.status,
                ),
            )

    def parts(self, snapshot_id: str) -> dict[int, bytes]:
        return dict(
            self.db.execute(
                "SELECT part, body FROM snapshot_parts WHERE snapshot_id = ?", (snapshot_id,)
            ).fetchall()
        )

    def save_part(self, snapshot_id: str, part: int, body: bytes) -> None:
        with self.db:
            self.db.execute(
                "INSERT OR REPLACE INTO snapshot_parts VALUES (?, ?, ?)", (snapshot_id, part, body)
            )

    def forget_parts(self, snapshot_id: str) -> None:
        with self.db:
            self.db.execute("DELETE FROM snapshot_parts WHERE snapshot_id = ?", (snapshot_id,))


@dataclass(frozen=True)
class Scope:
    """The ledger as one paid source sees it during one run: its own entries at its `refresh`."""

    ledger: Ledger
    source: str
    generation: int

    def fetched(self, key: str) -> Fetch | None:
        return self.ledger.fetched(self.source, key, generation=self.generation)

    def record_fetch(self, key: str, fetch: Fetch) -> None:
        self.ledger.record_fetch(self.source, key, generation=self.generation, fetch=fetch)

    def snapshot(self, key: str) -> Snapshot | None:
        return self.ledger.snapshot(self.source, key, generation=self.generation)

    def save_snapshot(self, key: str, snapshot: Snapshot) -> None:
        self.ledger.save_snapshot(self.source, key, generation=self.generation, snapshot=snapshot)


def normalise_url(url: str) -> str:
    """The ledger key of a page: scheme and host lower-cased, the default port and the fragment dropped.

    The path and query are kept as written: on many sites `?id=1&page=2` and `?page=2&id=1` are not the
    same page, and the fragment never reaches the server, so `a#x` and `a#y` cost one fetch.
    """
    parts = urllib.parse.urlsplit(url.strip())
    scheme, host = parts.scheme.lower(), (parts.hostname or "").lower()
    port = parts.port
    netloc = host if port is None or (scheme, port) in (("http", 80), ("https", 443)) else f"{host}:{port}"
    if (
        parts.username or parts.password
    ):  # keep credentials in the URL as given (rare, but they name the page)
        netloc = f"{parts.netloc.rsplit('@', 1)[0]}@{netloc}"
    return urllib.parse.urlunsplit((scheme, netloc, parts.path or "/", parts.query, ""))
