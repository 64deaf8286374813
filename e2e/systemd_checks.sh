#!/usr/bin/env bash
# Inside a node whose PID 1 is systemd (run by e2e/systemd_node.sh): cri-py with the systemd
# cgroup driver, checked by what systemd and the cgroup files say. A pod under a slice kubelet
# would name and a pod without a parent, each with a limited container: units and limits while
# they run (properties and files), after `systemctl daemon-reload`, after
# UpdateContainerResources, across a daemon restart, and nothing left after removal. The pod
# slice kubelet would name is made beforehand (as kubelet does) and outlives the pod; two pods
# whose parent slice does not exist get it made by cri-py with the pod's limits, and the last
# one removed takes it away.
# Usage: e2e/systemd_checks.sh  (PYTHON, TOOLS_DIR, RESULTS_DIR as for e2e/critest.sh)
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
tools=${TOOLS_DIR:-/var/cache/cri-py/tools}/bin
python=${PYTHON:-$top/.venv/bin/python}
results=${RESULTS_DIR:-$top/results/systemd-checks}
mkdir -p "$results"
: >"$results/cri-py.log"  # this run's only: the checks count its lines
state=$(mktemp -d /tmp/cri-py-systemd.XXXXXX)
sock=$state/run/cri-py.sock
mkdir -p "$state/config.d"
printf 'cgroups:\n  driver: systemd\n' >"$state/config.d/10-cgroups.yaml"
crictl() { "$tools/crictl" --runtime-endpoint "unix://$sock" --image-endpoint "unix://$sock" "$@"; }
daemon=0
start_daemon() {
    "$python" -m cri_py.cli serve --config "$top/e2e/lab-config.yaml" --config-dir "$state/config.d" \
        --root-dir "$state/root" --run-dir "$state/run" --socket "$sock" >>"$results/cri-py.log" 2>&1 &
    daemon=$!
    for _ in $(seq 600); do  # 60 s: the node compiles every module at each start (read-only, no .pyc)
        [ -S "$sock" ] && crictl version >/dev/null 2>&1 && return
        kill -0 "$daemon" 2>/dev/null || { tail -n 30 "$results/cri-py.log"; exit 1; }
        sleep 0.1
    done
    echo "cri-py did not start" >&2
    exit 1
}
stop_daemon() {
    kill -TERM "$daemon" 2>/dev/null && wait "$daemon" || true
}
# The slice kubelet would make before RunPodSandbox, and one no one makes (cri-py does).
kubelet_slice=kubepods-burstable-pod5d0c_0001.slice
made_slice=e2emade.slice
cleanup() {
    if kill -0 "$daemon" 2>/dev/null; then
        for pod in $(crictl pods -q 2>/dev/null); do
            crictl stopp "$pod" >/dev/null 2>&1 || true
            crictl rmp "$pod" >/dev/null 2>&1 || true
        done
    fi
    stop_daemon
    systemctl stop "$kubelet_slice" "$made_slice" >/dev/null 2>&1 || true
    rm -rf "$state"
}
trap cleanup EXIT

passed=0
failed=0
check() {  # check <what> <expected> <actual>
    if [ "$2" = "$3" ]; then
        passed=$((passed + 1))
        echo "ok    $1: $3"
    else
        failed=$((failed + 1))
        echo "FAIL  $1: expected '$2', got '$3'"
    fi
}
show() { systemctl show -P "$2" "$1"; }
file() {  # file <controller> <cgroup path> <name>
    cat "/sys/fs/cgroup/$1$2/$3"
}
our_units() {  # the cri-py units systemd has loaded, the shims' scope aside
    systemctl list-units --all --plain --no-legend 'cri-py-*' '*-pod*.slice' |
        awk '{print $1}' | grep -v '^cri-py-shims.scope$' | grep -E '^cri-py-' || true
}

start_daemon
check "RuntimeConfig cgroup driver" "SYSTEMD" "$(crictl runtime-config | awk '/cgroup driver/ {print $3}')"
check "driver logged at start" "1" "$(grep -c 'msg=cgroups driver=systemd chosen=configured' "$results/cri-py.log")"
crictl pull docker.io/library/busybox:latest >/dev/null

cat >"$state/pod.json" <<'EOF'
{"metadata": {"name": "sd-kubelet-like", "namespace": "default", "uid": "sd-1"},
 "linux": {"cgroup_parent": "kubepods-burstable-pod5d0c_0001.slice"}}
EOF
cat >"$state/pod-noparent.json" <<'EOF'
{"metadata": {"name": "sd-no-parent", "namespace": "default", "uid": "sd-2"}}
EOF
cat >"$state/ctr.json" <<'EOF'
{"metadata": {"name": "limited"}, "image": {"image": "docker.io/library/busybox:latest"},
 "command": ["sleep", "3600"],
 "linux": {"resources": {"cpu_period": 100000, "cpu_quota": 50000, "cpu_shares": 512,
                         "memory_limit_in_bytes": 67108864}}}
EOF

# kubelet's part: its pod slice, with the pod's limits, before RunPodSandbox.
busctl call org.freedesktop.systemd1 /org/freedesktop/systemd1 org.freedesktop.systemd1.Manager \
    StartTransientUnit 'ssa(sv)a(sa(sv))' "$kubelet_slice" fail \
    2 Description s "kubelet stand-in pod slice" MemoryLimit t 536870912 0 >/dev/null
for _ in $(seq 50); do
    [ "$(show "$kubelet_slice" ActiveState)" = active ] && break
    sleep 0.1
done
pod=$(crictl runp "$state/pod.json")
ctr=$(crictl create "$pod" "$state/ctr.json" "$state/pod.json")
crictl start "$ctr" >/dev/null
scope=cri-py-$ctr.scope
slice_path=/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod5d0c_0001.slice
path=$slice_path/$scope
echo "--- while the pod runs:"
systemctl status --no-pager "$scope" | head -n 9
check "scope active" "active" "$(show "$scope" ActiveState)"
check "scope delegated" "yes" "$(show "$scope" Delegate)"
check "scope cgroup" "$path" "$(show "$scope" ControlGroup)"
check "pod slice active" "active" "$(show kubepods-burstable-pod5d0c_0001.slice ActiveState)"
check "container's own /proc/self/cgroup" "$path" \
    "$(crictl exec "$ctr" cat /proc/self/cgroup | awk -F: '$2 == "memory" {print $3}')"
check "unit MemoryLimit" "67108864" "$(show "$scope" MemoryLimit)"
check "unit CPUQuotaPerSecUSec" "500ms" "$(show "$scope" CPUQuotaPerSecUSec)"
check "unit CPUShares" "512" "$(show "$scope" CPUShares)"
check "unit DevicePolicy" "strict" "$(show "$scope" DevicePolicy)"
check "memory.limit_in_bytes" "67108864" "$(file memory "$path" memory.limit_in_bytes)"
check "cpu.cfs_quota_us" "50000" "$(file cpu "$path" cpu.cfs_quota_us)"
check "cpu.shares" "512" "$(file cpu "$path" cpu.shares)"
devices_before=$(file devices "$path" devices.list | sort | tr '\n' ' ')
check "device list is not everything" "0" "$(file devices "$path" devices.list | grep -c '^a ' || true)"
systemctl daemon-reload
check "after daemon-reload: memory.limit_in_bytes" "67108864" "$(file memory "$path" memory.limit_in_bytes)"
check "after daemon-reload: cpu.cfs_quota_us" "50000" "$(file cpu "$path" cpu.cfs_quota_us)"
check "after daemon-reload: device list" "$devices_before" \
    "$(file devices "$path" devices.list | sort | tr '\n' ' ')"

crictl update --memory 134217728 --cpu-quota 25000 --cpu-period 100000 "$ctr" >/dev/null
check "update: unit MemoryLimit" "134217728" "$(show "$scope" MemoryLimit)"
check "update: unit CPUQuotaPerSecUSec" "250ms" "$(show "$scope" CPUQuotaPerSecUSec)"
check "update: memory.limit_in_bytes" "134217728" "$(file memory "$path" memory.limit_in_bytes)"
check "update: cpu.cfs_quota_us" "25000" "$(file cpu "$path" cpu.cfs_quota_us)"
if crictl update --memory 1024 "$ctr" >/dev/null 2>&1; then refused=no; else refused=yes; fi
check "update below usage refused" "yes" "$refused"
check "refused update: unit MemoryLimit kept" "134217728" "$(show "$scope" MemoryLimit)"
check "refused update: memory.limit_in_bytes kept" "134217728" "$(file memory "$path" memory.limit_in_bytes)"

nopod=$(crictl runp "$state/pod-noparent.json")
noctr=$(crictl create "$nopod" "$state/ctr.json" "$state/pod-noparent.json")
crictl start "$noctr" >/dev/null
check "pod without parent: its slice" "active" "$(show "cri-py-pod_$nopod.slice" ActiveState)"
check "pod without parent: scope in it" \
    "/cri.slice/cri-py.slice/cri-py-pod_$nopod.slice/cri-py-$noctr.scope" \
    "$(show "cri-py-$noctr.scope" ControlGroup)"
check "pod without parent: scope active" "active" "$(show "cri-py-$noctr.scope" ActiveState)"
echo "--- cri-py units while both pods run:"
systemctl list-units --no-pager --plain --no-legend 'cri-py-*' 'kubepods*'
# What `systemctl status` shows of each pod slice: active, with its container's scope (and the
# scope's processes) in its cgroup tree.
status_shows() {  # status_shows <unit> <text>: yes when `systemctl status <unit>` shows <text>
    local out
    out=$(systemctl status --no-pager --full --lines=0 "$1" 2>&1 || true)
    if grep -qF -- "$2" <<<"$out"; then echo yes; else echo no; fi
}
check "systemctl status: kubelet-named pod slice active" "yes" \
    "$(status_shows "$kubelet_slice" "Active: active")"
check "systemctl status: kubelet-named pod slice shows its scope" "yes" \
    "$(status_shows "$kubelet_slice" "$scope")"
check "systemctl status: own pod slice active" "yes" \
    "$(status_shows "cri-py-pod_$nopod.slice" "Active: active")"
check "systemctl status: own pod slice shows its scope" "yes" \
    "$(status_shows "cri-py-pod_$nopod.slice" "cri-py-$noctr.scope")"
check "kubelet's slice: its own limit kept" "536870912" "$(show "$kubelet_slice" MemoryLimit)"
check "kubelet's slice: not described as cri-py's" "kubelet stand-in pod slice" \
    "$(show "$kubelet_slice" Description)"

# Two pods (as critest makes them) naming a parent slice that does not exist: the first one's
# RunPodSandbox makes it with its limits (resources plus overhead), the second one uses it.
check "made parent: absent before" "inactive" "$(show "$made_slice" ActiveState)"
for n in 1 2; do
    cat >"$state/pod-made-$n.json" <<JSON
{"metadata": {"name": "sd-made-parent-$n", "namespace": "default", "uid": "sd-3$n"},
 "linux": {"cgroup_parent": "$made_slice",
           "resources": {"cpu_period": 100000, "cpu_quota": 50000, "cpu_shares": 512,
                         "memory_limit_in_bytes": 268435456},
           "overhead": {"cpu_period": 100000, "cpu_quota": 10000, "cpu_shares": 128,
                        "memory_limit_in_bytes": 16777216}}}
JSON
done
made1=$(crictl runp "$state/pod-made-1.json")
madectr=$(crictl create "$made1" "$state/ctr.json" "$state/pod-made-1.json")
crictl start "$madectr" >/dev/null
made2=$(crictl runp "$state/pod-made-2.json")
echo "--- the parent slice cri-py made:"
systemctl status --no-pager --full --lines=0 "$made_slice" | head -n 12 || true
check "made parent: active" "active" "$(show "$made_slice" ActiveState)"
check "made parent: transient" "yes" "$(show "$made_slice" Transient)"
check "made parent: described as cri-py's" "cri-py pod parent slice $made_slice" \
    "$(show "$made_slice" Description)"
check "made parent: unit MemoryLimit" "285212672" "$(show "$made_slice" MemoryLimit)"
check "made parent: unit CPUQuotaPerSecUSec" "600ms" "$(show "$made_slice" CPUQuotaPerSecUSec)"
check "made parent: unit CPUShares" "640" "$(show "$made_slice" CPUShares)"
check "made parent: memory.limit_in_bytes" "285212672" \
    "$(file memory "/$made_slice" memory.limit_in_bytes)"
check "made parent: cpu.cfs_quota_us" "60000" "$(file cpu "/$made_slice" cpu.cfs_quota_us)"
check "made parent: cpu.shares" "640" "$(file cpu "/$made_slice" cpu.shares)"
check "made parent: the container's scope in it" "/$made_slice/cri-py-$madectr.scope" \
    "$(show "cri-py-$madectr.scope" ControlGroup)"
check "made parent: systemctl status shows the scope" "yes" \
    "$(status_shows "$made_slice" "cri-py-$madectr.scope")"
# UpdatePodSandboxResources (kubelet's pod resize; crictl has no command for it) sizes it.
"$python" - "$sock" "$made1" <<'PY'
import sys

import grpc

from cri_py.api import api_pb2 as pb
from cri_py.api import api_pb2_grpc as rpc

sock, pod = sys.argv[1:]
limits = {"cpu_period": 100000, "cpu_quota": 50000, "cpu_shares": 512}
overhead = {"cpu_period": 100000, "cpu_quota": 10000, "cpu_shares": 128}
with grpc.insecure_channel(f"unix://{sock}") as channel:
    rpc.RuntimeServiceStub(channel).UpdatePodSandboxResources(
        pb.UpdatePodSandboxResourcesRequest(
            pod_sandbox_id=pod,
            resources=pb.LinuxContainerResources(memory_limit_in_bytes=335544320, **limits),
            overhead=pb.LinuxContainerResources(memory_limit_in_bytes=16777216, **overhead),
        ),
        timeout=30,
    )
PY
check "made parent, pod resized: unit MemoryLimit" "352321536" "$(show "$made_slice" MemoryLimit)"
check "made parent, pod resized: memory.limit_in_bytes" "352321536" \
    "$(file memory "/$made_slice" memory.limit_in_bytes)"

stop_daemon
check "daemon stopped: scope still active" "active" "$(show "$scope" ActiveState)"
check "daemon stopped: shims' scope active" "active" "$(show cri-py-shims.scope ActiveState)"
start_daemon
check "after restart: container running" "CONTAINER_RUNNING" \
    "$(crictl inspect -o go-template --template '{{.status.state}}' "$ctr")"
check "after restart: memory stats from the scope" "yes" \
    "$(crictl stats -o json "$ctr" | "$python" -c 'import json,sys; print("yes" if int(json.load(sys.stdin)["stats"][0]["memory"]["workingSetBytes"]["value"]) > 0 else "no")')"
check "after restart: leak checker" "" \
    "$("$python" -m cri_py.cli debug leaks --root-dir "$state/root" --run-dir "$state/run" --config-dir "$state/config.d" 2>&1 | grep -v '^no leaks' || true)"

crictl stop "$ctr" >/dev/null
# As the cgroupfs driver's cgroup, the scope outlives the container's processes until removal
# (its holder keeps it: the OOM counter and the last stats stay readable).
check "stopped container: scope kept" "active" "$(show "$scope" ActiveState)"
check "stopped container: only the holder left" "cri-py-scope-holder" \
    "$(xargs -r -I{} sh -c 'tr "\0" " " </proc/{}/cmdline' <"/sys/fs/cgroup/memory$path/cgroup.procs" | awk '{print $1}')"
crictl rm "$ctr" >/dev/null
check "removed container: scope gone" "inactive" "$(show "$scope" ActiveState)"
check "removed container: its cgroup gone" "no" "$([ -d "/sys/fs/cgroup/memory$path" ] && echo yes || echo no)"
# After the restart: the users of the slice cri-py made are known from the sandbox records.
crictl stop "$madectr" >/dev/null
crictl rm "$madectr" >/dev/null
crictl stopp "$made1" >/dev/null
crictl rmp "$made1" >/dev/null
check "made parent, first pod removed: kept for the second" "active" \
    "$(show "$made_slice" ActiveState)"
crictl stopp "$made2" >/dev/null
crictl rmp "$made2" >/dev/null
check "made parent, last pod removed: systemctl status says not active" "no" \
    "$(status_shows "$made_slice" "Active: active")"
check "made parent, last pod removed: unit inactive" "inactive" "$(show "$made_slice" ActiveState)"
# (systemctl loads any slice name it is asked about: what it shows now is a plain slice, not
# the transient unit cri-py made.)
check "made parent, last pod removed: transient unit gone" "no" "$(show "$made_slice" Transient)"
check "made parent, last pod removed: no limit left" "infinity" "$(show "$made_slice" MemoryLimit)"
check "made parent, last pod removed: cgroup gone" "no" \
    "$([ -d "/sys/fs/cgroup/memory/$made_slice" ] && echo yes || echo no)"
for p in "$pod" "$nopod"; do
    crictl stopp "$p" >/dev/null
    crictl rmp "$p" >/dev/null
done
echo "--- after removal:"
systemctl list-units --all --no-pager --plain --no-legend 'cri-py-*'
check "after removal: cri-py units" "" "$(our_units | tr '\n' ' ')"
check "after removal: systemctl status of the own pod slice" "no" \
    "$(status_shows "cri-py-pod_$nopod.slice" "Active: active")"
# The slice kubelet named is kubelet's: kubelet stops it when it removes the pod (containerd and
# CRI-O leave it too); what cri-py put in it must be gone.
check "after removal: systemctl status of the kubelet-named slice shows no scope" "no" \
    "$(status_shows "$kubelet_slice" "cri-py-")"
check "after removal: kubelet's slice untouched (active)" "active" \
    "$(show "$kubelet_slice" ActiveState)"
check "after removal: kubelet's slice untouched (limit)" "536870912" \
    "$(show "$kubelet_slice" MemoryLimit)"
systemctl stop "$kubelet_slice"
check "after removal: cgroup dirs" "" \
    "$(find /sys/fs/cgroup -name 'cri-py-*' -not -name 'cri-py-shims.scope' -not -path '*/cri-py-shims.scope/*' -type d | tr '\n' ' ')"
echo "systemd checks: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
