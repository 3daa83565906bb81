#!/usr/bin/env bash
# A real single-node Kubernetes cluster without Docker, for memwatch's e2e
# tests and benchmarks. See `usage` below and hack/cluster/README.md.
#
# Binaries come from Debian's own `kubernetes` source package (1.20.2), built
# once per machine into a cache outside the repository; etcd, containerd, runc
# and the CNI plugins come from Debian packages. Everything runs on loopback,
# one bridge this script creates and its pods' network namespaces.
set -Eeuo pipefail
# Without this, a failure inside $(...) would not stop the script.
shopt -s inherit_errexit
# A failing step never exits silently: name the command, its status and where.
# (-E carries the trap into functions, command substitutions and subshells.)
on_err() {
    local rc=$? i
    printf '[local-cluster] ERROR: `%s` exited %s at %s:%s' "$BASH_COMMAND" "$rc" "${BASH_SOURCE[1]:-$0}" "${BASH_LINENO[0]}" >&2
    # The last entry is the script itself ("main"), not a function.
    for ((i = 1; i < ${#FUNCNAME[@]} - 1; i++)); do printf ' in %s()' "${FUNCNAME[$i]}" >&2; done
    printf '\n' >&2
}
trap on_err ERR

HACK_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd "$HACK_DIR/.." && pwd)
CLUSTER_DIR=$HACK_DIR/cluster

K8S_VERSION=1.20.2
# Debian 12's source package of Kubernetes; Debian 13 gets it from bookworm.
K8S_DEB_SUITE=bookworm
CACHE=${MEMWATCH_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/memwatch}
K8S_CACHE=$CACHE/kubernetes-$K8S_VERSION
BIN=$K8S_CACHE/bin
K8S_COMPONENTS=(kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl)

ROOT=${MEMWATCH_CLUSTER_ROOT:-/var/lib/memwatch-cluster}
PIDS=$ROOT/pids
LOGS=$ROOT/logs
PKI=$ROOT/pki
KUBECONFIG_ADMIN=$ROOT/kubeconfig

# Network: one bridge of our own. Addresses picked to be unlikely to clash
# with a host's own networks (Docker uses 172.17/16, podman 10.88/16).
BRIDGE=${MEMWATCH_BRIDGE:-mw0}
POD_CIDR=10.244.0.0/24
NODE_IP=10.244.0.1            # the bridge's address: apiserver and kubelet bind here
SERVICE_CIDR=10.96.0.0/16
KUBERNETES_SVC_IP=10.96.0.1   # first IP of SERVICE_CIDR, named in the apiserver cert
NODE_NAME=node1
APISERVER_URL=https://$NODE_IP:6443
ETCD_URL=http://127.0.0.1:23790   # not 2379: leave a host etcd alone
CONTAINERD_SOCK=$ROOT/containerd/containerd.sock
PAUSE_IMAGE=localhost/memwatch-pause:3.4

# Audit log: the benchmarks count API requests from it.
AUDIT=${MEMWATCH_AUDIT:-1}

# Every process `up` starts, in start order (`status` lists them so).
COMPONENTS=(etcd kube-apiserver kube-controller-manager kube-scheduler containerd kubelet kube-proxy)

log() { printf '[local-cluster %3ss] %s\n' "$SECONDS" "$*" >&2; }
die() { printf '[local-cluster] ERROR: %s\n' "$*" >&2; exit 1; }

usage() {
    cat <<EOF
Usage: $0 <verb>

  check    exit 0 if this machine can run the cluster, else print
           "SKIPPED: local cluster cannot run here: <why>" and exit 3
  build    build Kubernetes $K8S_VERSION binaries and the pause image into
           $K8S_CACHE (seconds when cached)
  up       build if needed, then start etcd, the control plane, containerd,
           kubelet and kube-proxy; last line: export KUBECONFIG=...
  images   build memwatch-base, memwatch:dev (from ./Dockerfile) and
           memwatch-hog:dev and import them into the cluster's containerd
  status   each component with pid and alive/dead, node readiness;
           exit 0 if all up
  pid NAME print the pid of component NAME (exit 1 if it is not running)
  stop NAME [--kill]
           stop component NAME (TERM, or SIGKILL at once with --kill)
  start NAME
           start a stopped component with its usual arguments; waits until
           it answers
  restart NAME [--kill]
           stop, then start (the fault-injection suite uses these three on
           etcd, kube-apiserver and the kubelet)
  down     stop everything 'up' started and remove $ROOT

Environment:
  MEMWATCH_CACHE         build cache (default: \${XDG_CACHE_HOME:-\$HOME/.cache}/memwatch)
  MEMWATCH_CLUSTER_ROOT  run dir (default: /var/lib/memwatch-cluster)
  MEMWATCH_AUDIT=0       disable the apiserver audit log (\$ROOT/logs/audit.log)
  MEMWATCH_UP_TIMEOUT    seconds to wait for the node to be Ready (default 180)
EOF
}

# ---------------------------------------------------------------------------
# Host facts
# ---------------------------------------------------------------------------

# shellcheck source=/dev/null
os_codename() { (. /etc/os-release && echo "${VERSION_CODENAME:-}"); }

cgroup_v2() { [ "$(stat -fc %T /sys/fs/cgroup 2>/dev/null)" = cgroup2fs ]; }

# The kubelet's and runc's cgroup driver: cgroupfs on cgroup v1; systemd on
# cgroup v2 when systemd runs (it then owns the tree), else cgroupfs.
cgroup_driver() {
    if cgroup_v2 && [ -d /run/systemd/system ]; then echo systemd; else echo cgroupfs; fi
}

# The URI of the machine's Debian archive, read from its apt sources so that
# no registry host name is written into the repository.
debian_mirror() {
    local files=() uri
    shopt -s nullglob
    files=(/etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list)
    shopt -u nullglob
    [ -f /etc/apt/sources.list ] && files=(/etc/apt/sources.list "${files[@]}")
    [ ${#files[@]} -gt 0 ] || die "no apt sources found under /etc/apt"
    uri=$(awk -v suite="$(os_codename)" -f "$CLUSTER_DIR/apt-source-uri.awk" "${files[@]}")
    [ -n "$uri" ] || die "no apt source for suite '$(os_codename)' in ${files[*]}"
    echo "${uri%/}"
}

# ---------------------------------------------------------------------------
# check
# ---------------------------------------------------------------------------

check_reason() {
    [ "$(id -u)" = 0 ] || { echo "not root (needs to create bridges, mounts and cgroups)"; return; }
    if [ ! -r /etc/debian_version ] || ! command -v apt-get >/dev/null; then
        echo "not a Debian system with apt-get"; return
    fi
    [ "$(uname -m)" = x86_64 ] || { echo "architecture $(uname -m) is not x86_64"; return; }
    if cgroup_v2; then
        [ -w /sys/fs/cgroup/cgroup.procs ] || { echo "cgroup v2 hierarchy is not writable"; return; }
    else
        [ -w /sys/fs/cgroup/memory ] || { echo "cgroup v1 memory controller is not writable"; return; }
    fi
    [ -w /proc/sys/net/ipv4/ip_forward ] ||
        { echo "cannot configure networking (/proc/sys/net is read-only)"; return; }
}

cmd_check() {
    local why
    why=$(check_reason)
    if [ -n "$why" ]; then
        echo "SKIPPED: local cluster cannot run here: $why"
        exit 3
    fi
    echo "ok: this machine can run the local cluster"
}

# ---------------------------------------------------------------------------
# build
# ---------------------------------------------------------------------------

APT_UPDATED=0
apt_update_once() {
    [ "$APT_UPDATED" = 1 ] && return
    log "apt-get update"
    apt-get update -q >&2
    APT_UPDATED=1
}

# Installs Debian packages that are not installed yet (idempotent, quiet).
apt_install() {
    local missing=() p
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return
    apt_update_once
    log "apt-get install ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >&2
}

install_runtime_deps() {
    apt_install etcd-server containerd runc containernetworking-plugins iptables \
        conntrack openssl iproute2 podman debootstrap busybox-static gcc libc6-dev
}

# Adds apt sources for the bookworm suite (deb-src for the kubernetes source
# package; on other releases also deb, for Go 1.19), on the machine's mirror.
add_bookworm_sources() {
    local file=/etc/apt/sources.list.d/memwatch-bookworm.sources types="deb-src" mirror
    [ "$(os_codename)" = "$K8S_DEB_SUITE" ] || types="deb deb-src"
    mirror=$(debian_mirror)
    local want
    want=$(printf 'Types: %s\nURIs: %s\nSuites: %s\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
        "$types" "$mirror" "$K8S_DEB_SUITE")
    if [ "$(cat "$file" 2>/dev/null)" != "$want" ]; then
        log "adding $types $K8S_DEB_SUITE on $mirror to $file"
        printf '%s\n' "$want" >"$file"
        APT_UPDATED=0
    fi
    apt_update_once
}

# Echoes the GOROOT/bin to put first on PATH: Debian 12's own golang-go (Go
# 1.19), or on newer releases bookworm's golang-1.19 unpacked into the cache,
# since a much newer Go may not build Kubernetes 1.20.
go_bin_dir() {
    if [ "$(os_codename)" = "$K8S_DEB_SUITE" ]; then
        apt_install golang-go
        dirname "$(readlink -f "$(command -v go)")"
        return
    fi
    local goroot=$CACHE/go-1.19
    if [ ! -x "$goroot/usr/lib/go-1.19/bin/go" ]; then
        add_bookworm_sources
        local dl=$CACHE/go-1.19.debs
        rm -rf "$dl" "$goroot"; mkdir -p "$dl" "$goroot"
        (cd "$dl" && apt-get download -q "golang-1.19-go/$K8S_DEB_SUITE" "golang-1.19-src/$K8S_DEB_SUITE") >&2
        local deb
        for deb in "$dl"/*.deb; do dpkg -x "$deb" "$goroot"; done
        rm -rf "$dl"
    fi
    echo "$goroot/usr/lib/go-1.19/bin"
}

# Upstream fixes the binaries are built with, one <component>-<what>.patch each
# (hack/cluster/patches/README.md). A component is rebuilt when its patches change.
PATCH_DIR=$CLUSTER_DIR/patches

# The patches COMPONENT is built with, as one short hash ("none" without any).
patches_key() {
    local files=()
    shopt -s nullglob
    files=("$PATCH_DIR/$1"-*.patch)
    shopt -u nullglob
    if [ ${#files[@]} -eq 0 ]; then echo none; return; fi
    cat "${files[@]}" | sha256sum | cut -c1-16
}

# A component is cached when built, and built with the patches it has now.
component_cached() {
    [ -x "$BIN/$1" ] && [ "$(cat "$BIN/$1.patches" 2>/dev/null || echo none)" = "$(patches_key "$1")" ]
}

k8s_binaries_cached() {
    local c
    for c in "${K8S_COMPONENTS[@]}"; do component_cached "$c" || return 1; done
}

# Applies every patch to the source tree once (a patch already applied is left alone).
apply_patches() {
    local tree=$1 patch
    shopt -s nullglob
    for patch in "$PATCH_DIR"/*.patch; do
        if (cd "$tree" && patch -p1 -R --dry-run -s -f <"$patch" >/dev/null 2>&1); then continue; fi
        log "applying ${patch#"$REPO_DIR"/}"
        (cd "$tree" && patch -p1 -N -s <"$patch") >&2 || die "patch ${patch#"$REPO_DIR"/} does not apply to $tree"
    done
    shopt -u nullglob
}

# Downloads and unpacks Debian's kubernetes source package into the cache;
# echoes the source tree.
k8s_source_tree() {
    local src=$K8S_CACHE/src tree
    tree=""
    # The first run has no $src yet: find would fail and, under pipefail, end the script.
    [ -d "$src" ] && tree=$(find "$src" -mindepth 1 -maxdepth 1 -type d -name 'kubernetes-*' | head -n1)
    if [ -n "$tree" ] && [ -f "$tree/.memwatch-unpacked" ]; then echo "$tree"; return; fi
    add_bookworm_sources
    apt_install rsync make dpkg-dev
    rm -rf "$src"; mkdir -p "$src"
    log "downloading the kubernetes source package from $K8S_DEB_SUITE"
    (cd "$src" && apt-get source -q --download-only "kubernetes/$K8S_DEB_SUITE") >&2
    local orig=("$src"/kubernetes_*.orig.tar.*)
    [ -f "${orig[0]}" ] || die "apt-get source gave no kubernetes_*.orig.tar.* in $src"
    mkdir -p "$src/tree"
    tar -xf "${orig[0]}" -C "$src/tree"
    # The tarball's top directory name varies; normalise it.
    tree=$src/kubernetes-$K8S_VERSION
    mv "$(find "$src/tree" -mindepth 1 -maxdepth 1 -type d | head -n1)" "$tree"
    rmdir "$src/tree"
    touch "$tree/.memwatch-unpacked"
    echo "$tree"
}

# k8s_make TREE GOBIN COMPONENT...: GOPATH-style build, the way Debian's own rules do it.
k8s_make() {
    local tree=$1 gobin=$2 what=""
    shift 2
    local c
    for c in "$@"; do what+="cmd/$c "; done
    # Runs under `if !`, where errexit is off: chain explicitly.
    (
        cd "$tree" || exit 1
        export PATH=$gobin:$PATH GOROOT=${gobin%/bin} GOPATH=$tree/.go CGO_ENABLED=0
        mkdir -p .go/src/k8s.io &&
            ln -sfn ../../.. .go/src/k8s.io/kubernetes &&
            make WHAT="${what% }"
    )
}

build_k8s() {
    if k8s_binaries_cached; then
        log "kubernetes $K8S_VERSION binaries cached in $BIN"
        return
    fi
    local tree gobin start=$SECONDS c todo=()
    for c in "${K8S_COMPONENTS[@]}"; do component_cached "$c" || todo+=("$c"); done
    tree=$(k8s_source_tree)
    apt_install patch
    apply_patches "$tree"
    gobin=$(go_bin_dir)
    log "building ${todo[*]} $K8S_VERSION in $tree with $("$gobin/go" version) (about 12 min on 2 cores for all)"
    if ! k8s_make "$tree" "$gobin" "${todo[@]}" >&2; then
        # A failed run can leave a 0-byte generator in _output/ that makes the
        # next one fail with "Permission denied": start over once.
        log "build failed; removing _output and retrying once"
        rm -rf "$tree/_output"
        k8s_make "$tree" "$gobin" "${todo[@]}" >&2 || die "kubernetes build failed (see output above)"
    fi
    mkdir -p "$BIN"
    local out
    for c in "${todo[@]}"; do
        out=$(find "$tree/_output" -type f -name "$c" -perm -u+x | head -n1)
        [ -n "$out" ] || die "build produced no $c"
        install -m 0755 "$out" "$BIN/$c.tmp" && mv "$BIN/$c.tmp" "$BIN/$c"
        patches_key "$c" >"$BIN/$c.patches"
    done
    # The binaries are what we cache; the 2.6 GB of intermediate output is not.
    rm -rf "$tree/_output" "$tree/.go"
    log "built ${todo[*]} $K8S_VERSION into $BIN in $((SECONDS - start)) s"
}

# The pod sandbox image: the upstream pause program, static, in one layer.
build_pause_image() {
    local dir=$K8S_CACHE/pause tar=$K8S_CACHE/pause/pause.tar
    [ -s "$tar" ] && return
    local tree
    tree=$(k8s_source_tree)
    rm -rf "$dir"; mkdir -p "$dir/ctx"
    gcc -static -O2 -DVERSION=memwatch -o "$dir/ctx/pause" "$tree/build/pause/linux/pause.c"
    printf 'FROM scratch\nCOPY pause /pause\nUSER 65535:65535\nENTRYPOINT ["/pause"]\n' >"$dir/ctx/Containerfile"
    podman build -q -t "$PAUSE_IMAGE" -f "$dir/ctx/Containerfile" "$dir/ctx" >&2
    podman save --format docker-archive -o "$tar.tmp" "$PAUSE_IMAGE" >&2
    mv "$tar.tmp" "$tar"
    log "built pause image $PAUSE_IMAGE into $tar"
}

cmd_build() {
    install_runtime_deps
    build_k8s
    build_pause_image
}

# ---------------------------------------------------------------------------
# Processes: every component is started here, detached, with its pid in
# $PIDS/<name>.pid; a pid only counts if it still runs the same program
# (a stale pid file after a crash or reboot may name someone else's process).
# ---------------------------------------------------------------------------

# The executable each component runs, to recognise its pid.
component_exe() {
    case "$1" in
        etcd) command -v etcd ;;
        containerd) command -v containerd ;;
        *) echo "$BIN/$1" ;;
    esac
}

# The executable NAME was started from, as `start` recorded it: a cluster brought up with another
# MEMWATCH_CACHE runs other binaries, and `down` must still know them for its own (it once took
# such a cluster's root away and left its Kubernetes processes running).
started_exe() {
    cat "$PIDS/$1.exe" 2>/dev/null || readlink -f "$(component_exe "$1")"
}

component_pid() {
    local name=$1 pid exe
    pid=$(cat "$PIDS/$name.pid" 2>/dev/null) || return 1
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    exe=$(readlink "/proc/$pid/exe" 2>/dev/null) || return 1
    [ "${exe% (deleted)}" = "$(started_exe "$name")" ] || return 1
    echo "$pid"
}

# alive NAME: the component runs, or is still becoming itself: `start` runs it through setsid and
# nohup, which exec into it, and on a loaded machine /proc/PID/exe names one of them for seconds
# (read as "exited", that failed a cold `up` waiting for node1 Ready).
alive() {
    local pid exe
    component_pid "$1" >/dev/null && return 0
    pid=$(cat "$PIDS/$1.pid" 2>/dev/null) || return 1
    [[ "$pid" =~ ^[0-9]+$ ]] && running "$pid" || return 1
    exe=$(readlink "/proc/$pid/exe" 2>/dev/null) || return 1
    case "${exe##*/}" in setsid | nohup) return 0 ;; esac
    return 1
}

# start NAME ARGS...: runs $(component_exe NAME) ARGS... in its own session,
# logging to $LOGS/NAME.log, unless it already runs.
start() {
    local name=$1 exe; shift
    if alive "$name"; then
        log "$name already running (pid $(component_pid "$name"))"
        return
    fi
    log "starting $name"
    exe=$(component_exe "$name")
    readlink -f "$exe" >"$PIDS/$name.exe"
    # Not a process group leader (no job control here), so setsid execs in
    # place and $! is the component's own pid.
    setsid nohup "$exe" "$@" >>"$LOGS/$name.log" 2>&1 </dev/null &
    echo $! >"$PIDS/$name.pid"
}

# An exited process is gone or a zombie (the init here reaps slowly).
running() {
    local stat
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    stat=${stat##*) }
    [ "${stat%% *}" != Z ]
}

# stop NAME [GRACE]: TERM, wait up to GRACE seconds (20), then KILL; GRACE 0
# is a SIGKILL at once (a crash). Only our own pid.
stop() {
    local name=$1 grace=${2:-20} pid i
    if pid=$(component_pid "$name"); then
        log "stopping $name (pid $pid)"
        ((grace == 0)) || kill -TERM "$pid" 2>/dev/null || true
        for ((i = 0; i < grace * 10; i++)); do
            running "$pid" || break
            sleep 0.1
        done
        if running "$pid"; then
            ((grace == 0)) || log "$name did not exit on TERM; killing"
            kill -KILL "$pid" 2>/dev/null || true
            while running "$pid"; do sleep 0.1; done
        fi
    fi
    rm -f "$PIDS/$name.pid" "$PIDS/$name.exe"
}

# wait_for WHAT TIMEOUT COMPONENT CMD...: polls CMD until it succeeds; on
# timeout (or if COMPONENT dies) shows the tail of COMPONENT's log and fails.
wait_for() {
    local what=$1 timeout=$2 component=$3; shift 3
    local deadline=$((SECONDS + timeout))
    until "$@" >/dev/null 2>&1; do
        if ! alive "$component" || ((SECONDS >= deadline)); then
            tail -n 30 "$LOGS/$component.log" >&2 || true
            alive "$component" || die "$component exited while waiting for $what (log: $LOGS/$component.log)"
            die "timed out after ${timeout}s waiting for $what (log: $LOGS/$component.log)"
        fi
        sleep 0.5
    done
}

kubectl_admin() { "$BIN/kubectl" --kubeconfig "$KUBECONFIG_ADMIN" "$@"; }

ctr_() { ctr --address "$CONTAINERD_SOCK" -n k8s.io "$@"; }

# render TEMPLATE OUT: copies hack/cluster/TEMPLATE to OUT, replacing each
# @NAME@ with the value of the shell variable NAME.
render() {
    local text var
    text=$(<"$CLUSTER_DIR/$1")
    for var in $(grep -o '@[A-Z_]*@' "$CLUSTER_DIR/$1" | sort -u | tr -d @); do
        [ -n "${!var+x}" ] || die "template $1 uses unknown @$var@"
        text=${text//@$var@/${!var}}
    done
    printf '%s\n' "$text" >"$2"
}

# ---------------------------------------------------------------------------
# up: one function per component, each idempotent
# ---------------------------------------------------------------------------

# What `up` changes on the host outside $ROOT, recorded once (before the
# first component starts) so that `down` puts it back: the sysctls the
# kubelet, kube-proxy and the bridge plugin set, and the directories that the
# kubelet 1.20 and containerd 1.6 create whatever their root dirs (device
# plugin socket, pod logs, shim sockets).
HOST_SYSCTLS=(net/ipv4/ip_forward net/ipv4/conf/all/route_localnet vm/overcommit_memory
    vm/panic_on_oom kernel/panic kernel/panic_on_oops net/bridge/bridge-nf-call-iptables)
HOST_DIRS=(/var/lib/kubelet /var/log/pods /var/log/containers /run/containerd)

save_host_state() {
    local f=$ROOT/host-state k d
    [ -f "$f" ] && return
    {
        for k in "${HOST_SYSCTLS[@]}"; do
            if [ -r "/proc/sys/$k" ]; then echo "sysctl $k $(cat "/proc/sys/$k")"; fi
        done
        for d in "${HOST_DIRS[@]}"; do
            if [ ! -e "$d" ]; then echo "created $d"; fi
        done
    } >"$f.tmp"
    mv "$f.tmp" "$f"
}

restore_host_state() {
    local f=$ROOT/host-state kind k v
    [ -f "$f" ] || return 0
    while read -r kind k v; do
        case "$kind" in
            sysctl) [ "$(cat "/proc/sys/$k" 2>/dev/null)" = "$v" ] || echo "$v" >"/proc/sys/$k" 2>/dev/null || true ;;
            created) rm -rf --one-file-system "$k" ;;
        esac
    done <"$f"
}

# issue_cert NAME CN [O] [SANS]: a key and a certificate signed by our CA;
# with SANS a serving (and client) certificate, else a client one.
issue_cert() {
    local name=$1 cn=$2 org=${3:-} sans=${4:-} subj
    [ -s "$PKI/$name.crt" ] && return
    subj="/CN=$cn"
    [ -n "$org" ] && subj="/O=$org$subj"
    {
        echo "basicConstraints=CA:FALSE"
        echo "keyUsage=critical,digitalSignature,keyEncipherment"
        if [ -n "$sans" ]; then
            echo "extendedKeyUsage=serverAuth,clientAuth"
            echo "subjectAltName=$sans"
        else
            echo "extendedKeyUsage=clientAuth"
        fi
    } >"$PKI/$name.ext"
    openssl req -new -newkey rsa:2048 -nodes -keyout "$PKI/$name.key" -subj "$subj" \
        -out "$PKI/$name.csr" 2>/dev/null
    openssl x509 -req -in "$PKI/$name.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" -CAcreateserial \
        -days 3650 -extfile "$PKI/$name.ext" -out "$PKI/$name.crt" 2>/dev/null
    rm -f "$PKI/$name.csr" "$PKI/$name.ext"
}

# write_kubeconfig FILE CERT_NAME: a kubeconfig for $APISERVER_URL with the
# certificates embedded, so that it works when copied anywhere.
write_kubeconfig() {
    local file=$1 name=$2
    [ -s "$file" ] && return
    cat >"$file.tmp" <<KUBECONFIG
apiVersion: v1
kind: Config
clusters:
- name: memwatch-local
  cluster:
    server: $APISERVER_URL
    certificate-authority-data: $(base64 -w0 "$PKI/ca.crt")
users:
- name: $name
  user:
    client-certificate-data: $(base64 -w0 "$PKI/$name.crt")
    client-key-data: $(base64 -w0 "$PKI/$name.key")
contexts:
- name: memwatch-local
  context:
    cluster: memwatch-local
    user: $name
current-context: memwatch-local
KUBECONFIG
    chmod 600 "$file.tmp"
    mv "$file.tmp" "$file"
}

up_certs() {
    mkdir -p "$PKI"
    chmod 700 "$PKI"
    if [ ! -s "$PKI/ca.crt" ]; then
        log "creating certificates in $PKI"
        openssl req -x509 -new -newkey rsa:2048 -nodes -keyout "$PKI/ca.key" -days 3650 \
            -subj "/CN=memwatch-local-ca" -out "$PKI/ca.crt" 2>/dev/null
    fi
    issue_cert apiserver kube-apiserver "" \
        "IP:127.0.0.1,IP:$NODE_IP,IP:$KUBERNETES_SVC_IP,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
    issue_cert admin admin system:masters
    issue_cert apiserver-kubelet-client kube-apiserver-kubelet-client
    issue_cert controller-manager system:kube-controller-manager
    issue_cert scheduler system:kube-scheduler
    issue_cert kubelet "system:node:$NODE_NAME" system:nodes
    issue_cert kubelet-serving "system:node:$NODE_NAME" system:nodes "IP:$NODE_IP,DNS:$NODE_NAME"
    issue_cert kube-proxy system:kube-proxy
    if [ ! -s "$PKI/sa.pub" ]; then
        openssl genrsa -out "$PKI/sa.key" 2048 2>/dev/null
        openssl rsa -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub" 2>/dev/null
    fi
    write_kubeconfig "$KUBECONFIG_ADMIN" admin
    local c
    for c in controller-manager scheduler kubelet kube-proxy; do
        write_kubeconfig "$ROOT/$c.kubeconfig" "$c"
    done
}

up_etcd() {
    # The cluster is throwaway: etcd's data lives in memory, where fsync is
    # free (etcd 3.4 has no --unsafe-no-fsync) and API latency stays low.
    mkdir -p "$ROOT/etcd"
    if ! alive etcd && ! mountpoint -q "$ROOT/etcd"; then
        mount -t tmpfs -o size=4g,mode=0700 memwatch-etcd "$ROOT/etcd"
    fi
    start etcd --name memwatch --data-dir "$ROOT/etcd" \
        --listen-client-urls "$ETCD_URL" --advertise-client-urls "$ETCD_URL" \
        --listen-peer-urls http://127.0.0.1:23800 --initial-advertise-peer-urls http://127.0.0.1:23800 \
        --initial-cluster memwatch=http://127.0.0.1:23800 \
        --quota-backend-bytes=4294967296
    wait_for "etcd health" 30 etcd curl -fsS "$ETCD_URL/health"
}

# The node address must not be loopback (the kubelet rejects it, and `kubectl
# logs` / node proxy fail with "no preferred addresses"), so we create the CNI
# bridge ourselves and give it the pods' gateway address.
up_bridge() {
    if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
        log "creating bridge $BRIDGE ($NODE_IP/${POD_CIDR#*/})"
        ip link add "$BRIDGE" type bridge
    fi
    ip addr show dev "$BRIDGE" | grep -q "inet $NODE_IP/" ||
        ip addr add "$NODE_IP/${POD_CIDR#*/}" dev "$BRIDGE"
    ip link set "$BRIDGE" up
    # Pod -> service -> pod on the same bridge needs bridged traffic to pass
    # iptables (best effort: the module may be built in or unavailable).
    [ -e /proc/sys/net/bridge/bridge-nf-call-iptables ] || modprobe br_netfilter 2>/dev/null || true
    if [ -e /proc/sys/net/bridge/bridge-nf-call-iptables ]; then
        echo 1 >/proc/sys/net/bridge/bridge-nf-call-iptables
    fi
}

up_apiserver() {
    local audit=()
    if [ "$AUDIT" != 0 ]; then
        cp "$CLUSTER_DIR/audit-policy.yaml" "$ROOT/audit-policy.yaml"
        audit=(--audit-policy-file="$ROOT/audit-policy.yaml" --audit-log-path="$LOGS/audit.log"
            --audit-log-maxsize=1024 --audit-log-maxbackup=1)
    fi
    start kube-apiserver \
        --etcd-servers="$ETCD_URL" \
        --bind-address="$NODE_IP" --advertise-address="$NODE_IP" --secure-port=6443 --insecure-port=0 \
        --tls-cert-file="$PKI/apiserver.crt" --tls-private-key-file="$PKI/apiserver.key" \
        --client-ca-file="$PKI/ca.crt" \
        --kubelet-client-certificate="$PKI/apiserver-kubelet-client.crt" \
        --kubelet-client-key="$PKI/apiserver-kubelet-client.key" \
        --kubelet-preferred-address-types=InternalIP \
        --service-cluster-ip-range="$SERVICE_CIDR" \
        --service-account-issuer=https://kubernetes.default.svc.cluster.local \
        --service-account-key-file="$PKI/sa.pub" \
        --service-account-signing-key-file="$PKI/sa.key" \
        --authorization-mode=Node,RBAC \
        --enable-admission-plugins=NodeRestriction \
        --allow-privileged=true \
        "${audit[@]}"
    wait_for "kube-apiserver /readyz" 90 kube-apiserver kubectl_admin get --raw /readyz
    kubectl_admin apply -f "$CLUSTER_DIR/rbac.yaml" >/dev/null
}

up_controllers() {
    start kube-controller-manager \
        --kubeconfig="$ROOT/controller-manager.kubeconfig" \
        --authentication-kubeconfig="$ROOT/controller-manager.kubeconfig" \
        --authorization-kubeconfig="$ROOT/controller-manager.kubeconfig" \
        --leader-elect=false --bind-address=127.0.0.1 --port=0 \
        --use-service-account-credentials=true \
        --service-account-private-key-file="$PKI/sa.key" --root-ca-file="$PKI/ca.crt" \
        --cluster-signing-cert-file="$PKI/ca.crt" --cluster-signing-key-file="$PKI/ca.key" \
        --service-cluster-ip-range="$SERVICE_CIDR"
    start kube-scheduler \
        --kubeconfig="$ROOT/scheduler.kubeconfig" \
        --authentication-kubeconfig="$ROOT/scheduler.kubeconfig" \
        --authorization-kubeconfig="$ROOT/scheduler.kubeconfig" \
        --leader-elect=false --bind-address=127.0.0.1 --port=0
}

# shellcheck disable=SC2034 # SYSTEMD_CGROUP is read by render, through ${!var}
up_containerd() {
    local SYSTEMD_CGROUP=false
    if [ "$(cgroup_driver)" = systemd ]; then SYSTEMD_CGROUP=true; fi
    mkdir -p "$ROOT/containerd" "$ROOT/cni/net.d"
    render containerd.toml "$ROOT/containerd/config.toml"
    render cni.conflist "$ROOT/cni/net.d/10-memwatch.conflist"
    start containerd --config "$ROOT/containerd/config.toml"
    wait_for "containerd" 30 containerd ctr_ version
    ctr_ images ls -q | grep -qxF "$PAUSE_IMAGE" ||
        ctr_ images import "$K8S_CACHE/pause/pause.tar" >/dev/null
}

# MEMWATCH_CLUSTER_PODS_MEMORY (MiB, e.g. 2048; unset: off, the default): node
# allocatable enforced on pods, so that the kubelet gives kubepods a hard limit
# of that size (kubeReserved = MemTotal - it - systemReserved), for the node
# guard's e2e scenario and benchmark. Off by default: a 2 GiB kubepods would
# OOM-kill or refuse to schedule the other suites' larger pods.
pods_allocatable() {
    local pods=${MEMWATCH_CLUSTER_PODS_MEMORY:-} total system=256
    [ -n "$pods" ] || return 0
    [[ $pods =~ ^[0-9]+$ ]] || die "MEMWATCH_CLUSTER_PODS_MEMORY=$pods: give MiB, e.g. 2048"
    total=$(awk '/^MemTotal:/ {print int($2 / 1024)}' /proc/meminfo)
    ((total > pods + system + 512)) || die "MEMWATCH_CLUSTER_PODS_MEMORY=$pods MiB leaves too little of ${total} MiB"
    printf '%s\n' \
        "# MEMWATCH_CLUSTER_PODS_MEMORY=$pods: kubepods gets a ${pods} MiB hard limit." \
        'enforceNodeAllocatable: ["pods"]' \
        "systemReserved: {memory: \"${system}Mi\"}" \
        "kubeReserved: {memory: \"$((total - pods - system))Mi\"}" \
        '# MemoryPressure clears 5 s after the last eviction, not 5 min: races follow each other.' \
        'evictionPressureTransitionPeriod: 5s'
}

# shellcheck disable=SC2034 # CGROUP_DRIVER is read by render, through ${!var}
up_kubelet() {
    local CGROUP_DRIVER
    CGROUP_DRIVER=$(cgroup_driver)
    mkdir -p "$ROOT/kubelet"
    render kubelet-config.yaml "$ROOT/kubelet-config.yaml"
    pods_allocatable >>"$ROOT/kubelet-config.yaml"
    start kubelet \
        --config="$ROOT/kubelet-config.yaml" \
        --kubeconfig="$ROOT/kubelet.kubeconfig" \
        --container-runtime=remote --container-runtime-endpoint="unix://$CONTAINERD_SOCK" \
        --root-dir="$ROOT/kubelet" --cert-dir="$ROOT/kubelet/pki" \
        --hostname-override="$NODE_NAME" --node-ip="$NODE_IP"
}

up_kube_proxy() {
    # NodePorts only on the bridge address; conntrack sysctls left alone.
    start kube-proxy \
        --kubeconfig="$ROOT/kube-proxy.kubeconfig" \
        --hostname-override="$NODE_NAME" --bind-address="$NODE_IP" \
        --proxy-mode=iptables --cluster-cidr="$POD_CIDR" --nodeport-addresses="$NODE_IP/32" \
        --metrics-bind-address=127.0.0.1:10249 --healthz-bind-address=127.0.0.1:10256 \
        --conntrack-max-per-core=0 --conntrack-tcp-timeout-established=0 \
        --conntrack-tcp-timeout-close-wait=0
}

node_ready() {
    [ "$(kubectl_admin get node "$NODE_NAME" \
        -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" = True ]
}

cmd_up() {
    local why start=$SECONDS
    why=$(check_reason)
    [ -z "$why" ] || die "local cluster cannot run here: $why"
    if ! k8s_binaries_cached || [ ! -s "$K8S_CACHE/pause/pause.tar" ]; then cmd_build; fi
    mkdir -p "$PIDS" "$LOGS"
    save_host_state
    up_certs
    up_etcd
    up_bridge
    up_apiserver
    up_controllers
    up_containerd
    up_kubelet
    up_kube_proxy
    wait_for "node $NODE_NAME Ready" "${MEMWATCH_UP_TIMEOUT:-180}" kubelet node_ready
    # Pods cannot be created before the controller-manager has made the
    # namespace's default service account.
    wait_for "the default service account" 60 kube-controller-manager \
        kubectl_admin -n default get serviceaccount default
    log "cluster up in $((SECONDS - start)) s; logs in $LOGS; kubectl $K8S_VERSION: $BIN/kubectl"
    echo "export KUBECONFIG=$KUBECONFIG_ADMIN"
}

# ---------------------------------------------------------------------------
# status
# ---------------------------------------------------------------------------

cmd_status() {
    local c pid rc=0
    for c in "${COMPONENTS[@]}"; do
        if pid=$(component_pid "$c"); then
            printf '%-24s pid %-8s alive\n' "$c" "$pid"
        else
            printf '%-24s pid %-8s dead\n' "$c" "$(cat "$PIDS/$c.pid" 2>/dev/null || echo -)"
            rc=1
        fi
    done
    if alive kube-apiserver && node_ready; then
        printf '%-24s Ready\n' "node $NODE_NAME"
    else
        printf '%-24s not Ready\n' "node $NODE_NAME"
        rc=1
    fi
    echo "kubeconfig: $KUBECONFIG_ADMIN"
    echo "kubectl:    $BIN/kubectl"
    echo "logs:       $LOGS"
    return "$rc"
}

# ---------------------------------------------------------------------------
# down: only what `up` made, safe when nothing is up
# ---------------------------------------------------------------------------

# The kubelet's pod cgroup trees (one per v1 controller, or the v2 one).
kubepods_cgroups() {
    local cg
    for cg in /sys/fs/cgroup/*/kubepods /sys/fs/cgroup/kubepods /sys/fs/cgroup/kubepods.slice; do
        if [ -d "$cg" ]; then echo "$cg"; fi
    done
}

# Kills every pod process: through containerd while it runs, then whatever
# is left in the kubepods cgroups our kubelet made (after a crash).
stop_pods() {
    local id cg pid
    if alive containerd; then
        for id in $(ctr_ tasks ls -q 2>/dev/null); do
            ctr_ tasks kill -s SIGKILL "$id" >/dev/null 2>&1 || true
        done
        for id in $(ctr_ tasks ls -q 2>/dev/null); do
            ctr_ tasks delete -f "$id" >/dev/null 2>&1 || true
        done
    fi
    for cg in $(kubepods_cgroups); do
        { find "$cg" -name cgroup.procs -exec cat {} + 2>/dev/null || true; } | sort -u |
            while read -r pid; do kill -KILL "$pid" 2>/dev/null || true; done
    done
}

# Kills containerd shims left serving our containerd (their command line
# names our socket), e.g. after containerd itself died.
kill_shims() {
    local d exe args
    for d in /proc/[0-9]*; do
        exe=$(readlink "$d/exe" 2>/dev/null) || continue
        [[ "${exe##*/}" == containerd-shim* ]] || continue
        args=$(tr '\0' ' ' 2>/dev/null <"$d/cmdline") || continue
        if [[ " $args" == *" -address $CONTAINERD_SOCK "* ]]; then
            log "killing leftover containerd shim (pid ${d#/proc/})"
            kill -KILL "${d#/proc/}" 2>/dev/null || true
        fi
    done
}

# Unmounts everything under DIR, deepest first (under $ROOT: pod volumes,
# container root filesystems, sandbox shm, network namespaces).
unmount_under() {
    local m
    awk -v dir="$1/" 'index($5, dir) == 1 { print $5 }' /proc/self/mountinfo | sort -r |
        while read -r m; do
            umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || log "could not unmount $m"
        done
}

# Removes the (now empty) kubepods cgroups the kubelet created, leaves first.
remove_cgroups() {
    local cg
    for cg in $(kubepods_cgroups); do
        find "$cg" -depth -type d -exec rmdir {} + 2>/dev/null || true
    done
}

# kube-proxy --cleanup removes its own chains; the kubelet's KUBE-* utility
# chains, and masquerade chains of the bridge plugin (tagged with our network
# name, should ipMasq ever be turned on), are removed here.
cleanup_iptables() {
    if [ -x "$BIN/kube-proxy" ]; then "$BIN/kube-proxy" --cleanup >/dev/null 2>&1 || true; fi
    local ipt table chains chain rule
    for ipt in iptables ip6tables; do
        command -v "$ipt" >/dev/null || continue
        for table in filter nat mangle; do
            chains=$("$ipt-save" -t "$table" 2>/dev/null | awk '
                /^:KUBE-/ { print substr($1, 2) }
                /^-A CNI-/ && /name: \\"memwatch\\"/ { print $2 }' | sort -u) || true
            [ -n "$chains" ] || continue
            # First the jumps into those chains, then the chains themselves.
            for chain in $chains; do
                "$ipt-save" -t "$table" | { grep -E -- "^-A [A-Za-z0-9_-]+ .*-j $chain( |\$)" || true; } |
                    while read -r rule; do
                        eval "\"\$ipt\" -t \"\$table\" -D ${rule#-A }" 2>/dev/null || true
                    done
            done
            for chain in $chains; do "$ipt" -t "$table" -F "$chain" 2>/dev/null || true; done
            for chain in $chains; do "$ipt" -t "$table" -X "$chain" 2>/dev/null || true; done
        done
    done
}

cmd_down() {
    [ "$(id -u)" = 0 ] || die "down must run as root"
    # Control loops first, so that nothing restarts the pods we kill.
    stop kube-proxy
    stop kubelet
    stop kube-controller-manager
    stop kube-scheduler
    stop_pods
    stop containerd
    kill_shims
    # Its graceful shutdown waits up to 60 s for clients' open watches; its
    # state goes away with etcd's anyway.
    stop kube-apiserver 3
    stop etcd
    unmount_under "$ROOT"
    remove_cgroups
    if ip link show "$BRIDGE" >/dev/null 2>&1; then
        log "deleting bridge $BRIDGE"
        ip link del "$BRIDGE"
    fi
    if [ -d "$ROOT" ]; then cleanup_iptables; fi
    restore_host_state
    # --one-file-system: never follow a mount we failed to remove.
    rm -rf --one-file-system "$ROOT"
    log "down: nothing of the local cluster is left"
}

# ---------------------------------------------------------------------------
# images: built with podman, imported into the cluster's containerd (there is
# no registry; pods use imagePullPolicy: Never)
# ---------------------------------------------------------------------------

IMAGES_CACHE=$CACHE/images
BASE_IMAGE=localhost/memwatch-base:bookworm
BASE_PACKAGES=python3,python3-venv,ca-certificates
PROJECT_IMAGE=docker.io/library/memwatch:dev
HOG_IMAGE=docker.io/library/memwatch-hog:dev

# The base image: a minimal Debian bookworm with Debian's python3, built once
# per machine. Keyed by its recipe, so that changing the recipe rebuilds it.
build_base_image() {
    local key tar rootfs mirror
    key=$(printf '%s\n' "$K8S_DEB_SUITE" minbase "$BASE_PACKAGES" v1 | sha256sum | cut -c1-12)
    tar=$IMAGES_CACHE/memwatch-base-$key.tar
    if [ "$(podman image inspect -f '{{index .Labels "io.memwatch.base-key"}}' "$BASE_IMAGE" 2>/dev/null)" = "$key" ]; then
        log "base image $BASE_IMAGE is up to date"
    elif [ -s "$tar" ]; then
        podman load -q -i "$tar" >&2
    else
        mirror=$(debian_mirror)
        rootfs=$IMAGES_CACHE/rootfs.tmp
        unmount_under "$rootfs"
        rm -rf --one-file-system "$rootfs"
        log "debootstrap $K8S_DEB_SUITE ($BASE_PACKAGES) from $mirror (about 2 min)"
        debootstrap --variant=minbase --include="$BASE_PACKAGES" "$K8S_DEB_SUITE" "$rootfs" "$mirror" \
            >"$IMAGES_CACHE/debootstrap.log" 2>&1 ||
            { unmount_under "$rootfs"; tail -n 20 "$IMAGES_CACHE/debootstrap.log" >&2; die "debootstrap failed"; }
        unmount_under "$rootfs"
        # Keep it small: no package lists, caches, docs or manuals.
        rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/* "$rootfs"/var/log/* \
            "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/*
        tar -C "$rootfs" -c . | podman import -q \
            --change "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
            --change "LABEL io.memwatch.base-key=$key" \
            --change 'CMD ["/bin/bash"]' - "$BASE_IMAGE" >&2
        rm -rf --one-file-system "$rootfs"
        podman save -q --format docker-archive -o "$tar.tmp" "$BASE_IMAGE" && mv "$tar.tmp" "$tar"
        log "built $BASE_IMAGE ($(du -h "$tar" | cut -f1)), cached in $tar"
    fi
}

# The project image, from the repository's own Dockerfile (the one users
# build), on our base image. pip inside the build sees this machine's pip
# configuration through mounts and a build secret, never through files in
# the repository.
build_project_image() {
    local pipdir args mounts=()
    pipdir=$(mktemp -d)
    # Not `< <(...)`: a failure there would go unnoticed.
    args=$(python3 "$CLUSTER_DIR/pip_passthrough.py" "$pipdir")
    [ -z "$args" ] || mapfile -t mounts <<<"$args"
    log "building $PROJECT_IMAGE from $REPO_DIR/Dockerfile"
    podman build --network host "${mounts[@]}" --build-arg BASE_IMAGE="$BASE_IMAGE" \
        -t "$PROJECT_IMAGE" -f "$REPO_DIR/Dockerfile" "$REPO_DIR" >"$IMAGES_CACHE/memwatch-build.log" 2>&1 ||
        { rm -rf "$pipdir"; tail -n 30 "$IMAGES_CACHE/memwatch-build.log" >&2; die "podman build of $PROJECT_IMAGE failed (log: $IMAGES_CACHE/memwatch-build.log)"; }
    rm -rf "$pipdir"
}

# The memory hog: one layer with the static hog at /hog, and a static busybox
# as /bin/sh for `kubectl exec`.
build_hog_image() {
    local ctx=$IMAGES_CACHE/hog
    rm -rf "$ctx"; mkdir -p "$ctx/rootfs/bin"
    gcc -static -O2 -Wall -o "$ctx/rootfs/hog" "$REPO_DIR/tests/images/hog/hog.c"
    cp /bin/busybox "$ctx/rootfs/bin/busybox"
    ln -s busybox "$ctx/rootfs/bin/sh"
    podman build -q -t "$HOG_IMAGE" -f "$REPO_DIR/tests/images/hog/Containerfile" "$ctx" >/dev/null
}

# Saves an image from podman and imports it into the cluster's containerd.
import_image() {
    local image=$1 tar
    tar=$IMAGES_CACHE/$(basename "${image%%:*}").tar
    podman save -q --format docker-archive -o "$tar" "$image" >&2
    ctr_ images import "$tar" >/dev/null
    rm -f "$tar"
    log "imported $image"
}

cmd_images() {
    alive containerd || die "the cluster's containerd is not running: run '$0 up' first"
    local start=$SECONDS
    apt_install podman debootstrap busybox-static gcc libc6-dev
    mkdir -p "$IMAGES_CACHE"
    build_hog_image
    import_image "$HOG_IMAGE"
    if [ -f "$REPO_DIR/Dockerfile" ]; then
        build_base_image
        build_project_image
        import_image "$PROJECT_IMAGE"
    else
        log "################################################################"
        log "## SKIPPED $PROJECT_IMAGE: no Dockerfile in $REPO_DIR"
        log "################################################################"
    fi
    log "images ready in $((SECONDS - start)) s"
    ctr_ images ls -q | grep -E '^docker.io/library/memwatch' >&2 || true
}

# ---------------------------------------------------------------------------
# pid / restart: single components, for fault injection
# ---------------------------------------------------------------------------

known_component() {
    local c
    for c in "${COMPONENTS[@]}"; do [ "$c" = "$1" ] && return 0; done
    die "unknown component '$1' (one of: ${COMPONENTS[*]})"
}

cmd_pid() {
    [ $# -eq 1 ] || die "usage: $0 pid NAME"
    known_component "$1"
    component_pid "$1" || die "$1 is not running (pid file $PIDS/$1.pid)"
}

cmd_stop() {
    local name=${1:-} how=${2:-}
    [ -n "$name" ] && { [ -z "$how" ] || [ "$how" = --kill ]; } || die "usage: $0 stop NAME [--kill]"
    known_component "$name"
    [ -d "$PIDS" ] || die "no cluster in $ROOT (run: $0 up)"
    if [ "$how" = --kill ]; then stop "$name" 0; else stop "$name"; fi
}

cmd_start() {
    local name=${1:-}
    [ $# -eq 1 ] || die "usage: $0 start NAME"
    known_component "$name"
    [ -d "$PIDS" ] || die "no cluster in $ROOT (run: $0 up)"
    case "$name" in
        etcd) up_etcd ;;
        kube-apiserver) up_apiserver ;;
        kube-controller-manager | kube-scheduler) up_controllers ;;
        containerd) up_containerd ;;
        kubelet) up_kubelet; wait_for "node $NODE_NAME Ready" "${MEMWATCH_UP_TIMEOUT:-180}" kubelet node_ready ;;
        kube-proxy) up_kube_proxy ;;
    esac
    log "$name running (pid $(component_pid "$name"))"
}

cmd_restart() {
    cmd_stop "$@"
    cmd_start "$1"
}

# ---------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------

main() {
    local verb=${1:-}
    case "$verb" in
        check) cmd_check ;;
        build) cmd_build ;;
        up) cmd_up ;;
        images) cmd_images ;;
        # Exit 1 is its answer ("not all up"), not an error to report.
        status) cmd_status || exit ;;
        pid) shift; cmd_pid "$@" ;;
        stop) shift; cmd_stop "$@" ;;
        start) shift; cmd_start "$@" ;;
        restart) shift; cmd_restart "$@" ;;
        down) cmd_down ;;
        -h|--help|help) usage ;;
        *) usage >&2; exit 2 ;;
    esac
}

main "$@"
