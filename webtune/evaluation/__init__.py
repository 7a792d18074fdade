"""Scoring greedy answers and writing evaluate's reports: the numbers and the tables people read.

    scores = generation_metrics(answers, references)   # chrF, stop rate, answer tokens, loop rate
    loops("It is used to ... It is used to ... It is used to ...")  # True: a 4-gram occurs 3 times
    samples_report(metrics, records, params)            # reports/eval_samples.md

Per model, over the answers to the first `evaluate.samples` test prompts:
- chrf: corpus chrF against the reference answers (sacrebleu's defaults: chrF2, char 6-grams);
- stop_rate: the share of answers that ended on a stop token before `evaluate.max_new_tokens`;
- answer_tokens: the mean number of generated tokens per answer, the stop token excluded;
- loop_rate: the share of answers caught in a loop (`loops`).
Each is None when there are no answers. Beside them, `length_matched_chrf` scores the base's answers cut
to the adapter's answer lengths: chrF2 weighs recall above precision, so it pays for length alone.
Scraped text is data: every table cell goes through `cell`.
"""

import dataclasses
import html
import re
from collections import Counter
from collections.abc import Sequence

from webtune.models.chat import Answer
from webtune.params import at_least, knob


@dataclasses.dataclass(frozen=True)
class EvaluateParams:
    samples: int = knob(at_least(0))
    max_new_tokens: int = knob(at_least(1))
    repetition_penalty: float = knob(at_least(1.0))  # below 1 would reward repeats
    no_repeat_ngram_size: int = knob(at_least(0))
    batch_size: int = knob(at_least(1))
    threads: int = knob(at_least(1))


MODELS = ("base", "adapter")
PLOT_METRICS = ("loss", "perplexity", "chrf", "stop_rate", "answer_tokens", "loop_rate")

# An answer is caught in a loop when one word 4-gram occurs LOOP_REPEATS times. Four words are a phrase
# ("the value of the"), not a collocation ("of the") that any paragraph repeats; a phrase said twice is
# ordinary prose (a definition restated, a parallel list), a third time is a model going round in circles.
LOOP_NGRAM = 4
LOOP_REPEATS = 3


def loops(text: str) -> bool:
    """True when the same LOOP_NGRAM-word sequence occurs at least LOOP_REPEATS times in `text`.

    Words are `text.split()` (whitespace, case-sensitive, punctuation kept: "condition." is not
    "condition"); occurrences may overlap ("a a a a a a" holds the 4-gram "a a a a" three times).
    So a run of newlines (no words) and a repeat without spaces ("aaaa...": one word) are never loops.
    """
    words = text.split()
    grams = Counter(tuple(words[i : i + LOOP_NGRAM]) for i in range(len(words) - LOOP_NGRAM + 1))
    return any(n >= LOOP_REPEATS for n in grams.values())


def _chrf():
    """chrF2 with sacrebleu's defaults (char 6-grams, no word n-grams): comparable across runs."""
    from sacrebleu.metrics import CHRF

    return CHRF()


def generation_metrics(answers: Sequence[Answer], references: Sequence[str]) -> dict:
    """{"chrf", "stop_rate", "answer_tokens", "loop_rate", "chrf_per_sample": [...], "loop_per_sample": [...]}
    for one model's answers (the four numbers None, the lists empty, for no answers)."""
    if len(answers) != len(references):
        raise ValueError(f"{len(answers)} answers for {len(references)} references")
    if not answers:
        return {"chrf": None, "stop_rate": None, "answer_tokens": None, "loop_rate": None,
                "chrf_per_sample": [], "loop_per_sample": []}
    chrf = _chrf()
    hypotheses = [a.text for a in answers]
    looped = [loops(a.text) for a in answers]
    return {
        "chrf": chrf.corpus_score(hypotheses, [list(references)]).score,
        "stop_rate": sum(a.stopped for a in answers) / len(answers),
        "answer_tokens": sum(a.tokens for a in answers) / len(answers),
        "loop_rate": sum(looped) / len(answers),
        "chrf_per_sample": [chrf.sentence_score(h, [r]).score
                            for h, r in zip(hypotheses, references, strict=True)],
        "loop_per_sample": looped,
    }


def length_matched_chrf(base: Sequence[Answer], adapter: Sequence[Answer],
                        references: Sequence[str]) -> float | None:
    """Corpus chrF of the base's answers, each cut to the character length of the adapter's answer to the
    same prompt (None for no answers).

    chrF2 (beta 2) weighs recall above precision, so an answer that runs on to max_new_tokens collects
    recall from its length alone: a base that never stops can out-score an adapter that answers in the
    references' length and is better character for character. adapter chrF over this number compares the
    two at equal length; it is reported beside chrf_ratio, never instead of it.
    """
    if not (len(base) == len(adapter) == len(references)):
        raise ValueError(f"{len(base)} base and {len(adapter)} adapter answers "
                         f"for {len(references)} references")
    if not base:
        return None
    cut = [b.text[: len(a.text)] for b, a in zip(base, adapter, strict=True)]
    return _chrf().corpus_score(cut, [list(references)]).score


def chrf_ratios(answers: dict, references: list[str], scores: dict) -> dict:
    """chrf_ratio (adapter / base chrF) and, beside it, the base's chrF with each answer cut to the adapter's
    length and the adapter's over that (length_matched_chrf); a ratio is None where the base
    scores 0."""
    adapter = scores["adapter"]["chrf"]
    base = scores["base"]["chrf"]
    base_cut = length_matched_chrf(answers["base"], answers["adapter"], references)
    return {"chrf_ratio": round6(adapter / base) if base else None,
            "base_chrf_length_matched": round6(base_cut),
            "chrf_ratio_length_matched": round6(adapter / base_cut) if base_cut else None}


def round6(x: float | None) -> float | None:
    return None if x is None else round(x, 6)


def user_text(messages: Sequence[dict]) -> str:
    return next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")


def sample_records(pair_ids, rows, answers: dict[str, list[Answer]], scores: dict[str, dict]) -> list[dict]:
    """One record per sample (reports/eval_samples.jsonl): the question, the reference, and per model the
    answer, whether it stopped, its chrF, its token count and whether it loops."""
    return [
        {
            "pair_id": pair_id,
            "prompt": user_text(messages),
            "reference": messages[-1]["content"],
            **{f"{name}_output": answers[name][i].text for name in MODELS},
            **{f"{name}_stopped": answers[name][i].stopped for name in MODELS},
            **{f"{name}_chrf": round6(scores[name]["chrf_per_sample"][i]) for name in MODELS},
            **{f"{name}_tokens": answers[name][i].tokens for name in MODELS},
            **{f"{name}_loop": scores[name]["loop_per_sample"][i] for name in MODELS},
        }
        for i, (pair_id, messages) in enumerate(zip(pair_ids, rows, strict=True))
    ]


def compare_csv(metrics: dict) -> str:
    """One row per model, one column per metric: dvc.yaml draws one base-vs-adapter bar chart per metric
    (their scales differ too much to share an axis: perplexity ~200, loss ~5, stop rate 0-1)."""
    lines = ["model," + ",".join(PLOT_METRICS)]
    for name in MODELS:
        values = [metrics[name][metric] for metric in PLOT_METRICS]
        lines.append(name + "," + ",".join("" if v is None else str(v) for v in values))
    return "\n".join(lines) + "\n"


# --- reports/eval_samples.md ------------------------------------------------------------------------

# After html.escape (& < >): the characters that would end a cell (|) or start Markdown (code, emphasis,
# links, strikethrough, a backslash escape of the entity that follows), as numeric character references.
_MARKDOWN = {c: f"&#{ord(c)};" for c in "|`*_[]~\\"}
_NEWLINE = re.compile(r"\r\n|\r|\n")


def cell(text: str) -> str:
    """`text` as inert content of one Markdown table cell: shown as written, never markup.

    html.escape turns & < > into entities (no tag, comment or entity of the data survives; quotes are left:
    outside a tag they mean nothing), the Markdown characters become character references, and each line
    break becomes <br> (a raw newline would end the table row).
    """
    out = html.escape(text, quote=False)
    out = "".join(_MARKDOWN.get(c, c) for c in out)
    return _NEWLINE.sub("<br>", out)


def _fmt(value: float | None, digits: int, percent: bool = False) -> str:
    if value is None:
        return "n/a"
    return f"{100 * value:.{digits}f}%" if percent else f"{value:.{digits}f}"


SUMMARY_ROWS = (  # (label, metric, digits, as a percentage, the metrics key of its adapter/base ratio)
    ("loss (assistant tokens)", "loss", 4, False, "loss_ratio"),
    ("perplexity", "perplexity", 1, False, None),
    ("chrF", "chrf", 2, False, "chrf_ratio"),
    ("stop rate", "stop_rate", 0, True, None),
    ("answer tokens (mean)", "answer_tokens", 1, False, None),
    ("loop rate", "loop_rate", 0, True, None),
)


def _answer_cell(record: dict, name: str) -> str:
    text = record[f"{name}_output"]
    shown = (cell(text) if text.strip() else "*(empty)*" if not text
             else f"*(whitespace only: {len(text)} characters)*")  # 128 <br> would say less, taller
    flags = [f"**chrF {_fmt(record[f'{name}_chrf'], 1)}**", f"{record[f'{name}_tokens']} tokens",
             "(stopped)" if record[f"{name}_stopped"] else "(cut at max_new_tokens)"]
    if record[f"{name}_loop"]:
        flags.append("(loop)")
    return shown + "<br>" + " ".join(flags)


def samples_report(metrics: dict, records: Sequence[dict], params) -> str:
    """reports/eval_samples.md: the summary table, how answers were decoded, then one row per sample.

    `metrics` is metrics/evaluate.json's content, `records` come from sample_records and `params` is the
    evaluate section (EvaluateParams).
    """
    lines = ["# evaluate: base vs adapter on the test split", "",
             "| metric | base | adapter | adapter / base |", "|---|---|---|---|"]
    for label, key, digits, percent, ratio in SUMMARY_ROWS:
        values = [_fmt(metrics[name][key], digits, percent) for name in MODELS]
        lines.append(f"| {label} | {' | '.join(values)} | {_fmt(metrics[ratio], 3) if ratio else ''} |")
        if key == "chrf" and metrics.get("base_chrf_length_matched") is not None:
            lines.append(f"| chrF, each base answer cut to the adapter's length | "
                         f"{_fmt(metrics['base_chrf_length_matched'], 2)} | {values[1]} | "
                         f"{_fmt(metrics['chrf_ratio_length_matched'], 3)} |")
    penalty = "off" if params.repetition_penalty == 1.0 else f"{params.repetition_penalty:g}"
    ngram = params.no_repeat_ngram_size or "off"
    if metrics.get("hosted"):
        decoding = (f"No loss ({metrics['loss_note']}). Answers from {metrics['hosted']['base']} and "
                    f"{metrics['hosted']['adapter']} through chat completions, decoded the same way: "
                    f"temperature 0, max_tokens {params.max_new_tokens}")
    else:
        decoding = (f"Loss on all {metrics['test_rows']} test rows ({metrics['supervised_tokens']:,} "
                    f"supervised tokens). Answers, decoded the same way for both models: greedy, "
                    f"max_new_tokens {params.max_new_tokens}, repetition_penalty {penalty}, "
                    f"no_repeat_ngram_size {ngram}")
    lines += [
        "",
        f"{decoding}; {metrics['samples']} samples of "
        f"{metrics['test_rows']} test rows (the first, in file order). A loop: one {LOOP_NGRAM}-word "
        f"sequence {LOOP_REPEATS} or more times in an answer.",
        "",
    ]
    if not records:
        return "\n".join(lines + ["No samples (evaluate.samples is 0)."]) + "\n"
    lines += ["| question | reference | base answer | adapter answer |", "|---|---|---|---|"]
    for r in records:
        lines.append(f"| {cell(r['prompt'])} | {cell(r['reference'])} | {_answer_cell(r, 'base')} | "
                     f"{_answer_cell(r, 'adapter')} |")
    return "\n".join(lines) + "\n"
