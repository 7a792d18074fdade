"""How a sharded stage (clean, validate, format) runs: datatrove passes over a scratch folder named by a
fingerprint of everything that decides its contents.

A stage's passes write under `<root>/<fingerprint>/`; the fingerprint hashes the stage's params, the bytes
of its input files and the source of the code that processes them. A killed run started again with the
same inputs, params and code finds its completed tasks there (datatrove's completion markers) and
resumes; any change gives a new folder, so stale scratch is never reused. Other fingerprints' folders
under the same root are removed when a new one is made: only the latest run can be resumed.
"""

import hashlib
import json
import shutil
from pathlib import Path

from webtune import executors, io, quiet

CHUNK = 1 << 20


def fingerprint(*, params: dict, inputs: list[Path], code: list[Path]) -> str:
    h = hashlib.blake2b(digest_size=10)
    h.update(json.dumps(params, sort_keys=True, default=str).encode())
    for path in inputs:  # ~1 GB/s: a second per GB of input, against minutes of cleaning
        h.update(path.name.encode() + b"\0")
        with path.open("rb") as f:
            while chunk := f.read(CHUNK):
                h.update(chunk)
    for root in code:
        for path in sorted(root.rglob("*.py")) if root.is_dir() else [root]:
            h.update(path.name.encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


def scratch_dir(root: Path, *, params: dict, inputs: list[Path], stage: Path) -> Path:
    """`root/<fingerprint>` (absolute: Slurm and Ray tasks may start elsewhere), created; every other
    folder under `root` removed. The code fingerprinted is the stage's module and the whole webtune
    package (~1 MB): any library change the passes might run starts afresh, which costs one re-run
    at most and never trusts tasks done by other code."""
    root = root.resolve()
    folder = root / fingerprint(params=params, inputs=inputs, code=[Path(__file__).parent, stage])
    if root.is_dir():
        for other in root.iterdir():
            if other != folder:
                shutil.rmtree(other, ignore_errors=True) if other.is_dir() else other.unlink()
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def run_passes(stage: str, passes: list[tuple[str, list, int]], scratch: Path, executor=None,
               progress=io.stderr) -> None:
    """Run each (name, pipeline, tasks) pass to completion with the executor, in order; its logs and
    completion markers under scratch/logs/<name> (webtune.executors prints a line per task)."""
    for name, pipeline, tasks in passes:
        # datatrove's exact dedup draws a tqdm bar in a task that runs in this process (a 1-task pass)
        with quiet.tqdm_for_terminal("datatrove.pipeline.dedup.exact_dedup"):
            # no space in the name: it is also the Slurm job's name, an #SBATCH directive
            executors.run(pipeline, name=f"{stage}-{name}", tasks=tasks, logging_dir=scratch / "logs" / name,
                          executor=executor, progress=progress)
