#!/usr/bin/env bash
# Vendors NRI's api.proto from the github.com/containerd/nri Go module (through the Go module
# proxy) and regenerates the committed Python stubs in cri_py/nri/, with cri-py's own ttrpc.proto
# (the ttrpc envelope). Generator versions are pinned in pyproject.toml (byte-identical output).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/../.." && pwd)
version=${NRI_VERSION:-v0.12.2}
python=${PYTHON:-python3}

export GOMODCACHE=${GOMODCACHE:-/var/cache/cri-py/go/mod}
export GOFLAGS=-mod=mod
dir=$(cd /tmp && go mod download -json "github.com/containerd/nri@${version}" \
    | "$python" -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')
src="$dir/pkg/api/api.proto"
[ -f "$src" ] || { echo "api.proto not found in $dir" >&2; exit 1; }
install -m 0644 "$src" "$here/api.proto"

# Compiled where the protos sit at cri_py/nri/, so the modules are `cri_py.nri.api_pb2`.
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
mkdir -p "$scratch/cri_py/nri"
cp "$here/api.proto" "$here/ttrpc.proto" "$scratch/cri_py/nri/"
out="$top/cri_py/nri"
mkdir -p "$out"
rm -f "$out"/api_pb2*.py "$out"/api_pb2*.pyi "$out"/ttrpc_pb2*.py "$out"/ttrpc_pb2*.pyi
PATH="$(dirname "$python"):$PATH" "$python" -m grpc_tools.protoc -I "$scratch" \
    --python_out="$top" --mypy_out="$top" \
    "$scratch/cri_py/nri/api.proto" "$scratch/cri_py/nri/ttrpc.proto"
echo "protos: github.com/containerd/nri ${version} -> protos/nri/api.proto, cri_py/nri/"
