"""Supervision: which tokens a run trains on, checked against the token ids before the first step.

Every row is tokenized through the base's chat format and its supervised tokens are read from the ids
(`formats.supervised_mask`: assistant content and its stop token, in `train.channels`, for
`train.assistant_turns`). `mask_report` checks the resulting labels against the assistant turns found
independently; a row with no trained token, or a trained token outside an assistant turn, refuses the
run naming the rows. The report (per-row counts, the trained share, decoded spans) is written either way.
"""

from collections.abc import Sequence
from dataclasses import dataclass

from webtune import formats
from webtune.training import TrainError, TrainParams

IGNORE = -100  # the label of a token that is not trained (transformers' and torch's ignore_index)


@dataclass
class Encoded:
    pair_ids: list[str]
    input_ids: list[list[int]]
    masks: list[list[int]]

    def labels(self) -> list[list[int]]:
        """What the trainer should train on: each row's ids, IGNORE where its mask is 0."""
        return [[i if m else IGNORE for i, m in zip(ids, mask, strict=True)]
                for ids, mask in zip(self.input_ids, self.masks, strict=True)]


def encode_rows(fmt, tokenizer, pair_ids: Sequence[str], rows: Sequence[list[dict]], *,
                channels: Sequence[str], turns: str, max_length: int) -> Encoded:
    """Tokenize each row through the chat format; its mask says which tokens are trained.

    A row longer than max_length (format.max_length) is an error naming it: truncating would cut answers
    (or their stop token) silently, and format already drops rows over it.
    """
    too_long, ids_out, masks = [], [], []
    for pair_id, messages in zip(pair_ids, rows, strict=True):
        ids, mask = formats.encode(fmt, tokenizer, messages, channels=channels, turns=turns)
        if len(ids) > max_length:
            too_long.append(f"{pair_id} ({len(ids)} tokens)")
        ids_out.append(ids)
        masks.append(mask)
    if too_long:
        raise TrainError(
            f"{len(too_long)} rows are longer than format.max_length {max_length} and would be truncated: "
            f"{', '.join(too_long[:10])}. Re-run format (it drops such rows; rows are never cut)."
        )
    return Encoded(list(pair_ids), ids_out, masks)


@dataclass
class MaskReport:
    rows: int
    tokens: int
    trained_tokens: int
    per_row: list[int]
    zero_rows: list[str]
    outside_rows: list[str]
    samples: list[tuple[str, list[str]]]  # (pair_id, decoded supervised spans)

    @property
    def trained_share(self) -> float:
        return self.trained_tokens / self.tokens if self.tokens else 0.0

    def summary(self) -> dict:
        per_row = sorted(self.per_row)
        return {
            "rows": self.rows,
            "tokens": self.tokens,
            "trained_tokens": self.trained_tokens,
            "trained_share": round(self.trained_share, 6),
            "trained_tokens_per_row_min": per_row[0] if per_row else 0,
            "trained_tokens_per_row_median": per_row[len(per_row) // 2] if per_row else 0,
            "trained_tokens_per_row_max": per_row[-1] if per_row else 0,
            "rows_with_no_trained_token": len(self.zero_rows),
            "rows_training_non_assistant_tokens": len(self.outside_rows),
        }

    def problems(self) -> str | None:
        """None when training may start; otherwise a message naming the offending rows."""
        lines = []
        if self.zero_rows:
            lines.append(
                f"{len(self.zero_rows)} of {self.rows} rows have no trained token "
                f"(check train.channels / train.assistant_turns): {', '.join(self.zero_rows[:10])}"
            )
        if self.outside_rows:
            lines.append(
                f"{len(self.outside_rows)} rows would train tokens outside an assistant turn: "
                f"{', '.join(self.outside_rows[:10])}"
            )
        return "; ".join(lines) or None


def _spans(flags: Sequence[bool]) -> list[tuple[int, int]]:
    spans, lo = [], None
    for i, f in enumerate([*flags, False]):
        if f and lo is None:
            lo = i
        elif not f and lo is not None:
            spans.append((lo, i))
            lo = None
    return spans


def mask_report(fmt, tokenizer, pair_ids: Sequence[str], input_ids, labels, samples: int) -> MaskReport:
    """Check `labels` (-100 = not trained) against the assistant turns found in `input_ids`.

    `check_prepared` then proves the trainer's own labels are these, so this is what will be trained.
    """
    per_row, zero, outside, shown = [], [], [], []
    tokens = trained = 0
    for pair_id, ids, labs in zip(pair_ids, input_ids, labels, strict=True):
        allowed = [0] * len(ids)
        for _, lo, hi in fmt.assistant_spans(tokenizer, ids):
            allowed[lo:hi] = [1] * (hi - lo)
        flags = [lab != IGNORE for lab in labs]
        n = sum(flags)
        per_row.append(n)
        tokens += len(ids)
        trained += n
        if n == 0:
            zero.append(pair_id)
        if any(f and not a for f, a in zip(flags, allowed, strict=True)):
            outside.append(pair_id)
        if len(shown) < samples:
            shown.append((pair_id, [tokenizer.decode(ids[lo:hi]) for lo, hi in _spans(flags)]))
    return MaskReport(len(per_row), tokens, trained, per_row, zero, outside, shown)


def render_mask_report(report: MaskReport, params: TrainParams) -> str:
    s = report.summary()
    lines = [
        "# Train: supervision mask",
        "",
        f"What the trainer supervises (labels != -100; the trainer's own labels are checked equal before "
        f"the first step). Channels "
        f"`{', '.join(params.channels)}`, assistant turns `{params.assistant_turns}`.",
        "",
        "| rows | tokens | trained tokens | trained share | per row min / median / max | rows with none |",
        "|---|---|---|---|---|---|",
        f"| {s['rows']} | {s['tokens']} | {s['trained_tokens']} | {s['trained_share']:.1%} | "
        f"{s['trained_tokens_per_row_min']} / {s['trained_tokens_per_row_median']} / "
        f"{s['trained_tokens_per_row_max']} | {s['rows_with_no_trained_token']} |",
        "",
    ]
    problems = report.problems()
    lines += [f"**Refused:** {problems}", ""] if problems else ["Every row trains only assistant tokens.", ""]
    for pair_id, spans in report.samples:
        lines.append(f"## {pair_id}")
        lines.append("")
        for span in spans or ["(nothing trained)"]:
            lines += ["```text", span, "```"]
        lines.append("")
    return "\n".join(lines)
