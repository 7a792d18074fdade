"""webtune.training.run: the run fingerprint, checkpoint selection and resume, the lock, the data order."""

import dataclasses
import json
import os
import re
from pathlib import Path

import pytest

from webtune.training import TrainError
from webtune.training import run as runs


def make_checkpoint(folder: Path, step: int, complete: bool) -> Path:
    ckpt = folder / f"checkpoint-{step}"
    ckpt.mkdir(parents=True)
    if complete:
        (ckpt / runs.COMPLETE).write_text(f"{step}\n")
    return ckpt


# --- checkpoints ----------------------------------------------------------------------------------


def test_resume_picks_the_last_complete_checkpoint_of_the_same_run(tmp_path):
    folder = tmp_path / "checkpoints"
    assert runs.prepare_checkpoints(folder, "run-a", progress=None) is None
    make_checkpoint(folder, 10, True)
    make_checkpoint(folder, 20, True)
    make_checkpoint(folder, 30, False)  # killed while saving
    assert runs.prepare_checkpoints(folder, "run-a", progress=None) == folder / "checkpoint-20"
    assert not (folder / "checkpoint-30").exists()
    assert (folder / "checkpoint-10").exists()
    assert runs.step_of(folder / "checkpoint-20") == 20


def test_checkpoints_are_ordered_by_step_not_by_name(tmp_path):
    folder = tmp_path / "checkpoints"
    runs.prepare_checkpoints(folder, "run-a", progress=None)
    make_checkpoint(folder, 9, True)
    make_checkpoint(folder, 10, True)  # "checkpoint-10" < "checkpoint-9" as strings
    assert runs.prepare_checkpoints(folder, "run-a", progress=None) == folder / "checkpoint-10"


def test_checkpoints_of_another_run_are_never_resumed(tmp_path):
    folder = tmp_path / "checkpoints"
    runs.prepare_checkpoints(folder, "run-a", progress=None)
    make_checkpoint(folder, 10, True)
    lines = []
    assert runs.prepare_checkpoints(folder, "run-b", progress=lines.append) is None
    assert not list(folder.glob("checkpoint-*"))
    assert json.loads((folder / runs.RUN_FILE).read_text()) == {"fingerprint": "run-b", "status": "running"}
    assert lines == [f"train: 1 checkpoints in {folder} belong to another run; starting fresh"]


def test_a_finished_run_clears_its_checkpoints_and_says_so(tmp_path):
    folder = tmp_path / "checkpoints"
    runs.prepare_checkpoints(folder, "run-a", progress=None)
    make_checkpoint(folder, 10, True)
    (folder / "README.md").write_text("---\ntags:\n- trl\n- sft\n---\n")  # TRL's card, tags in set order
    runs.finish_checkpoints(folder, "run-a", 10)
    assert sorted(p.name for p in folder.iterdir()) == [runs.RUN_FILE]  # what DVC versions, and only it
    assert json.loads((folder / runs.RUN_FILE).read_text()) == {"fingerprint": "run-a", "status": "done",
                                                                 "steps": 10}


def test_a_resumed_run_gets_the_curves_as_they_were_at_its_checkpoint(tmp_path):
    live, ckpt = tmp_path / "live", tmp_path / "checkpoints" / "checkpoint-10"
    (live / "plots").mkdir(parents=True)
    (live / "plots" / "loss.tsv").write_text("step\tloss\n5\t2.0\n10\t1.5\n")
    ckpt.mkdir(parents=True)
    runs.mark_complete(ckpt, live)
    assert (ckpt / runs.COMPLETE).read_text() == "10\n"
    # Logged after the save, then killed:
    (live / "plots" / "loss.tsv").write_text("step\tloss\n5\t2.0\n10\t1.5\n15\t1.2\n")
    runs.restore_live(ckpt, live)
    assert (live / "plots" / "loss.tsv").read_text() == "step\tloss\n5\t2.0\n10\t1.5\n"
    runs.restore_live(None, live)  # a fresh run starts with no curves
    assert not live.exists()


# --- lock -----------------------------------------------------------------------------------------


def test_a_second_writer_is_stopped_by_the_lock(tmp_path):
    lock = tmp_path / "checkpoints.lock"
    held = re.escape(f"another training process (pid {os.getpid()}) holds {lock} and is writing")
    with runs.exclusive_lock(lock), pytest.raises(TrainError, match=held), runs.exclusive_lock(lock):
        pass
    with runs.exclusive_lock(lock):  # released: the next run gets it
        pass


# --- data order -----------------------------------------------------------------------------------


LENGTHS = [17, 40, 23, 8, 31, 12, 40, 5, 26, 19, 33, 11]


def test_row_order_is_a_pure_function_of_the_seed():
    order = runs.row_order(LENGTHS, 30, 4, seed=3407)
    assert runs.row_order(LENGTHS, 30, 4, seed=3407) == order
    assert runs.row_order(LENGTHS, 30, 4, seed=1) != order
    # A shorter run is a prefix of a longer one: a resumed run sees the same batches.
    assert runs.row_order(LENGTHS, 13, 4, seed=3407) == order[:13]


def test_row_order_covers_every_row_once_per_epoch_and_reshuffles_each_epoch():
    n = len(LENGTHS)
    order = runs.row_order(LENGTHS, 2 * n + 5, 4, seed=3407)
    assert len(order) == 2 * n + 5
    first, second = order[:n], order[n : 2 * n]
    assert sorted(first) == sorted(second) == list(range(n))
    assert first != second
    assert LENGTHS[order[0]] == max(LENGTHS)  # length-grouped: the longest batch first (OOM shows early)


# --- fingerprint ----------------------------------------------------------------------------------


def test_the_fingerprint_ignores_report_knobs_but_not_weight_knobs(load):
    params = load("train")
    info, md5 = {"kind": "tiny", "recipe_sha256": "a" * 64}, {"train.parquet": "b" * 32}
    fingerprint = runs.run_fingerprint(params, info, md5, 512)
    assert runs.run_fingerprint(params, info, md5, 512) == fingerprint
    more_rows = dataclasses.replace(params, mask_report_rows=params.mask_report_rows + 7)
    assert runs.run_fingerprint(more_rows, info, md5, 512) == fingerprint
    faster = dataclasses.replace(params, learning_rate=params.learning_rate * 2)
    assert runs.run_fingerprint(faster, info, md5, 512) != fingerprint
    assert runs.run_fingerprint(params, info, md5, 256) != fingerprint
    assert runs.run_fingerprint(params, info, {"train.parquet": "c" * 32}, 512) != fingerprint
    assert runs.run_fingerprint(params, {**info, "recipe_sha256": "d" * 64}, md5, 512) != fingerprint
