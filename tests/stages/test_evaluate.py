"""Stage evaluate: base and adapter on the test split and the held-out pages (loss on train's supervised
tokens, bits per byte, greedy answers decoded with the params' knobs, their scores and intervals), the
gate, the judge, its outputs, and its refusals. The scoring, intervals and reports themselves are
webtune.evaluation's (tests/webtune/test_evaluation.py, tests/webtune/test_judge.py).

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
from webtune.evaluation.answers import loops
from webtune.formats.harmony import FORMAT
from webtune.models import load_base
from webtune.models.inference import ChatModel
from webtune.models.tiny import TinyParams, build_tiny_model
from webtune.models.tiny_tokenizer import train_tokenizer
from webtune.params import load_section
from webtune.schema import CHAT_ROWS, CLEAN_DOCS

# Held-out pages for bits per byte: one short, one spanning several text_window windows.
DOCS = ["The if statement selects one suite.", " ".join(f"word{i} of a longer page" for i in range(60))]
NO_DOCS = dict(doc_ids=[], docs=[])


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
    params = dataclasses.replace(load("evaluate"), samples=0, batch_size=2, max_new_tokens=2, gate="off")

    def supervised_tokens(turns: str) -> int:
        metrics, _ = E.evaluate(chat, pair_ids=["a", "b", "c"], rows=TWO_TURNS, params=params, **NO_DOCS,
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
    kw = dict(pair_ids=["p0", "p1"], rows=ROWS[:2], supervised=load("train"), progress=lambda line: None,
              **NO_DOCS)
    params = dataclasses.replace(load("evaluate"), samples=2, max_new_tokens=8, batch_size=2,
                                 repetition_penalty=1.0, no_repeat_ngram_size=0, gate="off")
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


def write_test_docs(path, texts):
    records = [{"doc_id": f"doc{i}", "source": "test", "url": f"test://doc/{i}",
                "fetched_at": "2026-01-01T00:00:00Z",
                "content_sha256": "0" * 64, "content_type": "text/plain", "title": f"doc {i}", "text": t,
                "record": None, "n_chars": len(t)} for i, t in enumerate(texts)]
    pq.write_table(pa.Table.from_pylist(records, schema=CLEAN_DOCS), path)


def stage_args(tmp_path, repo, tiny_base, adapter_dir, rows=ROWS, samples=3, **evaluate):
    test, docs, params = tmp_path / "test.parquet", tmp_path / "test_docs.parquet", tmp_path / "params.yaml"
    write_test_split(test, rows)
    write_test_docs(docs, DOCS)
    all_params = yaml.safe_load((repo / "params.yaml").read_text())  # evaluate reads train's supervision too
    all_params["evaluate"] |= {"samples": samples, "max_new_tokens": 8, "repetition_penalty": 1.1,
                               "no_repeat_ngram_size": 0, "batch_size": 2, "threads": 1, "text_window": 16,
                               "bootstrap": 200, "gate": "warn", "gate_against": ""} | evaluate
    params.write_text(yaml.safe_dump(all_params))
    out = {"samples": tmp_path / "reports" / "eval_samples.jsonl",
           "report": tmp_path / "reports" / "eval_samples.md",
           "plot": tmp_path / "reports" / "eval_compare.csv",
           "metrics": tmp_path / "metrics" / "evaluate.json"}
    argv = ["--base", str(tiny_base), "--adapter", str(adapter_dir), "--test", str(test),
            "--test-docs", str(docs), "--judge-cache", str(tmp_path / "judge.sqlite"),
            "--samples", str(out["samples"]), "--samples-report", str(out["report"]),
            "--compare-plot", str(out["plot"]), "--metrics", str(out["metrics"]), "--params", str(params)]
    return argv, out


def test_main_writes_samples_report_plot_and_metrics(tmp_path, repo, tiny_base, adapters, load, capsys):
    argv, out = stage_args(tmp_path, repo, tiny_base, adapters["perturbed"])
    E.main(argv)

    metrics = json.loads(out["metrics"].read_text())
    assert set(metrics) == {"base", "adapter", "delta", "ratio", "verdict", "gate", "test_rows", "samples",
                            "supervised_tokens", "held_out_docs", "held_out_bytes", "confidence", "bootstrap",
                            "test_fingerprint"}
    every = {"loss", "perplexity", "bits_per_byte", "chrf1", "chrf_precision", "chrf_recall", "chrf2",
             "rougeL_f1", "rougeL_precision", "rougeL_recall", "similarity", "length_ratio", "stop_rate",
             "loop_rate", "answer_tokens"}
    for name in E.MODELS:
        assert set(metrics[name]) == every
        assert metrics[name]["perplexity"] == pytest.approx(math.exp(metrics[name]["loss"]), rel=1e-5)
        assert 0 <= metrics[name]["chrf1"] <= 100 and 0 <= metrics[name]["stop_rate"] <= 1
        assert 0 < metrics[name]["answer_tokens"] <= 8 and 0 <= metrics[name]["loop_rate"] <= 1
    assert set(metrics["delta"]) == every - {"perplexity"}
    for name, d in metrics["delta"].items():
        assert d["value"] == pytest.approx(metrics["adapter"][name] - metrics["base"][name], abs=2e-6)
        assert d["low"] <= d["high"] and d["verdict"] in ({"", "adapter", "base", "neither"})
    ratio = metrics["adapter"]["loss"] / metrics["base"]["loss"]
    assert metrics["ratio"]["loss"] == pytest.approx(ratio, rel=1e-5)
    assert (metrics["test_rows"], metrics["samples"], metrics["held_out_docs"]) == (4, 3, 2)
    assert metrics["held_out_bytes"] == sum(len(d.encode()) for d in DOCS)

    train_params = load("train")
    base = ChatModel.load(tiny_base)
    base_loss, n_tokens = base.assistant_loss(ROWS, batch_size=4, channels=train_params.channels,
                                              turns=train_params.assistant_turns)
    assert metrics["base"]["loss"] == round(base_loss, 6) and metrics["supervised_tokens"] == n_tokens
    # bits per byte: the pages' summed nats (any window size scores every token once) over ln 2 x bytes
    nats = sum(nll for nll, _ in base.text_nll(DOCS, window=64, batch_size=1))
    assert metrics["base"]["bits_per_byte"] == pytest.approx(nats / math.log(2) / metrics["held_out_bytes"],
                                                             rel=1e-4)

    samples = [json.loads(line) for line in out["samples"].read_text().splitlines()]
    assert [s["pair_id"] for s in samples] == ["p0", "p1", "p2"]  # the first rows, in file order
    assert samples[0]["prompt"] == QA[0][0] and samples[0]["reference"] == QA[0][1]
    assert set(samples[0]) == {"pair_id", "prompt", "reference", "base_output", "adapter_output",
                               "base_stopped", "adapter_stopped", "base_tokens", "adapter_tokens",
                               "base_loop", "adapter_loop", "base_chrf1", "adapter_chrf1", "base_rougeL_f1",
                               "adapter_rougeL_f1", "base_similarity", "adapter_similarity"}
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
    assert report.splitlines()[2] == f"**{metrics['verdict']}**"
    table = report[report.index("| question |"):].splitlines()[2:]
    assert len(table) == 3 and all(QA[i][0] in row for i, row in enumerate(table))
    assert "| bits per byte of held-out text | " in report and "repetition_penalty 1.1" in report
    assert f"Gate (warn): {'passed' if metrics['gate']['passed'] else 'failed'}" in report

    plot = out["plot"].read_text().splitlines()
    assert plot[0] == "model,loss,bits_per_byte,chrf1,rougeL_f1,similarity,stop_rate,answer_tokens,loop_rate"
    assert plot[2].startswith(f"adapter,{metrics['adapter']['loss']},{metrics['adapter']['bits_per_byte']},")
    assert plot[2].endswith(f",{metrics['adapter']['answer_tokens']},{metrics['adapter']['loop_rate']}")

    err = capsys.readouterr().err
    assert "bits per byte of 2 held-out pages" in err and f"evaluate: {metrics['gate']['line']}" in err


def test_samples_caps_the_answered_rows_and_zero_answers_every_row(tmp_path, repo, tiny_base, adapters):
    for samples, answered in ((2, 2), (0, 4)):
        (tmp_path / str(samples)).mkdir()
        argv, out = stage_args(tmp_path / str(samples), repo, tiny_base, adapters["perturbed"],
                               samples=samples)
        E.main(argv)
        metrics = json.loads(out["metrics"].read_text())
        assert (metrics["samples"], metrics["test_rows"]) == (answered, 4)
        assert len(out["samples"].read_text().splitlines()) == answered


def test_an_adapter_equal_to_its_base_fails_the_gate_with_one_line(tmp_path, repo, tiny_base, adapters,
                                                                    capsys):
    """The fresh adapter (LoRA B = 0: what a learning rate of 0 leaves) is its base: no metric can be better,
    so `gate: fail` exits 1 naming the metric, both values and the interval, after writing every output."""
    argv, out = stage_args(tmp_path, repo, tiny_base, adapters["fresh"], gate="fail")
    with pytest.raises(SystemExit) as e:
        E.main(argv)
    assert e.value.code == 1
    line = capsys.readouterr().err.splitlines()[-1]
    assert re.fullmatch(r"evaluate: gate failed: loss: adapter (\S+) vs base \1, difference \+0\.00000 "
                        r"\(95% interval \+0\.00000 to \+0\.00000\): the adapter is not better than the base",
                        line), line
    metrics = json.loads(out["metrics"].read_text())  # the verdict is in the metrics either way
    assert metrics["gate"]["passed"] is False and metrics["delta"]["loss"]["verdict"] == "neither"
    assert all(p.exists() for p in out.values())


def test_a_shuffled_adapter_fails_the_gate_as_worse_than_its_base(tmp_path, repo, tiny_base, adapters,
                                                                   capsys):
    """The perturbed adapter's weights are noise: the base predicts the answers better, beyond noise."""
    argv, out = stage_args(tmp_path, repo, tiny_base, adapters["perturbed"], gate="fail",
                           gate_metrics=["loss"])
    with pytest.raises(SystemExit):
        E.main(argv)
    assert capsys.readouterr().err.splitlines()[-1].endswith("the adapter is not better than the base")
    metrics = json.loads(out["metrics"].read_text())
    assert metrics["delta"]["loss"]["verdict"] == "base" and metrics["delta"]["loss"]["low"] > 0


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
    params = dataclasses.replace(load("evaluate"), samples=2, max_new_tokens=4, batch_size=2, text_window=16,
                                 gate="off")
    train_params = load("train")
    kw = dict(pair_ids=[f"p{i}" for i in range(4)], rows=ROWS, params=params, supervised=train_params,
              progress=lambda line: None, doc_ids=["d0", "d1"], docs=DOCS)
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
    assert "loss" not in metrics["adapter"] and "bits_per_byte" not in metrics["adapter"]
    assert "local-only" in metrics["loss_note"] and metrics["held_out_docs"] == 0
    assert metrics["adapter"]["chrf1"] > metrics["base"]["chrf1"] and metrics["adapter"]["stop_rate"] == 1.0
    assert "No loss or bits per byte (loss and bits per byte are local-only" in out["report"].read_text()
    assert key not in "".join(p.read_text() for p in out.values())


def test_main_with_a_judge_scores_both_orders_and_a_rerun_pays_nothing(tmp_path, repo, tiny_base, adapters,
                                                                        monkeypatch):
    """evaluate.judge.base_url set: every answered prompt is judged in both orders through the OpenAI
    emulator, the verdicts land in the metrics, the records and the report, and a second run over the same
    answers is served from the judge cache (no call)."""
    from tests.emulators.openai import OpenAIEmulator

    decoding = dict(max_new_tokens=8, batch_size=2, repetition_penalty=1.1)  # stage_args' knobs
    adapter_answers = {a.text for a in ChatModel.load(tiny_base, adapters["perturbed"]).generate(ROWS[:3],
                                                                                                 **decoding)}

    def prefers_the_adapter(body):  # a judge that always finds the adapter's answer much better
        user = body["messages"][1]["content"]
        shown = json.loads(user[user.index("{") : user.rindex("}") + 1])
        return "[[A>>B]]" if shown["answer_a"] in adapter_answers else "[[B>>A]]"

    key = "sk-test-eval-judge-91c"
    monkeypatch.setenv("OPENAI_API_KEY", key)
    with OpenAIEmulator(key=key) as api:
        api.answer_for = prefers_the_adapter
        judge = {"base_url": f"{api.url}/v1", "model": "judge-1", "key_env": "OPENAI_API_KEY",
                 "max_tokens": 64, "length_margin": 200, "workers": 2}
        argv, out = stage_args(tmp_path, repo, tiny_base, adapters["perturbed"], judge=judge)
        E.main(argv)
        first = json.loads(out["metrics"].read_text())["judge"]
        calls = len(api.calls("POST", "/v1/chat/completions"))
        E.main(argv)
        again = json.loads(out["metrics"].read_text())["judge"]
        assert len(api.calls("POST", "/v1/chat/completions")) == calls == 6  # 3 prompts x 2 orders, once
    assert (first["adapter_wins"], first["base_wins"], first["ties"]) == (3, 0, 0)
    assert first["score"] == {"value": 1.0, "low": 1.0, "high": 1.0} and first["model"] == "judge-1"
    assert (first["usage"]["calls"], again["usage"]["calls"], again["usage"]["cached"]) == (6, 0, 6)
    records = [json.loads(line) for line in out["samples"].read_text().splitlines()]
    assert [r["judge_score"] for r in records] == [1.0] * 3
    assert "Judge judge-1: adapter wins 3, base wins 0, ties 0" in out["report"].read_text()
    assert key not in "".join(p.read_text() for p in out.values())


def test_a_text_window_beyond_the_bases_context_is_refused_naming_the_key(tmp_path, repo, tiny_base, adapters,
                                                                           capsys):
    context = ChatModel.load(tiny_base).tokenizer.model_max_length
    argv, out = stage_args(tmp_path, repo, tiny_base, adapters["fresh"], text_window=context)
    assert_refused(tmp_path, argv, out, capsys, f"evaluate.text_window: {context} tokens",
                   f"the base's context of {context}")
