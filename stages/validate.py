"""validate: the gate between clean and format. Pairs that fail the suite never reach training.

    python -m stages.validate --pairs data/clean/pairs --suite expectations/pairs.json \
        --out data/validated/pairs --scratch .webtune/scratch/validate --report reports/validate.md \
        --metrics metrics/validate.json

The suite file holds every threshold except the minimum row count, which is a knob
(params.yaml validate.min_rows) set on the suite's row-count expectation at run time. It runs as
datatrove passes, one task per shard (webtune.expectations_sharded): the row-level expectations per
shard, uniqueness through datatrove's exact dedup across all shards; the outcomes merge into one report.
The report and metrics are written whatever the outcome; the validated pairs (the input shards, unchanged)
only on success. On failure the stage prints which expectations failed, with sample pair ids, removes any
previous --out so format cannot run on stale data, and exits 1.
"""

import argparse
import shutil
from collections.abc import Iterable
from pathlib import Path

import pandas as pd
import pyarrow as pa

from webtune import (
    errors,
    executors,
    expectations,
    expectations_batched,
    expectations_report,
    expectations_sharded,
    io,
    schema,
    sharded,
    shards,
)
from webtune.expectations import ValidateParams, suite_dict
from webtune.params import as_dict, load_section

STAGE = "validate"
ROW_COUNT = "expect_table_row_count_to_be_between"


def validate(
    pairs: pa.Table | pd.DataFrame | Iterable[pd.DataFrame], suite, min_rows: int, samples: int
) -> expectations.SuiteResult:
    """Run `suite` on `pairs` (a table, or batches of one), its row-count minimum set to `min_rows`;
    up to `samples` failing ids each."""
    suite = expectations.with_kwargs(suite, ROW_COUNT, min_value=min_rows)
    if isinstance(pairs, pa.Table | pd.DataFrame):
        return expectations.run_suite(suite, pairs, id_column="pair_id", samples=samples)
    return expectations_batched.run_suite_batched(suite, pairs, id_column="pair_id", samples=samples)


def validate_shards(pairs: Path, suite, params: ValidateParams, scratch_root: Path, executor=None,
                    progress=io.stderr) -> expectations.SuiteResult:
    """The stage's path: `validate` over the shards of `pairs`, as datatrove passes."""
    suite = expectations.with_kwargs(suite, ROW_COUNT, min_value=params.min_rows)
    pairs = pairs.resolve()  # the passes' tasks may run on other machines or in other folders (Slurm, Ray)
    inputs = shards.shard_files(pairs, "the clean stage", schema.PAIRS.names)
    scratch = sharded.scratch_dir(scratch_root, params=as_dict(params) | {"suite": suite_dict(suite)},
                                  inputs=inputs, stage=Path(__file__))
    passes = expectations_sharded.passes(suite, pairs, schema.PAIRS.names, "pair_id", "the clean stage",
                                         params.batch_rows, params.report_samples, scratch)
    sharded.run_passes(STAGE, passes, scratch, executor, progress)
    result = expectations_sharded.result(suite, "pair_id", params.report_samples, scratch, tasks=len(inputs))
    shutil.rmtree(scratch)
    return result


def summarize(result: expectations.SuiteResult) -> dict:
    """Metrics: how much was checked, how much failed, and each expectation's outcome by name."""
    by_name: dict[str, dict] = {}
    for r in result.results:
        key, n = r.name, 1
        while key in by_name:  # two expectations of one type on one column: name them #2, #3
            n += 1
            key = f"{r.name}#{n}"
        by_name[key] = {"success": r.success, "unexpected_count": r.unexpected_count}
    return {
        "rows": result.rows,
        "expectations": len(result.results),
        "failed": len(result.failed),
        "success": result.success,
        "results": by_name,
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    for name in ("--pairs", "--suite", "--out", "--scratch", "--report", "--metrics"):
        parser.add_argument(name, type=Path, required=True)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args(argv)
    with errors.reported(STAGE):
        params = load_section(STAGE, args.params)
        result = validate_shards(args.pairs, expectations.load_suite(args.suite), params, args.scratch,
                                 executor=executors.executor_config())
        io.write_text(expectations_report.render_report(result, title="validate: instruction/response pairs"),
                      args.report)
        io.write_json(summarize(result), args.metrics)
        if not result.success:
            # a previous run's pairs must not pass for validated ones
            shutil.rmtree(args.out, ignore_errors=True)
            raise errors.GateFailed(f"{args.pairs} failed {args.suite}:\n"
                                    f"{expectations_report.failure_message(result)}\n"
                                    f"report: {args.report}")
        with io.atomic_dir(args.out) as tmp:  # the validated pairs are the input, unchanged
            for path in shards.shard_files(args.pairs, "the clean stage"):
                shutil.copyfile(path, tmp / path.name)
    io.stderr(f"validate: {result.rows} pairs passed {len(result.results)} expectations")


if __name__ == "__main__":
    main()
