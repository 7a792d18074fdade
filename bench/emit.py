"""What every GPU bench does with a result: print it, and append it to a JSON-lines file if asked."""

import json
from pathlib import Path


def emit(result: dict, out: Path | None) -> None:
    print(json.dumps(result))
    if out:
        with open(out, "a") as f:
            f.write(json.dumps(result) + "\n")
