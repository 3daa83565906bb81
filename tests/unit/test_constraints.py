"""constraints.txt pins every runtime dependency of pyproject.toml, at a version pyproject allows.

The image and `make install` install with `pip install -c constraints.txt`: a dependency added to
pyproject.toml without a pin would float, and a pin pyproject no longer allows would break the build.
Fix either with `make constraints`.
"""

from __future__ import annotations

import importlib.metadata
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import NormalizedName, canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
FIX = "re-pin with `make constraints`"


def runtime_requirements(pyproject: Path = ROOT / "pyproject.toml") -> list[Requirement]:
    with pyproject.open("rb") as f:
        return [Requirement(dep) for dep in tomllib.load(f)["project"]["dependencies"]]


def pins(constraints: Path = ROOT / "constraints.txt") -> dict[NormalizedName, Version]:
    """name -> pinned version; every line must be an exact `name==version` pin, once per name."""
    found: dict[NormalizedName, Version] = {}
    for number, raw in enumerate(constraints.read_text().splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        req = Requirement(line)
        specs = list(req.specifier)
        assert len(specs) == 1 and specs[0].operator == "==" and not req.marker and not req.extras, (
            f"constraints.txt:{number}: {raw!r} is not an exact pin (name==version)")
        name = canonicalize_name(req.name)
        assert name not in found, f"constraints.txt:{number}: {req.name} is pinned twice"
        found[name] = Version(specs[0].version)
    return found


def problems(requirements: list[Requirement], pinned: dict[NormalizedName, Version]) -> list[str]:
    """Why the pins do not satisfy the requirements (empty: they do)."""
    out = []
    for req in requirements:
        name = canonicalize_name(req.name)
        if req.marker and not req.marker.evaluate():
            continue
        if name not in pinned:
            out.append(f"{req} is not pinned")
        elif not req.specifier.contains(pinned[name], prereleases=True):
            out.append(f"{req.name}=={pinned[name]} does not satisfy {req}")
    return out


def test_every_runtime_dependency_is_pinned_within_its_specifier() -> None:
    found = problems(runtime_requirements(), pins())
    assert not found, f"constraints.txt and pyproject.toml disagree: {'; '.join(found)}; {FIX}"


def test_the_pins_are_closed_under_dependencies() -> None:
    """Every dependency of a pinned package is pinned too: nothing in the image floats. Read from
    the installed packages' metadata, for those installed at exactly their pinned version."""
    pinned = pins()
    checked = 0
    for name, version in pinned.items():
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        if Version(dist.version) != version:
            continue  # another version's dependencies may differ: nothing to conclude
        checked += 1
        # Requirements behind an extra (markers that mention `extra`) are not installed.
        deps = [Requirement(r) for r in dist.requires or []]
        needed = [r for r in deps if not r.marker or r.marker.evaluate({"extra": ""})]
        found = problems(needed, pinned)
        assert not found, f"{name}=={version} needs: {'; '.join(found)}; {FIX}"
    if not checked:
        pytest.skip("no pinned package is installed at its pinned version: `make install` installs them")


def test_problems_names_a_missing_and_a_mismatched_pin() -> None:
    reqs = [Requirement("kopf>=1.45,<2"), Requirement("psutil>=5.9,<8"), Requirement("PyYAML>=6,<7"),
            Requirement("pywin32>=300; sys_platform == 'win32'")]
    pinned = {canonicalize_name("kopf"): Version("2.0"), canonicalize_name("pyyaml"): Version("6.0.4")}
    assert problems(reqs, pinned) == ["kopf==2.0 does not satisfy kopf<2,>=1.45", "psutil<8,>=5.9 is not pinned"]


def test_pins_rejects_a_range(tmp_path: Path) -> None:
    bad = tmp_path / "constraints.txt"
    bad.write_text("# header\nkopf==1.45.2\nkubernetes>=30\n")
    with pytest.raises(AssertionError, match=r"constraints.txt:3: 'kubernetes>=30' is not an exact pin"):
        pins(bad)
