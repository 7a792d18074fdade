"""The one built end-to-end project: the whole DAG run once with small knobs, shared by the e2e files.

A test file that changes the project works on its own copy (`copy_project`), so each file sees the
project as `dvc repro` left it and the files' order does not matter.
"""

import json
from pathlib import Path

import pytest

from tests.e2e.dvcproject import ALL_STAGES, commit, dvc, new_project, ran_stages

# Five stdlib modules, a short warm-up, 80 LoRA steps of 4 rows: the whole DAG in about two minutes on 2 cores
# (test loss 0.93x the base's on pages never trained on).
KNOBS = {
    "scrape.pydoc.modules": ["json", "csv", "pathlib", "textwrap", "heapq"],
    # the tiny gpt-oss (the default SmolLM2 takes minutes), and LoRA where its capacity is (the default's
    # targets are a dense model's)
    "base.model": "tiny-gpt-oss", "base.tiny.warmup_steps": 30, "base.tiny.vocab_size": 1024,
    "base.tiny.warmup_seq_len": 64, "train.hf.threads": 1, "evaluate.threads": 1,
    "train.lora.target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "train.lora.target_parameters": ["mlp.experts.gate_up_proj", "mlp.experts.down_proj"],
    "train.lora.modules_to_save": ["lm_head"],
    "validate.min_rows": 20,
    # 80 steps at a higher rate than the default's 400: the five-module corpus has ~200 training rows.
    "train.max_steps": 80, "train.batch_size": 4, "train.learning_rate": 0.006, "train.save_steps": 20,
    "train.eval_steps": 40, "train.logging_steps": 10,
    "evaluate.samples": 4, "evaluate.max_new_tokens": 24,
    # A 1 M-parameter base after 80 steps beats itself on loss, not reliably on 4 short answers; the files
    # that retrain with fewer steps must still run, so the gate warns (tests/stages/test_evaluate.py fails
    # it, test_pipeline_model.py runs it against a commit), and nothing depends on what HEAD holds.
    "evaluate.gate": "warn", "evaluate.gate_metrics": ["loss"], "evaluate.gate_against": "",
}


@pytest.fixture(scope="session")
def built(tmp_path_factory) -> Path:
    """The project after its first `dvc repro`, committed. Read-only: copy it to change it."""
    project = new_project(tmp_path_factory.mktemp("built") / "project", KNOBS)
    out = dvc(project, "repro")
    assert ran_stages(out.stdout) == ALL_STAGES, out.stdout
    (project.parent / "first-repro.json").write_text(json.dumps({"stdout": out.stdout, "stderr": out.stderr}))
    commit(project, "first repro")
    return project
