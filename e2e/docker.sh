#!/usr/bin/env bash
# The lab's Docker: a dockerd of its own for kind and for privileged test containers.
#
#   e2e/docker.sh start    install docker.io if missing, start containerd + dockerd, the `kind`
#                          network, the read-only registry and the DNS stub on its gateway
#                          (idempotent)
#   e2e/docker.sh stop     stop them by their recorded PIDs and undo what start did to the host
#   e2e/docker.sh status   exit 0 when dockerd answers, 3 otherwise
#   e2e/docker.sh env      print `export DOCKER_HOST=...` (eval "$(e2e/docker.sh env)")
#   e2e/docker.sh config daemon.json|containerd.toml|registry.yml   print a generated config
#
# Everything it owns, and nothing else:
#   /run/cri-py-docker/docker.sock          dockerd's socket: DOCKER_HOST=unix:///run/cri-py-docker/docker.sock
#                                           (never /var/run/docker.sock)
#   /run/cri-py-docker/{exec,containerd}    exec roots of dockerd and of its containerd; pidfiles
#   $LAB_DIR/docker                         dockerd's data root (images, containers, volumes);
#                                           kept by stop, like the registry's storage
#   $LAB_DIR/docker-lab                     generated configs, the runc wrapper, logs of the lab
#                                           registry and of the wrapper, what start created
#   $LAB_DIR/docker.log                     dockerd's log (containerd's: docker-lab/containerd.log)
#
# Why each setting is what it is (e2e/README.md, section "kind", says it for users):
# - containerd is started here with its own socket, root and state instead of letting dockerd
#   spawn one: dockerd uses /run/containerd/containerd.sock whenever it exists (Debian's or the
#   benchmark's containerd), and this one must never be shared.
# - The default runtime is e2e/kind/runc_wrapper.py: this machine's capability bounding set
#   lacks CAP_SYS_RESOURCE, so runc cannot start a privileged container (every kind node); the
#   wrapper drops from the spec the capabilities the bounding set lacks, then runs runc.
# - "iptables": false, "ip-forward": false, "ip-masq": false: dockerd adds no iptables chain or
#   rule, leaves the FORWARD policy and net.ipv4.ip_forward alone. Containers reach each other
#   on their bridge and the host on its gateway address, nothing beyond (the lab is offline);
#   published ports work through docker-proxy (the userland proxy), which is how kind reaches
#   its API servers on 127.0.0.1.
# - Container cgroups under /cri-py-lab-docker (cgroup-parent) instead of /docker.
# - The `kind` network: a bridge named cri-py-kind, 172.29.0.0/16, gateway 172.29.0.1, IPv4
#   only; kind v0.33.0 uses a network of that name when it exists. A second docker-registry
#   serves the lab registry's storage read-only (its maintenance.readonly mode: pushes and
#   deletes refused, upload purging off) on 172.29.0.1:5000, the address the nodes' cri-py
#   mirrors name: http://172.29.0.1:5000/<original registry host>.
# - "dns": ["172.29.0.1"]: Docker's embedded DNS (127.0.0.11 in every kind node) forwards names
#   it does not know to e2e/kind/dns_stub.py on the gateway, not to the host's resolv.conf
#   nameserver, which is off the machine: the lab stays off the network, and the answer,
#   NXDOMAIN, is immediate (Docker drops a query its upstream does not answer: 10-20 s for
#   every unknown name a node or pod looked up).
# - kind bind-mounts the host's /lib/modules into every node; where the host has none (this
#   machine), start creates the empty directory (docker would otherwise) and stop removes it.
set -euo pipefail

LAB_DIR="${CRI_PY_LAB_DIR:-/var/lib/cri-py-lab}"
REPO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
RUN_DIR=/run/cri-py-docker
SOCK="$RUN_DIR/docker.sock"
export DOCKER_HOST="unix://$SOCK"
DATA_ROOT="$LAB_DIR/docker"
EXEC_ROOT="$RUN_DIR/exec"
DOCKERD_PIDFILE="$RUN_DIR/dockerd.pid"
DOCKERD_LOG="$LAB_DIR/docker.log"
STATE="$LAB_DIR/docker-lab"
DAEMON_JSON="$STATE/daemon.json"
WRAPPER="$STATE/runc-wrapper"
CONTAINERD_CONFIG="$STATE/containerd.toml"
CONTAINERD_ROOT="$DATA_ROOT/containerd"
CONTAINERD_STATE="$RUN_DIR/containerd"
CONTAINERD_SOCK="$CONTAINERD_STATE/containerd.sock"
CONTAINERD_PIDFILE="$RUN_DIR/containerd.pid"
CONTAINERD_LOG="$STATE/containerd.log"
CGROUP_PARENT=cri-py-lab-docker
KIND_NETWORK=kind
KIND_BRIDGE=cri-py-kind
KIND_SUBNET=172.29.0.0/16
KIND_GATEWAY=172.29.0.1
REGISTRY_BIN=/usr/bin/docker-registry
REGISTRY_ADDR="$KIND_GATEWAY:5000"
REGISTRY_STORAGE="$LAB_DIR/registry/storage"
REGISTRY_CONFIG="$STATE/registry-kind.yml"
REGISTRY_PIDFILE="$STATE/registry-kind.pid"
REGISTRY_LOG="$STATE/registry-kind.log"
DNS_STUB="$STATE/dns-stub"
DNS_PIDFILE="$STATE/dns-stub.pid"
DNS_LOG="$STATE/dns-stub.log"
# What start created on the host and stop must remove (one line each: "link NAME", "dir PATH").
CREATED="$STATE/created"
START_TIMEOUT_S=60
STOP_TIMEOUT_S=90

log() { echo "docker.sh: $*"; }
die() {
    echo "docker.sh: $*" >&2
    exit 1
}

# pid_of PIDFILE EXE ARG: the PID in PIDFILE while it is still EXE run with ARG among its
# arguments (a reused PID never gets an unrelated process killed).
pid_of() {
    local pidfile=$1 exe=$2 arg=$3 pid
    [[ -r $pidfile ]] || return 1
    pid="$(<"$pidfile")"
    [[ $pid =~ ^[0-9]+$ && -r /proc/$pid/cmdline ]] || return 1
    local -a argv
    mapfile -d '' -t argv <"/proc/$pid/cmdline" || return 1
    [[ ${argv[0]:-} == "$exe" ]] || return 1
    local a
    for a in "${argv[@]}"; do [[ $a == "$arg" ]] && { echo "$pid"; return 0; }; done
    return 1
}

dockerd_pid() { pid_of "$DOCKERD_PIDFILE" /usr/sbin/dockerd "--config-file=$DAEMON_JSON"; }
containerd_pid() { pid_of "$CONTAINERD_PIDFILE" /usr/bin/containerd "$CONTAINERD_CONFIG"; }
registry_pid() { pid_of "$REGISTRY_PIDFILE" "$REGISTRY_BIN" "$REGISTRY_CONFIG"; }
dns_pid() { pid_of "$DNS_PIDFILE" /usr/bin/python3 "$DNS_STUB"; }

docker_answers() { /usr/bin/docker version --format '{{.Server.Version}}' >/dev/null 2>&1; }
registry_answers() { curl --silent --fail --output /dev/null --max-time 2 "http://$REGISTRY_ADDR/v2/"; }
dns_answers() { grep -q NXDOMAIN "$DNS_LOG" 2>/dev/null; }

remember() { grep -qxF "$1" "$CREATED" 2>/dev/null || echo "$1" >>"$CREATED"; }

# wait_for WHAT PID TIMEOUT LOG CHECK...: until CHECK succeeds, while PID lives.
wait_for() {
    local what=$1 pid=$2 timeout=$3 logfile=$4
    shift 4
    local deadline=$((SECONDS + timeout))
    until "$@"; do
        if [[ ! -d /proc/$pid ]]; then
            echo "docker.sh: $what (pid $pid) exited; last lines of $logfile:" >&2
            tail -n 20 "$logfile" >&2 || true
            exit 1
        fi
        ((SECONDS < deadline)) || die "$what (pid $pid) not ready within ${timeout}s; see $logfile"
        sleep 0.2
    done
}

# stop_pid WHAT PID TIMEOUT: SIGTERM, wait, then SIGKILL.
stop_pid() {
    local what=$1 pid=$2 timeout=$3
    kill -TERM "$pid" 2>/dev/null || return 0
    local deadline=$((SECONDS + timeout))
    while [[ -d /proc/$pid ]]; do
        if ((SECONDS >= deadline)); then
            log "$what (pid $pid) ignored SIGTERM for ${timeout}s; sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
            sleep 0.5
            break
        fi
        sleep 0.2
    done
    log "$what stopped (pid $pid)"
}

install_docker() {
    [[ -x /usr/sbin/dockerd && -x /usr/bin/docker && -x /usr/bin/containerd ]] && return 0
    log "installing Debian's docker.io (dockerd, docker CLI, containerd, runc)"
    # policy-rc.d keeps the package's own service from starting where one is installed; this
    # script never uses the package's unit, init script or /etc/docker/daemon.json.
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -o DPkg::Lock::Timeout=600 \
        --no-install-recommends docker.io >/dev/null
}

# The generated configs, printed (`e2e/docker.sh config NAME` shows them; tests read them).
containerd_toml() {
    cat <<EOF
# Generated by e2e/docker.sh: the containerd of the lab's dockerd only.
version = 2
root = "$CONTAINERD_ROOT"
state = "$CONTAINERD_STATE"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$CONTAINERD_SOCK"
[ttrpc]
  address = "$CONTAINERD_SOCK.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
EOF
}

daemon_json() {
    cat <<EOF
{
  "hosts": ["unix://$SOCK"],
  "pidfile": "$DOCKERD_PIDFILE",
  "data-root": "$DATA_ROOT",
  "exec-root": "$EXEC_ROOT",
  "containerd": "$CONTAINERD_SOCK",
  "storage-driver": "overlay2",
  "runtimes": {"cri-py-lab-runc": {"path": "$WRAPPER"}},
  "default-runtime": "cri-py-lab-runc",
  "cgroup-parent": "/$CGROUP_PARENT",
  "iptables": false,
  "ip-forward": false,
  "ip-masq": false,
  "dns": ["172.29.0.1"],
  "userland-proxy": true,
  "live-restore": false,
  "log-driver": "json-file",
  "log-opts": {"max-size": "20m", "max-file": "2"}
}
EOF
}

# write_file PATH GENERATOR: GENERATOR's output to PATH, atomically.
write_file() {
    "$2" >"$1.tmp"
    mv -f "$1.tmp" "$1"
}

write_configs() {
    mkdir -p "$STATE" "$RUN_DIR" "$DATA_ROOT" "$CONTAINERD_STATE"
    chmod 0700 "$RUN_DIR"
    # The wrapper is copied out of the checkout: dockerd runs it as root long after start.
    install -m 0755 "$REPO_DIR/e2e/kind/runc_wrapper.py" "$WRAPPER.tmp"
    mv -f "$WRAPPER.tmp" "$WRAPPER"
    install -m 0755 "$REPO_DIR/e2e/kind/dns_stub.py" "$DNS_STUB.tmp"
    mv -f "$DNS_STUB.tmp" "$DNS_STUB"
    write_file "$CONTAINERD_CONFIG" containerd_toml
    write_file "$DAEMON_JSON" daemon_json
}

start_containerd() {
    local pid
    if pid="$(containerd_pid)"; then
        log "containerd already running (pid $pid)"
        return 0
    fi
    [[ -S $CONTAINERD_SOCK ]] && rm -f "$CONTAINERD_SOCK" "$CONTAINERD_SOCK.ttrpc"
    set +m
    setsid /usr/bin/containerd --config "$CONTAINERD_CONFIG" >>"$CONTAINERD_LOG" 2>&1 </dev/null &
    pid=$!
    echo "$pid" >"$CONTAINERD_PIDFILE"
    wait_for containerd "$pid" "$START_TIMEOUT_S" "$CONTAINERD_LOG" test -S "$CONTAINERD_SOCK"
    log "containerd started (pid $pid), socket $CONTAINERD_SOCK"
}

start_dockerd() {
    local pid
    if pid="$(dockerd_pid)"; then
        wait_for dockerd "$pid" "$START_TIMEOUT_S" "$DOCKERD_LOG" docker_answers
        log "dockerd already running (pid $pid), DOCKER_HOST=$DOCKER_HOST"
        return 0
    fi
    # The bridge dockerd makes for its default network, if the host has none yet.
    ip link show docker0 >/dev/null 2>&1 || remember "link docker0"
    # A stale pidfile (dockerd killed) would stop dockerd from starting.
    rm -f "$DOCKERD_PIDFILE"
    set +m
    # --config-file: every setting lives in the generated daemon.json, none in /etc/docker.
    # dockerd writes its pidfile itself.
    setsid /usr/sbin/dockerd "--config-file=$DAEMON_JSON" >>"$DOCKERD_LOG" 2>&1 </dev/null &
    pid=$!
    wait_for dockerd "$pid" "$START_TIMEOUT_S" "$DOCKERD_LOG" docker_answers
    [[ "$(dockerd_pid)" == "$pid" ]] || die "dockerd answers but its pidfile does not name pid $pid"
    log "dockerd $(/usr/bin/docker version --format '{{.Server.Version}}') started (pid $pid), DOCKER_HOST=$DOCKER_HOST"
}

ensure_network() {
    local subnet
    if subnet="$(/usr/bin/docker network inspect "$KIND_NETWORK" --format '{{range .IPAM.Config}}{{.Subnet}} {{.Gateway}}{{end}}' 2>/dev/null)"; then
        [[ $subnet == "$KIND_SUBNET $KIND_GATEWAY" ]] ||
            die "docker network '$KIND_NETWORK' exists with '$subnet', not '$KIND_SUBNET $KIND_GATEWAY'; remove it (docker network rm $KIND_NETWORK) and start again"
    else
        /usr/bin/docker network create --driver bridge --subnet "$KIND_SUBNET" --gateway "$KIND_GATEWAY" \
            --opt "com.docker.network.bridge.name=$KIND_BRIDGE" \
            --opt com.docker.network.bridge.enable_ip_masquerade=false "$KIND_NETWORK" >/dev/null
        log "network $KIND_NETWORK created: bridge $KIND_BRIDGE, $KIND_SUBNET, gateway $KIND_GATEWAY"
    fi
    # dockerd creates the bridge (with the gateway address) when the network is created and
    # again when it starts; the registry below binds to that address.
    local deadline=$((SECONDS + 10))
    until ip -4 -o addr show dev "$KIND_BRIDGE" 2>/dev/null | grep -q " $KIND_GATEWAY/"; do
        ((SECONDS < deadline)) || die "bridge $KIND_BRIDGE has no address $KIND_GATEWAY"
        sleep 0.2
    done
}

registry_yml() {
    cat <<EOF
# Generated by e2e/docker.sh: the lab registry's storage (e2e/registry.sh) served read-only to
# the lab's Docker network. Rewritten on every start.
version: 0.1
log:
  level: info
  fields:
    service: cri-py-lab-registry-kind
storage:
  filesystem:
    rootdirectory: $REGISTRY_STORAGE
  maintenance:
    # Pushes and deletes are refused (405); the instance on 127.0.0.1:5000 owns the storage.
    readonly:
      enabled: true
    # Never remove the other instance's uploads in progress.
    uploadpurging:
      enabled: false
http:
  # The gateway of the kind network only: reachable from the lab's containers and this host.
  addr: $REGISTRY_ADDR
  headers:
    X-Content-Type-Options: [nosniff]
EOF
}

start_registry() {
    local pid
    if pid="$(registry_pid)"; then
        wait_for registry "$pid" 30 "$REGISTRY_LOG" registry_answers
        log "registry (read-only) already running (pid $pid) on http://$REGISTRY_ADDR"
        return 0
    fi
    [[ -x $REGISTRY_BIN ]] || die "$REGISTRY_BIN not found; install the lab's packages (e2e/apt-packages.txt)"
    [[ -d $REGISTRY_STORAGE ]] || die "no lab registry storage in $REGISTRY_STORAGE: run make registry images first"
    registry_answers && die "something else answers on http://$REGISTRY_ADDR/v2/"
    write_file "$REGISTRY_CONFIG" registry_yml
    set +m
    setsid "$REGISTRY_BIN" serve "$REGISTRY_CONFIG" >>"$REGISTRY_LOG" 2>&1 </dev/null &
    pid=$!
    echo "$pid" >"$REGISTRY_PIDFILE"
    wait_for registry "$pid" 30 "$REGISTRY_LOG" registry_answers
    log "registry (read-only) started (pid $pid) on http://$REGISTRY_ADDR, storage $REGISTRY_STORAGE"
}

# The upstream of Docker's embedded DNS ("dns" in daemon.json): NXDOMAIN for every name, on the
# kind network's gateway (which exists once the network does).
start_dns() {
    local pid
    if pid="$(dns_pid)"; then
        log "dns stub already running (pid $pid) on $KIND_GATEWAY:53"
        return 0
    fi
    : >"$DNS_LOG"
    set +m
    setsid /usr/bin/python3 "$DNS_STUB" "$KIND_GATEWAY" >>"$DNS_LOG" 2>&1 </dev/null &
    pid=$!
    echo "$pid" >"$DNS_PIDFILE"
    wait_for "dns stub" "$pid" 10 "$DNS_LOG" dns_answers
    log "dns stub started (pid $pid) on $KIND_GATEWAY:53: NXDOMAIN for every name"
}

start() {
    [[ $EUID -eq 0 ]] || die "must run as root"
    install_docker
    command -v curl >/dev/null || die "curl not found; install the lab's packages (e2e/apt-packages.txt)"
    write_configs
    if [[ ! -e /lib/modules ]]; then
        mkdir /lib/modules
        remember "dir /lib/modules"
    fi
    start_containerd
    start_dockerd
    ensure_network
    start_dns
    start_registry
    echo "export DOCKER_HOST=$DOCKER_HOST"
}

# The bridges of dockerd's bridge networks (default names br-<id12>), while it answers.
docker_bridges() {
    local id name
    for id in $(/usr/bin/docker network ls --filter driver=bridge --quiet --no-trunc 2>/dev/null); do
        name="$(/usr/bin/docker network inspect "$id" --format '{{index .Options "com.docker.network.bridge.name"}}' 2>/dev/null || true)"
        echo "${name:-br-${id:0:12}}"
    done
}

# Processes still using our containerd (shims of containers that outlived dockerd), by PID.
leftover_shims() {
    local p argv
    for p in /proc/[0-9]*; do
        argv="$(tr '\0' ' ' 2>/dev/null <"$p/cmdline")" || continue
        [[ $argv == *" -address $CONTAINERD_SOCK "* ]] && echo "${p#/proc/}"
    done
    return 0
}

unmount_under() {
    local root=$1 m
    # Deepest first.
    while read -r m; do
        [[ -n $m ]] || continue
        umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || log "could not unmount $m"
    done < <(awk -v r="$root" '$5 == r || index($5, r "/") == 1 {print $5}' /proc/self/mountinfo | sort -r | uniq)
}

stop() {
    [[ $EUID -eq 0 ]] || die "must run as root"
    local pid bridges=()
    if pid="$(registry_pid)"; then stop_pid "registry (read-only)" "$pid" 10; fi
    rm -f "$REGISTRY_PIDFILE"
    if pid="$(dns_pid)"; then stop_pid "dns stub" "$pid" 10; fi
    rm -f "$DNS_PIDFILE"
    if pid="$(dockerd_pid)"; then
        mapfile -t bridges < <(docker_bridges)
        stop_pid dockerd "$pid" "$STOP_TIMEOUT_S"
    else
        log "dockerd not running"
    fi
    rm -f "$DOCKERD_PIDFILE"
    for pid in $(leftover_shims); do
        log "containerd shim $pid outlived dockerd; stopping it"
        stop_pid "shim" "$pid" 10
    done
    if pid="$(containerd_pid)"; then stop_pid containerd "$pid" 30; fi
    rm -f "$CONTAINERD_PIDFILE"
    unmount_under "$RUN_DIR"
    unmount_under "$DATA_ROOT"
    # The bridges of dockerd's networks (the networks stay in its data root: dockerd makes
    # their bridges again when it starts); docker0 only when start found none.
    local name kind path
    for name in "${bridges[@]}" "$KIND_BRIDGE"; do
        [[ $name == docker0 ]] && ! grep -qxF "link docker0" "$CREATED" 2>/dev/null && continue
        if ip link show "$name" >/dev/null 2>&1; then ip link delete "$name" && log "bridge $name removed"; fi
    done
    if [[ -r $CREATED ]]; then
        while read -r kind path; do
            case $kind in
            link) if ip link show "$path" >/dev/null 2>&1; then ip link delete "$path" && log "bridge $path removed"; fi ;;
            dir) if [[ -d $path ]]; then rmdir "$path" && log "$path removed"; fi ;;
            esac
        done <"$CREATED"
        rm -f "$CREATED"
    fi
    local d
    for d in /sys/fs/cgroup/*/"$CGROUP_PARENT" /sys/fs/cgroup/"$CGROUP_PARENT"; do
        [[ -d $d ]] || continue
        # Children first (a container's cgroup dockerd left), then the parent; only empty ones.
        find "$d" -depth -type d -exec rmdir {} + 2>/dev/null || log "cgroup $d still in use"
    done
    rm -rf "$RUN_DIR"
    log "stopped; data root $DATA_ROOT kept"
}

status() {
    local pid
    if pid="$(dockerd_pid)" && docker_answers; then
        echo "dockerd running (pid $pid), DOCKER_HOST=$DOCKER_HOST"
        if pid="$(registry_pid)" && registry_answers; then
            echo "registry (read-only) running (pid $pid) on http://$REGISTRY_ADDR"
        else
            echo "registry (read-only) not running"
            return 3
        fi
        return 0
    fi
    echo "dockerd not running"
    return 3
}

case "${1:-}" in
start) start ;;
stop) stop ;;
status) status ;;
env) echo "export DOCKER_HOST=$DOCKER_HOST" ;;
config)
    case "${2:-}" in
    daemon.json) daemon_json ;;
    containerd.toml) containerd_toml ;;
    registry.yml) registry_yml ;;
    *)
        echo "usage: $0 config daemon.json|containerd.toml|registry.yml" >&2
        exit 2
        ;;
    esac
    ;;
*)
    echo "usage: $0 start|stop|status|env|config NAME" >&2
    exit 2
    ;;
esac
