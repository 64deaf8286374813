"""The runtime's records and value types: the bottom floor every other package imports.

`sandbox` (pod sandboxes: config, record, view, filter), `container` (containers: config,
record, exit, filter), `resources` (cgroup resources), `network` (network readiness),
`image` (what a container inherits from its image). Frozen dataclasses and enums, no protobuf;
these modules import only the standard library and each other (a layer contract checks it).
"""
