# cri-py: the two commands a newcomer needs are `make run` and `make test`.
# Everything else here prepares or exercises the lab (tools, registry, images).

PYTHON ?= python3
VENV ?= .venv
PY := $(abspath $(VENV))/bin/python
TOOLS_DIR ?= /var/cache/cri-py/tools
CRI_API_VERSION ?= v0.37.2
CRI_TOOLS_VERSION ?= v1.37.0
KUBERNETES_VERSION ?= v1.37.2
SOCKET ?= /run/cri-py/cri-py.sock

.PHONY: all venv run test test-fuzz lint typecheck protos protos-check tools tools-cri tools-cluster tools-node-e2e tools-e2e tools-kind docker docker-stop e2e-kind e2e-conformance e2e-node e2e-cluster e2e-all registry registry-stop images kind-images kind-image critest e2e-critest e2e-kubelet e2e-systemd bench install uninstall clean test-faults

all: test

# A local virtualenv with cri-py and its dev tools. Re-run when pyproject.toml changes.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

venv: $(VENV)/.installed

# Start the runtime in the foreground with embedded defaults (as root).
run: venv
	$(VENV)/bin/cri-py serve

# Lint, types, layer contracts (lint-imports: [tool.importlinter] in pyproject.toml), then
# every test. Tests that need root or the lab (registry, images, crictl) skip with a reason
# when it is missing; the skips are listed (-rs) and counted by reason at the end. With
# CRI_PY_REQUIRE_LAB=1 (CI) such a skip fails instead (tests/conftest.py).
# pytest's exit code 5 means "no tests collected": said plainly, not turned into make's 2.
# The fuzz suite sends FUZZ_EXAMPLES random requests to every RPC (200 here, a few minutes;
# CI runs 300); `make test-fuzz` runs it at 2000 per RPC (~23 min on 2 cores).
FUZZ_EXAMPLES ?= 200
test: venv
	$(PY) -m ruff check cri_py tests e2e
	$(PY) -m mypy --strict cri_py
	$(VENV)/bin/lint-imports
	rc=0; CRI_PY_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(PY) -m pytest -q -rs tests || rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest: no tests collected"; rc=0; fi; exit $$rc

test-fuzz: venv
	CRI_PY_FUZZ_EXAMPLES=2000 $(PY) -m pytest -q tests/integration/test_fuzz.py

lint: venv
	$(PY) -m ruff check cri_py tests e2e
	$(VENV)/bin/lint-imports

typecheck: venv
	$(PY) -m mypy --strict cri_py

# Vendor api.proto from the k8s.io/cri-api Go module, and NRI's api.proto from
# github.com/containerd/nri (the version critest links), and regenerate the committed stubs.
NRI_VERSION ?= v0.12.2
protos: venv
	CRI_API_VERSION=$(CRI_API_VERSION) PYTHON=$(PY) ./protos/update.sh
	NRI_VERSION=$(NRI_VERSION) PYTHON=$(PY) ./protos/nri/update.sh

# Fails when the committed stubs differ from what `make protos` would produce.
protos-check: protos
	git diff --exit-code -- protos cri_py/api cri_py/nri/api_pb2.py cri_py/nri/api_pb2.pyi \
	  cri_py/nri/ttrpc_pb2.py cri_py/nri/ttrpc_pb2.pyi

# crictl, critest and kubelet (and kubectl unless BUILD_KUBECTL=0), built from the Go module
# proxy into $(TOOLS_DIR).
tools:
	TOOLS_DIR=$(TOOLS_DIR) CRI_TOOLS_VERSION=$(CRI_TOOLS_VERSION) KUBERNETES_VERSION=$(KUBERNETES_VERSION) ./e2e/build-tools.sh

# crictl and critest only (a few minutes): all `make test` and `make e2e-critest` need.
tools-cri:
	TOOLS_DIR=$(TOOLS_DIR) CRI_TOOLS_VERSION=$(CRI_TOOLS_VERSION) BUILD_KUBECTL=0 KUBE_TOOLS= ./e2e/build-tools.sh

# The control plane for `make e2e-cluster` (kube-apiserver, -controller-manager, -scheduler,
# etcd): kept out of `tools` because it adds a long build CI does not need.
ETCD_VERSION ?= v3.6.16
tools-cluster:
	TOOLS_DIR=$(TOOLS_DIR) KUBERNETES_VERSION=$(KUBERNETES_VERSION) ETCD_VERSION=$(ETCD_VERSION) \
	  BUILD_CRI_TOOLS=0 BUILD_KUBECTL=0 BUILD_NICE=19 \
	  KUBE_TOOLS="kube-apiserver kube-controller-manager kube-scheduler" ./e2e/build-tools.sh

# The Kubernetes node e2e suite for `make e2e-node`: e2e_node.test and the ginkgo CLI (and the
# kubelet it runs), from the module proxy at low priority: 7.5 min on 2 cores once the kubelet
# is built (its build cache is shared), a no-op when up to date.
tools-node-e2e:
	TOOLS_DIR=$(TOOLS_DIR) KUBERNETES_VERSION=$(KUBERNETES_VERSION) \
	  BUILD_CRI_TOOLS=0 BUILD_KUBECTL=0 BUILD_NODE_E2E=1 BUILD_NICE=19 KUBE_TOOLS=kubelet \
	  ./e2e/build-tools.sh

# The Kubernetes cluster e2e suite for `make e2e-conformance`: e2e.test and the ginkgo CLI, from
# the module proxy at nice 19 (time in e2e/README.md, section "conformance"), a no-op when up to date.
tools-e2e:
	TOOLS_DIR=$(TOOLS_DIR) KUBERNETES_VERSION=$(KUBERNETES_VERSION) \
	  BUILD_CRI_TOOLS=0 BUILD_KUBECTL=0 BUILD_E2E=1 BUILD_NICE=19 KUBE_TOOLS= \
	  ./e2e/build-tools.sh

# kind for `make e2e-kind`, from the module proxy (a minute; a no-op when up to date).
KIND_VERSION ?= v0.33.0
tools-kind:
	TOOLS_DIR=$(TOOLS_DIR) KIND_VERSION=$(KIND_VERSION) BUILD_CRI_TOOLS=0 BUILD_KUBECTL=0 \
	  KUBE_TOOLS= BUILD_NICE=19 ./e2e/build-tools.sh

# The lab's Docker (dockerd on its own socket, roots and `kind` network, with a runc wrapper
# for this machine's capability bounding set) and a read-only copy of the lab registry on the
# `kind` network's gateway: see e2e/README.md, section "kind". Stopped by PID, host restored.
docker:
	./e2e/docker.sh start

docker-stop:
	./e2e/docker.sh stop

# Debian's docker-registry on 127.0.0.1:5000, storage outside the repo.
registry:
	./e2e/registry.sh start

registry-stop:
	./e2e/registry.sh stop

# The images critest needs, built from Debian packages and pushed to the local registry.
images: venv registry
	$(PY) e2e/build_images.py

# The images a kind cluster of cri-py nodes runs (control plane, kube-proxy, etcd, CoreDNS, the
# kindnet stand-in, local-path-provisioner; e2e/images/kind-catalog.toml), built from their Go
# modules and Debian packages and pushed to the lab registry; cached, a re-run only checks.
# `build_images.py --catalog e2e/images/kind-catalog.toml --smoke` runs each image (root).
kind-images: venv registry
	BUILD_NICE=19 $(PY) e2e/build_images.py --catalog e2e/images/kind-catalog.toml

# The kind node image cri-py/kind-node:$(KUBERNETES_VERSION), built offline into the lab's Docker
# (DOCKER_HOST, default the socket `make docker` starts): a Debian bookworm base by debootstrap
# (e2e/kind/build-base.sh, cached under /var/lib/cri-py-lab/kind), kubelet, kubeadm, kubectl
# and crictl from the Go module proxy, cri-py with its unit and node config; its nodes pull
# through the lab registry on the `kind` network (REGISTRY_MIRROR). See kind-config/README.md.
# RUNTIME=containerd: the baseline image cri-py/kind-node-containerd:$(KUBERNETES_VERSION) instead,
# Debian's containerd + runc in place of cri-py (kind-config/containerd/).
kind-image: venv
	DOCKER_HOST=$${DOCKER_HOST:-unix:///run/cri-py-docker/docker.sock} TOOLS_DIR=$(TOOLS_DIR) \
	  KUBERNETES_VERSION=$(KUBERNETES_VERSION) PYTHON=$(PY) RUNTIME=$(RUNTIME) ./e2e/kind/build-node.sh

# critest against a throw-away cri-py using the lab registry: `make critest FOCUS='Runtime info'`.
critest: venv
	FOCUS="$(FOCUS)" SKIP="$(SKIP)" PYTHON=$(PY) TOOLS_DIR=$(TOOLS_DIR) ./e2e/critest.sh

# Every critest spec, judged by name (e2e/junit_gate.py): fails on any failure not listed in
# e2e/critest-expected-failures.txt and on a listed spec that passes.
e2e-critest: venv
	GATE=1 PYTHON=$(PY) TOOLS_DIR=$(TOOLS_DIR) ./e2e/critest.sh

# kubelet v1.37 standalone (static pods, no API server) on a throw-away cri-py; needs the lab
# registry and images. EVENTED_PLEG=1 turns kubelet's EventedPLEG feature gate on.
e2e-kubelet: venv
	EVENTED_PLEG=$(EVENTED_PLEG) PYTHON=$(PY) TOOLS_DIR=$(TOOLS_DIR) $(PY) e2e/kubelet_e2e.py

# The systemd cgroup driver in a throw-away node of the lab Docker whose PID 1 is systemd
# (cri-py/kind-base:bookworm, `make docker` and the kind base image first): units, limits,
# update, restart and removal checks, the kubelet scenario, then critest there, judged by name
# as `make e2e-critest` (GATE= for critest's raw result). DRIVER=cgroupfs: the same node's
# baseline with the cgroupfs driver.
e2e-systemd: GATE ?= 1
e2e-systemd: venv
	GATE=$(GATE) FOCUS="$(FOCUS)" SKIP="$(SKIP)" TOOLS_DIR=$(TOOLS_DIR) ./e2e/systemd_node.sh

# The Kubernetes node e2e suite (NodeConformance, without Serial/Slow/Disruptive/Flaky/Feature)
# on a throw-away cri-py: needs `make tools-node-e2e tools-cri registry images`. FOCUS/SKIP
# override the selection, NODES the ginkgo processes (2). JUnit in /var/tmp/cri-py-results.
# Judged by name against e2e/node-e2e-expected-failures.txt, and against the containerd
# baseline when there is one: RUNTIME=containerd runs the same suite on Debian's containerd
# + runc (installed from bench/apt-packages.txt), results in .../node-e2e-containerd.
NODES ?= 2
RUNTIME ?= cri-py
e2e-node: venv
	RUNTIME=$(RUNTIME) FOCUS='$(FOCUS)' SKIP='$(SKIP)' NODES=$(NODES) PYTHON=$(PY) TOOLS_DIR=$(TOOLS_DIR) ./e2e/node_e2e.sh

# A single-node cluster of host processes (etcd, control plane, kubelet, cri-py) driven by
# kubectl: needs `make tools tools-cluster images`. See e2e/README.md.
e2e-cluster: venv
	PYTHON=$(PY) TOOLS_DIR=$(TOOLS_DIR) ./e2e/cluster.sh

# A kind cluster of cri-py nodes (one control-plane node, two workers: kind-config/cluster.yaml)
# tested end to end with kubectl, then deleted; nothing left on the host. Needs `make docker
# tools-kind tools kind-image` and the lab registry with `make images kind-images`. See
# e2e/README.md, section "kind". KEEP=1 keeps a failed run's cluster.
e2e-kind:
	TOOLS_DIR=$(TOOLS_DIR) KEEP=$(KEEP) ./e2e/kind_e2e.sh

# The Kubernetes conformance suite (e2e.test, focus \[Conformance\]) on a 3-node kind cluster of
# cri-py nodes, or RUNTIME=containerd on the baseline nodes; gated by name against
# e2e/conformance-expected-failures.txt and the containerd run. Needs `make docker tools-kind
# tools tools-e2e kind-image [RUNTIME=containerd]` and the lab registry with `make images
# kind-images`. See e2e/README.md, section "conformance". FOCUS/SKIP narrow it; NODES ginkgo
# processes (8 here unless given: most specs wait on the cluster, not on the CPU).
e2e-conformance: venv
	RUNTIME=$(RUNTIME) FOCUS='$(FOCUS)' SKIP='$(SKIP)' KEEP=$(KEEP) PYTHON=$(PY) \
	  NODES=$(if $(filter file,$(origin NODES)),8,$(NODES)) \
	  TOOLS_DIR=$(TOOLS_DIR) ./e2e/conformance.sh

# Every end-to-end scenario, the cluster included (CI runs only the first two).
e2e-all: e2e-critest e2e-kubelet e2e-cluster

# Install as a service: venv in $(PREFIX), systemd unit, default config (see systemd/install.sh).
PREFIX ?= /opt/cri-py
install:
	PREFIX=$(PREFIX) PYTHON=$(PYTHON) ./systemd/install.sh install

uninstall:
	PREFIX=$(PREFIX) ./systemd/install.sh uninstall

# As root, with the lab: pod lifecycles from concurrent clients while the daemon is SIGKILLed
# and restarted (seeded: SEED=n replays a schedule); then no lost pods and no leaks.
LIFECYCLES ?= 200
KILLS ?= 20
test-faults: venv
	$(PY) e2e/faults.py --lifecycles $(LIFECYCLES) --min-kills $(KILLS) $(if $(SEED),--seed $(SEED))

# Benchmarks (numbers, not pass/fail), as root. Needs the lab: make registry images (and
# critest, for critest's own benchmarks: built here by tools-cri when missing).
# `make bench COMPARE=containerd` (or `make bench -- --compare containerd`: make rejects an
# unknown option before `--`) also runs containerd, installed from bench/apt-packages.txt.
# ROUNDS=n alternating rounds (default 4; ~8 min with containerd, 500 pods each in the scale
# scenario). Results: bench/results/ (bench/README.md).
ROUNDS ?= 4
ifneq ($(filter --compare,$(MAKECMDGOALS)),)
COMPARE := $(filter-out bench --compare,$(MAKECMDGOALS))
--compare $(COMPARE):
	@:
endif
$(VENV)/.bench-installed: pyproject.toml $(VENV)/.installed
	$(PY) -m pip install --quiet -e '.[bench]'
	touch $@

bench: venv $(VENV)/.bench-installed tools-cri
	$(PY) bench/compare.py --rounds $(ROUNDS) $(if $(COMPARE),--compare $(COMPARE))

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .import_linter_cache
