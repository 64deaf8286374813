#!/usr/bin/env bash
# Vendors the CRI api.proto from the k8s.io/cri-api Go module (through the Go module proxy)
# and regenerates the committed Python stubs in cri_py/api/. Generator versions are pinned in
# pyproject.toml so that the output is byte-identical on every machine.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/.." && pwd)
version=${CRI_API_VERSION:-v0.37.2}
python=${PYTHON:-python3}

# Go's module cache is outside the repo; reuse the tools' cache when it exists.
export GOMODCACHE=${GOMODCACHE:-/var/cache/cri-py/go/mod}
export GOFLAGS=-mod=mod
dir=$(cd /tmp && go mod download -json "k8s.io/cri-api@${version}" \
    | "$python" -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')
src="$dir/pkg/apis/runtime/v1/api.proto"
[ -f "$src" ] || { echo "api.proto not found in $dir" >&2; exit 1; }
install -m 0644 "$src" "$here/api.proto"

# Compile from a scratch tree where the proto sits at cri_py/api/api.proto, so the generated
# modules import each other as `cri_py.api.api_pb2` instead of a bare top-level `api_pb2`.
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
mkdir -p "$scratch/cri_py/api"
cp "$here/api.proto" "$scratch/cri_py/api/api.proto"
out="$top/cri_py/api"
mkdir -p "$out"
rm -f "$out"/api_pb2*.py "$out"/api_pb2*.pyi
# protoc finds the mypy plugins on PATH, next to the python that runs it.
PATH="$(dirname "$python"):$PATH" "$python" -m grpc_tools.protoc -I "$scratch" \
    --python_out="$top" --mypy_out="$top" \
    --grpc_python_out="$top" --mypy_grpc_out="$top" \
    "$scratch/cri_py/api/api.proto"
echo "protos: k8s.io/cri-api ${version} -> protos/api.proto, cri_py/api/"
