"""webtune.evaluation: what counts as a loop; answer metrics equal to sacrebleu's and rouge-score's own; the
paired bootstrap's intervals and verdicts; the promotion gate's checks and lines; the reports (the CSV dvc
plots draws, the Markdown people read, with scraped text kept inert). One WordLlama load for the file."""

import dataclasses
import re
import subprocess
import sys

import numpy as np
import pytest
from rouge_score import rouge_scorer
from sacrebleu.metrics import CHRF

from webtune.evaluation import METRICS, answers, round6
from webtune.evaluation.answers import answer_stats, chrf_counts, loops, similarities
from webtune.evaluation.gate import as_metrics, committed_metrics, decide
from webtune.evaluation.intervals import compare, mean_interval, resample_weights, verdict
from webtune.evaluation.report import cell, compare_csv, sample_records, samples_report, summary_table
from webtune.models.chat import Answer

# --- loops ---------------------------------------------------------------------------------------

SENTENCE = "It is used to make a decision based on the value of the condition."
# ~100 words of ordinary prose that says "the value of the" twice (and "of the" four times).
PARAGRAPH = (
    "The if statement is used for conditional execution. It selects exactly one of the suites by "
    "evaluating the expressions one by one until one is found to be true; then that suite is executed "
    "and no other part of the if statement is executed or evaluated. If all expressions are false, the "
    "suite of the else clause, if present, is executed. Which branch runs depends on the value of the "
    "expression, and the value of the condition is computed only once. Note that a suite can be one or "
    "more statements, and that the elif keyword is short for else if, which avoids deep indentation."
)


def test_an_answer_that_says_the_same_sentence_four_times_loops():
    assert loops(" ".join([SENTENCE] * 4))
    assert loops("Sure. " + "\n".join([SENTENCE] * 4) + " That is all.")  # any whitespace splits words


def test_an_ordinary_paragraph_that_repeats_a_phrase_twice_does_not_loop():
    assert 95 <= len(PARAGRAPH.split()) <= 105 and PARAGRAPH.count("the value of the") == 2
    assert not loops(PARAGRAPH)
    assert not loops(" ".join([SENTENCE] * 2))  # a sentence said twice is restated, not looped


def test_the_third_occurrence_of_a_four_word_sequence_makes_the_loop():
    said = "then we call the function again and"
    two = f"{said} wait. {said} stop."
    assert not loops(two)
    assert loops(f"{two} {said} stop.")
    assert not loops("call the function call the function call the function")  # 3-grams do not count
    assert (answers.LOOP_NGRAM, answers.LOOP_REPEATS) == (4, 3)


def test_loop_words_are_case_sensitive_and_keep_their_punctuation():
    assert loops("the value of the x. the value of the y. the value of the z.")
    assert not loops("the value of the x. The value of the y. the value of the z.")
    assert loops("used to make it. used to make it. used to make it.")
    assert not loops("used to make it. used to make it, used to make it!")


def test_overlapping_repeats_count_and_text_without_spaces_has_no_words():
    assert loops("a a a a a a")  # "a a a a" at words 0, 1 and 2
    assert not loops("a a a a a")
    assert not loops("\n" * 128) and not loops("x" * 500) and not loops("")


# --- answer metrics from hand-made answers -------------------------------------------------------

REFS = ["The pass statement does nothing.", "A lambda is an anonymous function.", "break leaves the loop.",
        "A tuple is an immutable sequence.", "None is a value."]
ANSWERS = [Answer(REFS[0], True, 6), Answer(" ".join([SENTENCE] * 3), False, 128), Answer("", True, 0),
           Answer("A tuple is a sequence that cannot change.", True, 9),
           Answer("None", True, 1)]  # 4 characters: no 5- or 6-grams, so chrF averages over 4 orders


@pytest.fixture(scope="module")
def stats():
    return answer_stats(ANSWERS, REFS)


def value(name: str, per_item: np.ndarray) -> float:
    return float(METRICS[name].value(per_item.sum(0)))


def test_chrf_of_summed_counts_is_sacrebleus_corpus_chrf_for_beta_1_and_2(stats):
    texts = [a.text for a in ANSWERS]
    assert value("chrf1", stats["chrf1"]) == pytest.approx(CHRF(beta=1).corpus_score(texts, [REFS]).score,
                                                           abs=1e-9)
    assert value("chrf2", stats["chrf2"]) == pytest.approx(CHRF().corpus_score(texts, [REFS]).score, abs=1e-9)
    for counts, text, ref in zip(stats["chrf1"], texts, REFS, strict=True):  # and each answer's own
        assert float(METRICS["chrf1"].value(counts)) == pytest.approx(
            CHRF(beta=1).sentence_score(text, [ref]).score, abs=1e-9)
    p, r = value("chrf_precision", stats["chrf1"]), value("chrf_recall", stats["chrf1"])
    assert 0 < p < 100 and 0 < r < 100 and p != r
    assert value("chrf1", stats["chrf1"]) == pytest.approx(2 * p * r / (p + r), abs=1e-9)
    assert float(METRICS["chrf1"].value(stats["chrf1"][0])) == pytest.approx(100.0)  # the reference itself
    assert float(METRICS["chrf1"].value(stats["chrf1"][2])) == 0.0  # the empty answer
    assert chrf_counts([], []).shape == (0, 18)


def test_an_answer_that_runs_on_wins_on_chrf2_and_loses_on_chrf1():
    ref = "A list is a mutable sequence that holds items in order."
    runs_on = ref + (" It can hold objects of any type, grows as items are appended, shrinks when they are "
                     "removed, and supports slicing, sorting, reversing and copying.")
    right_length = "A list holds a mutable sequence of items."
    (on, right) = chrf_counts([runs_on, right_length], [ref, ref])
    score = {m: (float(METRICS[m].value(on)), float(METRICS[m].value(right)))
             for m in ("chrf1", "chrf2", "chrf_recall")}
    assert score["chrf_recall"][0] == pytest.approx(100.0)  # every reference n-gram, by saying more
    assert score["chrf2"][0] > score["chrf2"][1] + 5  # recall weighed 4x: the run-on answer "wins"
    assert score["chrf1"][0] + 15 < score["chrf1"][1]  # precision weighed alike: it loses


def test_rouge_l_stats_are_rouge_scores_own(stats):
    scorer = rouge_scorer.RougeScorer(["rougeL"])
    own = [scorer.score(r, a.text)["rougeL"] for a, r in zip(ANSWERS, REFS, strict=True)]
    for metric, field in (("rougeL_f1", "fmeasure"), ("rougeL_precision", "precision"),
                          ("rougeL_recall", "recall")):
        assert stats[metric][:, 0].tolist() == [getattr(s, field) for s in own]
        assert stats[metric][:, 1].tolist() == [1.0] * 5
        assert value(metric, stats[metric]) == pytest.approx(np.mean([getattr(s, field) for s in own]))
    assert stats["rougeL_f1"][0, 0] == 1.0 and stats["rougeL_f1"][2, 0] == 0.0


def test_similarity_is_1_for_the_reference_0_for_nothing_and_higher_for_a_paraphrase(stats):
    assert stats["similarity"][0, 0] == pytest.approx(1.0, abs=1e-5)
    assert stats["similarity"][2, 0] == 0.0  # empty answer: no embedding, no similarity
    ref = "A lambda is an anonymous function."
    paraphrase, unrelated = similarities(["An anonymous function is called a lambda.",
                                          "Bananas grow in tropical climates."], [ref, ref])
    assert paraphrase > unrelated + 0.3
    assert similarities([], []).shape == (0,)


def test_length_stop_loop_and_token_metrics_of_hand_made_answers(stats):
    chars = [len(a.text) for a in ANSWERS]
    assert stats["length_ratio"].tolist() == [[c, len(r)] for c, r in zip(chars, REFS, strict=True)]
    assert value("length_ratio", stats["length_ratio"]) == sum(chars) / sum(map(len, REFS))
    assert value("stop_rate", stats["stop_rate"]) == 4 / 5
    assert value("loop_rate", stats["loop_rate"]) == 1 / 5  # the sentence said three times
    assert value("answer_tokens", stats["answer_tokens"]) == (6 + 128 + 0 + 9 + 1) / 5


def test_no_answers_have_no_values_and_a_count_mismatch_is_an_error():
    empty = answer_stats([], [])
    assert {m: s.shape[0] for m, s in empty.items()} == dict.fromkeys(empty, 0)
    assert round6(value("stop_rate", empty["stop_rate"])) is None and value("chrf1", empty["chrf1"]) == 0.0
    with pytest.raises(ValueError, match="2 answers for 5 references"):
        answer_stats(ANSWERS[:2], REFS)


# --- intervals -----------------------------------------------------------------------------------

def test_resample_weights_draw_every_item_n_times_per_resample_the_same_for_a_seed():
    w = resample_weights(7, 300, seed=3)
    assert w.shape == (300, 7) and (w.sum(1) == 7).all()
    assert (w == resample_weights(7, 300, seed=3)).all() and not (w == resample_weights(7, 300, seed=4)).all()
    assert resample_weights(0, 300).shape == (300, 0)


def test_resampling_by_page_draws_every_row_of_a_page_together_and_widens_the_interval():
    pages = ["a", "a", "a", "b", "c", "c"]
    w = resample_weights(6, 500, seed=1, groups=pages)
    assert ((w[:, 0] == w[:, 1]) & (w[:, 1] == w[:, 2]) & (w[:, 4] == w[:, 5])).all()  # a page comes whole
    assert (w[:, [0, 3, 4]].sum(1) == 3).all()  # three page draws per resample
    # rows of one page agree (page a: the adapter 1.0 better on each; b and c: no better): drawing rows one
    # by one counts page a three times as evidence, drawing pages counts it once
    base = np.column_stack([np.full(6, 3.0), np.ones(6)])
    adapter = base - np.array([[1.0, 0], [1.0, 0], [1.0, 0], [0, 0], [0, 0], [0, 0]])
    by_row = compare(METRICS["loss"], base, adapter, resample_weights(6, 2000, seed=0), 0.95)
    by_page = compare(METRICS["loss"], base, adapter, resample_weights(6, 2000, seed=0, groups=pages), 0.95)
    assert by_row["delta"] == by_page["delta"] == -0.5
    assert by_page["high"] - by_page["low"] > by_row["high"] - by_row["low"]
    assert by_page["high"] == 0.0 and by_page["verdict"] == "neither"  # pages b and c drawn alone: no gain


def loss_stats(nats, tokens) -> np.ndarray:
    return np.column_stack([nats, tokens]).astype(float)


RNG = np.random.default_rng(0)
TOKENS = RNG.integers(20, 80, size=40)
BASE_LOSS = loss_stats(TOKENS * RNG.uniform(1.5, 2.5, size=40), TOKENS)
WEIGHTS = resample_weights(40, 1000, seed=0)


def test_identical_models_differ_by_exactly_zero_within_noise():
    row = compare(METRICS["loss"], BASE_LOSS, BASE_LOSS.copy(), WEIGHTS, 0.95)
    assert row["base"] == row["adapter"]
    assert row["base"] == pytest.approx(BASE_LOSS[:, 0].sum() / BASE_LOSS[:, 1].sum(), rel=1e-12)
    assert (row["delta"], row["low"], row["high"], row["verdict"]) == (0.0, 0.0, 0.0, "neither")
    assert row["adapter_low"] < row["adapter"] < row["adapter_high"]


def test_a_clearly_lower_loss_is_the_adapters_and_swapped_the_bases():
    better = loss_stats(BASE_LOSS[:, 0] * 0.8, TOKENS)
    row = compare(METRICS["loss"], BASE_LOSS, better, WEIGHTS, 0.95)
    assert row["delta"] == pytest.approx(-0.2 * row["base"])
    assert row["low"] < row["delta"] < row["high"] < 0 and row["verdict"] == "adapter"
    swapped = compare(METRICS["loss"], better, BASE_LOSS, WEIGHTS, 0.95)
    assert 0 < swapped["low"] < swapped["high"] and swapped["verdict"] == "base"


def test_for_a_higher_is_better_metric_the_sign_flips():
    base = np.column_stack([RNG.uniform(0.2, 0.5, size=40), np.ones(40)])
    higher = base + [0.2, 0]
    row = compare(METRICS["rougeL_f1"], base, higher, WEIGHTS, 0.95)
    assert row["delta"] == pytest.approx(0.2) and 0 < row["low"] < row["high"] and row["verdict"] == "adapter"
    assert compare(METRICS["rougeL_f1"], higher, base, WEIGHTS, 0.95)["verdict"] == "base"
    # the same numbers as a descriptive metric: an interval, no verdict
    described = compare(METRICS["answer_tokens"], base, higher, WEIGHTS, 0.95)
    assert described["low"] == row["low"] and described["verdict"] == ""


def test_the_interval_is_the_resampled_differences_quantiles():
    # 3 resamples of 2 rows: (row 0 twice), (row 1 twice), (both). Loss differences -1, 0, -0.5; the 25%
    # and 75% quantiles of [-1, -0.5, 0] (linear) are -0.75 and -0.25.
    weights = np.array([[2.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    row = compare(METRICS["loss"], loss_stats([2, 4], [1, 1]), loss_stats([1, 4], [1, 1]), weights, 0.5)
    assert (row["base"], row["adapter"], row["delta"]) == (3.0, 2.5, -0.5)
    assert (row["low"], row["high"], row["verdict"]) == (-0.75, -0.25, "adapter")
    assert (row["adapter_low"], row["adapter_high"]) == (1.75, 3.25)  # quantiles of [1, 4, 2.5]
    with pytest.raises(ValueError, match=r"stats \(2, 2\) and \(2, 2\) over 3 resampled items"):
        compare(METRICS["loss"], loss_stats([2, 4], [1, 1]), loss_stats([2, 4], [1, 1]), weights.T, 0.5)


def test_verdict_needs_the_whole_interval_on_one_side_and_a_direction():
    chrf, loss = METRICS["chrf1"], METRICS["loss"]
    assert verdict(chrf, 0.5, 2.0) == "adapter" and verdict(chrf, -2.0, -0.5) == "base"
    assert verdict(chrf, 0.0, 2.0) == "neither" and verdict(loss, 0.5, 2.0) == "base"
    assert verdict(METRICS["length_ratio"], 0.5, 2.0) == "" and verdict(loss, np.nan, 1.0) == ""


def test_mean_interval_holds_the_mean_of_judge_scores():
    scores = [1, 1, 0.5, 0, -1, 1, 0.5, 1]
    weights = resample_weights(len(scores), 1000, seed=0)
    out = mean_interval(scores, weights, 0.95)
    assert out["value"] == 4 / 8 and -1 <= out["low"] < 0.5 < out["high"] <= 1
    assert mean_interval([], resample_weights(0, 100), 0.95) == {"value": None, "low": None, "high": None}


# --- the gate ------------------------------------------------------------------------------------

LOSS_ROW = {"base": 2.0, "adapter": 1.5, "delta": -0.5, "low": -0.7, "high": -0.3, "adapter_low": 1.4,
            "adapter_high": 1.6, "verdict": "adapter"}
CHRF_ROW = {"base": 30.0, "adapter": 35.0, "delta": 5.0, "low": 1.0, "high": 9.0, "adapter_low": 32.0,
            "adapter_high": 38.0, "verdict": "adapter"}


@pytest.fixture
def gate_params(load):
    return dataclasses.replace(load("evaluate"), gate="fail", gate_metrics=("loss", "chrf1"), gate_against="",
                               confidence=0.95)


def committed(loss: float | None, chrf1: float | None = 35.0, fingerprint: str = "fp1") -> dict:
    return {"adapter": {"loss": loss, "chrf1": chrf1}, "test_fingerprint": fingerprint}


def test_an_adapter_identical_to_the_base_fails_the_gate(gate_params):
    row = compare(METRICS["loss"], BASE_LOSS, BASE_LOSS.copy(), WEIGHTS, 0.95)
    out = decide(gate_params, {"loss": row, "chrf1": CHRF_ROW}, None, "fp1")
    a = f"{row['adapter']:.5f}"
    assert out["line"] == (f"gate failed: loss: adapter {a} vs base {a}, difference +0.00000 (95% interval "
                           "+0.00000 to +0.00000): the adapter is not better than the base")
    assert not out["passed"] and [c["passed"] for c in out["checks"]] == [False, True]
    assert (out["mode"], out["metrics"], out["against"]) == ("fail", ["loss", "chrf1"], None)


def test_a_better_adapter_passes_and_a_missing_metric_is_not_checked(gate_params):
    out = decide(gate_params, {"loss": LOSS_ROW, "chrf1": CHRF_ROW}, None, "fp1")
    assert out["passed"] and out["line"] == "gate passed: the adapter beats the base on loss, chrf1"
    assert out["checks"][1]["line"] == ("chrf1: adapter 35.000 vs base 30.000, difference +5.000 (95% "
                                        "interval +1.000 to +9.000): better than the base")
    hosted = decide(gate_params, {"chrf1": CHRF_ROW}, None, "fp1")  # no loss without logits
    assert hosted["metrics"] == ["chrf1"] and hosted["passed"]
    nothing = decide(gate_params, {"rougeL_f1": CHRF_ROW}, None, "fp1")  # no gate metric measured at all
    assert not nothing["passed"] and nothing["line"] == "gate failed: none of loss, chrf1 was measured"


def test_a_committed_adapter_better_than_this_ones_interval_fails_it(gate_params):
    params = dataclasses.replace(gate_params, gate_against="HEAD")
    out = decide(params, {"loss": LOSS_ROW, "chrf1": CHRF_ROW}, committed(1.3), "fp1")
    assert out["line"] == ("gate failed: loss: adapter 1.50000 (95% interval 1.40000 to 1.60000) vs 1.30000 "
                           "at HEAD: worse than the adapter at HEAD")
    assert [(c["against"], c["passed"]) for c in out["checks"]] == [("base", True), ("base", True),
                                                                    ("HEAD", False), ("HEAD", True)]
    higher = decide(params, {"loss": LOSS_ROW, "chrf1": CHRF_ROW}, committed(1.5, chrf1=38.5), "fp1")
    assert higher["line"].startswith("gate failed: chrf1: adapter 35.000 (95% interval 32.000 to 38.000) vs "
                                     "38.500 at HEAD: worse")


def test_a_committed_adapter_within_this_ones_interval_passes(gate_params):
    params = dataclasses.replace(gate_params, gate_against="HEAD")
    out = decide(params, {"loss": LOSS_ROW, "chrf1": CHRF_ROW}, committed(1.45, chrf1=37.9), "fp1")
    assert out["passed"] and out["against"] == "HEAD"
    assert out["line"] == ("gate passed: the adapter beats the base on loss, chrf1 and is not worse than "
                           "HEAD's")
    assert out["checks"][2]["line"].endswith("vs 1.45000 at HEAD: not worse than the adapter at HEAD")
    worse_committed = decide(params, {"loss": LOSS_ROW, "chrf1": CHRF_ROW}, committed(1.9, 20.0), "fp1")
    assert worse_committed["passed"]


def test_a_committed_run_on_another_split_or_without_values_is_skipped(gate_params):
    params = dataclasses.replace(gate_params, gate_against="v1.0")
    other = decide(params, {"loss": LOSS_ROW}, committed(1.0, fingerprint="fp0"), "fp1")
    assert other["passed"] and [c["passed"] for c in other["checks"]] == [True, None]
    assert other["checks"][1]["line"] == "loss: not compared with v1.0: it scored another test split"
    for nothing in (None, {}, committed(None)):
        out = decide(params, {"loss": LOSS_ROW}, nothing, "fp1")
        assert out["checks"][1] == {"metric": "loss", "against": "v1.0", "passed": None,
                                    "line": "loss: no committed value at v1.0 to compare with"}
        # nothing was compared with v1.0, so the line claims nothing about it
        assert out["passed"] and out["line"] == "gate passed: the adapter beats the base on loss"
    assert other["line"] == "gate passed: the adapter beats the base on loss"


def test_committed_metrics_reads_a_commit_and_says_why_it_has_none(tmp_path, monkeypatch):
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com"]
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=tmp_path, check=True)
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics" / "evaluate.json").write_text('{"adapter": {"loss": 1.5}, "test_fingerprint": "f"}')
    subprocess.run([*git, "add", "-A"], cwd=tmp_path, check=True)
    subprocess.run([*git, "commit", "-qm", "metrics"], cwd=tmp_path, check=True)
    monkeypatch.chdir(tmp_path)
    assert committed_metrics("metrics/evaluate.json", "HEAD") == ({"adapter": {"loss": 1.5},
                                                                   "test_fingerprint": "f"}, "")
    assert committed_metrics("metrics/evaluate.json", "no-such-ref") == (
        None, "could not read metrics/evaluate.json at no-such-ref: RevError: unknown Git revision "
              "'no-such-ref'")
    missing, note = committed_metrics("metrics/other.json", "HEAD")
    assert missing is None and note.startswith("could not read metrics/other.json at HEAD: FileNotFoundError")
    # inside a stage run DVC has removed the stage's outputs: the committed file is still what is read
    (tmp_path / "metrics" / "evaluate.json").write_text('{"adapter": {"loss": 1.2}, "test_fingerprint": "g"}')
    subprocess.run([*git, "commit", "-qam", "newer"], cwd=tmp_path, check=True)
    (tmp_path / "metrics" / "evaluate.json").unlink()
    assert committed_metrics("metrics/evaluate.json", "HEAD")[0] == {"adapter": {"loss": 1.2},
                                                                     "test_fingerprint": "g"}
    assert committed_metrics("metrics/evaluate.json", "HEAD~1")[0]["adapter"] == {"loss": 1.5}


# --- reports -------------------------------------------------------------------------------------

def metrics_json(**extra) -> dict:
    """A hand-made metrics/evaluate.json in evaluate's layout."""
    rows = {  # base, adapter, delta, low, high, verdict
        "loss": (2.0, 1.5, -0.5, -0.7, -0.3, "adapter"),
        "bits_per_byte": (1.25, 1.125, -0.125, -0.2, -0.05, "adapter"),
        "chrf1": (30.0, 35.25, 5.25, 1.5, 9.0, "adapter"),
        "stop_rate": (0.5, 0.75, 0.25, -0.125, 0.5, "neither"),
        "length_ratio": (3.5, 1.04, -2.46, -3.0, -1.9, ""),
        "answer_tokens": (None, None, None, None, None, ""),
    }
    metrics = {name: {m: r[i] for m, r in rows.items()} for i, name in enumerate(("base", "adapter"))}
    metrics["delta"] = {m: dict(zip(("value", "low", "high", "verdict"), r[2:], strict=True))
                        for m, r in rows.items()}
    metrics["ratio"] = {m: round6(r[1] / r[0]) for m, r in rows.items() if r[0]}
    return metrics | {"verdict": "the adapter is better on loss, bits_per_byte, chrf1; within noise on "
                                 "stop_rate (intervals of the difference excluding zero)",
                      "test_rows": 92, "samples": 2, "supervised_tokens": 10403, "held_out_docs": 4,
                      "held_out_bytes": 52100, "confidence": 0.95, "bootstrap": 2000,
                      "test_fingerprint": "0123456789abcdef"} | extra


def test_the_summary_table_shows_every_measured_metric_with_its_interval():
    assert summary_table(metrics_json()) == [
        "| metric | base | adapter | adapter − base | 95% interval | better |",
        "|---|---|---|---|---|---|",
        "| loss (assistant tokens, nats) | 2.0000 | 1.5000 | -0.5000 | -0.7000 to -0.3000 | adapter |",
        "| bits per byte of held-out text | 1.2500 | 1.1250 | -0.1250 | -0.2000 to -0.0500 | adapter |",
        "| chrF, beta 1 (precision = recall) | 30.00 | 35.25 | +5.25 | +1.50 to +9.00 | adapter |",
        "| answer / reference length (characters) | 3.50 | 1.04 | -2.46 | -3.00 to -1.90 | (descriptive) |",
        "| stop rate | 50.0% | 75.0% | +25.0% | -12.5% to +50.0% | neither |",
        "| answer tokens (mean) | n/a | n/a | n/a | n/a to n/a | (descriptive) |",
    ]


def test_compare_csv_has_one_row_per_model_and_empty_cells_for_what_was_not_measured():
    assert compare_csv(metrics_json()).splitlines() == [
        "model,loss,bits_per_byte,chrf1,rougeL_f1,similarity,stop_rate,answer_tokens,loop_rate",
        "base,2.0,1.25,30.0,,,0.5,,",
        "adapter,1.5,1.125,35.25,,,0.75,,",
    ]


# --- cell: scraped text cannot break the table -----------------------------------------------------

HOSTILE = ("a | b <script>alert(1)</script></td></tr> **bold** _it_ `code` [link](http://x) ~~no~~\n"
           "second line\r\nthird <|im_end|> &amp; \\*")
MARKUP = re.compile(r"[|<>`*_\[\]~\\\n\r]")  # what may not survive, raw, in a cell (outside our <br>)


def test_cell_escapes_hostile_text_exactly():
    assert cell(HOSTILE) == (
        "a &#124; b &lt;script&gt;alert(1)&lt;/script&gt;&lt;/td&gt;&lt;/tr&gt; &#42;&#42;bold&#42;&#42; "
        "&#95;it&#95; &#96;code&#96; &#91;link&#93;(http://x) &#126;&#126;no&#126;&#126;<br>"
        "second line<br>third &lt;&#124;im&#95;end&#124;&gt; &amp;amp; &#92;&#42;")


@pytest.mark.parametrize("text", [HOSTILE, "|", "<script>", "</td>", "**bold**", "one\ntwo", "<|im_end|>",
                                  "\\|", "&#124;", "<!-- x -->", "__init__", "\r"])
def test_a_cell_holds_no_markup_character_and_no_line_break(text):
    out = cell(text)
    assert not MARKUP.search(out.replace("<br>", "")), out
    assert out.count("<br>") == len(re.findall(r"\r\n|\r|\n", text))
    assert "&" not in text or "&amp;" in out  # the data's own entities are shown, never decoded


def test_plain_text_and_quotes_pass_through_a_cell_unchanged():
    plain = 'What does "async for" do? It\'s 1 + 2 = 3 (see #4).'
    assert cell(plain) == plain


# --- reports/eval_samples.md ---------------------------------------------------------------------

def report_inputs(prompts: list[str]):
    """Sample records of two models' answers to `prompts`: the base's first answer blank, the adapter's a
    loop; the other answers hostile text."""
    n = len(prompts)
    given = {"base": [Answer("\n" * 128, False, 128)] + [Answer("", True, 0)] * (n - 1),
             "adapter": [Answer(" ".join([SENTENCE] * 4), False, 128)]
             + [Answer(f"<b>{p}</b> | done", True, 7) for p in prompts[1:]]}
    rows = [[{"role": "user", "content": p}, {"role": "assistant", "content": f"ref {i} *x*"}]
            for i, p in enumerate(prompts)]
    refs = [r[-1]["content"] for r in rows]
    stats = {name: answer_stats(given[name], refs) for name in given}
    return sample_records([f"p{i}" for i in range(n)], rows, given, stats)


@pytest.fixture
def params(load):
    return dataclasses.replace(load("evaluate"), max_new_tokens=128, repetition_penalty=1.1,
                               no_repeat_ngram_size=0, bootstrap=2000)


def table_rows(report: str) -> list[str]:
    """The lines of the samples table, header and delimiter excluded."""
    lines = report.splitlines()
    start = lines.index("| question | reference | base answer | adapter answer |")
    return lines[start + 2:]


def test_sample_records_hold_each_answers_own_scores():
    first, second = report_inputs(["What is x?", "What is y?"])
    assert first["pair_id"] == "p0" and first["prompt"] == "What is x?" and first["reference"] == "ref 0 *x*"
    assert (first["base_stopped"], first["base_tokens"], first["base_loop"]) == (False, 128, False)
    assert (first["adapter_loop"], second["adapter_output"]) == (True, "<b>What is y?</b> | done")
    assert first["base_chrf1"] == 0.0 and first["base_similarity"] == 0.0
    assert second["adapter_chrf1"] == round6(CHRF(beta=1).sentence_score(second["adapter_output"],
                                                                         ["ref 1 *x*"]).score)


def test_the_report_opens_with_the_verdict_the_table_the_gate_and_the_judge(params):
    warn = dataclasses.replace(params, gate="warn", gate_metrics=("loss", "chrf1"), gate_against="HEAD")
    rows = {"loss": LOSS_ROW, "chrf1": dict(CHRF_ROW, low=-1.0, verdict="neither")}
    verdict = decide(warn, rows, None, "fp1")
    gate = as_metrics(verdict)  # as metrics/evaluate.json holds it
    assert gate["checks"]["HEAD"]["chrf1"] == {"passed": None,
                                               "line": "chrf1: no committed value at HEAD to compare with"}
    judge = {"model": "judge|x", "adapter_wins": 3, "base_wins": 1, "ties": 1, "win_rate": 0.7,
             "score": {"value": 0.4, "low": -0.2, "high": 1.0}, "usage": {"calls": 10, "cached": 2}}
    records = report_inputs(["What is x?", "What is y?"])
    lines = samples_report(metrics_json(gate=gate, judge=judge), records, params).splitlines()
    assert lines[:4] == ["# evaluate: base vs adapter on held-out test pages", "",
                         f"**{metrics_json()['verdict']}**", ""]
    assert lines[4:12] == summary_table(metrics_json())
    assert lines[12:19] == [
        "", "Gate (warn): failed", "",
        "- pass: " + verdict["checks"][0]["line"],
        "- FAIL: chrf1: adapter 35.000 vs base 30.000, difference +5.000 (95% interval -1.000 to +9.000): "
        "the adapter is not better than the base",
        "- skipped: loss: no committed value at HEAD to compare with",
        "- skipped: chrf1: no committed value at HEAD to compare with"]
    assert lines[19:21] == ["", "Judge judge&#124;x: adapter wins 3, base wins 1, ties 1 (win rate 0.700, "
                                "mean score +0.400, 95% interval -0.200 to +1.000); 10 calls, 2 verdicts "
                                "from the cache."]
    assert lines[22] == (
        "Loss on all 92 test rows (10,403 supervised tokens); bits per byte on 4 held-out test pages (52,100 "
        "bytes). Answers, decoded the same way for both models: greedy, max_new_tokens 128, "
        "repetition_penalty 1.1, no_repeat_ngram_size off; 2 of 92 test rows answered (in file order). "
        "Intervals: paired bootstrap, 2000 resamples of whole held-out pages. A loop: one "
        "4-word sequence 3 or more times in an answer.")
    plain = samples_report(metrics_json(), records, dataclasses.replace(params, repetition_penalty=1.0,
                                                                        no_repeat_ngram_size=3))
    assert "Gate" not in plain and "Judge" not in plain
    assert "repetition_penalty off, no_repeat_ngram_size 3;" in plain


def test_a_hosted_report_says_why_it_has_no_loss(params):
    hosted = metrics_json(hosted={"base": "gpt-4o-mini", "adapter": "ft:gpt-4o-mini:webtune"},
                          loss_note="loss is local-only", held_out_docs=0, held_out_bytes=0)
    report = samples_report(hosted, report_inputs(["q"]), params)
    assert ("No loss or bits per byte (loss is local-only). Answers from gpt-4o-mini and "
            "ft:gpt-4o-mini:webtune through chat completions, decoded the same way: temperature 0, "
            "max_tokens 128; 2 of 92 test rows answered") in report
    assert "greedy" not in report and "Loss on all" not in report


def test_the_report_has_one_row_per_sample_and_hostile_text_only_escaped(params):
    prompts = ["What is x?", HOSTILE, "a | b\n| c | d |", "**bold** <script>x</script>"]
    report = samples_report(metrics_json(samples=4), report_inputs(prompts), params)
    rows = table_rows(report)
    assert len(rows) == len(prompts)
    for row in rows:  # exactly four cells: every | inside a cell was escaped
        assert row.startswith("| ") and row.endswith(" |") and row.count("|") == 5
    for raw in ("<script>", "</td>", "**bold**", "<|im_end|>", "<b>", "a | b", "*x*"):
        assert raw not in report
    assert cell(HOSTILE) in rows[1] and f"{cell('<b>' + HOSTILE + '</b>')} &#124; done" in rows[1]


def test_each_answer_is_followed_by_its_scores_and_flags(params):
    first, second = table_rows(samples_report(metrics_json(), report_inputs(["What is x?", "What is y?"]),
                                              params))
    base, adapter = first[2:-2].split(" | ")[2:]
    assert base == ("*(whitespace only: 128 characters)*<br>**chrF 0.0** ROUGE-L 0.00 similarity 0.00 "
                    "128 tokens (cut at max_new_tokens)")
    assert adapter.startswith(SENTENCE)
    assert re.search(r"<br>\*\*chrF \d+\.\d\*\* ROUGE-L 0\.00 similarity -?\d\.\d\d 128 tokens "
                     r"\(cut at max_new_tokens\) \(loop\)$", adapter)
    assert second[2:-2].split(" | ")[2] == ("*(empty)*<br>**chrF 0.0** ROUGE-L 0.00 similarity 0.00 0 tokens "
                                            "(stopped)")
    assert "(loop)" not in second


def test_a_report_with_no_samples_has_the_summary_and_no_sample_table(params):
    report = samples_report(metrics_json(samples=0), [], params)
    assert "| loss (assistant tokens, nats) |" in report and report.endswith("\nNo samples.\n")
    assert "| question |" not in report
