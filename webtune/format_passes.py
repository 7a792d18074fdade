"""format as datatrove passes over a scratch folder; task r of each pass handles the r-th contiguous run of
the validated pair shards (and of the clean document shards).

    shingles  per task: the distinct 13-word shingles of its train rows (sorted, `train/`), and those of
              its val/test answers and test documents with their row (`held/`)
    overlap   per task: which of its held shingles any task's train shingles hold (a sorted-array search
              per train file: memory is one task's shingles, never the corpus's), so each val/test
              answer's share in train rows (`overlap/`) and the test documents' totals
    render    per task: the base tokenizer loaded once; pairs -> chat rows through the chat format,
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
from datatrove.pipeline.base import PipelineStep

from webtune import expectations_sharded, schema, shards
from webtune.chat_rows import doc_split, format_pairs, openai_jsonl, pair_text
from webtune.splits import SPLITS, FormatParams, shingles

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

    def doc_batches(self, rank, world_size):
        return shards.task_batches(self.docs, schema.CLEAN_DOCS.names, "the clean stage",
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
        train, held, own = set(), [], []  # own: a held row's number of shingles; -1 for a train row
        for batch in self.pair_batches(rank, world_size, ["doc_id", "system", "instruction", "response"]):
            for pair in batch.to_pylist():
                if doc_split(pair["doc_id"], self.params) == "train":
                    train |= shingles(pair_text(pair))
                    own.append(-1)
                else:
                    grams = shingles(pair["response"])
                    held += [(g, len(own)) for g in grams]
                    own.append(len(grams))
        docs_held, docs_own, per_split, test_bytes = [], [], collections.Counter(), 0
        for batch in self.doc_batches(rank, world_size):
            for doc in batch.to_pylist():
                per_split[split := doc_split(doc["doc_id"], self.params)] += 1
                if split == "test":
                    grams = shingles(doc["text"])
                    docs_held += [(g, len(docs_own)) for g in grams]
                    docs_own.append(len(grams))
                    test_bytes += len(doc["text"].encode())
        self.save("train", rank, np.array(sorted(train), dtype="<u8"))
        self.save("held_pairs", rank, np.sort(np.array(held, dtype=HELD), order="shingle"))
        self.save("held_docs", rank, np.array(docs_held, dtype=HELD))
        self.save("own_pairs", rank, np.array(own, dtype="<i8"))
        (self.scratch / "docs" / f"{rank:05d}.json").parent.mkdir(parents=True, exist_ok=True)
        (self.scratch / "docs" / f"{rank:05d}.json").write_text(json.dumps(
            {"per_split": per_split, "bytes": test_bytes, "own": int(sum(docs_own))}))


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

    def __init__(self, params: FormatParams, pairs, docs, scratch, tokenizer: str | Path, suite: dict):
        super().__init__(params, pairs, docs, scratch)
        self.tokenizer, self.suite = str(tokenizer), suite

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        from webtune.models import load_tokenizer  # imports transformers: only this pass needs it

        if world_size > 1:  # tasks run side by side: one tokenizer thread each fills the cores
            os.environ["TOKENIZERS_PARALLELISM"] = "false"
        tokenizer, fmt = load_tokenizer(Path(self.tokenizer))
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
        for batch in self.doc_batches(rank, world_size):
            for doc in batch.to_pylist():
                if doc_split(doc["doc_id"], self.params) == "test":
                    out["test_docs"].add(doc)
        gate.close()
        for f in files.values():
            f.close()
        for sink in out.values():
            sink.close()
        (self.scratch / "tally" / f"{rank:05d}.json").parent.mkdir(parents=True, exist_ok=True)
        (self.scratch / "tally" / f"{rank:05d}.json").write_text(json.dumps(
            {"lengths": lengths, "dropped": dropped_reasons}))


def format_passes(params: FormatParams, pairs: Path, docs: Path, tokenizer: Path, suite, scratch: Path,
                  tasks: int) -> list[tuple[str, list, int]]:
    from webtune.expectations import suite_dict

    return [
        ("shingles", [Shingles(params, pairs, docs, scratch)], tasks),
        ("overlap", [Overlap(params, pairs, docs, scratch)], tasks),
        ("render", [Render(params, pairs, docs, scratch, tokenizer, suite_dict(suite))], tasks),
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
