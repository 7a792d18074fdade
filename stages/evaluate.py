"""evaluate: the base and the adapter side by side on the test split.

    python -m stages.evaluate --base models/base --adapter models/adapter --test data/format/test.parquet
        --samples reports/eval_samples.jsonl --samples-report reports/eval_samples.md
        --compare-plot reports/eval_compare.csv --metrics metrics/evaluate.json [--params params.yaml]

Two measurements, each for the base and for the base + adapter (webtune.models.inference.ChatModel):
- assistant-token loss: every test row through the chat format, cross-entropy on exactly the tokens train
  supervises (the same `train.channels` and `train.assistant_turns`), summed over all rows and divided by
  the number of those tokens (a token-weighted mean: short rows do not count more than long ones);
  perplexity = exp(loss);
- greedy answers to the first `evaluate.samples` test prompts, decoded alike for both models
  (`evaluate.repetition_penalty`, `evaluate.no_repeat_ngram_size`) and scored by webtune.evaluation: chrF
  against the reference answer, the share that stopped on their own, their mean length in tokens and the
  share caught in a loop.

One model is in memory: the base numbers come from the same PeftModel with its adapter disabled. A
hosted fine-tune (train.backend openai: the adapter folder holds hosted.json) is the same calls on
webtune.models.hosted.HostedChat: the `ft:` model and its base model answer through chat completions,
scored the same way; it declares it cannot score a loss (can_score_loss), so loss is local-only.
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

from webtune import errors, io, secrets
from webtune.evaluation import (
    MODELS,
    EvaluateParams,
    chrf_ratios,
    compare_csv,
    generation_metrics,
    round6,
    sample_records,
    samples_report,
)
from webtune.models import KEY_ENV
from webtune.models.chat import Chat
from webtune.models.hosted import load_chat
from webtune.params import load_section
from webtune.training import TrainParams

STAGE = "evaluate"
LOSS_NOTE = "loss is local-only: a hosted model returns text, not logits over the base's tokens"


def evaluate(chat: Chat, *, pair_ids: list[str], rows: list[list[dict]], params: EvaluateParams,
             supervised: TrainParams, progress=io.stderr) -> tuple[dict, list[dict]]:
    """(metrics, sample records) for base and adapter on `rows`; writes nothing.

    `supervised` is the train section: its channels and assistant turns are the tokens scored. A chat
    model that cannot score a loss (chat.can_score_loss: a hosted one) gets no loss and perplexity (None)
    and LOSS_NOTE saying why; its answers are scored the same way.
    """
    losses, answers = dict.fromkeys(MODELS), {}
    n_tokens, n_samples, scored = 0, min(params.samples, len(rows)), chat.can_score_loss
    for name in MODELS:
        with chat.base_only() if name == "base" else contextlib.nullcontext():
            if scored:
                losses[name], n_tokens = chat.assistant_loss(rows, params.batch_size, supervised.channels,
                                                             supervised.assistant_turns)
                if not math.isfinite(losses[name]):
                    raise errors.UserError(f"the {name} loss on {len(rows)} test rows is {losses[name]}: "
                                           f"check the {name}'s weights")
                progress(f"evaluate: {name} loss {losses[name]:.4f} on {n_tokens:,} tokens; generating")
            answers[name] = chat.generate(
                rows[:n_samples], params.max_new_tokens, params.batch_size,
                progress=lambda line, name=name: progress(f"evaluate: {name} {line}"),
                repetition_penalty=params.repetition_penalty,
                no_repeat_ngram_size=params.no_repeat_ngram_size)
    if scored:
        progress(f"evaluate: loss base {losses['base']:.4f} adapter {losses['adapter']:.4f} "
                 f"({len(rows)} rows)")

    references = [m[-1]["content"] for m in rows[:n_samples]]
    scores = {name: generation_metrics(answers[name], references) for name in MODELS}
    metrics = {
        name: {
            "loss": round6(losses[name]),
            "perplexity": round6(math.exp(losses[name])) if scored else None,
            **{k: round6(scores[name][k]) for k in ("chrf", "stop_rate", "answer_tokens", "loop_rate")},
        }
        for name in MODELS
    }
    metrics |= {
        "loss_ratio": round6(losses["adapter"] / losses["base"]) if scored else None,
        **({} if scored else {"loss_note": LOSS_NOTE}),
        **chrf_ratios(answers, references, scores),
        "test_rows": len(rows),
        "supervised_tokens": n_tokens,
        "samples": n_samples,
    }
    if chat.hosted_models:  # which models on the host answered (the samples report names them)
        metrics["hosted"] = chat.hosted_models
    return metrics, sample_records(pair_ids[:n_samples], rows[:n_samples], answers, scores)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", required=True, type=Path, help="base folder (the base stage's)")
    parser.add_argument("--adapter", required=True, type=Path, help="adapter folder (the train stage's)")
    parser.add_argument("--test", required=True, type=Path, help="test split Parquet (the format stage's)")
    parser.add_argument("--samples", required=True, type=Path, help="JSONL of greedy answers to write")
    parser.add_argument("--samples-report", required=True, type=Path,
                        help="Markdown report to write (summary table, then the answers side by side)")
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
        # a local adapter, or a hosted fine-tune and its base model (hosted.json: train.backend openai)
        chat = load_chat(args.base, args.adapter, api_key=lambda model: secrets.require(
            KEY_ENV, needed_by=f"evaluate of hosted {model}"))
        metrics, samples = evaluate(chat, pair_ids=pair_ids, rows=rows, params=params, supervised=supervised)
        report = samples_report(metrics, samples, params)
        with io.text_writer(args.samples) as f:
            for record in samples:
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
        io.write_text(report, args.samples_report)
        io.write_text(compare_csv(metrics), args.compare_plot)
        io.write_json(metrics, args.metrics)
    io.stderr(f"evaluate: done in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
