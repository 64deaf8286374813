#!/usr/bin/env bash
# The base of the offline kind node image: a Debian bookworm root filesystem made by debootstrap
# from the Debian mirror, with systemd as PID 1 arranged as kind's base image arranges it (our
# entrypoint and units from kind-config/base/), imported into Docker as $BASE_TAG.
#
#   e2e/kind/build-base.sh            build (or reuse) the tarball, import it when Docker answers
#   e2e/kind/build-base.sh --no-docker   only the tarball (no Docker needed)
#
# Inputs -> one key: the suite, the mirror, the package list below, this script and every file
# under kind-config/base/. The tarball is cached as $CACHE/kind-base-<key>.tar and rebuilt only
# when the key changes; the image carries the key as a label, so a second run imports nothing.
# The tarball is deterministic enough to compare: files sorted, owners numeric, every mtime set
# to SOURCE_DATE_EPOCH, no apt lists, caches, logs, machine-id or ldconfig cache.
#
# Environment:
#   CRI_PY_LAB_DIR   /var/lib/cri-py-lab     (the cache is $CRI_PY_LAB_DIR/kind)
#   DEBIAN_MIRROR    http://deb.debian.org/debian
#   BASE_TAG         cri-py/kind-base:bookworm
#   DOCKER           docker                  (DOCKER_HOST picks the daemon, as usual)
#   SOURCE_DATE_EPOCH  1700000000            the mtime of every file in the tarball
set -euo pipefail

top=$(cd "$(dirname "$0")/../.." && pwd)
LAB_DIR=${CRI_PY_LAB_DIR:-/var/lib/cri-py-lab}
CACHE=$LAB_DIR/kind
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
SUITE=bookworm
BASE_TAG=${BASE_TAG:-cri-py/kind-base:bookworm}
DOCKER=${DOCKER:-docker}
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-1700000000}
use_docker=1
[[ ${1:-} == --no-docker ]] && use_docker=0

# What a kind node needs beyond minbase: systemd as init with D-Bus (the systemd cgroup driver
# talks to it); the tools kubelet, kubeadm's preflight checks and kube-proxy run (iptables with
# both backends: the entrypoint picks the one the host uses, nftables, conntrack, ethtool, socat,
# iproute2, mount/util-linux, kmod, e2fsprogs, procps); the CNI plugins (Debian's
# containernetworking-plugins, linked into /opt/cni/bin); cri-py's needs (python3 >= 3.11 with
# venv, libseccomp2 for the shim's filters); ca-certificates, curl and jq for debugging.
PACKAGES=(
    systemd systemd-sysv dbus libpam-systemd
    iptables nftables conntrack ethtool socat iproute2 mount util-linux kmod e2fsprogs procps
    containernetworking-plugins libseccomp2
    python3 python3-venv
    ca-certificates curl jq less
)

log() { printf '[kind-base] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
elapsed() { local s=$(($(date +%s) - $1)); printf '%dm%02ds' $((s / 60)) $((s % 60)); }

[[ $(id -u) == 0 ]] || die "needs root (debootstrap, chroot)"
command -v debootstrap >/dev/null || die "debootstrap missing: apt-get install debootstrap"

key=$( {
    echo "$SUITE $MIRROR $SOURCE_DATE_EPOCH ${PACKAGES[*]}"
    sha256sum <"$0"
    (cd "$top/kind-config/base" && find . -type f | LC_ALL=C sort | xargs sha256sum)
    (cd "$top/kind-config/base" && find . -type f -perm -u+x | LC_ALL=C sort)
} | sha256sum | cut -c1-16)
tarball=$CACHE/kind-base-$key.tar
mkdir -p "$CACHE"
exec 9>"$CACHE/.base.lock"
flock 9
# Work directories an interrupted run left behind.
find "$CACHE" -maxdepth 1 \( -name 'rootfs-*' -o -name 'debootstrap-*' \) -type d -exec rm -rf {} +

t0=$(date +%s)
if [[ -f $tarball ]]; then
    log "tarball up to date: $tarball"
else
    # Stage 1, debootstrap, keyed by its own inputs only: a change to our files reuses it.
    debkey=$(echo "$SUITE $MIRROR ${PACKAGES[*]}" | sha256sum | cut -c1-16)
    pristine=$CACHE/debootstrap-$debkey.tar
    if [[ ! -f $pristine ]]; then
        work=$CACHE/debootstrap-$debkey
        rm -rf "$work"
        mkdir -p "$work" "$CACHE/debs"
        log "debootstrap $SUITE (minbase + ${#PACKAGES[@]} packages) from $MIRROR"
        # The downloaded .debs stay in $CACHE/debs for a later build with other packages.
        nice -n 19 debootstrap --variant=minbase --cache-dir="$CACHE/debs" \
            --include="$(IFS=,; echo "${PACKAGES[*]}")" "$SUITE" "$work" "$MIRROR" \
            >"$CACHE/debootstrap.log" 2>&1 || {
                tail -20 "$CACHE/debootstrap.log" >&2
                die "debootstrap failed (log: $CACHE/debootstrap.log)"
            }
        tar --create --file "$pristine.tmp" --directory "$work" --numeric-owner \
            --xattrs --xattrs-include='security.capability' .
        mv "$pristine.tmp" "$pristine"
        rm -rf "$work"
        find "$CACHE" -maxdepth 1 -name 'debootstrap-*.tar' ! -name "debootstrap-$debkey.tar" -delete
        log "debootstrap done in $(elapsed "$t0")"
    fi
    # Stage 2: our configuration on a fresh copy of it.
    rootfs=$CACHE/rootfs-$key
    rm -rf "$rootfs"
    mkdir -p "$rootfs"
    tar --extract --file "$pristine" --directory "$rootfs" --numeric-owner \
        --xattrs --xattrs-include='security.capability'
    log "configuring the root filesystem"
    # apt inside the node: the same mirror, and no recommends (as the image was built).
    printf 'deb %s %s main\ndeb %s %s-updates main\n' "$MIRROR" "$SUITE" "$MIRROR" "$SUITE" \
        >"$rootfs/etc/apt/sources.list"
    printf 'APT::Install-Recommends "false";\nAPT::Install-Suggests "false";\n' \
        >"$rootfs/etc/apt/apt.conf.d/90kind-node"
    # Our files: the entrypoint, the units, sysctls (kind-config/base/ mirrors the rootfs).
    cp -a --no-preserve=ownership "$top/kind-config/base/." "$rootfs/"
    chmod 0755 "$rootfs/usr/local/bin/entrypoint" "$rootfs/kind/bin/"*
    # No host-wide sysctl from the packages (the node shares the host's kernel and
    # systemd-sysctl would apply them to it): only kind-config/base's per-network-namespace keys.
    rm -f "$rootfs"/usr/lib/sysctl.d/50-pid-max.conf "$rootfs"/usr/lib/sysctl.d/99-protect-links.conf
    # The CNI plugins where kind and kubelet look for them.
    mkdir -p "$rootfs/opt/cni/bin" "$rootfs/etc/cni/net.d"
    for p in "$rootfs"/usr/lib/cni/*; do
        ln -sf "/usr/lib/cni/$(basename "$p")" "$rootfs/opt/cni/bin/$(basename "$p")"
    done
    chroot "$rootfs" /bin/sh -euc '
        # Units a container has no use for: nothing starts them, as in kind base image.
        rm -f /lib/systemd/system/multi-user.target.wants/* \
              /etc/systemd/system/*.wants/* \
              /lib/systemd/system/local-fs.target.wants/* \
              /lib/systemd/system/sockets.target.wants/*udev* \
              /lib/systemd/system/sockets.target.wants/*initctl* \
              /lib/systemd/system/basic.target.wants/* \
              /lib/systemd/system/sysinit.target.wants/systemd-tmpfiles-setup.service
        systemctl mask systemd-binfmt.service systemd-udevd.service getty.target \
            console-getty.service systemd-networkd-wait-online.service \
            systemd-timesyncd.service >/dev/null 2>&1
        systemctl enable kind-undo-mounts.service >/dev/null 2>&1
        mkdir -p /etc/kubernetes/manifests /var/lib/kubelet
        # The journal is the nodes log: no kernel ring buffer (the hosts), kept small.
        mkdir -p /etc/systemd/journald.conf.d
        printf "[Journal]\nReadKMsg=no\nSystemMaxUse=200M\n" >/etc/systemd/journald.conf.d/10-kind-node.conf
    '
    # Clean: nothing of this build, nor of the build host, in the image.
    rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/* "$rootfs"/var/cache/debconf/*-old \
        "$rootfs"/var/cache/ldconfig/aux-cache "$rootfs"/var/log/* "$rootfs"/tmp/* \
        "$rootfs"/var/tmp/* "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* \
        "$rootfs"/usr/share/info/* "$rootfs"/var/lib/dpkg/*-old "$rootfs"/root/.bash_history
    find "$rootfs/usr/lib/python3" "$rootfs/usr/lib/python3.11" -name __pycache__ -type d \
        -prune -exec rm -rf {} + 2>/dev/null || true
    mkdir -p "$rootfs/var/lib/apt/lists/partial" "$rootfs/var/cache/apt/archives/partial"
    # Fresh per container (the entrypoint regenerates machine-id; Docker provides the rest).
    : >"$rootfs/etc/machine-id"
    rm -f "$rootfs/var/lib/dbus/machine-id" "$rootfs/etc/hostname" "$rootfs/etc/resolv.conf"
    log "writing $tarball"
    tar --create --file "$tarball.tmp" --directory "$rootfs" --sort=name --numeric-owner \
        --mtime="@$SOURCE_DATE_EPOCH" --clamp-mtime \
        --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime \
        --xattrs --xattrs-include='security.capability' .
    mv "$tarball.tmp" "$tarball"
    rm -rf "$rootfs"
    # Older tarballs of this cache are stale now.
    find "$CACHE" -maxdepth 1 -name 'kind-base-*.tar' ! -name "kind-base-$key.tar" -delete
    log "tarball $(du -h "$tarball" | cut -f1) in $(elapsed "$t0")"
fi

((use_docker)) || exit 0
have=$("$DOCKER" image inspect --format '{{index .Config.Labels "cri-py.kind-base.key"}}' \
    "$BASE_TAG" 2>/dev/null || true)
if [[ $have == "$key" ]]; then
    log "$BASE_TAG is up to date (key $key)"
    exit 0
fi
log "importing $tarball as $BASE_TAG"
# The image config of kind's base: systemd knows it runs in a container (container=docker),
# stops cleanly on SIGRTMIN+3 (systemd's halt signal: `docker stop` then shuts the node down
# in order), and starts through our entrypoint. `docker import --change` takes no STOPSIGNAL
# (Docker 20.10), so a one-line build on top of the import sets it.
staging=${BASE_TAG%%:*}:import-$key
"$DOCKER" import "$tarball" "$staging" >/dev/null
printf '%s\n' "FROM $staging" 'ENV container=docker' 'STOPSIGNAL SIGRTMIN+3' \
    'ENTRYPOINT ["/usr/local/bin/entrypoint", "/sbin/init"]' "LABEL cri-py.kind-base.key=$key" |
    DOCKER_BUILDKIT=0 "$DOCKER" build --tag "$BASE_TAG" - >"$CACHE/base-build.log" 2>&1 ||
    { cat "$CACHE/base-build.log" >&2; die "docker build of $BASE_TAG failed"; }
"$DOCKER" rmi "$staging" >/dev/null
log "$BASE_TAG imported in $(elapsed "$t0")"
