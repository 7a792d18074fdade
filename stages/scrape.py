"""scrape: fetch raw documents from the configured source into one Parquet table.

    python -m stages.scrape --sources-dir data/sources --out data/raw/docs.parquet --metrics metrics/scrape.json

The raw table is written once and is all later stages read: re-running clean or anything after it
never re-scrapes. Documents that could not be fetched are rows with `fetch_error` set, so clean
drops them with a reason and the metrics count them; a source that yields nothing at all fails.
"""

import argparse
import collections
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa

from stages import io, schema
from stages.params import ScrapeParams, load_section
from stages.sources import EmptySourceError, SourceError, get_fetch, utc_now


def scrape(params: ScrapeParams, *, sources_dir: Path, now: Callable[[], str] = utc_now) -> pa.Table:
    """Run the configured source; return the RAW_DOCS table (failures included as rows)."""
    fetch = get_fetch(params.source)
    rows = []
    for row in fetch(params, sources_dir=sources_dir, now=now):
        rows.append(row)
        if len(rows) % 100 == 0:
            print(f"scrape: {len(rows)} documents", file=sys.stderr)
    if not rows:
        raise EmptySourceError(
            f"source {params.source!r} produced no documents: check scrape.{params.source} in params.yaml"
        )
    seen = set()
    for row in rows:
        if row["doc_id"] in seen:
            raise SourceError(f"source {params.source!r} returned {row['url']} twice: list each document once")
        seen.add(row["doc_id"])
    return pa.Table.from_pylist(rows, schema=schema.RAW_DOCS)


def summarize(table: pa.Table, seconds: float) -> dict:
    errors = collections.Counter(e for e in table.column("fetch_error").to_pylist() if e is not None)
    return {
        "docs": table.num_rows,
        "docs_ok": table.num_rows - sum(errors.values()),
        "failed": dict(sorted(errors.items())),
        "bytes": sum(table.column("n_bytes").to_pylist()),
        "bad_chars": sum(table.column("n_bad_chars").to_pylist()),
        "seconds": round(seconds, 3),
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sources-dir", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--metrics", type=Path, required=True)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args(argv)

    params = load_section("scrape", args.params)
    start = time.perf_counter()
    try:
        table = scrape(params, sources_dir=args.sources_dir)
    except (SourceError, EmptySourceError) as e:
        sys.exit(f"scrape failed: {e}")
    metrics = summarize(table, time.perf_counter() - start)
    io.write_parquet(table, args.out, schema.RAW_DOCS)
    io.write_json(metrics, args.metrics)
    print(f"scrape: {metrics['docs']} documents ({metrics['bytes'] / 1e6:.1f} MB), failed {metrics['failed']}",
          file=sys.stderr)


if __name__ == "__main__":
    main()
