"""webtune.evaluation: what counts as a loop, the per-model answer metrics from hand-made answers, and the
reports (the CSV dvc plots draws, the Markdown table people read, with scraped text kept inert)."""

import dataclasses
import re

import pytest
from sacrebleu.metrics import CHRF

from webtune import evaluation as V
from webtune.evaluation import EvaluateParams
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
    assert V.loops(" ".join([SENTENCE] * 4))
    assert V.loops("Sure. " + "\n".join([SENTENCE] * 4) + " That is all.")  # any whitespace splits words


def test_an_ordinary_paragraph_that_repeats_a_phrase_twice_does_not_loop():
    assert 95 <= len(PARAGRAPH.split()) <= 105 and PARAGRAPH.count("the value of the") == 2
    assert not V.loops(PARAGRAPH)
    assert not V.loops(" ".join([SENTENCE] * 2))  # a sentence said twice is restated, not looped


def test_the_third_occurrence_of_a_four_word_sequence_makes_the_loop():
    said = "then we call the function again and"
    two = f"{said} wait. {said} stop."
    assert not V.loops(two)
    assert V.loops(f"{two} {said} stop.")
    assert not V.loops("call the function call the function call the function")  # 3-grams do not count
    assert (V.LOOP_NGRAM, V.LOOP_REPEATS) == (4, 3)


def test_loop_words_are_case_sensitive_and_keep_their_punctuation():
    assert V.loops("the value of the x. the value of the y. the value of the z.")
    assert not V.loops("the value of the x. The value of the y. the value of the z.")
    assert V.loops("used to make it. used to make it. used to make it.")
    assert not V.loops("used to make it. used to make it, used to make it!")


def test_overlapping_repeats_count_and_text_without_spaces_has_no_words():
    assert V.loops("a a a a a a")  # "a a a a" at words 0, 1 and 2
    assert not V.loops("a a a a a")
    assert not V.loops("\n" * 128) and not V.loops("x" * 500) and not V.loops("")


# --- generation metrics from hand-made answers ---------------------------------------------------

REFS = ["The pass statement does nothing.", "A lambda is an anonymous function.", "break leaves the loop."]


def test_stop_rate_answer_tokens_and_loop_rate_of_hand_made_answers():
    answers = [Answer(REFS[0], True, 6), Answer(" ".join([SENTENCE] * 3), False, 128),
               Answer("", True, 0), Answer("break leaves", False, 128)]
    scores = V.generation_metrics(answers, [*REFS, "x"])
    assert scores["stop_rate"] == 2 / 4
    assert scores["answer_tokens"] == (6 + 128 + 0 + 128) / 4
    assert scores["loop_rate"] == 1 / 4 and scores["loop_per_sample"] == [False, True, False, False]


def test_chrf_is_100_for_the_reference_itself_and_0_for_an_empty_answer():
    same = V.generation_metrics([Answer(r, True, 5) for r in REFS], REFS)
    assert same["chrf"] == pytest.approx(100.0) and same["chrf_per_sample"] == pytest.approx([100.0] * 3)
    assert same["stop_rate"] == 1.0 and same["loop_rate"] == 0.0 and same["answer_tokens"] == 5.0

    mixed = V.generation_metrics([Answer(REFS[0], True, 5), Answer("", False, 9),
                                  Answer("break leaves", True, 2)], REFS)
    first, empty, partial = mixed["chrf_per_sample"]
    assert first == pytest.approx(100.0) and empty == 0.0 and 0 < partial < 100
    assert 0 < mixed["chrf"] < 100


def test_a_base_that_runs_on_past_the_reference_is_scored_at_the_adapters_length():
    refs = ["A list is a mutable sequence of items.", "A tuple is an immutable sequence."]
    adapter = [Answer(refs[0], True, 9), Answer("A tuple is a sequence.", True, 6)]
    rambling = " It can hold objects of any type, and it grows as items are appended to it."
    base = [Answer(refs[0] + rambling, False, 128), Answer(refs[1] + rambling, False, 128)]
    scores = {"base": V.generation_metrics(base, refs), "adapter": V.generation_metrics(adapter, refs)}

    cut = [refs[0], refs[1][: len(adapter[1].text)]]  # what the base is scored on
    expected = CHRF().corpus_score(cut, [refs]).score
    assert V.length_matched_chrf(base, adapter, refs) == pytest.approx(expected)
    assert expected > scores["base"]["chrf"]  # the uncut answers pay in precision for the rambling
    ratios = V.chrf_ratios({"base": base, "adapter": adapter}, refs, scores)
    assert ratios == {"chrf_ratio": V.round6(scores["adapter"]["chrf"] / scores["base"]["chrf"]),
                      "base_chrf_length_matched": V.round6(expected),
                      "chrf_ratio_length_matched": V.round6(scores["adapter"]["chrf"] / expected)}
    assert V.length_matched_chrf([], [], []) is None
    with pytest.raises(ValueError, match="2 base and 1 adapter answers for 2 references"):
        V.length_matched_chrf(base, adapter[:1], refs)


def test_no_answers_have_no_metrics_and_a_count_mismatch_is_an_error():
    assert V.generation_metrics([], []) == {"chrf": None, "stop_rate": None, "answer_tokens": None,
                                            "loop_rate": None, "chrf_per_sample": [], "loop_per_sample": []}
    with pytest.raises(ValueError, match="2 answers for 3 references"):
        V.generation_metrics([Answer("a", True, 1)] * 2, REFS)


def test_compare_csv_has_one_row_per_model_and_a_column_per_metric():
    metrics = {"base": {"loss": 2.0, "perplexity": 7.389056, "chrf": 12.5, "stop_rate": None,
                        "answer_tokens": None, "loop_rate": None},
               "adapter": {"loss": 1.5, "perplexity": 4.481689, "chrf": 20.0, "stop_rate": 0.25,
                           "answer_tokens": 42.5, "loop_rate": 0.125}}
    assert V.compare_csv(metrics).splitlines() == [
        "model,loss,perplexity,chrf,stop_rate,answer_tokens,loop_rate",
        "base,2.0,7.389056,12.5,,,",
        "adapter,1.5,4.481689,20.0,0.25,42.5,0.125",
    ]


# --- cell: scraped text cannot break the table -----------------------------------------------------

HOSTILE = ("a | b <script>alert(1)</script></td></tr> **bold** _it_ `code` [link](http://x) ~~no~~\n"
           "second line\r\nthird <|im_end|> &amp; \\*")
MARKUP = re.compile(r"[|<>`*_\[\]~\\\n\r]")  # what may not survive, raw, in a cell (outside our <br>)


def test_cell_escapes_hostile_text_exactly():
    assert V.cell(HOSTILE) == (
        "a &#124; b &lt;script&gt;alert(1)&lt;/script&gt;&lt;/td&gt;&lt;/tr&gt; &#42;&#42;bold&#42;&#42; "
        "&#95;it&#95; &#96;code&#96; &#91;link&#93;(http://x) &#126;&#126;no&#126;&#126;<br>"
        "second line<br>third &lt;&#124;im&#95;end&#124;&gt; &amp;amp; &#92;&#42;")


@pytest.mark.parametrize("text", [HOSTILE, "|", "<script>", "</td>", "**bold**", "one\ntwo", "<|im_end|>",
                                  "\\|", "&#124;", "<!-- x -->", "__init__", "\r"])
def test_a_cell_holds_no_markup_character_and_no_line_break(text):
    out = V.cell(text)
    assert not MARKUP.search(out.replace("<br>", "")), out
    assert out.count("<br>") == len(re.findall(r"\r\n|\r|\n", text))
    assert "&" not in text or "&amp;" in out  # the data's own entities are shown, never decoded


def test_plain_text_and_quotes_pass_through_a_cell_unchanged():
    plain = 'What does "async for" do? It\'s 1 + 2 = 3 (see #4).'
    assert V.cell(plain) == plain


# --- reports/eval_samples.md ---------------------------------------------------------------------

PARAMS = EvaluateParams(samples=3, max_new_tokens=128, repetition_penalty=1.1, no_repeat_ngram_size=0,
                        batch_size=8, threads=1)


def report_inputs(prompts: list[str]):
    n = len(prompts)
    base = [Answer("\n" * 128, False, 128)] + [Answer("", True, 0)] * (n - 1)
    adapter = [Answer(" ".join([SENTENCE] * 4), False, 128)] + [Answer(f"<b>{p}</b> | done", True, 7)
                                                               for p in prompts[1:]]
    rows = [[{"role": "user", "content": p}, {"role": "assistant", "content": f"ref {i} *x*"}]
            for i, p in enumerate(prompts)]
    refs = [r[-1]["content"] for r in rows]
    scores = {"base": V.generation_metrics(base, refs), "adapter": V.generation_metrics(adapter, refs)}
    records = V.sample_records([f"p{i}" for i in range(n)], rows, {"base": base, "adapter": adapter}, scores)
    metrics = {name: {"loss": loss, "perplexity": 2.0, **{k: V.round6(scores[name][k]) for k in
                      ("chrf", "stop_rate", "answer_tokens", "loop_rate")}}
               for name, loss in (("base", 5.3), ("adapter", 4.7))}
    metrics |= {"loss_ratio": 0.886792, **V.chrf_ratios({"base": base, "adapter": adapter}, refs, scores),
                "test_rows": 92, "supervised_tokens": 10403, "samples": n}
    return metrics, records


def table_rows(report: str) -> list[str]:
    """The lines of the samples table, header and delimiter excluded."""
    lines = report.splitlines()
    start = lines.index("| question | reference | base answer | adapter answer |")
    return lines[start + 2:]


def test_the_report_has_one_row_per_sample_and_hostile_text_only_escaped():
    prompts = ["What is x?", HOSTILE, "a | b\n| c | d |", "**bold** <script>x</script>"]
    metrics, records = report_inputs(prompts)
    report = V.samples_report(metrics, records, PARAMS)
    rows = table_rows(report)
    assert len(rows) == len(prompts)
    for row in rows:  # exactly four cells: every | inside a cell was escaped
        assert row.startswith("| ") and row.endswith(" |") and row.count("|") == 5
    for raw in ("<script>", "</td>", "**bold**", "<|im_end|>", "<b>", "a | b", "*x*"):
        assert raw not in report
    assert V.cell(HOSTILE) in rows[1] and f"{V.cell('<b>' + HOSTILE + '</b>')} &#124; done" in rows[1]


def test_each_answer_is_followed_by_its_chrf_and_flags():
    metrics, records = report_inputs(["What is x?", "What is y?"])
    first, second = table_rows(V.samples_report(metrics, records, PARAMS))
    base, adapter = first[2:-2].split(" | ")[2:]
    assert base == "*(whitespace only: 128 characters)*<br>**chrF 0.0** 128 tokens (cut at max_new_tokens)"
    assert adapter.startswith(SENTENCE)
    assert re.search(r"<br>\*\*chrF \d+\.\d\*\* 128 tokens \(cut at max_new_tokens\) \(loop\)$", adapter)
    assert second[2:-2].split(" | ")[2] == "*(empty)*<br>**chrF 0.0** 0 tokens (stopped)"
    assert "(loop)" not in second


def test_the_report_opens_with_the_summary_and_how_answers_were_decoded():
    metrics, records = report_inputs(["What is x?", "What is y?", "What is z?"])
    report = V.samples_report(metrics, records, PARAMS)
    lines = report.splitlines()
    assert lines[2:4] == ["| metric | base | adapter | adapter / base |", "|---|---|---|---|"]
    assert lines[4] == "| loss (assistant tokens) | 5.3000 | 4.7000 | 0.887 |"
    assert lines[6].startswith("| chrF | 0.00 | ") and lines[6].endswith(" | n/a |")  # base chrF 0: no ratio
    # the base's answers are blank whatever their length: cut to the adapter's, they still score 0
    assert lines[7].startswith("| chrF, each base answer cut to the adapter's length | 0.00 | ")
    assert lines[7].endswith(" | n/a |") and lines[7].split(" | ")[2] == lines[6].split(" | ")[2]
    assert lines[8] == "| stop rate | 67% | 67% |  |"
    assert lines[9] == "| answer tokens (mean) | 42.7 | 47.3 |  |"
    assert lines[10] == "| loop rate | 0% | 33% |  |"
    assert ("greedy, max_new_tokens 128, repetition_penalty 1.1, no_repeat_ngram_size off; "
            "3 samples of 92 test rows") in report
    off = V.samples_report(metrics, records, dataclasses.replace(PARAMS, repetition_penalty=1.0,
                                                                  no_repeat_ngram_size=3))
    assert "repetition_penalty off, no_repeat_ngram_size 3;" in off


def test_a_report_with_no_samples_has_the_summary_and_no_sample_table():
    metrics, _ = report_inputs(["q"])
    report = V.samples_report(metrics | {"samples": 0}, [], dataclasses.replace(PARAMS, samples=0))
    assert "| loss (assistant tokens) |" in report and "No samples (evaluate.samples is 0)." in report
    assert "| question |" not in report
