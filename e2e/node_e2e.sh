#!/usr/bin/env bash
# The Kubernetes node e2e suite (k8s.io/kubernetes/test/e2e_node, "Node Conformance") against a
# throw-away cri-py: `make e2e-node`, after `make tools-node-e2e registry images`; or, with
# RUNTIME=containerd, against Debian's containerd 1.6 + runc, the baseline in the same lab
# (`make e2e-node RUNTIME=containerd`).
#
# e2e_node.test starts etcd and an API server in-process and runs kubelet (the one next to it in
# the tools dir) against cri-py; the ginkgo CLI runs its specs NODES at a time. This script:
#   - takes the machine-wide e2e lock (kubelet's ports 10248/10250/10255 and the API server's
#     6443 are the host's: one kubelet scenario at a time, shared with `make e2e-kubelet`);
#   - saves the kernel sysctls kubelet rewrites and every KUBE-* iptables chain that exists;
#   - creates its cgroup root /cri-py-node-e2e in every hierarchy and puts itself in
#     /cri-py-node-e2e/suite, so everything it starts (cri-py, shims, the suite, kubelet,
#     containers) stays under that root and can be found and stopped at the end;
#   - with RUNTIME=containerd: containerd instead of cri-py (bench/baseline.py writes its config,
#     as for `make bench COMPARE=containerd`): the lab registry as mirror, cgroupfs,
#     restrict_oom_score_adj, a CNI bridge of its own ($CTR_BRIDGE, not cri-py's), shims in
#     /cri-py-node-e2e/shims; in the namespace its root is /var/lib/containerd and its state
#     and socket /run/containerd (both directories of this run), where kubelet and cAdvisor
#     look by default, and /run/netns (its pods' netns) is one too;
#   - runs the runtime and the suite in one private mount namespace (unshare, slave propagation):
#     kubelet mounts the tmpfs of secret/configMap/projected/downward-API volumes that cri-py
#     then bind-mounts, so the two must share a mount namespace. In it, /var/lib and /var/log
#     (kubelet's root dir /var/lib/kubelet, device-plugins socket, /var/log/pods|containers),
#     /run/kubernetes (the API server's self-signed certificates) are directories of this run,
#     and /usr/bin/systemd-run is hidden (see below); nothing of that reaches the host;
#   - writes JUnit to $RESULTS_DIR (outside the repo) and prints "N passed, N failed, N skipped";
#     judges cri-py's by name (e2e/junit_gate.py, e2e/node-e2e-expected-failures.txt), and when
#     the other runtime's report is there, lists the specs that pass on containerd and fail on
#     cri-py (junit_gate.py --compare): the cri-py run fails on any;
#   - at the end, even on failure or Ctrl-C: removes the pods through cri-py, stops cri-py, kills
#     what is still in its cgroups, removes the cgroups, the bridge, the state directory and the
#     KUBE-* chains kubelet added, restores the sysctls, and says if anything could not go.
#
# Environment:
#   RUNTIME   cri-py | containerd                    cri-py
#   FOCUS     ginkgo focus regexp                    \[NodeConformance\]
#   SKIP      ginkgo skip regexp                     \[Serial\]|\[Slow\]|\[Disruptive\]|\[Flaky\]|\[Feature:.+\]|\[Feature\]
#   NODES     ginkgo parallel processes              2
#   TIMEOUT   ginkgo suite timeout                   60m
#   PREPULL   let the suite pre-pull its image list  false (it names images the lab lacks;
#                                                    specs pull what they use on demand)
#   RESULTS_DIR                                      /var/tmp/cri-py-results/node-e2e (cri-py),
#                                                    /var/tmp/cri-py-results/node-e2e-containerd
#   BASELINE_DIR  the containerd run's results, for the comparison: the default of the above
#   TOOLS_DIR, PYTHON                                as the other e2e scripts
#   EXTRA_SUITE_FLAGS  more e2e_node.test flags (word-split)
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
self=$top/e2e/node_e2e.sh
tools=${TOOLS_DIR:-/var/cache/cri-py/tools}/bin
python=${PYTHON:-$top/.venv/bin/python}
runtime=${RUNTIME:-cri-py}
case $runtime in
    cri-py) results=${RESULTS_DIR:-/var/tmp/cri-py-results/node-e2e} ;;
    containerd) results=${RESULTS_DIR:-/var/tmp/cri-py-results/node-e2e-containerd} ;;
    *) echo "[node-e2e] ERROR: RUNTIME is cri-py or containerd, not $runtime" >&2; exit 1 ;;
esac
focus=${FOCUS:-'\[NodeConformance\]'}
skip=${SKIP:-'\[Serial\]|\[Slow\]|\[Disruptive\]|\[Flaky\]|\[Feature:.+\]|\[Feature\]'}
nodes=${NODES:-2}
timeout=${TIMEOUT:-60m}
prepull=${PREPULL:-false}

CGROUP=cri-py-node-e2e         # the run's cgroup root, in every hierarchy
BRIDGE=cri-pyne0               # cri-py's built-in bridge
SUBNET=10.74.0.0/24
CTR_BRIDGE=ctrne0              # containerd's, through the CNI bridge plugin
CTR_SUBNET=10.75.0.0/24
PAUSE_IMAGE=registry.k8s.io/pause:3.10.2   # containerd's sandbox image: the suite's own pause
EXPECTED=$top/e2e/node-e2e-expected-failures.txt
BASELINE_FILE=$top/e2e/node-e2e-containerd-baseline.txt   # containerd's run of the whole focus
LOCK=/run/lock/cri-py-kubelet-e2e.lock   # the same lock as e2e/kubelet_e2e.py
# What kubelet's setupKernelTunables sets (pkg/kubelet/cm/container_manager_linux.go).
SYSCTLS=(vm/overcommit_memory vm/panic_on_oom kernel/panic kernel/panic_on_oops
         kernel/keys/root_maxkeys kernel/keys/root_maxbytes)
# The CNI bridge plugin (isGateway) turns IPv4 forwarding on; cri-py's bridge leaves it alone.
[ "$runtime" = containerd ] && SYSCTLS+=(net/ipv4/ip_forward)
if [ "$runtime" = containerd ]; then bridge=$CTR_BRIDGE; else bridge=$BRIDGE; fi

log() { printf '[node-e2e] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

cgroup_mounts() { awk '$3 == "cgroup" || $3 == "cgroup2" {print $2}' /proc/self/mounts; }

# make_cgroup NAME: /$CGROUP/NAME in every hierarchy.
make_cgroup() {
    local m
    for m in $(cgroup_mounts); do
        mkdir -p "$m/$CGROUP/$1"
        if [ -f "$m/cpuset.cpus" ]; then  # cpuset children start empty: inherit the parent's
            [ -n "$(cat "$m/$CGROUP/$1/cpuset.cpus")" ] || cat "$m/$CGROUP/cpuset.cpus" >"$m/$CGROUP/$1/cpuset.cpus"
            [ -n "$(cat "$m/$CGROUP/$1/cpuset.mems")" ] || cat "$m/$CGROUP/cpuset.mems" >"$m/$CGROUP/$1/cpuset.mems"
        fi
    done
}

# join_cgroup NAME: move this shell into /$CGROUP/NAME of every hierarchy.
join_cgroup() {
    local m
    make_cgroup "$1"
    for m in $(cgroup_mounts); do echo $$ >"$m/$CGROUP/$1/cgroup.procs"; done
}

# =============================================================================================
# Inside the private mount namespace: the runtime (cri-py or containerd) and the suite.
# =============================================================================================
if [ "${_CRI_PY_NODE_E2E_INNER:-}" = 1 ]; then
    state=$STATE
    # Nothing mounted here propagates to the host (the outer unshare made every mount a slave).
    for dir in var-lib var-log run-kubernetes; do mkdir -p "$state/$dir"; done
    mount --bind "$state/var-lib" /var/lib
    # kubelet's volume dirs live on a shared mount on a systemd host (/ is shared there), which
    # a Bidirectional volume needs: what a container mounts in it reaches kubelet and the pod's
    # next containers (the RRO spec's "unmount" init container). Here the namespace's mounts are
    # slaves of a private root, so /var/lib is made a shared peer group of its own, inside this
    # namespace only; cri-py refuses Bidirectional on a mount that is not shared.
    mount --make-rshared /var/lib
    mount --bind "$state/var-log" /var/log
    mount --bind "$state/run-kubernetes" /run/kubernetes
    # PID 1 is not systemd here, yet the suite runs kubelet through systemd-run whenever that is
    # on PATH (test/e2e_node/services/kubelet.go) and then fails. It sits in /usr/bin with
    # everything else, so PATH cannot drop it: a non-executable file over it hides it from
    # exec.LookPath in this namespace only.
    if [ -e /usr/bin/systemd-run ]; then mount --bind /dev/null /usr/bin/systemd-run; fi
    # journalctl works without systemd but has nothing to say: hidden the same way, so the
    # suite's log collection does not wait on it.
    if [ -e /usr/bin/journalctl ]; then mount --bind /dev/null /usr/bin/journalctl; fi

    mkdir -p "$state/work"
    if [ "$runtime" = containerd ]; then
        # Where kubelet, cAdvisor and the suite look for containerd by default: in this
        # namespace, directories of the run. /run/netns holds its pods' network namespaces
        # (containerd 1.6 pins them there, whatever its config says), /run/containerd/s the
        # shims' sockets (a fixed path as well).
        for dir in run-containerd run-netns containerd-cni; do mkdir -p "$state/$dir"; done
        mount --bind "$state/run-containerd" /run/containerd
        mount --bind "$state/run-netns" /run/netns
        sock=/run/containerd/containerd.sock
        "$python" "$top/bench/baseline.py" containerd-config --root /var/lib/containerd \
            --state /run/containerd --socket "$sock" --cni-conf-dir "$state/containerd-cni" \
            --shim-cgroup "/$CGROUP/shims" --sandbox-image "$PAUSE_IMAGE" --log-level info \
            >"$state/containerd.toml"
        "$python" "$top/bench/baseline.py" cni-conflist --name cri-py-node-e2e \
            --bridge "$CTR_BRIDGE" --subnet "$CTR_SUBNET" --ipam-dir "$state/cni-ipam" \
            >"$state/containerd-cni/10-node-e2e.conflist"
        make_cgroup shims  # the shims' (ShimCgroup): runc needs it in every hierarchy
        join_cgroup runtime
        containerd --config "$state/containerd.toml" >"$results/containerd.log" 2>&1 &
        daemon=$!
        echo "$daemon" >"$state/runtime.pid"
    else
        sock=$state/run/cri-py.sock
        join_cgroup runtime
        mkdir -p "$state/config.d" "$state/cni"
        cat >"$state/config.d/50-node-e2e.yaml" <<EOF
# written by e2e/node_e2e.sh: its own bridge and subnet, no CNI config (the built-in bridge),
# every cgroup under /$CGROUP.
network:
  bridge: $BRIDGE
  subnet: $SUBNET
  cni_conf_dir: $state/cni
cgroups:
  default_parent: /$CGROUP/pods
  shim_cgroup: /$CGROUP/shims
EOF
        "$python" -m cri_py.cli serve --config "$top/e2e/lab-config.yaml" --config-dir "$state/config.d" \
            --root-dir "$state/root" --run-dir "$state/run" --socket "$sock" >"$results/cri-py.log" 2>&1 &
        daemon=$!
        echo "$daemon" >"$state/runtime.pid"
    fi
    join_cgroup suite
    crictl() { "$tools/crictl" --runtime-endpoint "unix://$sock" --image-endpoint "unix://$sock" "$@"; }
    suite=
    stop_inner() {
        # An interrupted suite: ginkgo passes an interrupt on to its processes, whose cleanup
        # stops kubelet; a second one makes it give up on a spec that is still waiting.
        if [ -n "$suite" ] && kill -0 "$suite" 2>/dev/null; then
            local tries
            for tries in 20 10; do
                kill -INT "$suite" 2>/dev/null || true
                for _ in $(seq "$tries"); do kill -0 "$suite" 2>/dev/null || break; sleep 1; done
            done
            kill -KILL "$suite" 2>/dev/null || true
        fi
        # Whatever the suite started and left (kubelet when it was cut short): kubelet must not
        # recreate the pods removed below. This shell and its children are in the same cgroup.
        local pid
        for pid in $(cat "$(cgroup_mounts | head -n 1)/$CGROUP/suite/cgroup.procs" 2>/dev/null); do
            [ "$pid" = $$ ] || [ "$pid" = "$BASHPID" ] || kill -KILL "$pid" 2>/dev/null || true
        done
        # Pods a spec (or an interrupted suite) left behind go through the runtime: shims
        # outlive the daemon by design.
        if kill -0 "$daemon" 2>/dev/null; then
            local pod
            for pod in $(crictl pods -q 2>/dev/null); do
                crictl stopp "$pod" >/dev/null 2>&1 || true
                crictl rmp "$pod" >/dev/null 2>&1 || true
            done
            kill -TERM "$daemon" 2>/dev/null || true
            wait "$daemon" 2>/dev/null || true
        fi
    }
    trap stop_inner EXIT
    trap 'exit 130' INT TERM
    for _ in $(seq 300); do
        [ -S "$sock" ] && crictl version >/dev/null 2>&1 && break
        kill -0 "$daemon" 2>/dev/null || { tail -n 30 "$results/$runtime.log" >&2; exit 1; }
        sleep 0.1
    done
    crictl version >/dev/null 2>&1 || die "$runtime did not answer on $sock"

    # The base KubeletConfiguration (the suite then adds its own settings and flags):
    # kubernetes' test/e2e_node/jenkins/default-kubelet-config.yaml, plus what this host needs:
    #  - cgroupDriver cgroupfs: there is no systemd to drive cgroups;
    #  - failCgroupV1 false: this host has cgroup v1 only, which kubelet v1.35+ refuses by default;
    #  - cgroupRoot under this run's cgroup root instead of / (pods go to /$CGROUP/kubepods).
    #  - makeIPTablesUtilChains false: the machine's iptables are left alone.
    cat >"$state/work/kubeletconfig.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
cgroupDriver: cgroupfs
cgroupRoot: /$CGROUP
failCgroupV1: false
podCIDR: "10.100.0.0/24"
volumeStatsAggPeriod: 10s
fileCheckFrequency: 10s
evictionPressureTransitionPeriod: 30s
evictionHard:
  memory.available: 250Mi
  nodefs.available: 10%
  nodefs.inodesFree: 5%
evictionMinimumReclaim:
  nodefs.available: 5%
  nodefs.inodesFree: 5%
serializeImagePulls: false
makeIPTablesUtilChains: false
EOF
    # Without systemd the suite sets kubeletCgroups /kubelet, systemCgroups /system and
    # --runtime-cgroups=/docker-daemon. Flags win over the config file, so they are moved under
    # this run's root; systemCgroups is emptied: kubelet would move every process of the root
    # cgroup -- the whole machine's -- into it.
    kubelet_flags="--kubelet-cgroups=/$CGROUP/kubelet --system-cgroups= --runtime-cgroups=/$CGROUP/runtime"
    suite_flags=(
        --container-runtime-endpoint "unix://$sock"
        --image-service-endpoint "unix://$sock"
        --container-runtime-pid-file "$state/runtime.pid"
        --kubelet-config-file "$state/work/kubeletconfig.yaml"
        --kubelet-flags "$kubelet_flags"
        --prepull-images="$prepull"
        --report-dir "$results"
    )
    # A few specs run kubectl (`make tools` builds it; `make tools-node-e2e` does not).
    [ -x "$tools/kubectl" ] && suite_flags+=(--kubectl-path "$tools/kubectl")
    # shellcheck disable=SC2206  # word splitting is the point
    [ -n "${EXTRA_SUITE_FLAGS:-}" ] && suite_flags+=($EXTRA_SUITE_FLAGS)
    ginkgo_flags=(--nodes "$nodes" --timeout "$timeout" --no-color --silence-skips
                  --junit-report junit.xml --output-dir "$results" --focus "$focus")
    [ -n "$skip" ] && ginkgo_flags+=(--skip "$skip")
    log "ginkgo ${ginkgo_flags[*]} e2e_node.test -- ${suite_flags[*]}"
    rc=0
    # The suite writes its kubeconfig, token file and kubelet config into its working directory.
    # In the background: a signal to this shell must run stop_inner now, not after the suite.
    (cd "$state/work" && exec "$tools/ginkgo" "${ginkgo_flags[@]}" "$tools/e2e_node.test" -- "${suite_flags[@]}") \
        >"$results/suite.log" 2>&1 &
    suite=$!
    wait "$suite" || rc=$?
    suite=
    exit "$rc"
fi

# =============================================================================================
# Outside: checks, machine state saved and restored, the namespace started and cleaned up.
# =============================================================================================
[ "$(id -u)" = 0 ] || die "run as root"
for tool in e2e_node.test ginkgo kubelet crictl; do
    [ -x "$tools/$tool" ] || die "$tools/$tool missing: make tools-node-e2e tools-cri"
done
curl -fsS -o /dev/null http://127.0.0.1:5000/v2/ || die "the lab registry is not running: make registry images"
if [ "$runtime" = containerd ]; then
    # Debian's, as `make bench COMPARE=containerd` installs them (bench/apt-packages.txt).
    "$python" "$top/bench/baseline.py" install || die "cannot install containerd and runc"
    [ -x /usr/lib/cni/bridge ] || die "/usr/lib/cni/bridge missing: apt-get install containernetworking-plugins"
fi

mkdir -p "$(dirname "$LOCK")"
exec 8>"$LOCK"
flock -n 8 || { log "waiting for $LOCK (another kubelet scenario is running)"; flock 8; }

ip link show "$bridge" >/dev/null 2>&1 && die "bridge $bridge exists: a previous run left it (ip link del $bridge)"
for m in $(cgroup_mounts); do
    [ -d "$m/$CGROUP" ] && die "$m/$CGROUP exists: a previous run left it"
done

mkdir -p "$results"
rm -f "$results"/junit*.xml "$results"/*.log
state=$(mktemp -d /var/tmp/cri-py-node-e2e.XXXXXX)  # on disk: kubelet's nodefs is /var/lib here
declare -A saved_sysctls
for s in "${SYSCTLS[@]}"; do saved_sysctls[$s]=$(cat "/proc/sys/$s"); done
kube_chains() {
    local cmd table
    for cmd in iptables ip6tables; do
        command -v "$cmd-save" >/dev/null || continue
        for table in filter nat mangle; do
            "$cmd-save" -t "$table" 2>/dev/null | sed -n "s/^:\(KUBE-[^ ]*\) .*/$cmd $table \1/p"
        done
    done
}
chains_before=$(kube_chains)
# Mount points the namespace binds directories of the run over; made (and removed at the end)
# when the host has none.
made_dirs=()
mount_points=(/run/kubernetes)
[ "$runtime" = containerd ] && mount_points+=(/run/containerd /run/netns)
for dir in "${mount_points[@]}"; do
    [ -e "$dir" ] || { mkdir "$dir"; made_dirs+=("$dir"); }
done

# Every process of the run is in a cgroup under /$CGROUP (the inner shell joins it before it
# starts anything); this lists the ones still alive.
our_pids() {
    local m
    for m in $(cgroup_mounts); do
        [ -d "$m/$CGROUP" ] && find "$m/$CGROUP" -name cgroup.procs -exec cat {} + 2>/dev/null
    done | sort -un
}

cleanup() {
    local rc=$? left=() m s pid
    trap - EXIT INT TERM
    if [ -n "${inner:-}" ] && kill -0 "$inner" 2>/dev/null; then
        kill -TERM "$inner" 2>/dev/null || true
        for _ in $(seq 150); do kill -0 "$inner" 2>/dev/null || break; sleep 1; done
    fi
    # What the run left running (a suite killed mid-spec, a kubelet, a container): ours by
    # construction, since they are in our cgroups.
    for _ in 1 2 3; do
        pids=$(our_pids)
        [ -z "$pids" ] && break
        log "stopping what the run left in /$CGROUP: $(echo "$pids" | tr '\n' ' ')"
        for pid in $pids; do kill -KILL "$pid" 2>/dev/null || true; done
        sleep 1
    done
    for m in $(cgroup_mounts); do
        [ -d "$m/$CGROUP" ] || continue
        for _ in $(seq 20); do
            find "$m/$CGROUP" -depth -type d -exec rmdir {} + 2>/dev/null && break
            sleep 0.5
        done
        [ -d "$m/$CGROUP" ] && left+=("cgroup $m/$CGROUP")
    done
    ip link del "$bridge" 2>/dev/null || true
    for link in /sys/class/net/*; do  # veths of pods whose teardown did not run
        [ "$(cat "$link/master/uevent" 2>/dev/null | sed -n 's/^INTERFACE=//p')" = "$bridge" ] &&
            ip link del "${link##*/}" 2>/dev/null
    done
    ip link show "$bridge" >/dev/null 2>&1 && left+=("bridge $bridge")
    # The chains kubelet created (KUBE-IPTABLES-HINT, KUBE-KUBELET-CANARY...): empty markers.
    while read -r cmd table chain; do
        [ -n "$chain" ] || continue
        grep -qxF "$cmd $table $chain" <<<"$chains_before" && continue
        "$cmd" -t "$table" -F "$chain" 2>/dev/null || true
        "$cmd" -t "$table" -X "$chain" 2>/dev/null || left+=("$cmd -t $table chain $chain")
    done <<<"$(kube_chains)"
    for s in "${SYSCTLS[@]}"; do
        [ "$(cat "/proc/sys/$s")" = "${saved_sysctls[$s]}" ] || echo "${saved_sysctls[$s]}" >"/proc/sys/$s"
        [ "$(cat "/proc/sys/$s")" = "${saved_sysctls[$s]}" ] || left+=("sysctl $s")
    done
    for dir in "${made_dirs[@]}"; do rmdir "$dir" 2>/dev/null || left+=("$dir"); done
    # The namespace's mounts went with its last process; nothing of it is mounted on the host.
    grep -q " $state" /proc/self/mounts && left+=("mounts under $state")
    rm -rf "$state" 2>/dev/null || left+=("$state")
    if ((${#left[@]})); then
        log "NOT cleaned up: ${left[*]}"
        rc=$((rc ? rc : 1))
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

for m in $(cgroup_mounts); do
    mkdir "$m/$CGROUP"
    if [ -f "$m/cpuset.cpus" ]; then
        cat "$m/cpuset.cpus" >"$m/$CGROUP/cpuset.cpus"
        cat "$m/cpuset.mems" >"$m/$CGROUP/cpuset.mems"
    fi
done

log "$runtime; focus: $focus; skip: $skip; $nodes ginkgo processes; results in $results"
t0=$(date +%s)
rc=0
# A new session as well: the suite's signal handling must not reach this shell.
_CRI_PY_NODE_E2E_INNER=1 STATE=$state PYTHON=$python TOOLS_DIR=${TOOLS_DIR:-/var/cache/cri-py/tools} \
RUNTIME=$runtime RESULTS_DIR=$results FOCUS=$focus SKIP=$skip NODES=$nodes TIMEOUT=$timeout PREPULL=$prepull \
    unshare --mount --propagation slave setsid "$self" &
inner=$!
wait "$inner" || rc=$?
inner=
log "suite finished (exit $rc) in $(( ($(date +%s) - t0) / 60 ))m$(( ($(date +%s) - t0) % 60 ))s"

if [ ! -f "$results/junit.xml" ]; then
    tail -n 40 "$results/suite.log" >&2 || true
    exit $((rc ? rc : 1))
fi
# ginkgo exits 1 on any failed spec, expected or not: the gate judges by name instead. A suite
# that ran out of time is a failure whatever ran.
if grep -q "Suite Timeout Elapsed" "$results/suite.log" 2>/dev/null; then
    log "the suite hit its timeout ($timeout): the specs it did not reach did not run"
    timed_out=1
else
    timed_out=0
fi
if [ "$runtime" = containerd ]; then
    # The baseline: its failures are the lab's or the suite's, not judged here.
    "$python" "$top/e2e/junit_gate.py" "$results/junit.xml" --label node-e2e-containerd --report-only
    gate=$timed_out
    # The run as a baseline file (committed as $BASELINE_FILE after a run of the whole focus).
    "$python" "$top/e2e/junit_gate.py" "$results/junit.xml" --label node-e2e-containerd \
        --write-baseline "$results/baseline.txt" --header "$(printf '%s\n' \
        "make e2e-node RUNTIME=containerd, $(date -u '+%F'): $(containerd --version 2>/dev/null | awk '{print $1, $3}') + $(runc --version 2>/dev/null | head -n 1)" \
        "focus: $focus" "skip: $skip" "nodes: $nodes")"
    cri_py_results=${CRI_PY_RESULTS_DIR:-/var/tmp/cri-py-results/node-e2e}
    if [ -f "$cri_py_results/junit.xml" ]; then
        log "compared with the cri-py run in $cri_py_results:"
        "$python" "$top/e2e/junit_gate.py" "$cri_py_results/junit.xml" --label cri-py \
            --compare "$results/junit.xml" --baseline-label containerd || true
    fi
else
    gate=0
    "$python" "$top/e2e/junit_gate.py" "$results/junit.xml" --label node-e2e --expected "$EXPECTED" || gate=1
    baseline=${BASELINE_DIR:-/var/tmp/cri-py-results/node-e2e-containerd}
    # Every spec that passes on containerd in this lab must pass on cri-py: against this
    # machine's containerd run when there is one, else the committed one.
    if [ -f "$baseline/junit.xml" ]; then
        log "the containerd baseline ($baseline, $(date -r "$baseline/junit.xml" '+%F %H:%M')):"
        baseline_report=$baseline/junit.xml
    else
        log "the containerd baseline: $BASELINE_FILE ($(sed -n '1s/^# //p' "$BASELINE_FILE"))"
        baseline_report=$BASELINE_FILE
    fi
    "$python" "$top/e2e/junit_gate.py" "$results/junit.xml" --label cri-py \
        --compare "$baseline_report" --baseline-label containerd || gate=1
    ((timed_out)) && gate=1
fi
exit "$gate"
