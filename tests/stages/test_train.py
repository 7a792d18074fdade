"""Stage train: a small run whose adapter reloads and beats its base on held-out rows, its model card and
curves, a run without a validation split, and a split that is not chat rows.

CPU-only and hermetic: the session's toy tiny-gpt-oss base and synthetic chat rows. The 30-step run is
made once for the module; the tests read what it wrote.
"""

import dataclasses
import json
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from stages import train
from tests.toys import TEXTS, TINY_LORA
from webtune import params as P
from webtune.errors import InputError
from webtune.formats.harmony import FORMAT
from webtune.io import read_chat_rows
from webtune.models import base_info, load_adapter, load_base
from webtune.models.inference import ChatModel
from webtune.params import load_section
from webtune.schema import CHAT_ROWS
from webtune.training import TrainError, TrainParams
from webtune.training import run as runs

MAX_LENGTH = 512  # format.max_length (train.max_length is gone)
REPO = Path(__file__).resolve().parents[2]


def small_params(**overrides) -> TrainParams:
    params = load_section("train", REPO / "params.yaml")
    knobs = dict(max_steps=30, batch_size=4, eval_steps=10, save_steps=10, logging_steps=5,
                 learning_rate=0.005, eval_rows=0, lora=P.replace(params.lora, **TINY_LORA),
                 hf=dataclasses.replace(params.hf, threads=1))
    return P.replace(params, **{**knobs, **overrides})


def write_rows(path: Path, n: int, seed: int) -> None:
    """Rows with a learnable pattern: the answer repeats a word of the question in a fixed frame."""
    words = [t.split()[0] for t in TEXTS if t.split()][:20]
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        w = rng.choice(words)
        messages = [{"role": "user", "content": f"Define {w}."},
                    {"role": "assistant", "content": f"The word {w} is defined in the documentation."}]
        rows.append({"doc_id": f"d{i}", "source": "test", "url": f"u{i}",
                     "fetched_at": "2026-01-01T00:00:00Z", "content_sha256": "0" * 64,
                     "pair_id": f"{seed}-{i}", "task": "doc_qa", "split": "train",
                     "messages": messages, "text": FORMAT.render(messages), "n_tokens": 0,
                     "n_special_ids": 0, "n_expected_special_ids": FORMAT.expected_special_ids(messages)})
    pq.write_table(pa.Table.from_pylist(rows, schema=CHAT_ROWS), path)


def run_train(folder: Path, base_dir: Path, params: TrainParams, n_train: int = 64, n_val: int = 16,
              progress=None) -> dict:
    """train.train on rows written into `folder` (unless already there); outputs go to `folder` too."""
    train_path, val_path = folder / "train.parquet", folder / "val.parquet"
    if not train_path.exists():
        write_rows(train_path, n_train, seed=1)
        write_rows(val_path, n_val, seed=2)
    return train.train(params=params, max_length=MAX_LENGTH, base_dir=base_dir, train_path=train_path,
                       val_path=val_path, checkpoints=folder / "checkpoints", out=folder / "adapter",
                       mask_report_path=folder / "mask.md", live_dir=folder / "live",
                       progress=progress or (lambda line: None))


@pytest.fixture(scope="module")
def trained(tiny_base, tmp_path_factory) -> tuple[Path, dict]:
    """(folder, metrics) of one 30-step run: 64 train rows, 16 val rows, eval and checkpoint every 10
    steps."""
    folder = tmp_path_factory.mktemp("train")
    return folder, run_train(folder, tiny_base, small_params())


def test_training_writes_an_adapter_that_beats_its_base(trained):
    folder, metrics = trained
    assert metrics["steps"] == 30 and metrics["resumed_from_step"] == 0
    assert metrics["train_rows"] == 64 and metrics["val_rows"] == 16
    assert metrics["val_loss"] < 0.9 * metrics["base_val_loss"]
    files = {p.name for p in (folder / "adapter").iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "README.md"} <= files
    config = json.loads((folder / "adapter" / "adapter_config.json").read_text())
    params = small_params()
    assert config["target_modules"] == sorted(params.lora.target_modules)  # sorted: stable bytes
    assert config["target_parameters"] == sorted(params.lora.target_parameters)
    assert "Every row trains only assistant tokens." in (folder / "mask.md").read_text()


def test_the_adapter_reloads_beats_its_base_and_generates(trained, tiny_base):
    folder, _ = trained
    chat = ChatModel.load(tiny_base, folder / "adapter")
    base = load_base(tiny_base)
    assert type(load_adapter(base, folder / "adapter")).__name__ == "PeftModelForCausalLM"
    _, val_rows = read_chat_rows(folder / "val.parquet")
    params = small_params()
    score = dict(batch_size=4, channels=params.channels, turns=params.assistant_turns)
    adapter_loss, _ = chat.assistant_loss(val_rows, **score)
    with chat.base_only():
        base_loss, _ = chat.assistant_loss(val_rows, **score)
        base_answers = chat.generate(val_rows[:4], max_new_tokens=12, batch_size=4)
    assert adapter_loss < 0.9 * base_loss
    answers = chat.generate(val_rows[:4], max_new_tokens=12, batch_size=4)
    assert len(answers) == 4 and all(a.text for a in answers)
    assert answers != base_answers  # what training learned shows in the answers


def test_the_card_records_the_lineage(trained, tiny_base):
    folder, _ = trained
    card = (folder / "adapter" / "README.md").read_text()
    assert base_info(tiny_base)["recipe_sha256"] in card
    for split in ("train.parquet", "val.parquet"):
        assert f"| `{folder / split}` | `{runs.file_md5(folder / split)}` |" in card
    assert "Chat format: `harmony`, template sha256 " in card
    assert "| transformers |" in card and "| peft |" in card and "train.seed 3407" in card
    assert "| adapter |" in card and "No validation split" not in card


def test_the_curves_are_per_optimizer_step_and_the_checkpoints_are_cleared(trained):
    folder, _ = trained
    # The curves dvc plots draws: eval loss from step 0 (the base) every train.eval_steps.
    eval_curve = (folder / "live/plots/metrics/eval/loss.tsv").read_text().splitlines()
    assert [line.split("\t")[0] for line in eval_curve] == ["step", "0", "10", "20", "30"]
    train_curve = (folder / "live/plots/metrics/train/loss.tsv").read_text().splitlines()
    assert [line.split("\t")[0] for line in train_curve] == ["step", "5", "10", "15", "20", "25", "30"]
    # Done: checkpoints are cleared, the run file says so.
    assert not list((folder / "checkpoints").glob("checkpoint-*"))
    run_file = json.loads((folder / "checkpoints" / runs.RUN_FILE).read_text())
    assert run_file["status"] == "done" and run_file["steps"] == 30


def test_without_a_validation_split_the_adapter_still_gets_its_model_card(tmp_path, tiny_base):
    metrics = run_train(tmp_path, tiny_base, small_params(max_steps=2, logging_steps=1), n_train=8, n_val=0)
    assert metrics["steps"] == 2 and metrics["val_rows"] == 0
    assert "val_loss" not in metrics and "base_val_loss" not in metrics
    card = (tmp_path / "adapter" / "README.md").read_text()
    assert "No validation split" in card
    assert base_info(tiny_base)["recipe_sha256"] in card
    assert f"| `{tmp_path / 'train.parquet'}` | `{runs.file_md5(tmp_path / 'train.parquet')}` |" in card
    assert not (tmp_path / "live/plots/metrics/eval").exists()


def test_a_split_that_is_not_chat_rows_is_refused_naming_the_file(tmp_path, tiny_base):
    pq.write_table(pa.table({"pair_id": ["a"]}), tmp_path / "train.parquet")
    pq.write_table(pa.table({"pair_id": ["b"]}), tmp_path / "val.parquet")
    with pytest.raises(InputError) as e:
        run_train(tmp_path, tiny_base, small_params())
    assert str(e.value) == (f"{tmp_path / 'train.parquet'}: missing columns messages "
                            "(was it written by the format stage?)")
    assert not (tmp_path / "adapter").exists()


def test_main_with_the_openai_backend_writes_a_hosted_adapter_and_its_curve(tmp_path, monkeypatch):
    """train.backend openai through the stage's main against the OpenAI emulator: no base is loaded, the
    adapter folder names the ft: model, the job's loss curve is the dvclive curve, a re-run resumes the
    same job to the same folder, and no key is written."""
    import yaml

    from tests.emulators.openai import OpenAIEmulator
    from tests.webtune.training.test_openai import example, write_jsonl

    key = "sk-test-hosted-stage-91d"
    openai_dir = tmp_path / "openai"
    openai_dir.mkdir()
    write_jsonl(openai_dir / "train.jsonl", [example(i) for i in range(12)])
    write_jsonl(openai_dir / "val.jsonl", [example(i) for i in range(50, 52)])
    with OpenAIEmulator(key=key) as api:
        params = yaml.safe_load((REPO / "params.yaml").read_text())
        params["train"]["backend"] = "openai"
        params["train"]["openai"] |= {"base_url": f"{api.url}/v1", "poll_interval_s": 0.01}
        (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
        monkeypatch.setenv("OPENAI_API_KEY", key)
        argv = ["--base", str(tmp_path / "no-base"), "--train", str(tmp_path / "unused.parquet"),
                "--val", str(tmp_path / "unused.parquet"), "--checkpoints", str(tmp_path / "checkpoints"),
                "--out", str(tmp_path / "adapter"), "--mask-report", str(tmp_path / "mask.md"),
                "--live-dir", str(tmp_path / "live"), "--openai-dir", str(openai_dir),
                "--metrics", str(tmp_path / "metrics.json"), "--params", str(tmp_path / "params.yaml")]
        train.main(argv)
        first = {p.name: p.read_bytes() for p in (tmp_path / "adapter").iterdir()}
        train.main(argv)  # a re-run (the state file in checkpoints) resumes the job: nothing is paid twice
        assert len(api.calls("POST", "/v1/fine_tuning/jobs")) == 1
        assert len(api.calls("POST", "/v1/files")) == 2
    assert {p.name: p.read_bytes() for p in (tmp_path / "adapter").iterdir()} == first
    hosted = json.loads((tmp_path / "adapter" / "hosted.json").read_text())
    assert hosted["fine_tuned_model"].startswith("ft:gpt-4o-mini-2024-07-18:emulated:webtune:")
    assert hosted["base_model"] == "gpt-4o-mini-2024-07-18" and hosted["trained_tokens"] == 12345
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["steps"] == 3 and metrics["train_loss"] == pytest.approx(0.6667)
    assert metrics["device"] == "hosted"
    assert "the host trains every assistant message of" in (tmp_path / "mask.md").read_text()
    assert f"python -m webtune.cli.chat --hosted {hosted['fine_tuned_model']}" in first["README.md"].decode()
    curve = (tmp_path / "live" / "plots" / "metrics" / "train" / "loss.tsv").read_text().splitlines()
    assert curve[0].split("\t") == ["step", "loss"]
    assert [c.split("\t")[0] for c in curve[1:]] == ["1", "2", "3"]
    for path in tmp_path.rglob("*"):
        assert not path.is_file() or key.encode() not in path.read_bytes(), path


def test_main_with_backend_auto_on_a_cpu_runs_hf_and_says_so(tmp_path, tiny_base):
    import yaml

    write_rows(tmp_path / "train.parquet", 16, seed=1)
    write_rows(tmp_path / "val.parquet", 4, seed=2)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["train"] |= {"backend": "auto", "max_steps": 2, "save_steps": 10, "eval_steps": 10, "eval_rows": 0}
    params["train"]["lora"] |= {k: list(v) for k, v in TINY_LORA.items()}
    params["train"]["hf"]["threads"] = 1
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    train.main(["--base", str(tiny_base), "--train", str(tmp_path / "train.parquet"),
                "--val", str(tmp_path / "val.parquet"), "--checkpoints", str(tmp_path / "checkpoints"),
                "--out", str(tmp_path / "adapter"), "--mask-report", str(tmp_path / "mask.md"),
                "--live-dir", str(tmp_path / "live"), "--metrics", str(tmp_path / "metrics.json"),
                "--params", str(tmp_path / "params.yaml")])
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert (metrics["backend"], metrics["backend_asked"], metrics["steps"]) == ("hf", "auto", 2)
    assert "(backend `hf`, on CPU" in (tmp_path / "adapter" / "README.md").read_text()


# --- token-budget micro-batches --------------------------------------------------------------------


@pytest.fixture(scope="module")
def llama_base(tiny_base, tmp_path_factory) -> Path:
    """The toy tokenizer on a tiny Llama, whose packed rows stay apart (the packing probe passes)."""
    import shutil

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from webtune.models import INFO_FILE, MODEL_DIR, TOKENIZER_DIR, load_tokenizer

    out = tmp_path_factory.mktemp("llama-base") / "base"
    shutil.copytree(tiny_base / TOKENIZER_DIR, out / TOKENIZER_DIR)
    tok, _ = load_tokenizer(out / TOKENIZER_DIR)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2)
    LlamaForCausalLM(config).save_pretrained(out / MODEL_DIR)
    shutil.copy(tiny_base / MODEL_DIR / INFO_FILE, out / MODEL_DIR / INFO_FILE)
    return out


def token_budget_params(layout: str) -> TrainParams:
    params = small_params(max_steps=6, save_steps=3, logging_steps=1, eval_steps=100, learning_rate=0.01)
    budget = dataclasses.replace(params.hf, batch_tokens=256, batch_layout=layout)
    return P.replace(params, hf=budget)


class Killed(Exception):
    pass


def test_a_token_budget_run_goes_padding_free_on_llama_and_resumes_to_the_same_adapter(tmp_path, llama_base):
    from safetensors.torch import load_file

    params = token_budget_params("auto")
    said = []
    (tmp_path / "whole").mkdir()
    whole = run_train(tmp_path / "whole", llama_base, params, progress=said.append)
    assert any(line.startswith("train: padding-free micro-batches (packing probe") for line in said), said
    assert (whole["steps"], whole["batch_layout"]) == (6, "padding_free")
    assert whole["rows_per_micro_batch"] > params.batch_size  # the budget takes more rows than 4 at a time
    assert whole["val_loss"] < whole["base_val_loss"]

    def killed_at_step_5(line):
        if line.startswith("train: step 5/"):
            raise Killed(line)

    (tmp_path / "cut").mkdir()
    with pytest.raises(Killed):
        run_train(tmp_path / "cut", llama_base, params, progress=killed_at_step_5)
    resumed = run_train(tmp_path / "cut", llama_base, params)
    assert resumed["resumed_from_step"] == 3
    adapters = [load_file(tmp_path / run / "adapter" / "adapter_model.safetensors")
                for run in ("whole", "cut")]
    assert adapters[0].keys() == adapters[1].keys()
    assert all(adapters[0][k].equal(adapters[1][k]) for k in adapters[0])
    assert resumed["train_loss"] == whole["train_loss"]


def test_token_budget_batches_are_padded_on_gpt_oss_and_padding_free_is_refused(tmp_path, tiny_base):
    said = []
    (tmp_path / "auto").mkdir()
    metrics = run_train(tmp_path / "auto", tiny_base, token_budget_params("auto"), n_train=16, n_val=4,
                        progress=said.append)
    assert metrics["batch_layout"] == "padded"
    assert any(line.startswith("train: padded micro-batches: in this gpt_oss model rows laid end to end "
                               "attend to each other") for line in said), said
    (tmp_path / "forced").mkdir()
    with pytest.raises(TrainError, match=r"^train.hf.batch_layout is padding_free, but in this gpt_oss model "
                                         r"rows laid end to end attend to each other"):
        run_train(tmp_path / "forced", tiny_base, token_budget_params("padding_free"), n_train=16, n_val=4)
    assert not (tmp_path / "forced" / "adapter").exists()
    assert not list((tmp_path / "forced" / "checkpoints").glob("checkpoint-*"))
