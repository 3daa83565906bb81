#!/usr/bin/env bash
# Print the path of a promtool, Prometheus' rule checker, for the chart's alert tests
# (tests/chart/test_alerts.py).
#
# The promtool on PATH if there is one. Otherwise the one in Debian's `prometheus` package,
# fetched once with `apt-get download` (no root needed, nothing installed system-wide) and
# unpacked with `dpkg-deb -x` into the cache:
#
#   ${MEMWATCH_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/memwatch}/promtool/bin/promtool
#
# Exit status: 0 with the path on stdout; 3 when the package cannot be downloaded at all (no
# apt-get, no package list naming `prometheus`, no network), with the reason on stderr; any
# other failure names the command that failed and its line.
set -Eeuo pipefail
# Without this, a failure inside $(...) would not stop the script.
shopt -s inherit_errexit
on_err() {
    local rc=$?
    printf '[promtool] ERROR: `%s` exited %s at %s:%s\n' "$BASH_COMMAND" "$rc" "${BASH_SOURCE[1]:-$0}" "${BASH_LINENO[0]}" >&2
}
trap on_err ERR

log() { printf '[promtool] %s\n' "$*" >&2; }
# The package cannot be had here: say why, exit 3 (the tests tell this apart from a broken script).
unavailable() {
    log "CANNOT DOWNLOAD: $*"
    exit 3
}

if command -v promtool >/dev/null 2>&1; then
    command -v promtool
    exit 0
fi

CACHE=${MEMWATCH_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/memwatch}
DEST=$CACHE/promtool
PROMTOOL=$DEST/bin/promtool

if [[ -x $PROMTOOL ]] && "$PROMTOOL" --version >/dev/null 2>&1; then
    echo "$PROMTOOL"
    exit 0
fi

command -v apt-get >/dev/null 2>&1 || unavailable "no apt-get: not a Debian-based machine; put a promtool on PATH"
command -v dpkg-deb >/dev/null 2>&1 || unavailable "no dpkg-deb: not a Debian-based machine; put a promtool on PATH"

mkdir -p "$DEST"
TMP=$(mktemp -d "$DEST/download.XXXXXX")
cleanup() { rm -rf "$TMP"; }
trap cleanup EXIT

log "step 1/3: apt-get download prometheus (into $TMP)"
# An apt source without `prometheus`, or no network: nothing this script can mend (exit 3).
if ! (cd "$TMP" && apt-get download -q prometheus) >&2; then
    unavailable "\`apt-get download prometheus\` failed (see above): is there a Debian apt source, \`apt-get update\` done, and network?"
fi
debs=("$TMP"/prometheus_*.deb)
[[ -f ${debs[0]} ]] || { log "step 1/3: apt-get download left no prometheus_*.deb in $TMP"; exit 1; }

log "step 2/3: dpkg-deb -x ${debs[0]##*/}"
dpkg-deb -x "${debs[0]}" "$TMP/root"
[[ -x $TMP/root/usr/bin/promtool ]] || { log "step 2/3: ${debs[0]##*/} holds no usr/bin/promtool"; exit 1; }

log "step 3/3: check and install $PROMTOOL"
"$TMP/root/usr/bin/promtool" --version >&2
mkdir -p "$DEST/bin"
# Only promtool is kept (not the server); moved in whole so that a concurrent run never sees half a file.
mv "$TMP/root/usr/bin/promtool" "$TMP/promtool"
mv -f "$TMP/promtool" "$PROMTOOL"
echo "${debs[0]##*/}" > "$DEST/PACKAGE"
echo "$PROMTOOL"
