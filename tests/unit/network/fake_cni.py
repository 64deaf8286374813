"""A fake CNI plugin for tests: an executable Python script that appends what it got (command,
stdin config, CNI_ environment) as one JSON line to the file named by its config's `log` key.

Its config steers it: `"on": {"ADD": "hang" | "fail" | "fail3" | "failonce", "DEL": ...}`
("failonce": the first such call fails, the next ones succeed); on ADD it answers
its `prevResult` (or an empty result) with its `ip` key, if any, appended to `ips`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

SCRIPT = """\
#!{python}
import json, os, sys, time
config = json.load(sys.stdin)
command = os.environ["CNI_COMMAND"]
record = {{
    "command": command,
    "type": config["type"],
    "stdin": config,
    "env": {{k: v for k, v in os.environ.items() if k.startswith("CNI_")}},
}}
with open(config["log"], "a") as log:
    log.write(json.dumps(record) + "\\n")
behaviour = config.get("on", {{}}).get(command, "ok")
if behaviour == "failonce":
    marker = f"{{config['log']}}.{{command}}.failed"
    behaviour = "ok" if os.path.exists(marker) else "fail"
    open(marker, "a").close()
if behaviour == "hang":
    time.sleep(600)
if behaviour.startswith("fail"):
    code = int(behaviour[4:] or 7)
    print(json.dumps({{"cniVersion": config["cniVersion"], "code": code, "msg": "fake failure"}}))
    sys.exit(1)
if command == "ADD":
    result = config.get("prevResult") or {{"cniVersion": config["cniVersion"], "ips": []}}
    if "ip" in config:
        result["ips"].append({{"address": config["ip"]}})
    print(json.dumps(result))
"""


def install_fake_plugins(bin_dir: Path, *names: str) -> None:
    """The fake plugin under each of `names` in `bin_dir`."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    for name in names:
        path = bin_dir / name
        path.write_text(SCRIPT.format(python=sys.executable))
        path.chmod(0o755)


def calls(log: Path) -> list[dict[str, Any]]:
    """What the fake plugins recorded, in the order they ran."""
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text().splitlines()]
