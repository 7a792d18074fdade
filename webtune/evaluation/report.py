"""evaluate's reports: per-sample records, the CSV `dvc plots` draws, and reports/eval_samples.md.

    records = sample_records(pair_ids, rows, answers, stats)   # reports/eval_samples.jsonl
    samples_report(metrics, records, params)                   # reports/eval_samples.md

The Markdown report leads with a verdict line and a table of every metric with both models' values, the
difference and its interval, then how the numbers were measured, then every answer beside its reference.
Scraped text is data: every table cell goes through `cell`.
"""

import html
import re
from collections.abc import Sequence

from webtune.evaluation import METRICS, MODELS, round6
from webtune.evaluation.answers import LOOP_NGRAM, LOOP_REPEATS
from webtune.models.chat import Answer

PLOT_METRICS = ("loss", "bits_per_byte", "chrf1", "rougeL_f1", "similarity", "stop_rate", "answer_tokens",
                "loop_rate")
SAMPLE_METRICS = ("chrf1", "rougeL_f1", "similarity")  # per answer in the records and the report


def user_text(messages: Sequence[dict]) -> str:
    return next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")


def sample_records(pair_ids, rows, answers: dict[str, list[Answer]], stats: dict[str, dict]) -> list[dict]:
    """One record per answered test row (reports/eval_samples.jsonl): the question, the reference, and per
    model the answer, whether it stopped, its token count, whether it loops and its own chrF (beta 1),
    ROUGE-L F1 and similarity (`stats`: model -> answers.answer_stats)."""
    def own(name: str, metric: str, i: int) -> float | None:
        return round6(float(METRICS[metric].value(stats[name][metric][i])))

    return [
        {
            "pair_id": pair_id,
            "prompt": user_text(messages),
            "reference": messages[-1]["content"],
            **{f"{name}_output": answers[name][i].text for name in MODELS},
            **{f"{name}_stopped": answers[name][i].stopped for name in MODELS},
            **{f"{name}_tokens": answers[name][i].tokens for name in MODELS},
            **{f"{name}_loop": bool(stats[name]["loop_rate"][i][0]) for name in MODELS},
            **{f"{name}_{m}": own(name, m, i) for name in MODELS for m in SAMPLE_METRICS},
        }
        for i, (pair_id, messages) in enumerate(zip(pair_ids, rows, strict=True))
    ]


def compare_csv(metrics: dict) -> str:
    """One row per model, one column per metric: dvc.yaml draws one base-vs-adapter bar chart per metric
    (their scales differ too much to share an axis)."""
    lines = ["model," + ",".join(PLOT_METRICS)]
    for name in MODELS:
        values = [metrics[name].get(metric) for metric in PLOT_METRICS]
        lines.append(name + "," + ",".join("" if v is None else str(v) for v in values))
    return "\n".join(lines) + "\n"


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


def _fmt(value: float | None, digits: int, percent: bool = False, sign: bool = False) -> str:
    if value is None:
        return "n/a"
    plus = "+" if sign else ""
    return f"{100 * value:{plus}.{digits}f}%" if percent else f"{value:{plus}.{digits}f}"


def summary_table(metrics: dict) -> list[str]:
    """| metric | base | adapter | adapter - base | interval | better |, one row per metric measured."""
    level = f"{metrics['confidence']:.0%}"
    lines = [f"| metric | base | adapter | adapter − base | {level} interval | better |",
             "|---|---|---|---|---|---|"]
    for name, metric in METRICS.items():
        delta = metrics["delta"].get(name)
        if delta is None:
            continue
        d, p = metric.digits + (1 if metric.percent else 0), metric.percent
        interval = f"{_fmt(delta['low'], d, p, True)} to {_fmt(delta['high'], d, p, True)}"
        lines.append(f"| {metric.label} | {_fmt(metrics['base'][name], d, p)} | "
                     f"{_fmt(metrics['adapter'][name], d, p)} | {_fmt(delta['value'], d, p, True)} | "
                     f"{interval} | {delta['verdict'] or '(descriptive)'} |")
    return lines


def _answer_cell(record: dict, name: str) -> str:
    text = record[f"{name}_output"]
    shown = (cell(text) if text.strip() else "*(empty)*" if not text
             else f"*(whitespace only: {len(text)} characters)*")  # 128 <br> would say less, taller
    flags = [f"**chrF {_fmt(record[f'{name}_chrf1'], 1)}**",
             f"ROUGE-L {_fmt(record[f'{name}_rougeL_f1'], 2)}",
             f"similarity {_fmt(record[f'{name}_similarity'], 2)}", f"{record[f'{name}_tokens']} tokens",
             "(stopped)" if record[f"{name}_stopped"] else "(cut at max_new_tokens)"]
    if record[f"{name}_loop"]:
        flags.append("(loop)")
    return shown + "<br>" + " ".join(flags)


def samples_report(metrics: dict, records: Sequence[dict], params) -> str:
    """reports/eval_samples.md: the verdict, the metrics table, how answers were decoded, then the answers.

    `metrics` is metrics/evaluate.json's content, `records` come from sample_records and `params` is the
    evaluate section (EvaluateParams)."""
    lines = ["# evaluate: base vs adapter on held-out test pages", "", f"**{metrics['verdict']}**", ""]
    lines += summary_table(metrics)
    gate = metrics.get("gate") or {}
    if gate.get("checks"):
        lines += ["", f"Gate ({gate['mode']}): " + ("passed" if gate["passed"] else "failed"), ""]
        lines += [f"- {'pass' if c['passed'] else 'FAIL' if c['passed'] is False else 'skipped'}: "
                  f"{c['line']}" for by_metric in gate["checks"].values() for c in by_metric.values()]
    if metrics.get("judge"):
        j = metrics["judge"]
        score = j["score"]
        lines += ["", f"Judge {cell(j['model'])}: adapter wins {j['adapter_wins']}, base wins "
                      f"{j['base_wins']}, ties {j['ties']} (win rate {_fmt(j['win_rate'], 3)}, mean score "
                      f"{_fmt(score['value'], 3, sign=True)}, {metrics['confidence']:.0%} interval "
                      f"{_fmt(score['low'], 3, sign=True)} to {_fmt(score['high'], 3, sign=True)}); "
                      f"{j['usage']['calls']} calls, {j['usage']['cached']} verdicts from the cache."]
    penalty = "off" if params.repetition_penalty == 1.0 else f"{params.repetition_penalty:g}"
    ngram = params.no_repeat_ngram_size or "off"
    if metrics.get("hosted"):
        decoding = (f"No loss or bits per byte ({metrics['loss_note']}). Answers from "
                    f"{metrics['hosted']['base']} and {metrics['hosted']['adapter']} through chat "
                    "completions, "
                    f"decoded the same way: temperature 0, max_tokens {params.max_new_tokens}")
    else:
        decoding = (f"Loss on all {metrics['test_rows']} test rows ({metrics['supervised_tokens']:,} "
                    f"supervised tokens); bits per byte on {metrics['held_out_docs']} held-out test pages "
                    f"({metrics['held_out_bytes']:,} bytes). Answers, decoded the same way for both models: "
                    f"greedy, max_new_tokens {params.max_new_tokens}, repetition_penalty {penalty}, "
                    f"no_repeat_ngram_size {ngram}")
    lines += ["", f"{decoding}; {metrics['samples']} of {metrics['test_rows']} test rows answered (in file "
                  f"order). Intervals: paired bootstrap, {params.bootstrap} resamples "
                  + ("of whole held-out pages" if params.resample == "pages"
                     else "of test rows (of pages for bits per byte)")
                  + f". A loop: one {LOOP_NGRAM}-word sequence {LOOP_REPEATS} or more times "
                  "in an answer.", ""]
    if not records:
        return "\n".join(lines + ["No samples."]) + "\n"
    lines += ["| question | reference | base answer | adapter answer |", "|---|---|---|---|"]
    for r in records:
        lines.append(f"| {cell(r['prompt'])} | {cell(r['reference'])} | {_answer_cell(r, 'base')} | "
                     f"{_answer_cell(r, 'adapter')} |")
    return "\n".join(lines) + "\n"
