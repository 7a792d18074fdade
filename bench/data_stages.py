"""Data-half benchmark: a generated corpus through clean + validate + format: MB/s per core, peak memory.

    python bench/data_stages.py --pages 100000 --kind both --workers 2 --scaling-pages 20000 \
        --out bench/results/data_stages.json                                     # make bench
    python bench/data_stages.py --pages 2000 --kind html --workdir /tmp/b         # keep the outputs
    python bench/data_stages.py --smoke                                           # seconds, a temp file

The corpus (bench/corpus.py) is generated, not downloaded: documentation-like pages in HTML with real-site
boilerplate or in markdown with navigation lines, with duplicates, secrets, control tags, stubs and
undecodable pages planted. Every piece of boilerplate carries a unique marker word, so extraction quality
is checked on the whole corpus: after clean no marker may survive, and HTML headings must come out as `#`
headings.

Each stage runs as the pipeline runs it (bench/stage_run.py): its command from dvc.yaml in a subprocess,
outputs moved to a temporary folder, on a copy of params.yaml with clean.tasks set (--docs-per-task: tasks
of one size at any corpus size, so memory per task is the same), --workers tasks at once (WEBTUNE_WORKERS).
Two throughputs, both valid only when nothing else runs on the machine:
- MB/s/core = raw input MB / wall s / workers: the goal's unit (bench/goals.py);
- MB/CPU-s = raw input MB / the machine's busy CPU s during the stage: what a busy core does; "cores"
  (CPU s / wall s) well below the worker count means the stage is serial or waiting.
The base tokenizer that format needs is trained once, outside the timings, on a generated sample (it is
the base stage's work, not a data stage's).
"""

import argparse
import html
import json
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import goals  # noqa: E402
from corpus import HTML_MARKERS, MARKDOWN_MARKERS, generate, sample_pages  # noqa: E402
from record import Recorder  # noqa: E402
from stage_run import CLEAN_DOCS_PATH, RAW_PATH, STAGES, bench_params, run_stage, stage_command  # noqa: E402

# ---------------------------------------------------------------- quality


_HTML_HEADING = re.compile(r"<h([1-6])[^>]*>(.*?)</h\1>", re.S)
_MD_HEADING_LINE = re.compile(r"^#{1,6} .+$", re.M)


def check_quality(params, n: int = 20, seed: int = 7) -> dict:
    """Clean n generated pages of each kind in-process (webtune.cleaning.text.score_doc with CleanParams
    `params`): no boilerplate marker survives, and every heading of the page is kept as a `#` line. Raises
    AssertionError naming the page and what leaked or was lost; cheap enough for a unit test."""
    from webtune.cleaning.text import score_doc

    checked = {"html": 0, "markdown": 0}
    for kind, markers in (("html", HTML_MARKERS), ("markdown", MARKDOWN_MARKERS)):
        for raw in sample_pages(kind, n, seed):
            scored = score_doc(raw, params)
            if scored["drop"]:
                continue
            text, url = scored["text"], raw["url"]
            for what, marker in markers.items():
                assert marker not in text, (
                    f"{kind} page {url}: {what} boilerplate ({marker!r}) survived clean")
            if kind == "html":
                headings = ["#" * int(level) + " " + html.unescape(h).strip()
                            for level, h in _HTML_HEADING.findall(raw["body"].split("<article", 1)[-1])]
                assert "```" in text or "<pre>" not in raw["body"], (
                    f"{kind} page {url}: code block lost its fence")
            else:
                headings = _MD_HEADING_LINE.findall(raw["body"])
            lines = set(text.split("\n"))
            lost = [h for h in headings if h not in lines]
            assert headings and not lost, (
                f"{kind} page {url}: headings not kept as `#` lines: {lost or 'none found'}")
            assert text.startswith("# "), f"{kind} page {url}: does not start with its `# ` title"
            checked[kind] += 1
    assert min(checked.values()) >= n // 2, f"too few pages survived clean to judge quality: {checked}"
    return {"pages_checked": checked, "ok": True}


def corpus_quality(docs_path: Path, kind: str) -> dict:
    """Whole-corpus version of check_quality, on clean's output: docs still holding boilerplate, headings."""
    text = pq.read_table(docs_path, columns=["text"]).column("text")
    markers = HTML_MARKERS if kind == "html" else MARKDOWN_MARKERS
    leaked = {what: pc.sum(pc.match_substring(text, m)).as_py() or 0 for what, m in markers.items()}
    return {
        "docs": len(text),
        "docs_with_boilerplate": leaked,
        "docs_starting_with_h1": pc.sum(pc.starts_with(text, "# ")).as_py() or 0,
        "docs_with_h2": pc.sum(pc.match_substring(text, "\n## ")).as_py() or 0,
        "docs_with_code_fence": pc.sum(pc.match_substring(text, "```")).as_py() or 0,
    }


def build_tokenizer(out: Path, params_path: Path, n: int = 2000) -> Path:
    """The tokenizer folder format loads: the tiny base's tokenizer recipe (base.tiny: its vocabulary and
    context) trained on n cleaned sample pages, with its chat format (harmony)."""
    from webtune.cleaning.text import score_doc
    from webtune.formats import harmony
    from webtune.models import save_tokenizer
    from webtune.models.tiny_tokenizer import train_tokenizer
    from webtune.params import load_section

    clean_params, tiny = load_section("clean", params_path), load_section("base", params_path).tiny
    texts = [s["text"] for kind in ("html", "markdown") for raw in sample_pages(kind, n // 2, seed=99)
             if not (s := score_doc(raw, clean_params))["drop"]]
    tokenizer = train_tokenizer(texts, tiny.vocab_size)
    tokenizer.model_max_length = tiny.max_position_embeddings
    out.mkdir(parents=True, exist_ok=True)
    save_tokenizer(tokenizer, harmony.FORMAT, out)
    return out


def bench_one(work: Path, kind: str, pages: int, workers: int, docs_per_task: int, base: Path, seed: int,
              max_rss_gb: float, keep: bool) -> dict:
    d = work / f"{kind}-{pages}"
    t0 = time.perf_counter()
    raw = d / RAW_PATH
    raw.parent.mkdir(parents=True, exist_ok=True)
    corpus = generate(raw, pages, kind, seed)
    corpus["generate_s"] = round(time.perf_counter() - t0, 2)
    print(f"[{kind} {pages}] generated {corpus['input_bytes'] / 1e6:.1f} MB in {corpus['generate_s']} s",
          file=sys.stderr)

    tasks = max(workers, -(-pages // docs_per_task))
    params_path = bench_params(d / "params.yaml", tasks)
    commands = {name: stage_command(name, d, base, params_path) for name in STAGES}
    mb = corpus["input_bytes"] / 1e6
    stages = {}
    for name, cmd in commands.items():
        r = run_stage([str(c) for c in cmd], d / f"{name}.log", workers, max_rss_gb)
        r |= _rates(mb, r["wall_s"], r["cpu_s"], workers)
        stages[name] = r
        print(f"[{kind} {pages}] {name}: {r['wall_s']} s wall, {r['cpu_s']} s CPU, "
              f"{r['mb_s_per_core']} MB/s/core, "
              f"{r['mb_per_cpu_s']} MB/CPU-s, peak PSS {r['peak_pss_mb']} MB", file=sys.stderr)
        if "killed" in r:
            break
        r["metrics"] = json.loads((d / "metrics" / f"{name}.json").read_text())
    wall, cpu = sum(s["wall_s"] for s in stages.values()), sum(s["cpu_s"] for s in stages.values())
    run = {
        "kind": kind,
        "corpus": corpus | {"input_mb": round(mb, 1)},
        "tasks": tasks,
        "stages": stages,
        "end_to_end": {"wall_s": round(wall, 3), "cpu_s": round(cpu, 3), **_rates(mb, wall, cpu, workers),
                       "peak_rss_mb": max(s["peak_rss_mb"] for s in stages.values()),
                       "peak_pss_mb": max(s["peak_pss_mb"] for s in stages.values()),
                       "complete": (len(stages) == len(commands)
                                    and not any("killed" in s for s in stages.values()))},
    }
    if (d / CLEAN_DOCS_PATH).exists():
        run["quality"] = corpus_quality(d / CLEAN_DOCS_PATH, kind)
    if not keep:
        shutil.rmtree(d)  # 100k pages of inputs and outputs are ~1 GB: keep only the numbers
    return run


def _rates(mb: float, wall: float, cpu: float, workers: int) -> dict:
    """MB/s per core by the wall clock (the goal's unit: valid on an otherwise idle machine) and MB per
    CPU-second (what a core does while busy: robust to other load on the machine)."""
    return {"mb_s_per_core": round(mb / wall / workers, 2), "mb_per_cpu_s": round(mb / cpu, 2)}


# ---------------------------------------------------------------- report


def table(runs: list[dict], workers: int) -> str:
    head = (f"{'kind':9} {'pages':>7} {'in MB':>6} {'stage':9} {'wall s':>7} {'CPU s':>7} {'cores':>5} "
            f"{'MB/s/core':>9} {'MB/CPU-s':>8} {'PSS MB':>7} {'RSS MB':>7}  rows")
    lines = [head, "-" * len(head)]
    for run in runs:
        c, s = run["corpus"], run["stages"]
        for name, r in [*s.items(), ("TOTAL", run["end_to_end"])]:
            lines.append(
                f"{run['kind']:9} {c['pages']:>7} {c['input_mb']:>6.0f} {name:9} "
                f"{r['wall_s']:>7.1f} {r['cpu_s']:>7.1f} "
                f"{r['cpu_s'] / r['wall_s']:>5.2f} {r['mb_s_per_core']:>9.2f} {r['mb_per_cpu_s']:>8.2f} "
                f"{r['peak_pss_mb']:>7.0f} {r['peak_rss_mb']:>7.0f}  {_rows(name, r)}")
        if "quality" in run:
            q = run["quality"]
            lines.append(f"{'':9} quality: {q['docs']} docs; "
                         f"docs with boilerplate left {q['docs_with_boilerplate']}; "
                         f"# title {q['docs_starting_with_h1']}, ## {q['docs_with_h2']}, "
                         f"``` {q['docs_with_code_fence']}")
    lines.append(f"MB/s/core = raw input MB / wall s / {workers} workers "
                 f"(goal: TOTAL >= {goals.target('data_mb_s_per_core'):g}); "
                 f"MB/CPU-s = input MB / CPU s "
                 f"of the stage and its workers; PSS/RSS = peak of the stage's process tree")
    return "\n".join(lines)


def _rows(name: str, r: dict) -> str:
    if "killed" in r:
        return f"KILLED: {r['killed']}"
    m = r.get("metrics", {})
    if name == "clean":
        return f"{m['docs_in']} docs -> {m['docs_out']} docs, {m['pairs_out']} pairs; dropped {m['dropped']}"
    if name == "validate":
        return f"{m['rows']} pairs, {m['failed']} of {m['expectations']} expectations failed"
    if name == "format":
        return f"{m['rows']} rows {m['rows_per_split']}; dropped {m['dropped']}"
    return ""



def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pages", type=int, default=100_000)
    parser.add_argument("--kind", choices=("html", "markdown", "both"), default="both")
    parser.add_argument("--workers", type=int, default=2,
                        help="the local executor's tasks at once, WEBTUNE_WORKERS (and the per-core divisor)")
    parser.add_argument("--docs-per-task", type=int, default=5000,
                        help="clean.tasks = pages / this (at least --workers): tasks of one size at any "
                             "corpus size, as a user would set it; memory per task stays the same")
    parser.add_argument("--scaling-pages", type=int, default=0,
                        help="also run this many pages per kind and compare peak PSS (memory must not grow)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-rss-gb", type=float, default=16.0,
                        help="kill a stage whose process tree passes this (the machine is shared)")
    parser.add_argument("--out", type=Path, default=None, help="results JSON (bench/record.py)")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="keep corpora and outputs here (default: temp)")
    parser.add_argument("--smoke", action="store_true",
                        help="300 HTML pages, 1 worker, a 200-page tokenizer: checks the bench in seconds")
    args = parser.parse_args(argv)
    recorder = Recorder("data_stages", smoke=args.smoke, argv=argv)
    tokenizer_pages = 2000
    if args.smoke:
        args.pages, args.kind, args.workers, args.scaling_pages, tokenizer_pages = 300, "html", 1, 0, 200

    work = args.workdir or Path(tempfile.mkdtemp(prefix="webtune-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        params_path = bench_params(work / "params.yaml", args.workers)
        from webtune.params import load_section

        quality = check_quality(load_section("clean", params_path))
        print(f"quality check on sample pages: {quality}", file=sys.stderr)
        base = build_tokenizer(work / "base", params_path, tokenizer_pages)
        kinds = ["html", "markdown"] if args.kind == "both" else [args.kind]
        sizes = sorted({args.pages, args.scaling_pages} - {0})
        runs = [bench_one(work, kind, n, args.workers, args.docs_per_task, base, args.seed, args.max_rss_gb,
                          keep=args.workdir is not None) for kind in kinds for n in sizes]
        result = {"workers": args.workers, "quality_sample": quality, "runs": runs}
        if args.scaling_pages:
            result["memory_scaling"] = {
                kind: {stage: {r["corpus"]["pages"]: r["stages"][stage]["peak_pss_mb"]
                               for r in runs if r["kind"] == kind and stage in r["stages"]}
                       for stage in STAGES}
                for kind in kinds
            }
        print(table(runs, args.workers), file=sys.stderr)
        if args.scaling_pages:
            print("peak PSS MB by pages:", json.dumps(result["memory_scaling"]), file=sys.stderr)
        recorder.save(args.out, result)
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
