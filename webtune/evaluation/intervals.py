"""Paired bootstrap confidence intervals for adapter-minus-base differences.

    weights = resample_weights(n_items, resamples=2000, seed=0)
    row = compare(METRICS["chrf1"], base_stats, adapter_stats, weights, confidence=0.95)
    row["delta"], row["low"], row["high"], row["verdict"]      # e.g. 2.1, 0.4, 3.9, "adapter"

Paired: each resample draws the same items (with replacement) for both models, so the interval is that of
the difference on the same prompts, much narrower than two separate intervals would suggest. One weights
matrix (how often each item is drawn, per resample) serves every metric over the same items, so all of
them see the same resamples; a metric over per-item sums is then one matrix product per model. (SciPy's
`stats.bootstrap` draws afresh for every statistic, so the metrics would not share resamples.)
Percentile intervals: the resampled differences' (1 - confidence) / 2 and (1 + confidence) / 2 quantiles.
"""

import numpy as np

from webtune.evaluation import Metric


def resample_weights(n: int, resamples: int, seed: int = 0, groups=None) -> np.ndarray:
    """(resamples, n): how many times each of n items is drawn in each resample.

    `groups` (one label per item, e.g. its page): whole groups are drawn with replacement and every item
    of a drawn group comes along (a cluster bootstrap). Items of one page are related, so resampling them
    one by one would count one page's agreement as independent evidence and narrow the interval."""
    rng = np.random.default_rng(seed)
    if n == 0:
        return np.zeros((resamples, 0))
    if groups is None:
        return rng.multinomial(n, np.full(n, 1 / n), size=resamples).astype(float)
    labels, member = np.unique(np.asarray(groups, dtype=object).astype(str), return_inverse=True)
    k = len(labels)
    return rng.multinomial(k, np.full(k, 1 / k), size=resamples).astype(float)[:, member]


def verdict(metric: Metric, low: float, high: float) -> str:
    """"adapter" or "base" when the interval of the difference excludes zero on that model's side, else
    "neither" (within noise); "" for a metric with no better direction."""
    if not metric.better or not (np.isfinite(low) and np.isfinite(high)):
        return ""
    sign = 1 if metric.better == "higher" else -1
    if sign * low > 0 and sign * high > 0:
        return "adapter"
    if sign * low < 0 and sign * high < 0:
        return "base"
    return "neither"


def compare(metric: Metric, base: np.ndarray, adapter: np.ndarray, weights: np.ndarray,
            confidence: float) -> dict:
    """Both models' values, the difference (adapter - base) with its interval, the adapter's own interval
    (for comparing with a committed adapter's value) and the verdict. `base`, `adapter`: (n, k) stats."""
    if base.shape != adapter.shape or weights.shape[1] != base.shape[0]:
        raise ValueError(f"stats {base.shape} and {adapter.shape} over {weights.shape[1]} resampled items")
    value_base, value_adapter = (float(metric.value(s.sum(0))) for s in (base, adapter))
    resampled_base, resampled_adapter = metric.value(weights @ base), metric.value(weights @ adapter)
    tails = [(1 - confidence) / 2, (1 + confidence) / 2]
    with np.errstate(invalid="ignore"):
        low, high = np.nanquantile(resampled_adapter - resampled_base, tails) if len(base) else (np.nan,) * 2
        own = np.nanquantile(resampled_adapter, tails) if len(base) else (np.nan,) * 2
    return {"base": value_base, "adapter": value_adapter, "delta": value_adapter - value_base,
            "low": float(low), "high": float(high), "adapter_low": float(own[0]),
            "adapter_high": float(own[1]), "verdict": verdict(metric, float(low), float(high))}


def mean_interval(values, weights: np.ndarray, confidence: float) -> dict:
    """The mean of per-item `values` and its bootstrap interval over the same resamples (a judge's scores:
    already a comparison of the two models, so no difference is taken)."""
    values = np.asarray(values, dtype=float)
    if not len(values):
        return {"value": None, "low": None, "high": None}
    resampled = weights @ values / len(values)
    low, high = np.quantile(resampled, [(1 - confidence) / 2, (1 + confidence) / 2])
    return {"value": float(values.mean()), "low": float(low), "high": float(high)}
