"""End to end, the model half: real `dvc repro`, `dvc exp run`, `dvc push`/`pull` in a temporary git repo.

A copy of the built project (tests/e2e/conftest.py) carries state from test to test (they run in file
order): its first repro is commit A, the others change one thing and check what DVC re-ran and what came out.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.e2e.dvcproject import commit, copy_project, dvc, ran_stages, set_params, sh, sha256

pytestmark = pytest.mark.slow

ADAPTER = "models/adapter/adapter_model.safetensors"

state: dict = {}


def metrics(project: Path) -> dict:
    """Every metrics file of the run (they hold no wall-clock numbers, so they must repeat exactly)."""
    return {p.stem: json.loads(p.read_text()) for p in sorted((project / "metrics").glob("*.json"))}


def assert_close(a, b, where=""):
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            assert_close(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, float):
        assert abs(a - b) <= 1e-6, f"{where}: {a} != {b}"
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


@pytest.fixture(scope="module")
def project(built, tmp_path_factory) -> Path:
    return copy_project(built, tmp_path_factory.mktemp("model-project") / "project")


def test_repro_trains_and_evaluates_and_the_adapter_beats_the_base(project):
    m = json.loads((project / "metrics/evaluate.json").read_text())
    # test pages were never trained on (the split is by document): 0.93x here, beyond resampling noise
    assert m["adapter"]["loss"] <= 0.95 * m["base"]["loss"], m
    assert m["ratio"]["loss"] == pytest.approx(m["adapter"]["loss"] / m["base"]["loss"], abs=1e-5)
    assert m["delta"]["loss"]["high"] < 0 and m["delta"]["loss"]["verdict"] == "adapter"
    assert m["gate"]["passed"] is True and m["held_out_docs"] >= 1 and m["adapter"]["bits_per_byte"] > 0
    train = json.loads((project / "metrics/train.json").read_text())
    assert train["val_loss"] < train["base_val_loss"] and train["steps"] == 80

    adapter = project / "models/adapter"
    assert {"adapter_config.json", "adapter_model.safetensors", "README.md", "tokenizer.json"} <= {
        p.name for p in adapter.iterdir()}
    samples = [json.loads(line) for line in (project / "reports/eval_samples.jsonl").read_text().splitlines()]
    assert len(samples) == 4 and {"reference", "base_output", "adapter_output"} <= samples[0].keys()
    assert "Every row trains only assistant tokens." in (project / "reports/train_mask.md").read_text()

    # What `dvc exp show` / `dvc plots show` read: metrics and the dvclive curves are declared outputs.
    shown = json.loads(dvc(project, "metrics", "show", "--json").stdout)
    files = next(iter(shown.values()))["data"]
    assert {"metrics/train.json", "metrics/evaluate.json", "reports/train/metrics.json"} <= files.keys()
    assert (project / "reports/train/plots/metrics/eval/loss.tsv").read_text().startswith("step\tloss\n0\t")

    state["adapter_sha"] = sha256(project / ADAPTER)
    state["metrics"] = metrics(project)
    tracked = sh(project, "git", "ls-files", "data", "models").stdout.split()
    assert all(p.endswith((".gitignore", "README.md")) for p in tracked), tracked


def test_second_repro_runs_nothing(project):
    out = dvc(project, "repro")
    assert ran_stages(out.stdout) == []


def test_forced_data_stages_base_and_evaluate_repeat_every_output_byte_for_byte(project):
    # Train's determinism is the kill-and-resume test's (a resumed adapter equals this one); here every
    # other stage runs again from scratch and must write the same bytes, so dvc.lock stays as committed.
    forced = ["scrape", "clean", "validate", "base", "format", "evaluate"]
    out = dvc(project, "repro", "--force", "--single-item", *forced)
    assert ran_stages(out.stdout) == forced
    assert_close(metrics(project), state["metrics"])
    assert sha256(project / ADAPTER) == state["adapter_sha"]
    assert dvc(project, "status").stdout.strip().endswith("Data and pipelines are up to date.")
    assert sh(project, "git", "status", "--porcelain").stdout == ""


def test_killed_training_resumes_from_its_last_checkpoint(project):
    log = project.parent / "killed-repro.log"
    with open(log, "w") as f:
        env = os.environ | {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
        proc = subprocess.Popen([sys.executable, "-m", "dvc", "repro", "--force", "-s", "train"], cwd=project,
                                env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 300
    checkpoints = project / "models/checkpoints"
    while not (checkpoints / "checkpoint-20" / "COMPLETE").exists():
        assert proc.poll() is None, log.read_text()
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # dvc and the stage it started, mid-training
    proc.wait()
    assert not (project / ADAPTER).exists()

    out = dvc(project, "repro")
    assert "train: resuming from checkpoint-" in out.stderr
    assert ran_stages(out.stdout) == ["train"]  # the adapter came out the same, so evaluate is up to date
    resumed = json.loads((project / "metrics/train.json").read_text())
    assert resumed["resumed_from_step"] >= 20 and resumed["steps"] == 80
    # Resuming restores optimizer, scheduler, RNG and data order: the adapter is bit-identical.
    assert sha256(project / ADAPTER) == state["adapter_sha"]


def test_an_evaluate_knob_in_an_experiment_reruns_only_evaluate_and_is_listed(project):
    out = dvc(project, "exp", "run", "--temp", "-S", "evaluate.samples=2")
    assert ran_stages(out.stdout) == ["evaluate"]
    shown = json.loads(dvc(project, "exp", "show", "--json").stdout)
    experiments = [e for commit_ in shown for e in (commit_.get("experiments") or [])]
    runs = [r for e in experiments for r in e["revs"]]
    samples = [r["data"]["params"]["params.yaml"]["data"]["evaluate"]["samples"] for r in runs]
    assert 2 in samples, shown
    exp = runs[samples.index(2)]["data"]["metrics"]["metrics/evaluate.json"]["data"]
    assert exp["samples"] == 2 and exp["adapter"]["loss"] == state["metrics"]["evaluate"]["adapter"]["loss"]
    # --temp: the workspace keeps its own params and outputs.
    assert "samples: 4" in (project / "params.yaml").read_text()
    assert len((project / "reports/eval_samples.jsonl").read_text().splitlines()) == 4
    assert sha256(project / ADAPTER) == state["adapter_sha"]


def test_an_experiment_gated_against_head_compares_with_the_committed_adapter(project):
    """`evaluate.gate_against: HEAD` in an experiment reads the committed metrics through DVC's API: the
    same adapter over the same test split is not worse than itself, and the gate says it compared."""
    commit(project, "the adapter the experiment is judged against")
    out = dvc(project, "exp", "run", "--temp", "-S", "evaluate.gate=fail",
              "-S", "evaluate.gate_against=HEAD", "-S", "evaluate.bootstrap=500")
    assert ran_stages(out.stdout) == ["evaluate"]
    passed = "evaluate: gate passed: the adapter beats the base on loss and is not worse than HEAD's"
    assert passed in out.stderr
    shown = json.loads(dvc(project, "exp", "show", "--json").stdout)
    runs = [r for commit_ in shown for e in (commit_.get("experiments") or []) for r in e["revs"]]
    [gated] = [r["data"]["metrics"]["metrics/evaluate.json"]["data"] for r in runs
               if r["data"]["params"]["params.yaml"]["data"]["evaluate"]["gate_against"] == "HEAD"]
    checks = gated["gate"]["checks"]  # by ref, then metric: `dvc exp show` drops lists
    assert {ref: {m: c["passed"] for m, c in by.items()} for ref, by in checks.items()} == {
        "base": {"loss": True}, "HEAD": {"loss": True}}
    assert checks["HEAD"]["loss"]["line"].endswith("not worse than the adapter at HEAD")


def test_a_past_adapter_comes_back_byte_identical_after_dvc_pull(project):
    a = commit(project, "A")
    a_sha = sha256(project / ADAPTER)
    dvc(project, "push")
    set_params(project, **{"train.max_steps": 8})  # B: another adapter, quickly
    dvc(project, "repro")
    b_sha = sha256(project / ADAPTER)
    assert b_sha != a_sha
    commit(project, "B")
    dvc(project, "push")

    sh(project, "git", "checkout", "-q", a)
    shutil.rmtree(project / ".dvc/cache")
    for out in ("data/raw", "data/clean", "data/validated", "data/format", "models/base", "models/adapter",
                "models/checkpoints"):
        shutil.rmtree(project / out)
    pulled = dvc(project, "pull")
    assert "models/adapter" in pulled.stdout
    assert sha256(project / ADAPTER) == a_sha
    assert dvc(project, "status").stdout.strip().endswith("Data and pipelines are up to date.")

    sh(project, "git", "checkout", "-q", "main")
    dvc(project, "pull")  # B was never in this (fresh) cache: it comes from the remote too
    assert sha256(project / ADAPTER) == b_sha


def test_a_degenerate_mask_is_refused_naming_rows(project):
    set_params(project, **{"train.channels": ["analysis"]})
    out = dvc(project, "repro", check=False)
    assert out.returncode != 0
    err = out.stderr + out.stdout
    assert "refusing to train" in err and "have no trained token" in err
    assert not (project / "models/adapter").exists()
    sh(project, "git", "checkout", "--", "params.yaml")
