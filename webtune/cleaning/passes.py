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

import pyarrow.parquet as pq
from datatrove.io import get_datafolder
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
    ShardSink,
    minhash_config,
)

OUTPUTS = {"docs": schema.CLEAN_DOCS, "pairs": schema.PAIRS, "dropped": schema.DROPPED}


class WriteClean(PipelineStep):
    """Task r: scored shard r less the cluster's decisions -> output shards r, and its counts."""

    name = "write"
    type = "webtune"

    def __init__(self, scratch: str | Path):
        super().__init__()
        self.scratch = str(scratch)

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        s = Path(self.scratch)
        decisions = pq.read_table(s / "decisions" / shards.shard_name(rank)).to_pylist()
        doc_drops = {d["doc"]: d for d in decisions if d["pair"] < 0}
        pair_drops = {d["pair"]: d for d in decisions if d["pair"] >= 0}
        out = {name: ShardSink(f"{self.scratch}/out/{name}", rank, table) for name, table in OUTPUTS.items()}
        for row in pq.read_table(s / "drops" / shards.shard_name(rank)).to_pylist():
            out["dropped"].add(row)
        counts, n_pair = collections.Counter(), 0
        scored = pq.ParquetFile(s / "scored" / shards.shard_name(rank))
        i = 0
        for batch in scored.iter_batches(batch_size=512):
            for row in batch.to_pylist():
                pairs, skipped = row.pop("pairs"), row.pop("skipped")
                del row["dedup_key"]
                if i in doc_drops:
                    out["dropped"].add(_dropped(row, doc_drops[i], row["doc_id"]))
                else:
                    out["docs"].add(row)
                    counts.update(f"pair_skipped_{reason}" for reason in skipped)
                    counts["docs_without_pairs"] += not pairs
                    for k, pair in enumerate(pairs, start=n_pair):
                        if k in pair_drops:
                            out["dropped"].add(_dropped(pair, pair_drops[k], pair["pair_id"]))
                        else:
                            out["pairs"].add(pair)
                n_pair += len(pairs)
                i += 1
        for sink in out.values():
            sink.close()
        with get_datafolder(f"{self.scratch}/out/counts").open(f"{rank:05d}.json", "w") as f:
            json.dump(counts, f)
        return iter(())


def _dropped(row: dict, decision: dict, row_id: str) -> dict:
    return schema.dropped_row(row, stage=STAGE, reason=decision["reason"], detail=decision["detail"],
                              row_id=row_id)


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
