"""cri-py's RuntimeDefault seccomp profile, as data: an allow list of the syscalls ordinary
programs make, plus the ones a capability makes safe (only allowed when the container holds
that capability). Everything else fails with EPERM.

Written for cri-py in the spirit of the default profile Docker and containerd ship (the same
families are left out: kernel keyrings, module loading, kexec, reboot, clock setting, swap,
accounting, namespace creation and mounts without CAP_SYS_ADMIN, bpf, perf, userfaultfd...),
not copied from it. io_uring is left out entirely (as containerd 2.x and Docker do): its
operations bypass seccomp's per-syscall checks and it has been a steady source of kernel
privilege escalations. pidfd_getfd (taking another process's descriptor) needs
CAP_SYS_PTRACE, like ptrace itself. Names unknown to the host's libseccomp are skipped when
loading; no architectures are listed, so only the native one is allowed (libseccomp kills a
process entering through another ABI).
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

EPERM = 1
ENOSYS = 38

# clone(2) flags that create namespaces: without CAP_SYS_ADMIN, clone is allowed only when
# none is set (argument 0 masked-equal 0), which is what fork and threads use.
CLONE_NAMESPACE_FLAGS = 0x7E020000

ALLOWED: tuple[str, ...] = (
    # files and descriptors
    "access", "close", "close_range", "copy_file_range", "creat", "dup", "dup2", "dup3",
    "faccessat", "faccessat2", "fadvise64", "fallocate", "fchdir", "fchmod", "fchmodat",
    "fchmodat2", "fchown", "fchown32", "fchownat", "fcntl", "fcntl64", "fdatasync", "flock",
    "fstat", "fstat64", "fstatat64", "fstatfs", "fstatfs64", "fsync", "ftruncate",
    "ftruncate64", "getcwd", "getdents", "getdents64", "chdir", "chmod", "chown", "chown32",
    "lchown", "lchown32", "link", "linkat", "lseek", "_llseek", "lstat", "lstat64", "mkdir",
    "mkdirat", "mknod", "mknodat", "newfstatat", "open", "openat", "openat2", "pipe", "pipe2",
    "pread64", "preadv", "preadv2", "pwrite64", "pwritev", "pwritev2", "read", "readahead",
    "readlink", "readlinkat", "readv", "rename", "renameat", "renameat2", "rmdir", "sendfile",
    "sendfile64", "splice", "stat", "stat64", "statfs", "statfs64", "statx", "symlink",
    "symlinkat", "sync", "sync_file_range", "syncfs", "tee", "truncate", "truncate64", "umask",
    "unlink", "unlinkat", "utime", "utimensat", "utimensat_time64", "utimes", "futimesat",
    "vmsplice", "write", "writev", "ioctl", "memfd_create", "name_to_handle_at",
    # extended attributes
    "fgetxattr", "flistxattr", "fremovexattr", "fsetxattr", "getxattr", "lgetxattr",
    "listxattr", "llistxattr", "lremovexattr", "lsetxattr", "removexattr", "setxattr",
    # events and polling
    "epoll_create", "epoll_create1", "epoll_ctl", "epoll_ctl_old", "epoll_pwait",
    "epoll_pwait2", "epoll_wait", "epoll_wait_old", "eventfd", "eventfd2", "inotify_add_watch",
    "inotify_init", "inotify_init1", "inotify_rm_watch", "poll", "ppoll", "ppoll_time64",
    "pselect6", "pselect6_time64", "select", "_newselect", "signalfd", "signalfd4",
    "timerfd_create", "timerfd_gettime", "timerfd_gettime64", "timerfd_settime",
    "timerfd_settime64", "io_cancel", "io_destroy", "io_getevents", "io_pgetevents",
    "io_pgetevents_time64", "io_setup", "io_submit", "fanotify_mark",
    # memory
    "brk", "madvise", "membarrier", "mincore", "mlock", "mlock2", "mlockall", "mmap", "mmap2",
    "mprotect", "mremap", "msync", "munlock", "munlockall", "munmap", "remap_file_pages",
    "pkey_alloc", "pkey_free", "pkey_mprotect", "map_shadow_stack", "cachestat",
    # processes, threads and signals
    "arch_prctl", "capget", "capset", "execve", "execveat", "exit", "exit_group", "fork",
    "vfork", "futex", "futex_time64", "futex_waitv", "futex_wait", "futex_wake",
    "futex_requeue", "get_robust_list", "set_robust_list", "get_thread_area",
    "set_thread_area", "set_tid_address", "getpgid", "getpgrp", "getpid", "getppid",
    "getpriority", "getsid", "gettid", "kill", "tgkill", "tkill", "pause", "pidfd_open",
    "pidfd_send_signal", "prctl", "prlimit64", "getrlimit", "setrlimit",
    "ugetrlimit", "getrusage", "rseq", "restart_syscall", "rt_sigaction", "rt_sigpending",
    "rt_sigprocmask", "rt_sigqueueinfo", "rt_sigreturn", "rt_sigsuspend", "rt_sigtimedwait",
    "rt_sigtimedwait_time64", "rt_tgsigqueueinfo", "sigaction", "sigaltstack", "signal",
    "sigpending", "sigprocmask", "sigreturn", "sigsuspend", "sched_getaffinity",
    "sched_getattr", "sched_getparam", "sched_get_priority_max", "sched_get_priority_min",
    "sched_getscheduler", "sched_rr_get_interval", "sched_rr_get_interval_time64",
    "sched_setaffinity", "sched_setattr", "sched_setparam", "sched_setscheduler",
    "sched_yield", "setpgid", "setpriority", "setsid", "wait4", "waitid", "waitpid",
    "ioprio_get", "ioprio_set", "process_mrelease", "landlock_add_rule",
    "landlock_create_ruleset", "landlock_restrict_self", "seccomp",
    # identity (a process may change it within what its capabilities allow)
    "getegid", "getegid32", "geteuid", "geteuid32", "getgid", "getgid32", "getgroups",
    "getgroups32", "getresgid", "getresgid32", "getresuid", "getresuid32", "getuid",
    "getuid32", "setfsgid", "setfsgid32", "setfsuid", "setfsuid32", "setgid", "setgid32",
    "setgroups", "setgroups32", "setregid", "setregid32", "setresgid", "setresgid32",
    "setresuid", "setresuid32", "setreuid", "setreuid32", "setuid", "setuid32",
    # time (reading it; setting it needs CAP_SYS_TIME below)
    "alarm", "clock_getres", "clock_getres_time64", "clock_gettime", "clock_gettime64",
    "clock_nanosleep", "clock_nanosleep_time64", "getitimer", "gettimeofday", "nanosleep",
    "setitimer", "time", "times", "timer_create", "timer_delete", "timer_getoverrun",
    "timer_gettime", "timer_gettime64", "timer_settime", "timer_settime64",
    # sockets
    "accept", "accept4", "bind", "connect", "getpeername", "getsockname", "getsockopt",
    "listen", "recv", "recvfrom", "recvmmsg", "recvmmsg_time64", "recvmsg", "send", "sendmmsg",
    "sendmsg", "sendto", "setsockopt", "shutdown", "socket", "socketcall", "socketpair",
    # System V and POSIX IPC (per IPC namespace)
    "ipc", "mq_getsetattr", "mq_notify", "mq_open", "mq_timedreceive",
    "mq_timedreceive_time64", "mq_timedsend", "mq_timedsend_time64", "mq_unlink", "msgctl",
    "msgget", "msgrcv", "msgsnd", "semctl", "semget", "semop", "semtimedop",
    "semtimedop_time64", "shmat", "shmctl", "shmdt", "shmget",
    # system information
    "getcpu", "getrandom", "sysinfo", "uname", "olduname", "oldolduname",
    # architecture quirks
    "arm_fadvise64_64", "arm_sync_file_range", "sync_file_range2", "breakpoint",
    "cacheflush", "set_tls", "riscv_flush_icache", "riscv_hwprobe",
)  # fmt: skip

# Allowed only with the capability that already lets a process do what they do.
BY_CAPABILITY: dict[str, tuple[str, ...]] = {
    "CAP_SYS_ADMIN": (
        "bpf", "clone", "clone3", "fanotify_init", "fsconfig", "fsmount", "fsopen", "fspick",
        "lookup_dcookie", "mount", "mount_setattr", "move_mount", "open_tree", "perf_event_open",
        "quotactl", "quotactl_fd", "setdomainname", "sethostname", "setns", "syslog", "umount",
        "umount2", "unshare",
    ),
    "CAP_SYS_BOOT": ("reboot",),
    "CAP_SYS_CHROOT": ("chroot",),
    "CAP_SYS_MODULE": ("delete_module", "init_module", "finit_module"),
    "CAP_SYS_PACCT": ("acct",),
    "CAP_SYS_PTRACE": (
        "kcmp", "pidfd_getfd", "process_madvise", "process_vm_readv", "process_vm_writev",
        "ptrace",
    ),
    "CAP_SYS_RAWIO": ("iopl", "ioperm"),
    "CAP_SYS_TIME": ("settimeofday", "stime", "clock_settime", "clock_settime64", "adjtimex",
                     "clock_adjtime", "clock_adjtime64"),
    "CAP_SYS_TTY_CONFIG": ("vhangup",),
    "CAP_SYS_NICE": ("get_mempolicy", "mbind", "set_mempolicy", "set_mempolicy_home_node"),
    "CAP_SYSLOG": ("syslog",),
    "CAP_DAC_READ_SEARCH": ("open_by_handle_at",),
    "CAP_BPF": ("bpf",),
    "CAP_PERFMON": ("perf_event_open",),
}  # fmt: skip

# Values of personality(2) that only select an ABI flavour (Linux, with or without the
# 32-bit address or an uname reporting 2.6) and the query (0xffffffff).
PERSONALITY_VALUES = (0x0, 0x8, 0x20000, 0x20008, 0xFFFFFFFF)


def default_profile(capabilities: Collection[str]) -> dict[str, Any]:
    """The RuntimeDefault profile in OCI `linux.seccomp` form, for a container holding
    `capabilities` (its bounding set)."""
    allowed = set(ALLOWED)
    for capability, names in BY_CAPABILITY.items():
        if capability in capabilities:
            allowed.update(names)
    syscalls: list[dict[str, Any]] = [{"names": sorted(allowed), "action": "SCMP_ACT_ALLOW"}]
    syscalls += [
        {
            "names": ["personality"],
            "action": "SCMP_ACT_ALLOW",
            "args": [{"index": 0, "value": v, "op": "SCMP_CMP_EQ"}],
        }
        for v in PERSONALITY_VALUES
    ]
    if "CAP_SYS_ADMIN" not in capabilities:
        syscalls += [
            {
                "names": ["clone"],
                "action": "SCMP_ACT_ALLOW",
                "args": [
                    {
                        "index": 0,
                        "value": CLONE_NAMESPACE_FLAGS,
                        "valueTwo": 0,
                        "op": "SCMP_CMP_MASKED_EQ",
                    }
                ],
            },
            # clone3 passes its flags in memory, where a filter cannot look: ENOSYS makes
            # glibc and others fall back to clone, which the rule above checks.
            {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": ENOSYS},
        ]
    return {
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": EPERM,
        "syscalls": syscalls,
    }
