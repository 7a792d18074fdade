"""webtune.shards: the Sink that writes one task's shard."""

import pyarrow as pa
import pyarrow.parquet as pq

from webtune import shards

SCHEMA = pa.schema([("id", pa.string()), ("n", pa.int64())])


def test_a_sink_keeps_rows_and_arrow_batches_in_the_order_they_were_added(tmp_path):
    sink = shards.Sink(tmp_path, 3, SCHEMA, batch=2)
    sink.add({"id": "a", "n": 1})
    sink.add_batch(pa.record_batch([pa.array(["b", "c"]), pa.array([2, 3])], schema=SCHEMA))
    sink.add_batch(pa.record_batch([pa.array([], pa.string()), pa.array([], pa.int64())], schema=SCHEMA))
    sink.add({"id": "d", "n": 4})
    sink.close()
    written = pq.ParquetFile(tmp_path / "00003.parquet")
    assert written.read().to_pylist() == [{"id": k, "n": n} for n, k in enumerate("abcd", 1)]
    assert written.metadata.num_row_groups == 3  # the pending row, the batch, the last row: none empty
