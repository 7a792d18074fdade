"""evaluate: the base and the adapter side by side on held-out pages, with intervals and a promotion gate.

    python -m stages.evaluate --base models/base --adapter models/adapter --test data/format/test.parquet
        --test-docs data/format/test_docs.parquet --samples reports/eval_samples.jsonl
        --samples-report reports/eval_samples.md --compare-plot reports/eval_compare.csv
        --metrics metrics/evaluate.json --judge-cache .webtune/judge-cache.sqlite [--params params.yaml]

For the base and for the base + adapter (webtune.models.chat.Chat; one model in memory, the base being the
same PeftModel with its adapter disabled):
- loss on exactly the tokens train supervises (`train.channels`, `train.assistant_turns`) of every test
  row, token-weighted; perplexity = exp(loss);
- bits per byte of the held-out test pages' cleaned text (the first `evaluate.page_bytes` of each), scored
  as plain language modelling: tokenizer- and length-independent, the adaptation to the domain's text;
- greedy answers to the test prompts (every row unless `evaluate.samples` says fewer), decoded alike for
  both, scored by webtune.evaluation.answers: chrF (beta 1, its precision and recall, and the recall-
  weighted chrF2), ROUGE-L, semantic similarity, length ratio, stop rate, loop rate, answer tokens;
- for every metric the adapter-minus-base difference with a paired bootstrap interval
  (webtune.evaluation.intervals), a verdict line, the gate (webtune.evaluation.gate) and, when
  `evaluate.judge.base_url` is set, a pairwise LLM judge (webtune.evaluation.judge).
A hosted fine-tune (hosted.json in the adapter folder) answers through chat completions and is scored the
same way, without the two metrics that need logits. Outputs appear only when everything has been
computed; with `evaluate.gate: fail` a failed gate exits 1 after writing them.
"""

import argparse
import contextlib
import hashlib
import json
import math
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from webtune import errors, io, secrets
from webtune.evaluation import METRICS, MODELS, EvaluateParams, round6
from webtune.evaluation.answers import answer_stats
from webtune.evaluation.gate import as_metrics, committed_metrics, decide
from webtune.evaluation.intervals import compare, mean_interval, resample_weights
from webtune.evaluation.judge import JudgeItem, judge, read_key
from webtune.evaluation.report import compare_csv, sample_records, samples_report
from webtune.models import KEY_ENV
from webtune.models.chat import Chat
from webtune.models.hosted import load_chat
from webtune.params import load_section
from webtune.training import TrainParams

STAGE = "evaluate"
LOSS_NOTE = ("loss and bits per byte are local-only: a hosted model returns text, not logits over the base's "
             "tokens")


def measure(chat: Chat, rows: list[list[dict]], docs: list[str], params: EvaluateParams,
            supervised: TrainParams, progress=io.stderr) -> tuple[dict, dict, int]:
    """(answers per model, per-item stats per model and metric, supervised tokens): the model calls."""
    answers, stats, n_tokens = {}, {name: {} for name in MODELS}, 0
    n_samples = len(rows) if params.samples == 0 else min(params.samples, len(rows))
    for name in MODELS:
        start = time.perf_counter()
        with chat.base_only() if name == "base" else contextlib.nullcontext():
            if chat.can_score_loss:
                losses = np.array(chat.row_losses(rows, params.batch_size, supervised.channels,
                                                  supervised.assistant_turns), dtype=float).reshape(-1, 2)
                n_tokens, loss = int(losses[:, 1].sum()), METRICS["loss"].value(losses.sum(0))
                if not math.isfinite(loss):
                    raise errors.UserError(f"the {name} loss on {len(rows)} test rows is {loss}: "
                                           f"check the {name}'s weights")
                nll = np.array(chat.text_nll(docs, params.text_window, params.batch_size), dtype=float)
                stats[name]["loss"] = losses
                stats[name]["bits_per_byte"] = np.column_stack([nll.reshape(-1, 2)[:, 0],
                                                                [len(d.encode()) for d in docs]])
                progress(f"evaluate: {name} loss {loss:.4f} on {n_tokens:,} tokens, "
                         f"{METRICS['bits_per_byte'].value(stats[name]['bits_per_byte'].sum(0)):.4f} bits "
                         f"per byte of {len(docs)} held-out pages ({time.perf_counter() - start:.0f} s); "
                         "generating")
                start = time.perf_counter()
            answers[name] = chat.generate(
                rows[:n_samples], params.max_new_tokens, params.batch_size,
                progress=lambda line, name=name: progress(f"evaluate: {name} {line}"),
                repetition_penalty=params.repetition_penalty,
                no_repeat_ngram_size=params.no_repeat_ngram_size)
            progress(f"evaluate: {name} answered {n_samples} prompts in {time.perf_counter() - start:.0f} s")
    references = [m[-1]["content"] for m in rows[:n_samples]]
    for name in MODELS:
        stats[name] |= answer_stats(answers[name], references)
    return answers, stats, n_tokens


def summarize(stats: dict, params: EvaluateParams, weights: dict, row_pages: Sequence[str]) -> dict:
    """{metric: intervals.compare row} for every metric both models have; the same resamples for every
    metric over the same items (rows, answers or pages): `weights` caches them by (items, count). With
    `evaluate.resample: pages` a resample draws whole pages (`row_pages`: each test row's page)."""
    compared = {}
    for name, metric in METRICS.items():
        if name not in stats["base"]:
            continue
        base, adapter = stats["base"][name], stats["adapter"][name]
        key = (metric.over, len(base))
        if key not in weights:
            by_page = params.resample == "pages" and metric.over == "rows"
            weights[key] = resample_weights(len(base), params.bootstrap, seed=0,
                                            groups=row_pages[: len(base)] if by_page else None)
        compared[name] = compare(metric, base, adapter, weights[key], params.confidence)
    return compared


def verdict_line(compared: dict) -> str:
    groups = {side: [n for n, row in compared.items() if row["verdict"] == side]
              for side in ("adapter", "base", "neither")}
    parts = [f"The adapter is better on {', '.join(groups['adapter']) or 'no metric'}"]
    if groups["base"]:
        parts.append(f"worse on {', '.join(groups['base'])}")
    if groups["neither"]:
        parts.append(f"within noise on {', '.join(groups['neither'])}")
    return "; ".join(parts) + " (intervals of the difference excluding zero)"


def fingerprint(pair_ids: Sequence[str], rows: Sequence[Sequence[dict]], doc_ids, docs, samples: int) -> str:
    """What the numbers were measured on: the test prompts and references, how many were answered, and the
    held-out text (a gate against a committed run compares only over the same)."""
    measured = [list(pair_ids), [list(r) for r in rows], list(doc_ids), list(docs), samples]
    h = hashlib.sha256(json.dumps(measured, ensure_ascii=False).encode())
    return h.hexdigest()[:16]


def evaluate(chat: Chat, *, pair_ids: list[str], rows: list[list[dict]], doc_ids: list[str], docs: list[str],
             params: EvaluateParams, supervised: TrainParams, row_pages: Sequence[str] | None = None,
             committed=None, judged=None, progress=io.stderr) -> tuple[dict, list[dict]]:
    """(metrics, sample records) for base and adapter; writes nothing. `committed`: a callable returning
    (the metrics at evaluate.gate_against, a note) for the gate; `judged`: JudgeItems -> JudgeResult (the
    judge, when evaluate.judge.base_url is set)."""
    answers, stats, n_tokens = measure(chat, rows, docs, params, supervised, progress)
    weights, row_pages = {}, list(row_pages) if row_pages is not None else list(pair_ids)
    compared = summarize(stats, params, weights, row_pages)
    scored = chat.can_score_loss
    metrics = {name: {m: round6(row[name]) for m, row in compared.items()} for name in MODELS}
    for name in MODELS:
        if scored:
            metrics[name]["perplexity"] = round6(math.exp(compared["loss"][name]))
    metrics["delta"] = {m: {"value": round6(row["delta"]), "low": round6(row["low"]),
                            "high": round6(row["high"]), "verdict": row["verdict"]}
                        for m, row in compared.items()}
    metrics["ratio"] = {m: round6(row["adapter"] / row["base"]) for m, row in compared.items() if row["base"]}
    metrics["verdict"] = verdict_line(compared)
    n_samples = len(answers["base"])
    metrics |= {
        **({} if scored else {"loss_note": LOSS_NOTE}),
        "test_rows": len(rows), "samples": n_samples, "supervised_tokens": n_tokens,
        "held_out_docs": len(docs) if scored else 0,
        "held_out_bytes": sum(len(d.encode()) for d in docs) if scored else 0,
        "confidence": params.confidence, "bootstrap": params.bootstrap,
        "test_fingerprint": fingerprint(pair_ids, rows, doc_ids, docs, n_samples),
    }
    if params.gate != "off":
        reference, note = (committed() if params.gate_against and committed else (None, ""))
        metrics["gate"] = as_metrics(decide(params, compared, reference, metrics["test_fingerprint"]))
        if note:
            metrics["gate"]["note"] = note
    if chat.hosted_models:  # which models on the host answered (the samples report names them)
        metrics["hosted"] = chat.hosted_models
    records = sample_records(pair_ids[:n_samples], rows[:n_samples], answers, stats)
    if judged is not None and records:
        result = judged([JudgeItem(r["prompt"], r["reference"], r["base_output"], r["adapter_output"])
                         for r in records])
        resampled = weights.get(("rows", n_samples))
        if resampled is None:
            resampled = resample_weights(n_samples, params.bootstrap, seed=0,
                                         groups=row_pages[:n_samples] if params.resample == "pages" else None)
        score = {k: round6(v) for k, v in mean_interval(result.scores, resampled, params.confidence).items()}
        metrics["judge"] = {"model": params.judge.model, **result.summary, "score": score}
        for record, s, v in zip(records, result.scores, result.verdicts, strict=True):
            record |= {"judge_score": s, "judge_verdicts": list(v)}
    return metrics, records


def held_out(path: Path, page_bytes: int) -> tuple[list[str], list[str]]:
    """(doc ids, texts) of the held-out test pages, each cut to its first `page_bytes` bytes (0: whole) at a
    character boundary: every page counts, the longest do not dominate, and scoring time is bounded."""
    table = io.parquet_file(path, ["doc_id", "text"], "the format stage").read(columns=["doc_id", "text"])
    texts = table.column("text").to_pylist()
    if page_bytes:
        texts = [t.encode()[:page_bytes].decode(errors="ignore") for t in texts]
    return table.column("doc_id").to_pylist(), texts


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", required=True, type=Path, help="base folder (the base stage's)")
    parser.add_argument("--adapter", required=True, type=Path, help="adapter folder (the train stage's)")
    parser.add_argument("--test", required=True, type=Path, help="test split Parquet (the format stage's)")
    parser.add_argument("--test-docs", required=True, type=Path, help="held-out pages (the format stage's)")
    parser.add_argument("--samples", required=True, type=Path, help="JSONL of greedy answers to write")
    parser.add_argument("--samples-report", required=True, type=Path,
                        help="Markdown report to write (verdict, metrics table, then the answers)")
    parser.add_argument("--compare-plot", required=True, type=Path, help="CSV (model, one column per metric)")
    parser.add_argument("--metrics", required=True, type=Path, help="metrics JSON to write")
    parser.add_argument("--judge-cache", type=Path, default=Path(".webtune/judge-cache.sqlite"),
                        help="SQLite cache of judge verdicts (a re-run never pays twice)")
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args(argv)
    with errors.reported(STAGE):
        params, supervised = load_section(STAGE, args.params), load_section("train", args.params)
        pair_ids, rows = io.read_chat_rows(args.test)
        row_pages = io.parquet_file(args.test, ["doc_id"], "the format stage").read(
            columns=["doc_id"]).column("doc_id").to_pylist()
        if not rows:
            raise errors.InputError(f"{args.test} has no rows: nothing to evaluate")
        doc_ids, docs = held_out(args.test_docs, params.page_bytes)
        start = time.perf_counter()
        torch.set_num_threads(params.threads)
        torch.manual_seed(0)
        # a local adapter, or a hosted fine-tune and its base model (hosted.json: train.backend openai)
        chat = load_chat(args.base, args.adapter, api_key=lambda model: secrets.require(
            KEY_ENV, needed_by=f"evaluate of hosted {model}"))
        context = chat.tokenizer.model_max_length if chat.can_score_loss else None
        if context and params.text_window >= context:
            raise errors.ParamsError(f"evaluate.text_window: {params.text_window} tokens and their context "
                                     f"token exceed the base's context of {context}")
        judged = None
        if params.judge.enabled:
            key = read_key(params.judge)
            judged = lambda items: judge(items, params.judge, cache=args.judge_cache, api_key=key,  # noqa: E731
                                         progress=lambda line: io.stderr(f"evaluate: {line}"))
        metrics, samples = evaluate(chat, pair_ids=pair_ids, rows=rows, doc_ids=doc_ids, docs=docs,
                                    params=params, supervised=supervised, row_pages=row_pages, judged=judged,
                                    committed=lambda: committed_metrics(str(args.metrics),
                                                                        params.gate_against))
        with io.text_writer(args.samples) as f:
            for record in samples:
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
        io.write_text(samples_report(metrics, samples, params), args.samples_report)
        io.write_text(compare_csv(metrics), args.compare_plot)
        io.write_json(metrics, args.metrics)
        io.stderr(f"evaluate: {metrics['verdict']}")
        gate = metrics.get("gate")
        if gate and not gate["passed"] and params.gate == "fail":
            raise errors.UserError(gate["line"])
        if gate:
            io.stderr(f"evaluate: {gate['line']}")
    io.stderr(f"evaluate: done in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
