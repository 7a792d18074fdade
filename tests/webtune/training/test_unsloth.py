"""Backend unsloth and `auto`, on the CPU: which backend runs, the environment check, and how our knobs map
onto Unsloth's loading and LoRA calls. (Training with Unsloth needs CUDA: bench/train_throughput.py and
the GPU runs in docs/results.md cover it.)"""

import dataclasses
from pathlib import Path

import pytest

from webtune import params as P
from webtune.params import ParamsError, load_section
from webtune.training import TrainError, get_backend, unsloth
from webtune.training import run as runs
from webtune.training.unsloth import resolve

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def params():
    return load_section("train", REPO / "params.yaml")


def test_auto_is_hf_without_cuda_and_a_named_backend_is_itself():
    assert resolve("auto", cuda=False) == "hf"
    assert resolve("unsloth", cuda=False) == "unsloth"
    assert resolve("hf", cuda=True) == "hf"


def test_auto_with_cuda_but_no_unsloth_says_why_it_fell_back(monkeypatch):
    monkeypatch.setattr(unsloth, "installed_version", lambda name: None)
    said = []
    assert resolve("auto", cuda=True, progress=said.append) == "hf"
    assert said == ["train: backend auto -> hf (unsloth is not installed)"]


def test_auto_with_cuda_and_a_compatible_unsloth_is_unsloth(monkeypatch):
    fits = {"unsloth": "2026.10.9", "trl": "1.15.0", "datasets": "4.8.5", "transformers": "5.17.0"}
    monkeypatch.setattr(unsloth, "installed_version", fits.get)
    assert resolve("auto", cuda=True) == "unsloth"
    assert get_backend("unsloth").name == "unsloth"


def test_version_problems_name_each_package_that_unsloth_refuses():
    fits = {"unsloth": "2026.10.9", "trl": "1.15.0", "datasets": "4.8.5", "transformers": "5.17.0"}
    assert unsloth.version_problems(fits) == []
    assert unsloth.version_problems({**fits, "trl": "1.16.0", "datasets": "5.2.0"}) == [
        "unsloth needs trl<=1.15.0, this environment has trl 1.16.0",
        "unsloth needs datasets<5, this environment has datasets 5.2.0"]
    assert unsloth.version_problems({**fits, "unsloth": None}) == ["unsloth is not installed"]


def test_prepare_refuses_this_cpu_environment_in_one_line():
    with pytest.raises(TrainError) as error:
        unsloth.BACKEND.prepare()
    assert str(error.value).startswith("train.backend unsloth: unsloth is not installed")
    assert "\n" not in str(error.value)


def test_knobs_map_onto_unsloths_calls(params):
    import torch

    assert unsloth.load_kwargs(params, 1024) == {
        "max_seq_length": 1024, "dtype": torch.bfloat16, "load_in_4bit": True,
        "use_gradient_checkpointing": "unsloth", "random_state": 3407, "fix_tokenizer": False}
    gpt_oss = P.replace(params, lora=dataclasses.replace(
        params.lora, r=8, alpha=16, target_modules=("q_proj", "v_proj"),
        target_parameters=("mlp.experts.gate_up_proj",)),
        unsloth=dataclasses.replace(params.unsloth, gradient_checkpointing="off"))
    assert unsloth.peft_kwargs(gpt_oss) == {
        "r": 8, "lora_alpha": 16, "lora_dropout": 0.0, "bias": "none", "target_modules": ["q_proj", "v_proj"],
        "target_parameters": ["mlp.experts.gate_up_proj"], "modules_to_save": None,
        "use_gradient_checkpointing": False, "random_state": 3407}
    # SFTConfig's flag: Unsloth's trainer reads it only where the model carries no kind of its own
    assert unsloth.BACKEND.trainer_checkpointing(params) is True
    assert unsloth.BACKEND.trainer_checkpointing(gpt_oss) is False


def test_a_bad_checkpointing_choice_is_refused_naming_the_key(tmp_path):
    text = (REPO / "params.yaml").read_text().replace("gradient_checkpointing: unsloth",
                                                      "gradient_checkpointing: yes please")
    (tmp_path / "params.yaml").write_text(text)
    with pytest.raises(ParamsError, match="train.unsloth.gradient_checkpointing"):
        load_section("train", tmp_path / "params.yaml")


def test_auto_settled_as_hf_is_the_same_run_as_hf(params):
    """The unsloth section never enters an hf run's fingerprint, so auto on a CPU resumes hf checkpoints."""
    base, data = {"kind": "tiny"}, {"train.parquet": "0" * 32}
    as_hf = runs.run_fingerprint(params, base, data, 512)
    settled = P.replace(params, backend=resolve("auto", cuda=False),
                                  unsloth=dataclasses.replace(params.unsloth, load_in_4bit=False))
    assert runs.run_fingerprint(settled, base, data, 512) == as_hf
    as_unsloth = dataclasses.replace(params, backend="unsloth")
    assert runs.run_fingerprint(as_unsloth, base, data, 512) != as_hf


def test_each_backend_batches_by_its_own_section(params):
    from webtune.training.hf import BACKEND as HF

    assert HF.batching(params) == (0, "padded")  # a CPU's: batch_size rows
    assert unsloth.BACKEND.batching(params) == (4096, "auto")
    changed = P.replace(params, unsloth=dataclasses.replace(params.unsloth, batch_tokens=16384))
    assert (HF.batching(changed), unsloth.BACKEND.batching(changed)) == ((0, "padded"), (16384, "auto"))


def test_unsloths_packing_probe_hands_the_model_the_rows_lengths(tok):
    """Unsloth keeps padding-free rows apart by the lengths its collator adds: the probe must pass them."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from webtune.models import Base

    torch.manual_seed(0)
    llama = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2))
    seen = []

    class Recording(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = llama

        def forward(self, packed_seq_lengths=None, **inputs):
            seen.append(None if packed_seq_lengths is None else packed_seq_lengths.tolist())
            return self.inner(**inputs)

    base = Base(model=Recording(), tokenizer=tok, chat_format=None, info={})
    probe = unsloth.BACKEND.packing_probe(base)
    assert probe.cross == 0.0 and probe.passes
    assert seen == [None, None, [24, 17], [24, 17]]  # two rows alone, then the two packs
