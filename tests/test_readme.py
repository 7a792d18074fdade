"""The README and docs/ stay a manual that works: short, every command they name runs, every path exists.

- README.md has at most 200 lines: depth goes to docs/, numbers to docs/results.md;
- every `python -m webtune.cli.X ...` / `python -m stages.X` they name answers `--help` with exit 0, and
  every `make <target>` they name passes `make -n`;
- every repo path they mention in backticks or link to exists (pipeline outputs and a few paths being
  written in parallel excepted, listed below);
- the README names no machine, date, session or history.
"""

import concurrent.futures
import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
MAX_README_LINES = 200
GENERATED = "results.md"  # docs/results.md is written by `make results` from the benchmarks' JSON

# Paths a run creates (the pipeline's outputs, `export`'s folder, the scrape ledger, the environment, a
# person's git-ignored config): a fresh clone need not hold them.
RUNTIME = ("data/", "models/", "metrics/", "reports/", "exports/", ".webtune/", ".venv/",
           ".dvc/config.local")
NOT_PATHS = {"unsloth/gpt-oss-20b"}  # a Hugging Face Hub model id, written like a path

FENCE = re.compile(r"^```.*?^```", re.M | re.S)
INLINE = re.compile(r"`([^`\n]+)`")
LINK = re.compile(r"\]\(([^)\s]+)\)")
PATHLIKE = re.compile(r"^[\w.*<>{},-]+(/[\w.*<>{},-]*)*$")
EXTENSIONS = ("py", "yaml", "yml", "md", "json", "jsonl", "toml", "lock", "csv", "parquet", "txt", "sh",
              "sqlite", "safetensors")
PYTHON_COMMAND = re.compile(r"python -m ((?:webtune\.cli|stages)\.\w+)((?:[ \t]+[a-z][\w-]*(?=\s|$))*)", re.M)
MAKE_COMMAND = re.compile(r"(?:^|[\s;&|(])make[ \t]+([a-z][\w-]*)((?:[ \t]+[A-Z][A-Z0-9_]*=[^\s`]+)*)", re.M)
# Words that belong in CHANGELOG.md or docs/results.md, never in the manual.
HISTORY = [r"\bEPYC\b", r"\bXeon\b", r"\bH[12]00\b", r"this session", r"earlier sessions?",
           r"\bflows? [AB]\b", r"\bthe seed'?s\b", r"(?<![\w-])20\d\d-\d\d", r"\buntil \d{4}\b"]


def manual() -> dict[Path, str]:
    """README.md and docs/*.md but the generated results page: path -> text."""
    files = [README, *(f for f in sorted((REPO / "docs").glob("*.md")) if f.name != GENERATED)]
    return {f: f.read_text(encoding="utf-8") for f in files}


def code_text(text: str) -> str:
    """Fenced blocks and inline code spans: where commands are written."""
    return "\n".join([*FENCE.findall(text), *INLINE.findall(FENCE.sub("", text))])


def mentioned_paths(text: str) -> set[str]:
    """Backticked tokens that name a repo path: a slash, or a file name with a known extension."""
    paths = set()
    for token in INLINE.findall(FENCE.sub("", text)):
        token = token.strip()
        if token.startswith(("/", "~", "..", "-")) or "://" in token or not PATHLIKE.match(token):
            continue
        if token in NOT_PATHS:
            continue
        if "/" in token or re.search(rf"\.({'|'.join(EXTENSIONS)})$", token):
            paths.add(token)
    return paths


def exists(path: str) -> bool:
    """True when `path` (relative to the repo; `<x>` and `*` as wildcards, `{a,b}` as alternatives) names
    at least one file or folder."""
    alternatives = [path]
    while any("{" in p for p in alternatives):
        p = next(p for p in alternatives if "{" in p)
        head, options, tail = re.match(r"^(.*?)\{([^}]*)\}(.*)$", p).groups()
        alternatives.remove(p)
        alternatives += [head + o + tail for o in options.split(",")]
    return all(any(REPO.glob(re.sub(r"<[^>]*>", "*", p).rstrip("/"))) for p in alternatives)


def allowed_missing(path: str) -> bool:
    return path.startswith(RUNTIME)


def run(command: list[str]) -> tuple[list[str], int, str]:
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300,
                          env=os.environ | {"PYTHONPATH": str(REPO)})
    return command, done.returncode, (done.stdout + done.stderr)[-2000:]


def test_the_readme_is_at_most_200_lines():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= MAX_README_LINES, f"README.md has {len(lines)} lines; move depth to docs/"


def test_the_readme_opens_with_the_two_commands():
    first_block = FENCE.search(README.read_text(encoding="utf-8")).group(0)
    assert re.search(r"^make repro\b", first_block, re.M) and re.search(r"^make test\b", first_block, re.M)


def test_every_python_command_the_manual_names_answers_help():
    commands = {(m.group(1), *m.group(2).split()) for text in manual().values()
                for m in PYTHON_COMMAND.finditer(code_text(text))}
    assert {c[0] for c in commands} >= {"webtune.cli.chat", "webtune.cli.serve", "webtune.cli.export"}
    # each --help imports torch or transformers (seconds): in parallel
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(run, [[sys.executable, "-m", *c, "--help"] for c in sorted(commands)]))
    failed = [f"{' '.join(cmd[2:])}: exit {rc}\n{out}" for cmd, rc, out in results if rc != 0]
    assert not failed, "\n".join(failed)


def test_every_make_target_the_manual_names_passes_a_dry_run():
    targets = {(m.group(1), *m.group(2).split()) for text in manual().values()
               for m in MAKE_COMMAND.finditer(code_text(text))}
    assert {t[0] for t in targets} >= {"repro", "test", "push", "pull", "remote-s3", "lint", "bench"}
    makefile = (REPO / "Makefile").read_text()
    defined = set(re.findall(r"^([a-z][\w-]*):", makefile, re.M))
    missing = {t[0] for t in targets} - defined
    assert not missing, f"the manual names make targets the Makefile lacks: {missing}"
    # a bare mention (`make remote-s3`) runs with the variables the manual gives the target elsewhere
    fullest = {}
    for target, *variables in targets:
        if target in defined and len(variables) >= len(fullest.get(target, [])):
            fullest[target] = variables
    failed = []
    for target, variables in sorted(fullest.items()):
        command, rc, out = run(["make", "-n", target, *variables])
        if rc != 0:
            failed.append(f"{' '.join(command)}: exit {rc}\n{out}")
    assert not failed, "\n".join(failed)


def test_every_path_the_manual_mentions_exists():
    missing = []
    for file, text in manual().items():
        for path in sorted(mentioned_paths(text)):
            if not exists(path) and not allowed_missing(path):
                missing.append(f"{file.relative_to(REPO)}: `{path}`")
    assert not missing, "\n".join(missing)


def test_every_relative_link_in_the_manual_resolves():
    broken = []
    for file, text in manual().items():
        for target in LINK.findall(text):
            if "://" in target or target.startswith("#"):
                continue
            resolved = (file.parent / target.split("#")[0]).resolve()
            if not resolved.exists():
                broken.append(f"{file.relative_to(REPO)}: ({target})")
    assert not broken, "\n".join(broken)


def test_the_manual_names_no_machine_date_session_or_history():
    found = [f"{file.relative_to(REPO)}:{n}: {line.strip()}"
             for file, text in manual().items()
             for n, line in enumerate(text.splitlines(), 1)
             for pattern in HISTORY if re.search(pattern, line, re.I)]
    assert not found, "\n".join(found)


def test_the_path_finder_reads_paths_and_skips_code():
    text = ("Edit `params.yaml` and `docs/gpu.md`, not `train.hf.processes` or `make test`;\n"
            "`data/format/{train,val}.parquet`, `s3://b/p`, `~/.aws`, `/reset`, `from_pretrained(\"x/y\")`\n"
            "```\ncat hidden/in/a/fence.md\n```\n")
    assert mentioned_paths(text) == {"params.yaml", "docs/gpu.md", "data/format/{train,val}.parquet"}
    assert exists("tests/stages/test_<stage>.py") and exists("expectations/{pairs,chat_rows}.json")
    assert not exists("expectations/{pairs,nothing}.json")
