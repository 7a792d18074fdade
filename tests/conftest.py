"""Shared fixtures: the repository's own params (tests override single knobs with dataclasses.replace)."""

import os
from pathlib import Path

import pytest

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def repo() -> Path:
    return REPO


@pytest.fixture
def load():
    """load("clean") -> the CleanParams of the repository's params.yaml."""
    from stages.params import load_section

    return lambda section: load_section(section, REPO / "params.yaml")
