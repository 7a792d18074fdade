"""One error path for every stage and command: a user-facing error is one line, `stage: message`, exit 1.

    def main(argv=None):
        with errors.reported("scrape"):
            ...

`UserError` (and its kinds below) is what bad input or bad config raises, with a message that names the
key, file, record or URL. `reported` turns it, and the few library errors that are always about input
(a missing file, an unreadable Parquet file), into that one line on stderr and exit code 1. Anything
else is a bug and keeps its traceback.
"""

import contextlib
import os
import sys
from collections.abc import Iterator

import pyarrow as pa


class UserError(Exception):
    """Bad input or configuration: the message names what to fix."""


class ParamsError(UserError, ValueError):
    """A params.yaml key is missing, unknown, mistyped or out of range (the message starts with its
    dotted key)."""


class InputError(UserError, ValueError):
    """An input file or record is unusable (the message names it)."""


class GateFailed(UserError):
    """A Great Expectations gate failed (the message names each expectation and sample row ids)."""


def one_line(e: BaseException) -> str:
    """A library's error text on one line (hub and transformers errors span several)."""
    return " ".join(str(e).split())


@contextlib.contextmanager
def reported(stage: str) -> Iterator[None]:
    """Run a stage's body; a UserError (or a missing or unreadable input file) exits 1 with one line."""
    try:
        yield
    except UserError as e:
        _exit(stage, str(e))
    except FileNotFoundError as e:
        _exit(stage, f"{e.filename}: no such file (did the stage that writes it run?)")
    except pa.ArrowInvalid as e:
        _exit(stage, f"unreadable input: {str(e).splitlines()[0]}")


def _exit(stage: str, message: str) -> None:
    # Gate failures list one expectation per line; everything else is one line by construction.
    # In a multi-process run (webtune.training.distributed) every process meets the same bad input:
    # rank 0 says it once.
    if os.environ.get("RANK", "0") == "0":
        print(f"{stage}: {message}", file=sys.stderr, flush=True)
    raise SystemExit(1)
