#!/usr/bin/env bash
# Runs critest against a cri-py started here with throw-away state and the lab's registry
# mirrors, then stops it (by PID). Usage: e2e/critest.sh [extra critest flags...]
# FOCUS/SKIP choose specs (ginkgo regexps); the JUnit report lands in $RESULTS_DIR.
# GATE=1 judges the run by name with e2e/junit_gate.py: any failure not listed in
# e2e/critest-expected-failures.txt, or a listed spec that passes, fails it.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
tools=${TOOLS_DIR:-/var/cache/cri-py/tools}/bin
python=${PYTHON:-$top/.venv/bin/python}
results=${RESULTS_DIR:-$top/results/critest}
focus=${FOCUS:-}
skip=${SKIP:-}

state=$(mktemp -d /tmp/cri-py-critest.XXXXXX)
sock=$state/run/cri-py.sock
mkdir -p "$results" "$state/config.d"
rm -f "$results/junit.xml"  # a crashed run must not be judged by the last report
# The run's cgroups (pods without a parent, shims) and bridge are its own, removed at the end.
cgroups=/cri-py-critest
bridge=cri-pyct0
printf 'cgroups:\n  default_parent: %s\n  shim_cgroup: %s/shims\n' "$cgroups" "$cgroups" \
    >"$state/config.d/10-cgroups.yaml"
printf 'network:\n  bridge: %s\n  subnet: 10.76.0.0/24\n' "$bridge" >"$state/config.d/20-network.yaml"
# NRI on a socket of the run's own, so critest's NRI specs run (-nri-socket below). Its
# plugin sync specs hold a Synchronize open for 2 s, as long as containerd's default request
# timeout (2 s, which would disconnect the plugin): the run gives plugins 10 s.
nri_sock=$state/run/nri.sock
printf 'nri:\n  enable: true\n  socket_path: %s\n  plugin_path: %s\n  request_timeout_seconds: 10\n' \
    "$nri_sock" "$state/nri-plugins" >"$state/config.d/30-nri.yaml"
"$python" -m cri_py.cli serve --config "$top/e2e/lab-config.yaml" --config-dir "$state/config.d" \
    --root-dir "$state/root" --run-dir "$state/run" --socket "$sock" >"$results/cri-py.log" 2>&1 &
daemon=$!
crictl() { "$tools/crictl" --runtime-endpoint "unix://$sock" --image-endpoint "unix://$sock" "$@"; }
cleanup() {
    # Pods a failed spec left behind are removed through the runtime (shims outlive the daemon
    # by design, so stopping the daemon alone would leave them running).
    if kill -0 "$daemon" 2>/dev/null; then
        for pod in $(crictl pods -q 2>/dev/null); do
            crictl stopp "$pod" >/dev/null 2>&1 || true
            crictl rmp "$pod" >/dev/null 2>&1 || true
        done
    fi
    kill -TERM "$daemon" 2>/dev/null && wait "$daemon" || true
    rm -rf "$state"
    ip link del "$bridge" 2>/dev/null || true
    # Deepest first; a cgroup still in use stays (and says so) rather than being forced.
    for hierarchy in /sys/fs/cgroup/*/; do
        [ -d "$hierarchy${cgroups#/}" ] || continue
        find "$hierarchy${cgroups#/}" -depth -type d -exec rmdir {} + 2>/dev/null ||
            echo "critest.sh: $hierarchy${cgroups#/} not removed (still in use?)" >&2
    done
}
trap cleanup EXIT
for _ in $(seq 100); do
    [ -S "$sock" ] && crictl version >/dev/null 2>&1 && break
    kill -0 "$daemon" 2>/dev/null || { cat "$results/cri-py.log"; exit 1; }
    sleep 0.1
done

args=(--runtime-endpoint "unix://$sock" --image-endpoint "unix://$sock" --nri-socket "$nri_sock"
      --ginkgo.junit-report "$results/junit.xml" --ginkgo.no-color)
[ -n "$focus" ] && args+=(--ginkgo.focus "$focus")
[ -n "$skip" ] && args+=(--ginkgo.skip "$skip")
rc=0
(cd "$results" && "$tools/critest" "${args[@]}" "$@") >"$results/critest.log" 2>&1 || rc=$?
# The one-line summary CI and people read: "N passed, N failed, N skipped". With GATE=1 the
# expected-failures list decides the exit code (e2e/junit_gate.py); otherwise critest does.
if [ ! -f "$results/junit.xml" ]; then
    tail -n 30 "$results/critest.log"
    exit $(( rc ? rc : 1 ))
fi
gate=("$python" "$top/e2e/junit_gate.py" "$results/junit.xml" --label critest)
if [ -n "${GATE:-}" ]; then
    "${gate[@]}" --expected "$top/e2e/critest-expected-failures.txt"
else
    "${gate[@]}" --report-only
    exit $rc
fi
