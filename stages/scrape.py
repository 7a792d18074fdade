"""scrape: fetch raw documents from the configured source into a folder of Parquet shards.

    python -m stages.scrape --sources-dir data/sources --out data/raw/docs \
        --ledger .webtune/scrape-ledger.sqlite --metrics metrics/scrape.json

The raw table (shards of scrape.shard_docs documents, in fetch order) is written once and is all later
stages read: re-running clean or anything after it
never re-scrapes. Documents that could not be fetched are rows with `fetch_error` set, so clean
drops them with a reason and the metrics count them; a source that yields nothing at all fails.

The output is a DVC `persist` output: the previous table is still there when the stage runs, and a
document whose bytes are unchanged keeps its previous `fetched_at` (when that content was first seen).
So re-scraping identical content writes an identical table and re-runs nothing downstream.

A paid source (Bright Data) needs its token (environment or `.env`: checked before any work) and keeps
what it fetched or triggered in the ledger (`--ledger`, webtune.sources.ledger) as it goes, so a killed
or failed scrape re-run requests only what is missing and never pays twice. The metrics say how many
documents came from the provider this run and how many from the ledger.
"""

import argparse
import collections
import contextlib
import time
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa

from webtune import errors, io, schema, secrets, shards
from webtune.params import load_section
from webtune.sources import EmptySourceError, ScrapeParams, SourceError, get_fetch, token_env, utc_now
from webtune.sources.ledger import Ledger

STAGE = "scrape"


def scrape(params: ScrapeParams, *, sources_dir: Path, now: Callable[[], str] = utc_now,
           first_seen: dict[tuple[str, str], str] | None = None, ledger: Ledger | None = None,
           token: str | None = None, progress=io.stderr) -> pa.Table:
    """Run the configured source; return the RAW_DOCS table (failures included as rows).

    `first_seen` maps (doc_id, content_sha256) of an earlier scrape to its fetched_at, which a document
    with the same bytes keeps. `ledger`, `token` and `progress` go to a paid source (one that declares
    TOKEN_ENV), which reports its requests and polls through `progress`.
    """
    fetch = get_fetch(params.source)
    paid = {}
    if token_env(params.source):
        assert ledger is not None and token, f"source {params.source} needs a ledger and a token"
        paid = {"ledger": ledger, "token": token, "progress": progress}
    first_seen = first_seen or {}
    rows, seen = [], {}
    for row in fetch(params, sources_dir=sources_dir, now=now, **paid):
        if row["doc_id"] in seen:
            raise SourceError(f"source {params.source!r} returned {row['url']} twice: "
                              "list each document once")
        seen[row["doc_id"]] = row["url"]
        if row["fetch_error"] is None:
            row["fetched_at"] = first_seen.get((row["doc_id"], row["content_sha256"]), row["fetched_at"])
        rows.append(row)
        if len(rows) % 100 == 0:
            progress(f"scrape: {len(rows)} documents")
    if not rows:
        raise EmptySourceError(f"source {params.source!r} produced no documents: "
                               f"check scrape.{params.source} in params.yaml")
    return pa.Table.from_pylist(rows, schema=schema.RAW_DOCS)


def previous_fetch_times(path: Path) -> dict[tuple[str, str], str]:
    """(doc_id, content_sha256) -> fetched_at of the table a previous run left at `path` (empty if none)."""
    try:
        table = shards.read_table(path, ["doc_id", "content_sha256", "fetched_at", "fetch_error"], STAGE)
    except (errors.InputError, pa.ArrowInvalid, KeyError):  # no previous run, or one of an older layout
        return {}
    return {(d, c): t for d, c, t, e in zip(*(table.column(n).to_pylist() for n in table.column_names),
                                            strict=True) if e is None}


def summarize(table: pa.Table, ledger_counts: dict[str, int] | None = None) -> dict:
    """Documents, failures by reason, bytes; for a paid source also what this run did (`this_run`):
    requested = pages asked of the provider, fetched = those that came back, cached = taken from the
    ledger; triggered / resumed snapshots."""
    errors_ = collections.Counter(e for e in table.column("fetch_error").to_pylist() if e is not None)
    summary = {
        "docs": table.num_rows,
        "docs_ok": table.num_rows - sum(errors_.values()),
        "failed": dict(sorted(errors_.items())),
        "bytes": sum(table.column("n_bytes").to_pylist()),
        "bad_chars": sum(table.column("n_bad_chars").to_pylist()),
    }
    if ledger_counts:
        summary["this_run"] = dict(sorted(ledger_counts.items()))
    return summary


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sources-dir", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--ledger", type=Path,
                        help="what paid sources fetched or triggered (kept across runs, git-ignored); "
                             "needed by a paid source only")
    parser.add_argument("--metrics", type=Path, required=True)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args(argv)
    with errors.reported(STAGE):
        params = load_section(STAGE, args.params)
        start = time.perf_counter()
        env = token_env(params.source)
        token = secrets.require(env, needed_by=f"scrape.source {params.source}") if env else None
        if env and args.ledger is None:
            raise errors.UserError(f"scrape.source {params.source} needs --ledger: it keeps what is paid for")
        with Ledger.open(args.ledger) if env else contextlib.nullcontext() as ledger:
            table = scrape(params, sources_dir=args.sources_dir, first_seen=previous_fetch_times(args.out),
                           ledger=ledger, token=token)
            metrics = summarize(table, dict(ledger.counts) if ledger else None)
        shards.write_shards(table, args.out, schema.RAW_DOCS, params.shard_docs)
        io.write_json(metrics, args.metrics)
    io.stderr(f"scrape: {metrics['docs']} documents ({metrics['bytes'] / 1e6:.1f} MB), "
              f"failed {metrics['failed']} ({time.perf_counter() - start:.1f} s)")


if __name__ == "__main__":
    main()
