"""How every bench writes its result: one record with its provenance, saved atomically into a results file.

    from record import Recorder
    rec = Recorder("serve_latency", smoke=args.smoke)
    rec.save(args.out, {"requests_per_s": 0.34, ...}, key=("device", "merged_adapter"))

A results file (bench/results/<bench>.json) is {"bench": name, "records": [record, ...]}; a record is

    {"bench", "command", "commit", "dirty", "machine": {"cpu", "cores", "gpu"}, "date", "results",
     "notes"?, "smoke"?}

Records converted from the result files that came before this module also carry `converted_from`.
`commit` and `dirty` say which code measured it (dirty ignores bench/results/ and docs/results.md: a new
result is not a code change); `date` is UTC. A field nobody recorded is null (records converted from
before this module), and docs/results.md says so instead of guessing. `bench/report.py` renders the
files into docs/results.md (`make results`).

Smoke records (`--smoke`: toy inputs, seconds) carry "smoke": true and are refused under bench/results/,
so a test can never overwrite a measured number.
"""

import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # webtune.io for the atomic write, wherever the bench was started from
    sys.path.insert(0, str(REPO))
RESULTS = REPO / "bench" / "results"
PROVENANCE = ("command", "commit", "dirty", "machine", "date")
# A timed window whose first and last thirds differ in mean step time by more than this is flagged: on an
# H100, 14 steps (4 warm-up) and 40 steps (12 warm-up) of one run ranked two configurations the other
# way round, because compilation was still running inside the short window.
WINDOW_TOLERANCE = 0.10


def cpu_model() -> str | None:
    """The CPU's name (Linux), since timings and bf16 results differ from one model to the next."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor() or None
    names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    return names[0] if names else platform.processor() or None


def gpu_name() -> str | None:
    """The first GPU's name: from torch when the bench already imported it, else nvidia-smi, else None."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    if shutil.which("nvidia-smi"):
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                             capture_output=True, text=True)
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip().splitlines()[0]
    return None


def machine() -> dict:
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "gpu": gpu_name()}


def git_state(repo: Path = REPO) -> tuple[str | None, bool | None]:
    """(commit, dirty) of the code that runs, or (None, None) outside a git checkout (a copied tree).

    A tree copied without its .git (the working tree sent to a lent GPU machine) can be told what it is:
    WEBTUNE_BENCH_COMMIT and WEBTUNE_BENCH_DIRTY (true/false), taken from the checkout it was copied from.
    """
    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True)

    head = git("rev-parse", "HEAD") if shutil.which("git") else None
    if head is None or head.returncode != 0:
        told = os.environ.get("WEBTUNE_BENCH_COMMIT")
        dirty = os.environ.get("WEBTUNE_BENCH_DIRTY")
        return told or None, None if dirty is None else dirty.lower() == "true"
    status = git("status", "--porcelain", "--untracked-files=no", "--", ".",
                 ":!bench/results", ":!docs/results.md")
    return head.stdout.strip(), bool(status.stdout.strip()) if status.returncode == 0 else None


def command(argv: Sequence[str] | None = None) -> str:
    """The command line that ran, as a user would type it from the repository root."""
    script = Path(sys.argv[0]).resolve()
    shown = script.relative_to(REPO) if script.is_relative_to(REPO) else script
    return " ".join(["python", str(shown), *(sys.argv[1:] if argv is None else argv)])


def window(step_s: Sequence[float]) -> dict:
    """Per-step seconds of a timed window, and whether its first and last thirds agree within
    WINDOW_TOLERANCE (window_stable None: too few steps to tell)."""
    step_s = [round(s, 4) for s in step_s]
    third = len(step_s) // 3
    if third == 0:
        return {"step_s": step_s, "window_stable": None}
    first, last = statistics.fmean(step_s[:third]), statistics.fmean(step_s[-third:])
    return {"step_s": step_s, "first_third_mean_s": round(first, 4), "last_third_mean_s": round(last, 4),
            "window_stable": max(first, last) <= (1 + WINDOW_TOLERANCE) * min(first, last)}


def load(path: Path) -> dict:
    return json.loads(Path(path).read_text())


class Recorder:
    """A bench's record maker: its name, its command line, and whether this is a smoke run."""

    def __init__(self, bench: str, smoke: bool = False, argv: Sequence[str] | None = None):
        self.bench, self.smoke, self.command = bench, smoke, command(argv)

    def record(self, results: dict, notes: str | None = None, code: tuple | None = None) -> dict:
        """`code`: the (commit, dirty) of the code measured, where it is not this checkout's (a clone)."""
        commit, dirty = code or git_state()
        rec = {"bench": self.bench, "command": self.command, "commit": commit, "dirty": dirty,
               "machine": machine(), "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
               "results": results}
        if notes:
            rec["notes"] = notes
        if self.smoke:
            rec["smoke"] = True
        return rec

    def save(self, out: Path | None, results: dict, key: Sequence[str] | None = None,
             notes: str | None = None, code: tuple | None = None) -> Path | None:
        """Print the record; with `out`, write it there atomically. With `key` (names in `results`), the
        file keeps its other records and this one replaces any with the same key values (one row per
        configuration, runs made in separate processes); without, the file holds this record alone.
        Smoke runs with no `out` go to a temporary folder. Returns the path written, if any."""
        from webtune.io import write_json

        rec = self.record(results, notes, code)
        print(json.dumps(rec, ensure_ascii=False))
        if out is None and self.smoke:
            out = Path(tempfile.mkdtemp(prefix=f"bench-{self.bench}-smoke-")) / f"{self.bench}.json"
        if out is None:
            return None
        out = Path(out).resolve()
        if self.smoke and out.is_relative_to(RESULTS):
            raise SystemExit(f"{self.bench}: a --smoke result is never written under {RESULTS}")
        records = []
        if key is not None and out.exists():
            same = {k: results.get(k) for k in key}
            records = [r for r in load(out)["records"]
                       if {k: r["results"].get(k) for k in key} != same]
        write_json({"bench": self.bench, "records": [*records, rec]}, out)
        print(f"{self.bench}: wrote {out}", file=sys.stderr)
        return out
