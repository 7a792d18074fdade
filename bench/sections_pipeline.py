"""docs/results.md's sections for the benches that run on a CPU: the pipeline, its data half, the tests,
remote storage, scraping, CPU training and serving (bench/render.py's Section)."""

from pathlib import Path

import goals
import yaml
from render import Section, Verdict, num, pct, table, window_cell

REPO = Path(__file__).resolve().parent.parent
DAG = list(yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"])

# ---------------------------------------------------------------- full_repro


def full_repro_table(records: list[dict]) -> list[str]:
    r = records[-1]["results"]
    order = {stage: i for i, stage in enumerate(DAG)}  # the JSON's keys are sorted; show the DAG's order
    stages = sorted(r["stage_s"], key=lambda k: order.get(k, len(order)))
    rows = [(stage, num(r["stage_s"][stage], 1)) for stage in stages]
    rows.append(("**whole pipeline**" + (" (every stage forced)" if r["forced"] else ""),
                 f"**{num(r['full_repro_s'], 1)}**"))
    noop = r["noop_repro_s"]
    rows.append((f"no-op `dvc repro` (median of {noop.get('runs', '?')}; max {num(noop['max'], 2)})",
                 num(noop["median"], 2)))
    ev, tr = r["evaluate"], r["train"]
    chrf = "chrf1" if "chrf1" in ev["base"] else "chrf"  # records before the beta-1 chrF hold chrF2 as chrf
    model = [("test loss", num(ev["base"]["loss"], 3), num(ev["adapter"]["loss"], 3)),
             ("perplexity", num(ev["base"]["perplexity"], 2), num(ev["adapter"]["perplexity"], 2)),
             ("chrF (beta 1)" if chrf == "chrf1" else "chrF2", num(ev["base"][chrf], 1),
              num(ev["adapter"][chrf], 1)),
             ("answers that stop by themselves", pct(ev["base"]["stop_rate"], 0),
              pct(ev["adapter"]["stop_rate"], 0)),
             ("mean answer tokens", num(ev["base"]["answer_tokens"], 1),
              num(ev["adapter"]["answer_tokens"], 1)),
             ("val loss (train stage)", num(tr["base_val_loss"], 3), num(tr["val_loss"], 3))]
    return [*table(("stage", "seconds"), rows), "",
            f"What the {tr['steps']}-step training gives, on {ev['test_rows']} test rows:", "",
            *table(("", "base", "base + adapter"), model)]


def full_repro_verdicts(records: list[dict]) -> list[Verdict]:
    r = records[-1]["results"]
    budget, pipeline = goals.target("make_repro_s"), r["full_repro_s"]
    # The install is not timed (it needs the network): the pipeline alone over budget is a miss; under
    # it, met only if the install fits what is left, which this bench cannot say.
    full = Verdict("make_repro_s", f"the pipeline alone {num(pipeline, 0)} s, leaving "
                                   f"{num(budget - pipeline, 0)} s "
                                   "for the install (not timed here)", False if pipeline > budget else None)
    noop = r["noop_repro_s"]["median"]
    return [full, Verdict("noop_repro_s", f"median {num(noop, 2)} s", noop <= goals.target("noop_repro_s"))]


FULL_REPRO = Section(
    bench="full_repro", title="Fresh clone: full and no-op `dvc repro`",
    what="A `git clone` of the committed repository, then `dvc repro` of the whole pipeline on the embedded "
         "default, as a user meets it (the install excluded), then `dvc repro` again with nothing changed. "
         "Stage times are taken from dvc's own \"Running stage\" lines as they appear.",
    run="`make bench-repro`", table=full_repro_table, verdicts=full_repro_verdicts,
    goals=("make_repro_s", "noop_repro_s"))

# ---------------------------------------------------------------- test_suite


def suite_table(records: list[dict]) -> list[str]:
    r = records[-1]["results"]
    return table(("wall seconds", "passed", "failed", "skipped", "errors"),
                 [(num(r["seconds"], 1), r["passed"], r["failed"], r["skipped"], r["errors"])])


TEST_SUITE = Section(
    bench="test_suite", title="The test suite",
    what="`make test` timed: the whole suite on two worker processes, one test file each at a time.",
    run="`make bench-tests`", table=suite_table, goals=("test_suite_s",),
    verdicts=lambda records: [Verdict("test_suite_s", f"{num(records[-1]['results']['seconds'], 0)} s",
                                      records[-1]["results"]["seconds"] <= goals.target("test_suite_s"))])

# ---------------------------------------------------------------- data_stages


def _largest_runs(records: list[dict]) -> list[dict]:
    runs = records[-1]["results"]["runs"]
    top = max(run["corpus"]["pages"] for run in runs)
    return [run for run in runs if run["corpus"]["pages"] == top]


def data_stages_table(records: list[dict]) -> list[str]:
    res = records[-1]["results"]
    rows = []
    for run in res["runs"]:
        s, e = run["stages"], run["end_to_end"]
        rows.append((run["kind"], num(run["corpus"]["pages"]), num(run["corpus"]["input_mb"], 0),
                     *(num(s[n]["mb_s_per_core"], 2) if n in s else "–"
                       for n in ("clean", "validate", "format")),
                     f"**{num(e['mb_s_per_core'], 2)}**", num(e["mb_per_cpu_s"], 2),
                     num(e["peak_pss_mb"], 0)))
    lines = [f"Throughput in MB of raw pages per second per core ({res['workers']} workers):", "",
             *table(("pages", "how many", "input MB", "clean", "validate", "format", "end to end",
                     "end to end, MB per CPU-s", "peak PSS MB"), rows)]
    scaling = res.get("memory_scaling")
    if scaling:
        sizes = sorted({int(n) for stages in scaling.values() for by in stages.values() for n in by})
        rows = [(kind, stage, *(num(by.get(str(n)), 0) for n in sizes))
                for kind, stages in scaling.items() for stage, by in stages.items()]
        lines += ["", "Peak PSS (MB) by corpus size: a stage that streams stays flat, one that holds its "
                      "whole input grows.", "",
                  *table(("pages", "stage", *(f"{n:,}" for n in sizes)), rows,
                         align="ll" + "r" * len(sizes))]
    quality = [run for run in _largest_runs(records) if "quality" in run]
    if quality:
        lines += ["", "Extraction quality on every kept page: "
                  + "; ".join(f"{run['kind']}: {sum(run['quality']['docs_with_boilerplate'].values())} "
                              "boilerplate "
                              f"markers left in {num(run['quality']['docs'])} docs, "
                              f"{num(run['quality']['docs_starting_with_h1'])} start with their `#` title"
                              for run in quality) + "."]
    return lines


def data_stages_verdicts(records: list[dict]) -> list[Verdict]:
    worst = min(_largest_runs(records), key=lambda run: run["end_to_end"]["mb_s_per_core"])
    rate = worst["end_to_end"]["mb_s_per_core"]
    return [Verdict("data_mb_s_per_core",
                    f"{num(rate, 2)} MB/s/core end to end ({worst['kind']}, the slower kind)",
                    rate >= goals.target("data_mb_s_per_core"))]


DATA_STAGES = Section(
    bench="data_stages", title="The data stages at scale",
    what="clean, validate and format on a generated corpus of documentation pages (HTML with real-site "
         "boilerplate, or markdown with navigation lines; duplicates, secrets, control tags and broken pages "
         "planted), each stage run as `dvc repro` runs it. MB/s/core is raw input MB per wall second per "
         "worker, meaningful on an otherwise idle machine; MB per CPU-second is what a busy core does. Peak "
         "PSS is the stage's whole process tree, polled every 100 ms.",
    run="`make bench`", table=data_stages_table, verdicts=data_stages_verdicts, goals=("data_mb_s_per_core",))

# ---------------------------------------------------------------- remote_s3


def remote_table(records: list[dict]) -> list[str]:
    r = records[-1]["results"]
    names = {"push": "`dvc push`", "noop_push": "`dvc push`, nothing to send",
             "dvc_pull": "`dvc pull`, empty cache",
             "make_pull": "`make pull`, empty cache (fetch, completeness check, checkout)"}
    return [f"{r['files']} files, {num(r['megabytes'], 2)} MB; median seconds of {r['runs']} runs:", "",
            *table(("step", "seconds"), [(names[k], num(r["median_seconds"][k], 2)) for k in names])]


REMOTE_S3 = Section(
    bench="remote_s3", title="Push and pull through S3",
    what="This workspace's datasets, base and adapter pushed to S3 and pulled back into an empty clone, "
         "through dvc-s3 against moto's S3 server on loopback: no network latency, so these are DVC's own "
         "costs, the floor of what a real bucket gives.",
    run="`make bench-remote`", table=remote_table)

# ---------------------------------------------------------------- brightdata_rate


def brightdata_table(records: list[dict]) -> list[str]:
    r = records[-1]["results"]
    return table(("URLs", "rate limit", "reply latency", "wall s", "ideal s", "wall / ideal",
                  "most starts in any 1 s (client)", "most arrivals in any 1 s (emulator)"),
                 [(num(r["urls"]), f"{r['rate_per_s']}/s", f"{r['latency_s'] * 1000:.0f} ms",
                   num(r["wall_s"], 2),
                   num(r["ideal_s"], 2), num(r["wall_vs_ideal"], 3), r["max_starts_in_any_1s_client"],
                   r["max_arrivals_in_any_1s_emulator"])])


BRIGHTDATA = Section(
    bench="brightdata_rate", title="Scraping: Bright Data pacing",
    what="The Web Unlocker source fetching URLs from the local Bright Data emulator over real HTTP with a "
         "real clock. Ideal: N requests evenly spaced at the rate, plus one reply's latency. The limit holds "
         "if no 1-second window, counted where the limiter released requests and where the emulator received "
         "them, holds more than the rate.",
    run="`make bench-brightdata`", table=brightdata_table)

# ---------------------------------------------------------------- cpu_train_speed


LOSS_PATHS = {"full_logits": "full logits (the stage's)", "trl_fused_lm_head": "TRL's fused LM head"}


def cpu_train_table(records: list[dict]) -> list[str]:
    r = records[-1]["results"]
    rows = [(f"{run['precision_asked']}" + ("" if run["precision_ran"] == run["precision_asked"]
                                            else f" (ran {run['precision_ran']})"),
             run["threads"], "on" if run["gradient_checkpointing"] else "off",
             LOSS_PATHS[run["loss"]],
             run["steps"], num(run["tokens_per_s"]), window_cell(run)) for run in r["runs"]]
    return [f"{r['base']}, {r['runs'][0]['batch_size']} rows a step; native bf16 on this CPU: "
            f"{'yes' if r['native_bf16'] else 'no (emulated)'}.", "",
            *table(("precision", "threads", "gradient checkpointing", "loss", "steps", "tokens/s",
                    "timed window"),
                   rows, align="lrllrrl")]


CPU_TRAIN = Section(
    bench="cpu_train_speed", title="Training on a CPU",
    what="The train stage's own core (hf backend, TRL's loop) on the pipeline's rows with params.yaml's "
         "knobs, per precision, thread count, gradient checkpointing and loss path; tokens/s as the stage "
         "reports it (non-padding tokens over the training loop's seconds).",
    run="`make bench-cpu-train`", table=cpu_train_table)

# ---------------------------------------------------------------- seeds


def seeds_table(records: list[dict]) -> list[str]:
    r = records[-1]["results"]
    over, seeds = r["over_seeds"], r["seeds"]
    rows = []
    for name in sorted(over["ratio"].keys() | over["delta"].keys()):  # loop_rate: no ratio (base 0)
        ratio, delta = over["ratio"].get(name), over["delta"].get(name, {})
        verdicts = over["verdicts"].get(name, {})
        rows.append((name, f"{ratio['mean']:.4f} ± {ratio['sd'] or 0:.4f}" if ratio else "",
                     f"{delta.get('mean', 0):+.4f} ± {delta.get('sd') or 0:.4f}" if delta else "",
                     " / ".join(str(verdicts.get(v, 0)) for v in ("adapter", "neither", "base"))))
    return [*table(("metric", "adapter / base (mean ± sd)", "adapter − base (mean ± sd)",
                    "seeds: adapter better / within noise / base better"), rows), "",
            f"Seeds {', '.join(map(str, seeds))}; the gate passed for {over['gate_passed']} of {len(seeds)}."]


SEEDS = Section(
    bench="seeds", title="Seed noise of the evaluation",
    what="The embedded default trained and evaluated once per `train.seed` (`dvc exp run -S train.seed=N` "
         "in a fresh clone sharing this checkout's DVC cache). Each seed's interval covers the test pages it "
         "was scored on; the spread over seeds is the training noise no single run's interval sees.",
    run="`make bench-seeds`", table=seeds_table)

SECTIONS = [FULL_REPRO, SEEDS, TEST_SUITE, DATA_STAGES, REMOTE_S3, BRIGHTDATA, CPU_TRAIN]
