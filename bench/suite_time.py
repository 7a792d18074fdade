"""The whole test suite's wall time, run as `make test` runs it (two worker processes, one file each).

    python bench/suite_time.py --out bench/results/test_suite.json     # make bench-tests: ~the suite's time
    python bench/suite_time.py --smoke      # pytest on a three-test toy file in a temp dir: seconds

Reports wall seconds and pytest's own counts (passed, failed, skipped, errors) from its summary line,
against the goal in bench/goals.py. A failing suite is still recorded (the time says what a user waits),
and the bench exits 1 so it is not mistaken for a good run.
"""

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import goals
from record import Recorder

REPO = Path(__file__).resolve().parent.parent
MAKE_TEST = ["-n", "2", "--dist", "loadfile"]  # the Makefile's `test` target
SUMMARY = re.compile(r"(\d+) (passed|failed|skipped|errors?|xfailed|xpassed|deselected)")
TOY_TESTS = '''import pytest


def test_one_plus_one_is_two():
    assert 1 + 1 == 2


def test_a_sorted_list_stays_sorted():
    assert sorted([3, 1, 2]) == [1, 2, 3]


@pytest.mark.skip(reason="counted as skipped by the bench's smoke run")
def test_skipped():
    raise AssertionError
'''


def run_pytest(cwd: Path, args: list[str]) -> dict:
    """Wall seconds of `python -m pytest ARGS` in `cwd`, and the counts of its last summary line."""
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", *args], cwd=cwd, capture_output=True,
                          text=True)
    seconds = time.perf_counter() - t0
    lines = [line for line in proc.stdout.splitlines() if SUMMARY.search(line)]
    if not lines:
        raise SystemExit(f"pytest printed no summary (exit {proc.returncode}):\n{proc.stdout[-2000:]}"
                         f"{proc.stderr[-2000:]}")
    counts = {"passed": 0, "failed": 0, "skipped": 0, "errors": 0}
    for n, what in SUMMARY.findall(lines[-1]):
        key = "errors" if what.startswith("error") else what
        counts[key] = counts.get(key, 0) + int(n)
    return {"seconds": round(seconds, 1), "exit": proc.returncode, **counts, "pytest_args": args}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=None, help="results JSON (bench/record.py)")
    parser.add_argument("--smoke", action="store_true", help="a toy test file instead of the suite")
    args = parser.parse_args()
    recorder = Recorder("test_suite", smoke=args.smoke)
    with tempfile.TemporaryDirectory(prefix="test-suite-smoke-") as tmp:
        if args.smoke:
            (Path(tmp) / "test_toy.py").write_text(TOY_TESTS)
            result = run_pytest(Path(tmp), ["-p", "no:xdist", "-p", "no:cacheprovider"])
        else:
            result = run_pytest(REPO, MAKE_TEST)
    print(f"test suite: {result['seconds']} s (goal <= {goals.target('test_suite_s'):g} s), "
          f"{result['passed']} passed, {result['failed']} failed", file=sys.stderr)
    recorder.save(args.out, result)
    if result["exit"] != 0:
        sys.exit(1)


if __name__ == "__main__":
    main()
