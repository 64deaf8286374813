"""What this kernel can do for containers, probed once: the Status RPC advertises only what
works here (kubelet then refuses, rather than silently weakens, what it cannot have)."""

from __future__ import annotations

import errno
import functools
import os
import shutil
import subprocess
import sys
import tempfile

from cri_py.linux import syscalls

# A path that cannot exist: the probe must reach the syscall's lookup, never change a mount.
_PROBE_PATH = "/proc/self/fd/-1/cri-py-probe"


@functools.cache
def recursive_read_only_mounts() -> bool:
    """mount_setattr(2) (Linux 5.12) exists: the launcher makes `rro` mounts with it. A kernel
    without it answers ENOSYS before looking the path up; one with it, ENOENT."""
    try:
        syscalls.mount_setattr(_PROBE_PATH, syscalls.AT_RECURSIVE, syscalls.MOUNT_ATTR_RDONLY)
    except OSError as e:
        return e.errno not in (errno.ENOSYS, errno.EPERM)
    return True


@functools.cache
def selinux_enabled() -> bool:
    """SELinux is on when selinuxfs is mounted with `enforce` in it (what libselinux's
    is_selinux_enabled looks at)."""
    return os.path.exists("/sys/fs/selinux/enforce")


# --- user namespaces ------------------------------------------------------------------------

# Any range will do for the probe; this one is what critest's own idmap check uses.
_PROBE_MAP = "0 65536 65536\n"
_PROBE_ROOT = 65536


@functools.cache
def user_namespaces_problem(directory: str) -> str:
    """Why pods with their own users cannot run here ("" when they can). Probed for real, once
    per directory, in a fresh process (the daemon must not fork: gRPC): a mapped user
    namespace, an idmapped layer dir on `directory`'s filesystem (where layers are unpacked),
    an overlay on it with a plain upper dir, and a copy-up that keeps the shifted owner."""
    try:
        result = subprocess.run(
            [sys.executable, "-m", "cri_py.linux.features", "userns", directory],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"user namespace probe did not run: {e}"
    if result.returncode == 0:
        return ""
    detail = " ".join(part for part in (result.stdout.strip(), result.stderr.strip()) if part)
    return (detail or f"probe failed with exit code {result.returncode}")[-500:]


def _probe_user_namespaces(directory: str) -> str:
    """The probe's body (in the probe process); the failing step and its error, or ""."""
    from cri_py.linux.userns import UserNamespaceHelper  # only the probe process needs it

    work = tempfile.mkdtemp(prefix=".userns-probe-", dir=directory)
    try:
        for name in ("lower", "upper", "work", "merged", "layer"):
            os.mkdir(os.path.join(work, name), 0o755)
        with open(os.path.join(work, "lower", "file"), "w") as f:
            f.write("probe")
        os.chown(os.path.join(work, "upper"), _PROBE_ROOT, _PROBE_ROOT)
        try:
            helper = UserNamespaceHelper(_PROBE_MAP, _PROBE_MAP)
        except OSError as e:
            return f"creating a user namespace: {e}"
        try:
            userns = os.open(helper.ns_path("user"), os.O_RDONLY | os.O_CLOEXEC)
            child = os.fork()
            if child == 0:
                os._exit(_probe_mounts(work, userns))
            _, status = os.waitpid(child, 0)
            os.close(userns)
        finally:
            helper.close()
        code = os.waitstatus_to_exitcode(status)
        steps = {
            0: "",
            2: "a private mount namespace for the probe",
            3: "open_tree(OPEN_TREE_CLONE) of a layer dir",
            4: "mount_setattr(MOUNT_ATTR_IDMAP) on the layer dir (filesystem without idmap?)",
            5: "move_mount of the idmapped layer",
            6: "an overlay mount on the idmapped layer",
            7: "idmapped layer files do not appear shifted through the overlay",
            8: "copy-up through the overlay",
            9: "copy-up did not keep the shifted owner",
        }
        return steps.get(code, f"probe child exited with {code}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _probe_mounts(work: str, userns: int) -> int:
    """In a forked child: each step's failure is its exit code (the errno goes to stderr)."""
    step = 2
    try:
        syscalls.unshare(syscalls.CLONE_NEWNS)
        syscalls.mount(None, "/", None, syscalls.MS_REC | syscalls.MS_PRIVATE)
        step = 3
        tree = syscalls.open_tree(
            os.path.join(work, "lower"), syscalls.OPEN_TREE_CLONE | syscalls.OPEN_TREE_CLOEXEC
        )
        step = 4
        syscalls.mount_setattr(
            "",
            syscalls.AT_EMPTY_PATH,
            syscalls.MOUNT_ATTR_IDMAP,
            userns_fd=userns,
            dirfd=tree,
        )
        step = 5
        syscalls.move_mount(tree, os.path.join(work, "layer"))
        step = 6
        options = f"lowerdir={work}/layer,upperdir={work}/upper,workdir={work}/work"
        syscalls.mount("overlay", os.path.join(work, "merged"), "overlay", 0, options)
        step = 7
        if os.stat(os.path.join(work, "merged", "file")).st_uid != _PROBE_ROOT:
            return step
        step = 8
        with open(os.path.join(work, "merged", "file"), "a") as f:
            f.write("!")
        step = 9
        if os.stat(os.path.join(work, "upper", "file")).st_uid != _PROBE_ROOT:
            return step
    except OSError as e:
        print(f"step {step}: {e}", file=sys.stderr, flush=True)
        return step
    return 0


def _main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == "userns":
        problem = _probe_user_namespaces(argv[1])
        if problem:
            print(problem)
            return 1
        return 0
    print("usage: python -m cri_py.linux.features userns <dir>", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
