"""What every backend's run shares: its fingerprint, the checkpoint lock, resume, and the data order.

Checkpoints go to a DVC `persist` folder, so `dvc repro` after a crash or SIGKILL resumes from the last
complete checkpoint of the same run (same params, data and base: the fingerprint says so). A file lock
stops a second writer. A checkpoint counts only once its COMPLETE marker is written, after the trainer
has finished saving it; on success the checkpoints are deleted and only run.json stays (DVC versions it,
so `git checkout` + `dvc pull` leave train up to date and optimizer state never reaches the remote).
"""

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch

from webtune.io import stderr, write_json
from webtune.params import without_report_knobs
from webtune.training import TrainError, TrainParams

RUN_FILE = "run.json"  # in the checkpoints folder: which run its checkpoints belong to
COMPLETE = "COMPLETE"  # written into a checkpoint folder after the trainer has finished saving it
LIVE_COPY = "dvclive"  # the dvclive logs as they were at a checkpoint, restored on resume


def file_md5(path: str | Path) -> str:
    """md5 of a file's bytes: what DVC 3 records for it in dvc.lock."""
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def run_fingerprint(params: TrainParams, base_info: dict, data_md5: dict, max_length: int) -> str:
    """What a checkpoint is a function of; a checkpoint from any other run is never resumed.

    Report-only knobs (train.mask_report_rows) are left out: they change no weight.
    """
    blob = {"params": without_report_knobs(params), "base": base_info, "data": data_md5,
            "max_length": max_length}
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()


@contextlib.contextmanager
def exclusive_lock(path: Path) -> Iterator[None]:
    """An flock on `path`: released by the kernel when the holder dies, so SIGKILL leaves no stale lock."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "unknown"
            raise TrainError(
                f"another training process (pid {holder}) holds {path} and is writing the same checkpoints "
                f"(an orphan of a killed `dvc repro`?). Wait for it or kill it, then run `dvc repro` again."
            ) from None
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n")
        f.flush()
        try:
            yield
        finally:
            f.seek(0)
            f.truncate()
            fcntl.flock(f, fcntl.LOCK_UN)


def step_of(path: Path) -> int:
    try:
        return int(path.name.rsplit("-", 1)[1])
    except (IndexError, ValueError):
        return -1


def prepare_checkpoints(folder: Path, fingerprint: str, progress=stderr) -> Path | None:
    """The last complete checkpoint of this run, or None; stale and half-written checkpoints are removed."""
    folder.mkdir(parents=True, exist_ok=True)
    run_file = folder / RUN_FILE
    previous = json.loads(run_file.read_text()) if run_file.exists() else {}
    checkpoints = sorted((p for p in folder.glob("checkpoint-*") if p.is_dir()), key=step_of)
    if previous.get("fingerprint") != fingerprint:
        if checkpoints and progress:
            progress(f"train: {len(checkpoints)} checkpoints in {folder} belong to another run; "
                     "starting fresh")
        for p in checkpoints:
            shutil.rmtree(p)
        checkpoints = []
    for p in [p for p in checkpoints if not (p / COMPLETE).exists()]:
        if progress:
            progress(f"train: removing half-written {p.name} (its save was interrupted)")
        shutil.rmtree(p)
        checkpoints.remove(p)
    write_json({"fingerprint": fingerprint, "status": "running"}, run_file)
    return checkpoints[-1] if checkpoints else None


def finish_checkpoints(folder: Path, fingerprint: str, steps: int) -> None:
    """Training is done and the adapter saved: only run.json stays, which is what DVC versions.

    Everything else goes, checkpoints and what a trainer writes beside them: TRL's README.md there lists
    its tags from a set, in an order that changes with the hash seed, and would change the folder's hash.
    """
    for p in folder.iterdir():
        if p.is_dir():
            shutil.rmtree(p)
        elif p.name != RUN_FILE:
            p.unlink()
    write_json({"fingerprint": fingerprint, "status": "done", "steps": steps}, folder / RUN_FILE)


def mark_complete(checkpoint: Path, live_dir: Path) -> None:
    """Called by a backend once a checkpoint is saved: keep the curves so far, then the marker (last)."""
    if live_dir.exists():
        shutil.copytree(live_dir, checkpoint / LIVE_COPY, dirs_exist_ok=True)
    (checkpoint / COMPLETE).write_text(f"{step_of(checkpoint)}\n")


def restore_live(resume_from: Path | None, live_dir: Path) -> None:
    """The curves as they were at the checkpoint resumed from (or none, for a fresh run)."""
    if live_dir.exists():
        shutil.rmtree(live_dir)
    if resume_from is not None and (resume_from / LIVE_COPY).exists():
        shutil.copytree(resume_from / LIVE_COPY, live_dir)


def row_order(lengths: Sequence[int], rows_needed: int, batch_size: int, seed: int) -> list[int]:
    """Which row goes where, for every step of the run: a pure function of the seed.

    Each epoch is a seeded shuffle grouped by length (transformers' own length grouping: batches of
    similar length, so rows of 20 and 500 tokens do not share padding). The trainer then reads the rows
    in this order, so a resumed run skips exactly the batches already trained on and sees the same
    batches after them: the resumed adapter is bit-identical to an uninterrupted one. (The trainer's
    own length-grouped sampler draws from the global RNG, which a resume leaves in another state.)
    """
    from transformers.trainer_pt_utils import get_length_grouped_indices

    order, epoch = [], 0
    while len(order) < rows_needed:
        gen = torch.Generator().manual_seed(seed + epoch)
        order += get_length_grouped_indices(list(lengths), batch_size, generator=gen)
        epoch += 1
    return order[:rows_needed]
