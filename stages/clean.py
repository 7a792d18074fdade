"""clean: raw document shards -> clean, deduplicated documents, the drops with their reasons, and pairs.

    python -m stages.clean --raw data/raw/docs --docs data/clean/docs --dropped data/clean/dropped \
        --pairs data/clean/pairs --scratch .webtune/scratch/clean --metrics metrics/clean.json

Four datatrove passes (webtune.cleaning.passes) run by the executor (local unless WEBTUNE_EXECUTOR
says otherwise): per document (webtune.cleaning.text.score_doc) fetch failures keep the scrape's
reason; mostly undecodable bytes -> mostly_garbage; HTML -> main-content markdown (resiliparse);
Unicode normalisation, boilerplate lines removed, secrets and e-mails masked, chat control tags
neutralised; length bounds -> too_short / too_long / empty_after_extraction; then the document's pairs
(webtune.cleaning.pairs). Then, in input order, first copy wins: exact_duplicate, near_duplicate
(MinHash LSH verified by estimated Jaccard >= clean.near_dup_threshold), duplicate_instruction and
duplicate_response among the pairs of kept documents (webtune.cleaning.dedup).

Outputs are folders of clean.tasks shards. The passes work in a scratch folder named by a fingerprint of
the inputs, params and cleaning code: a killed run resumes its completed tasks; a changed one starts
afresh. The outputs are replaced only when every pass is complete.
"""

import argparse
import collections
import json
import shutil
import time
from pathlib import Path

import pyarrow.parquet as pq

from webtune import errors, executors, io, schema, sharded, shards
from webtune.cleaning import CleanParams, passes
from webtune.params import as_dict, load_section

STAGE = "clean"


def clean(raw: Path, out: dict[str, Path], scratch_root: Path, params: CleanParams, executor=None,
          progress=io.stderr) -> dict:
    """Run the passes on `raw` (a shard folder), move the outputs to `out` (docs, pairs, dropped
    folders); return the metrics."""
    raw = raw.resolve()  # the passes' tasks may run on other machines or in other folders (Slurm, Ray)
    inputs = shards.shard_files(raw, "the scrape stage", schema.RAW_DOCS.names)
    scratch = sharded.scratch_dir(scratch_root, params=as_dict(params), inputs=inputs, stage=Path(__file__))
    sharded.run_passes(STAGE, passes.clean_passes(params, raw, scratch), scratch, executor, progress)
    metrics = summarize(scratch, params.tasks)
    for name, path in out.items():
        shards.replace_dir(scratch / "out" / name, path)
    shutil.rmtree(scratch)
    return metrics


def summarize(scratch: Path, tasks: int) -> dict:
    counts = collections.Counter()
    for folder in ("counts", "out/counts"):
        for r in range(tasks):
            counts.update(json.loads((scratch / folder / f"{r:05d}.json").read_text()))
    reasons = collections.Counter()
    for path in shards.shard_files(scratch / "out" / "dropped", STAGE):
        reasons.update(pq.read_table(path, columns=["reason"]).column("reason").to_pylist())
    docs_in = counts.pop("docs_in", 0)
    return {
        "docs_in": docs_in,
        "docs_out": shards.num_rows(scratch / "out" / "docs", STAGE),
        "pairs_out": shards.num_rows(scratch / "out" / "pairs", STAGE),
        "dropped": dict(sorted(reasons.items())),
        "counts": dict(sorted(counts.items())),
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    for name in ("--raw", "--docs", "--dropped", "--pairs", "--scratch", "--metrics"):
        parser.add_argument(name, type=Path, required=True)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args(argv)
    with errors.reported(STAGE):
        params = load_section(STAGE, args.params)
        start = time.perf_counter()
        metrics = clean(args.raw, {"docs": args.docs, "pairs": args.pairs, "dropped": args.dropped},
                        args.scratch, params, executor=executors.executor_config())
        io.write_json(metrics, args.metrics)
    io.stderr(f"clean: {metrics['docs_in']} docs in -> {metrics['docs_out']} kept, "
              f"{metrics['pairs_out']} pairs; "
              f"dropped {metrics['dropped']} ({time.perf_counter() - start:.1f} s)")


if __name__ == "__main__":
    main()
