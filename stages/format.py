"""format: validated pairs -> chat rows (structured messages + harmony rendering), split and checked.

    python -m stages.format --pairs data/validated/pairs.parquet --base models/base \
        --suite expectations/chat_rows.json --out-dir data/format --openai-dir data/format/openai \
        --dropped data/format/dropped.parquet --report reports/format.md --metrics metrics/format.json \
        --lengths-plot reports/format_lengths.csv

- messages: [system?] user assistant, rendered by stages.chat_template (the only renderer).
- split: by a salted hash of pair_id, so a pair keeps its split when other pairs are added or removed.
- tokens: counted with the base tokenizer; a row over format.max_length is dropped with reason
  too_many_tokens (never truncated: a cut answer would teach the model to stop mid-sentence).
- gate: expectations/chat_rows.json checks every rendered row's control-token structure and that the
  tokenizer produced exactly the special ids the structure implies (content can never add one).
- OpenAI-format chat JSONL (train/val) for the hosted fine-tuning backend.
- a token-length histogram per split for `dvc plots show` (how much room max_length leaves).
"""

import argparse
import collections
import contextlib
import dataclasses
import hashlib
import json
import os
import sys
import time
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from stages import chat_template, expectations, io, schema
from stages.parallel import ordered_map
from stages.params import FormatParams, load_section

STAGE = "format"
SPLITS = ("train", "val", "test")
PROVENANCE_KEYS = [f.name for f in schema.PROVENANCE]


def split_of(pair_id: str, *, seed: str, train_ratio: float, val_ratio: float) -> str:
    """Deterministic split from a salted hash of the pair id (uniform in [0, 1))."""
    u = int(hashlib.sha256(f"{seed}\0{pair_id}".encode()).hexdigest()[:15], 16) / 16**15
    if u < train_ratio:
        return "train"
    return "val" if u < train_ratio + val_ratio else "test"


def to_messages(pair: dict) -> list[dict]:
    messages = [{"role": "system", "content": pair["system"]}] if pair["system"] else []
    messages += [
        {"role": "user", "content": pair["instruction"]},
        {"role": "assistant", "content": pair["response"]},
    ]
    chat_template.validate_messages(messages)
    return messages


def encode_batch(tokenizer, texts: list[str]) -> list[list[int]]:
    """Token ids of each text. A fast tokenizer's Rust backend is called directly (both cores, no
    offsets): ~25% faster than tokenizer(texts), the same ids."""
    if not texts:
        return []
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return tokenizer(texts, add_special_tokens=False)["input_ids"]
    return [e.ids for e in backend.encode_batch_fast(texts, add_special_tokens=False)]


def format_pairs(pairs: list[dict], tokenizer, params: FormatParams) -> tuple[list[dict], list[dict]]:
    """Pairs -> (chat rows, dropped rows). Pure apart from the tokenizer call."""
    if params.train_ratio + params.val_ratio > 1 or min(params.train_ratio, params.val_ratio) < 0:
        raise ValueError("format.train_ratio + format.val_ratio must be within [0, 1]")
    messages = [to_messages(p) for p in pairs]
    texts = [chat_template.render(m) for m in messages]
    ids = encode_batch(tokenizer, texts)
    rows, dropped = [], []
    for pair, msgs, text, token_ids in zip(pairs, messages, texts, ids, strict=True):
        provenance = {k: pair[k] for k in PROVENANCE_KEYS}
        if len(token_ids) > params.max_length:
            dropped.append(provenance | {
                "stage": STAGE, "reason": "too_many_tokens", "row_id": pair["pair_id"],
                "detail": f"{len(token_ids)} tokens > format.max_length={params.max_length}",
            })
            continue
        rows.append(provenance | {
            "pair_id": pair["pair_id"],
            "task": pair["task"],
            "split": split_of(pair["pair_id"], seed=params.split_seed, train_ratio=params.train_ratio,
                              val_ratio=params.val_ratio),
            "messages": msgs,
            "text": text,
            "n_tokens": len(token_ids),
            "n_special_ids": chat_template.count_special_ids(tokenizer, token_ids),
            "n_expected_special_ids": chat_template.expected_special_ids(msgs),
        })
    return rows, dropped


class Tally:
    """Running totals over batches: rows and tokens per split, a token-length count, drop reasons.

    Memory is bounded by max_length x 3 splits, whatever the number of rows.
    """

    def __init__(self):
        self.lengths: collections.Counter = collections.Counter()  # (split, n_tokens) -> rows
        self.dropped: collections.Counter = collections.Counter()  # reason -> rows

    def add(self, rows: list[dict], dropped: list[dict]) -> None:
        self.lengths.update((r["split"], r["n_tokens"]) for r in rows)
        self.dropped.update(d["reason"] for d in dropped)

    def merge(self, other: "Tally") -> None:
        self.lengths.update(other.lengths)
        self.dropped.update(other.dropped)

    def summary(self) -> dict:
        per_split = {s: sum(c for (split, _), c in self.lengths.items() if split == s) for s in SPLITS}
        by_length = collections.Counter()
        for (_, n), c in self.lengths.items():
            by_length[n] += c
        total = sum(by_length.values())
        p95, seen = 0, 0
        for n in sorted(by_length):
            seen += by_length[n]
            if seen > 0.95 * (total - 1):
                p95 = n
                break
        return {
            "rows": total,
            "rows_per_split": per_split,
            "tokens_per_split": {s: sum(n * c for (split, n), c in self.lengths.items() if split == s) for s in SPLITS},
            "tokens_max": max(by_length, default=0),
            "tokens_p95": p95,
            "tokens_mean": round(sum(n * c for n, c in by_length.items()) / total, 2) if total else 0,
            "dropped": dict(sorted(self.dropped.items())),
        }

    def histogram(self, max_length: int, buckets: int = 16) -> str:
        """CSV for `dvc plots`: rows per token-length bucket and split (how close rows come to max_length)."""
        width = max(1, -(-max_length // buckets))  # ceil: 512 / 16 = 32 tokens per bucket
        counts = collections.Counter()
        for (split, n), c in self.lengths.items():
            counts[split, min(n // width, buckets - 1)] += c
        lines = ["split,tokens,rows"]
        for split in SPLITS:
            lines += [f"{split},{b * width}-{(b + 1) * width - 1},{counts[split, b]}" for b in range(buckets)]
        return "\n".join(lines) + "\n"


@dataclasses.dataclass
class FormattedBatch:
    n_pairs: int
    splits: dict[str, pa.Table]  # CHAT_ROWS per split
    jsonl: dict[str, str]  # OpenAI chat JSONL for train and val
    dropped: pa.Table  # DROPPED
    check: expectations.BatchCheck  # the gate's verdict on this batch's rows
    tally: Tally


# The base tokenizer and the gate's suite, set by main before the workers fork: a worker inherits them
# instead of having them pickled with every batch (a real model's tokenizer is tens of MB).
_tokenizer = None
_suite = None


def format_batch(batch: pa.RecordBatch, params: FormatParams, samples: int) -> FormattedBatch:
    """One record batch of pairs -> everything main writes for it, checked (runs in a worker process)."""
    rows, dropped = format_pairs(batch.to_pylist(), _tokenizer, params)
    tally = Tally()
    tally.add(rows, dropped)
    return FormattedBatch(
        n_pairs=batch.num_rows,
        splits={s: pa.Table.from_pylist([r for r in rows if r["split"] == s], schema=schema.CHAT_ROWS) for s in SPLITS},
        jsonl={s: openai_jsonl([r for r in rows if r["split"] == s]) for s in ("train", "val")},
        dropped=pa.Table.from_pylist(dropped, schema=schema.DROPPED),
        check=expectations.check_batch(_suite, pd.DataFrame(rows, columns=schema.CHAT_ROWS.names),
                                       id_column="pair_id", samples=samples),
        tally=tally,
    )


def openai_jsonl(rows: list[dict]) -> str:
    """The chat fine-tuning format of OpenAI's API: one {"messages": [...]} object per line."""
    return "".join(json.dumps({"messages": r["messages"]}, ensure_ascii=False) + "\n" for r in rows)


def main(argv=None) -> None:
    from stages.base import load_tokenizer  # imports torch: only main needs it

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for name in ("--pairs", "--base", "--suite", "--out-dir", "--openai-dir", "--dropped", "--report", "--metrics",
                 "--lengths-plot"):
        parser.add_argument(name, type=Path, required=True)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args(argv)
    params = load_section("format", args.params)
    samples = load_section("validate", args.params).report_samples

    start = time.perf_counter()
    global _tokenizer, _suite
    _tokenizer = load_tokenizer(args.base)
    _suite = expectations.load_suite(args.suite)
    if params.workers > 1:  # one tokenizer thread per worker process: the workers already fill the cores
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
    pairs_file = pq.ParquetFile(args.pairs)
    n_pairs = pairs_file.metadata.num_rows
    outputs = [args.out_dir / f"{s}.parquet" for s in SPLITS] + [args.openai_dir / "train.jsonl",
                                                                 args.openai_dir / "val.jsonl", args.dropped]
    tally = Tally()
    try:
        # Batches stream into temporary files that are renamed into place only if every batch passes the gate.
        with contextlib.ExitStack() as stack:
            split_out = {s: stack.enter_context(io.parquet_writer(args.out_dir / f"{s}.parquet", schema.CHAT_ROWS))
                         for s in SPLITS}
            jsonl_out = {s: stack.enter_context(io.text_writer(args.openai_dir / f"{s}.jsonl")) for s in ("train", "val")}
            dropped_out = stack.enter_context(io.parquet_writer(args.dropped, schema.DROPPED))

            checks, done = [], 0
            batches = pairs_file.iter_batches(batch_size=params.batch_rows, columns=schema.PAIRS.names)
            for out in ordered_map(format_batch, batches, params.workers, params, samples):
                tally.merge(out.tally)
                for split, writer in split_out.items():
                    writer.write_table(out.splits[split])
                for split, f in jsonl_out.items():
                    f.write(out.jsonl[split])
                dropped_out.write_table(out.dropped)
                checks.append(out.check)
                done += out.n_pairs
                print(f"format: {done}/{n_pairs} pairs", file=sys.stderr)
            if not checks:  # an empty table is still checked (its row count, at least)
                checks.append(expectations.check_batch(_suite, pd.DataFrame([], columns=schema.CHAT_ROWS.names),
                                                       id_column="pair_id", samples=samples))
            result = expectations.combine(_suite, checks, id_column="pair_id", samples=samples)
            io.write_text(expectations.render_report(result, title="format: rendered chat rows"), args.report)
            expectations.check(result)  # raising here discards every temporary output
    except expectations.ExpectationsFailed as failed:
        for path in outputs:  # never leave a previous run's rows where the next stage would read them
            path.unlink(missing_ok=True)
        sys.exit(f"format: rendered rows failed {args.suite}:\n{failed}\nreport: {args.report}")

    io.write_text(tally.histogram(params.max_length), args.lengths_plot)
    metrics = tally.summary() | {"seconds": round(time.perf_counter() - start, 3)}
    io.write_json(metrics, args.metrics)
    print(f"format: {n_pairs} pairs -> {metrics['rows_per_split']}, dropped {metrics['dropped']}", file=sys.stderr)


if __name__ == "__main__":
    main()
