#!/usr/bin/env bash
# Inside a node whose PID 1 is systemd (run by e2e/systemd_node.sh): cri-py with the systemd
# cgroup driver, checked by what systemd and the cgroup files say. A pod under a slice kubelet
# would name and a pod without a parent, each with a limited container: units and limits while
# they run (properties and files), after `systemctl daemon-reload`, after
# UpdateContainerResources, across a daemon restart, and nothing left after removal.
# Usage: e2e/systemd_checks.sh  (PYTHON, TOOLS_DIR, RESULTS_DIR as for e2e/critest.sh)
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
tools=${TOOLS_DIR:-/var/cache/cri-py/tools}/bin
python=${PYTHON:-$top/.venv/bin/python}
results=${RESULTS_DIR:-$top/results/systemd-checks}
mkdir -p "$results"
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
    for _ in $(seq 100); do
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
cleanup() {
    if kill -0 "$daemon" 2>/dev/null; then
        for pod in $(crictl pods -q 2>/dev/null); do
            crictl stopp "$pod" >/dev/null 2>&1 || true
            crictl rmp "$pod" >/dev/null 2>&1 || true
        done
    fi
    stop_daemon
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
echo "--- cri-py units while both pods run:"
systemctl list-units --no-pager --plain --no-legend 'cri-py-*' 'kubepods*'

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
for p in "$pod" "$nopod"; do
    crictl stopp "$p" >/dev/null
    crictl rmp "$p" >/dev/null
done
echo "--- after removal:"
systemctl list-units --all --no-pager --plain --no-legend 'cri-py-*'
check "after removal: cri-py units" "" "$(our_units | tr '\n' ' ')"
check "after removal: cgroup dirs" "" \
    "$(find /sys/fs/cgroup -name 'cri-py-*' -not -name 'cri-py-shims.scope' -not -path '*/cri-py-shims.scope/*' -type d | tr '\n' ' ')"
echo "systemd checks: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
