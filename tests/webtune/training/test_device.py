"""Where the TRL loop trains (webtune.training.device): precision picked by train.hf.precision, the run's
first progress line, threads shared out over processes, and fsdp_offload refused on a CPU."""

import pytest

from webtune.training import TrainError
from webtune.training import device as D


def test_an_explicit_precision_is_taken_as_it_is_and_auto_follows_the_cpu(monkeypatch):
    assert (D.pick_precision("fp32", cuda=True), D.pick_precision("bf16", cuda=False)) == ("fp32", "bf16")
    monkeypatch.setattr(D, "native_cpu_bf16", lambda: False)
    assert D.pick_precision("auto", cuda=False) == "fp32"  # bf16 emulated on AVX2 ran 12x slower
    monkeypatch.setattr(D, "native_cpu_bf16", lambda: True)
    assert D.pick_precision("auto", cuda=False) == "bf16"


def test_the_first_progress_line_says_device_precision_threads_and_sharding(monkeypatch):
    cpu = D.placement(cuda=False, precision="bf16", threads=2, sharding="none")
    assert cpu.describe() == "train: cpu, bf16 autocast, 2 threads"
    gpu = D.placement(cuda=True, precision="fp32", threads=2, sharding="none")
    assert gpu.describe() == "train: cuda, fp32"
    monkeypatch.setattr(D.distributed, "world_size", lambda: 2)
    shared = D.placement(cuda=False, precision="fp32", threads=3, sharding="fsdp")
    assert shared.threads == 1  # 3 threads over 2 processes
    assert shared.describe() == "train: cpu, fp32, 1 threads, 2 processes, fsdp sharded"
    gpu = D.placement(cuda=True, precision="bf16", threads=2, sharding="fsdp_offload")
    assert gpu.device == "cuda"
    assert gpu.describe() == "train: cuda, bf16 autocast, 2 processes, fsdp offload sharded"


def test_fsdp_offload_on_a_cpu_is_refused_naming_what_runs_there():
    with pytest.raises(TrainError) as e:
        D.placement(cuda=False, precision="fp32", threads=2, sharding="fsdp_offload")
    assert str(e.value) == ("train.hf.sharding fsdp_offload offloads a GPU's shards to the CPU; on a CPU "
                            "use fsdp (or none)")
