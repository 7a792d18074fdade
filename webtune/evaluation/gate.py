"""The promotion gate: is this adapter better than the base, and not worse than the one it replaces?

    verdict = decide(params, compared, committed, fingerprint)   # {"passed", "checks", "line", ...}
    as_metrics(verdict)                                          # checks by ref and metric, for the JSON
    committed = committed_metrics("metrics/evaluate.json", "HEAD")  # that commit's metrics, or None

For each metric in `evaluate.gate_metrics`:
- against the base: the adapter passes when the interval of the difference excludes zero on its side
  (it is better beyond resampling noise: an adapter equal to the base, such as one trained at learning
  rate 0, fails);
- against `evaluate.gate_against` (a git ref, e.g. HEAD): it fails when the committed adapter's value lies
  beyond this adapter's own interval on the better side (worse beyond noise); equal within noise passes.
  Both runs must have scored the same test split (the same fingerprint), else the check is skipped and
  says so: numbers over different prompts do not compare.
`evaluate.gate`: off (no verdict), warn (the verdict in the metrics and report only), fail (evaluate exits
1 with the first failing check's line; the metrics and report are written first).
"""

import contextlib
import io as _io

from webtune.evaluation import METRICS


def _num(x: float, digits: int) -> str:
    return f"{x:+.{digits}f}"


def against_base(name: str, row: dict, confidence: float) -> dict:
    digits = METRICS[name].digits + 1
    passed = row["verdict"] == "adapter"
    line = (f"{name}: adapter {row['adapter']:.{digits}f} vs base {row['base']:.{digits}f}, difference "
            f"{_num(row['delta'], digits)} ({confidence:.0%} interval {_num(row['low'], digits)} to "
            f"{_num(row['high'], digits)}): "
            + ("better than the base" if passed else "the adapter is not better than the base"))
    return {"metric": name, "against": "base", "passed": passed, "line": line}


def against_ref(name: str, row: dict, ref: str, committed: dict | None, fingerprint: str,
                confidence: float) -> dict:
    check = {"metric": name, "against": ref}
    value = ((committed or {}).get("adapter") or {}).get(name)
    if value is None:
        return check | {"passed": None, "line": f"{name}: no committed value at {ref} to compare with"}
    if committed.get("test_fingerprint") != fingerprint:
        return check | {"passed": None,
                        "line": f"{name}: not compared with {ref}: it scored another test split"}
    digits = METRICS[name].digits + 1
    low, high = row["adapter_low"], row["adapter_high"]
    worse = value < low if METRICS[name].better == "lower" else value > high
    line = (f"{name}: adapter {row['adapter']:.{digits}f} ({confidence:.0%} interval {low:.{digits}f} to "
            f"{high:.{digits}f}) vs {value:.{digits}f} at {ref}: "
            + (f"worse than the adapter at {ref}" if worse else f"not worse than the adapter at {ref}"))
    return check | {"passed": not worse, "line": line}


def decide(params, compared: dict[str, dict], committed: dict | None, fingerprint: str) -> dict:
    """The gate's verdict over `compared` (intervals.compare per metric): every check and one line."""
    names = [n for n in params.gate_metrics if n in compared]
    checks = [against_base(n, compared[n], params.confidence) for n in names]
    if params.gate_against:
        checks += [against_ref(n, compared[n], params.gate_against, committed, fingerprint, params.confidence)
                   for n in names]
    failed = [c for c in checks if c["passed"] is False]
    # only a check that compared says so: with nothing committed (or another split) every one was skipped
    ref_compared = any(c["passed"] for c in checks[len(names):])
    if not names:  # e.g. a hosted model gated on loss only: nothing measured is nothing passed
        return {"mode": params.gate, "metrics": [], "against": params.gate_against or None, "passed": False,
                "checks": [], "line": f"gate failed: none of {', '.join(params.gate_metrics)} was measured"}
    line = (f"gate failed: {failed[0]['line']}" if failed else
            f"gate passed: the adapter beats the base on {', '.join(names)}"
            + (f" and is not worse than {params.gate_against}'s" if ref_compared else ""))
    return {"mode": params.gate, "metrics": names, "against": params.gate_against or None,
            "passed": not failed, "checks": checks, "line": line}


def as_metrics(verdict: dict) -> dict:
    """The verdict as metrics/evaluate.json holds it: checks keyed by what they compare with, then by metric
    (`gate.checks.HEAD.loss.passed`), since DVC's metrics and `dvc exp show` drop lists."""
    checks: dict[str, dict] = {}
    for c in verdict["checks"]:
        checks.setdefault(c["against"], {})[c["metric"]] = {"passed": c["passed"], "line": c["line"]}
    return verdict | {"checks": checks}


def committed_metrics(path: str, rev: str, root: str = ".") -> tuple[dict | None, str]:
    """(the metrics file at git `rev` of the DVC repository at `root`, or None; a note saying why None).

    Through DVC's Repo.metrics.show, not dvc.api.metrics_show: the latter also reads the workspace copy and
    raises when it is missing, and inside a stage run DVC has removed the stage's own outputs before the
    command starts, so it never reaches the committed file."""
    from dvc.repo import Repo

    try:
        with contextlib.redirect_stderr(_io.StringIO()), Repo(root) as repo:  # DVC logs misses as errors
            shown = repo.metrics.show([path], revs=[rev])
    except Exception as e:  # noqa: BLE001 - any DVC or git failure means "nothing to compare with"
        return None, f"could not read {path} at {rev}: {type(e).__name__}: {(str(e).splitlines() or [''])[0]}"
    found = next((v for k, v in shown.items() if k != "workspace"), {}).get("data", {}).get(path, {})
    if "data" not in found:
        error = found.get("error")
        why = f"{type(error).__name__}" if error is not None else "nothing there"
        return None, f"could not read {path} at {rev}: {why}"
    return (found["data"] or None), ("" if found["data"] else f"{path} at {rev} holds no metrics")
