"""evaluate's knobs and the metrics it reports: what each one measures and which way is better.

    from webtune.evaluation import METRICS, EvaluateParams
    METRICS["bits_per_byte"].better      # "lower"

Modules: answers (scoring greedy answers: chrF, ROUGE-L, semantic similarity, stops, loops, lengths),
intervals (paired bootstrap confidence intervals), gate (the promotion verdict), judge (an optional
pairwise LLM judge), report (reports/eval_samples.md and the CSV `dvc plots` draws).

Every metric is a function of per-item sums (a test row's, or a held-out document's), so one bootstrap
resamples items and recomputes any of them: a loss is summed nats over summed tokens, corpus chrF comes
from summed character n-gram counts, a mean from summed values over a count.
"""

import dataclasses
import math
from collections.abc import Callable

import numpy as np

from webtune.evaluation.judge import JudgeParams
from webtune.params import at_least, between, knob, one_of

MODELS = ("base", "adapter")
GATE_MODES = ("off", "warn", "fail")
RESAMPLE_UNITS = ("pages", "rows")  # what the bootstrap draws: whole held-out pages, or test rows


@dataclasses.dataclass(frozen=True)
class Metric:
    label: str  # what the report's table says
    better: str  # "lower" | "higher" | "" (descriptive: no direction is better)
    value: Callable[[np.ndarray], np.ndarray]  # per-item stats summed over items (..., k) -> the metric (...)
    digits: int = 3
    percent: bool = False
    over: str = "rows"  # the items it is summed over: test "rows" (answers, loss) or held-out "docs"


def ratio_of_sums(sums: np.ndarray) -> np.ndarray:
    """A mean or a token-weighted rate: column 0 summed over column 1 summed (nan where that is 0)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(sums[..., 1] > 0, sums[..., 0] / np.where(sums[..., 1] > 0, sums[..., 1], 1), np.nan)


def chrf_parts(sums: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(precision, recall) in [0, 100] from summed sacrebleu chrF statistics ([hyp, ref, match] per char
    order): each averaged over the orders both sides have, exactly as sacrebleu's CHRF does."""
    hyp, ref, match = sums[..., 0::3], sums[..., 1::3], sums[..., 2::3]
    valid = (hyp > 0) & (ref > 0)
    orders = valid.sum(-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(valid, match / np.where(hyp > 0, hyp, 1), 0).sum(-1)
        recall = np.where(valid, match / np.where(ref > 0, ref, 1), 0).sum(-1)
    nonzero = np.where(orders > 0, orders, 1)
    return 100 * np.where(orders > 0, precision / nonzero, 0), 100 * np.where(orders > 0, recall / nonzero, 0)


def chrf_beta(beta: float) -> Callable[[np.ndarray], np.ndarray]:
    def score(sums: np.ndarray) -> np.ndarray:
        p, r = chrf_parts(sums)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(p + r > 0, (1 + beta**2) * p * r / np.where(p + r > 0, beta**2 * p + r, 1), 0)
    return score


METRICS: dict[str, Metric] = {
    "loss": Metric("loss (assistant tokens, nats)", "lower", ratio_of_sums, 4),
    "bits_per_byte": Metric("bits per byte of held-out text", "lower",
                            lambda s: ratio_of_sums(s) / math.log(2), 4, over="docs"),
    "chrf1": Metric("chrF, beta 1 (precision = recall)", "higher", chrf_beta(1), 2),
    "chrf_precision": Metric("chrF precision", "higher", lambda s: chrf_parts(s)[0], 2),
    "chrf_recall": Metric("chrF recall", "higher", lambda s: chrf_parts(s)[1], 2),
    "chrf2": Metric("chrF2 (recall-weighted: pays for length)", "higher", chrf_beta(2), 2),
    "rougeL_f1": Metric("ROUGE-L F1", "higher", ratio_of_sums, 4),
    "rougeL_precision": Metric("ROUGE-L precision", "higher", ratio_of_sums, 4),
    "rougeL_recall": Metric("ROUGE-L recall", "higher", ratio_of_sums, 4),
    "similarity": Metric("semantic similarity (WordLlama cosine)", "higher", ratio_of_sums, 4),
    "length_ratio": Metric("answer / reference length (characters)", "", ratio_of_sums, 2),
    "stop_rate": Metric("stop rate", "higher", ratio_of_sums, 0, percent=True),
    "loop_rate": Metric("loop rate", "lower", ratio_of_sums, 0, percent=True),
    "answer_tokens": Metric("answer tokens (mean)", "", ratio_of_sums, 1),
}


def _metric_names(names: tuple) -> str | None:
    unknown = [n for n in names if n not in METRICS or not METRICS[n].better]
    return f"{', '.join(map(repr, unknown))}: not a metric with a better direction" if unknown else None


@dataclasses.dataclass(frozen=True)
class EvaluateParams:
    samples: int = knob(at_least(0))
    max_new_tokens: int = knob(at_least(1))
    repetition_penalty: float = knob(at_least(1.0))  # below 1 would reward repeats
    no_repeat_ngram_size: int = knob(at_least(0))
    batch_size: int = knob(at_least(1))
    threads: int = knob(at_least(1))
    page_bytes: int = knob(at_least(0))
    text_window: int = knob(at_least(2))
    bootstrap: int = knob(at_least(100))
    resample: str = knob(one_of(*RESAMPLE_UNITS))
    confidence: float = knob(between(0.5, 0.999))
    gate: str = knob(one_of(*GATE_MODES))
    gate_metrics: tuple[str, ...] = knob(_metric_names)
    gate_against: str = knob()
    judge: JudgeParams = knob()


def round6(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else round(float(x), 6)
