#!/usr/bin/env bash
# The systemd cgroup driver where it can run: a privileged container of the lab's kind base
# image (systemd as PID 1, on the lab Docker's `kind` network), with this checkout bind-mounted
# read-only and cri-py run from it (the host venv's site-packages on PYTHONPATH: pure Python
# plus manylinux wheels for the same Python minor version). It runs e2e/systemd_checks.sh
# (units, limits, update, restart, removal), e2e/kubelet_e2e.py with kubelet and cri-py on
# the systemd driver, then e2e/critest.sh, whose daemon picks the systemd driver itself (PID 1
# is systemd), and removes the container (by ID) at the end. kubelet's kernel tunables are
# host sysctls (a privileged node shares them): the kubelet scenario restores them, as on the
# host.
# Usage: e2e/systemd_node.sh  [SKIP_CHECKS=1] [SKIP_KUBELET=1] [SKIP_CRITEST=1] [GATE=1] [IMAGE=...]
#        [FOCUS=... SKIP=...] [DRIVER=cgroupfs: critest's daemon told to use that driver, the
#        same node's baseline to compare with]
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
export DOCKER_HOST=${DOCKER_HOST:-unix:///run/cri-py-docker/docker.sock}
docker=${DOCKER:-/usr/bin/docker}
image=${IMAGE:-cri-py/kind-base:bookworm}
tools=${TOOLS_DIR:-/var/cache/cri-py/tools}
registry=${LAB_REGISTRY:-http://172.29.0.1:5000}
results=${RESULTS_DIR:-$top/results/systemd-node}
site=$("$top/.venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
mkdir -p "$results"
rm -f "$results/critest/junit.xml"
# The lab config with the registry as the node reaches it (the Docker network's gateway).
sed "s#http://127.0.0.1:5000#$registry#" "$top/e2e/lab-config.yaml" >"$results/lab-config.yaml"
if [ -n "${DRIVER:-}" ]; then
    printf 'cgroups:\n  driver: %s\n' "$DRIVER" >>"$results/lab-config.yaml"
fi

name=cri-py-systemd-$$
# As kind runs a node (kind's provider flags), plus the checkout, the tools and the results.
id=$("$docker" run -d --name "$name" --hostname "$name" --privileged \
    --security-opt seccomp=unconfined --security-opt apparmor=unconfined --cgroupns=private \
    --tmpfs /tmp --tmpfs /run --volume /var --volume /lib/modules:/lib/modules:ro \
    --net kind --tty --init=false \
    --volume "$top:/work/main:ro" \
    --volume "$results/lab-config.yaml:/work/main/e2e/lab-config.yaml:ro" \
    --volume "$tools:/tools:ro" --volume "$site:/opt/cri-py/site:ro" \
    --volume "$results:/results" "$image")
cleanup() { "$docker" rm -f -v "$id" >/dev/null; }
trap cleanup EXIT
in_node() { "$docker" exec -e TOOLS_DIR=/tools -e PYTHON=/usr/local/bin/cri-py-python "$@"; }

state=""
for _ in $(seq 100); do
    state=$("$docker" exec "$id" systemctl is-system-running 2>/dev/null || true)
    case $state in running | degraded) break ;; esac
    sleep 0.2
done
echo "node $name ($image): systemd $state"
# crictl's config: the scripts name the endpoints; an empty file spares its warnings.
"$docker" exec "$id" touch /etc/crictl.yaml
"$docker" exec -i "$id" sh -c 'cat >/usr/local/bin/cri-py-python && chmod +x /usr/local/bin/cri-py-python' <<'EOF'
#!/bin/sh
PYTHONPATH=/work/main:/opt/cri-py/site PYTHONDONTWRITEBYTECODE=1 exec python3 "$@"
EOF

rc=0
if [ -z "${SKIP_CHECKS:-}" ]; then
    in_node -e RESULTS_DIR=/results/checks "$id" /work/main/e2e/systemd_checks.sh |
        tee "$results/checks.log" || rc=$?
fi
if [ -z "${SKIP_KUBELET:-}" ]; then
    in_node -e RESULTS_DIR=/results/kubelet -e CGROUP_DRIVER="${DRIVER:-systemd}" \
        -e LAB_REGISTRY="$registry" \
        "$id" /usr/local/bin/cri-py-python /work/main/e2e/kubelet_e2e.py |
        tee "$results/kubelet.log" || rc=$?
fi
if [ -z "${SKIP_CRITEST:-}" ]; then
    in_node -e RESULTS_DIR=/results/critest -e GATE="${GATE:-}" -e FOCUS="${FOCUS:-}" \
        -e SKIP="${SKIP:-}" "$id" /work/main/e2e/critest.sh || rc=$?
    # The driver the run's daemon chose, as it logged it.
    grep -m1 'msg=cgroups ' "$results/critest/cri-py.log" || true
fi
exit $rc
