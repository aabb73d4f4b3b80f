#!/usr/bin/env bash
# The system packages `make run`, `make test` and .ci/run need: the real servers the lab and
# the tests start themselves (PostgreSQL, Redis, Prometheus, Alertmanager, a Docker engine,
# a static busybox for the test images), what a real node needs beside containerd (the CNI plugins,
# iptables, iproute2, conntrack), and Go to build the control plane and the node.
#
# Installs what is missing with apt on Debian/Ubuntu, as root or through sudo; anywhere else
# (or without root and sudo) it stops with one line naming what is missing and how to get it.
# When everything is there it prints nothing and costs a few milliseconds.
set -euo pipefail

# Debian package -> a file that package puts there (checked first, so non-Debian hosts
# that have the servers some other way pass too)
declare -A provides=(
    [openssl]=openssl
    [ca-certificates]=/etc/ssl/certs/ca-certificates.crt
    [make]=make
    [git]=git
    [postgresql]="/usr/lib/postgresql/*/bin/initdb"
    [postgresql-contrib]="/usr/share/postgresql/*/extension/pg_stat_statements.control"
    [redis-server]=redis-server
    [prometheus]=prometheus
    [prometheus-alertmanager]=prometheus-alertmanager
    [docker.io]=dockerd
    [busybox-static]=/bin/busybox
    # the real node (lab/runbook_lab/node.py): containerd and runc come with docker.io
    [containernetworking-plugins]=/usr/lib/cni/bridge
    [iptables]=iptables
    [iproute2]=ip
    [conntrack]=conntrack
)
GO_MIN=1.25

have() {
    local probe=$1 path
    if [[ $probe == /* ]]; then
        for path in $probe; do [ -e "$path" ] && return 0; done
        return 1
    fi
    command -v "$probe" >/dev/null 2>&1
}

mapfile -t missing < <(for pkg in "${!provides[@]}"; do have "${provides[$pkg]}" || echo "$pkg"; done | sort)

go_ok() {
    command -v go >/dev/null 2>&1 || return 1
    local v
    v=$(go env GOVERSION 2>/dev/null) || return 1
    v=${v#go}
    # the wrapper modules' go.mod lines make a Go >= 1.21 fetch the toolchain they name
    # from the Go module proxy by itself (GOTOOLCHAIN=auto), so 1.21 is enough to start
    [ "$(printf '%s\n' "1.21" "$v" | sort -V | head -1)" = "1.21" ]
}
need_go=""
go_ok || need_go=golang-go

[ ${#missing[@]} -eq 0 ] && [ -z "$need_go" ] && exit 0

wanted=("${missing[@]}" ${need_go:+"$need_go"})
if [ -r /etc/debian_version ] && command -v apt-get >/dev/null 2>&1; then
    if [ "$(id -u)" -eq 0 ]; then
        sudo=()
    elif command -v sudo >/dev/null 2>&1; then
        sudo=(sudo)
    else
        echo "missing system packages: ${wanted[*]}; run as root: apt-get install ${wanted[*]}" >&2
        exit 1
    fi
    echo "==> installing system packages: ${wanted[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    "${sudo[@]}" apt-get update -qq
    "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${wanted[@]}" >&2
    # Debian's Go may be older than the control plane's go.mod lines ask for; it fetches the
    # newer toolchain itself when it builds (GOTOOLCHAIN=auto).
    if [ -n "$need_go" ] && ! go_ok; then
        echo "Go >= $GO_MIN is needed to build the control plane; install it from https://go.dev/dl/" >&2
        exit 1
    fi
    exit 0
fi

how="install them with your package manager"
[ "$(uname -s)" = Darwin ] && how="on macOS the lab needs Linux (kwok, dockerd): use a Debian/Ubuntu VM or container"
echo "missing: ${wanted[*]/golang-go/Go >= $GO_MIN} (Debian package names); $how" >&2
exit 1
