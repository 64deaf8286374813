"""Hostile input: random but well-typed CRI requests to every RPC of a running daemon.

The RPCs come from the services in `cri_py.api` (a new one is fuzzed without touching this
file) and the requests from their message descriptors: random strings (path-ish, NUL bytes,
huge), boundary integers, unknown enum numbers, nested messages, maps, repeated fields and
unknown fields, with the IDs, names and images of a live pod and its containers mixed in.
Each call must answer with a status the CRI defines for bad requests, never UNKNOWN or
INTERNAL (an exception escaped) nor a traceback in the daemon's log; the daemon keeps
serving; a rejected call changes no state (List* / ImageFsInfo / the state dirs, compared
before and after). Accepted mutations are undone at once so pods do not pile up.

CRI_PY_FUZZ_EXAMPLES (default 2000) sets the examples per RPC. One daemon serves the module,
on bridge `cri-pyz0` (10.83.0.0/24); outbound HTTP goes to a closed loopback port (a proxy
that refuses), so pulls of random names reach only the lab registry.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import string
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

import grpc
import pytest
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor
from google.protobuf.message import Message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cri_py.api import api_pb2 as pb
from cri_py.api import api_pb2_grpc as pb_grpc
from cri_py.linux.cgroupfs import Cgroupfs

from .conftest import Daemon, needs_root, start_daemon
from .test_containers import BUSYBOX, ROOT, Lab, registry_up

pytestmark = needs_root

EXAMPLES = int(os.environ.get("CRI_PY_FUZZ_EXAMPLES", "2000"))
PAUSE = "registry.k8s.io/pause:3.10"
CGROUP_PARENT = f"/cri-py-tests/fuzz-{secrets.token_hex(4)}"
CONFIG = (
    (ROOT / "e2e" / "lab-config.yaml").read_text()
    + "network:\n  bridge: cri-pyz0\n  subnet: 10.83.0.0/24\n  cni_conf_dir: /nonexistent\n"
    + f"cgroups:\n  default_parent: {CGROUP_PARENT}\n"
    + "images:\n  pinned: []\n  progress_timeout_seconds: 5\n"
)
# Anything not loopback goes to a proxy nobody listens on: fails at once, leaves the machine.
OFFLINE_ENV = {
    "HTTP_PROXY": "http://127.0.0.1:9",
    "HTTPS_PROXY": "http://127.0.0.1:9",
    "ALL_PROXY": "http://127.0.0.1:9",
    "NO_PROXY": "127.0.0.1,localhost",
}
CALL_TIMEOUT = 60.0  # a call that takes longer hangs: a finding too (generous: shared CI)
STREAM_MESSAGES = 3  # read at most this many messages of a server stream ...
STREAM_WAIT = 0.05  # ... or wait this long for one that may never come (an event stream)

# Statuses a request can legitimately end with. UNKNOWN and INTERNAL mean an exception
# escaped a handler; DEADLINE_EXCEEDED from the client's deadline means something hung.
ALLOWED = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.UNIMPLEMENTED,
    grpc.StatusCode.OUT_OF_RANGE,
    grpc.StatusCode.UNAVAILABLE,  # a registry that cannot be reached (pulls)
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.ABORTED,
}
# RPCs that only read: they are checked for status and tracebacks, not state snapshots.
READ_ONLY_PREFIXES = ("List", "Stream", "Version", "Status", "ImageFsInfo", "RuntimeConfig")
READ_ONLY_SUFFIXES = ("Status", "Stats", "Metrics", "Descriptors")


def is_read_only(rpc: str) -> bool:
    return rpc.startswith(READ_ONLY_PREFIXES) or rpc.endswith(READ_ONLY_SUFFIXES)


def all_rpcs() -> list[tuple[str, MethodDescriptor]]:
    return [
        (service.full_name, method)
        for service in pb.DESCRIPTOR.services_by_name.values()
        for method in service.methods
    ]


# --- the world: a pod, containers and images whose names the strategies mix in -------------


@dataclass
class World:
    """A live pod with a running and a created container, and two pulled images; rebuilt
    when an accepted call (a stop, a remove) changed them."""

    lab: Lab
    scratch: Path  # an existing directory: host paths of mounts that exist
    pod: str = ""
    running: str = ""
    created: str = ""
    images: dict[str, str] = field(default_factory=dict)
    snapshot: dict[str, Any] = field(default_factory=dict)
    channel: grpc.Channel | None = None
    cgroup_dir: Path = Path("/nonexistent")  # the tests' cgroup parent in one hierarchy
    last: str = ""  # how the previous call ended

    def values(self, kind: str) -> list[str]:
        if kind == "pod":
            return [self.pod, self.pod[:6]]
        if kind == "container":
            return [self.running, self.created, self.running[:8]]
        if kind == "image":
            return [BUSYBOX, PAUSE, *self.images.values()]
        if kind == "name":
            return ["fuzz-base", "running", "created", "test"]
        if kind == "path":
            return [str(self.scratch), str(self.scratch / "file"), str(self.scratch / "dir")]
        raise AssertionError(kind)

    def build(self) -> None:
        self.lab.pods.clear()
        self.pod = self.lab.run_pod(BASE_POD["name"])
        # Ends at once on SIGTERM, so an accepted StopContainer does not wait out its timeout.
        script = "trap 'exit 0' TERM; sleep 100000 & wait"
        self.running = self.lab.create(self.pod, "running", ["sh", "-c", script])
        self.lab.start(self.running)
        self.created = self.lab.create(self.pod, "created", ["true"])

    def ensure_images(self) -> None:
        client = self.lab.daemon.images()
        for ref in (BUSYBOX, PAUSE):
            status = client.ImageStatus(pb.ImageStatusRequest(image=pb.ImageSpec(image=ref)))
            if not status.image.id:
                pulled = client.PullImage(
                    pb.PullImageRequest(image=pb.ImageSpec(image=ref)), timeout=120
                )
                status = client.ImageStatus(pb.ImageStatusRequest(image=pb.ImageSpec(image=ref)))
                assert status.image.id == pulled.image_ref
            self.images[ref] = status.image.id

    def reconcile(self) -> None:
        """Back to the world the strategies know: extra pods and containers removed, the
        base pod and containers as built, both images present."""
        rt = self.lab.daemon.runtime()
        for pod in rt.ListPodSandbox(pb.ListPodSandboxRequest(), timeout=30).items:
            if pod.id != self.pod:
                self.lab.remove_pod(pod.id)
        for container in rt.ListContainers(pb.ListContainersRequest(), timeout=30).containers:
            if container.id not in (self.running, self.created):
                rt.RemoveContainer(pb.RemoveContainerRequest(container_id=container.id), timeout=30)
        states = {
            c.id: c.state
            for c in rt.ListContainers(pb.ListContainersRequest(), timeout=30).containers
        }
        pods = rt.ListPodSandbox(pb.ListPodSandboxRequest(), timeout=30).items
        intact = (
            [(p.id, p.state) for p in pods] == [(self.pod, pb.SANDBOX_READY)]
            and states.get(self.running) == pb.CONTAINER_RUNNING
            and states.get(self.created) == pb.CONTAINER_CREATED
        )
        self.ensure_images()
        if not intact:
            if pods:
                self.lab.remove_pod(self.pod)
            self.build()
        self.snapshot = take_snapshot(self)


def take_snapshot(world: World, images: bool = True) -> dict[str, Any]:
    """What a rejected call must not change, cheaply: the pods and containers listed, the
    entries of the daemon's state dirs, the pods' log dir, a scratch dir and the cgroup
    parent; with `images`, the images listed and the image filesystem's usage too (an
    ImageService call is the only one that can change those)."""
    assert world.channel is not None
    rt = pb_grpc.RuntimeServiceStub(world.channel)
    pods = rt.ListPodSandbox(pb.ListPodSandboxRequest(), timeout=CALL_TIMEOUT).items
    containers = rt.ListContainers(pb.ListContainersRequest(), timeout=CALL_TIMEOUT).containers
    daemon = world.lab.daemon
    dirs = [
        daemon.root_dir / "containers",
        daemon.root_dir / "sandboxes",
        daemon.run_dir / "sandboxes",
        world.lab.logs,
        world.scratch,
        world.cgroup_dir,
    ]
    snapshot: dict[str, Any] = {
        "pods": [(p.id, p.state, p.created_at, str(p.metadata), dict(p.labels)) for p in pods],
        "containers": [
            (c.id, c.state, c.created_at, str(c.metadata), c.image_ref) for c in containers
        ],
        "dirs": {str(d): sorted(os.listdir(d)) if d.is_dir() else None for d in dirs},
    }
    if images:
        client = pb_grpc.ImageServiceStub(world.channel)
        listed = client.ListImages(pb.ListImagesRequest(), timeout=CALL_TIMEOUT).images
        snapshot["images"] = [
            (i.id, sorted(i.repo_tags), sorted(i.repo_digests), i.pinned) for i in listed
        ]
        fs = client.ImageFsInfo(pb.ImageFsInfoRequest(), timeout=CALL_TIMEOUT)
        snapshot["image_fs"] = [
            (u.used_bytes.value, u.inodes_used.value) for u in fs.image_filesystems
        ]
    return snapshot


# --- strategies built from the message descriptors -------------------------------------------

PATHISH = [
    "",
    "/",
    ".",
    "..",
    "../",
    "../../etc/x",
    "/etc",
    "/etc/passwd",
    "/etc/../etc/shadow",
    "a/../../b",
    "//",
    "/proc/self/root",
    "/proc/1/ns/net",
    "/dev/null",
    "/dev/zero",
    "/sys/fs/cgroup",
    "kernel/../../x",
    "net.ipv4.../",
    "net/ipv4/ip_forward",
    "kernel.shm_rmid_forced",
    "\x00",
    "x\x00y",
    "/tmp/\x00",
    "~root",
    "$(id)",
    "*",
    "%s%n",
    "-1",
    "0",
    "sha256:",
    "sha256:" + "0" * 64,
    "localhost:5000/../x",
    "registry.k8s.io/../../etc:tag",
    "127.0.0.1:5000/x@sha256:" + "a" * 64,
    "docker.io/library/busybox:latest",
    "RuntimeDefault",
    "unconfined",
    "runtime/default",
    "localhost/../x",
    "SYS_ADMIN",
    "ALL",
    "SIGKILL",
    "SIGRTMAX+1",
    "tcp",
    "0.0.0.0",
    "::1",
    "rwm",
    "Bidirectional",
]
SEGMENTS = ["..", ".", "", "etc", "x", "\x00", "dev", "proc", "net.ipv4", "a b", "é", "\u202e"]
HUGE_SIZES = [256, 4096, 65536, 100_000]
INT_RANGES = {
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
    FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
}
# The live pod's metadata, as Lab.run_pod makes it.
BASE_POD = {"name": "fuzz-base", "uid": "uid-fuzz-base", "namespace": "test", "attempt": 0}
MAX_DEPTH = 5
MAX_ITEMS = 3


def live(world: World, kind: str) -> st.SearchStrategy[str]:
    """A value of the live world, looked up when drawn (the world is rebuilt as it goes)."""
    return st.integers(0, 7).map(lambda i: (lambda v: v[i % len(v)])(world.values(kind)))


def kind_of(name: str) -> str | None:
    """Which live values a string field named `name` is likely to carry."""
    if name.endswith("sandbox_id") or name == "id":
        return "pod"
    if name.endswith("container_id") or name == "target_id":
        return "container"
    if name in ("image", "user_specified_image", "image_ref"):
        return "image"
    if name in ("name", "namespace", "uid"):
        return "name"
    if name.endswith("path") or name in ("localhost_ref", "log_directory", "cgroup_parent"):
        return "path"
    return None


def strings(world: World, name: str) -> st.SearchStrategy[str]:
    text = st.text(max_size=12)
    pathish = st.one_of(
        st.sampled_from(PATHISH),
        st.lists(st.sampled_from(SEGMENTS), min_size=1, max_size=5).map("/".join),
    )
    huge = st.tuples(st.sampled_from(HUGE_SIZES), st.sampled_from("a/.\x00")).map(
        lambda t: t[1] * t[0]
    )
    hexdigits = st.text(string.hexdigits.lower(), max_size=8)
    choices = [(4, text), (2, pathish), (1, hexdigits), (1, huge)]
    kind = kind_of(name)
    if kind is not None:
        choices.append((3, live(world, kind)))
    return weighted(*choices)


def weighted(*choices: tuple[int, st.SearchStrategy[Any]]) -> st.SearchStrategy[Any]:
    """One of `choices`, each as often as its weight says (st.one_of would merge repeats)."""
    pool = [strategy for weight, strategy in choices for _ in range(weight)]
    return st.sampled_from(pool).flatmap(lambda strategy: strategy)


def host_paths(world: World) -> st.SearchStrategy[str]:
    """Mount host paths: the scratch dir's, or ones that cannot exist. Binding real host
    dirs is what kubelet's hostPath asks for and must work, so fuzzing it could mount over
    or create inside the machine's own dirs; the path tests check the hostile cases."""
    missing = st.text(max_size=12).map(lambda t: f"{world.scratch}/missing/{t}")
    return weighted(
        (3, live(world, "path")),
        (1, missing),
        (1, st.text(max_size=12).map(lambda t: f"relative/{t}")),
        (1, st.sampled_from(["", "\x00", "relative", "../x", f"{world.scratch}/\x00"])),
    )


def overridden(world: World, fd: FieldDescriptor) -> st.SearchStrategy[Any] | None:
    if fd.full_name == "runtime.v1.Mount.host_path":
        return host_paths(world)
    if fd.full_name == "runtime.v1.Mount.propagation":
        # Not BIDIRECTIONAL (rshared): mounts made inside the container's bind would show up
        # on the host, outside anything the test can clean (kubelet allows it only for
        # privileged containers).
        return st.sampled_from([pb.PROPAGATION_PRIVATE, pb.PROPAGATION_HOST_TO_CONTAINER, 99])
    return None


def scalar(world: World, fd: FieldDescriptor) -> st.SearchStrategy[Any]:
    special = overridden(world, fd)
    if special is not None:
        return special
    t = fd.type
    if t == FieldDescriptor.TYPE_STRING:
        return strings(world, fd.name)
    if t == FieldDescriptor.TYPE_BYTES:
        return st.binary(max_size=16)
    if t == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if t in INT_RANGES:
        low, high = INT_RANGES[t]
        edges = [v for v in (low, high, 0, 1, -1, 137, 4096, 2**31 - 1, 2**32) if low <= v <= high]
        return st.one_of(
            st.sampled_from(edges), st.integers(low, high), st.integers(max(low, -10), 100)
        )
    if t in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return st.floats(width=32 if t == FieldDescriptor.TYPE_FLOAT else 64)
    if t == FieldDescriptor.TYPE_ENUM:
        known = [v.number for v in fd.enum_type.values]
        # Mostly known values (an unknown one stops a request early), sometimes any number.
        return weighted((5, st.sampled_from(known)), (1, st.integers(-(2**31), 2**31 - 1)))
    raise AssertionError(f"unhandled field type {t} of {fd.full_name}")


def value_of(world: World, fd: FieldDescriptor, depth: int) -> st.SearchStrategy[Any]:
    if fd.type == FieldDescriptor.TYPE_MESSAGE:
        return messages(world, fd.message_type, depth + 1)
    return scalar(world, fd)


_cache: dict[tuple[str, int], st.SearchStrategy[Message]] = {}


def messages(world: World, descriptor: Descriptor, depth: int = 0) -> st.SearchStrategy[Message]:
    """Messages of `descriptor` with a random subset of fields set (deeper: fewer)."""
    key = (descriptor.full_name, depth)
    if key in _cache:
        return _cache[key]
    cls = getattr(pb, descriptor.name)
    if depth >= MAX_DEPTH:
        return st.just(cls())
    if descriptor.name == "PodSandboxMetadata" and depth > 0:
        # Mostly the live pod's own: a RunPodSandbox then passes every check but the last
        # (the name is taken) and is rejected, instead of costing a pod's start and removal.
        _cache[key] = weighted(
            (12, st.builds(lambda: pb.PodSandboxMetadata(**BASE_POD))),
            (1, random_message(world, descriptor, depth)),
        )
        return _cache[key]
    _cache[key] = random_message(world, descriptor, depth)
    return _cache[key]


def random_message(world: World, descriptor: Descriptor, depth: int) -> st.SearchStrategy[Message]:
    cls = getattr(pb, descriptor.name)
    fields: dict[str, st.SearchStrategy[Any]] = {}
    for fd in descriptor.fields:
        if fd.message_type is not None and fd.message_type.GetOptions().map_entry:
            key_fd = fd.message_type.fields_by_name["key"]
            value_fd = fd.message_type.fields_by_name["value"]
            fields[fd.name] = st.dictionaries(
                scalar(world, key_fd)
                if key_fd.type != FieldDescriptor.TYPE_STRING
                else strings(world, "key"),
                value_of(world, value_fd, depth),
                max_size=MAX_ITEMS,
            )
        elif fd.label == FieldDescriptor.LABEL_REPEATED:
            fields[fd.name] = st.lists(value_of(world, fd, depth), max_size=MAX_ITEMS)
        else:
            fields[fd.name] = st.deferred(lambda fd=fd: value_of(world, fd, depth))

    def build(values: dict[str, Any]) -> Message:
        message = cls()
        for name, value in values.items():
            target = getattr(message, name) if hasattr(message, name) else None
            fd = descriptor.fields_by_name[name]
            if fd.message_type is not None and fd.message_type.GetOptions().map_entry:
                for k, v in value.items():
                    if isinstance(v, Message):
                        target[k].CopyFrom(v)
                    else:
                        target[k] = v
            elif fd.label == FieldDescriptor.LABEL_REPEATED:
                target.extend(value)
            elif fd.type == FieldDescriptor.TYPE_MESSAGE:
                target.CopyFrom(value)
            else:
                setattr(message, name, value)
        return message

    # IDs, names, images and the config a request is about are nearly always there (else
    # nearly every request stops at "ID must not be empty"); of the rest a few are drawn
    # (more at the top): whole random trees would be slow to draw.
    required = {name: fields.pop(name) for name in list(fields) if is_key_field(descriptor, name)}
    pairs = [st.tuples(st.just(name), strategy) for name, strategy in fields.items()]
    limit = min(len(pairs), 8 if depth <= 1 else 3)
    rest = st.lists(st.one_of(pairs), max_size=limit) if pairs else st.just([])
    return st.tuples(st.fixed_dictionaries(required), rest).map(
        lambda drawn: build({**dict(drawn[1]), **drawn[0]})
    )


KEY_MESSAGES = ("metadata", "image", "config", "filter")


def is_key_field(descriptor: Descriptor, name: str) -> bool:
    fd = descriptor.fields_by_name[name]
    if fd.label == FieldDescriptor.LABEL_REPEATED:
        return False
    if fd.type == FieldDescriptor.TYPE_STRING:
        return kind_of(name) in ("pod", "container", "image", "name")
    return fd.type == FieldDescriptor.TYPE_MESSAGE and name in KEY_MESSAGES


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


# Fields a newer client may send that this CRI version does not define (valid wire format).
unknown_fields = st.lists(
    st.tuples(
        st.integers(1000, 536870911), st.one_of(st.integers(0, 2**64 - 1), st.binary(max_size=8))
    ),
    max_size=2,
).map(
    lambda items: b"".join(
        varint(n << 3) + varint(v)
        if isinstance(v, int)
        else varint(n << 3 | 2) + varint(len(v)) + v
        for n, v in items
    )
)


def requests(world: World, method: MethodDescriptor) -> st.SearchStrategy[bytes]:
    return st.tuples(messages(world, method.input_type), unknown_fields).map(
        lambda t: t[0].SerializeToString() + t[1]
    )


# --- calling -----------------------------------------------------------------------------------


@dataclass
class Outcome:
    code: grpc.StatusCode
    details: str


def call(channel: grpc.Channel, service: str, method: MethodDescriptor, data: bytes) -> Outcome:
    path = f"/{service}/{method.name}"
    if not method.server_streaming:
        try:
            channel.unary_unary(path)(data, timeout=CALL_TIMEOUT)
        except grpc.RpcError as e:
            return Outcome(e.code(), e.details() or "")
        return Outcome(grpc.StatusCode.OK, "")
    stream = channel.unary_stream(path)(data, timeout=CALL_TIMEOUT)
    # An event stream may stay open with nothing to say: stop waiting after STREAM_WAIT.
    timer = threading.Timer(STREAM_WAIT, stream.cancel)
    timer.start()
    try:
        for count, _ in enumerate(stream, 1):
            if count >= STREAM_MESSAGES:
                stream.cancel()
                break
    except grpc.RpcError as e:
        if e.code() != grpc.StatusCode.CANCELLED:
            return Outcome(e.code(), e.details() or "")
    finally:
        timer.cancel()
    return Outcome(grpc.StatusCode.OK, "")


def short(text: str, limit: int) -> str:
    """`text` with runs of a repeated character squeezed, cut at `limit` (huge inputs)."""
    squeezed = re.sub(r"(.)\1{15,}", lambda m: f"{m.group(1)}<x{len(m.group(0))}>", text)
    return squeezed if len(squeezed) <= limit else squeezed[:limit] + "..."


class LogWatch:
    """The daemon's log since the last look: a traceback or an error line is a bug."""

    def __init__(self, daemon: Daemon) -> None:
        self._file = daemon.log_file.open("rb")
        self._file.seek(0, os.SEEK_END)

    def new_problems(self) -> str:
        text = self._file.read().decode(errors="replace")
        bad = [line for line in text.splitlines() if "Traceback" in line or "level=error" in line]
        return "\n".join(short(line, 3000) for line in bad)

    def close(self) -> None:
        self._file.close()


def check(
    world: World, watch: LogWatch, service: str, method: MethodDescriptor, data: bytes
) -> Outcome:
    assert world.channel is not None
    outcome = call(world.channel, service, method, data)
    world.last, previous = f"{outcome.code.name} {short(outcome.details, 300)}", world.last
    request = getattr(pb, method.input_type.name).FromString(data)
    where = f"{method.name}({short(str(request), 1500)!r})"
    assert outcome.code in ALLOWED, f"{where} -> {outcome.code.name}: {outcome.details}"
    problems = watch.new_problems()
    assert not problems, f"{where} -> {outcome.code.name}; daemon log:\n{problems}"
    assert world.lab.daemon.process.poll() is None, f"{where}: the daemon died"
    if is_read_only(method.name):
        return outcome
    images = service.endswith("ImageService")
    after = take_snapshot(world, images)
    changed = [
        f"{key} before: {short(str(world.snapshot[key]), 1500)}\n after: {short(str(new), 1500)}"
        for key, new in after.items()
        if world.snapshot[key] != new
    ]
    if outcome.code == grpc.StatusCode.OK:
        if changed:
            world.reconcile()
        return outcome
    assert not changed, (
        f"{where} was rejected ({outcome.details}) but changed (the call before it: "
        f"{previous}):\n" + "\n".join(changed)
    )
    return outcome


# --- the module's daemon -----------------------------------------------------------------------


def remove_cgroup_parent() -> None:
    """The tests' parent and what a failed test left in it (pod cgroups nest), deepest first."""
    for directory in Cgroupfs.from_host().dirs(CGROUP_PARENT):
        for path, _, _ in sorted(os.walk(directory), key=lambda e: -len(e[0])):
            with contextlib.suppress(OSError):
                os.rmdir(path)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    if not registry_up():
        pytest.skip("the lab registry on 127.0.0.1:5000 is not running (make registry images)")
    base = tmp_path_factory.mktemp("fuzz")
    with mock.patch.dict(os.environ, OFFLINE_ENV):
        daemon = start_daemon(base / "daemon", CONFIG, "--log-level", "info")
    scratch = base / "scratch"
    (scratch / "dir").mkdir(parents=True)
    (scratch / "file").write_text("x")
    world = World(Lab(daemon, base / "logs"), scratch)
    world.channel = grpc.insecure_channel(daemon.address)
    world.cgroup_dir = Cgroupfs.from_host().dirs(CGROUP_PARENT)[0]
    try:
        world.ensure_images()
        world.build()
        world.snapshot = take_snapshot(world)
        yield world
    finally:
        with contextlib.suppress(grpc.RpcError):
            rt = daemon.runtime()
            for pod in rt.ListPodSandbox(pb.ListPodSandboxRequest(), timeout=30).items:
                world.lab.remove_pod(pod.id)
        daemon.stop()
        world.channel.close()
        remove_cgroup_parent()


@dataclass
class Counter:
    examples: int = 0
    codes: dict[str, int] = field(default_factory=dict)
    reasons: dict[str, int] = field(default_factory=dict)


@pytest.mark.parametrize(("service", "method"), all_rpcs(), ids=[m.name for _, m in all_rpcs()])
def test_random_requests_get_a_defined_status_and_change_nothing_when_rejected(
    world: World, service: str, method: MethodDescriptor
) -> None:
    watch = LogWatch(world.lab.daemon)
    counter = Counter()
    started = time.monotonic()

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(requests(world, method))
    def fuzz(data: bytes) -> None:
        counter.examples += 1
        outcome = check(world, watch, service, method, data)
        counter.codes[outcome.code.name] = counter.codes.get(outcome.code.name, 0) + 1
        reason = re.sub(r"[0-9a-f]{12,}|'.*?'|\S*\d\S*", "_", outcome.details)[:50]
        counter.reasons[reason] = counter.reasons.get(reason, 0) + 1

    try:
        fuzz()
    finally:
        watch.close()
    seconds = time.monotonic() - started
    print(f"\n{method.name}: {counter.examples} examples in {seconds:.1f}s {counter.codes}")
    if os.environ.get("CRI_PY_FUZZ_REASONS"):
        for reason, count in sorted(counter.reasons.items(), key=lambda kv: -kv[1])[:8]:
            print(f"  {count:5d} {reason}")
    # Still serving, and the world the next RPC starts from is the one it knows.
    world.lab.daemon.runtime().Version(pb.VersionRequest(), timeout=10)
    world.reconcile()


# --- regressions the fuzzing found (the fixes are in cri_py; these keep them fixed) -----------


def test_int64_extremes_of_stop_and_exec_timeouts_are_not_internal_errors(world: World) -> None:
    rt = pb_grpc.RuntimeServiceStub(world.channel)
    for timeout in (2**63 - 1, -(2**63)):
        reply = rt.ExecSync(
            pb.ExecSyncRequest(container_id=world.running, cmd=["true"], timeout=timeout),
            timeout=CALL_TIMEOUT,
        )
        assert reply.exit_code == 0
    # The container ends on SIGTERM: the huge timeout is never waited out.
    rt.StopContainer(
        pb.StopContainerRequest(container_id=world.running, timeout=2**63 - 1), timeout=30
    )
    status = rt.ContainerStatus(pb.ContainerStatusRequest(container_id=world.running)).status
    assert status.state == pb.CONTAINER_EXITED
    world.reconcile()
