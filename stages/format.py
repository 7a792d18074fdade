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

It runs as datatrove passes, one task per validated pair shard (webtune.format_passes), under a scratch
folder named by a fingerprint of the inputs, tokenizer, params and code; the tasks' shards are joined
into the output files in pair order, so the outputs do not depend on the number of shards.
"""

import argparse
import shutil
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from webtune import (
    errors,
    executors,
    expectations,
    expectations_report,
    expectations_sharded,
    format_passes,
    io,
    schema,
    sharded,
    shards,
)
from webtune.chat_rows import doc_split, format_pairs, openai_jsonl, pair_text, to_messages  # noqa: F401
from webtune.params import as_dict, load_section
from webtune.splits import SPLITS, FormatParams

STAGE = "format"
ROW_PATTERN = "expect_column_values_to_match_regex"
BETWEEN = "expect_column_values_to_be_between"


def gate_suite(path: Path, fmt, params: FormatParams):
    """The chat rows suite with its run-time kwargs: the chat format's own row pattern (so the suite and
    the renderer cannot disagree) and the leak threshold."""
    suite = expectations.with_kwargs(expectations.load_suite(path), ROW_PATTERN, regex=fmt.row_regex())
    return expectations.with_kwargs(suite, BETWEEN, on_column="train_overlap",
                                    max_value=params.leak_threshold)


def format_shards(pairs: Path, docs: Path, tokenizer: Path, suite_path: Path, params: FormatParams,
                  scratch_root: Path, executor=None, progress=io.stderr):
    """Run the passes; return (scratch, tally, gate result). The caller joins the outputs (join_outputs)
    only if the gate passed, then removes the scratch."""
    from webtune.models import load_tokenizer  # imports transformers: only the stage needs it

    # the passes' tasks may run on other machines or in other folders (Slurm, Ray)
    pairs, docs, tokenizer = pairs.resolve(), docs.resolve(), tokenizer.resolve()
    tok, fmt = load_tokenizer(tokenizer)
    if params.max_length > tok.model_max_length:
        raise errors.ParamsError(f"format.max_length: {params.max_length} is beyond the base's context of "
                                 f"{tok.model_max_length} tokens "
                                 "(base.max_position_embeddings for the tiny base)")
    suite = gate_suite(suite_path, fmt, params)
    pair_files = shards.shard_files(pairs, "the validate stage", schema.PAIRS.names)
    doc_files = shards.shard_files(docs, "the clean stage", schema.CLEAN_DOCS.names)
    tokenizer_files = sorted(p for p in tokenizer.rglob("*") if p.is_file())
    scratch = sharded.scratch_dir(scratch_root, params=as_dict(params),
                                  inputs=[*pair_files, *doc_files, *tokenizer_files, suite_path],
                                  stage=Path(__file__))
    tasks = len(pair_files)
    passes = format_passes.format_passes(params, pairs, docs, tok, fmt, suite, scratch, tasks)
    sharded.run_passes(STAGE, passes, scratch, executor, progress)
    result = expectations_sharded.result(suite, "pair_id", params.report_samples, scratch, tasks)
    return scratch, format_passes.tally(scratch, tasks), result


def join_outputs(scratch: Path, tasks: int, out: dict[str, Path], rows_per_group: int) -> None:
    """The tasks' shards -> one file per output, in task order (each atomic): Parquet row groups of exactly
    rows_per_group rows but the last, so the bytes do not depend on how the rows were sharded; JSONL
    concatenated."""
    for name, table_schema in format_passes.OUTPUTS.items():
        with io.parquet_writer(out[name], table_schema) as writer:
            pending = table_schema.empty_table()
            for r in range(tasks):
                for batch in pq.ParquetFile(scratch / "out" / name / shards.shard_name(r)).iter_batches():
                    pending = pa.concat_tables([pending, pa.Table.from_batches([batch], schema=table_schema)])
                    while pending.num_rows >= rows_per_group:
                        writer.write_table(pending.slice(0, rows_per_group))
                        pending = pending.slice(rows_per_group)
            writer.write_table(pending)
    for split in ("train", "val"):
        with io.text_writer(out[f"openai_{split}"]) as f:
            for r in range(tasks):
                with (scratch / "out" / f"openai_{split}" / f"{r:05d}.jsonl").open(encoding="utf-8") as part:
                    shutil.copyfileobj(part, f)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    for name in ("--pairs", "--docs", "--tokenizer", "--suite", "--out-dir", "--test-docs", "--openai-dir",
                 "--dropped", "--scratch", "--report", "--metrics", "--lengths-plot"):
        parser.add_argument(name, type=Path, required=True)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args(argv)
    out = {s: args.out_dir / f"{s}.parquet" for s in SPLITS} | {
        "openai_train": args.openai_dir / "train.jsonl", "openai_val": args.openai_dir / "val.jsonl",
        "dropped": args.dropped, "test_docs": args.test_docs}
    with errors.reported(STAGE):
        params = load_section(STAGE, args.params)
        start = time.perf_counter()
        scratch, tally, result = format_shards(args.pairs, args.docs, args.tokenizer, args.suite, params,
                                               args.scratch, executors.executor_config())
        io.write_text(expectations_report.render_report(result, title="format: rendered chat rows"),
                      args.report)
        if not result.success:
            for path in out.values():  # no previous run's rows where the next stage would read them
                path.unlink(missing_ok=True)
            shutil.rmtree(scratch)
            raise errors.GateFailed(f"rendered rows failed {args.suite}:\n"
                                    f"{expectations_report.failure_message(result)}\nreport: {args.report}")
        join_outputs(scratch, len(shards.shard_files(args.pairs, "the validate stage")), out,
                     params.batch_rows)
        shutil.rmtree(scratch)
        io.write_text(tally.histogram(params.max_length), args.lengths_plot)
        metrics = tally.summary()
        io.write_json(metrics, args.metrics)
    io.stderr(f"format: {metrics['rows']} rows {metrics['rows_per_split']}, dropped {metrics['dropped']} "
              f"({time.perf_counter() - start:.1f} s)")


if __name__ == "__main__":
    main()
