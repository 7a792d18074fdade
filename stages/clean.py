"""clean: raw documents -> clean, deduplicated documents, the drops with their reasons, and pairs.

    python -m stages.clean --raw data/raw/docs.parquet --docs data/clean/docs.parquet \
        --dropped data/clean/dropped.parquet --pairs data/clean/pairs.parquet --metrics metrics/clean.json

Per document, in worker processes (score first, webtune.cleaning.text.score_doc): fetch failures keep the
scrape's reason; mostly undecodable bytes -> mostly_garbage; HTML -> main-content markdown (resiliparse);
Unicode normalisation, boilerplate lines removed, secrets and e-mails masked, chat control tags
neutralised; length bounds -> too_short / too_long / empty_after_extraction; a dedup key and a MinHash;
then the document's pairs (webtune.cleaning.pairs).
Then in this process, in input order (filter second): exact_duplicate, near_duplicate (MinHash LSH,
verified by estimated Jaccard >= clean.near_dup_threshold), then duplicate_instruction and
duplicate_response among the pairs (a section two pages share: CPython's docs repeat whole sections
under several topics, and one answer in two splits is a test answer the adapter trained on).
Work is streamed in record batches with a bounded number in flight, so memory does not grow with the
corpus except for the dedup indexes, which must see every kept document: ~4 kB per kept doc (rensa's
LSH entry 1.4 kB, its MinHash 0.6 kB, digests and ids; bench/data_stages.py measured 357 -> 669 MB
from 20k to 100k pages).
"""

import argparse
import collections
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

from webtune import errors, io, schema
from webtune.cleaning import CleanParams
from webtune.cleaning.dedup import Deduplicator
from webtune.cleaning.pairs import build_pairs
from webtune.cleaning.text import dedup_key, score_batch
from webtune.parallel import ordered_map
from webtune.params import load_section

STAGE = "clean"


def score_and_pair(batch: list[dict] | pa.RecordBatch, params: CleanParams) -> list[dict]:
    """A worker's unit: score every doc, then the clean row and pairs of every doc it did not drop.

    Pairs are built here rather than in the parent (one process, and the bottleneck when it did), for
    docs that dedup may still drop; the raw body stays in the worker (the parent needs provenance only).
    """
    rows = batch.to_pylist() if isinstance(batch, pa.RecordBatch) else batch
    out = []
    for s in score_batch(rows, params):
        raw = s["raw"]
        slim = {"raw": schema.provenance(raw), "drop": s["drop"], "stats": s["stats"]}
        if not s["drop"]:
            doc = slim["raw"] | {"content_type": raw["content_type"], "title": s["title"], "text": s["text"],
                                 "record": s["record"], "n_chars": len(s["text"])}
            slim |= {"dedup_key": s["dedup_key"], "minhash": s["minhash"], "doc": doc}
            slim["pairs"], slim["skipped"] = build_pairs(doc, params.pairs)
        out.append(slim)
    return out


@dataclass
class Cleaned:
    """One input batch's share of the outputs."""

    docs: list[dict]
    dropped: list[dict]
    pairs: list[dict]
    stats: collections.Counter = field(default_factory=collections.Counter)


def clean(batches: Iterable[list[dict] | pa.RecordBatch], params: CleanParams) -> Iterator[Cleaned]:
    """Raw-row batches (lists of RAW_DOCS rows, or record batches) -> one Cleaned per batch, in order."""
    dedup = Deduplicator(params)
    instructions: dict[bytes, str] = {}  # dedup key -> the first pair's id
    responses: dict[bytes, str] = {}
    for scored_batch in ordered_map(score_and_pair, batches, params.workers, params):
        out = Cleaned([], [], [])
        for s in scored_batch:
            raw = s["raw"]
            out.stats.update(s["stats"])
            drop = s["drop"] or dedup.check(raw["doc_id"], s["dedup_key"], s["minhash"])
            if drop:
                reason, detail = drop
                out.dropped.append(schema.dropped_row(raw, stage=STAGE, reason=reason, detail=detail,
                                                      row_id=raw["doc_id"]))
                continue
            out.docs.append(s["doc"])
            out.stats.update(f"pair_skipped_{reason}" for reason, _ in s["skipped"])
            if not s["pairs"]:
                out.stats["docs_without_pairs"] += 1
            for pair in s["pairs"]:
                key, answer = dedup_key(pair["instruction"]), dedup_key(pair["response"])
                for seen, column, k in ((instructions, "instruction", key), (responses, "response", answer)):
                    if k in seen:
                        out.dropped.append(schema.dropped_row(
                            pair, stage=STAGE, reason=f"duplicate_{column}",
                            detail=f"same {column} as pair {seen[k]}", row_id=pair["pair_id"]))
                        break
                else:
                    instructions[key], responses[answer] = pair["pair_id"], pair["pair_id"]
                    out.pairs.append(pair)
        yield out


def clean_files(raw: Path, docs: Path, dropped: Path, pairs: Path, params: CleanParams,
                progress=io.stderr) -> dict:
    """The stage: stream `raw` through `clean` into the three Parquet outputs (each atomic); return
    metrics."""
    raw_file = io.parquet_file(raw, schema.RAW_DOCS.names, "the scrape stage")
    n_in = raw_file.metadata.num_rows
    # Record batches go to the workers as they are (Arrow buffers pickle cheaply); rows are built there.
    batches = raw_file.iter_batches(batch_size=params.batch_docs, columns=schema.RAW_DOCS.names)
    reasons, stats, n_docs, n_pairs, seen = collections.Counter(), collections.Counter(), 0, 0, 0
    with (
        io.parquet_writer(docs, schema.CLEAN_DOCS) as docs_out,
        io.parquet_writer(dropped, schema.DROPPED) as dropped_out,
        io.parquet_writer(pairs, schema.PAIRS) as pairs_out,
    ):
        for out in clean(batches, params):
            docs_out.write_table(pa.Table.from_pylist(out.docs, schema=schema.CLEAN_DOCS))
            dropped_out.write_table(pa.Table.from_pylist(out.dropped, schema=schema.DROPPED))
            pairs_out.write_table(pa.Table.from_pylist(out.pairs, schema=schema.PAIRS))
            reasons.update(d["reason"] for d in out.dropped)
            stats.update(out.stats)
            n_docs, n_pairs = n_docs + len(out.docs), n_pairs + len(out.pairs)
            seen += len(out.docs) + sum(1 for d in out.dropped if d["row_id"] == d["doc_id"])
            progress(f"clean: {seen}/{n_in} docs, {n_docs} kept, {n_pairs} pairs")
    return {
        "docs_in": n_in,
        "docs_out": n_docs,
        "pairs_out": n_pairs,
        "dropped": dict(sorted(reasons.items())),
        "counts": dict(sorted(stats.items())),
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    for name in ("--raw", "--docs", "--dropped", "--pairs", "--metrics"):
        parser.add_argument(name, type=Path, required=True)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args(argv)
    with errors.reported(STAGE):
        params = load_section(STAGE, args.params)
        start = time.perf_counter()
        metrics = clean_files(args.raw, args.docs, args.dropped, args.pairs, params)
        io.write_json(metrics, args.metrics)
    io.stderr(f"clean: {metrics['docs_in']} docs in -> {metrics['docs_out']} kept, "
              f"{metrics['pairs_out']} pairs; "
              f"dropped {metrics['dropped']} ({time.perf_counter() - start:.1f} s)")


if __name__ == "__main__":
    main()
