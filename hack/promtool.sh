#!/usr/bin/env bash
# Print the path of a promtool, Prometheus' rule checker, for the chart's alert tests
# (tests/chart/test_alerts.py); with --prometheus, the path of the Prometheus server instead, for
# the tests that scrape real memwatch processes (tests/chart/test_prometheus_scrape.py) and the
# release on the local cluster (tests/e2e/test_prometheus_cluster.py).
#
#   hack/promtool.sh                 promtool
#   hack/promtool.sh --prometheus    prometheus
#
# The one on PATH if there is one. Otherwise the one in Debian's `prometheus` package (which holds
# both), fetched with `apt-get download` (no root needed, nothing installed system-wide) and
# unpacked with `dpkg-deb -x` into the cache, once for each of the two:
#
#   ${MEMWATCH_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/memwatch}/promtool/bin/promtool
#   ${MEMWATCH_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/memwatch}/promtool/bin/prometheus
#
# Exit status: 0 with the path on stdout; 3 when the package cannot be downloaded at all (no
# apt-get, no package list naming `prometheus`, no network), with the reason on stderr; 2 for an
# unknown argument; any other failure names the command that failed and its line.
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

# Which of the package's programs: promtool (the default) or the server.
TOOL=promtool
case $# in
    0) ;;
    1) [[ $1 == --prometheus ]] || { log "unknown argument '$1' (usage: $0 [--prometheus])"; exit 2; }
       TOOL=prometheus ;;
    *) log "too many arguments (usage: $0 [--prometheus])"; exit 2 ;;
esac

if command -v "$TOOL" >/dev/null 2>&1; then
    command -v "$TOOL"
    exit 0
fi

CACHE=${MEMWATCH_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/memwatch}
DEST=$CACHE/promtool
PROGRAM=$DEST/bin/$TOOL

if [[ -x $PROGRAM ]] && "$PROGRAM" --version >/dev/null 2>&1; then
    echo "$PROGRAM"
    exit 0
fi

command -v apt-get >/dev/null 2>&1 || unavailable "no apt-get: not a Debian-based machine; put a $TOOL on PATH"
command -v dpkg-deb >/dev/null 2>&1 || unavailable "no dpkg-deb: not a Debian-based machine; put a $TOOL on PATH"

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
[[ -x $TMP/root/usr/bin/$TOOL ]] || { log "step 2/3: ${debs[0]##*/} holds no usr/bin/$TOOL"; exit 1; }

log "step 3/3: check and install $PROGRAM"
"$TMP/root/usr/bin/$TOOL" --version >&2
mkdir -p "$DEST/bin"
# Only the program asked for is kept (the server is large, and the alert tests need only promtool);
# moved in whole so that a concurrent run never sees half a file.
mv "$TMP/root/usr/bin/$TOOL" "$TMP/$TOOL"
mv -f "$TMP/$TOOL" "$PROGRAM"
echo "${debs[0]##*/}" > "$DEST/PACKAGE"
echo "$PROGRAM"
