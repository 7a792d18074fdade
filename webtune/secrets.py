"""API secrets: from the environment or a git-ignored `.env`, never from params, dvc.yaml or a tracked file.

    token = secrets.require("BRIGHTDATA_API_TOKEN", needed_by="scrape.source brightdata_unlocker")

The environment wins over `.env` (a CI job's secret overrides a developer's file). `.env` is read with
python-dotenv's `dotenv_values`, which parses the file without exporting it, so one stage's token never
leaks into the environment of the processes it starts. Only a stage's or command's `main` calls this;
core functions take the secret as an argument.

`redact` is the last line of defence for messages: any text that may echo a request (an exception from
a client library, a server's error body) goes through it before it is printed or written.
"""

import os
from collections.abc import Mapping
from pathlib import Path

from dotenv import dotenv_values

from webtune.errors import UserError

DOTENV = Path(".env")  # relative to the project root, where dvc runs every stage
REDACTED = "<redacted>"


class MissingSecretError(UserError):
    """A secret the selected configuration needs is neither in the environment nor in `.env`."""


def get(name: str, *, environ: Mapping[str, str] | None = None, dotenv: Path = DOTENV) -> str | None:
    """The secret `name` from the environment, else from `dotenv`; None when neither has a non-empty value."""
    environ = os.environ if environ is None else environ
    value = environ.get(name, "").strip()
    if value:
        return value
    if dotenv.is_file():
        value = (dotenv_values(dotenv).get(name) or "").strip()
        if value:
            return value
    return None


def require(
    name: str, *, needed_by: str, environ: Mapping[str, str] | None = None, dotenv: Path = DOTENV
) -> str:
    """The secret `name`, or a MissingSecretError saying who needs it and where to put it."""
    value = get(name, environ=environ, dotenv=dotenv)
    if value is None:
        raise MissingSecretError(
            f"{needed_by} needs {name}: export it, or put {name}=... in {dotenv} "
            "(git-ignored); it is never read from params.yaml"
        )
    return value


def redact(text: str, *secrets: str | None) -> str:
    """`text` with every occurrence of each non-empty secret replaced by <redacted>."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, REDACTED)
    return text
