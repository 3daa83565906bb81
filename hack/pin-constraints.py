#!/usr/bin/env python3
"""Re-pin constraints.txt: memwatch's runtime dependencies as pip resolves them now.

`make constraints` runs this. It installs pyproject.toml's [project] dependencies (and nothing
else: not memwatch, not the test tools) into a throw-away virtualenv and writes its `pip freeze`.
Run it with the Python the image uses (3.11), so that version-dependent dependencies match.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import tomllib
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONSTRAINTS = ROOT / "constraints.txt"
HEADER = """\
# memwatch's runtime dependencies, pinned (pyproject.toml's [project] dependencies and theirs).
# The image (Dockerfile) and `make install` install with `pip install -c constraints.txt`, so that
# a build does not change when a dependency releases. After changing the dependencies in
# pyproject.toml, re-pin with `make constraints`; tests/unit/test_constraints.py checks the two agree.
"""


def runtime_dependencies() -> list[str]:
    """pyproject.toml's [project] dependencies, as written there."""
    with (ROOT / "pyproject.toml").open("rb") as f:
        deps: list[str] = tomllib.load(f)["project"]["dependencies"]
    return deps


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="memwatch-pin-") as tmp:
        venv.create(tmp, with_pip=True)
        pip = [str(Path(tmp) / "bin" / "python"), "-m", "pip", "--disable-pip-version-check"]
        subprocess.run([*pip, "install", "--quiet", *runtime_dependencies()], check=True)
        frozen = subprocess.run([*pip, "freeze"], check=True, capture_output=True, text=True).stdout
    CONSTRAINTS.write_text(HEADER + frozen)
    print(f"wrote {CONSTRAINTS.relative_to(ROOT)}: {len(frozen.splitlines())} pins")
    return 0


if __name__ == "__main__":
    sys.exit(main())
