"""Token-budget micro-batches: the greedy fill, the seeded plan, the layout choice, and the trainer
reading exactly the planned micro-batches (padded and padding-free)."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from webtune.formats.harmony import FORMAT
from webtune.models.packing import Probe
from webtune.training import TrainError, batching
from webtune.training.supervision import IGNORE, encode_rows
from webtune.training.trainer import planned_trainer, to_dataset

LENGTHS = [10, 3, 9, 2, 3, 30, 7, 7, 1, 12]


def test_padded_micro_batches_fit_the_budget_with_the_longest_row_times_the_rows():
    rows = sorted(range(len(LENGTHS)), key=lambda i: -LENGTHS[i])  # 30 12 10 9 7 7 3 3 2 1
    assert batching.fill(rows, LENGTHS, 30, padding_free=False) == [[5], [9, 0], [2, 6, 7], [1, 4, 3, 8]]
    # padding-free: the sum of the lengths is what counts
    assert batching.fill(rows, LENGTHS, 30, padding_free=True) == [[5], [9, 0], [2, 6, 7, 1, 4], [3, 8]]


def test_an_epoch_trains_every_row_once_within_the_budget_and_the_plan_is_a_function_of_the_seed():
    gen = torch.Generator().manual_seed(1)
    lengths = torch.randint(20, 400, (300,), generator=gen).tolist()
    for padding_free in (False, True):
        epoch = batching.epoch_plan(lengths, 1024, padding_free, seed=7)
        assert sorted(row for batch in epoch for row in batch) == list(range(300))
        assert all(batching.micro_batch_cost([lengths[i] for i in b], padding_free) <= 1024 for b in epoch)
        assert len(epoch) == batching.per_epoch(lengths, 1024, padding_free)
        assert epoch == batching.epoch_plan(lengths, 1024, padding_free, seed=7)
        assert epoch != batching.epoch_plan(lengths, 1024, padding_free, seed=8)
        # a run longer than an epoch goes on with the next epoch's plan (seed + 1)
        run = batching.plan(lengths, 1024, padding_free, seed=7, micro_batches=len(epoch) + 3)
        assert run == epoch + batching.epoch_plan(lengths, 1024, padding_free, seed=8)[:3]
    # length grouping: padded micro-batches waste little, unlike 2 random rows at a time
    padded = batching.epoch_plan(lengths, 1024, False, seed=7)
    pairs = [[2 * i, 2 * i + 1] for i in range(150)]
    assert batching.padding_share(padded, lengths, False) < 0.05
    assert batching.padding_share(pairs, lengths, False) > 0.2
    assert batching.padding_share(pairs, lengths, True) == 0.0


def test_a_row_longer_than_the_budget_is_refused_naming_it():
    with pytest.raises(TrainError) as error:
        batching.plan([5, 40, 50], 32, padding_free=False, seed=0, micro_batches=1)
    assert str(error.value) == ("batch_tokens 32 is smaller than row 1 (40 tokens; 2 rows are longer): "
                                "set it to at least format.max_length")


def test_the_layout_follows_the_packing_probe():
    said, probed = [], []

    def choose(layout, cross, model_type, apart=0.0):
        probe = lambda: probed.append(cross) or Probe(cross=cross, apart=apart)  # noqa: E731
        return batching.choose_padding_free(layout, probe, "train.hf.batch_layout", model_type, said.append)

    assert choose("padded", 0.0, "llama") is False
    assert probed == [] and said == []  # padded never runs the probe
    assert choose("auto", 1e-6, "llama", apart=0.04) is True  # kernel noise against the rows run alone
    assert choose("auto", 2.8, "gpt_oss") is False
    assert choose("auto", 0.0, "llama", apart=1.15) is False
    assert said == [
        "train: padding-free micro-batches (packing probe: across rows 1e-06, against rows run alone 4.0%)",
        "train: padded micro-batches: in this gpt_oss model rows laid end to end attend to each other "
        "(a row's logits move by 2.8 when the row before it changes; tolerance 0.0001)",
        "train: padded micro-batches: in this llama model rows laid end to end give other logits than the "
        "same rows run alone (by 115% of the largest logit; kernel noise stays below 25%): their positions "
        "are not kept"]
    with pytest.raises(TrainError) as error:
        choose("padding_free", 2.8, "gpt_oss")
    assert str(error.value) == (
        "train.hf.batch_layout is padding_free, but in this gpt_oss model rows laid end to end attend to "
        "each other (a row's logits move by 2.8 when the row before it changes; tolerance 0.0001): "
        "set train.hf.batch_layout: padded (or auto)")


@pytest.mark.parametrize("padding_free", [False, True])
def test_the_trainer_reads_exactly_the_planned_micro_batches(tok, tmp_path, padding_free):
    from trl import SFTConfig, SFTTrainer

    conversations = [[{"role": "user", "content": "q " * (1 + i % 5)},
                      {"role": "assistant", "content": "answer " * (1 + i % 3)}] for i in range(12)]
    encoded = encode_rows(FORMAT, tok, [f"r{i}" for i in range(12)], conversations, channels=("final",),
                          turns="all", max_length=512)
    lengths = [len(ids) for ids in encoded.input_ids]
    budget = 3 * max(lengths)
    plan = batching.plan(lengths, budget, padding_free, seed=0, micro_batches=6)
    order = [row for batch in plan for row in batch]
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32,
                                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1))
    config = SFTConfig(output_dir=str(tmp_path), use_cpu=True, report_to="none",
                       per_device_train_batch_size=1, padding_free=padding_free,
                       max_length=None if padding_free else 512,
                       assistant_only_loss=False, dataloader_num_workers=0, activation_checkpointing=False)
    trainer = planned_trainer(SFTTrainer, [len(b) for b in plan])(
        model=model, args=config, train_dataset=to_dataset(encoded, order), processing_class=tok)
    batches = list(trainer.get_train_dataloader())
    assert len(batches) == len(plan)
    labels = encoded.labels()
    for batch, rows in zip(batches, plan, strict=True):
        if padding_free:  # one sequence, the rows end to end, positions restarting per row
            assert batch["input_ids"].shape == (1, sum(lengths[i] for i in rows))
            assert batch["input_ids"][0].tolist() == [t for i in rows for t in encoded.input_ids[i]]
            assert batch["position_ids"][0].tolist() == [p for i in rows for p in range(lengths[i])]
            assert batch["labels"][0].tolist() == [t for i in rows for t in labels[i]]
        else:  # one row each, padded to the longest
            assert batch["input_ids"].shape == (len(rows), max(lengths[i] for i in rows))
            for k, i in enumerate(rows):
                assert batch["input_ids"][k, :lengths[i]].tolist() == encoded.input_ids[i]
                pads = batch["labels"].shape[1] - lengths[i]
                assert batch["labels"][k].tolist() == labels[i] + [IGNORE] * pads
