"""What a launch runs and as whom, inside the container's root (after pivot_root): the
program execve takes, opened here so the file checked is the file run (`find_program`,
`open_program`, `exec_program`), and the image's /etc/passwd and /etc/group read within
bounds (`read_image_file`, `image_user`). Called by `launcher` in the process it forked;
deciding what to run is `cri_py.oci.plan`'s.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
from collections.abc import Sequence

from cri_py.linux.rootfs import open_in_root
from cri_py.oci.plan import PlanError, User, executable_candidates, resolve_user

# /etc/passwd and /etc/group of an image are read only if regular files up to this size: a
# link to /dev/zero or a FIFO must not exhaust the node or hang the shim.
IMAGE_FILE_LIMIT = 1024 * 1024
# The kernel follows "#!" this many times (BINPRM_MAX_RECURSION), reading this much of a file.
_SHEBANG_DEPTH = 4
_SHEBANG_BYTES = 256


class LaunchError(Exception):
    """A step failed; the message (sent to the shim) names the step."""


def read_image_file(path: str, limit: int = IMAGE_FILE_LIMIT) -> tuple[str, str]:
    """An image file's text, after pivot_root (so links resolve inside the root), and "" or
    why it was not read: only a regular file up to `limit` bytes counts, anything else (a link
    to /dev/zero, a FIFO, a directory, a huge file) is treated as absent. Opened non-blocking
    (a FIFO's open would wait for a writer) and without a controlling terminal, checked with
    fstat on the descriptor it was opened as."""
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
    try:
        fd = os.open(path, flags)
    except OSError:
        return "", ""
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            return "", f"{path} is not a regular file"
        data = b""
        while len(data) <= limit:
            chunk = os.read(fd, limit + 1 - len(data))
            if not chunk:
                break
            data += chunk
        if len(data) > limit:
            return "", f"{path} is larger than {limit} bytes"
        return data.decode("utf-8", errors="replace"), ""
    except OSError as e:
        return "", f"reading {path}: {e.strerror}"
    finally:
        os.close(fd)


def image_user(wanted: User) -> tuple[User, str]:
    """The plan's user in numbers, from the image's /etc/passwd and /etc/group; and the
    passwd text (for HOME)."""
    passwd, passwd_problem = read_image_file("/etc/passwd")
    group, group_problem = read_image_file("/etc/group")
    try:
        return resolve_user(wanted, passwd, group), passwd
    except PlanError as e:
        problems = "; ".join(p for p in (passwd_problem, group_problem) if p)
        raise LaunchError(f"{e} ({problems}: ignored)" if problems else str(e)) from e


def open_program(path: str, args: Sequence[str]) -> tuple[int, list[str]]:
    """The descriptor to execve and its argv, for `path` run with `args`. CVE-2019-5736: a
    program that is, or whose "#!" interpreter is, /proc/self/exe (or a link to it) would make
    execve run this process's own executable, the host's Python, in the container, whose root
    could then open it through /proc/<pid>/exe. So each file execve would follow is opened here
    with magic links refused, and the file run is the one opened (a container swapping it in
    between changes nothing): a script's "#!" line is followed here as the kernel would (up to
    4 levels, argv = interpreter, its argument, the script's path, the rest) and the
    interpreter's descriptor is what runs. A file this user may execute but not read is run as
    it is (its interpreter could not read it either; a root container can read anything).
    Raises OSError as execve would, LaunchError for a magic link."""
    argv = list(args)
    root = os.open("/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for _ in range(_SHEBANG_DEPTH + 1):
            fd = _open_executable(root, path)
            try:
                if not _may_execute(fd):
                    raise OSError(errno.EACCES, os.strerror(errno.EACCES))
                if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_PATH:
                    return fd, argv  # not readable by this user: run as it is
                head = os.pread(fd, _SHEBANG_BYTES, 0)
            except BaseException:
                os.close(fd)
                raise
            if not head.startswith(b"#!"):
                return fd, argv
            os.close(fd)
            line = head[2:].split(b"\n", 1)[0].strip(b" \t")
            interpreter, _, argument = line.replace(b"\t", b" ").partition(b" ")
            if not interpreter:
                raise OSError(errno.ENOEXEC, os.strerror(errno.ENOEXEC))
            argument = argument.strip(b" ")
            script = path
            path = os.fsdecode(interpreter)
            argv = [path, *([os.fsdecode(argument)] if argument else []), script, *argv[1:]]
        raise OSError(errno.ELOOP, os.strerror(errno.ELOOP))
    finally:
        os.close(root)


def _open_executable(root: int, path: str) -> int:
    """`path` (from the working dir if relative, as execve) opened for reading, or O_PATH when
    this user may not read it; magic links refused."""
    if not path.startswith("/"):
        path = os.path.join(os.getcwd(), path)
    try:
        return open_in_root(root, path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
    except PermissionError:
        pass
    except OSError as e:
        if e.errno == errno.ELOOP and _reachable(path):
            raise LaunchError(
                f"exec {path}: it leads through a /proc magic link (refused)"
            ) from None
        raise OSError(e.errno, os.strerror(e.errno or errno.EIO)) from None
    try:
        return open_in_root(root, path, os.O_PATH)
    except OSError as e:
        raise OSError(e.errno, os.strerror(e.errno or errno.EIO)) from None


def _reachable(path: str) -> bool:
    try:
        os.close(os.open(path, os.O_PATH | os.O_CLOEXEC))
    except OSError:
        return False
    return True


def find_program(args: Sequence[str], path: str | None) -> tuple[int, list[str]] | str:
    """The command's program, opened (`open_program`) before the seccomp filter goes on (a
    profile may not allow what opening it takes), as execve would search $PATH: a candidate
    missing or not executable by this user is skipped. The descriptor and argv, or the error
    text."""
    denied = ""
    for candidate in executable_candidates(args[0], path):
        try:
            fd, argv = open_program(candidate, args)
        except LaunchError as e:
            return str(e)
        except (FileNotFoundError, NotADirectoryError):
            continue
        except PermissionError as e:
            denied = f"exec {candidate}: {e.strerror}"
            continue
        except OSError as e:
            return f"exec {candidate}: {e.strerror}"
        return fd, argv
    if denied:
        return denied
    if "/" in args[0]:
        return f'exec: "{args[0]}": stat {args[0]}: no such file or directory'
    return f'exec: "{args[0]}": executable file not found in $PATH'


def _may_execute(fd: int) -> bool:
    """Whether execve could run what `fd` is: a regular file with some execute bit, not on a
    noexec mount (from the descriptor: the container's /proc may be anything). Finer refusals
    are execve's."""
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode) or not mode & 0o111:
        return False
    return not os.fstatvfs(fd).f_flag & os.ST_NOEXEC


def exec_program(program: tuple[int, list[str]], env: Sequence[str]) -> str:
    """execve's the program `find_program` opened (execveat(fd, "", AT_EMPTY_PATH): the file
    checked is the file run); never returns on success, the error text otherwise."""
    fd, argv = program
    environ = dict(e.partition("=")[::2] for e in env)
    try:
        os.execve(fd, argv, environ)
    except OSError as e:
        os.close(fd)
        return f"exec {argv[0]}: {e.strerror}"
