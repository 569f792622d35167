"""Docker's containers as its data directory records them: works while the daemon hangs.

Argument: the daemon.json path. Prints a JSON list of {id, name, running, restart_policy}
read from <data-root>/containers/*/config.v2.json and hostconfig.json (data-root from
daemon.json, else /var/lib/docker).
"""

import glob
import json
import os
import sys

root = "/var/lib/docker"
try:
    with open(sys.argv[1], encoding="utf-8") as handle:
        root = json.load(handle).get("data-root") or root
except (OSError, ValueError, IndexError):
    pass
found = []
for config_path in sorted(glob.glob(os.path.join(root, "containers", "*", "config.v2.json"))):
    directory = os.path.dirname(config_path)
    try:
        with open(config_path, encoding="utf-8") as handle:
            config = json.load(handle)
        with open(os.path.join(directory, "hostconfig.json"), encoding="utf-8") as handle:
            host_config = json.load(handle)
    except (OSError, ValueError):
        continue
    state = config.get("State") or {}
    found.append({
        "id": config.get("ID", os.path.basename(directory))[:12],
        "name": (config.get("Name") or "").lstrip("/"),
        "running": bool(state.get("Running")) and not state.get("Paused"),
        "restart_policy": ((host_config.get("RestartPolicy") or {}).get("Name") or "no"),
    })
print(json.dumps(found))
