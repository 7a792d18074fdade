"""Running one pipeline stage as `dvc repro` runs it, for bench/data_stages.py: its command from dvc.yaml
in a subprocess with WEBTUNE_WORKERS set (the local executor's pool size: no param), timed by wall clock
and by CPU time (the stage and every worker it reaped), with the process tree's PSS and RSS polled every
500 ms.
"""

import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import psutil
import yaml

REPO = Path(__file__).resolve().parent.parent
STAGES = ("clean", "validate", "format")
RAW_PATH, CLEAN_DOCS_PATH = "data/raw/docs", "data/clean/docs"  # shard folders, as dvc.yaml names them


def run_stage(args: list[str], log: Path, workers: int, max_rss_gb: float, poll_s: float = 0.5) -> dict:
    """Run `python -m stages.X ...` in REPO, `workers` tasks at once: wall and CPU seconds, peak memory of
    the process tree.

    Peak memory is polled: RSS summed over the stage and its workers (an upper bound: forked workers
    share the parent's pages) and PSS (shared pages split between sharers: the fair total). A stage
    whose tree passes max_rss_gb is killed (this machine is shared; 24 GiB). Every 0.5 s: reading PSS
    (smaps) of a stage, its forkserver, pool and manager processes every 0.1 s took half a core from a
    2-core machine, which the stage's own throughput then lacked.
    """
    env = os.environ | {"GX_ANALYTICS_ENABLED": "false", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO),
                        "WEBTUNE_WORKERS": str(workers)}
    load_before = os.getloadavg()[0]
    # CPU time: the machine's busy time less this process's own. wait4's rusage counts only the
    # descendants a process reaps, and a forkserver's pool workers are not the stage's to reap (their CPU
    # went missing: 1.9 CPU-s for a 19 s clean on 2 busy cores). Valid on an otherwise idle machine, as
    # the wall-clock rate is.
    busy_before, own_before = _busy(), _own()
    start = time.perf_counter()
    with open(log, "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", *args], cwd=REPO, env=env, stdout=err, stderr=err)
        ps = psutil.Process(proc.pid)
        peak_rss = peak_pss = 0
        killed = False
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            rss = pss = 0
            for p in [ps, *_children(ps)]:
                try:
                    mem = p.memory_full_info()
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    continue
                rss, pss = rss + mem.rss, pss + mem.pss
            peak_rss, peak_pss = max(peak_rss, rss), max(peak_pss, pss)
            if rss > max_rss_gb * 2**30 and not killed:
                print(f"{args[0]}: {rss / 2**30:.1f} GiB > --max-rss-gb {max_rss_gb}: killing it",
                      file=sys.stderr)
                for p in [*_children(ps), ps]:
                    p.kill()
                killed = True
            time.sleep(poll_s)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    cpu = max(0.0, (_busy() - busy_before) - (_own() - own_before))
    result = {
        "wall_s": round(wall, 3),
        "cpu_s": round(cpu, 3),
        "cores_used": round(cpu / wall, 2),
        "peak_rss_mb": round(peak_rss / 2**20, 1),
        "peak_pss_mb": round(peak_pss / 2**20, 1),
        # ru_maxrss is in KiB: exact, not polled
        "peak_rss_one_process_mb": round(usage.ru_maxrss / 2**10, 1),
        "load_avg_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "exit": proc.returncode,
    }
    if killed:
        result["killed"] = f"tree RSS passed {max_rss_gb} GiB"
    elif proc.returncode:
        sys.exit(f"{args[0]} failed (exit {proc.returncode}); log: {log}\n{log.read_text()[-3000:]}")
    return result


def _busy() -> float:
    """CPU-seconds every core of the machine spent busy (all but idle and iowait) since boot."""
    t = psutil.cpu_times()
    return sum(t) - t.idle - getattr(t, "iowait", 0.0)


def _own() -> float:
    t = psutil.Process().cpu_times()
    return t.user + t.system


def _children(ps: psutil.Process) -> list[psutil.Process]:
    try:
        return ps.children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def bench_params(out: Path, tasks: int) -> Path:
    """A copy of params.yaml with clean.tasks set; validate.min_rows 1, so a small corpus is judged by its
    rows' content, not refused for its size."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["clean"]["tasks"] = tasks
    params["validate"]["min_rows"] = 1
    out.write_text(yaml.safe_dump(params, sort_keys=False, allow_unicode=True))
    return out


def stage_command(name: str, d: Path, base: Path, params_path: Path) -> list[str]:
    """The stage's own command from dvc.yaml (paths live there), its outputs moved under `d`."""
    cmd = shlex.split(yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"][name]["cmd"])
    assert cmd[:3] == ["python", "-m", f"stages.{name}"], f"dvc.yaml {name}: unexpected cmd {cmd}"
    args = []
    for arg in cmd[2:]:
        if arg == "models/base/tokenizer":
            arg = str(base)
        elif arg.startswith(("data/", "reports/", "metrics/", ".webtune/")):
            arg = str(d / arg)
        elif arg.startswith("expectations/"):
            arg = str(REPO / arg)
        args.append(arg)
    return [*args, "--params", str(params_path)]
