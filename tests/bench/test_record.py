"""bench/record.py: the timed-window check, the results file's record replacement, the smoke guard and
the git provenance."""

import importlib.util
import json
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("bench_record", REPO / "bench" / "record.py")
record = importlib.util.module_from_spec(spec)
spec.loader.exec_module(record)


def test_a_window_whose_last_third_is_twice_as_slow_is_unstable():
    assert record.window([1.0, 1.0, 1.0, 2.0, 2.0, 2.0]) == {
        "step_s": [1.0, 1.0, 1.0, 2.0, 2.0, 2.0], "first_third_mean_s": 1.0, "last_third_mean_s": 2.0,
        "window_stable": False}


def test_a_window_whose_outer_thirds_agree_within_ten_percent_is_stable_and_two_steps_cannot_tell():
    # thirds 1.0 and 1.05 s: 5% apart; the middle third (a checkpoint save, say) is not compared
    assert record.window([1.0, 1.0, 1.5, 1.5, 1.05, 1.05])["window_stable"] is True
    assert record.window([1.0, 2.0]) == {"step_s": [1.0, 2.0], "window_stable": None}


def test_a_keyed_save_replaces_only_the_record_of_the_same_configuration(tmp_path):
    out = tmp_path / "b.json"
    rec = record.Recorder("b", argv=[])
    rec.save(out, {"config": "hf", "rate": 1}, key=("config",))
    rec.save(out, {"config": "unsloth", "rate": 2}, key=("config",))
    rec.save(out, {"config": "hf", "rate": 3}, key=("config",))
    data = json.loads(out.read_text())
    assert data["bench"] == "b"
    assert [r["results"] for r in data["records"]] == [{"config": "unsloth", "rate": 2},
                                                       {"config": "hf", "rate": 3}]
    rec.save(out, {"rate": 4})  # no key: the file holds this record alone
    assert [r["results"] for r in json.loads(out.read_text())["records"]] == [{"rate": 4}]


def test_a_smoke_record_is_refused_under_the_committed_results(tmp_path, monkeypatch):
    monkeypatch.setattr(record, "RESULTS", tmp_path)
    with pytest.raises(SystemExit, match="a --smoke result is never written under"):
        record.Recorder("b", smoke=True, argv=[]).save(tmp_path / "b.json", {"rate": 1})
    assert not (tmp_path / "b.json").exists()


def test_dirty_means_changed_code_not_a_new_result(tmp_path):
    def git(*args):
        subprocess.run(["git", "-C", str(tmp_path), *args], check=True, capture_output=True)

    (tmp_path / "bench/results").mkdir(parents=True)
    (tmp_path / "code.py").write_text("x = 1\n")
    (tmp_path / "bench/results/b.json").write_text("{}\n")
    git("init", "-q")
    git("add", "-A")
    git("-c", "user.name=t", "-c", "user.email=t@example.org", "commit", "-qm", "c")
    head = subprocess.run(["git", "-C", str(tmp_path), "rev-parse", "HEAD"], capture_output=True, text=True)
    (tmp_path / "bench/results/b.json").write_text('{"new": 1}\n')
    assert record.git_state(tmp_path) == (head.stdout.strip(), False)
    (tmp_path / "code.py").write_text("x = 2\n")
    assert record.git_state(tmp_path) == (head.stdout.strip(), True)
    assert record.git_state(tmp_path / "bench" / "results" / "nowhere") == (None, None)


def test_a_copied_tree_without_git_takes_its_commit_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("WEBTUNE_BENCH_COMMIT", "abc123")
    monkeypatch.setenv("WEBTUNE_BENCH_DIRTY", "false")
    assert record.git_state(tmp_path) == ("abc123", False)
    monkeypatch.delenv("WEBTUNE_BENCH_COMMIT")
    monkeypatch.delenv("WEBTUNE_BENCH_DIRTY")
    assert record.git_state(tmp_path) == (None, None)
