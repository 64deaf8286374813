#!/usr/bin/env bash
# Build the Go test tools cri-py is exercised with -- crictl, critest (sigs.k8s.io/cri-tools)
# and kubelet, kubectl (k8s.io/kubernetes) -- from the Go module proxy into $TOOLS_DIR/bin.
#
# Everything lives outside the git checkout:
#   $TOOLS_DIR/bin/<tool>        the binaries
#   $TOOLS_DIR/stamps/<tool>     "<module>@<version>" each binary was built from
#   $GO_CACHE_DIR/{mod,build}    GOMODCACHE and GOCACHE, shared by later runs and CI
# A tool whose binary exists and whose stamp matches the requested version is skipped, so a
# second run is a no-op; changing a version rebuilds just the tools it concerns.
#
# Environment (defaults match the Makefile):
#   TOOLS_DIR           /var/cache/cri-py/tools
#   CRI_TOOLS_VERSION   v1.37.0   (sigs.k8s.io/cri-tools tag)
#   KUBERNETES_VERSION  v1.37.2   (k8s.io/kubernetes tag)
#   GO_CACHE_DIR        /var/cache/cri-py/go
#   BUILD_KUBECTL       1         0 skips kubectl (cheap once kubelet is built: ~40s)
#   BUILD_CRI_TOOLS     1         0 skips crictl and critest
#   KUBE_TOOLS          kubelet   k8s.io/kubernetes/cmd/* binaries to build (kubectl is added
#                                 by BUILD_KUBECTL; set but empty: none, as `make tools-cri`);
#                                 `make tools-cluster` asks for
#                                 kube-apiserver kube-controller-manager kube-scheduler,
#                                 `make kind-image` for kubelet kubeadm (the kind node's)
#   ETCD_VERSION        (unset)   a go.etcd.io/etcd/server/v3 tag (e.g. v3.6.16): also build etcd
#   BUILD_NODE_E2E      0         1 also builds e2e_node.test (k8s.io/kubernetes/test/e2e_node)
#                                 and the ginkgo CLI of the same module graph (`make tools-node-e2e`)
#   BUILD_E2E           0         1 also builds e2e.test (k8s.io/kubernetes/test/e2e, the cluster
#                                 and conformance suite) and the same ginkgo CLI (`make tools-e2e`)
#   KIND_VERSION        (unset)   a sigs.k8s.io/kind tag (e.g. v0.33.0): also build kind
#                                 (`make tools-kind`)
#   BUILD_JOBS          nproc     go build -p
#   BUILD_NICE          10        nice level of the go builds (tools-cluster uses 19)
#   GO                  go        the Go toolchain to use (GOTOOLCHAIN=local: never downloaded)
#   GOPROXY             https://proxy.golang.org,direct   (the user's go env file is ignored)
set -euo pipefail

TOOLS_DIR=${TOOLS_DIR:-/var/cache/cri-py/tools}
CRI_TOOLS_VERSION=${CRI_TOOLS_VERSION:-v1.37.0}
KUBERNETES_VERSION=${KUBERNETES_VERSION:-v1.37.2}
GO_CACHE_DIR=${GO_CACHE_DIR:-/var/cache/cri-py/go}
BUILD_KUBECTL=${BUILD_KUBECTL:-1}
BUILD_CRI_TOOLS=${BUILD_CRI_TOOLS:-1}
KUBE_TOOLS=${KUBE_TOOLS-kubelet}
ETCD_VERSION=${ETCD_VERSION:-}
KIND_VERSION=${KIND_VERSION:-}
BUILD_NODE_E2E=${BUILD_NODE_E2E:-0}
BUILD_E2E=${BUILD_E2E:-0}
BUILD_JOBS=${BUILD_JOBS:-$(nproc 2>/dev/null || echo 2)}
GO=${GO:-go}

BIN_DIR=$TOOLS_DIR/bin
STAMP_DIR=$TOOLS_DIR/stamps

log() { printf '[build-tools] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

command -v "$GO" >/dev/null 2>&1 || die "'$GO' not found; install Go >= 1.26 (e.g. /usr/local/go/bin)"
[[ $CRI_TOOLS_VERSION == v* ]] || die "CRI_TOOLS_VERSION must be a tag like v1.37.0, got '$CRI_TOOLS_VERSION'"
[[ $KUBERNETES_VERSION == v1.* ]] || die "KUBERNETES_VERSION must be a tag like v1.37.2, got '$KUBERNETES_VERSION'"

# A deterministic Go environment: the module proxy only, the local toolchain only (no silent
# toolchain download), caches outside the repo, no VCS stamping, no user GOFLAGS/GOENV leaking in.
export GOENV=off
export GOTOOLCHAIN=local
export GOPROXY=${GOPROXY:-https://proxy.golang.org,direct}
export GOMODCACHE=$GO_CACHE_DIR/mod
export GOCACHE=$GO_CACHE_DIR/build
export GOFLAGS="-buildvcs=false -mod=readonly"
export GOWORK=off
export GO111MODULE=on
unset GOOS GOARCH
export GOPATH=$GO_CACHE_DIR/gopath

mkdir -p "$BIN_DIR" "$STAMP_DIR" "$GOMODCACHE" "$GOCACHE" "$GOPATH"

# One build at a time per TOOLS_DIR (CI jobs on the same machine share it).
if command -v flock >/dev/null 2>&1; then
  exec 9>"$TOOLS_DIR/.lock"
  if ! flock -n 9; then
    log "another build-tools run holds $TOOLS_DIR/.lock; waiting"
    flock 9
  fi
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/cri-py-build-tools.XXXXXX")
cleanup() { chmod -R u+w "$WORK" 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

# up_to_date TOOL WANT: the binary exists and was built from WANT.
up_to_date() {
  [[ -x $BIN_DIR/$1 && -f $STAMP_DIR/$1 && "$(cat "$STAMP_DIR/$1")" == "$2" ]]
}

# install_tool TOOL BUILT_FILE WANT: move the fresh binary in place, then record its stamp.
install_tool() {
  mv -f "$2" "$BIN_DIR/$1"
  printf '%s\n' "$3" >"$STAMP_DIR/$1"
}

# mod_download MODULE@VERSION FIELD: fetch through the proxy, print one field of `go mod download -json`.
mod_download() {
  local json
  json=$(cd "$WORK" && "$GO" mod download -json "$1") || die "go mod download $1 failed: $json"
  printf '%s' "$json" | sed -n "s/^[[:space:]]*\"$2\": \"\(.*\)\",\{0,1\}\$/\1/p"
}

# gorun ARGS...: run go at low priority (2-core machines stay responsive during long builds).
gorun() { nice -n "${BUILD_NICE:-10}" "$GO" "$@"; }

elapsed() { local s=$(($(date +%s) - $1)); printf '%dm%02ds' $((s / 60)) $((s % 60)); }

log "go: $("$GO" version) (GOTOOLCHAIN=local), jobs: $BUILD_JOBS"
log "tools dir: $TOOLS_DIR, go caches: $GO_CACHE_DIR"

# ---------------------------------------------------------------------------------------------
# crictl and critest: sigs.k8s.io/cri-tools. The module zip carries no vendor/ directory, so the
# build resolves dependencies from go.mod/go.sum through the proxy (-mod=readonly: go.sum must
# already be complete, nothing is resolved to "latest"). critest is a Go test binary
# (`go test -c ./cmd/critest`), exactly as cri-tools' own Makefile builds it.
# ---------------------------------------------------------------------------------------------
build_cri_tools() {
  local mod=sigs.k8s.io/cri-tools want="sigs.k8s.io/cri-tools@$CRI_TOOLS_VERSION"
  local need=()
  up_to_date crictl "$want" && log "crictl: up to date ($want)" || need+=(crictl)
  up_to_date critest "$want" && log "critest: up to date ($want)" || need+=(critest)
  ((${#need[@]})) || return 0

  log "cri-tools: fetching $want from the module proxy"
  local dir src=$WORK/cri-tools
  dir=$(mod_download "$want" Dir)
  [[ -n $dir && -d $dir ]] || die "no module directory for $want"
  cp -R "$dir" "$src"
  chmod -R u+w "$src"
  # Honour the module's go.mod (replace directives included) and vendor/ exactly as shipped.
  local modflag=-mod=readonly
  if [[ -f $src/vendor/modules.txt ]]; then modflag=-mod=vendor; fi

  local ldflags="-X $mod/pkg/version.Version=${CRI_TOOLS_VERSION#v}"
  local t0
  for tool in "${need[@]}"; do
    t0=$(date +%s)
    log "$tool: building from $want"
    case $tool in
      crictl)
        (cd "$src" && CGO_ENABLED=0 gorun build "$modflag" -p "$BUILD_JOBS" -trimpath \
          -ldflags "$ldflags" -o "$WORK/crictl" ./cmd/crictl) ;;
      critest)
        (cd "$src" && CGO_ENABLED=0 gorun test "$modflag" -p "$BUILD_JOBS" -trimpath -c \
          -ldflags "$ldflags" -o "$WORK/critest" ./cmd/critest) ;;
    esac
    install_tool "$tool" "$WORK/$tool" "$want"
    log "$tool: built in $(elapsed "$t0")"
  done
}

# ---------------------------------------------------------------------------------------------
# kubelet (and optionally kubectl): k8s.io/kubernetes. Its go.mod replaces every k8s.io staging
# module with ./staging/src/k8s.io/<name>, which a proxy-fetched module cannot use. So build from
# a wrapper module that requires k8s.io/kubernetes and replaces each of those staging modules
# (the list is read from kubernetes' own go.mod) with its published tag v0.X.Y for v1.X.Y.
# ---------------------------------------------------------------------------------------------
# kube_wrapper DIR: write DIR/go.mod, a module that requires k8s.io/kubernetes@$KUBERNETES_VERSION
# with every staging module pinned to its published tag (used by kubelet and e2e_node.test).
kube_wrapper() {
  log "kubernetes: fetching k8s.io/kubernetes@$KUBERNETES_VERSION go.mod from the module proxy"
  local kmod
  kmod=$(mod_download "k8s.io/kubernetes@$KUBERNETES_VERSION" GoMod)
  [[ -n $kmod && -f $kmod ]] || die "no go.mod for k8s.io/kubernetes@$KUBERNETES_VERSION"

  local staging_version="v0.${KUBERNETES_VERSION#v1.}"
  local staging
  staging=$(sed -n 's#^[[:space:]]*\(k8s\.io/[^[:space:]]*\)[[:space:]]*=>[[:space:]]*\./staging/src/.*#\1#p' "$kmod" | sort -u)
  [[ -n $staging ]] || die "found no ./staging replace directives in $kmod"
  log "kubernetes: replacing $(wc -l <<<"$staging") staging modules with $staging_version"

  local wrap=$1
  mkdir -p "$wrap"
  local gover
  gover=$(sed -n 's/^go \([0-9.]*\)$/\1/p' "$kmod")
  {
    echo "module cri-py.local/kubernetes-tools"
    echo
    echo "go ${gover:-1.26}"
    echo
    # Runtime defaults (godebug) come from the main module: keep kubernetes' own.
    awk '/^godebug \(/{b=1} b{print} b&&/^\)/{b=0; next} /^godebug [^(]/{print}' "$kmod"
    echo
    echo "require k8s.io/kubernetes $KUBERNETES_VERSION"
    echo
    echo "replace ("
    local m
    while read -r m; do echo "	$m => $m $staging_version"; done <<<"$staging"
    echo ")"
  } >"$wrap/go.mod"
}

# kube_ldflags: the -ldflags of a kubernetes build at $KUBERNETES_VERSION.
kube_ldflags() {
  # Version stamping as kubernetes' hack/lib/version.sh does it (no git commit: the proxy
  # zip has none); buildDate is the tag's time from the proxy, so builds are reproducible.
  local major minor date
  major=${KUBERNETES_VERSION#v}; major=${major%%.*}
  minor=${KUBERNETES_VERSION#v*.}; minor=${minor%%.*}
  date=$(mod_download "k8s.io/kubernetes@$KUBERNETES_VERSION" Info)
  date=$(sed -n 's/.*"Time":"\([^"]*\)".*/\1/p' "$date")
  local ldflags="-s -w" pkg key val kv
  for kv in "gitVersion=$KUBERNETES_VERSION" "gitMajor=$major" "gitMinor=$minor" \
            "gitTreeState=clean" "buildDate=${date:-1970-01-01T00:00:00Z}"; do
    key=${kv%%=*}; val=${kv#*=}
    for pkg in k8s.io/client-go/pkg/version k8s.io/component-base/version; do
      ldflags+=" -X $pkg.$key=$val"
    done
  done
  printf '%s' "$ldflags"
}

build_kubernetes() {
  local want="k8s.io/kubernetes@$KUBERNETES_VERSION"
  local tools need=()
  read -r -a tools <<<"$KUBE_TOOLS"
  [[ $BUILD_KUBECTL == 1 ]] && tools+=(kubectl)
  for tool in "${tools[@]}"; do
    up_to_date "$tool" "$want" && log "$tool: up to date ($want)" || need+=("$tool")
  done
  ((${#need[@]})) || return 0

  local wrap=$WORK/kubernetes-wrapper
  kube_wrapper "$wrap"

  local pkgs=()
  for tool in "${need[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/$tool"); done
  log "kubernetes: resolving dependencies of ${pkgs[*]}"
  # `go get PKG@VERSION` records the build list and go.sum; every module it needs is pinned by
  # kubernetes' (and the staging modules') go.mod, so the result does not depend on the day.
  (cd "$wrap" && GOFLAGS=-buildvcs=false "$GO" get "${pkgs[@]/%/@$KUBERNETES_VERSION}") ||
    die "go get failed for ${pkgs[*]}"
  local got
  got=$(cd "$wrap" && "$GO" list -m -f '{{.Version}}' k8s.io/kubernetes)
  [[ $got == "$KUBERNETES_VERSION" ]] || die "wrapper resolved k8s.io/kubernetes $got, want $KUBERNETES_VERSION"

  local ldflags
  ldflags=$(kube_ldflags)

  local t0
  for tool in "${need[@]}"; do
    t0=$(date +%s)
    log "$tool: building from $want (this takes a while the first time)"
    # Tags as kubernetes' release builds use them (hack/lib/golang.sh).
    (cd "$wrap" && CGO_ENABLED=0 gorun build -p "$BUILD_JOBS" -trimpath \
      -tags selinux,notest,grpcnotrace -ldflags "$ldflags" \
      -o "$WORK/$tool" "k8s.io/kubernetes/cmd/$tool")
    install_tool "$tool" "$WORK/$tool" "$want"
    log "$tool: built in $(elapsed "$t0")"
  done
}

# ---------------------------------------------------------------------------------------------
# etcd (for the local cluster scenario): go.etcd.io/etcd/server/v3 ships the etcd main package,
# but its go.mod replaces its sibling modules (api, client, pkg) with ../<dir>, which a
# proxy-fetched module cannot use: same wrapper trick as kubernetes, pinning each to the tag.
# ---------------------------------------------------------------------------------------------
build_etcd() {
  [[ -n $ETCD_VERSION ]] || return 0
  [[ $ETCD_VERSION == v3.* ]] || die "ETCD_VERSION must be a tag like v3.6.16, got '$ETCD_VERSION'"
  local want="go.etcd.io/etcd/server/v3@$ETCD_VERSION"
  up_to_date etcd "$want" && { log "etcd: up to date ($want)"; return 0; }

  log "etcd: fetching $want go.mod from the module proxy"
  local emod
  emod=$(mod_download "$want" GoMod)
  [[ -n $emod && -f $emod ]] || die "no go.mod for $want"
  local siblings
  siblings=$(sed -n 's#^[[:space:]]*\(go\.etcd\.io/etcd/[^[:space:]]*\)[[:space:]]*=>[[:space:]]*\.\./.*#\1#p' "$emod" | sort -u)
  [[ -n $siblings ]] || die "found no ../ replace directives in $emod"

  local wrap=$WORK/etcd-wrapper
  mkdir -p "$wrap"
  {
    echo "module cri-py.local/etcd-tools"
    echo
    echo "go $(sed -n 's/^go \([0-9.]*\)$/\1/p' "$emod")"
    echo
    echo "require go.etcd.io/etcd/server/v3 $ETCD_VERSION"
    echo
    echo "replace ("
    local m
    while read -r m; do echo "	$m => $m $ETCD_VERSION"; done <<<"$siblings"
    echo ")"
  } >"$wrap/go.mod"
  (cd "$wrap" && GOFLAGS=-buildvcs=false "$GO" get "$want") || die "go get failed for $want"

  local t0
  t0=$(date +%s)
  log "etcd: building from $want"
  (cd "$wrap" && CGO_ENABLED=0 gorun build -p "$BUILD_JOBS" -trimpath -ldflags "-s -w" \
    -o "$WORK/etcd" go.etcd.io/etcd/server/v3)
  install_tool etcd "$WORK/etcd" "$want"
  log "etcd: built in $(elapsed "$t0")"
}

# ---------------------------------------------------------------------------------------------
# The node e2e suite (`make e2e-node`): e2e_node.test is the Go test binary of
# k8s.io/kubernetes/test/e2e_node (`go test -c`, as kubernetes' `make WHAT=test/e2e_node/e2e_node.test`
# builds it), and ginkgo is the CLI that runs it in parallel, at the github.com/onsi/ginkgo/v2
# version the same build list selects (the CLI and the library in the binary must agree).
# Both come from the kubelet's wrapper module. The suite runs kubelet from the directory of
# e2e_node.test, so both live in $BIN_DIR next to the kubelet built above.
# ---------------------------------------------------------------------------------------------
# build_test_suite BINARY PACKAGE: BINARY (`go test -c` of PACKAGE) and the ginkgo CLI, both
# from one wrapper module; each skipped when its stamp is current.
build_test_suite() {
  local bin=$1 pkg=$2
  local want="k8s.io/kubernetes@$KUBERNETES_VERSION"
  local need=()
  up_to_date "$bin" "$want" && log "$bin: up to date ($want)" || need+=("$bin")
  up_to_date ginkgo "$want" && log "ginkgo: up to date ($want)" || need+=(ginkgo)
  ((${#need[@]})) || return 0

  local wrap=$WORK/${bin%.test}-wrapper
  kube_wrapper "$wrap"
  log "$bin: resolving dependencies of $pkg (with its tests)"
  # -t: the package is all _test.go files; without it `go get` records none of their imports.
  (cd "$wrap" && GOFLAGS=-buildvcs=false "$GO" get -t "$pkg@$KUBERNETES_VERSION") ||
    die "go get failed for $pkg"
  local got ginkgo_version
  got=$(cd "$wrap" && "$GO" list -m -f '{{.Version}}' k8s.io/kubernetes)
  [[ $got == "$KUBERNETES_VERSION" ]] || die "wrapper resolved k8s.io/kubernetes $got, want $KUBERNETES_VERSION"
  ginkgo_version=$(cd "$wrap" && "$GO" list -m -f '{{.Version}}' github.com/onsi/ginkgo/v2)
  [[ -n $ginkgo_version ]] || die "github.com/onsi/ginkgo/v2 is not in the build list of $pkg"
  # The CLI's own imports (not the library's) join go.sum at the version already selected.
  (cd "$wrap" && GOFLAGS=-buildvcs=false "$GO" get "github.com/onsi/ginkgo/v2/ginkgo@$ginkgo_version") ||
    die "go get failed for the ginkgo CLI $ginkgo_version"
  got=$(cd "$wrap" && "$GO" list -m -f '{{.Version}}' k8s.io/kubernetes)
  [[ $got == "$KUBERNETES_VERSION" ]] || die "the ginkgo CLI moved k8s.io/kubernetes to $got"

  local ldflags t0
  ldflags=$(kube_ldflags)
  for tool in "${need[@]}"; do
    t0=$(date +%s)
    log "$tool: building from $want (ginkgo $ginkgo_version; $bin takes a while the first time)"
    case $tool in
      ginkgo)
        (cd "$wrap" && CGO_ENABLED=0 gorun build -p "$BUILD_JOBS" -trimpath -ldflags "-s -w" \
          -o "$WORK/ginkgo" github.com/onsi/ginkgo/v2/ginkgo) ;;
      *)
        (cd "$wrap" && CGO_ENABLED=0 gorun test -c -p "$BUILD_JOBS" -trimpath \
          -tags selinux,notest,grpcnotrace -ldflags "$ldflags" \
          -o "$WORK/$tool" "$pkg") ;;
    esac
    [[ -x $WORK/$tool ]] || die "$tool: the build produced no binary"
    install_tool "$tool" "$WORK/$tool" "$want"
    log "$tool: built in $(elapsed "$t0")"
  done
}

build_node_e2e() {
  [[ $BUILD_NODE_E2E == 1 ]] || return 0
  build_test_suite e2e_node.test k8s.io/kubernetes/test/e2e_node
}

# ---------------------------------------------------------------------------------------------
# The cluster e2e suite (`make e2e-conformance`): e2e.test is the Go test binary of
# k8s.io/kubernetes/test/e2e (as kubernetes' `make WHAT=test/e2e/e2e.test` builds it), run by
# the same ginkgo CLI against a kind cluster. It needs no kubelet: only the API server's address.
# ---------------------------------------------------------------------------------------------
build_e2e() {
  [[ $BUILD_E2E == 1 ]] || return 0
  build_test_suite e2e.test k8s.io/kubernetes/test/e2e
}

# ---------------------------------------------------------------------------------------------
# kind (`make tools-kind`, for `make e2e-kind`): sigs.k8s.io/kind has no replace directives and
# a complete go.sum, so the proxy's module zip builds as it is, with the flags of kind's own
# Makefile (no git commit to stamp: the zip has none).
# ---------------------------------------------------------------------------------------------
build_kind() {
  [[ -n $KIND_VERSION ]] || return 0
  [[ $KIND_VERSION == v0.* ]] || die "KIND_VERSION must be a tag like v0.33.0, got '$KIND_VERSION'"
  local want="sigs.k8s.io/kind@$KIND_VERSION"
  up_to_date kind "$want" && { log "kind: up to date ($want)"; return 0; }

  log "kind: fetching $want from the module proxy"
  local dir src=$WORK/kind-src
  dir=$(mod_download "$want" Dir)
  [[ -n $dir && -d $dir ]] || die "no module directory for $want"
  cp -R "$dir" "$src"
  chmod -R u+w "$src"
  local t0
  t0=$(date +%s)
  log "kind: building from $want"
  (cd "$src" && CGO_ENABLED=0 gorun build -p "$BUILD_JOBS" -trimpath \
    -ldflags "-buildid= -s -w" -o "$WORK/kind" .)
  [[ -f $WORK/kind && -x $WORK/kind ]] || die "kind: the build produced no binary"
  install_tool kind "$WORK/kind" "$want"
  log "kind: built in $(elapsed "$t0")"
}

if [[ $BUILD_CRI_TOOLS == 1 ]]; then build_cri_tools; fi
build_kubernetes
build_etcd
build_node_e2e
build_e2e
build_kind

log "versions:"
# (both warn on stderr about a missing /etc/crictl.yaml)
if [[ $BUILD_CRI_TOOLS == 1 ]]; then
  "$BIN_DIR/crictl" --version 2>/dev/null
  "$BIN_DIR/critest" --version 2>/dev/null | grep -i version
fi
for tool in $KUBE_TOOLS; do
  case $tool in
    kubeadm) "$BIN_DIR/kubeadm" version -o short ;;   # kubeadm has no --version flag
    *) "$BIN_DIR/$tool" --version ;;
  esac
done
if [[ $BUILD_KUBECTL == 1 && -x $BIN_DIR/kubectl ]]; then "$BIN_DIR/kubectl" version --client 2>/dev/null | sed -n 1p; fi
if [[ -n $ETCD_VERSION ]]; then "$BIN_DIR/etcd" --version | sed -n 1p; fi
if [[ $BUILD_NODE_E2E == 1 || $BUILD_E2E == 1 ]]; then "$BIN_DIR/ginkgo" version; fi
if [[ -n $KIND_VERSION ]]; then "$BIN_DIR/kind" version; fi
log "done: binaries in $BIN_DIR"
