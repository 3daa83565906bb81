"""`memwatch status --watch` as a terminal program: run in a real terminal (tmux, on a private
server), against the fake API server, with the screen captured as a person would see it.

It checks what a person sees: the rows are redrawn in place (one header on the screen and in the
scrollback, values that change between two captures), coloured with a headroom bar, the growth
rate and time to cross fitted from successive reads, and Ctrl-C leaves a clean screen and exit
code 0, the cursor shown again.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from memwatch import status
from memwatch.quantity import format_bytes

from .fakeapi import FakeApiServer, pod_metrics, write_kubeconfig
from .fakes import MI, iso, make_pod

TMUX = shutil.which("tmux")
COLUMNS, LINES = 200, 30
LIMIT = 512 * MI
FIRST, SECOND = 400 * MI, 470 * MI  # 22% of the limit left (yellow), then 8% (red)
STEP = 10.0  # seconds between the two samples
FAR = 100 * MI


class Tmux:
    """One private tmux server (its own socket): never the user's."""

    def __init__(self, socket: Path, env: dict[str, str]) -> None:
        assert TMUX is not None
        self.base = [TMUX, "-S", str(socket), "-f", "/dev/null"]
        self.env = env

    def __call__(self, *args: str) -> str:
        proc = subprocess.run([*self.base, *args], capture_output=True, text=True, timeout=30, env=self.env)
        assert proc.returncode == 0, f"tmux {' '.join(args)}: {proc.stderr}"
        return proc.stdout

    def screen(self, escapes: bool = False, history: bool = False) -> str:
        return self("capture-pane", "-p", "-t", "st", *(["-e"] if escapes else []), *(["-S", "-"] if history else []))

    def wait(self, what: str, check: Callable[[str], bool], timeout: float = 30) -> str:
        deadline = time.monotonic() + timeout
        while True:
            screen = self.screen()
            if check(screen):
                return screen
            assert time.monotonic() < deadline, f"timed out waiting for {what}; the screen:\n{screen}"
            time.sleep(0.1)


@pytest.fixture
def tmux(tmp_path: Path) -> Iterator[Tmux]:
    if TMUX is None:
        pytest.skip("SKIPPED LOUDLY: tmux is not installed: `memwatch status --watch` is NOT checked on a terminal")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MEMWATCH_", "TMUX")) and k not in ("KUBECONFIG", "NO_COLOR")}
    env["TERM"] = "xterm-256color"  # the terminal tmux runs in (the tests may have none)
    t = Tmux(tmp_path / "tmux.sock", env)
    try:
        yield t
    finally:
        subprocess.run([*t.base, "kill-server"], capture_output=True, timeout=30, env=env)


def _row(screen: str, pod: str) -> str:
    return next((line for line in screen.splitlines() if line.startswith(pod + " ")), "")


def _plain(line: str) -> str:
    return re.sub(r"\x1b\[[0-9;]*m", "", line)


def _cells(screen: str, pod: str) -> dict[str, str]:
    """A row by column (every cell has a value, and none holds two spaces in a row)."""
    return dict(zip(status.headers(wide=False), re.split(r"\s{2,}", _row(screen, pod)), strict=True))


@pytest.mark.timeout(120)
def test_watch_redraws_in_place_in_a_terminal(api: FakeApiServer, tmp_path: Path, tmux: Tmux) -> None:
    api.pods = [make_pod("near", "shop", annotations={"memwatch.io/limit": "512Mi"}),
                make_pod("far", "shop", annotations={"memwatch.io/limit": "512Mi"})]
    first_at = time.time() - 2 * STEP

    def serve(used: int, at: float) -> None:
        api.pod_metrics = [pod_metrics("shop", "near", iso(at), {"app": f"{used // MI}Mi"}),
                           pod_metrics("shop", "far", iso(at), {"app": f"{FAR // MI}Mi"})]

    serve(FIRST, first_at)
    kubeconfig = write_kubeconfig(tmp_path, api.url)
    raw = tmp_path / "raw"
    command = shlex.join([sys.executable, "-m", "memwatch", "status", "--kubeconfig", str(kubeconfig), "--watch",
                          "--interval", "0.3s"])
    # A shell in front says the exit code on the screen (tmux's own #{pane_dead_status} can lag far
    # behind the pane's end); its INT trap lets it outlive the Ctrl-C to do so (the command's own
    # SIGINT handling is the default: a trap's action is reset in the child).
    shell = f'trap true INT; {command}; echo "[memwatch exited: $?]"'
    tmux("start-server", ";", "set-option", "-g", "remain-on-exit", "on", ";",
         "new-session", "-d", "-s", "st", "-x", str(COLUMNS), "-y", str(LINES), "--", "sh", "-c", shell, ";",
         "pipe-pane", "-t", "st", "-o", f"cat > {raw}")

    one = tmux.wait("the first read", lambda s: "400Mi" in _row(s, "shop/near"))
    lines = one.splitlines()
    assert lines[0].startswith("Every 0.3s: memwatch status (namespace shop; source metrics-api)"), one
    assert re.split(r"\s{2,}", lines[2]) == status.headers(wide=False)
    near = _cells(one, "shop/near")
    filled = round(FIRST / LIMIT * status.BAR_WIDTH)
    bar = "█" * filled + "░" * (status.BAR_WIDTH - filled)
    assert (near["WORKING SET"], near["WATCH LIMIT"], near["ACTION"]) == (format_bytes(FIRST), "512Mi", "evict")
    assert near["HEADROOM"] == f"{bar} {100 * (LIMIT - FIRST) / LIMIT:.0f}% {format_bytes(LIMIT - FIRST)}"
    assert (near["GROWTH"], near["CROSSES IN"]) == ("-", "-")  # one sample: no rate, no projection

    serve(SECOND, first_at + STEP)  # a newer sample: the next read redraws the row
    two = tmux.wait("the rows to change", lambda s: format_bytes(SECOND) in _row(s, "shop/near")
                    and "0B/s" in _row(s, "shop/far"))  # the whole frame redrawn (far comes second)
    near = _cells(two, "shop/near")
    rate = (SECOND - FIRST) / STEP
    assert near["GROWTH"] == f"+{format_bytes(rate)}/s"  # fitted from the two reads
    assert near["CROSSES IN"] == status.short_duration((LIMIT - SECOND) / rate)
    assert near["HEADROOM"].endswith(f"{100 * (LIMIT - SECOND) / LIMIT:.0f}% {format_bytes(LIMIT - SECOND)}")
    far = _cells(two, "shop/far")
    assert (far["WORKING SET"], far["GROWTH"], far["CROSSES IN"]) == (format_bytes(FAR), "0B/s", "-")  # flat
    # In place: one title and one header on the screen, and none pushed into the scrollback.
    for screen in (two, tmux.screen(history=True)):
        assert screen.count("Every 0.3s:") == 1 and screen.count("WORKING SET") == 1, screen
    assert two.splitlines()[0].startswith("Every 0.3s:")

    coloured = {_plain(line).split(" ")[0]: line for line in tmux.screen(escapes=True).splitlines()}
    assert "\x1b[31m" in coloured["shop/near"] and "█" in coloured["shop/near"]  # 8% left: red
    assert "\x1b[32m" in coloured["shop/far"]  # 80% left: green
    assert "\x1b[1m" in coloured["POD"]  # the header is bold

    tmux("send-keys", "-t", "st", "C-c")
    final = tmux.wait("Ctrl-C to end it", lambda s: "[memwatch exited:" in s, timeout=20)
    assert "[memwatch exited: 0]" in final, final  # not 130: a clean exit, not a death by SIGINT
    final = tmux.screen(history=True)
    assert "Traceback" not in final and "KeyboardInterrupt" not in final
    assert "shop/near" in final  # the last table stays on the screen
    out = raw.read_bytes().decode()
    assert out.count(status.HOME) >= 2 and out.count(status.CLEAR_SCREEN) <= 1  # redrawn, not cleared each time
    assert status.HIDE_CURSOR in out and out.rindex(status.SHOW_CURSOR) > out.rindex(status.HOME)  # shown again
