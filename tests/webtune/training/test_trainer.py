"""The TRL trainer the hf and unsloth backends build (webtune.training.trainer): the trainer's labels checked
against the mask, the full-logits loss on a CPU, and the config's activation checkpointing."""

import warnings

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from webtune.formats.harmony import FORMAT
from webtune.training import FitJob, TrainError
from webtune.training.device import Placement
from webtune.training.supervision import encode_rows
from webtune.training.trainer import check_prepared, full_logits_on_cpu_or_sharded, sft_config, to_dataset

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


# --- the config -----------------------------------------------------------------------------------


@pytest.mark.parametrize("checkpointing", [False, True])
def test_activation_checkpointing_is_set_by_transformers_5s_name_without_a_warning(load, tmp_path,
                                                                                   checkpointing):
    """TRL 1.16 defaults the deprecated gradient_checkpointing to True, which transformers 5.23 warns
    about; the config sets activation_checkpointing (the old name mirrors it, for TRL and Unsloth)."""
    job = FitJob(base=None, train=None, val=None, order=[], total_steps=1, max_length=512,
                 params=load("train"), checkpoints=tmp_path, resume_from=None, live_dir=tmp_path,
                 progress=print)
    where = Placement(cuda=False, precision="fp32", processes=1, threads=1, sharding="none")
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        config = sft_config(job, where, checkpointing, model=None)
    assert (config.activation_checkpointing, config.gradient_checkpointing) == (checkpointing, checkpointing)


def toy_llama(tok):
    return LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                                        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                        attn_implementation="eager"))


# --- the loss on a CPU ----------------------------------------------------------------------------


def test_on_a_cpu_the_loss_comes_from_full_logits_and_equals_trls_fused_loss(tok, encoded, tmp_path,
                                                                               monkeypatch):
    """TRL's fused LM head is slow on a CPU (full_logits_on_cpu_or_sharded); the
    replacement must train on the same number: the supervised tokens' cross-entropy, summed over the batch and
    divided by its supervised-token count, and the fused head must not run."""
    from trl import SFTConfig, SFTTrainer
    from trl.kernels import chunked_logprob

    torch.manual_seed(0)
    model = toy_llama(tok)
    args = SFTConfig(output_dir=str(tmp_path), use_cpu=True, report_to="none", per_device_train_batch_size=3,
                     assistant_only_loss=False, max_length=None, activation_checkpointing=False)
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


