"""Stage evaluate: assistant-token loss, greedy answers and their stop detection, chrF, the stage end to end.

A toy base (32 wide, 512-token vocab, 5 warm-up steps) and LoRA adapters made here with peft, shaped
like train's (attention projections + gpt-oss expert weights): seconds, not minutes.
"""

import json
from pydoc_data.topics import topics

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml

from stages import base, chat_template
from stages import evaluate as E
from stages.schema import CHAT_ROWS

TEXTS = list(topics.values())[:10]
SMALL = dict(
    model="tiny-gpt-oss", revision="main", vocab_size=512, hidden_size=32, num_layers=2, num_heads=4,
    num_kv_heads=2, num_experts=4, experts_per_token=2, max_position_embeddings=256, warmup_steps=5,
    warmup_batch_size=4, warmup_seq_len=32, warmup_lr=0.003, seed=3407, threads=1,
)
QA = [
    ("What does the pass statement do?", "Nothing: it is a placeholder where a statement is required."),
    ("What is a lambda?", "A small anonymous function written as one expression."),
    ("How do I leave a loop early?", "Use break; continue skips to the next iteration instead."),
    ("What does assert check?", "That an expression is true; it raises AssertionError when it is not, unless -O."),
]


def messages(question: str, answer: str, system: str = "") -> list[dict]:
    prefix = [{"role": "system", "content": system}] if system else []
    return prefix + [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]


ROWS = [messages(q, a) for q, a in QA[:3]] + [messages(*QA[3], system="Answer briefly.")]


def lora_config():
    from peft import LoraConfig

    return LoraConfig(
        r=4, lora_alpha=8, lora_dropout=0.0, bias="none", task_type="CAUSAL_LM",
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
        target_parameters=["mlp.experts.gate_up_proj", "mlp.experts.down_proj"],
    )


def make_adapter(base_dir, out, perturb: bool):
    """Save a LoRA adapter on the base: fresh (B = 0, a no-op) or with random B (it changes the model)."""
    from peft import get_peft_model

    model, tok, _ = base.load_base(base_dir)
    model = get_peft_model(model, lora_config())
    if perturb:
        gen = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.copy_(0.3 * torch.randn(p.shape, generator=gen))
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Folders: the base, a fresh adapter, a perturbed adapter."""
    root = tmp_path_factory.mktemp("models")
    base.build_tiny_base(base.BaseParams(**SMALL), TEXTS, root / "base", progress=None)
    return {
        "base": root / "base",
        "fresh": make_adapter(root / "base", root / "fresh", perturb=False),
        "perturbed": make_adapter(root / "base", root / "perturbed", perturb=True),
    }


@pytest.fixture
def loaded(models):
    model, tok, _ = base.load_base(models["base"])
    return model, tok


def with_adapter(model, adapter_dir):
    from peft import PeftModel

    return PeftModel.from_pretrained(model, adapter_dir)


def rigged(model, token_id: int):
    """`model` with an lm_head that always puts token_id on top, whatever the hidden state."""
    head = torch.nn.Linear(model.config.hidden_size, model.config.vocab_size, bias=True)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.zero_()
        head.bias[token_id] = 100.0
    model.lm_head = head
    return model


# --- assistant-token loss ------------------------------------------------------------------------


def test_loss_is_cross_entropy_on_exactly_the_answer_and_its_return_token(loaded):
    model, tok = loaded
    row = ROWS[3]  # system + user + assistant
    ids, _ = chat_template.encode(tok, row)
    prompt = E.prompt_ids(tok, row)
    assert ids[: len(prompt)] == prompt and ids[-1] == tok.convert_tokens_to_ids(chat_template.RETURN)

    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].double(), dim=-1)
    # The answer and <|return|> are ids[len(prompt):]; position t - 1 predicts token t.
    by_hand = [-logp[t - 1, ids[t]].item() for t in range(len(prompt), len(ids))]

    loss, n_tokens = E.assistant_loss(model, tok, [row], batch_size=1)
    assert n_tokens == len(ids) - len(prompt) == len(by_hand)
    assert loss == pytest.approx(sum(by_hand) / len(by_hand), abs=1e-5)


def test_loss_is_token_weighted_so_batch_size_does_not_change_it(loaded):
    model, tok = loaded
    rows = ROWS + [messages("Why?", "Because.")]  # a very short row: a mean of batch means would overweight it
    results = [E.assistant_loss(model, tok, rows, batch_size=b) for b in (1, 2, 5)]
    assert len({n for _, n in results}) == 1
    assert max(loss for loss, _ in results) - min(loss for loss, _ in results) < 1e-6

    per_row = [E.assistant_loss(model, tok, [r], batch_size=1) for r in rows]
    token_weighted = sum(loss * n for loss, n in per_row) / sum(n for _, n in per_row)
    row_weighted = sum(loss for loss, _ in per_row) / len(per_row)
    assert results[0][0] == pytest.approx(token_weighted, abs=1e-6)
    assert abs(token_weighted - row_weighted) > 1e-3  # the test data can tell the two apart


def test_a_fresh_adapter_gives_exactly_the_base_loss_and_a_changed_one_does_not(models):
    model, tok, _ = base.load_base(models["base"])
    base_loss = E.assistant_loss(model, tok, ROWS, batch_size=2)
    fresh = with_adapter(model, models["fresh"])
    assert E.assistant_loss(fresh, tok, ROWS, batch_size=2) == base_loss  # LoRA B = 0 adds exactly nothing

    model, tok, _ = base.load_base(models["base"])
    perturbed = with_adapter(model, models["perturbed"])
    adapter_loss = E.assistant_loss(perturbed, tok, ROWS, batch_size=2)
    assert abs(adapter_loss[0] - base_loss[0]) > 1e-3
    with perturbed.disable_adapter():  # how the stage gets base numbers with one model in memory
        assert E.assistant_loss(perturbed, tok, ROWS, batch_size=2) == base_loss


# --- greedy answers ------------------------------------------------------------------------------


def test_the_prompt_ends_where_the_answer_starts(loaded):
    _, tok = loaded
    text = tok.decode(E.prompt_ids(tok, ROWS[0]))
    assert text == chat_template.render(ROWS[0][:-1], add_generation_prompt=True)
    assert text.endswith("<|start|>assistant<|channel|>final<|message|>")


def test_stop_ids_are_return_end_and_the_models_eos(loaded):
    model, tok = loaded
    ids = tok.convert_tokens_to_ids([chat_template.RETURN, chat_template.END, chat_template.ENDOFTEXT])
    assert E.stop_token_ids(model, tok) == ids


def test_an_answer_ends_at_the_first_stop_id_whatever_follows(loaded):
    model, tok = loaded
    stops = E.stop_token_ids(model, tok)
    ret, end, eot, start = tok.convert_tokens_to_ids(
        [chat_template.RETURN, chat_template.END, chat_template.ENDOFTEXT, chat_template.START]
    )
    words = tok.encode("Use break", add_special_tokens=False)
    assert E.cut_answer(tok, [*words, ret, eot, eot], stops) == ("Use break", True)  # padded after it stopped
    assert E.cut_answer(tok, [*words, end, *words], stops) == ("Use break", True)
    assert E.cut_answer(tok, [*words, *words], stops) == ("Use breakUse break", False)
    assert E.cut_answer(tok, [*words, start, *words], stops) == ("Use breakUse break", False)  # not a stop
    assert E.cut_answer(tok, [ret], stops) == ("", True)


def test_generation_is_deterministic_and_left_padding_does_not_change_answers(models):
    model, tok, _ = base.load_base(models["base"])
    model = with_adapter(model, models["perturbed"])
    prompts = [ROWS[1], ROWS[3], ROWS[0]]  # different prompt lengths: the batch is padded
    batched = E.generate_answers(model, tok, prompts, max_new_tokens=6, batch_size=3)
    assert E.generate_answers(model, tok, prompts, max_new_tokens=6, batch_size=3) == batched
    assert E.generate_answers(model, tok, prompts, max_new_tokens=6, batch_size=1) == batched
    assert all(isinstance(a.text, str) and isinstance(a.stopped, bool) for a in batched)


def test_a_model_that_answers_return_at_once_stopped_with_an_empty_answer(loaded):
    model, tok = loaded
    model = rigged(model, tok.convert_tokens_to_ids(chat_template.RETURN))
    lines = []
    answers = E.generate_answers(model, tok, ROWS, max_new_tokens=5, batch_size=3, progress=lines.append)
    assert answers == [E.Answer("", True)] * len(ROWS)
    assert lines == ["generated 3/4", "generated 4/4"]


def test_a_model_that_never_stops_spends_exactly_the_budget(loaded):
    model, tok = loaded
    letter = tok.convert_tokens_to_ids("a")  # a byte-level BPE alphabet token: decodes to one "a"
    model = rigged(model, letter)
    answers = E.generate_answers(model, tok, ROWS[:2], max_new_tokens=7, batch_size=2)
    assert answers == [E.Answer("a" * 7, False)] * 2


# --- generation metrics --------------------------------------------------------------------------


def test_chrf_and_stop_rate():
    refs = ["The pass statement does nothing.", "A lambda is an anonymous function.", "break leaves the loop."]
    same = E.generation_metrics([E.Answer(r, True) for r in refs], refs)
    assert same["chrf"] == pytest.approx(100.0) and same["chrf_per_sample"] == pytest.approx([100.0] * 3)
    assert same["stop_rate"] == 1.0

    answers = [E.Answer(refs[0], True), E.Answer("", False), E.Answer("break leaves", True)]
    mixed = E.generation_metrics(answers, refs)
    assert mixed["stop_rate"] == pytest.approx(2 / 3)
    first, empty, partial = mixed["chrf_per_sample"]
    assert first == pytest.approx(100.0) and empty == 0.0 and 0 < partial < 100
    assert 0 < mixed["chrf"] < 100

    assert E.generation_metrics([], []) == {"chrf": None, "stop_rate": None, "chrf_per_sample": []}
    with pytest.raises(ValueError, match="2 answers for 3 references"):
        E.generation_metrics(answers[:2], refs)


def test_compare_csv_has_one_row_per_model_and_a_column_per_metric():
    metrics = {"base": {"loss": 2.0, "perplexity": 7.389056, "chrf": 12.5, "stop_rate": None},
               "adapter": {"loss": 1.5, "perplexity": 4.481689, "chrf": 20.0, "stop_rate": 0.25}}
    assert E.compare_csv(metrics).splitlines() == [
        "model,loss,perplexity,chrf,stop_rate",
        "base,2.0,7.389056,12.5,",
        "adapter,1.5,4.481689,20.0,0.25",
    ]


# --- the stage -----------------------------------------------------------------------------------


def write_test_split(path, rows):
    records = [
        {
            "doc_id": f"d{i}", "source": "test", "url": f"test://{i}", "fetched_at": "2026-01-01T00:00:00Z",
            "content_sha256": "0" * 64, "pair_id": f"p{i}", "task": "doc_qa", "split": "test", "messages": m,
            "text": chat_template.render(m), "n_tokens": 0, "n_special_ids": 0,
            "n_expected_special_ids": chat_template.expected_special_ids(m),
        }
        for i, m in enumerate(rows)
    ]
    pq.write_table(pa.Table.from_pylist(records, schema=CHAT_ROWS), path)


def stage_args(tmp_path, models, adapter="perturbed", rows=ROWS, samples=3):
    test, params = tmp_path / "test.parquet", tmp_path / "params.yaml"
    write_test_split(test, rows)
    knobs = {"samples": samples, "max_new_tokens": 8, "batch_size": 2, "threads": 1}
    params.write_text(yaml.safe_dump({"evaluate": knobs}))
    out = {"samples": tmp_path / "reports" / "eval_samples.jsonl", "plot": tmp_path / "reports" / "eval_compare.csv",
           "metrics": tmp_path / "metrics" / "evaluate.json"}
    adapter_dir = models[adapter] if adapter in models else tmp_path / adapter
    argv = ["--base", str(models["base"]), "--adapter", str(adapter_dir), "--test", str(test),
            "--samples", str(out["samples"]), "--compare-plot", str(out["plot"]), "--metrics", str(out["metrics"]),
            "--params", str(params)]
    return argv, out


def test_main_writes_samples_plot_and_metrics(tmp_path, models, capsys):
    argv, out = stage_args(tmp_path, models)
    E.main(argv)

    metrics = json.loads(out["metrics"].read_text())
    assert set(metrics) == {"base", "adapter", "loss_ratio", "test_rows", "supervised_tokens", "samples", "seconds"}
    for name in E.MODELS:
        assert set(metrics[name]) == {"loss", "perplexity", "chrf", "stop_rate"}
        assert metrics[name]["perplexity"] == pytest.approx(2.718281828 ** metrics[name]["loss"], rel=1e-5)
        assert 0 <= metrics[name]["chrf"] <= 100 and 0 <= metrics[name]["stop_rate"] <= 1
    assert metrics["loss_ratio"] == pytest.approx(metrics["adapter"]["loss"] / metrics["base"]["loss"], rel=1e-5)
    assert metrics["test_rows"] == 4 and metrics["samples"] == 3

    model, tok, _ = base.load_base(models["base"])
    base_loss, n_tokens = E.assistant_loss(model, tok, ROWS, batch_size=4)
    assert metrics["base"]["loss"] == round(base_loss, 6) and metrics["supervised_tokens"] == n_tokens

    samples = [json.loads(line) for line in out["samples"].read_text().splitlines()]
    assert [s["pair_id"] for s in samples] == ["p0", "p1", "p2"]  # the first rows, in file order
    assert samples[0]["prompt"] == QA[0][0] and samples[0]["reference"] == QA[0][1]
    assert set(samples[0]) == {"pair_id", "prompt", "reference", "base_output", "adapter_output", "base_stopped",
                               "adapter_stopped", "base_chrf", "adapter_chrf"}
    base_answers = E.generate_answers(model, tok, ROWS[:3], max_new_tokens=8, batch_size=2)
    assert [(s["base_output"], s["base_stopped"]) for s in samples] == [tuple(a) for a in base_answers]
    # The toy base answers every prompt alike; the perturbed adapter's answers tell the prompts apart.
    adapter_answers = E.generate_answers(with_adapter(model, models["perturbed"]), tok, ROWS[:3], 8, batch_size=2)
    assert len({a.text for a in adapter_answers}) == 3
    assert [(s["adapter_output"], s["adapter_stopped"]) for s in samples] == [tuple(a) for a in adapter_answers]

    plot = out["plot"].read_text().splitlines()
    assert plot[0] == "model,loss,perplexity,chrf,stop_rate" and len(plot) == 1 + 2
    assert plot[2].startswith(f"adapter,{metrics['adapter']['loss']},{metrics['adapter']['perplexity']},")

    assert "evaluate: loss base" in capsys.readouterr().err


def test_main_with_no_samples_scores_the_loss_only(tmp_path, models):
    argv, out = stage_args(tmp_path, models, samples=0)
    E.main(argv)
    metrics = json.loads(out["metrics"].read_text())
    assert metrics["samples"] == 0 and metrics["base"]["chrf"] is None and metrics["adapter"]["stop_rate"] is None
    assert out["samples"].read_text() == ""
    assert [line.split(",")[3:] for line in out["plot"].read_text().splitlines()[1:]] == [["", ""]] * 2  # no chrF


def test_main_is_repeatable_to_the_bit(tmp_path, models):
    outputs = []
    for run in ("a", "b"):
        (tmp_path / run).mkdir()
        argv, out = stage_args(tmp_path / run, models)
        E.main(argv)
        metrics = json.loads(out["metrics"].read_text())
        metrics.pop("seconds")
        outputs.append((metrics, out["samples"].read_bytes(), out["plot"].read_bytes()))
    assert outputs[0] == outputs[1]


def assert_refused(tmp_path, argv, out, *needles):
    with pytest.raises(SystemExit) as e:
        E.main(argv)
    message = str(e.value.code)
    assert all(n in message for n in needles), message
    assert not any(p.exists() for p in out.values())
    assert not list((tmp_path).rglob(".*.tmp"))  # no temporary file left behind


def test_main_refuses_an_empty_test_split_and_writes_nothing(tmp_path, models):
    argv, out = stage_args(tmp_path, models, rows=[])
    assert_refused(tmp_path, argv, out, str(tmp_path / "test.parquet"), "no rows")


def test_main_refuses_a_folder_that_is_not_an_adapter(tmp_path, models):
    (tmp_path / "not-an-adapter").mkdir()
    argv, out = stage_args(tmp_path, models, adapter="not-an-adapter")
    assert_refused(tmp_path, argv, out, str(tmp_path / "not-an-adapter"), "adapter_config.json")


def test_main_refuses_an_adapter_saved_with_another_tokenizer(tmp_path, models):
    import shutil

    other = tmp_path / "other-tokenizer"
    shutil.copytree(models["fresh"], other)
    for f in other.glob("tokenizer*"):
        f.unlink()
    base.train_tokenizer(TEXTS[:3], vocab_size=300).save_pretrained(other)
    argv, out = stage_args(tmp_path, models, adapter="other-tokenizer")
    assert_refused(tmp_path, argv, out, str(other), "tokenizer")


def test_main_refuses_an_adapter_made_for_a_base_of_another_width(tmp_path, models):
    from peft import get_peft_model

    _, tok, _ = base.load_base(models["base"])
    narrow = base.build_tiny_model(base.BaseParams(**{**SMALL, "hidden_size": 16}), vocab_size=len(tok))
    get_peft_model(narrow, lora_config()).save_pretrained(tmp_path / "narrow")
    argv, out = stage_args(tmp_path, models, adapter="narrow")
    assert_refused(tmp_path, argv, out, str(tmp_path / "narrow"), "cannot load the adapter")
