"""Smoke tests: pull an image back from the lab registry (skopeo), unpack it (umoci) and run
it in a chroot with fresh mount, network and PID namespaces, checking what critest relies on:
exact busybox messages, masked /bin/ls, nginx's PID file and master process title, httpd's
log, the setuid euid probe, the predefined group, pause's SIGTERM; for the node e2e images,
nmeter, agnhost's extras (/agnhost-2, bash, TLS netexec fetched with curl). Needs root."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from imagelab.catalog import Catalog, ImageRecipe, Reference
from imagelab.environment import BuildError, run

# Runs inside fresh mount (+ net + pid) namespaces, so everything it mounts disappears with
# them: the host's /dev stands in for the one a runtime would provide, then optional masked
# and read-only paths, done the way runtimes do them.
_SANDBOX = """
set -e
rootfs=$1; userspec=$2; masks=$3; readonly=$4; shift 4
mount --rbind /dev "$rootfs/dev"
for path in $masks; do mount --bind /dev/null "$rootfs$path"; done
for path in $readonly; do
    mount --bind "$rootfs$path" "$rootfs$path"
    mount -o remount,bind,ro "$rootfs$path"
done
if [ -n "$userspec" ]; then exec chroot --userspec="$userspec" "$rootfs" "$@"; fi
exec chroot "$rootfs" "$@"
"""


@dataclass(frozen=True)
class Outcome:
    returncode: int
    stdout: str
    stderr: str


def in_sandbox(
    rootfs: Path,
    argv: list[str],
    env_path: str,
    *,
    userspec: str = "",
    masks: tuple[str, ...] = (),
    readonly: tuple[str, ...] = (),
    timeout: float = 60,
) -> Outcome:
    """Run argv in a chroot of rootfs with its own mount, network and PID namespaces; the
    whole process tree dies with the namespace's first process (or with us, --kill-child)."""
    for directory in ("proc", "dev"):
        (rootfs / directory).mkdir(exist_ok=True)
    command = [
        "unshare", "--mount", "--net", "--pid", "--fork", "--kill-child",
        f"--mount-proc={rootfs}/proc",
        "sh", "-c", _SANDBOX, "sandbox",
        str(rootfs), userspec, " ".join(masks), " ".join(readonly), *argv,
    ]  # fmt: skip
    env = {"PATH": env_path, "HOME": "/root", "LANG": "C"}
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=timeout, env=env, stdin=subprocess.DEVNULL
    )
    return Outcome(done.returncode, done.stdout, done.stderr)


def expect(problems: list[str], condition: bool, what: str, outcome: Outcome) -> None:
    """Record what was checked, with the whole outcome, when the condition does not hold."""
    if not condition:
        problems.append(
            f"{what}: rc={outcome.returncode} stdout={outcome.stdout!r} stderr={outcome.stderr!r}"
        )


# A smoke test gets an unpacked root filesystem and the image's PATH; it returns problems.
SmokeTest = Callable[[Path, str], list[str]]


_WAIT_HTTP = """
ip link set lo up
{start} 2>/tmp/server.log &
i=0
while [ $i -lt 100 ]; do
    wget -q -O /tmp/page http://127.0.0.1:{port}/ && break
    i=$((i + 1)); sleep 0.1
done
cat /tmp/page
"""


def smoke_busybox(rootfs: Path, path: str) -> list[str]:
    problems: list[str] = []
    out = in_sandbox(rootfs, ["/bin/sh", "-c", "echo hi; id; ls /"], path)
    expect(
        problems,
        out.returncode == 0 and "hi\n" in out.stdout and "uid=0(root) gid=0(root)" in out.stdout,
        "sh -c 'echo hi; id; ls /'",
        out,
    )
    # critest "runtime should support MaskedPaths": /bin/ls masked, `sh -c ls` must really exec it.
    out = in_sandbox(rootfs, ["/bin/sh", "-c", "ls"], path, masks=("/bin/ls",))
    expect(
        problems,
        out.returncode != 0 and out.stderr == "/bin/sh: ls: Permission denied\n",
        "masked /bin/ls",
        out,
    )
    out = in_sandbox(rootfs, ["sh", "-c", "pgrep sleep || true"], path)
    expect(
        problems,
        out.returncode == 0 and out.stdout == "" and out.stderr == "",
        "pgrep sleep || true",
        out,
    )
    out = in_sandbox(rootfs, ["sh", "-c", "sleep 30 & sleep 0.2; pgrep sleep"], path)
    expect(problems, out.returncode == 0 and out.stdout.strip().isdigit(), "pgrep finds sleep", out)
    out = in_sandbox(rootfs, ["ipcs", "-m"], path)
    expect(problems, out.returncode == 0 and "Shared Memory" in out.stdout, "ipcs -m", out)
    out = in_sandbox(rootfs, ["id", "-nu"], path, userspec="65534:65534")
    expect(problems, out.stdout == "nobody\n", "id -nu as 65534 (RunAsUserName nobody)", out)
    out = in_sandbox(rootfs, ["sh", "-c", "echo $(id -u):$(id -g)"], path, userspec="1001:1002")
    expect(problems, out.stdout == "1001:1002\n", "RunAsUser/RunAsGroup 1001:1002", out)
    # critest "runtime should support ReadonlyPaths" compares busybox's exact message.
    out = in_sandbox(rootfs, ["touch", "/tmp/test"], path, readonly=("/tmp",))
    expect(
        problems,
        out.stderr == "touch: /tmp/test: Read-only file system\n",
        "touch in read-only /tmp",
        out,
    )
    return problems


def smoke_nginx(port: int, start: str) -> SmokeTest:
    def test(rootfs: Path, path: str) -> list[str]:
        problems: list[str] = []
        out = in_sandbox(rootfs, ["nginx", "-t"], path)
        expect(problems, out.returncode == 0 and "syntax is ok" in out.stderr, "nginx -t", out)
        script = _WAIT_HTTP.format(start=start, port=port) + (
            "pid=$(cat /var/run/nginx.pid)\n"
            'echo "pid=$pid pidof=$(pidof nginx)"\n'
            'echo "cmdline=$(tr "\\0" " " < /proc/$pid/cmdline)"\n'
        )
        out = in_sandbox(rootfs, ["/bin/sh", "-c", script], path)
        expect(problems, "Welcome to nginx!" in out.stdout, f"GET http://127.0.0.1:{port}/", out)
        expect(problems, "cmdline=nginx: master process" in out.stdout, "master process title", out)
        pid_line = next((line for line in out.stdout.splitlines() if line.startswith("pid=")), "")
        pid, _, pidof = pid_line.removeprefix("pid=").partition(" pidof=")
        expect(
            problems,
            bool(pid) and pid in pidof.split(),
            "pidof nginx lists /var/run/nginx.pid",
            out,
        )
        return problems

    return test


def smoke_httpd(rootfs: Path, path: str) -> list[str]:
    problems: list[str] = []
    script = _WAIT_HTTP.format(start="httpd-foreground", port=80) + "cat /tmp/server.log\n"
    out = in_sandbox(rootfs, ["/bin/sh", "-c", script], path)
    expect(problems, "It works!" in out.stdout, "GET http://127.0.0.1:80/", out)
    expect(
        problems, "httpd" in out.stdout.split("It works!", 1)[-1], "httpd's log mentions httpd", out
    )
    out = in_sandbox(rootfs, ["echo", "httpd"], path)
    expect(problems, out.stdout == "httpd\n", "echo httpd", out)
    return problems


def smoke_nonewprivs(rootfs: Path, path: str) -> list[str]:
    problems: list[str] = []
    out = in_sandbox(rootfs, ["nnp"], path, userspec="1000:1000")
    expect(problems, out.stdout == "Effective uid: 0\n", "nnp as uid 1000", out)
    out = in_sandbox(rootfs, ["setpriv", "--nnp", "nnp"], path, userspec="1000:1000")
    expect(
        problems, out.stdout == "Effective uid: 1000\n", "nnp as uid 1000 with no_new_privs", out
    )
    return problems


def smoke_predefined_group(rootfs: Path, path: str) -> list[str]:
    problems: list[str] = []
    out = in_sandbox(rootfs, ["id", "default-user"], path)
    wanted = (
        "uid=1000(default-user) gid=1000(default-user)"
        " groups=1000(default-user),50000(group-defined-in-image)\n"
    )
    expect(problems, out.stdout == wanted, "id default-user", out)
    return problems


def smoke_pause(rootfs: Path, path: str) -> list[str]:
    """/pause -P must keep running, then exit promptly on SIGTERM (what StopPodSandbox sends)."""
    problems: list[str] = []
    process = subprocess.Popen(
        ["chroot", "--userspec=65535:65535", str(rootfs), "/pause", "-P"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={"PATH": path},
    )
    try:
        time.sleep(0.5)
        if process.poll() is not None:
            problems.append(f"/pause -P exited by itself: {process.communicate()}")
            return problems
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            problems.append("/pause -P ignored SIGTERM for 5s")
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        if process.stdout:
            process.stdout.close()
        if process.stderr:
            process.stderr.close()
    return problems


def expect_millisecond_clock(problems: list[str], rootfs: Path, path: str) -> None:
    """The Containers Lifecycle specs' timestamps, in busybox and in agnhost (whose alpine
    busybox has nmeter: the specs that swap a container's image run the same command)."""
    out = in_sandbox(rootfs, ["sh", "-c", "date -u +%FT$(nmeter -d0 '%3t' | head -n1)Z"], path)
    stamp = out.stdout.strip()
    expect(
        problems,
        out.returncode == 0 and len(stamp) == 24 and stamp[19] == "." and stamp[20:23].isdigit(),
        "date -u +%FT$(nmeter -d0 '%3t' | head -n1)Z gives 2006-01-02T15:04:05.000Z",
        out,
    )


def smoke_node_e2e_busybox(rootfs: Path, path: str) -> list[str]:
    """busybox built from source: critest's checks still hold, `nmeter` gives the
    millisecond clock the Containers Lifecycle specs build their timestamps from, and the
    shell passes on environment entries that are not shell names."""
    problems = smoke_busybox(rootfs, path)
    expect_millisecond_clock(problems, rootfs, path)
    # kubelet passes a ConfigMap's keys as they are; upstream's ash hands on the ones that
    # are not shell names too.
    out = in_sandbox(rootfs, ["env", "data-1=value-1", "sh", "-c", "env"], path)
    expect(problems, "data-1=value-1" in out.stdout.splitlines(), "sh passes data-1= on", out)
    return problems


_AGNHOST_HTTPS = """
ip link set lo up
/agnhost netexec --http-port 8443 --tls-cert-file /localhost.crt \
    --tls-private-key-file /localhost.key 2>/tmp/netexec.log &
i=0
while [ $i -lt 100 ]; do
    curl -sk 'https://127.0.0.1:8443/echo?msg=poststart' && break
    i=$((i + 1)); sleep 0.1
done
"""


def smoke_agnhost(rootfs: Path, path: str) -> list[str]:
    """What the node e2e specs run in agnhost besides its subcommands."""
    problems: list[str] = []
    out = in_sandbox(rootfs, ["/agnhost-2", "entrypoint-tester", "override", "arguments"], path)
    expect(
        problems,
        out.stdout == "[/agnhost-2 entrypoint-tester override arguments]\n",
        "/agnhost-2 entrypoint-tester",
        out,
    )
    out = in_sandbox(rootfs, ["/bin/bash", "-c", "echo ${BASH_VERSION%%.*}"], path)
    expect(problems, out.returncode == 0 and out.stdout.strip().isdigit(), "/bin/bash -c", out)
    expect_millisecond_clock(problems, rootfs, path)
    # Lifecycle-hook and HTTPS probe specs: netexec serves TLS with the image's pair; curl.
    out = in_sandbox(rootfs, ["/bin/sh", "-c", _AGNHOST_HTTPS], path)
    expect(problems, out.stdout == "poststart", "netexec over TLS, fetched with curl", out)
    out = in_sandbox(rootfs, ["sh", "-c", "nc -h 2>&1 | head -n1; dig -v 2>&1; nslookup -h"], path)
    expect(problems, "OpenBSD netcat" in out.stdout and "DiG" in out.stdout, "nc, dig", out)
    out = in_sandbox(rootfs, ["id", "user-defined-in-image"], path)
    wanted = (
        "uid=1000(user-defined-in-image) gid=1000(user-defined-in-image)"
        " groups=1000(user-defined-in-image),50000(group-defined-in-image)\n"
    )
    expect(problems, out.stdout == wanted, "id user-defined-in-image", out)
    return problems


_HOSTNAME_FQDN = """
echo "10.1.2.3 $(hostname).sub.ns.svc.cluster.local $(hostname)" >/etc/hosts
echo $(hostname)';'$(hostname -f)';'
"""


def smoke_glibc_dns_testing(rootfs: Path, path: str) -> list[str]:
    """The hostname FQDN specs: `hostname -f` resolves the name through /etc/hosts (which
    kubelet writes with the pod's FQDN first)."""
    problems: list[str] = []
    out = in_sandbox(rootfs, ["sh", "-c", _HOSTNAME_FQDN], path)
    short, _, rest = out.stdout.partition(";")
    expect(
        problems,
        rest == f"{short}.sub.ns.svc.cluster.local;\n",
        "hostname -f from /etc/hosts",
        out,
    )
    out = in_sandbox(rootfs, ["dig", "-v"], path)
    expect(problems, "DiG" in out.stderr, "dig -v", out)
    return problems


def smoke_test_image(rootfs: Path, path: str) -> list[str]:
    problems: list[str] = []
    out = in_sandbox(rootfs, ["ls", "/test-image-1"], path)
    expect(problems, out.returncode == 0, "ls /test-image-1", out)
    return problems


SMOKE_TESTS: dict[str, SmokeTest] = {
    "registry.k8s.io/e2e-test-images/busybox:1.29-2": smoke_busybox,
    "registry.k8s.io/e2e-test-images/nginx:1.14-2": smoke_nginx(80, "nginx -g 'daemon off;'"),
    "gcr.io/k8s-staging-cri-tools/hostnet-nginx-amd64:latest": smoke_nginx(
        12003, "/docker-entrypoint.sh nginx -g 'daemon off;'"
    ),
    "registry.k8s.io/e2e-test-images/httpd:2.4.39-4": smoke_httpd,
    "registry.k8s.io/e2e-test-images/nonewprivs:1.3": smoke_nonewprivs,
    "registry.k8s.io/e2e-test-images/busybox:1.37.0-2": smoke_node_e2e_busybox,
    "registry.k8s.io/e2e-test-images/agnhost:2.66.1": smoke_agnhost,
    "registry.k8s.io/e2e-test-images/nonewprivs:1.4": smoke_nonewprivs,
    "registry.k8s.io/e2e-test-images/glibc-dns-testing:2.1.1": smoke_glibc_dns_testing,
    "gcr.io/k8s-staging-cri-tools/test-image-predefined-group:latest": smoke_predefined_group,
    "registry.k8s.io/pause:3.10.2": smoke_pause,
    "gcr.io/k8s-staging-cri-tools/test-image-1:latest": smoke_test_image,
}


def pull_and_unpack(ref: Reference, scratch: Path, name: str) -> Path:
    """The image's root filesystem, fetched from the lab registry as a runtime would (skopeo
    picks this machine's platform out of an index) and unpacked by umoci; returns the bundle."""
    oci = scratch / "oci"
    bundle = scratch / name
    source = f"docker://{ref.lab()}"
    run(["skopeo", "copy", "--quiet", "--src-tls-verify=false", source, f"oci:{oci}:{name}"])
    run(["umoci", "unpack", "--image", f"{oci}:{name}", str(bundle)])
    return bundle


def image_path(recipe: ImageRecipe) -> str:
    """The PATH the image's config sets: what a runtime resolves a bare command name with."""
    for item in recipe.config.get("Env", []):
        if item.startswith("PATH="):
            return str(item.removeprefix("PATH="))
    return "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def smoke(catalog: Catalog, only: str | None) -> int:
    """Run SMOKE_TESTS (those whose reference contains only); 1 when any failed."""
    if os.geteuid() != 0:
        raise BuildError("--smoke needs root (unshare, mount, chroot)")
    recipes = {str(ref): recipe for recipe in catalog.images for ref in recipe.refs}
    ran = failed = 0
    with tempfile.TemporaryDirectory(prefix="cri-py-lab-smoke-") as scratch:
        for number, (text, test) in enumerate(SMOKE_TESTS.items()):
            if only is not None and only not in text:
                continue
            bundle = pull_and_unpack(Reference.parse(text), Path(scratch), f"smoke-{number}")
            problems = test(bundle / "rootfs", image_path(recipes[text]))
            shutil.rmtree(bundle)
            ran += 1
            failed += bool(problems)
            print(("FAIL " if problems else "ok   ") + text)
            for problem in problems:
                print(f"     {problem}")
    print(f"{ran - failed} of {ran} smoke tests passed")
    return 1 if failed else 0
