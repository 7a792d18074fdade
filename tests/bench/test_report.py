"""bench/report.py: docs/results.md is what the committed results render, smoke records never reach it,
and a result without provenance says so."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def report(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "bench/report.py", *args], cwd=REPO, capture_output=True,
                          text=True)


def test_docs_results_is_what_the_committed_results_render():
    proc = report("--check")
    assert proc.returncode == 0, proc.stderr


def test_a_smoke_record_is_refused(tmp_path):
    shutil.copy(REPO / "bench/results/remote_s3.json", tmp_path)
    data = json.loads((tmp_path / "remote_s3.json").read_text())
    data["records"][0]["smoke"] = True
    (tmp_path / "remote_s3.json").write_text(json.dumps(data))
    proc = report("--results", str(tmp_path), "--out", str(tmp_path / "results.md"))
    assert proc.returncode == 1
    assert "holds a --smoke record: smoke results are never committed" in proc.stderr
    assert not (tmp_path / "results.md").exists()


def test_provenance_says_what_was_not_recorded_and_what_was(tmp_path):
    data = json.loads((REPO / "bench/results/remote_s3.json").read_text())
    old = data["records"][0]
    new = old | {"commit": "0123456789abcdef" * 2 + "01234567", "dirty": True, "date": "2027-01-02T03:04:05Z",
                 "command": "python bench/remote_s3.py --out x.json",
                 "machine": {"cpu": "Test CPU", "cores": 4, "gpu": None}}
    (tmp_path / "remote_s3.json").write_text(json.dumps({"bench": "remote_s3", "records": [old, new]}))
    proc = report("--results", str(tmp_path), "--out", str(tmp_path / "results.md"))
    assert proc.returncode == 0, proc.stderr
    page = (tmp_path / "results.md").read_text()
    not_recorded = ("- commit not recorded; CPU not recorded, 2 cores; date not recorded: "
                    "command not recorded\n")
    assert not_recorded in page
    assert ("- commit `0123456789` with uncommitted changes; Test CPU, 4 cores; 2027-01-02 03:04:05 UTC: "
            "`python bench/remote_s3.py --out x.json`\n") in page
    assert "Not measured yet: `make bench-tests` writes `bench/results/test_suite.json`." in page
