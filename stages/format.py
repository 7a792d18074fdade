"""format: validated pairs -> chat rows (structured messages and their rendering), split by document, checked.

    python -m stages.format --pairs data/validated/pairs --docs data/clean/docs \
        --tokenizer models/base/tokenizer --suite expectations/chat_rows.json --out-dir data/format \
        --test-docs data/format/test_docs.parquet --openai-dir data/format/openai \
        --dropped data/format/dropped.parquet --report reports/format.md --metrics metrics/format.json \
        --lengths-plot reports/format_lengths.csv

- messages: [system?] user assistant (the pair's system prompt, else format.system_prompt), rendered by
  the base's chat format (webtune.formats; the only renderer).
- split: by a salted hash of the pair's doc_id (webtune.splits), so every pair of a page is in one split
  and test asks about pages never trained on; a val/test row whose answer shares more than
  format.leak_threshold of its 13-word shingles with train rows is dropped with reason leaks_train.
- test_docs: the cleaned text of every test document, which evaluate scores as plain language modelling
  (bits per byte of held-out text).
- tokens: counted with the base tokenizer; a row over format.max_length is dropped with reason
  too_many_tokens (never truncated: a cut answer would teach the model to stop mid-sentence).
- gate: expectations/chat_rows.json checks every rendered row against the format's own row pattern (set
  from the format at run time), that the tokenizer produced exactly the special ids the structure
  implies (content can never add one) and that no val/test row over the leak threshold remains.
- OpenAI-format chat JSONL (train/val) for the hosted fine-tuning backend.
- a token-length histogram per split for `dvc plots show` (how much room max_length leaves).
"""

import argparse
import contextlib
import dataclasses
import json
import os
import time
from pathlib import Path

import pandas as pd
import pyarrow as pa

from webtune import (
    errors,
    expectations,
    expectations_batched,
    expectations_report,
    formats,
    io,
    schema,
    shards,
)
from webtune.parallel import ordered_map
from webtune.params import load_section
from webtune.split_files import Tally, write_test_docs
from webtune.splits import SPLITS, FormatParams, overlap, split_of, train_shingles

STAGE = "format"
ROW_PATTERN = "expect_column_values_to_match_regex"
BETWEEN = "expect_column_values_to_be_between"


def to_messages(pair: dict, system_prompt: str = "") -> list[dict]:
    """[system] user assistant: the pair's own system prompt, else format.system_prompt, else none."""
    system = pair["system"] or system_prompt
    messages = [{"role": "system", "content": system}] if system else []
    messages += [{"role": "user", "content": pair["instruction"]},
                 {"role": "assistant", "content": pair["response"]}]
    formats.validate_messages(messages)
    return messages


def doc_split(doc_id: str, params: FormatParams) -> str:
    return split_of(doc_id, seed=params.split_seed, train_ratio=params.train_ratio,
                    val_ratio=params.val_ratio)


def pair_text(pair: dict) -> str:
    """What a train row teaches (system, question and answer): the text a val/test answer must not repeat."""
    return "\n".join((pair["system"], pair["instruction"], pair["response"]))


def format_pairs(pairs: list[dict], tokenizer, fmt: formats.ChatFormat, params: FormatParams,
                 seen: frozenset[int] = frozenset()) -> tuple[list[dict], list[dict]]:
    """Pairs -> (chat rows, dropped rows); `seen`: the train rows' shingles. Pure apart from the tokenizer."""
    messages = [to_messages(p, params.system_prompt) for p in pairs]
    texts = [fmt.render(m) for m in messages]
    rows, dropped, token_ids = [], [], formats.token_ids(tokenizer, texts)
    for pair, msgs, text, ids in zip(pairs, messages, texts, token_ids, strict=True):
        split = doc_split(pair["doc_id"], params)
        shared = None if split == "train" else overlap(pair["response"], seen)
        if shared is not None and shared > params.leak_threshold:
            dropped.append(schema.dropped_row(pair, stage=STAGE, reason="leaks_train", row_id=pair["pair_id"],
                                              detail=f"{split} answer: {shared:.0%} of its 13-word shingles "
                                                     f"are in train rows > format.leak_threshold="
                                                     f"{params.leak_threshold:g}"))
            continue
        if len(ids) > params.max_length:
            dropped.append(schema.dropped_row(pair, stage=STAGE, reason="too_many_tokens",
                                              row_id=pair["pair_id"],
                                              detail=f"{len(ids)} tokens > "
                                                     f"format.max_length={params.max_length}"))
            continue
        rows.append(schema.provenance(pair) | {
            "pair_id": pair["pair_id"],
            "task": pair["task"],
            "split": split,
            "train_overlap": shared,
            "messages": msgs,
            "text": text,
            "n_tokens": len(ids),
            "n_special_ids": formats.count_special_ids(fmt, tokenizer, ids),
            "n_expected_special_ids": fmt.expected_special_ids(msgs),
        })
    return rows, dropped


@dataclasses.dataclass
class FormattedBatch:
    splits: dict[str, pa.Table]  # CHAT_ROWS per split
    jsonl: dict[str, str]  # OpenAI chat JSONL for train and val
    dropped: pa.Table  # DROPPED
    check: expectations_batched.BatchCheck  # the gate's verdict on this batch's rows
    rows: list[dict]
    dropped_rows: list[dict]


# What every worker needs and no batch should carry: set once per process by the pool's initializer
# (a real model's tokenizer is tens of MB; pickling it with every batch would cost more than the batch).
_worker: dict = {}


def init_worker(tokenizer, fmt: formats.ChatFormat, suite, seen: frozenset[int]) -> None:
    _worker.update(tokenizer=tokenizer, fmt=fmt, suite=suite, seen=seen)


def format_batch(batch: pa.RecordBatch, params: FormatParams) -> FormattedBatch:
    """One record batch of pairs -> everything main writes for it, checked (runs in a worker process)."""
    rows, dropped = format_pairs(batch.to_pylist(), _worker["tokenizer"], _worker["fmt"], params,
                                 _worker["seen"])
    return FormattedBatch(
        splits={s: pa.Table.from_pylist([r for r in rows if r["split"] == s], schema=schema.CHAT_ROWS)
                for s in SPLITS},
        jsonl={s: openai_jsonl([r for r in rows if r["split"] == s]) for s in ("train", "val")},
        dropped=pa.Table.from_pylist(dropped, schema=schema.DROPPED),
        check=check_rows(_worker["suite"], rows, params.report_samples),
        rows=[{"split": r["split"], "n_tokens": r["n_tokens"]} for r in rows],
        dropped_rows=[{"reason": d["reason"]} for d in dropped],
    )


def check_rows(suite, rows: list[dict], samples: int) -> expectations_batched.BatchCheck:
    return expectations_batched.check_batch(suite, pd.DataFrame(rows, columns=schema.CHAT_ROWS.names),
                                            id_column="pair_id", samples=samples)


def openai_jsonl(rows: list[dict]) -> str:
    """The chat fine-tuning format of OpenAI's API: one {"messages": [...]} object per line."""
    return "".join(json.dumps({"messages": r["messages"]}, ensure_ascii=False) + "\n" for r in rows)


def format_files(args, params: FormatParams, progress=io.stderr) -> tuple[Tally, expectations.SuiteResult]:
    """Stream the pairs through format_batch into the split files (renamed into place only if the gate
    passes)."""
    from webtune.models import load_tokenizer  # imports transformers: only the stage needs it

    tokenizer, fmt = load_tokenizer(args.tokenizer)
    if params.max_length > tokenizer.model_max_length:
        raise errors.ParamsError(f"format.max_length: {params.max_length} is beyond the base's context of "
                                 f"{tokenizer.model_max_length} tokens "
                                 "(base.max_position_embeddings for the tiny base)")
    # The row pattern is the chat format's own, so the suite and the renderer cannot disagree.
    suite = expectations.with_kwargs(expectations.load_suite(args.suite), ROW_PATTERN, regex=fmt.row_regex())
    suite = expectations.with_kwargs(suite, BETWEEN, on_column="train_overlap",
                                     max_value=params.leak_threshold)
    if params.workers > 1:  # one tokenizer thread per worker process: the workers already fill the cores
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
    n_pairs, done, checks, tally = shards.num_rows(args.pairs, "the validate stage"), 0, [], Tally()
    seen = train_shingles(pair_text(p) for batch in shards.iter_batches(
        args.pairs, ["doc_id", "system", "instruction", "response"], "the validate stage", params.batch_rows)
        for p in batch.to_pylist() if doc_split(p["doc_id"], params) == "train")
    progress(f"format: {len(seen):,} distinct 13-word shingles in train rows")
    with contextlib.ExitStack() as stack:
        split_out = {s: stack.enter_context(io.parquet_writer(args.out_dir / f"{s}.parquet",
                                                              schema.CHAT_ROWS))
                     for s in SPLITS}
        jsonl_out = {s: stack.enter_context(io.text_writer(args.openai_dir / f"{s}.jsonl"))
                     for s in ("train", "val")}
        dropped_out = stack.enter_context(io.parquet_writer(args.dropped, schema.DROPPED))
        batches = shards.iter_batches(args.pairs, schema.PAIRS.names, "the validate stage", params.batch_rows)
        for out in ordered_map(format_batch, batches, params.workers, params, initializer=init_worker,
                               initargs=(tokenizer, fmt, suite, seen)):
            tally.add(out.rows, out.dropped_rows)
            for split, writer in split_out.items():
                writer.write_table(out.splits[split])
            for split, f in jsonl_out.items():
                f.write(out.jsonl[split])
            dropped_out.write_table(out.dropped)
            checks.append(out.check)
            done += len(out.rows) + len(out.dropped_rows)
            progress(f"format: {done}/{n_pairs} pairs")
        if not checks:  # an empty table is still checked (its row count, at least)
            checks.append(check_rows(suite, [], params.report_samples))
        result = expectations_batched.combine(suite, checks, id_column="pair_id",
                                              samples=params.report_samples)
        io.write_text(expectations_report.render_report(result, title="format: rendered chat rows"),
                      args.report)
        expectations_report.check(result)  # raising here discards every temporary output
        tally.docs = write_test_docs(args.docs, args.test_docs, seen, lambda d: doc_split(d, params),
                                     params.batch_rows)
    return tally, result


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    for name in ("--pairs", "--docs", "--tokenizer", "--suite", "--out-dir", "--test-docs", "--openai-dir",
                 "--dropped", "--report", "--metrics", "--lengths-plot"):
        parser.add_argument(name, type=Path, required=True)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args(argv)
    outputs = [args.out_dir / f"{s}.parquet" for s in SPLITS] + [args.openai_dir / "train.jsonl",
                                                                 args.openai_dir / "val.jsonl", args.dropped,
                                                                 args.test_docs]
    with errors.reported(STAGE):
        params = load_section(STAGE, args.params)
        start = time.perf_counter()
        try:
            tally, _ = format_files(args, params)
        except expectations_report.ExpectationsFailed as failed:
            for path in outputs:  # never leave a previous run's rows where the next stage would read them
                path.unlink(missing_ok=True)
            raise errors.GateFailed(f"rendered rows failed {args.suite}:\n{failed}\n"
                                    f"report: {args.report}") from None
        io.write_text(tally.histogram(params.max_length), args.lengths_plot)
        metrics = tally.summary()
        io.write_json(metrics, args.metrics)
    io.stderr(f"format: {metrics['rows']} rows {metrics['rows_per_split']}, dropped {metrics['dropped']} "
              f"({time.perf_counter() - start:.1f} s)")


if __name__ == "__main__":
    main()
