"""The per-pod shim: the pod's infra process (holds its namespaces) and the parent of its
containers. Runs as `python -m cri_py.shim`; must never import grpc or anything that does
(checked by the `shim-no-grpc` contract in pyproject.toml, run by `lint-imports`)."""
