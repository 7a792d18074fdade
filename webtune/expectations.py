"""Run a Great Expectations suite on a table and explain the result: the gate shared by validate and format.

    suite = load_suite("expectations/pairs.json")
    result = run_suite(suite, df, id_column="pair_id", samples=5)
    write_text(render_report(result, "Validate: pairs"), report)
    check(result)  # raises ExpectationsFailed naming each failed expectation and sample row ids

Suites live in JSON files and are the single source of truth for thresholds; every expectation carries
`meta.why`, the reason it exists, which the report repeats next to the outcome.

Row ids of failing rows come from GE itself: result_format `unexpected_index_column_names=[id_column]`
makes each column-map expectation return `partial_unexpected_index_list`, one dict per failing row
({<column>: value, <id_column>: id}), capped at `partial_unexpected_count` (= samples). SUMMARY mode, so
a 100k-row failure costs `samples` ids, not the whole unexpected list. Table-level expectations (row
count) have no rows to blame: they report GE's `observed_value` instead.
"""

import copy
import dataclasses
import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")  # before importing gx: no network calls from a stage

import great_expectations as gx  # noqa: E402
from great_expectations.data_context.types.base import ProgressBarsConfig  # noqa: E402

from webtune import io  # noqa: E402
from webtune.errors import GateFailed, InputError  # noqa: E402
from webtune.params import at_least, knob  # noqa: E402


@dataclasses.dataclass(frozen=True)
class ValidateParams:
    min_rows: int = knob(at_least(0))
    report_samples: int = knob(at_least(0), report=True)
    batch_rows: int = knob(at_least(1))


class ExpectationsFailed(GateFailed):
    """A suite failed; the message names every failed expectation with sample row ids."""

    def __init__(self, result: "SuiteResult"):
        super().__init__(failure_message(result))
        self.result = result


@dataclasses.dataclass(frozen=True)
class ExpectationResult:
    type: str
    kwargs: dict[str, Any]
    success: bool
    why: str
    unexpected_count: int | None = None  # None for table-level expectations (row count)
    element_count: int | None = None
    sample_ids: tuple[str, ...] = ()
    observed: Any = None  # observed_value of table-level expectations
    error: str | None = None  # GE could not evaluate it (e.g. a missing column): counts as failed

    @property
    def name(self) -> str:
        """`type[column]`: a stable key for metrics files."""
        cols = [str(self.kwargs[k]) for k in ("column", "column_A", "column_B") if k in self.kwargs]
        return f"{self.type}[{','.join(cols)}]" if cols else self.type

    def describe(self) -> str:
        """`expect_x(column=c, min_value=1)` with long values cut, for one-line messages."""
        args = ", ".join(f"{k}={_short(v)}" for k, v in self.kwargs.items())
        return f"{self.type}({args})"

    def outcome(self) -> str:
        if self.error is not None:
            return f"error: {self.error}"
        if self.unexpected_count is not None:
            return f"{self.unexpected_count} of {self.element_count} rows unexpected"
        return f"observed {self.observed}"


@dataclasses.dataclass(frozen=True)
class SuiteResult:
    suite: str
    id_column: str
    rows: int
    success: bool
    results: tuple[ExpectationResult, ...]

    @property
    def failed(self) -> tuple[ExpectationResult, ...]:
        return tuple(r for r in self.results if not r.success)


def _short(value, limit: int = 80) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def suite_dict(suite: gx.ExpectationSuite) -> dict:
    """The suite as plain JSON data, without GE's random `id` fields (so files diff cleanly)."""
    data = suite.to_json_dict()
    data.pop("id", None)
    for e in data["expectations"]:
        e.pop("id", None)
    return data


def load_suite(path: str | Path) -> gx.ExpectationSuite:
    """Read a suite JSON file; every expectation must say why it exists (meta.why)."""
    try:
        data = json.loads(Path(path).read_text())
    except json.JSONDecodeError as e:
        raise InputError(f"{path}:{e.lineno}: not a JSON suite ({e.msg})") from None
    for i, e in enumerate(data.get("expectations", [])):
        if not (e.get("meta") or {}).get("why"):
            raise InputError(f"{path}: expectation {i} ({e.get('type')}) has no meta.why")
    return gx.ExpectationSuite(**data)


def save_suite(suite: gx.ExpectationSuite, path: str | Path) -> None:
    io.write_json(suite_dict(suite), path)  # sorted keys, atomic


def with_kwargs(suite: gx.ExpectationSuite, expectation_type: str, **kwargs) -> gx.ExpectationSuite:
    """A copy of `suite` with `kwargs` set on every expectation of `expectation_type` (a run-time override).

    Raises ValueError if the suite has none, so an override never silently applies to nothing.
    """
    data = copy.deepcopy(suite_dict(suite))
    targets = [e for e in data["expectations"] if e["type"] == expectation_type]
    if not targets:
        raise InputError(f"suite {data['name']!r} has no {expectation_type} to override")
    for e in targets:
        e["kwargs"].update(kwargs)
    return gx.ExpectationSuite(**data)


def run_suite(
    suite: gx.ExpectationSuite, df: pd.DataFrame | pa.Table, id_column: str, samples: int
) -> SuiteResult:
    """Validate `df` against `suite`; per expectation: outcome, unexpected count, up to `samples` row ids."""
    if isinstance(df, pa.Table):
        df = df.to_pandas()
    if id_column not in df.columns:
        raise ValueError(f"id column {id_column!r} not in table (columns: {', '.join(df.columns)})")
    assert samples >= 0, f"samples must be >= 0, got {samples}"

    # An ephemeral context costs ~10 ms (importing gx is the 2 s part), so each run gets a fresh one.
    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
    batch = (
        context.data_sources.add_pandas("pandas")
        .add_dataframe_asset("table")
        .add_batch_definition_whole_dataframe("whole")
        .get_batch(batch_parameters={"dataframe": df})
    )
    # A fresh copy added to the context: GE gives each expectation an id, which maps results
    # (returned in GE's own order) back to the suite's order.
    bound = context.suites.add(gx.ExpectationSuite(**suite_dict(suite)))
    order = {e.id: i for i, e in enumerate(bound.expectations)}
    why = {e.id: (e.meta or {}).get("why", "") for e in bound.expectations}
    validation = batch.validate(
        bound,
        result_format={
            "result_format": "SUMMARY",
            "unexpected_index_column_names": [id_column],
            "partial_unexpected_count": samples,
        },
    )

    results = []
    for r in sorted(validation.results, key=lambda r: order[r.expectation_config.id]):
        config, res = r.expectation_config, r.result or {}
        error = None
        if r.exception_info and r.exception_info.get("raised_exception") is not False:
            # a failed metric is reported as {metric_id: {exception_message, ...}}
            infos = [r.exception_info, *[v for v in r.exception_info.values() if isinstance(v, dict)]]
            error = next((i["exception_message"] for i in infos if i.get("exception_message")), "raised")
        ids = tuple(str(row[id_column]) for row in res.get("partial_unexpected_index_list") or [])
        results.append(
            ExpectationResult(
                type=config.type,
                kwargs={k: v for k, v in config.kwargs.items() if k not in ("batch_id", "result_format")},
                success=bool(r.success) and error is None,
                why=why[config.id],
                unexpected_count=res.get("unexpected_count"),
                element_count=res.get("element_count"),
                sample_ids=ids[:samples],
                observed=res.get("observed_value"),
                error=error,
            )
        )
    return SuiteResult(
        suite=bound.name,
        id_column=id_column,
        rows=len(df),
        success=all(r.success for r in results),
        results=tuple(results),
    )


# Expectations that need every row at once. run_suite_batched runs them on a slim frame (the id column and a
# 16-byte digest of each column checked for uniqueness), so memory per row stays ~100 bytes, not the text
# size.
WHOLE_TABLE = ("expect_table_row_count_to_be_between", "expect_column_values_to_be_unique")


def _digest(value) -> str | None:
    return None if value is None else hashlib.blake2b(str(value).encode(), digest_size=16).hexdigest()


@dataclasses.dataclass(frozen=True)
class BatchCheck:
    """One batch's share of a batched run: its row-level outcome and its slim frame."""

    rows: SuiteResult | None  # the row-level expectations on this batch (None if the suite has none)
    slim: pd.DataFrame  # id column + digests of the columns whole-table expectations look at


def _split(suite: gx.ExpectationSuite) -> tuple[dict, list[int], list[int]]:
    data = suite_dict(suite)
    whole = [i for i, e in enumerate(data["expectations"]) if e["type"] in WHOLE_TABLE]
    rows = [i for i, e in enumerate(data["expectations"]) if e["type"] not in WHOLE_TABLE]
    return data, rows, whole


def _subsuite(data: dict, indexes: list[int]) -> gx.ExpectationSuite:
    return gx.ExpectationSuite(**(data | {"expectations": [data["expectations"][i] for i in indexes]}))


def check_batch(suite: gx.ExpectationSuite, df: pd.DataFrame | pa.Table, id_column: str,
                samples: int) -> BatchCheck:
    """The per-batch half of run_suite_batched (safe to run in a worker process)."""
    if isinstance(df, pa.Table):
        df = df.to_pandas()
    data, row_idx, whole_idx = _split(suite)
    unique = sorted({data["expectations"][i]["kwargs"]["column"] for i in whole_idx
                     if data["expectations"][i]["type"] == "expect_column_values_to_be_unique"} - {id_column})
    rows = run_suite(_subsuite(data, row_idx), df, id_column, samples) if row_idx else None
    slim = pd.DataFrame({id_column: df[id_column].to_numpy()}
                        | {c: df[c].map(_digest).to_numpy() for c in unique if c in df.columns})
    return BatchCheck(rows=rows, slim=slim)


def combine(suite: gx.ExpectationSuite, checks: list[BatchCheck], id_column: str,
            samples: int) -> SuiteResult:
    """The whole-table half: add up the batches' row-level outcomes, run WHOLE_TABLE on the slim frames."""
    if not checks:
        raise ValueError("no batches (check an empty frame for an empty table)")
    data, row_idx, whole_idx = _split(suite)
    slim = pd.concat([c.slim for c in checks], ignore_index=True)
    results: list[ExpectationResult | None] = [None] * len(data["expectations"])
    if whole_idx:
        for i, r in zip(whole_idx, run_suite(_subsuite(data, whole_idx), slim, id_column, samples).results,
                        strict=True):
            results[i] = r
    for j, i in enumerate(row_idx):
        per_batch = [c.rows.results[j] for c in checks]
        counts = [r.unexpected_count for r in per_batch if r.unexpected_count is not None]
        results[i] = dataclasses.replace(
            per_batch[0],
            success=all(r.success for r in per_batch),
            unexpected_count=sum(counts) if counts else None,
            element_count=sum(r.element_count or 0 for r in per_batch),
            sample_ids=tuple(x for r in per_batch for x in r.sample_ids)[:samples],
            error=next((r.error for r in per_batch if r.error), None),
        )
    return SuiteResult(suite=data["name"], id_column=id_column, rows=len(slim),
                       success=all(r.success for r in results), results=tuple(results))


def run_suite_batched(
    suite: gx.ExpectationSuite, batches: Iterable[pd.DataFrame], id_column: str, samples: int
) -> SuiteResult:
    """run_suite over a table that arrives in batches, with memory bounded by one batch.

    Row-level expectations run on each batch and their outcomes add up (counts summed, the first
    `samples` ids kept). Whole-table ones (WHOLE_TABLE) run once at the end on the slim frames, where
    equal digests stand for equal values. `batches` must yield at least one frame (empty is fine).
    """
    return combine(suite, [check_batch(suite, df, id_column, samples) for df in batches], id_column, samples)


def failure_message(result: SuiteResult) -> str:
    """A headline, then one line per failed expectation: what it checks, how badly, which rows."""
    failed = result.failed
    lines = [
        f"{len(failed)} of {len(result.results)} expectations failed "
        f"(suite {result.suite}, {result.rows} rows)"
    ]
    for r in failed:
        line = f"  {r.describe()}: {r.outcome()}"
        if r.sample_ids:
            line += f"; sample {result.id_column}: {', '.join(r.sample_ids)}"
        lines.append(line)
    return "\n".join(lines)


def check(result: SuiteResult) -> None:
    """Raise ExpectationsFailed if any expectation failed."""
    if not result.success:
        raise ExpectationsFailed(result)


def _cell(value) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def render_report(result: SuiteResult, title: str) -> str:
    """Markdown: a headline, then a table of every expectation in suite order."""
    n, n_failed = len(result.results), len(result.failed)
    if result.success:
        headline = f"**PASSED**: all {n} expectations met on {result.rows:,} rows (suite `{result.suite}`)."
    else:
        headline = (f"**FAILED**: {n_failed} of {n} expectations failed on {result.rows:,} rows "
                    f"(suite `{result.suite}`).")
    lines = [
        f"# {title}",
        "",
        headline,
        "",
        f"| result | expectation | arguments | outcome | sample {result.id_column} | why |",
        "|---|---|---|---|---|---|",
    ]
    for r in result.results:
        args = ", ".join(f"{k}={_short(v, 60)}" for k, v in r.kwargs.items())
        lines.append(
            "| "
            + " | ".join(
                _cell(c)
                for c in (
                    "pass" if r.success else "**FAIL**",
                    f"`{r.type}`",
                    f"`{args}`" if args else "",
                    r.outcome(),
                    ", ".join(r.sample_ids),
                    r.why,
                )
            )
            + " |"
        )
    return "\n".join(lines) + "\n"
