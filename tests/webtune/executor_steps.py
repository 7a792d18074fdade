"""Toy datatrove pipelines for the executor tests: real reader and writer, one small step of our own.

Every class here is module-level so that Slurm (dill), Ray (cloudpickle) and forkserver workers import
it by name, as they would import a step from `webtune`; the workers need this repository on their
PYTHONPATH (the tests set it).
"""

import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.readers import ParquetReader
from datatrove.pipeline.writers import ParquetWriter

from tests.toys import TEXTS


class Shout(PipelineStep):
    """Upper-cases each document; raises on `fail_rank` (a task that crashes mid-stream)."""

    name = "shout"
    type = "toy"

    def __init__(self, fail_rank: int | None = None):
        super().__init__()
        self.fail_rank = fail_rank

    def run(self, data, rank: int = 0, world_size: int = 1):
        for i, doc in enumerate(data):
            if rank == self.fail_rank and i == 1:
                raise RuntimeError(f"toy failure on rank {rank}")
            doc.text = doc.text.upper()
            self.stat_update("shouted")
            yield doc


class RecordProcess(PipelineStep):
    """Writes the id of the process running the task to `folder`/<rank>; passes documents on."""

    name = "record process"
    type = "toy"

    def __init__(self, folder: Path):
        super().__init__()
        self.folder = folder

    def run(self, data, rank: int = 0, world_size: int = 1):
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / str(rank)).write_text(str(os.getpid()))
        yield from data or ()


def write_inputs(folder: Path, files: int = 3, docs_per_file: int = 4) -> Path:
    """`files` small Parquet files of (id, text) rows from the toy corpus: one per task."""
    folder.mkdir(parents=True, exist_ok=True)
    for f in range(files):
        rows = TEXTS[f * docs_per_file:(f + 1) * docs_per_file]
        table = pa.table({"id": [f"doc-{f}-{i}" for i in range(len(rows))], "text": rows})
        pq.write_table(table, folder / f"part-{f}.parquet")
    return folder


def pipeline(inputs: Path, output: Path, fail_rank: int | None = None) -> list[PipelineStep]:
    """Read `inputs` (datatrove shards them by file: files[rank::tasks]), shout, write ${rank}.parquet."""
    return [
        ParquetReader(str(inputs)),
        Shout(fail_rank),
        ParquetWriter(str(output), output_filename="${rank}.parquet"),
    ]


def outputs(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` by relative name: what byte-identity is asserted on."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}
