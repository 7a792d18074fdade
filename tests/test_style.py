"""The code keeps the project's lint rules (pyproject.toml: 110 columns, pyflakes, imports, bugbear, ...)."""

import subprocess
import sys


def test_ruff_finds_nothing(repo):
    proc = subprocess.run([sys.executable, "-m", "ruff", "check", "stages", "webtune", "tests", "bench"],
                          cwd=repo, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


MAX_LIBRARY_LINES = 300  # a file past this is doing two jobs: split it along the seam (STYLE)


def test_every_library_file_is_a_screen_or_two(repo):
    long = {str(p.relative_to(repo)): n for p in sorted((repo / "webtune").rglob("*.py"))
            if (n := len(p.read_text().splitlines())) > MAX_LIBRARY_LINES}
    assert not long, f"over {MAX_LIBRARY_LINES} lines: {long}"
