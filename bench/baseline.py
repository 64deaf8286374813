"""containerd as a baseline: its config file and a CNI bridge conflist of its own, written the
same way for `make bench COMPARE=containerd` (bench/runtimes.py) and for
`make e2e-node RUNTIME=containerd` (e2e/node_e2e.sh, through the command line below).

What every baseline containerd here gets, whoever starts it:
- its own root and state dirs and socket (never /var/lib/containerd, /run/containerd's socket);
- the lab registry (`make registry`) as mirror of the hosts it holds images for, as
  e2e/lab-config.yaml does for cri-py: repositories there are `<host>/<repo>`;
- cgroupfs (SystemdCgroup = false: PID 1 is not systemd), runc from Debian, shims in a cgroup of
  the caller's choosing;
- restrict_oom_score_adj = true: root here lacks CAP_SYS_RESOURCE, and without it every
  sandbox fails to start (a negative oom_score_adj is refused);
- no SELinux, no AppArmor (neither is enabled on these hosts).

Stdlib only. Usage:
  baseline.py containerd-config --root DIR --state DIR --socket PATH --cni-conf-dir DIR \
      --shim-cgroup /CGROUP [--sandbox-image IMAGE] [--log-level LEVEL]
  baseline.py cni-conflist --name NAME --bridge IFNAME --subnet CIDR --ipam-dir DIR
Each prints the file on stdout.
  baseline.py install        apt-get install bench/apt-packages.txt when containerd or runc
                             is missing (no service is started: PID 1 is not systemd, and the
                             package has no init script)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

REGISTRY = "http://127.0.0.1:5000"
# Hosts the lab registry mirrors (see e2e/lab-config.yaml): pushed as 127.0.0.1:5000/<host>/<repo>.
MIRRORED_HOSTS = ("registry.k8s.io", "gcr.io", "k8s.gcr.io", "docker.io", "quay.io")
PAUSE_IMAGE = "registry.k8s.io/pause:3.10"
CNI_BIN_DIR = "/usr/lib/cni"  # Debian's containernetworking-plugins
RUNC = "/usr/sbin/runc"  # Debian's runc


def install_apt_packages() -> None:
    """Debian's containerd and runc, from bench/apt-packages.txt (no service is started: the
    callers run their own containerd with their own config)."""
    listing = Path(__file__).resolve().parent / "apt-packages.txt"
    names = [
        line.strip()
        for line in listing.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", *names], check=True, env=env)


def installed() -> bool:
    return shutil.which("containerd") is not None and Path(RUNC).exists()


def cni_conflist(name: str, bridge: str, subnet: str, ipam_dir: str) -> dict[str, object]:
    """The bridge plugin on `bridge` with host-local IPAM in `subnet` (its leases in
    `ipam_dir`), no masquerade and no portmap: no iptables rule is added to the host."""
    return {
        "cniVersion": "1.0.0",
        "name": name,
        "plugins": [
            {
                "type": "bridge",
                "bridge": bridge,
                "isGateway": True,
                "ipMasq": False,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": subnet}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": ipam_dir,
                },
            }
        ],
    }


def containerd_config(
    *,
    root: str,
    state: str,
    socket: str,
    cni_conf_dir: str,
    shim_cgroup: str,
    sandbox_image: str = PAUSE_IMAGE,
    log_level: str = "warn",
) -> str:
    """containerd 1.6's config.toml (version 2) for a baseline run."""
    cri = 'plugins."io.containerd.grpc.v1.cri"'
    mirrors = "".join(
        f'[{cri}.registry.mirrors."{host}"]\n  endpoint = ["{REGISTRY}/v2/{host}"]\n'
        for host in MIRRORED_HOSTS
    )
    return f"""version = 2
root = "{root}"
state = "{state}"
oom_score = 0

[grpc]
  address = "{socket}"
[ttrpc]
  address = "{socket}.ttrpc"
[debug]
  level = "{log_level}"
[metrics]
  address = ""

# Its default is /opt/containerd, on the host.
[plugins."io.containerd.internal.v1.opt"]
  path = "{root}/opt"

[{cri}]
  sandbox_image = "{sandbox_image}"
  # The machine lacks CAP_SYS_RESOURCE: without this, sandboxes fail to start.
  restrict_oom_score_adj = true
  enable_selinux = false
  disable_apparmor = true
[{cri}.containerd]
  snapshotter = "overlayfs"
  default_runtime_name = "runc"
[{cri}.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"
[{cri}.containerd.runtimes.runc.options]
  SystemdCgroup = false
  BinaryName = "{RUNC}"
  # Shims in a cgroup of their own: otherwise runc resolves container cgroups relative to
  # the caller's cgroup.
  ShimCgroup = "{shim_cgroup}"
[{cri}.cni]
  bin_dir = "{CNI_BIN_DIR}"
  conf_dir = "{cni_conf_dir}"
  max_conf_num = 1
{mirrors}"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    config = sub.add_parser("containerd-config", help="print containerd's config.toml")
    for flag in ("--root", "--state", "--socket", "--cni-conf-dir", "--shim-cgroup"):
        config.add_argument(flag, required=True)
    config.add_argument("--sandbox-image", default=PAUSE_IMAGE)
    config.add_argument("--log-level", default="warn")
    conflist = sub.add_parser("cni-conflist", help="print the CNI conflist (JSON)")
    for flag in ("--name", "--bridge", "--subnet", "--ipam-dir"):
        conflist.add_argument(flag, required=True)
    sub.add_parser("install", help="install containerd and runc from Debian when missing")
    args = parser.parse_args(argv)
    if args.command == "install":
        if not installed():
            install_apt_packages()
        return 0
    if args.command == "containerd-config":
        sys.stdout.write(
            containerd_config(
                root=args.root,
                state=args.state,
                socket=args.socket,
                cni_conf_dir=args.cni_conf_dir,
                shim_cgroup=args.shim_cgroup,
                sandbox_image=args.sandbox_image,
                log_level=args.log_level,
            )
        )
    else:
        conf = cni_conflist(args.name, args.bridge, args.subnet, args.ipam_dir)
        sys.stdout.write(json.dumps(conf, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
