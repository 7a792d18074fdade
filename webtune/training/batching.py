"""Token-budget micro-batches: as many rows per micro-batch as fit a token budget, grouped by length.

A fixed row count (train.batch_size) suits a CPU, where a step's time grows with its tokens. On a GPU,
short chat rows in batches of 2 leave the device idle and spend part of each batch on padding; a token
budget keeps every micro-batch near the same size in tokens, so the GPU runs full and the memory peak
is bounded by the budget rather than by the longest rows drawn together.

The plan is a pure function of the rows' lengths and the seed, like webtune.training.run.row_order: a
resumed run skips exactly the micro-batches already trained on. Each epoch shuffles the rows (seeded),
sorts them by length (the shuffle breaks ties), fills micro-batches greedily up to the budget and
shuffles the micro-batches' order, so a step is not always the longest rows.

What a micro-batch costs depends on how it is laid out:
- padded: every row is padded to the micro-batch's longest, rows x longest <= budget;
- padding-free: the rows are laid end to end in one sequence (position ids restart per row), so the
  sum of their lengths <= budget. Only correct where the model keeps the rows apart: the packing probe
  (webtune.models.packing) decides.
"""

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from webtune.models.packing import Probe
from webtune.training import TrainError
from webtune.training.run import row_order


def micro_batch_cost(lengths: Sequence[int], padding_free: bool) -> int:
    """Tokens a micro-batch of rows with these lengths puts through the model (pads included)."""
    return sum(lengths) if padding_free else max(lengths, default=0) * len(lengths)


def fill(rows: Sequence[int], lengths: Sequence[int], budget: int, padding_free: bool) -> list[list[int]]:
    """`rows` (longest first) cut greedily into micro-batches that each fit `budget` tokens."""
    batches, current, total = [], [], 0
    for row in rows:
        n = lengths[row]
        # longest first: the first row of a micro-batch is its longest, so padded cost = first x count
        cost = total + n if padding_free else (lengths[current[0]] if current else n) * (len(current) + 1)
        if current and cost > budget:
            batches.append(current)
            current, total = [], 0
        current.append(row)
        total += n
    if current:
        batches.append(current)
    return batches


def epoch_plan(lengths: Sequence[int], budget: int, padding_free: bool, seed: int) -> list[list[int]]:
    """One epoch's micro-batches (row indices), in training order."""
    too_long = [(i, n) for i, n in enumerate(lengths) if n > budget]
    if too_long:
        row, n = too_long[0]
        raise TrainError(f"batch_tokens {budget} is smaller than row {row} ({n} tokens; {len(too_long)} rows "
                         "are longer): set it to at least format.max_length")
    gen = torch.Generator().manual_seed(seed)
    shuffled = torch.randperm(len(lengths), generator=gen).tolist()
    by_length = sorted(shuffled, key=lambda i: -lengths[i])  # stable: equal lengths keep the shuffle
    batches = fill(by_length, lengths, budget, padding_free)
    return [batches[i] for i in torch.randperm(len(batches), generator=gen).tolist()]


def plan(lengths: Sequence[int], budget: int, padding_free: bool, seed: int,
         micro_batches: int) -> list[list[int]]:
    """The run's first `micro_batches` micro-batches, epoch after epoch (epoch e is seeded seed + e)."""
    out, epoch = [], 0
    while len(out) < micro_batches:
        out += epoch_plan(lengths, budget, padding_free, seed + epoch)
        epoch += 1
    return out[:micro_batches]


def per_epoch(lengths: Sequence[int], budget: int, padding_free: bool) -> int:
    """How many micro-batches one epoch holds (the greedy fill depends only on the sorted lengths)."""
    return len(fill(sorted(range(len(lengths)), key=lambda i: -lengths[i]), lengths, budget, padding_free))


def padding_share(batches: Sequence[Sequence[int]], lengths: Sequence[int], padding_free: bool) -> float:
    """Share of the tokens put through the model that are padding."""
    real = sum(lengths[i] for batch in batches for i in batch)
    total = sum(micro_batch_cost([lengths[i] for i in batch], padding_free) for batch in batches)
    return 1 - real / total if total else 0.0


def choose_padding_free(layout: str, probe: Callable[[], Probe], key: str, model_type: str,
                        progress: Callable[[str], None]) -> bool:
    """batch_layout -> whether this run lays rows end to end; `probe` runs the packing probe."""
    if layout == "padded":
        return False
    result = probe()
    if result.passes:
        progress(f"train: padding-free micro-batches ({result})")
        return True
    if layout == "padding_free":
        raise TrainError(f"{key} is padding_free, but in this {model_type} model {result.failure()}: "
                         f"set {key}: padded (or auto)")
    progress(f"train: padded micro-batches: in this {model_type} model {result.failure()}")
    return False


@dataclass(frozen=True)
class RunPlan:
    """Which rows every step of a run trains on."""

    total_steps: int
    order: list[int]  # row index of every row trained on, in order
    micro_batches: list[list[int]] | None  # token-budget micro-batches (row indices); None: batch_size rows
    padding_free: bool

    def summary(self) -> dict:
        """For metrics/train.json (token-budget runs only: a fixed-row run's metrics stay as they were)."""
        if self.micro_batches is None:
            return {}
        return {"batch_layout": "padding_free" if self.padding_free else "padded",
                "rows_per_micro_batch": round(len(self.order) / len(self.micro_batches), 3)}


def plan_run(params, backend, base, lengths: Sequence[int], progress: Callable[[str], None],
             processes: int = 1) -> RunPlan:
    """The run's steps: `batch_size` rows each (row_order), or the backend's token-budget micro-batches.

    With several processes a step holds each process's micro-batches: process p reads micro-batches
    p, p + processes, ... of the order (accelerate's sharding of the trainer's dataloader).
    """
    budget, layout = backend.batching(params)
    if not budget:
        rows_per_step = params.batch_size * params.grad_accum * processes
        total_steps = params.max_steps or math.ceil(params.epochs * len(lengths) / rows_per_step)
        order = row_order(lengths, total_steps * rows_per_step, rows_per_step, params.seed)
        return RunPlan(total_steps, order, None, False)
    padding_free = choose_padding_free(layout, lambda: backend.packing_probe(base),
                                       f"train.{backend.name}.batch_layout", base.model.config.model_type,
                                       progress)
    per_step = params.grad_accum * processes
    epoch = per_epoch(lengths, budget, padding_free)
    total_steps = params.max_steps or math.ceil(params.epochs * epoch / per_step)
    micro_batches = plan(lengths, budget, padding_free, params.seed, total_steps * per_step)
    order = [row for batch in micro_batches for row in batch]
    progress(f"train: micro-batches of <= {budget:,} tokens "
             f"({'padding-free' if padding_free else 'padded'}): {len(order) / len(micro_batches):.1f} rows "
             f"each on average, {padding_share(micro_batches, lengths, padding_free):.1%} padding")
    return RunPlan(total_steps, order, micro_batches, padding_free)


class PlannedBatches(torch.utils.data.Sampler):
    """A batch sampler over a dataset laid out in plan order: micro-batch k is the next sizes[k] rows."""

    def __init__(self, sizes: Sequence[int]):
        self.sizes = list(sizes)

    def __iter__(self):
        start = 0
        for size in self.sizes:
            yield list(range(start, start + size))
            start += size

    def __len__(self) -> int:
        return len(self.sizes)
