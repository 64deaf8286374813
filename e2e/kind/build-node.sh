#!/usr/bin/env bash
# `make kind-image`: the kind node image whose runtime is cri-py, built without a container
# registry: the base from e2e/kind/build-base.sh (Debian bookworm by debootstrap), kubelet,
# kubeadm, kubectl and crictl from the Go module proxy (e2e/build-tools.sh), cri-py's Python
# dependencies from PyPI (downloaded on this machine, installed offline in the image), and
# kind-config/Dockerfile over them.
#
#   e2e/kind/build-node.sh         build $NODE_TAG (a no-op when nothing it is made of changed)
#
# Environment:
#   RUNTIME           cri-py; containerd: the baseline node image instead, Debian's containerd +
#                     runc in place of cri-py (kind-config/containerd/, section below)
#   NODE_TAG          cri-py/kind-node:v1.37.2 (cri-py/kind-node-containerd:v1.37.2 for containerd)
#   KUBERNETES_VERSION  v1.37.2
#   KIND_BASE_IMAGE   cri-py/kind-base:bookworm (built here, tag BASE_TAG); or a kindest/node
#                     image of the same Kubernetes version, pulled by Docker (needs a registry),
#                     then no debootstrap
#   NO_CACHE          1: docker build --no-cache (the base and binaries keep their own caches)
#   REGISTRY_MIRROR   http://172.29.0.1:5000 (the lab registry on the `kind` network's gateway);
#                     empty: the nodes pull from the registries themselves
#   CNI_MANIFEST      kind-config/manifests/default-cni.yaml (kindnet)
#   STORAGE_MANIFEST  kind-config/manifests/default-storage.yaml (local-path-provisioner)
#   TOOLS_DIR         /var/cache/cri-py/tools        CRI_PY_LAB_DIR  /var/lib/cri-py-lab
#   DOCKER            docker (DOCKER_HOST picks the daemon: the lab's is
#                     unix:///run/cri-py-docker/docker.sock, see e2e/docker.sh)
set -euo pipefail

top=$(cd "$(dirname "$0")/../.." && pwd)
KUBERNETES_VERSION=${KUBERNETES_VERSION:-v1.37.2}
RUNTIME=${RUNTIME:-cri-py}
case $RUNTIME in
    cri-py) ;;
    containerd) NODE_TAG=${NODE_TAG:-cri-py/kind-node-containerd:$KUBERNETES_VERSION} ;;
    *) printf '[kind-node] ERROR: RUNTIME must be cri-py or containerd, got %s\n' "$RUNTIME" >&2; exit 1 ;;
esac
NODE_TAG=${NODE_TAG:-cri-py/kind-node:$KUBERNETES_VERSION}
OUR_BASE=${BASE_TAG:-cri-py/kind-base:bookworm}
KIND_BASE_IMAGE=${KIND_BASE_IMAGE:-$OUR_BASE}
REGISTRY_MIRROR=${REGISTRY_MIRROR-http://172.29.0.1:5000}
CNI_MANIFEST=${CNI_MANIFEST:-$top/kind-config/manifests/default-cni.yaml}
STORAGE_MANIFEST=${STORAGE_MANIFEST:-$top/kind-config/manifests/default-storage.yaml}
TOOLS_DIR=${TOOLS_DIR:-/var/cache/cri-py/tools}
LAB_DIR=${CRI_PY_LAB_DIR:-/var/lib/cri-py-lab}
CACHE=$LAB_DIR/kind
DOCKER=${DOCKER:-docker}
PYTHON=${PYTHON:-$top/.venv/bin/python}

log() { printf '[kind-node] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
elapsed() { local s=$(($(date +%s) - $1)); printf '%dm%02ds' $((s / 60)) $((s % 60)); }

t0=$(date +%s)
mkdir -p "$CACHE"
"$DOCKER" version --format '{{.Server.Version}}' >/dev/null 2>&1 ||
    die "no Docker daemon answers (DOCKER_HOST=${DOCKER_HOST:-unset}); the lab's: make docker"
[[ -f $CNI_MANIFEST ]] || die "no CNI manifest at $CNI_MANIFEST"
[[ -f $STORAGE_MANIFEST ]] || die "no storage manifest at $STORAGE_MANIFEST"

# 1. The base.
if [[ $KIND_BASE_IMAGE == "$OUR_BASE" ]]; then
    BASE_TAG=$OUR_BASE "$top/e2e/kind/build-base.sh"
    pip_offline=1
else
    "$DOCKER" image inspect "$KIND_BASE_IMAGE" >/dev/null 2>&1 || "$DOCKER" pull "$KIND_BASE_IMAGE"
    # Its Python may not be ours (3.11): pip may fetch wheels that fit it from PyPI.
    pip_offline=0
fi

# 2. The Kubernetes binaries and crictl (each a no-op when built at this version already).
log "kubelet, kubeadm, kubectl $KUBERNETES_VERSION and crictl (e2e/build-tools.sh)"
TOOLS_DIR=$TOOLS_DIR KUBERNETES_VERSION=$KUBERNETES_VERSION KUBE_TOOLS="kubelet kubeadm" \
    BUILD_KUBECTL=1 BUILD_CRI_TOOLS=1 BUILD_NICE=19 PATH=$PATH:/usr/local/go/bin \
    "$top/e2e/build-tools.sh" >"$CACHE/build-tools.log" 2>&1 ||
    { tail -20 "$CACHE/build-tools.log" >&2; die "build-tools.sh failed (log: $CACHE/build-tools.log)"; }

# 2b. RUNTIME=containerd: the baseline node image. Its own build context (no cri-py, no wheels):
# the binaries above, containerd and runc downloaded from the Debian mirror by the host's apt
# (the build cannot reach it: the lab's Docker gives containers no way out), kind-config/.
if [[ $RUNTIME == containerd ]]; then
    debs=$CACHE/debs-containerd
    rm -rf "$debs"
    mkdir -p "$debs"
    log "containerd and runc .debs from the Debian mirror (apt-get download)"
    (cd "$debs" && apt-get download containerd runc >"$CACHE/apt-download.log" 2>&1) ||
        { cat "$CACHE/apt-download.log" >&2; die "apt-get download containerd runc failed (apt-get update first?)"; }
    # The hosts e2e/lab-config.yaml mirrors through the lab registry, as cri-py's node has them.
    mirror_hosts=$("$PYTHON" -c 'import sys, yaml; print(" ".join(yaml.safe_load(open(sys.argv[1]))["registries"]))' \
        "$top/e2e/lab-config.yaml") || die "cannot read the mirrored hosts from e2e/lab-config.yaml"
    ctx=$CACHE/context-containerd
    rm -rf "$ctx"
    mkdir -p "$ctx/bin" "$ctx/manifests" "$ctx/kind-config"
    for b in kubelet kubeadm kubectl crictl; do
        [[ -x $TOOLS_DIR/bin/$b ]] || die "$TOOLS_DIR/bin/$b missing"
        cp "$TOOLS_DIR/bin/$b" "$ctx/bin/$b"
    done
    cp -r "$top/kind-config/node" "$top/kind-config/containerd" "$ctx/kind-config/"
    cp -r "$debs" "$ctx/debs"
    cp "$CNI_MANIFEST" "$ctx/manifests/default-cni.yaml"
    cp "$STORAGE_MANIFEST" "$ctx/manifests/default-storage.yaml"
    log "docker build $NODE_TAG ($(cd "$debs" && echo *.deb); base $KIND_BASE_IMAGE, mirror ${REGISTRY_MIRROR:-none} for $mirror_hosts)"
    no_cache=()
    [[ ${NO_CACHE:-0} == 1 ]] && no_cache=(--no-cache)
    DOCKER_BUILDKIT=0 "$DOCKER" build "${no_cache[@]}" --file "$ctx/kind-config/containerd/Dockerfile" \
        --tag "$NODE_TAG" --build-arg "BASE_IMAGE=$KIND_BASE_IMAGE" \
        --build-arg "KUBE_VERSION=$KUBERNETES_VERSION" --build-arg "REGISTRY_MIRROR=$REGISTRY_MIRROR" \
        --build-arg "MIRROR_HOSTS=$mirror_hosts" \
        "$ctx" >"$CACHE/docker-build-containerd.log" 2>&1 ||
        { tail -30 "$CACHE/docker-build-containerd.log" >&2; die "docker build failed (log: $CACHE/docker-build-containerd.log)"; }
    rm -rf "$ctx"
    log "$NODE_TAG built in $(elapsed "$t0"): $("$DOCKER" image inspect --format '{{.Id}} {{.Size}}' "$NODE_TAG")"
    exit 0
fi

# 3. The build context (outside the checkout: binaries never land in it).
ctx=$CACHE/context
rm -rf "$ctx"
mkdir -p "$ctx/bin" "$ctx/cri-py" "$ctx/manifests" "$ctx/kind-config"
for b in kubelet kubeadm kubectl crictl; do
    [[ -x $TOOLS_DIR/bin/$b ]] || die "$TOOLS_DIR/bin/$b missing"
    cp "$TOOLS_DIR/bin/$b" "$ctx/bin/$b"
done
cp -r "$top/kind-config/Dockerfile" "$top/kind-config/node" "$ctx/kind-config/"
(cd "$top" && tar --create --exclude=__pycache__ pyproject.toml README.md cri_py systemd) |
    tar --extract --directory "$ctx/cri-py"
cp "$CNI_MANIFEST" "$ctx/manifests/default-cni.yaml"
cp "$STORAGE_MANIFEST" "$ctx/manifests/default-storage.yaml"

# cri-py's dependencies as wheels for the node's Python (bookworm's 3.11, as this machine's),
# with the build backend install.sh's `pip install <source>` needs; cached by pyproject.toml.
wheels_key=$(cat "$top/pyproject.toml" | sha256sum | cut -c1-16)
wheels=$CACHE/wheels-$wheels_key
if [[ ! -f $wheels/.complete ]]; then
    log "downloading cri-py's Python dependencies from PyPI into $wheels"
    rm -rf "$wheels"
    mkdir -p "$wheels"
    deps=$("$PYTHON" -c 'import tomllib,sys; print("\n".join(tomllib.load(open(sys.argv[1],"rb"))["project"]["dependencies"]))' "$top/pyproject.toml")
    # shellcheck disable=SC2086
    "$PYTHON" -m pip download --quiet --disable-pip-version-check --only-binary=:all: \
        --dest "$wheels" "setuptools>=68" wheel $(tr '\n' ' ' <<<"$deps" | sed 's/ \+/ /g') ||
        die "pip download failed"
    touch "$wheels/.complete"
    find "$CACHE" -maxdepth 1 -name 'wheels-*' ! -name "wheels-$wheels_key" -exec rm -rf {} +
fi
cp -r "$wheels" "$ctx/wheels"
rm -f "$ctx/wheels/.complete"

# 4. The image. Docker's build cache makes an unchanged rebuild a few seconds.
log "docker build $NODE_TAG (base $KIND_BASE_IMAGE, mirror ${REGISTRY_MIRROR:-none})"
no_cache=()
[[ ${NO_CACHE:-0} == 1 ]] && no_cache=(--no-cache)
DOCKER_BUILDKIT=0 "$DOCKER" build "${no_cache[@]}" --file "$ctx/kind-config/Dockerfile" --tag "$NODE_TAG" \
    --build-arg "BASE_IMAGE=$KIND_BASE_IMAGE" --build-arg "KUBE_VERSION=$KUBERNETES_VERSION" \
    --build-arg "REGISTRY_MIRROR=$REGISTRY_MIRROR" --build-arg "PIP_OFFLINE=$pip_offline" \
    "$ctx" >"$CACHE/docker-build.log" 2>&1 ||
    { tail -30 "$CACHE/docker-build.log" >&2; die "docker build failed (log: $CACHE/docker-build.log)"; }
rm -rf "$ctx"
log "$NODE_TAG built in $(elapsed "$t0"): $("$DOCKER" image inspect --format '{{.Id}} {{.Size}}' "$NODE_TAG")"
