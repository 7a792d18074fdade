"""Backend hf: the packing probe, activation checkpointing only when asked, FSDP's arguments and its refusal
on a CPU, and a GPU out of memory said in one line (the trainer it builds: test_trainer.py, its callback:
test_callback.py)."""

import dataclasses

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from tests.stages.test_train import run_train, small_params
from tests.webtune.training.test_trainer import toy_llama
from webtune import params as P
from webtune.errors import UserError
from webtune.models import load_base
from webtune.models.packing import PROBE_TOLERANCE, SEPARATE_TOLERANCE, check_packing, probe_packing
from webtune.training import TrainError

# --- packing probe --------------------------------------------------------------------------------


def test_packing_probe_passes_llama_and_refuses_gpt_oss(tok, tiny_base):
    torch.manual_seed(0)
    llama = toy_llama(tok)
    probe = probe_packing(llama, tok)
    assert probe.cross < PROBE_TOLERANCE and probe.apart < 1e-4 and probe.passes  # fp32 on a CPU: exact
    assert check_packing(probe, "llama") is probe

    gpt_oss = load_base(tiny_base).model
    probe = probe_packing(gpt_oss, tok)
    assert probe.cross > 100 * PROBE_TOLERANCE and not probe.passes  # the documented leak
    refusal = (r"in this gpt_oss model with transformers rows laid end to end attend to each other \(a row's "
               r"logits move by .* when the row before it changes; tolerance 0.0001\): "
               r"set train.packing: false\.$")
    with pytest.raises(UserError, match=refusal):
        check_packing(probe, gpt_oss.config.model_type)


def test_packing_that_loses_positions_is_refused_even_when_rows_stay_apart(tok):
    """A packed path that keeps rows apart but misreads their positions (here: each row run alone at twice
    its position ids) passes the test across rows: the comparison with the rows run alone catches it."""
    torch.manual_seed(0)
    llama = toy_llama(tok)

    class ShiftedPositions(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner, self.config = llama, llama.config

        def forward(self, input_ids, position_ids=None, **kwargs):
            if position_ids is None:
                return self.inner(input_ids=input_ids, **kwargs)
            starts = (position_ids[0] == 0).nonzero().flatten().tolist() + [input_ids.shape[1]]
            logits = [self.inner(input_ids=input_ids[:, a:b], position_ids=2 * position_ids[:, a:b],
                                 **kwargs).logits for a, b in zip(starts, starts[1:], strict=False)]
            return type("Out", (), {"logits": torch.cat(logits, dim=1)})()

    probe = probe_packing(ShiftedPositions(), tok)
    assert probe.cross == 0.0 and probe.apart > SEPARATE_TOLERANCE and not probe.passes
    assert probe.failure().startswith("rows laid end to end give other logits than the same rows run alone")


def test_packing_on_gpt_oss_stops_the_run_before_any_step(tiny_base, tmp_path):
    with pytest.raises(UserError, match="rows laid end to end attend to each other"):
        run_train(tmp_path, tiny_base, small_params(packing=True), n_train=8, n_val=4)
    assert not (tmp_path / "adapter").exists()
    assert not list((tmp_path / "checkpoints").glob("checkpoint-*"))


# --- gradient checkpointing -----------------------------------------------------------------------


@pytest.mark.parametrize("checkpointing", [False, True])
def test_the_trainer_checkpoints_activations_only_when_told(tiny_base, tmp_path, monkeypatch, checkpointing):
    """TRL's SFTConfig turns gradient checkpointing on unless told: on a CPU that costs ~18% of the
    speed for nothing (bench/cpu_train_speed.json), so train.hf.gradient_checkpointing decides. The run
    says so by transformers 5's name and no deprecation warning reaches the stage's log (webtune.quiet)."""
    import warnings

    import transformers

    seen = []
    train_step = transformers.Trainer.training_step

    def recording_step(self, model, *args, **kwargs):
        seen.append(self.accelerator.unwrap_model(model).is_activation_checkpointing)
        return train_step(self, model, *args, **kwargs)

    monkeypatch.setattr(transformers.Trainer, "training_step", recording_step)
    defaults = small_params(max_steps=2, eval_steps=10, save_steps=10)
    params = P.replace(defaults, hf=dataclasses.replace(defaults.hf,
                                                                  gradient_checkpointing=checkpointing))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run_train(tmp_path, tiny_base, params, n_train=8, n_val=4)
    assert seen == [checkpointing, checkpointing]
    assert [str(w.message) for w in caught if issubclass(w.category, FutureWarning)] == []


# --- FSDP (train.hf.sharding; the 2-process runs are tests/stages/test_train_distributed.py) --------


def test_fsdp_shards_by_the_models_decoder_layer_and_uses_fsdps_own_checkpointing():
    from webtune.training.distributed import fsdp_arguments

    model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32,
                                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1))
    assert fsdp_arguments("none", model, activation_checkpointing=True) == {}
    args = fsdp_arguments("fsdp_offload", model, activation_checkpointing=True)
    assert args["fsdp"] is True
    assert {k: args["fsdp_config"][k] for k in ("version", "transformer_layer_cls_to_wrap", "cpu_offload",
                                                "activation_checkpointing", "state_dict_type")} == {
        "version": 2, "transformer_layer_cls_to_wrap": ["LlamaDecoderLayer"], "cpu_offload": True,
        "activation_checkpointing": True, "state_dict_type": "FULL_STATE_DICT"}
    sharded = fsdp_arguments("fsdp", model, activation_checkpointing=False)
    assert sharded["fsdp_config"]["cpu_offload"] is False
    model._no_split_modules = None
    with pytest.raises(TrainError) as e:
        fsdp_arguments("fsdp", model, activation_checkpointing=False)
    assert str(e.value) == ("train.hf.sharding fsdp: LlamaForCausalLM names no decoder layer class to "
                            "shard by (_no_split_modules); use sharding: none")


def test_fsdp_offload_on_a_cpu_is_refused_before_any_step(tiny_base, tmp_path):
    defaults = small_params()
    params = P.replace(defaults, hf=dataclasses.replace(defaults.hf, sharding="fsdp_offload"))
    with pytest.raises(TrainError) as e:
        run_train(tmp_path, tiny_base, params, n_train=8, n_val=4)
    assert str(e.value) == ("train.hf.sharding fsdp_offload offloads a GPU's shards to the CPU; on a CPU "
                            "use fsdp (or none)")
    assert not (tmp_path / "adapter").exists()


def test_running_out_of_gpu_memory_is_one_line_naming_the_step_and_knobs(tiny_base, tmp_path, monkeypatch):
    import transformers

    def out_of_memory(self, *args, **kwargs):
        self.state.global_step = 7
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(transformers.Trainer, "train", out_of_memory)
    with pytest.raises(TrainError) as e:
        run_train(tmp_path, tiny_base, small_params(), n_train=8, n_val=4)
    assert str(e.value) == ("out of GPU memory at step 7 (train.hf.sharding none, 1 processes): lower "
                            "train.batch_size or train.hf.batch_tokens, or shard the base (train.hf.sharding "
                            "fsdp over more processes, or fsdp_offload)")
    assert not (tmp_path / "adapter").exists()
