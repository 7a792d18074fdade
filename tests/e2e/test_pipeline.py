"""End to end, the data half: what the first `dvc repro` of the built project wrote, and the gate
stopping the DAG.

Real `dvc` in a temporary git repository holding this repository's dvc.yaml, stages/ and webtune/.
"""

import json
import sys

import pyarrow.parquet as pq
import pytest

from tests.e2e.dvcproject import copy_project, dvc, set_params, sh

pytestmark = pytest.mark.slow


def test_the_first_repro_wrote_every_data_output(built):
    metrics = {m: json.loads((built / "metrics" / f"{m}.json").read_text())
               for m in ("scrape", "clean", "validate", "format")}
    assert metrics["scrape"]["docs"] == metrics["clean"]["docs_in"] > 80
    assert metrics["clean"]["pairs_out"] > 150  # 193 on 2026-12-03, after sections two topics share
    rows = sum(metrics["format"]["rows_per_split"].values())
    assert rows + sum(metrics["format"]["dropped"].values()) == metrics["clean"]["pairs_out"]
    train = pq.read_table(built / "data/format/train.parquet")
    assert train.num_rows > 0.7 * rows
    text = train.column("text")[0].as_py()
    assert text.startswith("<|start|>user<|message|>") and text.endswith("<|return|>")
    openai_line = (built / "data/format/openai/train.jsonl").read_text().splitlines()[0]
    assert [m["role"] for m in json.loads(openai_line)["messages"]] == ["user", "assistant"]
    assert (built / "reports/validate.md").exists()
    assert (json.loads((built / "models/base/tokenizer/chat_format.json").read_text())
            == {"chat_format": "harmony"})
    # Metrics hold no wall-clock numbers: a re-run writes the same files (and dvc.lock the same hashes).
    assert not any("seconds" in (built / "metrics" / f"{m}.json").read_text() for m in metrics)
    # git tracks no pipeline data: DVC does.
    tracked = sh(built, "git", "ls-files", "data", "models").stdout.split()
    assert all(p.endswith((".gitignore", "README.md")) for p in tracked), tracked


def test_the_adapter_is_a_dvc_model_artifact(built):
    """DVC's own parser of dvc.yaml reads the adapter as a model artifact (what `dvc artifacts get` and
    a GTO-tagged model registry resolve)."""
    code = ("import json; from dvc.repo import Repo; "
            "a = Repo('.').artifacts.read()['dvc.yaml']['webtune-adapter']; "
            "print(json.dumps({'path': a.path, 'type': a.type}))")
    shown = json.loads(sh(built, sys.executable, "-c", code).stdout)
    assert shown == {"path": "models/adapter", "type": "model"}


def test_a_failing_gate_stops_the_dag_naming_expectations(built, tmp_path):
    project = copy_project(built, tmp_path / "gate")
    set_params(project, **{"validate.min_rows": 10**6})
    out = dvc(project, "repro", check=False)
    assert out.returncode != 0
    assert "expect_table_row_count_to_be_between" in out.stderr + out.stdout
    assert "validate: " in out.stderr and "Traceback" not in out.stderr
    assert "Running stage 'format'" not in out.stdout
    assert not (project / "data/validated/pairs").exists()
