"""Backend hf: the trainer's labels checked against the mask, the packing probe, and the NaN guard."""

import dataclasses
import shutil

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from tests.stages.test_train import run_train, small_params
from webtune import params as P
from webtune.errors import UserError
from webtune.formats.harmony import FORMAT
from webtune.models import INFO_FILE, MODEL_DIR, TOKENIZER_DIR, load_base
from webtune.models.packing import PROBE_TOLERANCE, SEPARATE_TOLERANCE, check_packing, probe_packing
from webtune.training import TrainError
from webtune.training.hf import check_prepared, final_train_loss, to_dataset
from webtune.training.supervision import encode_rows

DIFFER = "the trainer's labels differ from the checked mask"


@pytest.fixture
def encoded(tok):
    conversations = [[{"role": "user", "content": f"question {i}"},
                      {"role": "assistant", "content": f"answer number {i}"}] for i in range(3)]
    return encode_rows(FORMAT, tok, [f"row{i}" for i in range(3)], conversations, channels=("final",),
                       turns="all", max_length=512)


# --- the trainer's labels ------------------------------------------------------------------------


def test_check_prepared_catches_a_row_the_trainer_dropped_or_relabelled(encoded):
    prepared = to_dataset(encoded).add_column("labels", encoded.labels())
    check_prepared(prepared, encoded, packing=False)  # identical: passes
    with pytest.raises(TrainError) as e:
        check_prepared(prepared.select([0, 2]), encoded, packing=False)
    assert str(e.value) == f"{DIFFER}: dropped rows ['row1'], changed rows []"

    labels = encoded.labels()
    labels[2][0] = encoded.input_ids[2][0]  # the trainer would also train the first prompt token
    with pytest.raises(TrainError) as e:
        check_prepared(to_dataset(encoded).add_column("labels", labels), encoded, packing=False)
    assert str(e.value) == f"{DIFFER}: dropped rows [], changed rows ['row2']"


def test_check_prepared_follows_the_run_order_not_the_whole_split(encoded):
    order = [2, 0, 2]  # a run shorter than the split (row1 never trained) that wraps into a second epoch
    labels = encoded.labels()
    prepared = to_dataset(encoded, order).add_column("labels", [labels[i] for i in order])
    assert prepared["pair_id"] == ["row2", "row0", "row2"]
    check_prepared(prepared, encoded, packing=False, order=order)  # row1's absence is not a drop
    with pytest.raises(TrainError, match=r"dropped rows \['row0'\]"):
        check_prepared(prepared.select([0, 2]), encoded, packing=False, order=order)
    check_prepared(prepared, encoded, packing=True, order=order)  # repeats count once per time trained
    want = sum(sum(m) for m in (encoded.masks[i] for i in order))
    got = want - sum(encoded.masks[2])
    with pytest.raises(TrainError) as e:
        check_prepared(prepared.select([0, 1]), encoded, packing=True, order=order)
    assert str(e.value) == f"packing changed the supervised token count from {want} to {got}"


def test_the_final_train_loss_is_the_mean_of_the_last_tenth_of_the_logs():
    history = [{"loss": float(i), "step": i} for i in range(1, 21)] + [{"eval_loss": 0.5, "step": 20}]
    assert final_train_loss(history) == 19.5  # the last 2 of 20 logged losses; eval entries do not count
    assert final_train_loss([{"loss": 3.0}]) == 3.0


# --- packing probe --------------------------------------------------------------------------------


def toy_llama(tok):
    return LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                                        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                        attn_implementation="eager"))


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


# --- NaN guard ------------------------------------------------------------------------------------


def test_a_nan_loss_stops_training_and_writes_no_adapter(tmp_path, tiny_base):
    broken = tmp_path / "base"
    shutil.copytree(tiny_base / TOKENIZER_DIR, broken / TOKENIZER_DIR)
    model = load_base(tiny_base).model
    with torch.no_grad():
        model.model.layers[0].self_attn.q_proj.weight[0, 0] = float("nan")
    model.save_pretrained(broken / MODEL_DIR)
    shutil.copy(tiny_base / MODEL_DIR / INFO_FILE, broken / MODEL_DIR / INFO_FILE)
    with pytest.raises(TrainError, match=r"loss is nan at step 0: training diverged"):
        run_train(tmp_path, broken, small_params(), n_train=8, n_val=4)
    assert not (tmp_path / "adapter").exists()


def test_packing_on_gpt_oss_stops_the_run_before_any_step(tiny_base, tmp_path):
    with pytest.raises(UserError, match="rows laid end to end attend to each other"):
        run_train(tmp_path, tiny_base, small_params(packing=True), n_train=8, n_val=4)
    assert not (tmp_path / "adapter").exists()
    assert not list((tmp_path / "checkpoints").glob("checkpoint-*"))


# --- gradient checkpointing -----------------------------------------------------------------------


@pytest.mark.parametrize("checkpointing", [False, True])
def test_the_trainer_checkpoints_activations_only_when_told(tiny_base, tmp_path, monkeypatch, checkpointing):
    """TRL's SFTConfig turns gradient checkpointing on unless told: on a CPU that costs ~18% of the
    speed for nothing (bench/results/cpu_train_speed.json), so train.hf.gradient_checkpointing decides."""
    import transformers

    seen = []
    train_step = transformers.Trainer.training_step

    def recording_step(self, model, *args, **kwargs):
        seen.append(self.accelerator.unwrap_model(model).is_gradient_checkpointing)
        return train_step(self, model, *args, **kwargs)

    monkeypatch.setattr(transformers.Trainer, "training_step", recording_step)
    defaults = small_params(max_steps=2, eval_steps=10, save_steps=10)
    params = P.replace(defaults, hf=dataclasses.replace(defaults.hf,
                                                                  gradient_checkpointing=checkpointing))
    run_train(tmp_path, tiny_base, params, n_train=8, n_val=4)
    assert seen == [checkpointing, checkpointing]


# --- the loss on a CPU ----------------------------------------------------------------------------


def test_on_a_cpu_the_loss_comes_from_full_logits_and_equals_trls_fused_loss(tok, encoded, tmp_path,
                                                                               monkeypatch):
    """TRL's fused LM head is slow on a CPU (webtune.training.hf.full_logits_on_cpu_or_sharded); the
    replacement must train on the same number: the supervised tokens' cross-entropy, summed over the batch and
    divided by its supervised-token count, and the fused head must not run."""
    from trl import SFTConfig, SFTTrainer
    from trl.kernels import chunked_logprob

    from webtune.training.hf import full_logits_on_cpu_or_sharded

    torch.manual_seed(0)
    model = toy_llama(tok)
    args = SFTConfig(output_dir=str(tmp_path), use_cpu=True, report_to="none", per_device_train_batch_size=3,
                     assistant_only_loss=False, max_length=None)
    trainer_class = full_logits_on_cpu_or_sharded(SFTTrainer)
    trainer = trainer_class(model=model, args=args, train_dataset=to_dataset(encoded), processing_class=tok)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(3)])
    labels = batch["labels"]
    n_supervised = int((labels[:, 1:] != -100).sum())
    assert n_supervised == sum(sum(m[1:]) for m in encoded.masks)  # the answers and their end tokens

    fused_calls = []
    fused_apply = chunked_logprob.ChunkedLogProbFunction.apply
    monkeypatch.setattr(chunked_logprob.ChunkedLogProbFunction, "apply",
                        lambda *a, **k: fused_calls.append(1) or fused_apply(*a, **k))
    ours = trainer.compute_loss(trainer.model, dict(batch), num_items_in_batch=n_supervised)
    assert fused_calls == []
    trls = SFTTrainer.compute_loss(trainer, trainer.model, dict(batch), num_items_in_batch=n_supervised)
    assert fused_calls  # the comparison really ran TRL's fused head

    with torch.no_grad():
        logits = trainer.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    by_hand = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(),
                                                ignore_index=-100, reduction="sum") / n_supervised
    assert ours.item() == pytest.approx(by_hand.item(), rel=1e-5)
    assert ours.item() == pytest.approx(trls.item(), rel=1e-5)


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
