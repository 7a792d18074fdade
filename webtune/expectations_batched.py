"""run_suite over a table that arrives in batches, with memory bounded by one batch.

    result = run_suite_batched(suite, batches, id_column="pair_id", samples=5)   # validate
    checks = [check_batch(suite, df, "pair_id", 5) for df in batches]            # format, in workers
    result = combine(suite, checks, "pair_id", 5)

Row-level expectations run on each batch and their outcomes add up; the ones in WHOLE_TABLE need every
row at once and run at the end on a slim frame of ids and digests.
"""

import dataclasses
import hashlib
from collections.abc import Iterable

import pandas as pd
import pyarrow as pa

from webtune.expectations import ExpectationResult, SuiteResult, gx, run_suite, suite_dict

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


def row_level(suite: gx.ExpectationSuite) -> gx.ExpectationSuite:
    """The suite less its whole-table expectations: what can run on each batch alone."""
    data, rows, _ = _split(suite)
    return _subsuite(data, rows)


def add_up(per_batch: list[SuiteResult], samples: int) -> list[ExpectationResult]:
    """The row-level expectations' outcomes over all batches: counts summed, the first `samples` ids."""
    added = []
    for j, first in enumerate(per_batch[0].results):
        results = [b.results[j] for b in per_batch]
        counts = [r.unexpected_count for r in results if r.unexpected_count is not None]
        added.append(dataclasses.replace(
            first,
            success=all(r.success for r in results),
            unexpected_count=sum(counts) if counts else None,
            element_count=sum(r.element_count or 0 for r in results),
            sample_ids=tuple(x for r in results for x in r.sample_ids)[:samples],
            error=next((r.error for r in results if r.error), None),
        ))
    return added


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
    if row_idx:
        for i, r in zip(row_idx, add_up([c.rows for c in checks], samples), strict=True):
            results[i] = r
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
