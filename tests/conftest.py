"""Shared fixtures: the repository's own params (tests override single knobs with dataclasses.replace) and
one toy tiny base built once per session (seconds), for every test that needs a tokenizer or a model."""

import os
from pathlib import Path

import pytest

from tests.toys import SMALL, TEXTS

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# The data stages' tasks in the test process (e2e's dvc included) unless a test asks for a pool: a pool's
# start-up outweighs the work on toy inputs, and the machine's core count must not decide what runs.
os.environ.setdefault("WEBTUNE_WORKERS", "1")

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture
def load():
    """load("clean") -> the CleanParams of the repository's params.yaml."""
    from webtune.params import load_section

    return lambda section: load_section(section, REPO / "params.yaml")


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory) -> Path:
    """A base folder (tokenizer/ and model/) of a toy tiny gpt-oss, built once. Treat it as read-only."""
    from webtune.models.tiny import TinyParams
    from webtune.models.tiny_build import build_tiny_base

    out = tmp_path_factory.mktemp("tiny-base") / "base"
    build_tiny_base(TinyParams(**SMALL), TEXTS, out, progress=None)
    return out


@pytest.fixture(scope="session")
def tok(tiny_base):
    """The toy base's tokenizer (harmony template)."""
    from webtune.models import load_tokenizer

    return load_tokenizer(tiny_base / "tokenizer")[0]


FAKE_BRIGHTDATA_TOKEN = "bd-fake-token-7c1e9a42d0"  # what the tests' emulator accepts; greps look for it


@pytest.fixture
def brightdata():
    """A Bright Data emulator over real HTTP on 127.0.0.1 (tests/emulators/brightdata.py), per test."""
    from tests.emulators.brightdata import BrightDataEmulator

    with BrightDataEmulator(token=FAKE_BRIGHTDATA_TOKEN) as emulator:
        yield emulator
