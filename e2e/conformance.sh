#!/usr/bin/env bash
# `make e2e-conformance`: the Kubernetes conformance suite (e2e.test, focus \[Conformance\]) on a
# kind cluster of one control-plane node and two workers, whose runtime is cri-py
# (kind-config/cluster.yaml) or, with RUNTIME=containerd, Debian's containerd + runc
# (kind-config/cluster-containerd.yaml): the baseline in the same lab. This script:
#   - creates the cluster in the lab's Docker under its own name and kubeconfig;
#   - runs e2e.test with the ginkgo CLI, NODES processes (ginkgo runs the [Serial] specs alone
#     at the end), against the cluster's API server; JUnit and suite.log in $RESULTS_DIR;
#   - prints "conformance: N passed, N failed, N skipped" (e2e/junit_gate.py); on cri-py, judges
#     the failures by name against e2e/conformance-expected-failures.txt and against the
#     containerd run of the same machine when there is one, else the committed
#     e2e/conformance-containerd-baseline.txt (a spec that passes there must pass here); on
#     containerd, reports only and writes baseline.txt;
#   - deletes the cluster (KEEP=1: keeps a failed run's), puts back the host sysctls the nodes
#     changed, and checks that no container or volume of the cluster is left.
# Needs: the lab's Docker (`make docker`), the lab registry on the kind network with the images
# (`make registry images kind-images`), the node image (`make kind-image [RUNTIME=containerd]`),
# kind, kubectl, e2e.test and ginkgo (`make tools-kind tools tools-e2e`).
#
# Environment (defaults):
#   RUNTIME      cri-py | containerd                    cri-py
#   FOCUS        ginkgo focus regexp                    \[Conformance\]
#   SKIP         ginkgo skip regexp                     (none)
#   NODES        ginkgo parallel processes              8
#   TIMEOUT      ginkgo suite timeout                   6h
#   RESULTS_DIR  /var/tmp/cri-py-results/conformance (cri-py), .../conformance-containerd
#   BASELINE_DIR containerd results compared with       /var/tmp/cri-py-results/conformance-containerd
#                (none there: e2e/conformance-containerd-baseline.txt)
#   EXPECTED     expected failures (cri-py runs)        e2e/conformance-expected-failures.txt
#   KIND_CLUSTER_NAME  cri-py-conformance (cri-py), cri-py-conformance-ctrd (containerd)
#   KEEP=1       keep the cluster of a failed run (kind delete cluster --name NAME after)
#   EXTRA_SUITE_FLAGS  more e2e.test flags
set -euo pipefail

top=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=e2e/host_sysctls.sh
. "$top/e2e/host_sysctls.sh"
tools=${TOOLS_DIR:-/var/cache/cri-py/tools}/bin
python=${PYTHON:-$top/.venv/bin/python}
runtime=${RUNTIME:-cri-py}
case $runtime in
    cri-py)
        config=$top/kind-config/cluster.yaml
        name=${KIND_CLUSTER_NAME:-cri-py-conformance}
        results=${RESULTS_DIR:-/var/tmp/cri-py-results/conformance} ;;
    containerd)
        config=$top/kind-config/cluster-containerd.yaml
        name=${KIND_CLUSTER_NAME:-cri-py-conformance-ctrd}
        results=${RESULTS_DIR:-/var/tmp/cri-py-results/conformance-containerd} ;;
    *) echo "RUNTIME must be cri-py or containerd, got '$runtime'" >&2; exit 2 ;;
esac
focus=${FOCUS:-'\[Conformance\]'}
skip=${SKIP:-}
nodes=${NODES:-8}
timeout=${TIMEOUT:-6h}
expected=${EXPECTED:-$top/e2e/conformance-expected-failures.txt}
baseline=${BASELINE_DIR:-/var/tmp/cri-py-results/conformance-containerd}
# containerd's run of the whole suite in this lab (baseline.txt of a RUNTIME=containerd run,
# committed): what a cri-py run is compared with when BASELINE_DIR has no run of its own.
baseline_file=$top/e2e/conformance-containerd-baseline.txt
export DOCKER_HOST=unix:///run/cri-py-docker/docker.sock
docker=/usr/bin/docker

t_start=$(date +%s)
log() { printf '[conformance %5ds] %s\n' $(($(date +%s) - t_start)) "$*"; }
die() { log "FAIL: $*"; exit 1; }
elapsed() { local s=$(($(date +%s) - $1)); printf '%dm%02ds' $((s / 60)) $((s % 60)); }

[ "$(id -u)" = 0 ] || die "must run as root"
for bin in kind kubectl e2e.test ginkgo; do
    [ -x "$tools/$bin" ] || die "$tools/$bin missing: run 'make tools-kind tools tools-e2e'"
done
[ -f "$expected" ] || die "no expected-failures file $expected"
$docker version --format '{{.Server.Version}}' >/dev/null 2>&1 || die "the lab's Docker does not answer: make docker"
node_image=$(sed -n 's/^[[:space:]]*image:[[:space:]]*\([^[:space:]#]*\).*/\1/p' "$config" | sort -u)
[ "$(wc -l <<<"$node_image")" = 1 ] || die "$config names more than one node image: $node_image"
$docker image inspect "$node_image" >/dev/null 2>&1 ||
    die "no node image $node_image in the lab's Docker: make kind-image RUNTIME=$runtime"

# One conformance run at a time on this machine (each is a 3-node cluster on 2 cores).
exec 8>/run/lock/cri-py-conformance.lock
flock -n 8 || die "another e2e/conformance.sh run holds /run/lock/cri-py-conformance.lock"
"$tools/kind" get clusters 2>/dev/null | grep -qxF "$name" &&
    die "a kind cluster named $name exists (an earlier run?): kind delete cluster --name $name"

work=$(mktemp -d /tmp/cri-py-conformance.XXXXXX)
export KUBECONFIG=$work/kubeconfig
# kind runs `docker` from PATH: Debian's CLI, whatever else is on PATH.
mkdir -p "$work/bin" "$results"
ln -s "$docker" "$work/bin/docker"
export PATH=$work/bin:$PATH
cluster_created=0
fg_pid=""
suite_pid=""

# run CMD...: CMD in the background, waited for, so that a signal reaches the traps at once.
run() {
    "$@" &
    fg_pid=$!
    local rc=0
    wait "$fg_pid" || rc=$?
    fg_pid=""
    return $rc
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    set +e
    if [ -n "$fg_pid" ] && kill -0 "$fg_pid" 2>/dev/null; then
        if [ "$fg_pid" = "$suite_pid" ]; then
            # ginkgo and its e2e.test processes (a process group of their own): an interrupt
            # first, which ends the running specs; what is still there after 90 s is killed
            # (the cluster is deleted next in any case).
            kill -INT -- "-$fg_pid" 2>/dev/null
            local waited=0
            while kill -0 "$fg_pid" 2>/dev/null && [ $waited -lt 90 ]; do
                sleep 1
                waited=$((waited + 1))
            done
            kill -KILL -- "-$fg_pid" 2>/dev/null
        else
            kill -TERM "$fg_pid"
        fi
        wait "$fg_pid" 2>/dev/null
    fi
    if [ "$cluster_created" = 1 ]; then
        if [ $rc -ne 0 ]; then
            rm -rf "$results/logs"
            timeout 300 "$tools/kind" export logs "$results/logs" --name "$name" >/dev/null 2>&1 &&
                log "kind's logs of the failed run: $results/logs"
        fi
        if [ $rc -ne 0 ] && [ "${KEEP:-0}" = 1 ]; then
            cp "$KUBECONFIG" "$results/kubeconfig"
            log "KEEP=1: cluster $name kept (KUBECONFIG=$results/kubeconfig); kind delete cluster --name $name"
        else
            "$tools/kind" delete cluster --name "$name" >/dev/null 2>&1 || log "kind delete cluster $name failed"
            if $docker ps -aq --filter "label=io.x-k8s.kind.cluster=$name" | grep -q .; then
                log "kind left containers of $name"
                [ $rc -ne 0 ] || rc=1
            fi
        fi
    fi
    local line
    while read -r line; do log "$line"; done < <(restore_host_sysctls)
    rm -rf "$work"
    log "exit $rc after $(elapsed "$t_start")"
    exit $rc
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT
trap 'log "terminated"; exit 143' TERM

save_host_sysctls

log "kind create cluster $name ($runtime nodes, $node_image, $config)"
t0=$(date +%s)
cluster_created=1
run "$tools/kind" create cluster --name "$name" --config "$config" --kubeconfig "$KUBECONFIG" \
    --retain --wait 0s >"$work/kind-create.log" 2>&1 || { cat "$work/kind-create.log" >&2; die "kind create cluster failed"; }
run "$tools/kubectl" wait --for=condition=Ready node --all --timeout=600s >/dev/null ||
    die "the nodes did not become Ready"
for workload in deployment/coredns daemonset/kube-proxy daemonset/kindnet; do
    run "$tools/kubectl" -n kube-system rollout status "$workload" --timeout=300s >/dev/null ||
        die "$workload is not running"
done
log "cluster up in $(elapsed "$t0"): $("$tools/kubectl" get nodes --no-headers -o \
    custom-columns=N:.metadata.name,R:.status.nodeInfo.containerRuntimeVersion | tr -s ' ' | paste -sd, -)"

# The suite as kind's own CI runs it (--provider skeleton: a cluster with no cloud), with the
# two workers as its node count. Serial specs run alone at the end.
suite_flags=(--kubeconfig "$KUBECONFIG" --provider skeleton --num-nodes 2
             --kubectl-path "$tools/kubectl" --report-dir "$results" --disable-log-dump)
# shellcheck disable=SC2206  # word splitting is the point
[ -n "${EXTRA_SUITE_FLAGS:-}" ] && suite_flags+=($EXTRA_SUITE_FLAGS)
ginkgo_flags=(--nodes "$nodes" --timeout "$timeout" --no-color --silence-skips
              --junit-report junit.xml --output-dir "$results" --focus "$focus")
[ -n "$skip" ] && ginkgo_flags+=(--skip "$skip")
rm -f "$results/junit.xml" "$results/suite.log"
log "ginkgo ${ginkgo_flags[*]} e2e.test -- ${suite_flags[*]}"
t0=$(date +%s)
rc=0
# setsid: ginkgo leads a process group with its e2e.test processes, which cleanup can signal
# whole (a background job of this shell would also ignore SIGINT).
(cd "$work" && exec setsid "$tools/ginkgo" "${ginkgo_flags[@]}" "$tools/e2e.test" -- "${suite_flags[@]}") \
    >"$results/suite.log" 2>&1 &
fg_pid=$!
suite_pid=$fg_pid
wait "$fg_pid" || rc=$?
fg_pid=""
log "suite finished (ginkgo exit $rc) in $(elapsed "$t0"); log: $results/suite.log"
[ -f "$results/junit.xml" ] || { tail -n 40 "$results/suite.log" >&2; die "the suite wrote no JUnit report"; }
timed_out=0
if grep -q "Suite Timeout Elapsed" "$results/suite.log"; then
    log "the suite hit its timeout ($timeout): the specs it did not reach did not run"
    timed_out=1
fi

# ginkgo exits 1 on any failed spec, expected or not: the gate judges by name instead.
gate=$timed_out
if [ "$runtime" = containerd ]; then
    "$python" "$top/e2e/junit_gate.py" "$results/junit.xml" --label conformance-containerd --report-only
    "$python" "$top/e2e/junit_gate.py" "$results/junit.xml" --label conformance-containerd \
        --write-baseline "$results/baseline.txt" --header "$(printf '%s\n' \
        "make e2e-conformance RUNTIME=containerd, $(date -u '+%F'): $($docker exec "$name-control-plane" containerd --version | awk '{print $1, $3}')" \
        "focus: $focus" "skip: $skip" "nodes: $nodes")"
else
    "$python" "$top/e2e/junit_gate.py" "$results/junit.xml" --label conformance --expected "$expected" || gate=1
    # Every spec that passes on the containerd nodes must pass on the cri-py nodes: against a
    # containerd run of this machine when there is one, else the committed baseline file.
    if [ -f "$baseline/junit.xml" ]; then
        log "the containerd baseline ($baseline, $(date -r "$baseline/junit.xml" '+%F %H:%M')):"
        baseline_report=$baseline/junit.xml
    else
        header=$(sed -n 's/^# \(make e2e-conformance .*\)/\1/p' "$baseline_file")
        log "the containerd baseline: $baseline_file ($header)"
        baseline_report=$baseline_file
    fi
    "$python" "$top/e2e/junit_gate.py" "$results/junit.xml" --label cri-py \
        --compare "$baseline_report" --baseline-label containerd || gate=1
fi
exit "$gate"
