"""docs/results.md's sections for the GPU training benches: throughput against the original Unsloth recipe,
the unsloth backend's loss against hf's, its smoke run, and sharded / multi-process training.

"As params.yaml configures it" is read from params.yaml (train.unsloth), so the goals are judged on the
runs made with the defaults of the commit that renders them.
"""

from pathlib import Path

import goals
import yaml
from render import Section, Verdict, num, pct, signed_pct, table, window_cell

REPO = Path(__file__).resolve().parent.parent
UNSLOTH = yaml.safe_load((REPO / "params.yaml").read_text())["train"]["unsloth"]
# gpu_unsloth_smoke.py names a run backend[-4bit][-batch_tokens]; the default run is the unsloth backend
# as params.yaml configures it
DEFAULT_RUN = "unsloth" + ("-4bit" if UNSLOTH["load_in_4bit"] else "")

# ---------------------------------------------------------------- train_throughput

CONFIGS = {"recipe": "(a) original Unsloth recipe", "hf": "(b) hf backend", "unsloth": "(c) unsloth backend"}


def _label(r: dict) -> str:
    if r["config"] != "unsloth":
        return CONFIGS[r["config"]]
    default = r.get("batch_tokens") == UNSLOTH["batch_tokens"]
    return f"{CONFIGS['unsloth']}, {num(r['batch_tokens'])} tokens" + (" **(default)**" if default else "")


def _micro_batch(r: dict) -> str:
    if r["config"] == "recipe":
        return f"2 rows x 4 accumulated; {r['batch_layout']}"
    if r["config"] == "hf":
        return r["batch_layout"]
    rows = f", {r['rows_per_micro_batch']:.1f} rows" if "rows_per_micro_batch" in r else ""
    return f"<= {num(r['batch_tokens'])} tokens{rows}, {r['batch_layout'].replace('_', '-')}"


def _by_shape(records: list[dict]) -> dict[str, list[dict]]:
    order = {"recipe": 0, "hf": 1, "unsloth": 2}
    shapes: dict[str, list[dict]] = {}
    for rec in sorted(records, key=lambda x: (order[x["results"]["config"]],
                                              x["results"].get("batch_tokens") or 0)):
        shapes.setdefault(rec["results"]["shape"], []).append(rec["results"])
    return shapes


def throughput_table(records: list[dict]) -> list[str]:
    lines = []
    for shape, runs in _by_shape(records).items():
        rows = [(_label(r), _micro_batch(r), num(r["useful_tokens_per_s"]), num(r["all_tokens_per_s"]),
                 pct(r["padding_share"]), num(r.get("peak_gib"), 2, " GiB"), num(r.get("mfu"), 3),
                 r["timed_steps"], window_cell(r)) for r in runs]
        lines += [f"**{shape.removesuffix('-shape')} shape** ({runs[0]['layers']} layers, "
                  f"{runs[0]['active_params'] / 1e9:.2f} B parameters active per token):", "",
                  *table(("run", "micro-batches", "useful tokens/s", "all tokens/s", "padding",
                          "peak GPU memory",
                          "MFU", "timed steps", "timed window"), rows, align="llrrrrrrl"), ""]
    return lines[:-1]


def _default(runs: list[dict]) -> list[dict]:
    """The unsloth backend's runs with params.yaml's token budget."""
    return [r for r in runs if r["config"] == "unsloth" and r.get("batch_tokens") == UNSLOTH["batch_tokens"]]


def _speedup(runs: list[dict], config: str) -> float | None:
    default, other = _default(runs), [r for r in runs if r["config"] == config]
    if not default or not other:
        return None
    return default[-1]["useful_tokens_per_s"] / other[-1]["useful_tokens_per_s"]


def throughput_verdicts(records: list[dict]) -> list[Verdict]:
    shapes, out, target = _by_shape(records), [], goals.target("llama_speedup")
    llama = shapes.get("llama-3.1-8b-shape", [])
    vs_seed, vs_hf = _speedup(llama, "seed"), _speedup(llama, "hf")
    if vs_seed and vs_hf:
        out.append(Verdict("llama_speedup", f"{vs_seed:.2f}x the original recipe, {vs_hf:.2f}x hf",
                           vs_seed >= target and vs_hf >= target))
    oss = shapes.get("gpt-oss-20b-shape", [])
    if vs_seed := _speedup(oss, "seed"):
        out.append(Verdict("gpt_oss_speedup", f"{vs_seed:.2f}x", vs_seed >= goals.target("gpt_oss_speedup")))
    if peak := [r["peak_gib"] for r in _default(oss)]:
        out.append(Verdict("gpt_oss_peak_gib", f"{peak[-1]:.2f} GiB",
                           peak[-1] <= goals.target("gpt_oss_peak_gib")))
    return out


THROUGHPUT = Section(
    bench="train_throughput", title="Training throughput on one GPU",
    what="(a) the original Unsloth recipe exactly as written (4-bit, batch 2 x 4 accumulated, its own "
         "trainer), (b) our hf backend and (c) our unsloth backend through the train stage with "
         "params.yaml's defaults, each in its own process on the same base and rows. The bases are real "
         "shapes built from their configs with random bf16 weights (no weights reach the GPU machine); the "
         "rows are synthetic chat rows drawn to the token-length histogram of our format stage's train split "
         "(bench/format_row_lengths.json). All three share the original recipe's LoRA and learning rate, so "
         "they differ only in loading, batching and kernels. Useful tokens are the supervised ones; rates "
         "leave out the warm-up steps (compilation); MFU = 6 x active parameters x all tokens/s / the GPU's "
         "dense bf16 peak. A timed window whose first and last thirds differ by more than 10% is marked "
         "unstable: its rate still holds start-up cost.",
    run="`bash bench/gpu_throughput.sh SHAPE \"recipe hf unsloth\"` on a GPU machine", table=throughput_table,
    verdicts=throughput_verdicts, goals=("llama_speedup", "gpt_oss_speedup", "gpt_oss_peak_gib"),
    label=lambda r: f"{r['shape'].removesuffix('-shape')}, {_label(r).replace('**', '')}")

# ---------------------------------------------------------------- unsloth_default_loss and unsloth_smoke


def _run_text(run: str, train: dict | None) -> tuple[str, str]:
    """(base weights, micro-batches) of a run named backend[-4bit][-batch_tokens][ (note)]."""
    if run.startswith("hf"):
        return "fp32, bf16 autocast", "4 rows, padded"
    weights = "4-bit" if "4bit" in run else "bf16"
    if train and "batch_layout" in train:
        return weights, (f"<= {num(UNSLOTH['batch_tokens'])} tokens, "
                         f"{train['rows_per_micro_batch']:.1f} rows, "
                         f"{train['batch_layout'].replace('_', '-')}")
    return weights, "4 rows, padded (hf's batches)"


def _steps(records: list[dict], step: str) -> dict[str, dict]:
    return {r["results"]["run"]: r["results"] for r in records if r["results"]["step"] == step}


def default_loss_table(records: list[dict]) -> list[str]:
    trains, reloads, probes = (_steps(records, s) for s in ("train", "reload", "probe"))
    hf = reloads.get("hf", {}).get("loss_plain_peft")
    base = next(iter(reloads.values()), {}).get("base_loss")
    rows = [("base, no adapter", "", "", num(base, 4), "", "", "")]
    for run, r in reloads.items():
        weights, batches = _run_text(run, trains.get(run))
        vs = signed_pct(r["loss_plain_peft"] / hf - 1) if hf and run != "hf" else ""
        name = f"**{run}** (default)" if run == DEFAULT_RUN else run
        t = trains.get(run, {})
        rows.append((name, weights, batches, num(r["loss_plain_peft"], 4), vs, num(t.get("val_loss"), 4),
                     num(t.get("seconds"), 0)))
    lines = table(("run", "base weights", "micro-batches", "test loss", "vs hf", "val loss", "train s"), rows,
                  align="lllrrrr")
    if probes:
        lines += ["", "The packing probe on this base: logits of rows laid end to end against the rows run "
                      "alone.",
                  "", *table(("probe", "difference across rows", "difference from rows alone (share of the "
                              "largest logit)", "largest logit", "passes"),
                             [(run, num(p["cross"], 3), pct(p["apart"]), num(p["logit_scale"], 1),
                               "yes" if p["passes"] else "no") for run, p in probes.items()], align="lrrrl")]
    return lines


def default_loss_verdicts(records: list[dict]) -> list[Verdict]:
    reloads = _steps(records, "reload")
    if "hf" not in reloads or DEFAULT_RUN not in reloads:
        return []
    diff = reloads[DEFAULT_RUN]["loss_plain_peft"] / reloads["hf"]["loss_plain_peft"] - 1
    return [Verdict("loss_match", f"{signed_pct(diff)} ({DEFAULT_RUN} vs hf)",
                    abs(diff) <= goals.target("loss_match"))]


DEFAULT_LOSS = Section(
    bench="unsloth_default_loss", title="Unsloth's adapter against hf's, on the embedded default's data",
    what="Both backends through the train stage's own `train()` with params.yaml as it is, on the same base "
         "(SmolLM2-135M-Instruct, built on the GPU machine by the base stage) and the same rows (the format "
         "stage's splits). Every adapter's test loss is computed the same way, outside any trainer: loaded "
         "with `PeftModel.from_pretrained` on a plain transformers base in bf16 (no Unsloth imported), "
         "token-weighted over the supervised tokens of all test rows. Run names: backend, `-4bit` for a "
         "4-bit base, `-0` for hf's batches (train.unsloth.batch_tokens 0).",
    run="`bash bench/gpu_default_loss.sh stage`, then `run`, on a GPU machine", table=default_loss_table,
    verdicts=default_loss_verdicts, goals=("loss_match",), label=lambda r: r["run"])


def smoke_table(records: list[dict]) -> list[str]:
    trains, reloads = _steps(records, "train"), _steps(records, "reload")
    hf = trains.get("hf", {}).get("val_loss")
    rows = [(run, _run_text(run, t)[0], num(t["val_loss"], 6),
             signed_pct(t["val_loss"] / hf - 1) if hf and run != "hf" else "", num(t["train_loss"], 6),
             num(t.get("peak_gib"), 2, " GiB"), f"{num(t['train_supervised_tokens'])} "
             f"({pct(t['train_supervised_share'])})") for run, t in trains.items()]
    rows += [(f"{run} adapter on plain transformers + PEFT", "bf16", num(r["loss_plain_peft"], 6),
              "", "", "", "")
             for run, r in reloads.items()]
    base = next(iter(trains.values()), {}).get("base_val_loss")
    return [f"Val loss of the base: {num(base, 2)}.", "",
            *table(("run", "base weights", "val loss", "vs hf", "train loss", "peak GPU memory",
                    "supervised train tokens"), rows, align="llrrrrr")]


UNSLOTH_SMOKE = Section(
    bench="unsloth_smoke", title="The unsloth backend next to hf, on a small Llama",
    what="The unsloth backend through the train stage on a GPU, next to hf, one process each (Unsloth "
         "patches transformers on import): a Llama shape built from a config (8 layers, hidden 1024, random "
         "bf16 weights) with a toy ChatML tokenizer, and the train stage test's learnable pattern as rows. "
         "It checks that Unsloth loads the base stage's folder, trains through the same loop (mask check, "
         "curves, checkpoints, card) and that its adapter loads on plain PEFT; a model this small says "
         "nothing about speed.",
    run="`python bench/gpu_unsloth_smoke.py` build, train and reload on a GPU machine (its docstring)",
    table=smoke_table)

# ---------------------------------------------------------------- train_multigpu


def multigpu_table(records: list[dict]) -> list[str]:
    rows = []
    for rec in records:
        r = rec["results"]
        cap = f"{r['memory_fraction']:g} of the GPU" if r["memory_fraction"] else "none"
        result = f"failed: `{r['failed'].split(' (')[0]}`" if "failed" in r else "trained"
        rows.append((r["processes"], r["sharding"], cap, result, num(r.get("tokens_per_s")),
                     num(r.get("peak_gpu_gib"), 2, " GiB"), num(r.get("train_loss"), 4),
                     f"{r['timed_steps']} of {r['steps']}" if "timed_steps" in r else "",
                     window_cell(r) if "timed_steps" in r else "", r.get("call", "")))
    shape = records[0]["results"].get("shape", "?")
    rows_per_step = records[0]["results"]["batch_size_per_process"]
    return [f"{shape} shape, {rows_per_step} rows per process per step:", "",
            *table(("processes", "sharding", "memory cap", "result", "tokens/s", "peak GPU memory",
                    "train loss",
                    "timed steps", "timed window", "call"), rows, align="rlllrrrrll")]


def multigpu_verdicts(records: list[dict]) -> list[Verdict]:
    two = [r["results"] for r in records if r["results"]["processes"] == 2 and "speedup" in r["results"]]
    if not two:
        return []
    return [Verdict("two_gpu_speedup", f"{two[-1]['speedup']:.2f}x",
                    two[-1]["speedup"] >= goals.target("two_gpu_speedup"))]


MULTIGPU = Section(
    bench="train_multigpu", title="Sharded and multi-process training",
    what="The train stage (`python -m stages.train`, as `dvc repro` runs it) on a Llama-3.1-8B shape built "
         "from its config (fp32 weights, as the hf backend trains), with train.hf.processes and "
         "train.hf.sharding set, optionally under a per-process GPU memory cap (torch's "
         "per_process_memory_fraction). tokens/s is over the steps after the warm-up, timed as the stage's "
         "per-step lines arrive. A two-GPU machine has not been lent yet: the 2-process goal waits for one "
         "(`bench/train_multigpu.py --processes 1 2`).",
    run="`bash bench/gpu_fsdp.sh FRACTION` (one GPU) and `python bench/train_multigpu.py --processes 1 2` "
        "(two GPUs)",
    table=multigpu_table, verdicts=multigpu_verdicts, goals=("two_gpu_speedup",),
    label=lambda r: (f"{r['sharding']}, {r['processes']} process(es)"
                     + (f", {r['call']} call" if "call" in r else "")))

SECTIONS = [THROUGHPUT, DEFAULT_LOSS, UNSLOTH_SMOKE, MULTIGPU]
