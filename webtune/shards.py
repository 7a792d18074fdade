"""Shard folders: how the data half's tables are stored (`data/raw/docs/`, `data/clean/pairs/`, ...).

A table is a folder of Parquet files named `00000.parquet`, `00001.parquet`, ... (one per task of the
stage that wrote it), read in name order as one table. Every task writes its shard even when it has no
rows, so a folder written by `tasks` tasks always holds exactly `tasks` files and a reader never has
to guess whether a missing shard was empty or lost.

Tasks read contiguous runs of their input's shards (`contiguous_shard`): task 0 the first files, task 1
the next ones. datatrove's readers stride instead (files[rank::world_size]); contiguous runs keep
"(task, row)" order equal to the input's order, which is what "the first copy of a document wins" and
"the same output whatever the number of tasks" rest on.
"""

import os
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from datatrove.io import get_datafolder

from webtune import io
from webtune.errors import InputError

SUFFIX = ".parquet"


def shard_name(rank: int) -> str:
    return f"{rank:05d}{SUFFIX}"


def shard_files(folder: str | Path, written_by: str, columns: list[str] | None = None) -> list[Path]:
    """The shards of a table folder in order; InputError naming the folder if it is missing or empty, or
    naming the first shard that is not Parquet or lacks one of `columns` (when given)."""
    folder = Path(folder)
    if folder.is_file():
        raise InputError(f"{folder}: a single file where a folder of shards is expected "
                         f"(an older version of {written_by} wrote it: re-run that stage)")
    files = sorted(folder.glob(f"*{SUFFIX}")) if folder.is_dir() else []
    if not files:
        raise InputError(f"{folder}: no shards (*{SUFFIX}); was it written by {written_by}?")
    for path in files if columns else ():
        io.parquet_file(path, columns, written_by)
    return files


def contiguous_shard(n_files: int, rank: int, world_size: int) -> range:
    """The indices of the input files task `rank` of `world_size` reads: a contiguous run, the runs
    ordered by rank and covering all files; sizes differ by at most one."""
    per, extra = divmod(n_files, world_size)
    start = rank * per + min(rank, extra)
    return range(start, start + per + (rank < extra))


def task_batches(folder: str | Path, columns: list[str], written_by: str, batch_rows: int, rank: int = 0,
                 world_size: int = 1) -> Iterator[pa.RecordBatch]:
    """The record batches of task `rank`'s contiguous run of shards, in order (rank 0 of 1: the whole
    folder read as one table, streamed)."""
    files = shard_files(folder, written_by)
    for k in contiguous_shard(len(files), rank, world_size):
        yield from io.parquet_file(files[k], columns, written_by).iter_batches(batch_size=batch_rows,
                                                                                columns=columns)


def num_rows(folder: str | Path, written_by: str) -> int:
    return sum(pq.ParquetFile(p).metadata.num_rows for p in shard_files(folder, written_by))


def read_table(folder: str | Path, columns: list[str], written_by: str) -> pa.Table:
    """The whole table (small tables only: it is read into memory)."""
    tables = [io.parquet_file(p, columns, written_by).read(columns=columns)
              for p in shard_files(folder, written_by)]
    return pa.concat_tables(tables)


def replace_dir(src: str | Path, dst: str | Path) -> None:
    """Move the finished folder `src` (same filesystem) onto `dst`, replacing what was there."""
    with io.atomic_dir(dst) as tmp:
        os.replace(src, tmp)  # a rename onto atomic_dir's empty temp folder, which then replaces dst


def write_shards(table: pa.Table, folder: str | Path, schema: pa.Schema, rows_per_shard: int) -> int:
    """Write `table` as shards of at most rows_per_shard rows (at least one, maybe empty), replacing
    `folder` atomically; return the number of shards."""
    table = table.select(schema.names).cast(schema)
    n = max(1, -(-table.num_rows // rows_per_shard))
    with io.atomic_dir(folder) as tmp:
        for i in range(n):
            pq.write_table(table.slice(i * rows_per_shard, rows_per_shard), tmp / shard_name(i),
                           compression="zstd")
    return n


class Sink:
    """Rows -> one Parquet shard of a (scratch or output) folder, flushed every `batch` rows, created even
    when no row comes (a folder of `tasks` shards always has `tasks` files)."""

    def __init__(self, folder, rank: int, table_schema: pa.Schema, batch: int = 2048):
        self.file = get_datafolder(str(folder)).open(shard_name(rank), "wb")
        self.writer = pq.ParquetWriter(self.file, table_schema, compression="zstd")
        self.schema, self.batch, self.rows = table_schema, batch, []

    def add(self, row: dict) -> None:
        self.rows.append(row)
        if len(self.rows) >= self.batch:
            self.flush()

    def add_batch(self, batch: pa.RecordBatch) -> None:
        """Rows already in Arrow (of this schema), after those added before."""
        self.flush()
        if batch.num_rows:
            self.writer.write_batch(batch)

    def flush(self) -> None:
        if self.rows:
            self.writer.write_table(pa.Table.from_pylist(self.rows, schema=self.schema))
            self.rows = []

    def close(self) -> None:
        self.flush()
        self.writer.close()
        self.file.close()
