"""clean killed mid-run: the re-run redoes only the tasks datatrove had not marked complete and writes the
bytes of an uninterrupted run; a changed param never reuses the killed run's scratch."""

import dataclasses
import os
import signal
import subprocess
import sys
import time

import pyarrow as pa
import pytest
import yaml

from stages import clean as C
from tests.stages.test_clean import OUTS, doc, shard_bytes
from tests.webtune.cleaning.test_text import prose
from webtune import shards
from webtune.cleaning import steps
from webtune.schema import RAW_DOCS

TASKS = 4


@pytest.fixture
def project(tmp_path, repo, monkeypatch):
    """Raw shards of 240 pages (8 shards: 2 per task), params with clean.tasks 4, and one local worker:
    tasks run one at a time (a kill lands between two) and in the stage's process (a re-run's calls are
    counted there)."""
    monkeypatch.setenv("WEBTUNE_WORKERS", "1")
    rows = [doc(f"d{i}", prose(i, 30)) for i in range(240)]
    shards.write_shards(pa.Table.from_pylist(rows, schema=RAW_DOCS), tmp_path / "raw", RAW_DOCS, 30)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["clean"] |= {"tasks": TASKS}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    return tmp_path


def args(folder, out):
    return ["--raw", str(folder / "raw"), "--docs", str(folder / out / "docs"),
            "--dropped", str(folder / out / "dropped"), "--pairs", str(folder / out / "pairs"),
            "--scratch", str(folder / "scratch"), "--metrics", str(folder / out / "m.json"),
            "--params", str(folder / "params.yaml")]


def kill_after_first_score_task(folder, repo) -> int:
    """Start the stage in a process of its own; SIGKILL it once a score task is marked complete."""
    proc = subprocess.Popen([sys.executable, "-m", "stages.clean", *args(folder, "killed")], cwd=repo,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                            env=os.environ | {"PYTHONPATH": str(repo)})
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        done = list((folder / "scratch").glob("*/logs/score/completions/*"))
        if done:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return len(list((folder / "scratch").glob("*/logs/score/completions/*")))
        time.sleep(0.01)
    raise AssertionError(f"no score task completed before the stage ended (exit {proc.poll()})")


def test_a_killed_clean_resumes_its_finished_tasks_and_writes_the_uninterrupted_bytes(project, repo,
                                                                                        monkeypatch):
    completed = kill_after_first_score_task(project, repo)
    assert 1 <= completed < TASKS
    assert not (project / "killed" / "docs").exists(), "a killed stage publishes no output"

    scored = []
    real = steps.score_and_pair
    monkeypatch.setattr(steps, "score_and_pair", lambda raw, p: scored.append(raw["doc_id"]) or real(raw, p))
    C.main(args(project, "killed"))  # the re-run, in this process (one worker: tasks run here)
    assert len(scored) == 240 - 60 * completed, "the completed score tasks were not redone"
    assert list((project / "scratch").iterdir()) == [], "a finished run removes its scratch"

    C.main(args(project, "whole"))
    for name in OUTS:
        assert shard_bytes(project / "killed" / name) == shard_bytes(project / "whole" / name)
    assert (project / "killed/m.json").read_bytes() == (project / "whole/m.json").read_bytes()


def test_a_changed_param_starts_afresh_and_removes_the_stale_scratch(project, repo, load):
    params = dataclasses.replace(load("clean"), tasks=TASKS)
    raw, outs = project / "raw", {n: project / "out" / n for n in OUTS}
    stale = project / "scratch" / "0123456789abcdef0123"
    (stale / "logs/score/completions").mkdir(parents=True)
    for r in range(TASKS):  # every score task "done" in a scratch of other params: it must not be trusted
        (stale / f"logs/score/completions/{r:05d}").touch()
    metrics = C.clean(raw, outs, project / "scratch", params, progress=lambda line: None)
    assert metrics["docs_in"] == 240 and not stale.exists()
    other = C.clean(raw, outs, project / "scratch", dataclasses.replace(params, min_chars=10**6),
                    progress=lambda line: None)
    assert other["docs_out"] == 0 and other["dropped"] == {"too_short": 240}
