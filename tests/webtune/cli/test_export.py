"""export: the merged folder reloads with plain transformers and answers exactly as base + adapter."""

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from webtune import formats
from webtune.cli.export import ExportError, check_out, export
from webtune.models.chat import Sampling
from webtune.models.inference import ChatModel

QUESTIONS = [[{"role": "user", "content": q}] for q in ("What does json.loads do?", "How do I sort a list?")]
GREEDY = Sampling(max_new_tokens=16, temperature=0)


def reloaded(folder) -> ChatModel:
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager")
    return ChatModel(model, tokenizer, formats.detect(tokenizer))


def test_the_merged_model_gives_the_same_greedy_answers_as_base_and_adapter(tiny_base, toy_adapter, tmp_path):
    export(tiny_base, toy_adapter, tmp_path / "merged", "float32")
    merged = reloaded(tmp_path / "merged")
    assert not any("lora" in name for name, _ in merged.model.named_parameters())
    original = ChatModel.load(tiny_base, toy_adapter)
    expected = [a.text for a in original.reply(QUESTIONS, GREEDY)]
    assert [a.text for a in merged.reply(QUESTIONS, GREEDY)] == expected
    assert merged.model.generation_config.eos_token_id == original.stop_ids()[:3]
    assert "webtune adapter, merged (float32)" in (tmp_path / "merged" / "README.md").read_text()


def test_a_16_bit_export_is_the_exact_merge_rounded_once(tiny_base, toy_adapter, tmp_path):
    # Greedy answers of a toy model can flip on bf16 rounding; what must hold is that the only difference
    # from the exact merge is one rounding of each weight.
    export(tiny_base, toy_adapter, tmp_path / "fp32", "float32")
    export(tiny_base, toy_adapter, tmp_path / "bf16", "bfloat16")
    exact, half = (load_file(tmp_path / d / "model.safetensors") for d in ("fp32", "bf16"))
    assert exact.keys() == half.keys()
    for name, tensor in exact.items():
        assert half[name].dtype == torch.bfloat16 and torch.equal(half[name], tensor.to(torch.bfloat16)), name


def test_export_refuses_to_write_into_what_dvc_owns(tmp_path):
    for inside in ("models/merged", "data/x", "models"):
        with pytest.raises(ExportError, match="whose contents DVC owns"):
            check_out(tmp_path / inside, tmp_path)
    check_out(tmp_path / "exports" / "merged", tmp_path)
