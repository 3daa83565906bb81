"""Fixtures for the node agent's tests: writable copies of the fixture cgroup trees."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.helpers import FIXTURES


@pytest.fixture
def v1_tree(tmp_path: Path) -> Iterator[Path]:
    """A writable copy of the v1 cgroupfs fixture tree."""
    dest = tmp_path / "v1"
    shutil.copytree(FIXTURES / "v1-cgroupfs", dest)
    yield dest


@pytest.fixture
def v2_tree(tmp_path: Path) -> Iterator[Path]:
    """A writable copy of the v2 systemd fixture tree."""
    dest = tmp_path / "v2"
    shutil.copytree(FIXTURES / "v2-systemd", dest)
    yield dest
