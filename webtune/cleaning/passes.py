"""clean as four datatrove passes over a scratch folder; each pass's tasks are what an executor runs.

    score    clean.tasks tasks   raw shards -> drops, survivors, MinHash signatures, pair keys
    buckets  clean.minhash_bands tasks (one per band: datatrove's MinhashDedupBuckets)
    cluster  1 task              duplicate documents and pairs (webtune.cleaning.dedup)
    write    clean.tasks tasks   survivors less duplicates -> the docs / pairs / dropped shards

Every pass writes under the scratch folder, so the stage's outputs change only when all four are done
(then the stage moves `out/` into place). Task `r` of score and of write handle the same raw shards, so
output shard `r` holds the documents of input shards in the same order as the input.
"""

import collections
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.dedup.minhash import MinhashDedupBuckets

from webtune import schema, shards
from webtune.cleaning import CleanParams
from webtune.cleaning.dedup import Cluster
from webtune.cleaning.steps import (
    STAGE,
    RawShards,
    RensaSignature,
    Score,
    ScoredShard,
    minhash_config,
)

OUTPUTS = {"docs": schema.CLEAN_DOCS, "pairs": schema.PAIRS, "dropped": schema.DROPPED}


class WriteClean(PipelineStep):
    """Task r: the scored docs and pairs of shard r less the cluster's decisions -> output shards r (in
    Arrow batches: no row becomes a Python object unless it is dropped), and its counts."""

    name = "write"
    type = "webtune"

    def __init__(self, scratch: str | Path):
        super().__init__()
        self.scratch = Path(scratch)

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        s, name = self.scratch, shards.shard_name(rank)
        decisions = pq.read_table(s / "decisions" / name)
        is_doc = pc.less(decisions["pair"], 0)
        docs, pairs = pq.ParquetFile(s / "docs" / name), pq.ParquetFile(s / "pairs" / name)
        n_pairs = docs.read(columns=["n_pairs"])["n_pairs"].to_numpy()
        doc_drop = _reasons(decisions.filter(is_doc), "doc", docs.metadata.num_rows)
        pair_drop = _reasons(decisions.filter(pc.invert(is_doc)), "pair", pairs.metadata.num_rows)
        pair_drop[0][np.repeat(doc_drop[0], n_pairs)] = False  # a dropped doc's pairs go silently with it
        for n in OUTPUTS:
            (s / "out" / n).mkdir(parents=True, exist_ok=True)
        out = {n: pq.ParquetWriter(s / "out" / n / name, t, compression="zstd") for n, t in OUTPUTS.items()}
        out["dropped"].write_table(pq.read_table(s / "drops" / name))
        counts = collections.Counter()
        for table, (drop, reasons), id_col, keep in (
                (docs, doc_drop, "doc_id", ~doc_drop[0]),
                (pairs, pair_drop, "pair_id", ~pair_drop[0] & np.repeat(~doc_drop[0], n_pairs))):
            start = 0
            for batch in table.iter_batches(batch_size=4096):
                window = slice(start, start + batch.num_rows)
                start += batch.num_rows
                if id_col == "doc_id":
                    kept = batch.filter(keep[window])
                    counts.update(pc.list_flatten(kept["skipped"]).to_pylist())
                    counts["docs_without_pairs"] += pc.sum(pc.equal(kept["n_pairs"], 0)).as_py() or 0
                    out["docs"].write_table(pa.Table.from_batches([kept]).select(schema.CLEAN_DOCS.names))
                else:
                    out["pairs"].write_table(pa.Table.from_batches([batch.filter(keep[window])]))
                gone = np.flatnonzero(drop[window]) + window.start
                if len(gone):
                    rows = pa.Table.from_batches([batch.filter(drop[window])])
                    out["dropped"].write_table(_dropped(rows, [reasons[i] for i in gone.tolist()], id_col))
        for writer in out.values():
            writer.close()
        counts = {f"pair_skipped_{k}" if k != "docs_without_pairs" else k: v for k, v in counts.items()}
        (s / "out" / "counts").mkdir(parents=True, exist_ok=True)
        (s / "out" / "counts" / f"{rank:05d}.json").write_text(json.dumps(counts))


def _reasons(decisions: pa.Table, column: str, n: int) -> tuple[np.ndarray, dict[int, tuple[str, str]]]:
    """(a mask of the rows the decisions drop, row index -> (reason, detail))."""
    idx = decisions[column].to_pylist()
    mask = np.zeros(n, dtype=bool)
    mask[idx] = True
    return mask, dict(zip(idx, zip(decisions["reason"].to_pylist(), decisions["detail"].to_pylist(),
                                   strict=True), strict=True))


def _dropped(rows: pa.Table, reasons: list[tuple[str, str]], id_col: str) -> pa.Table:
    columns = {k: rows[k] for k in schema.PROVENANCE_KEYS}
    columns |= {"stage": pa.array([STAGE] * rows.num_rows), "reason": pa.array([r for r, _ in reasons]),
                "detail": pa.array([d for _, d in reasons]), "row_id": rows[id_col]}
    return pa.table(columns).cast(schema.DROPPED)


def clean_passes(params: CleanParams, raw: Path, scratch: Path) -> list[tuple[str, list, int]]:
    """(name, datatrove pipeline, tasks) of each pass, in order."""
    s = str(scratch)
    return [
        ("score", [RawShards(raw), Score(params, s), ScoredShard(s), RensaSignature(params, s)],
         params.tasks),
        ("buckets", [MinhashDedupBuckets(f"{s}/sigs", f"{s}/dups", config=minhash_config(params))],
         params.minhash_bands),
        ("cluster", [Cluster(params, s, params.tasks)], 1),
        ("write", [WriteClean(s)], params.tasks),
    ]
