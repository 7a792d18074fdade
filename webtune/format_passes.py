"""format as datatrove passes over a scratch folder; task r of each pass handles the r-th contiguous run of
the validated pair shards (and of the clean document shards).

    shingles  per task: the distinct 13-word shingles of its train rows (sorted, `train/`), and those of
              its val/test answers and test documents with their row (`held/`)
    overlap   per task: which of its held shingles any task's train shingles hold (a sorted-array search
              per train file: memory is one task's shingles, never the corpus's), so each val/test
              answer's share in train rows (`overlap/`) and the test documents' totals
    render    per task: pairs -> chat rows through the chat format and the base's tokenizer,
              leaks_train and too_many_tokens drops, the gate's row-level checks and pair_id signatures
              (webtune.expectations_sharded), the split, JSONL, dropped and test-document shards
    find      one task: repeated pair_ids (datatrove's exact dedup)
"""

import collections
import json
import math
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
from datatrove.pipeline.base import PipelineStep

from webtune import expectations_sharded, formats, schema, shards
from webtune.chat_rows import doc_split, format_pairs, openai_jsonl, pair_text
from webtune.splits import SPLITS, FormatParams, distinct_shingles, shingle_hashes

HELD = np.dtype([("shingle", "<u8"), ("row", "<u4")])
PAIR_COLUMNS = schema.PAIRS.names
OUTPUTS = {"train": schema.CHAT_ROWS, "val": schema.CHAT_ROWS, "test": schema.CHAT_ROWS,
           "dropped": schema.DROPPED, "test_docs": schema.CLEAN_DOCS}


class _Step(PipelineStep):
    type = "webtune"

    def __init__(self, params: FormatParams, pairs: str | Path, docs: str | Path, scratch: str | Path):
        super().__init__()
        self.params, self.pairs, self.docs, self.scratch = params, str(pairs), str(docs), Path(scratch)

    def pair_batches(self, rank, world_size, columns=PAIR_COLUMNS):
        return shards.task_batches(self.pairs, columns, "the validate stage", self.params.batch_rows, rank,
                                   world_size)

    def doc_batches(self, rank, world_size, columns=schema.CLEAN_DOCS.names):
        return shards.task_batches(self.docs, columns, "the clean stage",
                                   self.params.batch_rows, rank, world_size)

    def save(self, folder: str, rank: int, array: np.ndarray) -> None:
        path = self.scratch / folder / f"{rank:05d}.npy"
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, array)

    def load(self, folder: str, rank: int) -> np.ndarray:
        return np.load(self.scratch / folder / f"{rank:05d}.npy")


class Shingles(_Step):
    name = "shingles"

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        # own: a held row's number of distinct shingles; -1 for a train row. Each batch's texts are
        # hashed in one vectorised call (webtune.splits.shingle_hashes), not a row at a time.
        train, held, own = [], [], []
        for batch in self.pair_batches(rank, world_size, ["doc_id", "system", "instruction", "response"]):
            pairs = batch.to_pylist()
            is_train = [doc_split(p["doc_id"], self.params) == "train" for p in pairs]
            texts = [pair_text(p) for p, t in zip(pairs, is_train, strict=True) if t]
            train.append(_unique(shingle_hashes(texts)[0]))
            rows = np.flatnonzero(~np.array(is_train, dtype=bool))
            grams, k = distinct_shingles([pairs[i]["response"] for i in rows])
            held.append(_held(grams, sum(map(len, own)) + rows[k]))
            own.append(np.full(len(pairs), -1, dtype="<i8"))
            own[-1][rows] = np.bincount(k, minlength=len(rows))
        docs_held, per_split, test_bytes = [], collections.Counter(), 0  # per_split: documents
        for batch in self.doc_batches(rank, world_size, ["doc_id", "text"]):
            splits = [doc_split(d, self.params) for d in batch.column("doc_id").to_pylist()]
            test = np.array([i for i, s in enumerate(splits) if s == "test"], dtype=np.int64)
            texts = batch.column("text").take(test).to_pylist()
            grams, k = distinct_shingles(texts)
            docs_held.append(_held(grams, per_split["test"] + k))  # row: the task's test document number
            per_split.update(splits)
            test_bytes += sum(len(t.encode()) for t in texts)
        self.save("train", rank, _unique(np.concatenate([np.empty(0, "<u8"), *train])))
        held = np.concatenate([_held([], []), *held])
        self.save("held_pairs", rank, held[np.argsort(held["shingle"], kind="stable")])
        self.save("held_docs", rank, np.concatenate([_held([], []), *docs_held]))
        self.save("own_pairs", rank, np.concatenate([np.empty(0, "<i8"), *own]))
        (self.scratch / "docs" / f"{rank:05d}.json").parent.mkdir(parents=True, exist_ok=True)
        (self.scratch / "docs" / f"{rank:05d}.json").write_text(json.dumps(
            {"per_split": per_split, "bytes": test_bytes, "own": sum(map(len, docs_held))}))


def _unique(a: np.ndarray) -> np.ndarray:
    """The distinct values of `a`, sorted (np.unique hashes first: ~15x slower on 1M uint64)."""
    a = np.sort(a)
    first = np.ones(len(a), dtype=bool)
    first[1:] = a[1:] != a[:-1]
    return a[first]


def _held(grams, rows) -> np.ndarray:
    out = np.empty(len(grams), dtype=HELD)
    out["shingle"], out["row"] = grams, rows
    return out


class Overlap(_Step):
    name = "overlap"

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        held = {k: self.load(f"held_{k}", rank) for k in ("pairs", "docs")}
        hit = {k: np.zeros(len(v), dtype=bool) for k, v in held.items()}
        for t in range(world_size):
            train = np.load(self.scratch / "train" / f"{t:05d}.npy", mmap_mode="r")
            if len(train):
                for k, v in held.items():
                    at = np.minimum(np.searchsorted(train, v["shingle"]), len(train) - 1)
                    hit[k] |= train[at] == v["shingle"]
        own = self.load("own_pairs", rank)
        shared = np.bincount(held["pairs"]["row"][hit["pairs"]], minlength=len(own))
        share = np.where(own > 0, shared / np.maximum(own, 1), 0.0)
        self.save("overlap", rank, np.where(own < 0, np.nan, share))  # NaN: a train row
        docs = json.loads((self.scratch / "docs" / f"{rank:05d}.json").read_text())
        docs["shared"] = int(hit["docs"].sum())
        (self.scratch / "docs" / f"{rank:05d}.json").write_text(json.dumps(docs))


class Render(_Step):
    name = "render"

    def __init__(self, params: FormatParams, pairs, docs, scratch, tokenizer, fmt: str, suite: dict):
        """`tokenizer`: the Rust tokenizer (tokenizers.Tokenizer) behind the one webtune.models.load_tokenizer
        built, so its ids are exactly train's. It pickles with the step, so a worker never imports
        transformers, which imports torch: ~2 CPU-s a worker process, against 3 ms to unpickle the tiny
        base's (82 KB)."""
        super().__init__(params, pairs, docs, scratch)
        self.tokenizer, self.fmt, self.suite = tokenizer, fmt, suite

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        if world_size > 1:  # tasks run side by side: one tokenizer thread each fills the cores
            os.environ["TOKENIZERS_PARALLELISM"] = "false"
        tokenizer, fmt = self.tokenizer, formats.get(self.fmt)
        out = {name: shards.Sink(self.scratch / "out" / name, rank, table) for name, table in OUTPUTS.items()}
        jsonl = {s: (self.scratch / "out" / f"openai_{s}" / f"{rank:05d}.jsonl") for s in ("train", "val")}
        for path in jsonl.values():
            path.parent.mkdir(parents=True, exist_ok=True)
        files = {s: path.open("w", encoding="utf-8") for s, path in jsonl.items()}
        gate = expectations_sharded.Gate(self.suite, self.scratch, rank, "pair_id",
                                         self.params.report_samples)
        overlaps, start = self.load("overlap", rank), 0
        lengths, dropped_reasons = collections.Counter(), collections.Counter()
        for batch in self.pair_batches(rank, world_size):
            share = [None if math.isnan(x) else float(x) for x in overlaps[start:start + batch.num_rows]]
            start += batch.num_rows
            rows, dropped = format_pairs(batch.to_pylist(), tokenizer, fmt, self.params, overlaps=share)
            for row in rows:
                out[row["split"]].add(row)
            for s, f in files.items():
                f.write(openai_jsonl([r for r in rows if r["split"] == s]))
            for d in dropped:
                out["dropped"].add(d)
            gate.add(pd.DataFrame(rows, columns=schema.CHAT_ROWS.names))
            lengths.update(f"{r['split']} {r['n_tokens']}" for r in rows)
            dropped_reasons.update(d["reason"] for d in dropped)
        if not gate.ids and not gate.checks:  # an empty task still checks an empty frame
            gate.add(pd.DataFrame([], columns=schema.CHAT_ROWS.names))
        for batch in self.doc_batches(rank, world_size):  # test documents stay Arrow: no row dicts
            splits = [doc_split(d, self.params) for d in batch.column("doc_id").to_pylist()]
            out["test_docs"].add_batch(batch.filter(pa.array([s == "test" for s in splits])))
        gate.close()
        for f in files.values():
            f.close()
        for sink in out.values():
            sink.close()
        (self.scratch / "tally" / f"{rank:05d}.json").parent.mkdir(parents=True, exist_ok=True)
        (self.scratch / "tally" / f"{rank:05d}.json").write_text(json.dumps(
            {"lengths": lengths, "dropped": dropped_reasons}))


def format_passes(params: FormatParams, pairs: Path, docs: Path, tokenizer, fmt: formats.ChatFormat, suite,
                  scratch: Path, tasks: int) -> list[tuple[str, list, int]]:
    """The passes (name, pipeline, tasks); `tokenizer` and `fmt` as webtune.models.load_tokenizer returns
    them."""
    from webtune.expectations import suite_dict

    rust = getattr(tokenizer, "backend_tokenizer", None) or tokenizer  # a slow tokenizer goes whole
    return [
        ("shingles", [Shingles(params, pairs, docs, scratch)], tasks),
        ("overlap", [Overlap(params, pairs, docs, scratch)], tasks),
        ("render", [Render(params, pairs, docs, scratch, rust, fmt.name, suite_dict(suite))], tasks),
        *expectations_sharded.find_pass(suite, scratch),
    ]


def tally(scratch: Path, tasks: int):
    """The tasks' counts as one webtune.split_files.Tally (rows per split and length, drop reasons,
    documents per split, the test documents' size and train overlap)."""
    from webtune.split_files import Tally

    out, per_split, n_bytes, own, shared = Tally(), collections.Counter(), 0, 0, 0
    for r in range(tasks):
        t = json.loads((scratch / "tally" / f"{r:05d}.json").read_text())
        for key, count in t["lengths"].items():
            split, n = key.split()
            out.lengths[split, int(n)] += count
        out.dropped.update(t["dropped"])
        d = json.loads((scratch / "docs" / f"{r:05d}.json").read_text())
        per_split.update(d["per_split"])
        n_bytes, own, shared = n_bytes + d["bytes"], own + d["own"], shared + d["shared"]
    out.docs = {"docs_per_split": {s: per_split[s] for s in SPLITS}, "test_docs_bytes": n_bytes,
                "test_docs_train_overlap": round(shared / own, 6) if own else 0.0}
    return out
