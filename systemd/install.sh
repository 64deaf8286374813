#!/usr/bin/env bash
# Installs cri-py as a service, or removes exactly what an install added.
#   install:   a virtualenv in $PREFIX with cri-py, the systemd unit, a default config file and
#              /etc/crictl.yaml (config files only when absent: an operator's files are kept)
#   uninstall: removes $PREFIX and every file the install created that is still as installed
# PREFIX (default /opt/cri-py), SYSCONFDIR (/etc), UNITDIR (/etc/systemd/system) move things,
# so tests install into a temp dir. CTR_STAND_IN=1 also puts `ctr` and `containerd` stand-ins
# (for `kind load`, see cri_py/ctr.py) in BINDIR (/usr/local/bin): for kind node images only.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
prefix=${PREFIX:-/opt/cri-py}
sysconfdir=${SYSCONFDIR:-/etc}
unitdir=${UNITDIR:-/etc/systemd/system}
python=${PYTHON:-python3}
bindir=${BINDIR:-/usr/local/bin}
ctr_stand_in=${CTR_STAND_IN:-0}
manifest=$prefix/.install-manifest   # "<sha256>  <path>" of every file created outside $prefix

record() { sha256sum "$1" >>"$manifest"; }

# mkdir -p that records each directory it creates ("dir <path>"), so uninstall can remove them.
make_dir() {
    local missing=() d=$1
    while [ ! -d "$d" ]; do missing=("$d" "${missing[@]}"); d=$(dirname "$d"); done
    for d in "${missing[@]}"; do mkdir "$d"; echo "dir $d" >>"$manifest"; done
}

systemd_running() { [ -d /run/systemd/system ]; }

# `ctr` and `containerd` in $BINDIR running cri-py's stand-ins (cri_py/ctr.py), for a node
# without containerd where `kind load` runs `containerd config dump` and `ctr images import`.
# Never over a real ctr or containerd: an existing file stops the install.
check_stand_ins() {
    local name
    for name in ctr containerd; do
        if [ -e "$bindir/$name" ]; then
            echo "install.sh: $bindir/$name exists; not replacing it with cri-py's stand-in" >&2
            exit 1
        fi
    done
}

install_stand_ins() {
    local name
    make_dir "$bindir"
    for name in ctr containerd; do
        printf '#!/bin/sh\n# cri-py stand-in for %s (kind load on a cri-py node): see `%s --help`.\nexec %s "$@"\n' \
            "$name" "$name" "$prefix/bin/cri-py-$name" >"$bindir/$name"
        chmod 0755 "$bindir/$name"
        record "$bindir/$name"
    done
}

install_all() {
    if [ "$ctr_stand_in" = 1 ]; then check_stand_ins; fi
    # The prefix's missing parents are made first and recorded once the manifest exists.
    local parents=() d
    d=$(dirname "$prefix")
    while [ ! -d "$d" ]; do parents=("$d" "${parents[@]}"); d=$(dirname "$d"); done
    for d in "${parents[@]}"; do mkdir "$d"; done
    "$python" -m venv "$prefix"
    "$prefix/bin/pip" install --quiet --disable-pip-version-check "$top"
    : >"$manifest"
    for d in "${parents[@]}"; do echo "dir $d" >>"$manifest"; done
    make_dir "$unitdir"
    sed "s|@PREFIX@|$prefix|g" "$top/systemd/cri-py.service" >"$unitdir/cri-py.service"
    record "$unitdir/cri-py.service"
    if [ ! -e "$sysconfdir/cri-py/config.yaml" ]; then
        make_dir "$sysconfdir/cri-py/config.d"
        {
            echo "# cri-py config: the embedded defaults, written by make install."
            echo "# Drop-ins in config.d/*.yaml override it; see README.md for every key."
            "$prefix/bin/cri-py" config --config /dev/null --config-dir /nonexistent
        } >"$sysconfdir/cri-py/config.yaml"
        record "$sysconfdir/cri-py/config.yaml"
    fi
    if [ ! -e "$sysconfdir/crictl.yaml" ]; then
        make_dir "$sysconfdir"
        printf 'runtime-endpoint: unix:///run/cri-py/cri-py.sock\nimage-endpoint: unix:///run/cri-py/cri-py.sock\ntimeout: 10\n' \
            >"$sysconfdir/crictl.yaml"
        record "$sysconfdir/crictl.yaml"
    fi
    if [ "$ctr_stand_in" = 1 ]; then install_stand_ins; fi
    if systemd_running; then systemctl daemon-reload; fi
    echo "installed cri-py in $prefix; unit $unitdir/cri-py.service"
}

uninstall_all() {
    local dirs=()
    if [ -f "$manifest" ]; then
        while read -r sum path; do
            if [ "$sum" = dir ]; then dirs=("$path" "${dirs[@]}"); continue; fi
            if [ ! -e "$path" ]; then continue; fi
            if [ "$(sha256sum "$path" | cut -d' ' -f1)" = "$sum" ]; then
                rm -f "$path"
            else
                echo "kept $path: changed since install"
            fi
        done <"$manifest"
    fi
    rm -rf "$prefix"
    # Directories the install created, deepest first; one holding an operator's file stays.
    for d in "${dirs[@]}"; do rmdir "$d" 2>/dev/null || echo "kept $d: not empty"; done
    if systemd_running; then systemctl daemon-reload; fi
    echo "uninstalled cri-py from $prefix"
}

case "${1:-}" in
    install) install_all ;;
    uninstall) uninstall_all ;;
    *) echo "usage: $0 install|uninstall" >&2; exit 2 ;;
esac
