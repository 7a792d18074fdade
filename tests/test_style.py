"""The code keeps the project's lint rules (pyproject.toml: 110 columns, pyflakes, imports, bugbear, ...)."""

import subprocess
import sys


def test_ruff_finds_nothing(repo):
    proc = subprocess.run([sys.executable, "-m", "ruff", "check", "stages", "webtune", "tests", "bench"],
                          cwd=repo, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
