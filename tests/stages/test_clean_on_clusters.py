"""clean on a real Slurm and a real Ray (tests/cluster.py starts both), reached as a user reaches theirs
(SLURM_CONF / RAY_ADDRESS and WEBTUNE_EXECUTOR): the same `clean.tasks` write the bytes the local executor
writes. (validate and format run their passes through the same seam.)"""

import dataclasses

import pyarrow as pa
import pytest

from stages import clean as C
from tests.cluster import LOOPBACK_RAY, RayHead
from tests.stages.test_clean import OUTS, doc, shard_bytes
from tests.webtune.cleaning.test_text import prose
from tests.webtune.test_executors_cluster import REPO, slurm  # noqa: F401 (a fixture)
from webtune import shards
from webtune.executors import ExecutorConfig, executor_config
from webtune.params import load_section
from webtune.schema import RAW_DOCS

TASKS = 2
PARAMS = REPO + "/params.yaml"


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    rows = [doc(f"d{i}", prose(i, 5)) for i in range(30)] + [doc("dup", prose(4, 5))]
    folder = tmp_path_factory.mktemp("raw") / "raw"
    shards.write_shards(pa.Table.from_pylist(rows, schema=RAW_DOCS), folder, RAW_DOCS, 5)
    return folder


def run_clean(raw, folder, executor) -> dict:
    """clean's four passes with `executor`; every output shard's bytes."""
    out = {n: folder / n for n in OUTS}
    clean = dataclasses.replace(load_section("clean", PARAMS), tasks=TASKS)
    C.clean(raw, out, folder / "scratch", clean, executor, progress=lambda line: None)
    return {n: shard_bytes(out[n]) for n in OUTS}


@pytest.fixture(scope="module")
def local_bytes(raw, tmp_path_factory):
    return run_clean(raw, tmp_path_factory.mktemp("local"), ExecutorConfig("local"))


def test_clean_on_slurm_writes_the_local_bytes(raw, local_bytes, slurm, tmp_path,  # noqa: F811
                                                           monkeypatch):
    monkeypatch.setenv("SLURM_CONF", str(slurm.conf))
    config = tmp_path / "executor.yaml"
    config.write_text("executor: slurm\nslurm:\n  time: '00:10:00'\n  mem_per_cpu_gb: 2\n"
                      "  poll_seconds: 0.5\n")
    assert run_clean(raw, tmp_path, executor_config(path=config)) == local_bytes
    assert slurm.queue() == ""


def test_clean_on_ray_writes_the_local_bytes(raw, local_bytes, tmp_path, monkeypatch):
    for key, value in LOOPBACK_RAY.items():
        monkeypatch.setenv(key, value)
    with RayHead() as head:
        monkeypatch.setenv("RAY_ADDRESS", head.address)
        monkeypatch.setenv("WEBTUNE_EXECUTOR", "ray")
        on_ray = run_clean(raw, tmp_path, executor_config(path=tmp_path / "absent.yaml"))
    assert on_ray == local_bytes
