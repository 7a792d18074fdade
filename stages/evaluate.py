"""Stage evaluate: the base and the adapter side by side on the test split.

    python -m stages.evaluate --base models/base --adapter models/adapter --test data/format/test.parquet
        --samples reports/eval_samples.jsonl --compare-plot reports/eval_compare.csv
        --metrics metrics/evaluate.json [--params params.yaml]

Two measurements, each for the base and for the base + adapter:
- assistant-token loss: every test row through the chat template, cross-entropy on exactly the tokens
  train supervises (assistant answer and its `<|return|>`, `chat_template.supervised_mask`), summed over
  all rows and divided by the number of those tokens (a token-weighted mean: short rows do not count
  more than long ones); perplexity = exp(loss);
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
from typing import NamedTuple

import torch

from stages import chat_template
from stages.io import read_chat_rows, stderr, text_writer, write_json, write_text
from stages.params import load_section

STAGE = "evaluate"
MODELS = ("base", "adapter")
PLOT_METRICS = ("loss", "perplexity", "chrf", "stop_rate")
IGNORE = -100  # label of a token that is not scored (torch's cross_entropy default ignore_index)


class Answer(NamedTuple):
    text: str  # the new tokens up to the first stop token, decoded without special tokens
    stopped: bool  # a stop token came before the max_new_tokens budget ran out


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 6)


# ---------------------------------------------------------------------------------------------
# Batching


def pad(seqs: Sequence[Sequence[int]], value: int, side: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids [batch, longest], attention mask) with `value` on the right or left of shorter rows."""
    longest = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), longest), value, dtype=torch.long)
    mask = torch.zeros((len(seqs), longest), dtype=torch.long)
    for i, s in enumerate(seqs):
        span = slice(0, len(s)) if side == "right" else slice(longest - len(s), longest)
        ids[i, span] = torch.tensor(s, dtype=torch.long)
        mask[i, span] = 1
    return ids, mask


# ---------------------------------------------------------------------------------------------
# Assistant-token loss


def encode_labels(tokenizer, messages: Sequence[dict]) -> tuple[list[int], list[int]]:
    """(ids, labels): labels are the ids on supervised tokens and IGNORE elsewhere, exactly as train sees them."""
    ids, _ = chat_template.encode(tokenizer, messages)
    mask = chat_template.supervised_mask(tokenizer, ids)
    return ids, [i if m else IGNORE for i, m in zip(ids, mask, strict=True)]


@torch.no_grad()
def assistant_loss(model, tokenizer, rows: Sequence[Sequence[dict]], batch_size: int) -> tuple[float, int]:
    """(token-weighted mean cross-entropy on supervised tokens, number of those tokens) over `rows`.

    Per-token losses are summed in float64 over all rows and divided once by the token count, so the
    result does not depend on batch_size. Rows are batched by length (less padding); the sum does not
    care about order. Right padding: a real token never attends to a pad, and pads are never scored.
    """
    model.eval()
    encoded = sorted((encode_labels(tokenizer, m) for m in rows), key=lambda e: len(e[0]))
    total, n_tokens = torch.zeros((), dtype=torch.float64), 0
    for start in range(0, len(encoded), batch_size):
        batch = encoded[start : start + batch_size]
        ids, attention = pad([e[0] for e in batch], tokenizer.pad_token_id, "right")
        labels, _ = pad([e[1] for e in batch], IGNORE, "right")
        logits = model(input_ids=ids.to(model.device), attention_mask=attention.to(model.device),
                       use_cache=False).logits.cpu()
        # Position t predicts token t + 1.
        per_token = torch.nn.functional.cross_entropy(
            logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=IGNORE, reduction="none"
        )
        total += per_token.double().sum()
        n_tokens += int((labels[:, 1:] != IGNORE).sum())
    if n_tokens == 0:
        raise ValueError("no supervised tokens in the rows: nothing to score")
    return total.item() / n_tokens, n_tokens


# ---------------------------------------------------------------------------------------------
# Greedy answers


def stop_token_ids(model, tokenizer) -> list[int]:
    """`<|return|>` (a final answer's end), `<|end|>` (any message's end) and the model's own eos ids
    (the tiny base adds `<|endoftext|>`, the end of a warm-up document)."""
    ids = tokenizer.convert_tokens_to_ids([chat_template.RETURN, chat_template.END])
    eos = model.generation_config.eos_token_id
    for i in [eos] if isinstance(eos, int) else eos or []:
        if i not in ids:
            ids.append(i)
    return ids


def prompt_ids(tokenizer, messages: Sequence[dict]) -> list[int]:
    """The row without its answer, ending in `<|start|>assistant<|channel|>final<|message|>`."""
    out = tokenizer.apply_chat_template(
        chat_template.prompt_messages(messages), add_generation_prompt=True, tokenize=True, return_dict=True
    )
    return list(out["input_ids"])


def cut_answer(tokenizer, new_ids: Sequence[int], stops: Sequence[int]) -> Answer:
    """The answer in a row of generated ids: everything before the first stop id.

    generate fills a row that has stopped with pad ids until the batch's longest row is done, so the
    length of a row says nothing; the first stop id does.
    """
    end = next((i for i, t in enumerate(new_ids) if t in stops), None)
    return Answer(tokenizer.decode(new_ids[:end], skip_special_tokens=True), end is not None)


@torch.no_grad()
def generate_answers(
    model, tokenizer, rows: Sequence[Sequence[dict]], max_new_tokens: int, batch_size: int, progress=None
) -> list[Answer]:
    """Greedy answers to each row's prompt, in row order; batched with left padding.

    Left padding keeps every prompt's last token in the last column, where generation continues;
    generate derives position ids from the attention mask, so a padded prompt is answered as if alone.
    """
    model.eval()
    stops = stop_token_ids(model, tokenizer)
    answers = []
    for start in range(0, len(rows), batch_size):
        prompts = [prompt_ids(tokenizer, m) for m in rows[start : start + batch_size]]
        ids, attention = pad(prompts, tokenizer.pad_token_id, "left")
        out = model.generate(
            input_ids=ids.to(model.device),
            attention_mask=attention.to(model.device),
            do_sample=False,
            max_new_tokens=max_new_tokens,
            eos_token_id=stops,
            pad_token_id=tokenizer.pad_token_id,
        )
        answers += [cut_answer(tokenizer, new, stops) for new in out[:, ids.shape[1] :].cpu().tolist()]
        if progress:
            progress(f"generated {len(answers)}/{len(rows)}")
    return answers


# ---------------------------------------------------------------------------------------------
# Generation metrics


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
        "chrf_per_sample": [chrf.sentence_score(h, [r]).score for h, r in zip(hypotheses, references, strict=True)],
    }


# ---------------------------------------------------------------------------------------------
# Outputs


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


# ---------------------------------------------------------------------------------------------
# Stage


def check_adapter(adapter: Path, base_tokenizer) -> None:
    """SystemExit unless `adapter` is a PEFT adapter folder whose tokenizer (if saved) is the base's."""
    from transformers import AutoTokenizer

    if not (adapter / "adapter_config.json").is_file():
        raise SystemExit(f"{STAGE}: {adapter} has no adapter_config.json: not a PEFT adapter folder (run train)")
    if not any((adapter / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json")):
        return
    try:
        adapter_tokenizer = AutoTokenizer.from_pretrained(adapter, local_files_only=True)
    except (OSError, ValueError) as e:
        raise SystemExit(f"{STAGE}: cannot load the tokenizer saved in {adapter}: {e}") from None
    if adapter_tokenizer.get_vocab() != base_tokenizer.get_vocab():
        raise SystemExit(
            f"{STAGE}: the tokenizer saved in {adapter} differs from the base's: the adapter was trained on "
            f"another base (re-run train on this base)"
        )


def evaluate(
    *, base_dir: Path, adapter_dir: Path, pair_ids: list[str], rows: list[list[dict]], params, progress=stderr
) -> tuple[dict, list[dict]]:
    """(metrics, sample records) for base and adapter on `rows`; writes nothing."""
    from peft import PeftModel

    from stages.base import load_base

    t0 = time.perf_counter()
    torch.set_num_threads(params.threads)
    torch.manual_seed(0)
    try:
        model, tokenizer, info = load_base(base_dir)
    except OSError as e:  # a hub base offline, gated or missing
        raise SystemExit(f"{STAGE}: cannot load the base in {base_dir}: {e}") from None
    check_adapter(adapter_dir, tokenizer)
    try:
        model = PeftModel.from_pretrained(model, adapter_dir)
    except (RuntimeError, ValueError, KeyError) as e:  # e.g. LoRA shapes of a base of another width
        raise SystemExit(f"{STAGE}: cannot load the adapter in {adapter_dir} onto the base in {base_dir}: {e}") from None

    losses, answers = {}, {}
    n_samples = min(params.samples, len(rows))
    for name in MODELS:
        # The base is the same PeftModel with its adapter switched off: one model in memory.
        with model.disable_adapter() if name == "base" else contextlib.nullcontext():
            losses[name], n_tokens = assistant_loss(model, tokenizer, rows, params.batch_size)
            if not math.isfinite(losses[name]):
                raise SystemExit(f"{STAGE}: the {name} loss on {len(rows)} test rows is {losses[name]}: "
                                 f"check the weights in {base_dir if name == 'base' else adapter_dir}")
            progress(f"evaluate: {name} loss {losses[name]:.4f} on {n_tokens:,} tokens; generating")
            answers[name] = generate_answers(
                model, tokenizer, rows[:n_samples], params.max_new_tokens, params.batch_size,
                progress=lambda line, name=name: progress(f"evaluate: {name} {line}"),
            )
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
        "seconds": round(time.perf_counter() - t0, 2),
    }
    return metrics, sample_records(pair_ids[:n_samples], rows[:n_samples], answers, scores)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base", required=True, type=Path, help="base folder (stages.base)")
    parser.add_argument("--adapter", required=True, type=Path, help="adapter folder (stages.train)")
    parser.add_argument("--test", required=True, type=Path, help="test split Parquet (stages.format)")
    parser.add_argument("--samples", required=True, type=Path, help="JSONL of greedy answers to write")
    parser.add_argument("--compare-plot", required=True, type=Path, help="CSV (model + one column per metric) for dvc plots")
    parser.add_argument("--metrics", required=True, type=Path, help="metrics JSON to write")
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args(argv)
    params = load_section(STAGE, args.params)
    for knob, least in (("samples", 0), ("max_new_tokens", 1), ("batch_size", 1), ("threads", 1)):
        if getattr(params, knob) < least:
            raise SystemExit(f"{STAGE}: evaluate.{knob} must be at least {least}, got {getattr(params, knob)}")

    try:
        pair_ids, rows = read_chat_rows(args.test)
    except ValueError as e:
        raise SystemExit(f"{STAGE}: {e}") from None
    if not rows:
        raise SystemExit(f"{STAGE}: {args.test} has no rows: nothing to evaluate")

    metrics, samples = evaluate(base_dir=args.base, adapter_dir=args.adapter, pair_ids=pair_ids, rows=rows,
                                params=params)
    with text_writer(args.samples) as f:
        for record in samples:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
    write_text(compare_csv(metrics), args.compare_plot)
    write_json(metrics, args.metrics)


if __name__ == "__main__":
    main()
