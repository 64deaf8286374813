#!/usr/bin/env bash
# `make e2e-kind`: a kind cluster whose nodes run cri-py -- one control-plane node and two
# workers, from kind-config/cluster.yaml -- checked end to end with kubectl, then deleted.
# Every step is printed with the time since the start; the wall time of each stage is summed up
# at the end. Everything it made (cluster, host image, port-forward, temp dir) is removed at the
# end, on failure and on SIGINT/SIGTERM too; kind and kubectl use their own KUBECONFIG in the
# temp dir, never ~/.kube/config.
#
# Needs: the lab's Docker (`make docker`), kind (`make tools-kind`), kubectl (`make tools`), the
# node image (`make kind-image`) and the lab registry with the cluster's images (`make registry
# images`), which the nodes pull through their cri-py mirrors at http://172.29.0.1:5000.
#
# Checks, in order: every node Ready with CONTAINER-RUNTIME cri-py://...; CoreDNS, kube-proxy and
# kindnet running; a 3-replica Deployment spread over both workers; its ClusterIP Service
# answered from a pod on another node; DNS from a non-root pod; kubectl logs, exec, attach and
# port-forward; an image built on the host, loaded with `kind load docker-image` and run;
# `kubectl delete` of all that leaves no pod, container, mount or cgroup on any node (and
# `cri-py debug leaks` finds nothing); `kind delete cluster` leaves none of the nodes' containers,
# volumes, veths, mounts and cgroups on the host, and no host sysctl changed.
#
# Environment: TOOLS_DIR (/var/cache/cri-py/tools), RESULTS_DIR (results/kind: kind's logs of a
# failed run), KIND_CLUSTER_NAME (cri-py-e2e), FORWARD_PORT (18089), KEEP=1 keeps the cluster
# and the temp dir of a failed run for a look (`kind delete cluster --name cri-py-e2e` after).
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=e2e/host_sysctls.sh
. "$top/e2e/host_sysctls.sh"
tools=${TOOLS_DIR:-/var/cache/cri-py/tools}/bin
results=${RESULTS_DIR:-$top/results/kind}
name=${KIND_CLUSTER_NAME:-cri-py-e2e}
config=$top/kind-config/cluster.yaml
forward_port=${FORWARD_PORT:-18089}
ns=kind-e2e
agnhost=registry.k8s.io/e2e-test-images/agnhost:2.66.1
busybox=registry.k8s.io/e2e-test-images/busybox:1.37.0-2
# The base of the image built on the host for `kind load`: the lab registry's busybox, which
# the lab's dockerd pulls over loopback.
host_base=127.0.0.1:5000/docker.io/library/busybox:1.37.0
export DOCKER_HOST=unix:///run/cri-py-docker/docker.sock
docker=/usr/bin/docker
data_root=/var/lib/cri-py-lab/docker
run_root=/run/cri-py-docker
kind_bridge=cri-py-kind
cgroup_parent=cri-py-lab-docker

t_start=$(date +%s)
log() { printf '[kind %4ds] %s\n' $(($(date +%s) - t_start)) "$*"; }
die() { log "FAIL: $*"; exit 1; }
ok() { log "  ok: $*"; }

# Stage timing: `stage NAME` closes the running stage and opens the next.
stages=()
stage_name=""
stage_t0=0
end_stage() {
    [ -n "$stage_name" ] || return 0
    stages+=("$(printf '%5ds  %s' $(($(date +%s) - stage_t0)) "$stage_name")")
    stage_name=""
}
stage() {
    end_stage
    stage_name=$1
    stage_t0=$(date +%s)
    log "==> $1"
}

[ "$(id -u)" = 0 ] || die "must run as root"
for bin in kind kubectl; do
    [ -x "$tools/$bin" ] || die "$tools/$bin missing: run 'make tools-kind tools'"
done
node_image=$(sed -n 's/^[[:space:]]*image:[[:space:]]*\([^[:space:]#]*\).*/\1/p' "$config" | sort -u)
[ "$(wc -l <<<"$node_image")" = 1 ] || die "$config names more than one node image: $node_image"
# The cluster's cgroup driver: kubelet's (cluster.yaml); cri-py's in the image must agree.
cgroup_driver=$(sed -n 's/^[[:space:]]*cgroupDriver:[[:space:]]*\([a-z]*\).*/\1/p' "$config")
case $cgroup_driver in systemd | cgroupfs) ;; *) die "$config: cgroupDriver '$cgroup_driver'" ;; esac

work=$(mktemp -d /tmp/cri-py-kind.XXXXXX)
export KUBECONFIG=$work/kubeconfig
# kind runs `docker` from PATH: Debian's CLI (the one docker.sh installs), whatever else is on PATH.
mkdir -p "$work/bin" "$results"
ln -s "$docker" "$work/bin/docker"
export PATH=$work/bin:$PATH
loaded_image=cri-py-e2e/kind-load:$(date +%s)
forward_pid=""
fg_pid=""
cluster_created=0
passed=0

kind() { "$tools/kind" "$@"; }
# run CMD...: CMD in the background, waited for, so that SIGTERM/SIGINT reach the traps at once
# (bash runs a trap only after a foreground child ends); cleanup stops CMD first.
run() {
    "$@" &
    fg_pid=$!
    local rc=0
    wait "$fg_pid" || rc=$?
    fg_pid=""
    return $rc
}
kubectl() { "$tools/kubectl" --kubeconfig "$KUBECONFIG" "$@"; }
k() { kubectl -n "$ns" "$@"; }

# node_resources: what the cluster's nodes hold on the host, one "KIND WHAT" line each, while
# they run (only these: other clusters may share the lab's Docker at the same time).
node_resources() {
    local node id iflink veth d
    for node in "${nodes[@]}"; do
        id=$($docker inspect -f '{{.Id}}' "$node")
        echo "container $id"
        $docker inspect -f '{{range .Mounts}}{{if eq .Type "volume"}}volume {{.Name}}{{"\n"}}{{end}}{{end}}' "$node" | grep .
        echo "mount $($docker inspect -f '{{.GraphDriver.Data.MergedDir}}' "$node")"
        echo "mount $($docker inspect -f '{{.NetworkSettings.SandboxKey}}' "$node")"
        # The host end of the node's eth0.
        iflink=$($docker exec "$node" cat /sys/class/net/eth0/iflink)
        veth=$(ip -o link show | awk -F': ' -v i="$iflink" '$1 == i {print $2}' | cut -d@ -f1)
        [ -n "$veth" ] || die "$node: no host link with index $iflink"
        echo "veth $veth"
        for d in /sys/fs/cgroup/*/"$cgroup_parent/$id"; do
            if [ -d "$d" ]; then echo "cgroup $d"; fi
        done
    done
}

# still_there < RESOURCES: the lines of node_resources that still exist on the host.
still_there() {
    local kind what
    while read -r kind what; do
        case $kind in
        container) $docker inspect "$what" >/dev/null 2>&1 ;;
        volume) $docker volume inspect "$what" >/dev/null 2>&1 ;;
        mount) awk -v m="$what" '$5 == m {found = 1} END {exit !found}' /proc/self/mountinfo ;;
        veth) ip link show "$what" >/dev/null 2>&1 ;;
        cgroup) [ -d "$what" ] ;;
        *) false ;;
        esac && echo "$kind $what"
    done
    return 0
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    set +e
    end_stage
    log "==> cleanup"
    local p
    for p in "$fg_pid" "$forward_pid"; do
        if [ -n "$p" ] && kill -0 "$p" 2>/dev/null; then
            kill -TERM "$p"
            wait "$p" 2>/dev/null
        fi
    done
    # Only a cluster this run created (never one that was there before it).
    if [ "$cluster_created" = 1 ]; then
        if [ $rc -ne 0 ]; then
            rm -rf "$results/logs"
            timeout 300 "$tools/kind" export logs "$results/logs" --name "$name" >/dev/null 2>&1 &&
                log "kind's logs of the failed run: $results/logs"
        fi
        if [ $rc -ne 0 ] && [ "${KEEP:-0}" = 1 ]; then
            log "KEEP=1: cluster $name kept (KUBECONFIG=$KUBECONFIG); kind delete cluster --name $name"
        else
            kind delete cluster --name "$name" >/dev/null 2>&1 || log "kind delete cluster failed"
        fi
    fi
    $docker image inspect "$loaded_image" >/dev/null 2>&1 && $docker rmi -f "$loaded_image" >/dev/null
    # Host sysctls the nodes changed are put back.
    local line
    while read -r line; do log "$line"; done < <(restore_host_sysctls)
    if [ $rc -ne 0 ] && [ "${KEEP:-0}" = 1 ]; then
        log "kept $work"
    else
        rm -rf "$work"
    fi
    log "stage times:"
    local s
    for s in "${stages[@]}"; do printf '    %s\n' "$s"; done
    if [ $rc -eq 0 ] && [ "$passed" = 1 ]; then
        log "PASS: make e2e-kind in $(($(date +%s) - t_start))s"
    else
        log "FAIL (exit $rc) after $(($(date +%s) - t_start))s"
        [ $rc -ne 0 ] || rc=1
    fi
    exit $rc
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT
trap 'log "terminated"; exit 143' TERM

# wait_until SECONDS DESCRIPTION COMMAND...: poll COMMAND every 2s.
wait_until() {
    local timeout=$1 what=$2
    shift 2
    local deadline=$((SECONDS + timeout))
    until "$@"; do
        ((SECONDS < deadline)) || die "$what: not within ${timeout}s"
        sleep 2
    done
}

# ------------------------------------------------------------------------------------------
stage "preflight"
"$top/e2e/docker.sh" status >/dev/null || die "the lab's Docker is not running: make docker"
$docker image inspect "$node_image" >/dev/null 2>&1 || die "node image $node_image missing: make kind-image"
curl -sf -o /dev/null --max-time 5 http://172.29.0.1:5000/v2/ ||
    die "the lab registry is not served on 172.29.0.1:5000: make registry docker"
curl -sf --max-time 5 http://127.0.0.1:5000/v2/docker.io/library/busybox/tags/list | grep -q '"1.37.0"' ||
    die "$host_base is not in the lab registry: make images"
kind get clusters 2>/dev/null | grep -qxF "$name" &&
    die "a kind cluster named $name exists (an earlier run?): kind delete cluster --name $name"
if ss -Hltn "sport = :$forward_port" | grep -q .; then die "port $forward_port is in use"; fi
save_host_sysctls
ok "node image $node_image ($($docker image inspect -f '{{.Size}}' "$node_image" | awk '{printf "%.0f MB", $1/1e6}')), $("$tools/kind" version), $("$tools/kubectl" version --client | sed -n 1p)"

# ------------------------------------------------------------------------------------------
stage "kind create cluster (1 control-plane node, 2 workers)"
cluster_created=1
run "$tools/kind" create cluster --name "$name" --config "$config" --kubeconfig "$KUBECONFIG" --retain --wait 0s
mapfile -t nodes < <(kind get nodes --name "$name" | sort)
[ "${#nodes[@]}" = 3 ] || die "kind made ${#nodes[@]} nodes: ${nodes[*]}"
control_plane=$name-control-plane
mapfile -t workers < <(printf '%s\n' "${nodes[@]}" | grep -vxF "$control_plane")
[ "${#workers[@]}" = 2 ] || die "expected two workers, got: ${workers[*]}"
node_resources >"$work/host-resources"
ok "nodes: ${nodes[*]}; on the host: $(awk '{print $1}' "$work/host-resources" | sort | uniq -c | awk '{printf "%s %s, ", $1, $2}')"

# ------------------------------------------------------------------------------------------
stage "every node Ready, CONTAINER-RUNTIME cri-py://"
run "$tools/kubectl" --kubeconfig "$KUBECONFIG" wait --for=condition=Ready node --all --timeout=600s >/dev/null ||
    { kubectl get nodes -o wide; die "nodes not Ready"; }
kubectl get nodes -o wide
runtimes=$(kubectl get nodes -o jsonpath='{range .items[*]}{.metadata.name}={.status.nodeInfo.containerRuntimeVersion}{"\n"}{end}')
[ "$(grep -c . <<<"$runtimes")" = 3 ] || die "the API server lists $(grep -c . <<<"$runtimes") nodes"
while IFS== read -r node runtime; do
    [[ $runtime == cri-py://* ]] || die "node $node reports container runtime '$runtime'"
done <<<"$runtimes"
ok "3 nodes Ready, runtimes: $(cut -d= -f2 <<<"$runtimes" | sort -u | tr '\n' ' ')"

# ------------------------------------------------------------------------------------------
stage "CoreDNS, kube-proxy and kindnet running"
for workload in deployment/coredns daemonset/kube-proxy daemonset/kindnet; do
    run "$tools/kubectl" --kubeconfig "$KUBECONFIG" -n kube-system rollout status "$workload" --timeout=300s
done
kubectl -n kube-system get pods -o wide
for app in kube-dns kube-proxy kindnet; do
    running=$(kubectl -n kube-system get pods -l "k8s-app=$app" --field-selector=status.phase=Running -o name | grep -c . || true)
    [ "$running" -ge 1 ] || die "no running pod with k8s-app=$app"
done
[ "$(kubectl -n kube-system get pods -l k8s-app=kube-proxy --field-selector=status.phase=Running -o name | grep -c .)" = 3 ] ||
    die "kube-proxy does not run on all 3 nodes"
ok "coredns, kube-proxy (3), kindnet (3) running"

# ------------------------------------------------------------------------------------------
stage "a 3-replica Deployment spread over the workers"
kubectl create namespace "$ns" >/dev/null
k apply -f - >/dev/null <<EOF
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  replicas: 3
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      affinity:
        nodeAffinity:
          requiredDuringSchedulingIgnoredDuringExecution:
            nodeSelectorTerms:
              - matchExpressions:
                  - {key: node-role.kubernetes.io/control-plane, operator: DoesNotExist}
      topologySpreadConstraints:
        - maxSkew: 1
          topologyKey: kubernetes.io/hostname
          whenUnsatisfiable: DoNotSchedule
          labelSelector:
            matchLabels: {app: web}
      containers:
        - name: web
          image: $agnhost
          args: [netexec, --http-port=8080]
          ports: [{containerPort: 8080}]
          readinessProbe:
            httpGet: {path: /hostname, port: 8080}
            periodSeconds: 2
---
apiVersion: v1
kind: Service
metadata:
  name: web
spec:
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080}]
EOF
run "$tools/kubectl" --kubeconfig "$KUBECONFIG" -n "$ns" rollout status deployment/web --timeout=300s
k get pods -l app=web -o wide
declare -A pod_node=()
while read -r pod node; do pod_node[$pod]=$node; done < <(
    k get pods -l app=web -o jsonpath='{range .items[*]}{.metadata.name} {.spec.nodeName}{"\n"}{end}')
[ "${#pod_node[@]}" = 3 ] || die "web has ${#pod_node[@]} pods, not 3"
for w in "${workers[@]}"; do
    printf '%s\n' "${pod_node[@]}" | grep -qxF "$w" || die "no web pod on worker $w"
done
printf '%s\n' "${pod_node[@]}" | grep -qxF "$control_plane" && die "a web pod runs on the control plane"
ok "web pods on $(printf '%s\n' "${pod_node[@]}" | sort | uniq -c | awk '{printf "%s: %s  ", $2, $1}')"

# ------------------------------------------------------------------------------------------
stage "the $cgroup_driver cgroup driver: kubelet and cri-py agree, the pods' cgroups follow it"
for node in "${nodes[@]}"; do
    said=$($docker exec "$node" journalctl -u kubelet -b --no-pager -o cat |
        sed -n 's/.*Using cgroup driver setting received from the CRI runtime.*cgroupDriver="\([a-z]*\)".*/\1/p' | tail -n 1)
    [ "$said" = "$cgroup_driver" ] ||
        die "$node: kubelet got cgroup driver '$said' from cri-py (RuntimeConfig), cluster.yaml says $cgroup_driver"
done
ok "kubelet on each node: 'Using cgroup driver setting received from the CRI runtime' cgroupDriver=$cgroup_driver"
# The web containers on each worker, and the systemd units that hold them (or none).
for node in "${workers[@]}"; do
    containers=$($docker exec "$node" crictl ps -q --no-trunc --namespace "$ns" --label io.kubernetes.container.name=web)
    [ -n "$containers" ] || die "$node: crictl lists no web container"
    pod_uids=$(k get pods -l app=web --field-selector "spec.nodeName=$node" -o jsonpath='{.items[*].metadata.uid}')
    # kind's kubelet has cgroupRoot /kubelet: its slices are kubelet-kubepods[-<qos>][-pod<uid>].slice.
    units=$($docker exec "$node" systemctl list-units --no-legend --plain --all 'cri-py-*.scope' '*kubepods*.slice' |
        awk '{print $1, $3}')
    if [ "$cgroup_driver" = systemd ]; then
        grep -Eq '^(.*-)?kubepods\.slice active$' <<<"$units" || die "$node: no active kubepods slice: $units"
        for uid in $pod_uids; do
            grep -Eq "^.*kubepods.*-pod${uid//-/_}\.slice active\$" <<<"$units" || die "$node: pod $uid has no active slice: $units"
        done
        for id in $containers; do
            grep -q "^cri-py-$id.scope active\$" <<<"$units" || die "$node: container $id has no active cri-py-$id.scope: $units"
        done
    else
        grep -q '^cri-py-' <<<"$units" && die "$node: cgroupfs driver, yet systemd has cri-py scopes: $units"
    fi
    ok "$node: $(wc -w <<<"$containers") web container(s), $(grep -c 'scope active$' <<<"$units" || true) active cri-py-*.scope and $(grep -c 'slice active$' <<<"$units" || true) active *kubepods*.slice units"
done

# ------------------------------------------------------------------------------------------
stage "the ClusterIP Service reached from a pod on another node; DNS from a non-root pod"
client_node=${workers[0]}
k apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Pod
metadata:
  name: client
spec:
  nodeName: $client_node
  # sleep as PID 1 ignores SIGTERM: the kill after the grace period ends it.
  terminationGracePeriodSeconds: 2
  securityContext: {runAsNonRoot: true, runAsUser: 65534, runAsGroup: 65534}
  containers:
    - name: client
      image: $busybox
      command: [sleep, "3600"]
      securityContext: {allowPrivilegeEscalation: false}
EOF
k wait --for=condition=Ready pod/client --timeout=180s >/dev/null
cluster_ip=$(k get service web -o jsonpath='{.spec.clusterIP}')
[ -n "$cluster_ip" ] || die "service web has no ClusterIP"
declare -A answered=()
remote=""
last_error=""
for _ in $(seq 40); do
    # (busybox wget -T segfaults in Debian's build: the timeout applet bounds it instead)
    if ! who=$(k exec client -- timeout 5 wget -q -O - "http://$cluster_ip/hostname" 2>"$work/wget.err"); then
        last_error=$(tail -n 2 "$work/wget.err")
        sleep 1
        continue
    fi
    answered[$who]=1
    if [ -n "${pod_node[$who]:-}" ] && [ "${pod_node[$who]}" != "$client_node" ]; then
        remote=$who
        break
    fi
done
[ -n "$remote" ] ||
    die "no answer from a web pod on another node than $client_node (answers: ${!answered[*]}; last error: $last_error)"
ok "http://$cluster_ip/ from client on $client_node answered by $remote on ${pod_node[$remote]}"
[ "$(k exec client -- id -u)" = 65534 ] || die "client does not run as uid 65534"
# resolves NAME IP: NAME's A record, looked up from the non-root client, is IP.
resolves() {
    local out
    out=$(k exec client -- nslookup -type=a "$1" 2>&1 || true)
    grep -Eq "^Address:[[:space:]]*$2\$" <<<"$out" || die "$1 did not resolve to $2 in the client pod: $out"
}
resolves "web.$ns.svc.cluster.local" "$cluster_ip"
api_ip=$(kubectl get service kubernetes -o jsonpath='{.spec.clusterIP}')
resolves kubernetes.default.svc.cluster.local "$api_ip"
ok "as uid 65534: web.$ns.svc.cluster.local -> $cluster_ip, kubernetes.default.svc.cluster.local -> $api_ip"

# ------------------------------------------------------------------------------------------
stage "kubectl logs, exec, attach, port-forward"
web=$remote
logs=$(k logs "$web")
grep -q "/hostname" <<<"$logs" || die "kubectl logs $web shows no /hostname request: $logs"
ok "logs: $(grep -c /hostname <<<"$logs") /hostname requests in $web's log"
[ "$(k exec "$web" -- cat /etc/hostname)" = "$web" ] || die "kubectl exec $web: /etc/hostname is not $web"
[ "$(printf 'from stdin\n' | k exec -i "$web" -- cat)" = "from stdin" ] || die "kubectl exec -i: stdin did not come back"
ok "exec: /etc/hostname is $web; stdin through exec -i"
k apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Pod
metadata:
  name: attach
spec:
  nodeName: ${workers[1]}
  restartPolicy: Never
  containers:
    - name: attach
      image: $busybox
      command: [sh, -c, 'while read -r line; do echo "echo: \$line"; done; echo "stdin closed"']
      stdin: true
      stdinOnce: true
EOF
k wait --for=condition=Ready pod/attach --timeout=180s >/dev/null
attached=$(printf 'one\ntwo\n' | k attach -i attach -c attach 2>/dev/null)
grep -qx "echo: one" <<<"$attached" && grep -qx "echo: two" <<<"$attached" ||
    die "kubectl attach: got '$attached'"
wait_until 60 "attach pod to finish once its stdin closed" \
    sh -c "[ \"\$('$tools/kubectl' --kubeconfig '$KUBECONFIG' -n $ns get pod attach -o jsonpath='{.status.phase}')\" = Succeeded ]"
grep -q "stdin closed" <<<"$(k logs attach)" || die "attach pod's log lacks 'stdin closed'"
ok "attach: lines echoed back, the container ended when stdin closed (stdinOnce)"
kubectl -n "$ns" port-forward "pod/$web" "$forward_port:8080" >"$work/port-forward.log" 2>&1 &
forward_pid=$!
wait_until 30 "kubectl port-forward listening" grep -q "Forwarding from 127.0.0.1:$forward_port" "$work/port-forward.log"
got=$(curl -sf --max-time 5 "http://127.0.0.1:$forward_port/hostname") || die "curl through port-forward failed"
[ "$got" = "$web" ] || die "port-forward reached '$got', not $web"
kill -TERM "$forward_pid"
wait "$forward_pid" 2>/dev/null || true
forward_pid=""
ok "port-forward: 127.0.0.1:$forward_port -> $web:8080 answered '$got'"

# ------------------------------------------------------------------------------------------
stage "an image built on the host, kind load docker-image, run in a pod"
$docker pull -q "$host_base" >/dev/null
base_cid=$($docker create "$host_base" true)
# docker import: a new image (one layer, its own config) from the busybox root filesystem.
$docker export "$base_cid" | $docker import \
    --change 'CMD ["sh", "-c", "echo kind-load-ok on $(hostname); exec sleep 3600"]' - "$loaded_image" >/dev/null
$docker rm "$base_cid" >/dev/null
ok "built $loaded_image ($($docker image inspect -f '{{.Id}}' "$loaded_image"))"
run "$tools/kind" load docker-image "$loaded_image" --name "$name"
for node in "${nodes[@]}"; do
    $docker exec "$node" crictl inspecti "docker.io/$loaded_image" >/dev/null ||
        die "$loaded_image is not in $node's image store after kind load"
done
ok "$loaded_image in the store of ${nodes[*]}"
k apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Pod
metadata:
  name: loaded
spec:
  terminationGracePeriodSeconds: 2
  containers:
    - name: loaded
      image: $loaded_image
      imagePullPolicy: Never
EOF
k wait --for=condition=Ready pod/loaded --timeout=180s >/dev/null
wait_until 30 "loaded pod's log" sh -c "'$tools/kubectl' --kubeconfig '$KUBECONFIG' -n $ns logs loaded | grep -q kind-load-ok"
ok "pod loaded on $(k get pod loaded -o jsonpath='{.spec.nodeName}'): $(k logs loaded)"

# ------------------------------------------------------------------------------------------
stage "kubectl delete leaves no pod, container, mount or cgroup on any node"
# What the namespace's pods are on the nodes: pod UIDs, sandbox and container IDs.
mapfile -t uids < <(k get pods -o jsonpath='{range .items[*]}{.metadata.uid}{"\n"}{end}')
declare -A node_ids=()
for node in "${nodes[@]}"; do
    ids=$($docker exec "$node" crictl pods --namespace "$ns" -q)
    for sandbox in $ids; do
        ids+=" $($docker exec "$node" crictl ps -a -q --pod "$sandbox" | tr '\n' ' ')"
    done
    node_ids[$node]=$ids
done
log "  deleting namespace $ns: ${#uids[@]} pods ($(for n in "${nodes[@]}"; do printf '%s: %s IDs  ' "$n" "$(wc -w <<<"${node_ids[$n]}")"; done))"
run "$tools/kubectl" --kubeconfig "$KUBECONFIG" delete namespace "$ns" --wait=true --timeout=300s >/dev/null
# node_clean NODE: nothing of the deleted pods left in NODE (its crictl, mounts, cgroups).
node_clean() {
    local node=$1 id uid left
    left=$($docker exec "$node" sh -c 'crictl pods -q; crictl ps -a -q; cat /proc/1/mountinfo; find /sys/fs/cgroup -type d' 2>&1)
    for id in ${node_ids[$node]}; do
        grep -q "$id" <<<"$left" && { echo "$node: $id still present: $(grep "$id" <<<"$left" | head -3)"; return 1; }
    done
    for uid in "${uids[@]}"; do
        # cgroupfs names pod cgroups pod<uid>, the systemd driver pod<uid with _>.
        grep -q -e "$uid" -e "${uid//-/_}" <<<"$left" &&
            { echo "$node: pod $uid still present: $(grep -e "$uid" -e "${uid//-/_}" <<<"$left" | head -3)"; return 1; }
    done
    return 0
}
for node in "${nodes[@]}"; do
    t_node=$SECONDS
    deadline=$((SECONDS + 120))
    said=""
    until out=$(node_clean "$node"); do
        ((SECONDS < deadline)) || die "after kubectl delete: $out"
        # What the node still tears down once the API has forgotten the pods (said once).
        [ -n "$said" ] || { log "  waiting: $out"; said=1; }
        sleep 3
    done
    leaks=$($docker exec "$node" sh -c 'exec "$(command -v cri-py || echo /opt/cri-py/bin/cri-py)" debug leaks' 2>&1) ||
        die "cri-py debug leaks on $node: $leaks"
    ok "$node: no sandbox, container, mount or cgroup of the deleted pods; cri-py debug leaks: $leaks ($((SECONDS - t_node))s)"
done

# ------------------------------------------------------------------------------------------
stage "kind delete cluster leaves nothing on the host"
run "$tools/kind" delete cluster --name "$name"
cluster_created=0
$docker ps -aq --filter "label=io.x-k8s.kind.cluster=$name" | grep -q . && die "kind left containers of $name"
# Give dockerd a moment for what it removes after a container is gone (veths, mounts).
deadline=$((SECONDS + 30))
until [ -z "$(still_there <"$work/host-resources")" ] || ((SECONDS >= deadline)); do sleep 2; done
left=$(still_there <"$work/host-resources")
[ -z "$left" ] || die "left on the host after kind delete cluster: $left"
ok "nothing of the nodes left on the host ($(wc -l <"$work/host-resources") containers, volumes, veths, mounts, cgroups checked)"
changed=$(changed_host_sysctls | paste -sd ';' -)
if [ -n "$changed" ]; then
    # Not namespaced, and written by the privileged nodes (kubelet's kernel tunables): kind
    # does this to every host. Reported and put back by cleanup.
    log "  note: host sysctls the nodes changed, restored at cleanup: $changed"
else
    ok "no host sysctl changed"
fi
end_stage
passed=1
