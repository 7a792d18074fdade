"""Validated pairs -> chat rows: messages, their rendering through the base's chat format, the split by
document, and the drops (leaks_train, too_many_tokens). Pure functions the format stage runs per batch.
"""

import json

from webtune import formats, schema
from webtune.splits import FormatParams, overlap, split_of

STAGE = "format"


def to_messages(pair: dict, system_prompt: str = "") -> list[dict]:
    """[system] user assistant: the pair's own system prompt, else format.system_prompt, else none."""
    system = pair["system"] or system_prompt
    messages = [{"role": "system", "content": system}] if system else []
    messages += [{"role": "user", "content": pair["instruction"]},
                 {"role": "assistant", "content": pair["response"]}]
    formats.validate_messages(messages)
    return messages


def doc_split(doc_id: str, params: FormatParams) -> str:
    return split_of(doc_id, seed=params.split_seed, train_ratio=params.train_ratio,
                    val_ratio=params.val_ratio)


def pair_text(pair: dict) -> str:
    """What a train row teaches (system, question and answer): the text a val/test answer must not repeat."""
    return "\n".join((pair["system"], pair["instruction"], pair["response"]))


def format_pairs(pairs: list[dict], tokenizer, fmt: formats.ChatFormat, params: FormatParams,
                 seen: frozenset[int] = frozenset(),
                 overlaps: list[float | None] | None = None) -> tuple[list[dict], list[dict]]:
    """Pairs -> (chat rows, dropped rows). A val/test answer's share of shingles in train rows is
    `overlaps[i]` when given (the stage computes them on disk), else computed against `seen`, the train
    rows' shingles. Pure apart from the tokenizer."""
    messages = [to_messages(p, params.system_prompt) for p in pairs]
    splits = [doc_split(p["doc_id"], params) for p in pairs]
    shares = [None if split == "train" else overlaps[i] if overlaps is not None
              else overlap(p["response"], seen)
              for i, (p, split) in enumerate(zip(pairs, splits, strict=True))]
    leaks = [share is not None and share > params.leak_threshold for share in shares]
    # a leaking row is dropped whatever its length: only the others are rendered and tokenized (the
    # tokenizer is most of format's time, ~1 us a token)
    texts = [fmt.render(m) for m, leak in zip(messages, leaks, strict=True) if not leak]
    kept = iter(zip(texts, formats.token_ids(tokenizer, texts), strict=True))
    rows, dropped = [], []
    for pair, msgs, split, shared, leak in zip(pairs, messages, splits, shares, leaks, strict=True):
        if leak:
            dropped.append(schema.dropped_row(pair, stage=STAGE, reason="leaks_train", row_id=pair["pair_id"],
                                              detail=f"{split} answer: {shared:.0%} of its 13-word shingles "
                                                     f"are in train rows > format.leak_threshold="
                                                     f"{params.leak_threshold:g}"))
            continue
        text, ids = next(kept)
        if len(ids) > params.max_length:
            dropped.append(schema.dropped_row(pair, stage=STAGE, reason="too_many_tokens",
                                              row_id=pair["pair_id"],
                                              detail=f"{len(ids)} tokens > "
                                                     f"format.max_length={params.max_length}"))
            continue
        rows.append(schema.provenance(pair) | {
            "pair_id": pair["pair_id"],
            "task": pair["task"],
            "split": split,
            "train_overlap": shared,
            "messages": msgs,
            "text": text,
            "n_tokens": len(ids),
            "n_special_ids": formats.count_special_ids(fmt, tokenizer, ids),
            "n_expected_special_ids": fmt.expected_special_ids(msgs),
        })
    return rows, dropped


def openai_jsonl(rows: list[dict]) -> str:
    """The chat fine-tuning format of OpenAI's API: one {"messages": [...]} object per line."""
    return "".join(json.dumps({"messages": r["messages"]}, ensure_ascii=False) + "\n" for r in rows)
