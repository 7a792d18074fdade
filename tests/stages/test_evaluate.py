"""Stage evaluate: base and adapter on the test split (loss on train's supervised tokens, greedy answers
decoded with the params' knobs, their scores), its outputs, and its refusals. The scoring and the reports
themselves are webtune.evaluation's (tests/webtune/test_evaluation.py).

The session's toy base and LoRA adapters made with peft (tests/webtune/models/test_inference.py: a fresh
one, B = 0, and a perturbed one): seconds, not minutes.
"""

import dataclasses
import json
import math
import re
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from stages import evaluate as E
from tests.toys import SMALL, TEXTS
from tests.webtune.models.test_inference import QA, ROWS, lora_config, make_adapter
from webtune import params as P
from webtune.errors import ParamsError
from webtune.evaluation import loops
from webtune.formats.harmony import FORMAT
from webtune.models import load_base
from webtune.models.inference import ChatModel
from webtune.models.tiny import TinyParams, build_tiny_model
from webtune.models.tiny_tokenizer import train_tokenizer
from webtune.params import load_section
from webtune.schema import CHAT_ROWS


@pytest.fixture(scope="module")
def adapters(tiny_base, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("adapters")
    return {"fresh": make_adapter(tiny_base, root / "fresh", perturb=False),
            "perturbed": make_adapter(tiny_base, root / "perturbed", perturb=True)}


# --- evaluate() scores the tokens train trains ---------------------------------------------------


TWO_TURNS = [
    [{"role": "user", "content": f"Q{i}"}, {"role": "assistant", "content": f"first answer {i}"},
     {"role": "user", "content": "And then?"},
     {"role": "assistant", "content": f"the second, longer answer {i}"}]
    for i in range(3)
]


def test_evaluate_scores_the_channels_and_turns_train_supervises(tiny_base, adapters, load):
    chat = ChatModel.load(tiny_base, adapters["perturbed"])
    tok, train_params = chat.tokenizer, load("train")
    params = dataclasses.replace(load("evaluate"), samples=0, batch_size=2)

    def supervised_tokens(turns: str) -> int:
        metrics, _ = E.evaluate(chat, pair_ids=["a", "b", "c"], rows=TWO_TURNS, params=params,
                                supervised=dataclasses.replace(train_params, assistant_turns=turns),
                                progress=lambda line: None)
        return metrics["supervised_tokens"]

    def answer_tokens(text: str) -> int:  # the answer and its stop token (<|end|> or <|return|>)
        return len(tok.encode(text, add_special_tokens=False)) + 1

    last = sum(answer_tokens(row[3]["content"]) for row in TWO_TURNS)
    every = last + sum(answer_tokens(row[1]["content"]) for row in TWO_TURNS)
    assert supervised_tokens("last") == last
    assert supervised_tokens("all") == every
    assert last != every


# --- the decoding knobs --------------------------------------------------------------------------


def test_evaluate_decodes_both_models_with_the_params_knobs(tiny_base, adapters, load):
    chat = ChatModel.load(tiny_base, adapters["perturbed"])
    kw = dict(pair_ids=["p0", "p1"], rows=ROWS[:2], supervised=load("train"), progress=lambda line: None)
    params = dataclasses.replace(load("evaluate"), samples=2, max_new_tokens=8, batch_size=2,
                                 repetition_penalty=1.0, no_repeat_ngram_size=0)
    knobs = dict(repetition_penalty=1.3, no_repeat_ngram_size=1)
    _, plain = E.evaluate(chat, params=params, **kw)
    _, decoded = E.evaluate(chat, params=P.replace(params, **knobs), **kw)
    with chat.base_only():
        base = chat.generate(ROWS[:2], 8, 2, **knobs)
    adapter = chat.generate(ROWS[:2], 8, 2, **knobs)
    assert [s["base_output"] for s in decoded] == [a.text for a in base]
    assert [s["adapter_output"] for s in decoded] == [a.text for a in adapter]
    assert [s["base_output"] for s in plain] != [s["base_output"] for s in decoded]  # the knobs did something


@pytest.mark.parametrize(("key", "value", "message"), [
    ("repetition_penalty", 0.5, "must be at least 1.0, got 0.5"),
    ("no_repeat_ngram_size", -1, "must be at least 0, got -1"),
])
def test_a_decoding_knob_out_of_range_is_refused_naming_its_dotted_key(tmp_path, repo, key, value, message):
    raw = yaml.safe_load((repo / "params.yaml").read_text())
    raw["evaluate"][key] = value
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(ParamsError, match=rf"^evaluate\.{key}: {re.escape(message)}$"):
        load_section("evaluate", tmp_path / "params.yaml")


def test_the_decoding_knobs_at_their_off_values_load(tmp_path, repo):
    raw = yaml.safe_load((repo / "params.yaml").read_text())
    raw["evaluate"] |= {"repetition_penalty": 1, "no_repeat_ngram_size": 0, "threads": 2}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    params = load_section("evaluate", tmp_path / "params.yaml")
    assert (params.repetition_penalty, params.no_repeat_ngram_size, params.threads) == (1.0, 0, 2)
    assert isinstance(params.repetition_penalty, float)


# --- the stage -----------------------------------------------------------------------------------


def write_test_split(path, rows):
    records = [
        {
            "doc_id": f"d{i}", "source": "test", "url": f"test://{i}", "fetched_at": "2026-01-01T00:00:00Z",
            "content_sha256": "0" * 64, "pair_id": f"p{i}", "task": "doc_qa", "split": "test", "messages": m,
            "text": FORMAT.render(m), "n_tokens": 0, "n_special_ids": 0,
            "n_expected_special_ids": FORMAT.expected_special_ids(m),
        }
        for i, m in enumerate(rows)
    ]
    pq.write_table(pa.Table.from_pylist(records, schema=CHAT_ROWS), path)


def stage_args(tmp_path, repo, tiny_base, adapter_dir, rows=ROWS, samples=3):
    test, params = tmp_path / "test.parquet", tmp_path / "params.yaml"
    write_test_split(test, rows)
    all_params = yaml.safe_load((repo / "params.yaml").read_text())  # evaluate reads train's supervision too
    all_params["evaluate"] = {"samples": samples, "max_new_tokens": 8, "repetition_penalty": 1.1,
                              "no_repeat_ngram_size": 0, "batch_size": 2, "threads": 1}
    params.write_text(yaml.safe_dump(all_params))
    out = {"samples": tmp_path / "reports" / "eval_samples.jsonl",
           "report": tmp_path / "reports" / "eval_samples.md",
           "plot": tmp_path / "reports" / "eval_compare.csv",
           "metrics": tmp_path / "metrics" / "evaluate.json"}
    argv = ["--base", str(tiny_base), "--adapter", str(adapter_dir), "--test", str(test),
            "--samples", str(out["samples"]), "--samples-report", str(out["report"]),
            "--compare-plot", str(out["plot"]), "--metrics", str(out["metrics"]), "--params", str(params)]
    return argv, out


def test_main_writes_samples_report_plot_and_metrics(tmp_path, repo, tiny_base, adapters, load, capsys):
    argv, out = stage_args(tmp_path, repo, tiny_base, adapters["perturbed"])
    E.main(argv)

    metrics = json.loads(out["metrics"].read_text())
    assert set(metrics) == {"base", "adapter", "loss_ratio", "chrf_ratio", "base_chrf_length_matched",
                            "chrf_ratio_length_matched", "test_rows", "supervised_tokens", "samples"}
    for name in E.MODELS:
        assert set(metrics[name]) == {"loss", "perplexity", "chrf", "stop_rate", "answer_tokens", "loop_rate"}
        assert metrics[name]["perplexity"] == pytest.approx(math.exp(metrics[name]["loss"]), rel=1e-5)
        assert 0 <= metrics[name]["chrf"] <= 100 and 0 <= metrics[name]["stop_rate"] <= 1
        assert 0 < metrics[name]["answer_tokens"] <= 8 and 0 <= metrics[name]["loop_rate"] <= 1
    ratio = metrics["adapter"]["loss"] / metrics["base"]["loss"]
    assert metrics["loss_ratio"] == pytest.approx(ratio, rel=1e-5)
    if metrics["base"]["chrf"]:
        assert metrics["chrf_ratio"] == pytest.approx(metrics["adapter"]["chrf"] / metrics["base"]["chrf"],
                                                      rel=1e-4)
    else:
        assert metrics["chrf_ratio"] is None
    assert metrics["test_rows"] == 4 and metrics["samples"] == 3

    train_params = load("train")
    base = ChatModel.load(tiny_base)
    base_loss, n_tokens = base.assistant_loss(ROWS, batch_size=4, channels=train_params.channels,
                                              turns=train_params.assistant_turns)
    assert metrics["base"]["loss"] == round(base_loss, 6) and metrics["supervised_tokens"] == n_tokens

    samples = [json.loads(line) for line in out["samples"].read_text().splitlines()]
    assert [s["pair_id"] for s in samples] == ["p0", "p1", "p2"]  # the first rows, in file order
    assert samples[0]["prompt"] == QA[0][0] and samples[0]["reference"] == QA[0][1]
    assert set(samples[0]) == {"pair_id", "prompt", "reference", "base_output", "adapter_output",
                               "base_stopped", "adapter_stopped", "base_chrf", "adapter_chrf",
                               "base_tokens", "adapter_tokens", "base_loop", "adapter_loop"}
    decoding = dict(max_new_tokens=8, batch_size=2, repetition_penalty=1.1)  # stage_args' knobs
    base_answers = base.generate(ROWS[:3], **decoding)
    assert [(s["base_output"], s["base_stopped"], s["base_tokens"]) for s in samples] == [
        tuple(a) for a in base_answers]
    # The toy base answers every prompt alike; the perturbed adapter's answers tell the prompts apart.
    adapter_answers = ChatModel.load(tiny_base, adapters["perturbed"]).generate(ROWS[:3], **decoding)
    assert len({a.text for a in adapter_answers}) == 3
    assert [(s["adapter_output"], s["adapter_stopped"], s["adapter_tokens"]) for s in samples] == [
        tuple(a) for a in adapter_answers]
    assert metrics["adapter"]["answer_tokens"] == round(sum(a.tokens for a in adapter_answers) / 3, 6)
    assert [s["adapter_loop"] for s in samples] == [loops(a.text) for a in adapter_answers]

    report = out["report"].read_text()
    table = report[report.index("| question |"):].splitlines()[2:]
    assert len(table) == 3 and all(QA[i][0] in row for i, row in enumerate(table))
    assert "| loss (assistant tokens) | " in report and "repetition_penalty 1.1" in report

    plot = out["plot"].read_text().splitlines()
    assert plot[0] == "model,loss,perplexity,chrf,stop_rate,answer_tokens,loop_rate" and len(plot) == 1 + 2
    assert plot[2].startswith(f"adapter,{metrics['adapter']['loss']},{metrics['adapter']['perplexity']},")
    assert plot[2].endswith(f",{metrics['adapter']['answer_tokens']},{metrics['adapter']['loop_rate']}")

    assert "evaluate: loss base" in capsys.readouterr().err


def test_main_with_no_samples_scores_the_loss_only(tmp_path, repo, tiny_base, adapters):
    argv, out = stage_args(tmp_path, repo, tiny_base, adapters["perturbed"], samples=0)
    E.main(argv)
    metrics = json.loads(out["metrics"].read_text())
    assert metrics["samples"] == 0
    assert metrics["base"]["chrf"] is None and metrics["adapter"]["stop_rate"] is None
    assert out["samples"].read_text() == ""
    assert "No samples (evaluate.samples is 0)." in out["report"].read_text()
    plot_rows = out["plot"].read_text().splitlines()[1:]
    assert [line.split(",")[3:] for line in plot_rows] == [[""] * 4] * 2  # only loss and perplexity


def test_main_is_repeatable_to_the_bit(tmp_path, repo, tiny_base, adapters):
    outputs = []
    for run in ("a", "b"):
        (tmp_path / run).mkdir()
        argv, out = stage_args(tmp_path / run, repo, tiny_base, adapters["perturbed"])
        E.main(argv)
        outputs.append(tuple(out[k].read_bytes() for k in ("metrics", "samples", "report", "plot")))
    assert outputs[0] == outputs[1]


def assert_refused(tmp_path, argv, out, capsys, *needles):
    with pytest.raises(SystemExit) as e:
        E.main(argv)
    assert e.value.code == 1
    message = capsys.readouterr().err.splitlines()[-1]  # the stage's one line, after any loading progress
    assert message.startswith("evaluate: ") and all(n in message for n in needles), message
    assert not any(p.exists() for p in out.values())
    assert not list(tmp_path.rglob(".*.tmp"))  # no temporary file left behind


def test_main_refuses_an_empty_test_split_and_writes_nothing(tmp_path, repo, tiny_base, adapters, capsys):
    argv, out = stage_args(tmp_path, repo, tiny_base, adapters["perturbed"], rows=[])
    assert_refused(tmp_path, argv, out, capsys,
                   f"evaluate: {tmp_path / 'test.parquet'} has no rows: nothing to evaluate")


def test_main_refuses_a_folder_that_is_not_an_adapter(tmp_path, repo, tiny_base, capsys):
    (tmp_path / "not-an-adapter").mkdir()
    argv, out = stage_args(tmp_path, repo, tiny_base, tmp_path / "not-an-adapter")
    assert_refused(tmp_path, argv, out, capsys, str(tmp_path / "not-an-adapter"), "adapter_config.json")


def test_main_refuses_an_adapter_saved_with_another_tokenizer(tmp_path, repo, tiny_base, adapters, capsys):
    other = tmp_path / "other-tokenizer"
    shutil.copytree(adapters["fresh"], other)
    for f in other.glob("tokenizer*"):
        f.unlink()
    train_tokenizer(TEXTS[:3], vocab_size=300).save_pretrained(other)
    argv, out = stage_args(tmp_path, repo, tiny_base, other)
    assert_refused(tmp_path, argv, out, capsys, str(other), "differs from the base's")


def test_main_refuses_an_adapter_made_for_a_base_of_another_width(tmp_path, repo, tiny_base, tok, capsys):
    from peft import get_peft_model

    narrow = build_tiny_model(TinyParams(**{**SMALL, "hidden_size": 16}), vocab_size=len(tok))
    get_peft_model(narrow, lora_config()).save_pretrained(tmp_path / "narrow")
    argv, out = stage_args(tmp_path, repo, tiny_base, tmp_path / "narrow")
    assert_refused(tmp_path, argv, out, capsys, str(tmp_path / "narrow"), "cannot load the adapter")


def test_the_base_only_numbers_are_the_base_alone(tiny_base, adapters, load):
    """evaluate's base column comes from the adapter's model with the adapter off: the same as the base."""
    params = dataclasses.replace(load("evaluate"), samples=2, max_new_tokens=4, batch_size=2)
    train_params = load("train")
    kw = dict(pair_ids=[f"p{i}" for i in range(4)], rows=ROWS, params=params, supervised=train_params,
              progress=lambda line: None)
    with_adapter, _ = E.evaluate(ChatModel.load(tiny_base, adapters["perturbed"]), **kw)
    base = load_base(tiny_base)
    alone, _ = E.evaluate(ChatModel(base.model, base.tokenizer, base.chat_format), **kw)
    assert with_adapter["base"] == alone["base"] == alone["adapter"]
    assert with_adapter["adapter"] != with_adapter["base"]


def test_main_on_a_hosted_adapter_scores_both_models_through_chat_completions(tmp_path, repo, tiny_base,
                                                                              monkeypatch):
    """An adapter folder naming a hosted fine-tune (train.backend openai): the base model and the ft: model
    answer through the OpenAI emulator, scored like a local pair; loss is absent and the metrics say why."""
    from tests.emulators.openai import OpenAIEmulator

    key = "sk-test-eval-hosted-55e"
    with OpenAIEmulator(key=key) as api:
        ft = "ft:gpt-4o-mini-2024-07-18:emulated:webtune:abc123"
        references = [m[-1]["content"] for m in ROWS[:3]]
        api.answers |= {"gpt-4o-mini-2024-07-18": "Something else entirely, at length.", ft: references[0]}
        adapter = tmp_path / "adapter"
        adapter.mkdir()
        (adapter / "hosted.json").write_text(json.dumps({
            "backend": "openai", "fine_tuned_model": ft, "job_id": "ftjob-1",
            "base_model": "gpt-4o-mini-2024-07-18", "trained_tokens": 1, "base_url": f"{api.url}/v1"}))
        monkeypatch.setenv("OPENAI_API_KEY", key)
        argv, out = stage_args(tmp_path, repo, tiny_base, adapter)
        E.main(argv)
        asked = {c.body["model"] for c in api.calls("POST", "/v1/chat/completions")}
    metrics = json.loads(out["metrics"].read_text())
    assert asked == {"gpt-4o-mini-2024-07-18", ft}
    assert metrics["adapter"]["loss"] is None and "local-only" in metrics["loss_note"]
    assert metrics["adapter"]["chrf"] > metrics["base"]["chrf"] and metrics["adapter"]["stop_rate"] == 1.0
    assert "No loss (loss is local-only" in out["report"].read_text()
    assert key not in "".join(p.read_text() for p in out.values())
