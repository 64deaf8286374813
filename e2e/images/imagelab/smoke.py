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


def run_for(
    rootfs: Path, argv: list[str], env_path: str, seconds: float, *, userspec: str = ""
) -> Outcome:
    """Run a server in the sandbox for a few seconds, then kill it; its output so far. The
    whole process group is killed: --kill-child's parent-death signal does not survive
    chroot --userspec's change of user, so the server would outlive unshare."""
    for directory in ("proc", "dev"):
        (rootfs / directory).mkdir(exist_ok=True)
    command = [
        "unshare", "--mount", "--net", "--pid", "--fork", "--kill-child",
        f"--mount-proc={rootfs}/proc",
        "sh", "-c", _SANDBOX, "sandbox", str(rootfs), userspec, "", "", *argv,
    ]  # fmt: skip
    process = subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={"PATH": env_path, "HOME": "/root", "LANG": "C"},
        start_new_session=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=seconds)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        return Outcome(-9, stdout, stderr)
    return Outcome(process.returncode, stdout, stderr)


def smoke_version(argv: list[str], wanted: str) -> SmokeTest:
    """The image's program, found through the image's PATH, answers argv (its --version)
    with wanted in its output."""

    def test(rootfs: Path, path: str) -> list[str]:
        problems: list[str] = []
        out = in_sandbox(rootfs, argv, path)
        both = out.stdout + out.stderr
        expect(problems, out.returncode == 0 and wanted in both, " ".join(argv), out)
        return problems

    return test


_NETFILTER = """
iptables --version
iptables -w -t nat -N KUBE-TEST
iptables -w -t nat -A KUBE-TEST -s 10.0.0.0/8 -j MASQUERADE
iptables-save -t nat
readlink /usr/sbin/iptables
ip6tables -w -t nat -S
iptables-legacy --version
conntrack --version
ipset version
nft --version
ip -V
"""


def smoke_kube_proxy(rootfs: Path, path: str) -> list[str]:
    """kube-proxy's version and the tools it execs: the iptables wrapper picks a backend in a
    fresh network namespace (no rules anywhere: nft), the rule loaded through it is there."""
    problems = smoke_version(["kube-proxy", "--version"], "Kubernetes v1.37.2")(rootfs, path)
    out = in_sandbox(rootfs, ["sh", "-ec", _NETFILTER], path)
    wanted = [
        "(nf_tables)",
        "-A KUBE-TEST -s 10.0.0.0/8 -j MASQUERADE",
        "xtables-nft-multi",
        "(legacy)",
        "conntrack v",
        "ipset v",
        "nftables v",
        "ip utility",
    ]
    missing = [text for text in wanted if text not in out.stdout + out.stderr]
    expect(
        problems, out.returncode == 0 and not missing, f"netfilter tools, missing {missing}", out
    )
    return problems


def smoke_etcd(rootfs: Path, path: str) -> list[str]:
    problems = smoke_version(["etcd", "--version"], "etcd Version: 3.7.0")(rootfs, path)
    problems += smoke_version(["etcdctl", "version"], "etcdctl version: 3.7.0")(rootfs, path)
    return problems


def smoke_coredns(rootfs: Path, path: str) -> list[str]:
    """As the image's user (65532), /coredns binds port 53: the file capability works."""
    problems = smoke_version(["/coredns", "-version"], "CoreDNS-1.14.6")(rootfs, path)
    (rootfs / "tmp" / "Corefile").write_text(".:53 {\n    whoami\n}\n")
    out = run_for(rootfs, ["/coredns", "-conf", "/tmp/Corefile"], path, 3, userspec="65532:65532")
    expect(
        problems,
        ".:53" in out.stdout and "permission denied" not in out.stdout + out.stderr,
        "coredns as 65532 serves .:53",
        out,
    )
    return problems


# kindnet's own functions, run by the image's python against its ip and iptables.
_KINDNET_SYNC = """
import ipaddress, sys
from pathlib import Path
sys.path.insert(0, "/")
import kindnet
net = ipaddress.ip_network
route = kindnet.Route(net("10.244.1.0/24"), ipaddress.ip_address("172.18.0.3"))
kindnet.sync_routes({route})
kindnet.sync_masquerade([net("10.244.0.0/16")])
kindnet.sync_masquerade([net("10.244.0.0/16")])
conf = kindnet.cni_config([net("10.244.0.0/24")], 1500)
kindnet.write_if_changed(Path("/tmp/cni/10-kindnet.conflist"), kindnet.render_config(conf))
"""

_KINDNET = """
ip link set lo up
ip link add kn0 type veth peer name kn1
ip link set kn1 up
ip addr add 172.18.0.2/16 dev kn0
ip link set kn0 up
python3 -c "$1"
ip route show proto 75
iptables-save -t nat
cat /tmp/cni/10-kindnet.conflist
python3 -c 'import sys; sys.path.insert(0, "/"); import kindnet; kindnet.sync_routes(set())'
echo "after: $(ip route show proto 75)."
"""


def smoke_kindnet(rootfs: Path, path: str) -> list[str]:
    """kindnet's side effects with the image's python, ip and iptables in a fresh network
    namespace: its route, its masquerade chain (one jump, though synced twice), its CNI
    config; then the route removed when no node wants it any more."""
    problems: list[str] = []
    out = in_sandbox(rootfs, ["sh", "-ec", _KINDNET, "kindnet", _KINDNET_SYNC], path)
    text = out.stdout
    expect(problems, "10.244.1.0/24 via 172.18.0.3 dev kn0" in text, "route (proto 75)", out)
    expect(
        problems,
        "-A CRI-PY-KINDNET-MASQ -s 10.244.0.0/16 -j MASQUERADE" in text
        and text.count("-j CRI-PY-KINDNET-MASQ") == 1,
        "masquerade chain and one jump",
        out,
    )
    expect(problems, '"subnet": "10.244.0.0/24"' in text, "CNI config", out)
    expect(problems, "after: ." in text, "route removed", out)
    out = in_sandbox(rootfs, ["python3", "/kindnet.py"], path)
    expect(problems, out.returncode == 2 and "NODE_NAME" in out.stderr, "kindnet without env", out)
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
    # kind-catalog.toml
    "registry.k8s.io/kube-apiserver:v1.37.2": smoke_version(
        ["kube-apiserver", "--version"], "Kubernetes v1.37.2"
    ),
    "registry.k8s.io/kube-controller-manager:v1.37.2": smoke_version(
        ["kube-controller-manager", "--version"], "Kubernetes v1.37.2"
    ),
    "registry.k8s.io/kube-scheduler:v1.37.2": smoke_version(
        ["kube-scheduler", "--version"], "Kubernetes v1.37.2"
    ),
    "registry.k8s.io/kube-proxy:v1.37.2": smoke_kube_proxy,
    "registry.k8s.io/etcd:3.7.0-0": smoke_etcd,
    "registry.k8s.io/coredns/coredns:v1.14.6": smoke_coredns,
    "docker.io/cri-py-lab/kindnet:v1": smoke_kindnet,
    "docker.io/rancher/local-path-provisioner:v0.0.30": smoke_version(
        ["local-path-provisioner", "--version"], "v0.0.30"
    ),
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
            # SMOKE_TESTS covers every catalog (catalog.toml, kind-catalog.toml).
            if text not in recipes or (only is not None and only not in text):
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
