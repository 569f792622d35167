"""Where sshd listens, read from the host itself (not from the inventory).

Prints one JSON object. Run as root so /proc shows every process's sockets and sshd -T can
read the host keys. Sources, all reported:
- the kernel's listening TCP sockets (/proc/net/tcp, tcp6) owned by an sshd process, or by
  systemd when ssh.socket is active (socket activation);
- ssh.socket's Listen= addresses when the socket unit is active;
- `sshd -T`: its listenaddress lines carry the real ports (its `port` line does not, when
  ListenAddress has a port of its own);
- SSH_CONNECTION of the session this command runs in (read from the first ancestor process
  that has it, since sudo drops it): the server-side port the play is connected on.
"""

import ipaddress
import json
import os
import re
import subprocess
import sys

SOCKET_UNIT = sys.argv[1] if len(sys.argv) > 1 else "ssh.socket"
SERVICE_UNIT = sys.argv[2] if len(sys.argv) > 2 else "ssh"
CONFIG = sys.argv[3] if len(sys.argv) > 3 else "/etc/ssh/sshd_config"


def read(path, binary=False):
    with open(path, "rb" if binary else "r", **({} if binary else {"encoding": "utf-8"})) as f:
        return f.read()


def run(*argv):
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.SubprocessError):
        return 1, ""
    return done.returncode, done.stdout


def split_endpoint(text):
    """'0.0.0.0:22', '[::]:22', '*:22', '22' -> (address, port)."""
    text = text.strip()
    match = re.match(r"^(?:\[?(?P<addr>[^\]]*?)\]?:)?(?P<port>\d+)$", text)
    if not match:
        return None
    return (match.group("addr") or "*"), int(match.group("port"))


def kernel_listeners():
    """(address, port, inode) for every listening TCP socket."""
    found = []
    for name, v6 in (("/proc/net/tcp", False), ("/proc/net/tcp6", True)):
        try:
            lines = read(name).splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 10 or fields[3] != "0A":  # 0A: LISTEN
                continue
            addr_hex, port_hex = fields[1].split(":")
            port = int(port_hex, 16)
            if v6:
                raw = bytes.fromhex(addr_hex)
                words = [raw[i:i + 4][::-1] for i in range(0, 16, 4)]
                address = str(ipaddress.IPv6Address(b"".join(words)))
            else:
                address = ".".join(str(b) for b in bytes.fromhex(addr_hex)[::-1])
            found.append((address, port, fields[9]))
    return found


def socket_owners():
    """inode -> set of process names holding it."""
    owners = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            comm = read(f"/proc/{pid}/comm").strip()
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                owners.setdefault(target[8:-1], set()).add(comm)
    return owners


def ssh_connection():
    pid = os.getpid()
    while pid > 1:
        try:
            environ = read(f"/proc/{pid}/environ", binary=True).split(b"\0")
            status = read(f"/proc/{pid}/status")
        except OSError:
            return None
        for item in environ:
            if item.startswith(b"SSH_CONNECTION="):
                parts = item[15:].decode().split()
                if len(parts) == 4:
                    return {"client": parts[0], "server": parts[2], "port": int(parts[3])}
        ppid = re.search(r"^PPid:\s*(\d+)", status, re.M)
        pid = int(ppid.group(1)) if ppid else 1
    return None


def login_user():
    return os.environ.get("SUDO_USER") or run("id", "-un")[1].strip()


def main():
    unit = {}
    for name, prefix in ((SOCKET_UNIT, "socket"), (SERVICE_UNIT, "service")):
        _, out = run("systemctl", "show", name, "--property=ActiveState", "--property=Listen")
        unit[prefix + "_active"] = "ActiveState=active" in out.splitlines()
        unit[prefix + "_listen"] = re.findall(r"(?m)^Listen=(\S+) \(Stream\)$", out)

    endpoints = []  # {address, port, source}
    rc, sshd_t = run("/usr/sbin/sshd", "-T")
    config_ports = []
    for line in sshd_t.splitlines():
        key, _, value = line.partition(" ")
        if key == "listenaddress":
            parsed = split_endpoint(value)
            if parsed:
                config_ports.append(parsed[1])
                endpoints.append({"address": parsed[0], "port": parsed[1], "source": "sshd -T"})
    socket_ports = []
    if unit["socket_active"]:
        for listen in unit["socket_listen"]:
            parsed = split_endpoint(listen)
            if parsed:
                socket_ports.append(parsed[1])
                endpoints.append({"address": parsed[0], "port": parsed[1], "source": SOCKET_UNIT})
    owners = socket_owners()
    kernel_ports = []
    for address, port, inode in kernel_listeners():
        names = owners.get(inode, set())
        if "sshd" in names or (unit["socket_active"] and "systemd" in names
                               and port in socket_ports):
            kernel_ports.append(port)
            endpoints.append({"address": address, "port": port, "source": "kernel"})
    connection = ssh_connection()
    # What really accepts connections now: the kernel's view, plus the socket unit.
    listen_ports = sorted(set(kernel_ports) | set(socket_ports))
    # Main-file Port/ListenAddress lines (before any Match block), kept when no port is asked.
    kept = []
    try:
        for line in read(CONFIG).splitlines():
            words = line.strip().replace("=", " ", 1).split()
            if not words or words[0].startswith("#"):
                continue
            if words[0].lower() == "match":
                break
            if words[0].lower() in ("port", "listenaddress") and len(words) > 1:
                kept.append({"keyword": "Port" if words[0].lower() == "port" else "ListenAddress",
                             "value": words[1]})
    except OSError:
        pass
    print(json.dumps({
        **unit,
        "sshd_t_ok": rc == 0,
        "config_ports": sorted(set(config_ports)),
        "socket_ports": sorted(set(socket_ports)),
        "kernel_ports": sorted(set(kernel_ports)),
        "listen_ports": listen_ports,
        "endpoints": endpoints,
        "connection": connection,
        "login_user": login_user(),
        "main_file_listen_lines": kept,
    }))


main()
