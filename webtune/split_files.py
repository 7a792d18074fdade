"""What the format stage reports about its splits: running tallies of rows and tokens per split.

    tally = Tally(); tally.add(rows, dropped); tally.summary()   # metrics/format.json
"""

import collections

from webtune.splits import SPLITS


class Tally:
    """Running totals over batches: rows and tokens per split, a token-length count, drop reasons.

    Memory is bounded by max_length x 3 splits, whatever the number of rows.
    """

    def __init__(self):
        self.docs: dict = {}  # the documents' counts (webtune.format_passes.tally)
        self.lengths: collections.Counter = collections.Counter()  # (split, n_tokens) -> rows
        self.dropped: collections.Counter = collections.Counter()  # reason -> rows

    def add(self, rows: list[dict], dropped: list[dict]) -> None:
        self.lengths.update((r["split"], r["n_tokens"]) for r in rows)
        self.dropped.update(d["reason"] for d in dropped)

    def summary(self) -> dict:
        by_length = collections.Counter()
        for (_, n), c in self.lengths.items():
            by_length[n] += c
        total, seen, p95 = sum(by_length.values()), 0, 0
        for n in sorted(by_length):
            seen += by_length[n]
            if seen > 0.95 * (total - 1):
                p95 = n
                break
        per_split = {s: [(n, c) for (split, n), c in self.lengths.items() if split == s] for s in SPLITS}
        return {
            "rows": total,
            "rows_per_split": {s: sum(c for _, c in v) for s, v in per_split.items()},
            "tokens_per_split": {s: sum(n * c for n, c in v) for s, v in per_split.items()},
            "tokens_max": max(by_length, default=0),
            "tokens_p95": p95,
            "tokens_mean": round(sum(n * c for n, c in by_length.items()) / total, 2) if total else 0,
            "dropped": dict(sorted(self.dropped.items())),
            **self.docs,
        }

    def histogram(self, max_length: int, buckets: int = 16) -> str:
        """CSV for `dvc plots`: rows per token-length bucket and split (how close rows come to max_length)."""
        width = max(1, -(-max_length // buckets))  # ceil: 512 / 16 = 32 tokens per bucket
        counts = collections.Counter()
        for (split, n), c in self.lengths.items():
            counts[split, min(n // width, buckets - 1)] += c
        lines = ["split,tokens,rows"]
        for split in SPLITS:
            lines += [f"{split},{b * width}-{(b + 1) * width - 1},{counts[split, b]}" for b in range(buckets)]
        return "\n".join(lines) + "\n"
