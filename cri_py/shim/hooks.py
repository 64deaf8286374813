"""Runs OCI hooks (`cri_py.oci.hooks` says which, where and when): a fork and exec of the hook's
path with its args and only its env, the container's state JSON on stdin, its output kept for
the error message, and its timeout enforced by killing its whole process group. Used by the
shim (runtime-namespace hooks), the launcher (createContainer, startContainer) and the daemon
(poststop). Stdlib only (the shim imports it).

The shim lives in the pod's network, IPC and UTS namespaces and may fork into the pod's PID
namespace: `RuntimeNamespaces` holds the runtime's own, captured before the shim left them, so
that a runtime-namespace hook is the host's process as the spec wants (and no container of
the pod can see it in its PID namespace).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Callable, Iterator, Sequence

from cri_py.linux import syscalls
from cri_py.oci.hooks import Hook

# What of a failed hook's output an error message shows (its end: where the reason is).
OUTPUT_TAIL_BYTES = 2048
# After SIGKILL of its group, how long the output pipe may stay open (a descendant that left
# the group) before it is given up.
_DRAIN_SECONDS = 2.0
_NAMESPACES = (
    ("net", syscalls.CLONE_NEWNET),
    ("ipc", syscalls.CLONE_NEWIPC),
    ("uts", syscalls.CLONE_NEWUTS),
)


class HookFailed(Exception):
    """A hook could not run, failed or timed out; the message names the kind and the hook."""


def _reset_signals() -> None:
    # Ignored signals survive execve (the shim ignores SIGINT and SIGHUP): defaults for all.
    signal.set_wakeup_fd(-1)
    for signum in range(1, signal.NSIG):
        if signum in (signal.SIGKILL, signal.SIGSTOP):
            continue
        with contextlib.suppress(OSError, ValueError):
            signal.signal(signum, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, [])


class RuntimeNamespaces:
    """Descriptors of the runtime's network, IPC, UTS and PID namespaces (close-on-exec)."""

    def __init__(self, fds: dict[str, int]) -> None:
        self._fds = fds

    @classmethod
    def capture(cls) -> RuntimeNamespaces:
        fds: dict[str, int] = {}
        for kind in ("net", "ipc", "uts", "pid"):
            fds[kind] = os.open(f"/proc/self/ns/{kind}", os.O_RDONLY | os.O_CLOEXEC)
        return cls(fds)

    def enter(self) -> None:
        """In a hook's child, before execve: the runtime's net, IPC and UTS namespaces."""
        for kind, flag in _NAMESPACES:
            syscalls.setns(self._fds[kind], flag)

    @contextlib.contextmanager
    def forking(self) -> Iterator[None]:
        """Children forked inside are born in the runtime's PID namespace, not the pod's."""
        pid_fd = self._fds["pid"]
        try:
            children = os.open("/proc/self/ns/pid_for_children", os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            children = -1
        try:
            if children < 0 or _same_file(children, pid_fd):
                yield
                return
            syscalls.setns(pid_fd, syscalls.CLONE_NEWPID)
            try:
                yield
            finally:
                syscalls.setns(children, syscalls.CLONE_NEWPID)
        finally:
            if children >= 0:
                os.close(children)

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds = {}


def _same_file(a: int, b: int) -> bool:
    sa, sb = os.fstat(a), os.fstat(b)
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


def _environment(entries: Sequence[str]) -> dict[str, str]:
    env: dict[str, str] = {}
    for entry in entries:
        name, _, value = entry.partition("=")
        env[name] = value
    return env


def _tail(output: bytes) -> str:
    text = output[-OUTPUT_TAIL_BYTES:].decode(errors="replace").strip()
    return f": {text}" if text else ""


def run_hook(
    kind: str,
    hook: Hook,
    state: bytes,
    prepare: Callable[[], None] | None = None,
    threaded: bool = False,
) -> None:
    """Runs one hook to its end; raises `HookFailed` unless it exits 0 in time. `prepare` runs
    in the child before execve (signals are reset there first). A child that outlives its
    timeout is killed with its process group. `threaded` (the daemon): no Python code may run
    between fork and exec, so neither does the reset nor `prepare`; Python restores SIGPIPE
    and SIGXFSZ itself and the daemon ignores no other signal."""

    def child_setup() -> None:
        _reset_signals()
        if prepare is not None:
            prepare()

    name = f"{kind} hook {hook.describe()}"
    try:
        process = subprocess.Popen(
            list(hook.argv),
            executable=hook.path,
            env=_environment(hook.env),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            close_fds=True,
            start_new_session=True,
            preexec_fn=None if threaded else child_setup,
        )
    except subprocess.SubprocessError as e:
        raise HookFailed(f"{name}: could not be started: {e}") from e
    except OSError as e:
        raise HookFailed(f"{name}: could not be started: {e.strerror or e}") from e
    try:
        output, _ = process.communicate(state, timeout=hook.seconds)
    except subprocess.TimeoutExpired:
        _kill_group(process)
        raise HookFailed(f"{name}: still running after {hook.seconds:g}s, killed") from None
    finally:
        if process.returncode is None:
            _kill_group(process)
    if process.returncode != 0:
        code = process.returncode
        how = f"killed by signal {-code}" if code < 0 else f"exited with status {code}"
        raise HookFailed(f"{name}: {how}{_tail(output)}")


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    try:
        process.communicate(timeout=_DRAIN_SECONDS)
    except subprocess.TimeoutExpired:
        for pipe in (process.stdin, process.stdout):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()
        process.wait()


def run_hooks(
    kind: str,
    hooks: Sequence[Hook],
    state: bytes,
    prepare: Callable[[], None] | None = None,
) -> None:
    """Each hook in order; the first failure stops the rest (the spec: the next hooks of a
    failed create or start are not called)."""
    for hook in hooks:
        run_hook(kind, hook, state, prepare)


def run_hooks_logged(
    kind: str,
    hooks: Sequence[Hook],
    state: bytes,
    warn: Callable[[str], None],
    prepare: Callable[[], None] | None = None,
    threaded: bool = False,
) -> int:
    """poststart and poststop: a failure is warned about and the next hook still runs (the
    spec: such a failure does not change the operation). Returns how many failed."""
    failed = 0
    for hook in hooks:
        try:
            run_hook(kind, hook, state, prepare, threaded)
        except HookFailed as e:
            warn(str(e))
            failed += 1
    return failed
