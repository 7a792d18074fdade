"""clean's cluster pass: which documents and pairs are duplicates, decided in one task.

Its inputs are on disk: datatrove's bucket step (MinhashDedupBuckets) wrote, per LSH band, the runs of
documents whose band hashes are equal, and the score pass wrote every document's whole signature, dedup
key and id, and its pairs' keys (webtune.cleaning.steps). Documents are numbered (task, index): the
tasks read contiguous runs of the input, so that order is the input's order, whatever `clean.tasks` is.

Documents, in input order, first copy wins (the rule clean always had):
  exact_duplicate   same normalised text as an earlier kept document;
  near_duplicate    shares an LSH band with an earlier kept document whose estimated Jaccard (the share
                    of equal MinHash values) is >= clean.near_dup_threshold. datatrove alone would drop
                    every band collision: at 16 bands of 8 rows that is 1 in 4 pairs of pages only 60%
                    alike; its union-find would also drop C for A~B~C even when C is unlike A.
Pairs of kept documents: the first pair with an instruction wins it (duplicate_instruction), then among
the rest the first with a response (duplicate_response).
Memory is what the candidates need (documents that share a band with another), plus one band's pairs
keys at a time, never the corpus.
"""

import collections
from pathlib import Path

import numpy as np
import pyarrow as pa
from datatrove.io import get_datafolder
from datatrove.pipeline.base import PipelineStep

from webtune import shards
from webtune.cleaning import CleanParams
from webtune.cleaning.steps import KEY_BYTES, PAIR_KEY

DECISIONS = pa.schema([
    pa.field("doc", pa.int64(), nullable=False),    # index among the task's scored docs
    pa.field("pair", pa.int64(), nullable=False),   # index among their pairs
    # (-1: the row is about the other: a doc's decision has pair -1, a pair's has doc -1)
    pa.field("reason", pa.string(), nullable=False),
    pa.field("detail", pa.string(), nullable=False),
])


def band_groups(dups: np.ndarray) -> list[list[tuple[int, int]]]:
    """datatrove's .dups records of one band -> its groups of equal band hashes.

    The bucket step merges sorted signatures and writes (previous, current) for each equal neighbour, so
    a group of k documents arrives as k-1 chained records: a record starting where the last one ended
    continues the group (a document appears once per band, so two groups never chain)."""
    groups: list[list[tuple[int, int]]] = []
    last = None
    for f1, d1, f2, d2 in dups.tolist():
        if (f1, d1) != last:
            groups.append([(f1, d1)])
        groups[-1].append((f2, d2))
        last = (f2, d2)
    return groups


class Signatures:
    """Each task's whole signatures and keys, memory-mapped: read per candidate, not loaded."""

    def __init__(self, scratch: str, tasks: int, perms: int):
        self.full = [_map(Path(scratch) / "full" / f"{r:05d}.u32", np.uint32, perms) for r in range(tasks)]
        self.keys = [_map(Path(scratch) / "keys" / f"{r:05d}.bin", np.uint8, KEY_BYTES) for r in range(tasks)]

    def jaccard(self, a: tuple[int, int], b: tuple[int, int]) -> float:
        x, y = self.full[a[0]][a[1]], self.full[b[0]][b[1]]
        return float(np.count_nonzero(x == y)) / len(x)

    def key(self, node: tuple[int, int]) -> bytes:
        return self.keys[node[0]][node[1], :16].tobytes()

    def doc_id(self, node: tuple[int, int]) -> str:
        return self.keys[node[0]][node[1], 16:].tobytes().hex()


def _map(path: Path, dtype, width: int) -> np.ndarray:
    n = path.stat().st_size // (np.dtype(dtype).itemsize * width)
    return np.memmap(path, dtype=dtype, mode="r", shape=(n, width)) if n else np.zeros((0, width), dtype)


def duplicate_docs(groups: list[list[tuple[int, int]]], sigs: Signatures,
                   threshold: float) -> dict[tuple[int, int], tuple[str, str]]:
    """Greedy, in input order: a document is a duplicate of the first earlier KEPT candidate."""
    groups_of = collections.defaultdict(list)
    for g, members in enumerate(groups):
        for node in members:
            groups_of[node].append(g)
    kept_in = [[] for _ in groups]
    drops = {}
    for node in sorted(groups_of):
        candidates = sorted({c for g in groups_of[node] for c in kept_in[g]})
        key = sigs.key(node)
        drop = next((("exact_duplicate", f"same normalised text as doc {sigs.doc_id(c)}")
                     for c in candidates if sigs.key(c) == key), None)
        for c in candidates if drop is None else ():
            if (similarity := sigs.jaccard(node, c)) >= threshold:
                drop = ("near_duplicate", f"estimated Jaccard {similarity:.2f} with doc {sigs.doc_id(c)}")
                break
        if drop:
            drops[node] = drop
        else:
            for g in groups_of[node]:
                kept_in[g].append(node)
    return drops


def duplicate_pairs(scratch: str, tasks: int,
                    dropped_docs: set[tuple[int, int]]) -> dict[tuple[int, int], tuple[str, str]]:
    """(task, pair) -> reason of every pair of a kept document whose instruction, then (among the rest)
    response, an earlier such pair has. Loads every pair's 24-byte key of one kind at a time."""
    drops: dict[tuple[int, int], tuple[str, str]] = {}
    for kind in ("instruction", "response"):
        parts = []
        for r in range(tasks):
            keys = np.fromfile(Path(scratch) / "pairkeys" / f"{r:05d}.{kind}.bin", dtype=PAIR_KEY)
            gone_docs = [d for t, d in dropped_docs if t == r]
            gone_pairs = [p for t, p in drops if t == r]
            keys = keys[~np.isin(keys["doc"], gone_docs) & ~np.isin(keys["pair"], gone_pairs)]
            parts.append(np.rec.fromarrays([keys["hash"], np.full(len(keys), r, np.uint32), keys["pair"],
                                            keys["id"]], names="hash,task,pair,id"))
        keys = np.concatenate(parts)
        keys.sort(order=["hash", "task", "pair"])
        new = np.r_[True, keys["hash"][1:] != keys["hash"][:-1]] if len(keys) else np.zeros(0, bool)
        owner = np.maximum.accumulate(np.where(new, np.arange(len(keys)), 0))
        for i in np.flatnonzero(~new).tolist():
            first = keys[owner[i]]
            drops[(int(keys["task"][i]), int(keys["pair"][i]))] = (
                f"duplicate_{kind}", f"same {kind} as pair {int(first['id']).to_bytes(8, 'big').hex()}")
    return drops


class Cluster(PipelineStep):
    """The one-task pass between the bucket pass and the write pass: decisions per task, in
    `decisions/{rank:05d}.parquet` (one file per score task, empty when it has none)."""

    name = "cluster"
    type = "webtune"

    def __init__(self, params: CleanParams, scratch: str | Path, tasks: int):
        super().__init__()
        self.params, self.scratch, self.tasks = params, str(scratch), tasks

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        assert world_size == 1, "the cluster pass is one task"
        folder = get_datafolder(f"{self.scratch}/dups")
        groups = []
        for name in sorted(folder.list_files(glob_pattern="*.dups")):
            with folder.open(name, "rb") as f:
                raw = f.read()
            groups += band_groups(np.frombuffer(raw, dtype="<u4").reshape(-1, 4))
        sigs = Signatures(self.scratch, self.tasks, self.params.minhash_permutations)
        doc_drops = duplicate_docs(groups, sigs, self.params.near_dup_threshold)
        pair_drops = duplicate_pairs(self.scratch, self.tasks, set(doc_drops))
        by_task = collections.defaultdict(list)
        for (task, doc), (reason, detail) in doc_drops.items():
            by_task[task].append({"doc": doc, "pair": -1, "reason": reason, "detail": detail})
        for (task, pair), (reason, detail) in pair_drops.items():
            by_task[task].append({"doc": -1, "pair": pair, "reason": reason, "detail": detail})
        for task in range(self.tasks):
            sink = shards.Sink(f"{self.scratch}/decisions", task, DECISIONS)
            for row in sorted(by_task[task], key=lambda r: (r["pair"], r["doc"])):
                sink.add(row)
            sink.close()
            self.stat_update("duplicates", value=len(by_task[task]))

