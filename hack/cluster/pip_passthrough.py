#!/usr/bin/env python3
"""Pass this machine's pip configuration through to `podman build`.

Reads the effective configuration (`pip config list`: files, then PIP_*
environment variables, which win), writes it as a pip.conf into OUT_DIR and
prints podman build arguments, one per line: the pip.conf mounted at
/etc/pip.conf (read by every pip in every RUN step, never committed to the
image), each local path it refers to (find-links directories, file://
indexes, constraint files) read-only at the same path, and the CA bundle as
the Dockerfile's `pip_cert` build secret. Nothing host-specific is ever
written into the repository.

Usage: pip_passthrough.py OUT_DIR
"""

from __future__ import annotations

import os
import subprocess
import sys
from urllib.parse import urlparse

# Settings whose values name files or directories on this machine.
PATH_KEYS = {"find-links", "index-url", "extra-index-url", "client-cert", "constraint"}
# The Dockerfile takes pip's CA bundle as this build secret.
CERT_SECRET = "pip_cert"


def effective_config() -> dict[str, str]:
    """Return pip's effective settings, key -> value, later sources winning."""
    try:
        out = subprocess.run(
            [sys.executable, "-m", "pip", "config", "list"],
            check=True, capture_output=True, text=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError) as error:
        # The build goes on with pip's defaults; say so, or a later pip failure is a puzzle.
        detail = (getattr(error, "stderr", "") or str(error)).strip()
        print(f"pip_passthrough.py: `pip config list` failed, building with pip's defaults: {detail}",
              file=sys.stderr)
        return {}
    files: dict[str, str] = {}
    env: dict[str, str] = {}
    for line in out.splitlines():
        scoped, sep, value = line.partition("=")
        if not sep:
            continue
        scope, _, key = scoped.rpartition(".")
        value = value.strip().strip("'")
        (env if scope == ":env:" else files)[key] = value
    return {**files, **env}


def local_paths(key: str, value: str) -> list[str]:
    """Return the local paths a setting refers to, as they must be mounted."""
    if key not in PATH_KEYS:
        return []
    paths = []
    for token in value.split():
        if token.startswith("file://"):
            path = urlparse(token).path.rstrip("/")
            # A PEP 503 index links to its files relative to the index root.
            paths.append(os.path.dirname(path) if path.endswith("/simple") else path)
        elif token.startswith("/"):
            paths.append(token)
    return [p for p in paths if os.path.exists(p)]


def main() -> int:
    if len(sys.argv) != 2 or not os.path.isdir(sys.argv[1]):
        print(f"usage: {sys.argv[0]} OUT_DIR (an existing directory)", file=sys.stderr)
        return 2
    out_dir = sys.argv[1]
    config = effective_config()
    cert = config.pop("cert", "")
    if os.path.isfile(cert):
        print(f"--secret=id={CERT_SECRET},src={cert}")
    conf = os.path.join(out_dir, "pip.conf")
    with open(conf, "w", encoding="utf-8") as f:
        f.write("[global]\n")
        for key, value in sorted(config.items()):
            f.write(f"{key} = {value}\n")
    print(f"--volume={conf}:/etc/pip.conf:ro")
    mounts = sorted({p for key, value in config.items() for p in local_paths(key, value)})
    for path in mounts:
        print(f"--volume={path}:{path}:ro")
    return 0


if __name__ == "__main__":
    sys.exit(main())
