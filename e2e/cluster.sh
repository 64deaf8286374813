#!/usr/bin/env bash
# A single-node Kubernetes cluster of host processes on loopback -- etcd, kube-apiserver,
# kube-controller-manager, kube-scheduler, kubelet and cri-py -- driven with kubectl: the honest
# substitute for kind on a machine without Docker. Every step is logged; everything it started
# is stopped (by PID) and everything it created is removed at the end, also on failure.
#
# Needs: `make tools tools-cluster` (binaries in $TOOLS_DIR/bin), the lab registry with the test
# images (`make registry images`), root, openssl, curl. No kube-proxy (nothing here uses a
# Service) and no CoreDNS (pods get a resolv.conf file from kubelet).
#
# Environment: TOOLS_DIR (/var/cache/cri-py/tools), PYTHON (.venv/bin/python), RESULTS_DIR
# (results/cluster: every component's log), KEEP=1 leaves the temp root in place for a look.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
tools=${TOOLS_DIR:-/var/cache/cri-py/tools}/bin
python=${PYTHON:-$top/.venv/bin/python}
results=${RESULTS_DIR:-$top/results/cluster}
manifests=$top/e2e/cluster

# Fixed names and ports, chosen not to clash with a default install or with e2e-kubelet
# (which uses kubelet's default ports 10250/10255/10248).
node=cri-py-cluster-node
bridge=cri-pyk1
subnet=10.87.0.0/24
cgroup_parent=/cri-py-cluster
etcd_client_port=23790
etcd_peer_port=23800
apiserver_port=16443
kubelet_port=10350
kubelet_healthz_port=10348
forward_port=18088
service_cidr=10.96.0.0/24
# The sysctls kubelet sets at start (setupKernelTunables); restored on exit.
sysctls=(vm.overcommit_memory vm.panic_on_oom kernel.panic kernel.panic_on_oops
         kernel.keys.root_maxkeys kernel.keys.root_maxbytes)

t_start=$(date +%s)
log() { printf '[cluster %4ds] %s\n' $(($(date +%s) - t_start)) "$*"; }
step() { log "==> $*"; }
die() { log "FAIL: $*"; exit 1; }

[ "$(id -u)" = 0 ] || die "must run as root"
for bin in etcd kube-apiserver kube-controller-manager kube-scheduler kubelet kubectl crictl; do
    [ -x "$tools/$bin" ] || die "$tools/$bin missing: run 'make tools tools-cluster'"
done
command -v openssl >/dev/null || die "openssl missing"
command -v curl >/dev/null || die "curl missing"
for port in $etcd_client_port $etcd_peer_port $apiserver_port $kubelet_port \
            $kubelet_healthz_port $forward_port; do
    if ss -Hltn "sport = :$port" | grep -q .; then die "port $port is in use"; fi
done
ip link show "$bridge" >/dev/null 2>&1 && die "bridge $bridge exists (left by an earlier run?)"
for d in /sys/fs/cgroup/*"$cgroup_parent"; do
    [ -e "$d" ] && die "cgroup $d exists (left by an earlier run?)"
done
curl -sf http://127.0.0.1:5000/v2/ >/dev/null || die "lab registry down: run 'make registry images'"

# The node's address: kubelet refuses a loopback node IP, so it is this host's own address on
# its default route (traffic to it never leaves the host).
node_ip=$(ip -4 -o route get 192.0.2.255 2>/dev/null | sed -n 's/.* src \([0-9.]*\).*/\1/p')
[ -n "$node_ip" ] || node_ip=$(ip -4 -o addr show scope global | awk '{print $4}' | cut -d/ -f1 | head -n1)
[ -n "$node_ip" ] || die "no global IPv4 address for the node"

root=$(mktemp -d /tmp/cri-py-cluster.XXXXXX)
pki=$root/pki
state=$root/cri-py
sock=$state/run/cri-py.sock
mkdir -p "$results" "$pki" "$state/config.d" "$root/etcd" "$root/kubelet"
rm -f "$results"/*.log
log "temp root $root, logs in $results, node $node ($node_ip)"
printf 'runtime-endpoint: unix://%s\nimage-endpoint: unix://%s\ntimeout: 10\n' "$sock" "$sock" >"$root/crictl.yaml"

declare -A saved_sysctls=()
for k in "${sysctls[@]}"; do saved_sysctls[$k]=$(sysctl -n "$k" 2>/dev/null || true); done

# name -> PID of each process started here, stopped in reverse start order.
declare -A pids=()
order=()
forward_pid=""

stop_pid() {  # stop_pid NAME PID: TERM, then KILL after 15s
    local name=$1 pid=$2
    kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
        log "$name ($pid) ignored SIGTERM: SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
}

crictl() { "$tools/crictl" --config "$root/crictl.yaml" "$@"; }
kubectl() { "$tools/kubectl" --kubeconfig "$root/admin.kubeconfig" "$@"; }

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    set +e
    if [ $rc -ne 0 ]; then
        log "failed (exit $rc); last lines of each log:"
        for f in "$results"/*.log; do
            echo "----- $f"
            tail -n 15 "$f"
        done
    fi
    step "cleanup"
    [ -n "$forward_pid" ] && stop_pid port-forward "$forward_pid"
    # kubelet first, so that it does not restart what is removed below.
    [ -n "${pids[kubelet]:-}" ] && stop_pid kubelet "${pids[kubelet]}"
    # Pods left behind go through the runtime: shims outlive the daemon by design.
    if [ -n "${pids[cri-py]:-}" ] && kill -0 "${pids[cri-py]}" 2>/dev/null; then
        for pod in $(crictl pods -q 2>/dev/null); do
            crictl stopp "$pod" >/dev/null 2>&1
            crictl rmp -f "$pod" >/dev/null 2>&1 || log "could not remove pod $pod"
        done
    fi
    local i name
    for ((i = ${#order[@]} - 1; i >= 0; i--)); do
        name=${order[i]}
        [ "$name" = kubelet ] || stop_pid "$name" "${pids[$name]}"
    done
    # Mounts kubelet (volumes) or cri-py left under the temp root, deepest first.
    awk -v r="$root/" 'index($5, r) == 1 {print $5}' /proc/self/mountinfo | sort -r |
        while read -r m; do umount -l "$m" || log "could not unmount $m"; done
    # kubelet's QoS and pod cgroups (and anything else) under our cgroup parent, leaves first.
    for d in /sys/fs/cgroup/*"$cgroup_parent"; do
        [ -d "$d" ] && find "$d" -depth -type d -exec rmdir {} + 2>/dev/null
        [ -d "$d" ] && log "could not remove cgroup $d"
    done
    ip link show "$bridge" >/dev/null 2>&1 && ip link del "$bridge"
    for k in "${sysctls[@]}"; do
        [ -n "${saved_sysctls[$k]}" ] || continue
        if [ "$(sysctl -n "$k" 2>/dev/null)" != "${saved_sysctls[$k]}" ]; then
            sysctl -q -w "$k=${saved_sysctls[$k]}" && log "restored $k=${saved_sysctls[$k]}"
        fi
    done
    if [ "${KEEP:-0}" = 1 ]; then
        log "kept $root"
    else
        rm -rf "$root"
    fi
    log "done in $(($(date +%s) - t_start))s: $([ $rc -eq 0 ] && echo PASS || echo FAIL)"
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

start() {  # start NAME CMD...: run in the background, log to $results/NAME.log
    local name=$1; shift
    "$@" >"$results/$name.log" 2>&1 &
    pids[$name]=$!
    order+=("$name")
    log "started $name (pid ${pids[$name]})"
}

wait_for() {  # wait_for SECONDS WHAT CMD...: poll CMD every second, fail after SECONDS
    local limit=$1 what=$2 name; shift 2
    local t0
    t0=$(date +%s)
    until "$@" >/dev/null 2>&1; do
        for name in "${order[@]}"; do
            kill -0 "${pids[$name]}" 2>/dev/null || die "$name exited while waiting for $what"
        done
        (($(date +%s) - t0 < limit)) || die "timed out after ${limit}s waiting for $what"
        sleep 1
    done
    log "$what (after $(($(date +%s) - t0))s)"
}

# run CMD...: log the command and its output (indented); fails the scenario if CMD fails.
run() {
    log "\$ ${*/#$tools\//}"
    local out rc=0
    out=$("$@" 2>&1) || rc=$?
    [ -n "$out" ] && printf '%s\n' "$out" | sed 's/^/    | /'
    [ $rc -eq 0 ] || die "command failed (exit $rc): $*"
    REPLY=$out
}

# ---------------------------------------------------------------------------------------------
step "certificates (openssl, ECDSA P-256, valid 2 days) and kubeconfigs"
# ---------------------------------------------------------------------------------------------
ossl() { openssl "$@" 2>>"$results/openssl.log"; }
ossl req -x509 -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -days 2 \
    -subj "/CN=cri-py-cluster-ca" -keyout "$pki/ca.key" -out "$pki/ca.crt" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign"

# mkcert NAME SUBJECT EXTENDED_KEY_USAGE [SUBJECT_ALT_NAMES]
mkcert() {
    local name=$1 subj=$2 eku=$3 san=${4:-}
    ossl req -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -subj "$subj" \
        -keyout "$pki/$name.key" -out "$pki/$name.csr"
    {
        echo "basicConstraints=critical,CA:FALSE"
        echo "keyUsage=critical,digitalSignature,keyEncipherment"
        echo "extendedKeyUsage=$eku"
        [ -n "$san" ] && echo "subjectAltName=$san"
    } >"$pki/$name.ext"
    ossl x509 -req -in "$pki/$name.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" \
        -CAcreateserial -days 2 -extfile "$pki/$name.ext" -out "$pki/$name.crt"
}
mkcert apiserver "/CN=kube-apiserver" serverAuth \
    "DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,DNS:localhost,IP:127.0.0.1,IP:${service_cidr%.0/*}.1,IP:$node_ip"
mkcert apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" clientAuth
mkcert admin "/O=system:masters/CN=cri-py-cluster-admin" clientAuth
mkcert controller-manager "/CN=system:kube-controller-manager" clientAuth
mkcert scheduler "/CN=system:kube-scheduler" clientAuth
mkcert kubelet-client "/O=system:nodes/CN=system:node:$node" clientAuth
mkcert kubelet-serving "/O=system:nodes/CN=system:node:$node" serverAuth \
    "DNS:$node,IP:$node_ip,IP:127.0.0.1"
# Service-account tokens: signed by the apiserver, the key also given to the controller-manager.
ossl genpkey -quiet -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$pki/sa.key"
ossl pkey -in "$pki/sa.key" -pubout -out "$pki/sa.pub"

mkkubeconfig() {  # mkkubeconfig NAME CERT: $root/NAME.kubeconfig with CERT's client identity
    local kc=$root/$1.kubeconfig
    "$tools/kubectl" config --kubeconfig "$kc" set-cluster local --embed-certs \
        --certificate-authority "$pki/ca.crt" --server "https://127.0.0.1:$apiserver_port" >/dev/null
    "$tools/kubectl" config --kubeconfig "$kc" set-credentials user --embed-certs \
        --client-certificate "$pki/$2.crt" --client-key "$pki/$2.key" >/dev/null
    "$tools/kubectl" config --kubeconfig "$kc" set-context local --cluster local --user user >/dev/null
    "$tools/kubectl" config --kubeconfig "$kc" use-context local >/dev/null
}
mkkubeconfig admin admin
mkkubeconfig controller-manager controller-manager
mkkubeconfig scheduler scheduler
mkkubeconfig kubelet kubelet-client
log "CA, 7 certificates, service-account key, 4 kubeconfigs in $root"

# ---------------------------------------------------------------------------------------------
step "etcd, kube-apiserver, kube-controller-manager, kube-scheduler"
# ---------------------------------------------------------------------------------------------
start etcd "$tools/etcd" --name cluster --data-dir "$root/etcd" \
    --listen-client-urls "http://127.0.0.1:$etcd_client_port" \
    --advertise-client-urls "http://127.0.0.1:$etcd_client_port" \
    --listen-peer-urls "http://127.0.0.1:$etcd_peer_port" \
    --initial-advertise-peer-urls "http://127.0.0.1:$etcd_peer_port" \
    --initial-cluster "cluster=http://127.0.0.1:$etcd_peer_port" \
    --log-level warn
wait_for 60 "etcd is healthy" curl -sf "http://127.0.0.1:$etcd_client_port/health"
log "etcd $("$tools/etcd" --version | sed -n 's/^etcd Version: //p')"

# bind-address keeps it on loopback; the advertised address is what the `kubernetes` Service's
# endpoints would carry (the apiserver rejects a loopback one).
start kube-apiserver "$tools/kube-apiserver" \
    --etcd-servers "http://127.0.0.1:$etcd_client_port" \
    --bind-address 127.0.0.1 --secure-port "$apiserver_port" --advertise-address "$node_ip" \
    --tls-cert-file "$pki/apiserver.crt" --tls-private-key-file "$pki/apiserver.key" \
    --client-ca-file "$pki/ca.crt" \
    --kubelet-client-certificate "$pki/apiserver-kubelet-client.crt" \
    --kubelet-client-key "$pki/apiserver-kubelet-client.key" \
    --kubelet-certificate-authority "$pki/ca.crt" \
    --kubelet-preferred-address-types InternalIP \
    --service-account-issuer https://kubernetes.default.svc.cluster.local \
    --service-account-key-file "$pki/sa.pub" --service-account-signing-key-file "$pki/sa.key" \
    --service-cluster-ip-range "$service_cidr" \
    --authorization-mode Node,RBAC --enable-admission-plugins NodeRestriction \
    --allow-privileged=true --anonymous-auth=false --profiling=false
wait_for 120 "kube-apiserver is ready" kubectl get --raw /readyz
run kubectl version

start kube-controller-manager "$tools/kube-controller-manager" \
    --kubeconfig "$root/controller-manager.kubeconfig" \
    --authentication-kubeconfig "$root/controller-manager.kubeconfig" \
    --authorization-kubeconfig "$root/controller-manager.kubeconfig" \
    --secure-port 0 --leader-elect=false --use-service-account-credentials \
    --service-account-private-key-file "$pki/sa.key" --root-ca-file "$pki/ca.crt" \
    --profiling=false
start kube-scheduler "$tools/kube-scheduler" --kubeconfig "$root/scheduler.kubeconfig" \
    --authentication-kubeconfig "$root/scheduler.kubeconfig" \
    --authorization-kubeconfig "$root/scheduler.kubeconfig" \
    --secure-port 0 --leader-elect=false --profiling=false

# ---------------------------------------------------------------------------------------------
step "cri-py (bridge $bridge $subnet, cgroup parent $cgroup_parent, lab registry mirrors)"
# ---------------------------------------------------------------------------------------------
cat >"$state/config.d/10-cluster.yaml" <<EOF
network:
  cni_conf_dir: $state/no-cni   # the built-in bridge, whatever /etc/cni/net.d holds
  bridge: $bridge
  subnet: $subnet
cgroups:
  default_parent: $cgroup_parent
  shim_cgroup: $cgroup_parent/cri-py-shims
EOF
start cri-py "$python" -m cri_py.cli serve --config "$top/e2e/lab-config.yaml" \
    --config-dir "$state/config.d" --root-dir "$state/root" --run-dir "$state/run" \
    --socket "$sock" --stream-address 127.0.0.1
wait_for 30 "cri-py answers on $sock" crictl version

# ---------------------------------------------------------------------------------------------
step "kubelet (node $node, ports $kubelet_port/$kubelet_healthz_port, cgroupfs under $cgroup_parent)"
# ---------------------------------------------------------------------------------------------
printf 'nameserver 127.0.0.1\noptions ndots:1\n' >"$root/resolv.conf"
cat >"$root/kubelet-config.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $node_ip
port: $kubelet_port
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $kubelet_healthz_port
tlsCertFile: $pki/kubelet-serving.crt
tlsPrivateKeyFile: $pki/kubelet-serving.key
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $pki/ca.crt}
authorization:
  mode: Webhook
containerRuntimeEndpoint: unix://$sock
cgroupDriver: cgroupfs
cgroupRoot: $cgroup_parent
failCgroupV1: false
failSwapOn: false
# No eviction on this shared machine's disk or memory, and no image garbage collection.
evictionHard: {}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
resolvConf: $root/resolv.conf
clusterDomain: cluster.local
rotateCertificates: false
serverTLSBootstrap: false
EOF
# kubelet wants its cgroup root to exist in every hierarchy; it creates kubepods/... below it.
for h in /sys/fs/cgroup/*; do
    [ -f "$h/cgroup.procs" ] && [ "$(stat -f -c %T "$h")" != cgroup2fs ] || continue
    mkdir -p "$h$cgroup_parent"  # cri-py may have made it already (its shims' cgroup is below)
    if [ -f "$h/cpuset.cpus" ]; then  # a v1 cpuset child starts empty: inherit the root's
        cat "$h/cpuset.cpus" >"$h$cgroup_parent/cpuset.cpus"
        cat "$h/cpuset.mems" >"$h$cgroup_parent/cpuset.mems"
    fi
done
start kubelet "$tools/kubelet" --config "$root/kubelet-config.yaml" \
    --kubeconfig "$root/kubelet.kubeconfig" --root-dir "$root/kubelet" \
    --cert-dir "$pki" --hostname-override "$node" --node-ip "$node_ip" --v 1
wait_for 60 "kubelet healthz" curl -sf "http://127.0.0.1:$kubelet_healthz_port/healthz"
wait_for 120 "node $node registered" kubectl get node "$node"
run kubectl wait --for=condition=Ready "node/$node" --timeout=120s
run kubectl get nodes -o wide
wait_for 60 "the default ServiceAccount exists" kubectl get serviceaccount default
log "no kube-proxy (no Service is used) and no CoreDNS (pods get $root/resolv.conf)"

# ---------------------------------------------------------------------------------------------
step "a Deployment of 3 replicas becomes Available"
# ---------------------------------------------------------------------------------------------
run kubectl apply -f "$manifests/web-deployment.yaml"
run kubectl rollout status deployment/web --timeout=240s
run kubectl wait --for=condition=Available deployment/web --timeout=60s
run kubectl get pods -l app=web -o wide
mapfile -t pods < <(kubectl get pods -l app=web -o jsonpath='{range .items[*]}{.metadata.name}{"\n"}{end}')
[ ${#pods[@]} -eq 3 ] || die "expected 3 pods, got ${#pods[@]}"
pod=${pods[0]}
mapfile -t uids < <(kubectl get pods -l app=web -o jsonpath='{range .items[*]}{.metadata.uid}{"\n"}{end}')
mapfile -t ips < <(kubectl get pods -l app=web -o jsonpath='{range .items[*]}{.status.podIP}{"\n"}{end}')
for ip in "${ips[@]}"; do
    "$python" -c 'import ipaddress,sys; sys.exit(ipaddress.ip_address(sys.argv[1]) not in ipaddress.ip_network(sys.argv[2]))' \
        "$ip" "$subnet" || die "pod IP $ip is not in $subnet"
done
log "pod IPs ${ips[*]} are in $subnet"
mapfile -t sandboxes < <(crictl pods -q --label app=web)
mapfile -t containers < <(for s in "${sandboxes[@]}"; do crictl ps -a -q --pod "$s"; done)
[ ${#sandboxes[@]} -eq 3 ] && [ ${#containers[@]} -eq 3 ] ||
    die "crictl shows ${#sandboxes[@]} sandboxes and ${#containers[@]} containers, want 3 and 3"
run crictl pods --label app=web
run crictl ps --label io.kubernetes.container.name=web

# ---------------------------------------------------------------------------------------------
step "kubectl logs, exec, attach, port-forward (kubelet -> cri-py streaming server)"
# ---------------------------------------------------------------------------------------------
run kubectl logs "$pod"
grep -qx ready <<<"$REPLY" || die "kubectl logs: no 'ready' line"

run kubectl exec "$pod" -- cat /www/index.html
[ "$REPLY" = "hello from $pod" ] || die "kubectl exec: got '$REPLY'"
run kubectl exec -i "$pod" -- sh -c 'tr a-z A-Z' <<<"through exec stdin"
[ "$REPLY" = "THROUGH EXEC STDIN" ] || die "kubectl exec -i: got '$REPLY'"
rc=0
"$tools/kubectl" --kubeconfig "$root/admin.kubeconfig" exec "$pod" -- sh -c 'exit 7' || rc=$?
[ $rc -eq 7 ] || die "kubectl exec: exit code $rc, want 7"
log "kubectl exec passed the exit code through (7)"

# attach: a line sent on the container's stdin comes back on its stdout. kubectl keeps
# streaming after its own stdin ends, so it is stopped by a timeout once the echo is in.
log "\$ echo attach-ping | kubectl attach -i $pod -c web"
attach_out=$root/attach.out
(printf 'attach-ping\n'; sleep 8) | timeout 15 "$tools/kubectl" --kubeconfig "$root/admin.kubeconfig" \
    attach -i "$pod" -c web >"$attach_out" 2>&1 || true
sed 's/^/    | /' "$attach_out"
grep -qx "echo: attach-ping" "$attach_out" || die "kubectl attach: no 'echo: attach-ping'"
run kubectl logs "$pod" --tail=1
[ "$REPLY" = "echo: attach-ping" ] || die "the attached line is not in the container log"

log "\$ kubectl port-forward pod/$pod $forward_port:8080 --address 127.0.0.1 &"
"$tools/kubectl" --kubeconfig "$root/admin.kubeconfig" port-forward "pod/$pod" \
    "$forward_port:8080" --address 127.0.0.1 >"$results/port-forward.log" 2>&1 &
forward_pid=$!
wait_for 30 "port-forward listens on 127.0.0.1:$forward_port" \
    grep -q "Forwarding from 127.0.0.1:$forward_port" "$results/port-forward.log"
run curl -sS --max-time 10 "http://127.0.0.1:$forward_port/"
[ "$REPLY" = "hello from $pod" ] || die "port-forward: got '$REPLY'"
run curl -sS --max-time 10 "http://127.0.0.1:$forward_port/"
[ "$REPLY" = "hello from $pod" ] || die "port-forward (second connection): got '$REPLY'"
stop_pid port-forward "$forward_pid"
forward_pid=""

# ---------------------------------------------------------------------------------------------
step "deleting the Deployment removes every pod, container, netns, cgroup and IP on the node"
# ---------------------------------------------------------------------------------------------
run kubectl delete deployment web --wait=true --timeout=60s
run kubectl wait --for=delete pod -l app=web --timeout=120s
ipam=$state/root/network/allocations.json
node_clean() {
    local s c u m
    for s in "${sandboxes[@]}"; do
        crictl inspectp "$s" >/dev/null 2>&1 && { why="sandbox $s still known"; return 1; }
        ip link show "cri-py${s:0:9}" >/dev/null 2>&1 && { why="veth cri-py${s:0:9} still there"; return 1; }
        grep -q "$s" /proc/self/mountinfo && { why="a mount of sandbox $s (netns pin) remains"; return 1; }
    done
    for c in "${containers[@]}"; do
        crictl inspect "$c" >/dev/null 2>&1 && { why="container $c still known"; return 1; }
        m=$(find /sys/fs/cgroup/*"$cgroup_parent" -type d -name "*$c*" 2>/dev/null | head -n1)
        [ -z "$m" ] || { why="container cgroup $m remains"; return 1; }
    done
    for u in "${uids[@]}"; do
        m=$(find /sys/fs/cgroup/*"$cgroup_parent" -type d -name "pod$u" 2>/dev/null | head -n1)
        [ -z "$m" ] || { why="pod cgroup $m remains"; return 1; }
    done
    [ -z "$(ip -o link show master "$bridge" 2>/dev/null)" ] || { why="veths left on $bridge"; return 1; }
    [ -f "$ipam" ] || { why="no address table $ipam"; return 1; }
    # The address table maps address -> sandbox ID ("last" is only the allocator's cursor).
    m=$("$python" -c 'import json,sys; print(" ".join(sorted(json.load(open(sys.argv[1]))["allocations"])))' "$ipam")
    [ -z "$m" ] || { why="addresses still allocated in $ipam: $m"; return 1; }
    return 0
}
# kubelet stops the sandboxes at once; its container GC (every minute) then removes them.
t0=$(date +%s)
why=""
until node_clean; do
    (($(date +%s) - t0 < 150)) || die "node not clean after 150s: $why"
    sleep 2
done
log "node clean after $(($(date +%s) - t0))s: 0 sandboxes, 0 containers, 0 veths on $bridge, no pod cgroups, no netns pins, no IPs in $ipam"
run crictl pods
run crictl ps -a
run cat "$ipam"

# ---------------------------------------------------------------------------------------------
step "a pod exceeding its memory limit is OOMKilled"
# ---------------------------------------------------------------------------------------------
run kubectl apply -f "$manifests/oom-pod.yaml"
oom_reason() { kubectl get pod oom -o jsonpath='{.status.containerStatuses[0].state.terminated.reason}'; }
oom_terminated() { [ -n "$(oom_reason)" ]; }
wait_for 120 "pod oom terminated" oom_terminated
run kubectl get pod oom -o yaml
reason=$(oom_reason)
code=$(kubectl get pod oom -o jsonpath='{.status.containerStatuses[0].state.terminated.exitCode}')
[ "$reason" = OOMKilled ] || die "pod oom: reason '$reason', want OOMKilled"
log "pod oom: terminated, reason $reason, exit code $code"
run kubectl delete pod oom --wait=true --timeout=60s

step "all checks passed"
