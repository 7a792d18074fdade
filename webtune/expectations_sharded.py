"""A Great Expectations suite over a folder of shards, as datatrove passes: the gate of validate (and
format) at any scale.

    check  one task per shard: GE runs the suite's row-level expectations on each batch of the shard
           (webtune.expectations_batched.check_batch); each column the suite wants unique is hashed
           with datatrove's exact-dedup signature step.
    find   one task: datatrove's ExactFindDedups merges the sorted signatures of every shard, per
           column, and writes which rows repeat a value.

`result` then adds the shards' row-level outcomes and builds the two whole-table expectations from the
engine's output, as GE would on the whole table: the row count, and for uniqueness every row whose value
another row also has (GE's own check needs the whole column in memory; the engine's is disk-backed).
"""

import dataclasses
import pickle
from pathlib import Path

import numpy as np
from datatrove.data import Document
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.dedup.exact_dedup import ExactDedupConfig, ExactDedupSignature, ExactFindDedups
from datatrove.utils.hashing import HashConfig
from datatrove.utils.typeshelper import ExtensionHelperSD

from webtune import expectations_batched, shards
from webtune.expectations import ExpectationResult, SuiteResult, gx, suite_dict

ROW_COUNT, UNIQUE = "expect_table_row_count_to_be_between", "expect_column_values_to_be_unique"


def unique_columns(suite: gx.ExpectationSuite) -> list[str]:
    return sorted({e["kwargs"]["column"] for e in suite_dict(suite)["expectations"] if e["type"] == UNIQUE})


class Column:
    """A picklable content getter (Slurm and Ray pickle the pipeline): the value of one column."""

    def __init__(self, name: str):
        self.name = name

    def __call__(self, doc: Document) -> str:
        return doc.metadata[self.name]


def dedup_config(column: str) -> ExactDedupConfig:
    # sha1: datatrove's default xxhash name fails with xxhash 4 ("Strings must be encoded")
    return ExactDedupConfig(content_getter=Column(column),
                            hash_config=HashConfig(precision=64, hash_fc="sha1"))


class Gate:
    """One task's share of the gate: the row-level outcome of each batch it checks, the ids of the rows
    in order, and the signatures of the unique columns. `close` writes them under `scratch`."""

    def __init__(self, suite: dict, scratch: str | Path, rank: int, id_column: str, samples: int):
        suite = gx.ExpectationSuite(**suite)
        self.row_suite = expectations_batched.row_level(suite)
        self.unique = unique_columns(suite)
        self.sigs = {c: ExactDedupSignature(f"{scratch}/sigs/{c}", dedup_config(c)) for c in self.unique}
        self.hashes: dict[str, list] = {c: [] for c in self.unique}
        self.scratch, self.rank, self.id_column, self.samples = Path(scratch), rank, id_column, samples
        self.checks, self.ids = [], []

    def add(self, df) -> None:
        """Check one batch (a pandas DataFrame holding every column the suite looks at)."""
        check = expectations_batched.check_batch(self.row_suite, df, self.id_column, self.samples)
        self.checks.append(check.rows)
        start = len(self.ids)
        self.ids += df[self.id_column].tolist()
        rows = df[self.unique].itertuples(index=False) if self.unique else ()
        for i, values in enumerate(rows, start):
            doc = Document(text="", id="", metadata=dict(zip(self.unique, values, strict=True)))
            for c in self.unique:
                self.hashes[c].extend(self.sigs[c].get_hashes(doc, i))

    def close(self) -> None:
        for c in self.unique:
            self.sigs[c].save_hashes(self.rank, self.hashes[c])
        path = self.scratch / "checks" / f"{self.rank:05d}.pkl"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(pickle.dumps({"rows": len(self.ids), "checks": [c for c in self.checks if c]}))
        # the ids apart: the merge reads only those of tasks with a repeated value
        (self.scratch / "ids").mkdir(parents=True, exist_ok=True)
        (self.scratch / "ids" / f"{self.rank:05d}.txt").write_text("\n".join(map(str, self.ids)))


class CheckShard(PipelineStep):
    """Task r: the gate on every batch of its contiguous run of the shards of `folder`."""

    name = "check shard"
    type = "webtune"

    def __init__(self, suite: dict, folder: str | Path, columns: list[str], id_column: str, written_by: str,
                 batch_rows: int, samples: int, scratch: str | Path):
        super().__init__()
        self.suite, self.folder, self.columns, self.id_column = suite, str(folder), columns, id_column
        self.written_by, self.batch_rows, self.samples, self.scratch = written_by, batch_rows, samples, \
            str(scratch)

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        gate = Gate(self.suite, self.scratch, rank, self.id_column, self.samples)
        for batch in shards.task_batches(self.folder, self.columns, self.written_by, self.batch_rows, rank,
                                         world_size):
            gate.add(batch.to_pandas())
        gate.close()


def find_pass(suite: gx.ExpectationSuite, scratch: Path) -> list[tuple[str, list, int]]:
    """The one-task pass that finds repeated values of the suite's unique columns (none if it has none)."""
    find = [ExactFindDedups(f"{scratch}/sigs/{c}", f"{scratch}/dups/{c}", dedup_config(c))
            for c in unique_columns(suite)]
    return [("find", find, 1)] if find else []


def passes(suite: gx.ExpectationSuite, folder: Path, columns: list[str], id_column: str, written_by: str,
           batch_rows: int, samples: int, scratch: Path) -> list[tuple[str, list, int]]:
    """(name, pipeline, tasks) of the check and find passes over the shards of `folder`."""
    n = len(shards.shard_files(folder, written_by))
    check = CheckShard(suite_dict(suite), folder, columns, id_column, written_by, batch_rows, samples,
                       scratch)
    return [("check", [check], n), *find_pass(suite, scratch)]


def result(suite: gx.ExpectationSuite, id_column: str, samples: int, scratch: Path,
           tasks: int) -> SuiteResult:
    """The suite's outcome on every row the `tasks` gates checked, from what the passes left in
    `scratch`."""
    parts = [pickle.loads((scratch / "checks" / f"{r:05d}.pkl").read_bytes()) for r in range(tasks)]
    rows = sum(p["rows"] for p in parts)
    data = suite_dict(suite)
    row_level = [c for p in parts for c in p["checks"]]
    summed = iter(expectations_batched.add_up(row_level, samples) if row_level else ())
    results = []
    for e in data["expectations"]:
        base = ExpectationResult(type=e["type"], kwargs=e["kwargs"], success=True,
                                 why=(e.get("meta") or {}).get("why", ""))
        if e["type"] == ROW_COUNT:
            low, high = e["kwargs"].get("min_value"), e["kwargs"].get("max_value")
            ok = (low is None or rows >= low) and (high is None or rows <= high)
            results.append(dataclasses.replace(base, success=ok, observed=rows))
        elif e["type"] == UNIQUE:
            repeated = _repeated_rows(scratch / "dups" / e["kwargs"]["column"], tasks)
            ids = tuple(_ids(scratch, repeated[:samples]))
            results.append(dataclasses.replace(base, success=not repeated, unexpected_count=len(repeated),
                                               element_count=rows, sample_ids=ids))
        else:
            results.append(next(summed))
    return SuiteResult(suite=data["name"], id_column=id_column, rows=rows,
                       success=all(r.success for r in results), results=tuple(results))


def _repeated_rows(dups: Path, tasks: int) -> list[tuple[int, int]]:
    """(task, row) of every row whose value another row has: ExactFindDedups names the later copies
    (.c4_dup) and the first copy of each repeated value with its count (.c4_counts)."""
    found = []
    for r in range(tasks):
        for f in dups.glob(f"*/{r:05d}{ExtensionHelperSD.stage_2_duplicates}"):
            found += [(r, int(i)) for i in np.fromfile(f, dtype="<u4")]
        for f in dups.glob(f"*/{r:05d}{ExtensionHelperSD.stage_2_counts}"):
            found += [(r, int(i)) for i in np.fromfile(f, dtype="<u4").reshape(-1, 2)[:, 0]]
    return sorted(set(found))


def _ids(scratch: Path, rows: list[tuple[int, int]]) -> list[str]:
    """The ids of (task, row) rows, reading only the tasks named."""
    ids = {t: (scratch / "ids" / f"{t:05d}.txt").read_text().split("\n") for t in {t for t, _ in rows}}
    return [ids[t][i] for t, i in rows]
