"""evaluate: the base and the adapter side by side on the test split.

    python -m stages.evaluate --base models/base --adapter models/adapter --test data/format/test.parquet
        --samples reports/eval_samples.jsonl --compare-plot reports/eval_compare.csv
        --metrics metrics/evaluate.json [--params params.yaml]

Two measurements, each for the base and for the base + adapter (webtune.models.inference.ChatModel):
- assistant-token loss: every test row through the chat format, cross-entropy on exactly the tokens train
  supervises (the same `train.channels` and `train.assistant_turns`), summed over all rows and divided by
  the number of those tokens (a token-weighted mean: short rows do not count more than long ones);
  perplexity = exp(loss);
- greedy answers to the first `evaluate.samples` test prompts, scored against the reference answer with
  chrF (sacrebleu), and the share of answers that stopped on their own before `evaluate.max_new_tokens`.

One model is in memory: the base numbers come from the same PeftModel with its adapter disabled.
Outputs appear only when everything has been computed (each is written atomically).
"""

import argparse
import contextlib
import json
import math
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from webtune import errors, io
from webtune.models.inference import Answer, ChatModel
from webtune.params import EvaluateParams, TrainParams, load_section

STAGE = "evaluate"
MODELS = ("base", "adapter")
PLOT_METRICS = ("loss", "perplexity", "chrf", "stop_rate")


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 6)


def generation_metrics(answers: Sequence[Answer], references: Sequence[str]) -> dict:
    """{"chrf": corpus chrF, "stop_rate", "chrf_per_sample": [...]} (None / [] for no answers)."""
    from sacrebleu.metrics import CHRF

    if len(answers) != len(references):
        raise ValueError(f"{len(answers)} answers for {len(references)} references")
    if not answers:
        return {"chrf": None, "stop_rate": None, "chrf_per_sample": []}
    chrf = CHRF()  # chrF2 with sacrebleu's defaults (char 6-grams, no word n-grams): comparable across runs
    hypotheses = [a.text for a in answers]
    return {
        "chrf": chrf.corpus_score(hypotheses, [list(references)]).score,
        "stop_rate": sum(a.stopped for a in answers) / len(answers),
        "chrf_per_sample": [chrf.sentence_score(h, [r]).score
                            for h, r in zip(hypotheses, references, strict=True)],
    }


def user_text(messages: Sequence[dict]) -> str:
    return next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")


def sample_records(pair_ids, rows, answers: dict[str, list[Answer]], scores: dict[str, dict]) -> list[dict]:
    return [
        {
            "pair_id": pair_id,
            "prompt": user_text(messages),
            "reference": messages[-1]["content"],
            **{f"{name}_output": answers[name][i].text for name in MODELS},
            **{f"{name}_stopped": answers[name][i].stopped for name in MODELS},
            **{f"{name}_chrf": _round(scores[name]["chrf_per_sample"][i]) for name in MODELS},
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


def evaluate(chat: ChatModel, *, pair_ids: list[str], rows: list[list[dict]], params: EvaluateParams,
             supervised: TrainParams, progress=io.stderr) -> tuple[dict, list[dict]]:
    """(metrics, sample records) for base and adapter on `rows`; writes nothing.

    `supervised` is the train section: its channels and assistant turns are the tokens scored.
    """
    losses, answers = {}, {}
    n_samples = min(params.samples, len(rows))
    for name in MODELS:
        with chat.base_only() if name == "base" else contextlib.nullcontext():
            losses[name], n_tokens = chat.assistant_loss(rows, params.batch_size, supervised.channels,
                                                         supervised.assistant_turns)
            if not math.isfinite(losses[name]):
                raise errors.UserError(f"the {name} loss on {len(rows)} test rows is {losses[name]}: "
                                       f"check the {name}'s weights")
            progress(f"evaluate: {name} loss {losses[name]:.4f} on {n_tokens:,} tokens; generating")
            answers[name] = chat.generate(rows[:n_samples], params.max_new_tokens, params.batch_size,
                                          progress=lambda line, name=name: progress(
                                              f"evaluate: {name} {line}"))
    progress(f"evaluate: loss base {losses['base']:.4f} adapter {losses['adapter']:.4f} ({len(rows)} rows)")

    references = [m[-1]["content"] for m in rows[:n_samples]]
    scores = {name: generation_metrics(answers[name], references) for name in MODELS}
    metrics = {
        name: {
            "loss": _round(losses[name]),
            "perplexity": _round(math.exp(losses[name])),
            "chrf": _round(scores[name]["chrf"]),
            "stop_rate": _round(scores[name]["stop_rate"]),
        }
        for name in MODELS
    }
    metrics |= {
        "loss_ratio": _round(losses["adapter"] / losses["base"]),
        "test_rows": len(rows),
        "supervised_tokens": n_tokens,
        "samples": n_samples,
    }
    return metrics, sample_records(pair_ids[:n_samples], rows[:n_samples], answers, scores)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", required=True, type=Path, help="base folder (the base stage's)")
    parser.add_argument("--adapter", required=True, type=Path, help="adapter folder (the train stage's)")
    parser.add_argument("--test", required=True, type=Path, help="test split Parquet (the format stage's)")
    parser.add_argument("--samples", required=True, type=Path, help="JSONL of greedy answers to write")
    parser.add_argument("--compare-plot", required=True, type=Path, help="CSV (model, one column per metric)")
    parser.add_argument("--metrics", required=True, type=Path, help="metrics JSON to write")
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args(argv)
    with errors.reported(STAGE):
        params, supervised = load_section(STAGE, args.params), load_section("train", args.params)
        pair_ids, rows = io.read_chat_rows(args.test)
        if not rows:
            raise errors.InputError(f"{args.test} has no rows: nothing to evaluate")
        start = time.perf_counter()
        torch.set_num_threads(params.threads)
        torch.manual_seed(0)
        chat = ChatModel.load(args.base, args.adapter)
        metrics, samples = evaluate(chat, pair_ids=pair_ids, rows=rows, params=params, supervised=supervised)
        with io.text_writer(args.samples) as f:
            for record in samples:
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
        io.write_text(compare_csv(metrics), args.compare_plot)
        io.write_json(metrics, args.metrics)
    io.stderr(f"evaluate: done in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
