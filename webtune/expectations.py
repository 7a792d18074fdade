"""Run a Great Expectations suite on a table: the gate shared by validate and format.

    suite = load_suite("expectations/pairs.json")
    result = run_suite(suite, df, id_column="pair_id", samples=5)
    write_text(render_report(result, "Validate: pairs"), report)  # webtune.expectations_report
    check(result)  # raises ExpectationsFailed naming each failed expectation and sample row ids

A table that arrives in batches runs through webtune.expectations_batched (memory bounded by one batch);
webtune.expectations_report puts a result into words: the failure message, the markdown report, `check`.

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
import json
import os
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")  # before importing gx: no network calls from a stage

import great_expectations as gx  # noqa: E402
from great_expectations.data_context.types.base import ProgressBarsConfig  # noqa: E402

from webtune import io  # noqa: E402
from webtune.errors import InputError  # noqa: E402
from webtune.params import at_least, knob  # noqa: E402


@dataclasses.dataclass(frozen=True)
class ValidateParams:
    min_rows: int = knob(at_least(0))
    report_samples: int = knob(at_least(0), report=True)
    batch_rows: int = knob(at_least(1))


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
        args = ", ".join(f"{k}={shorten(v)}" for k, v in self.kwargs.items())
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


def shorten(value, limit: int = 80) -> str:
    """`value` as text (JSON unless a string), cut to `limit` characters with "..."."""
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


def with_kwargs(suite: gx.ExpectationSuite, expectation_type: str, *, on_column: str | None = None,
                **kwargs) -> gx.ExpectationSuite:
    """A copy of `suite` with `kwargs` set on every expectation of `expectation_type` (a run-time override),
    only those on column `on_column` when given.

    Raises InputError if the suite has none, so an override never silently applies to nothing.
    """
    data = copy.deepcopy(suite_dict(suite))
    targets = [e for e in data["expectations"] if e["type"] == expectation_type
               and on_column in (None, e["kwargs"].get("column"))]
    if not targets:
        on = f" on column {on_column!r}" if on_column else ""
        raise InputError(f"suite {data['name']!r} has no {expectation_type}{on} to override")
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
