"""The effective password settings of an sshd configuration, per kind of user.

Arguments: CONFIG EXPECT USER[,USER...] ADDR[,ADDR...] LPORT[,LPORT...]. For every user,
client address and local port, `sshd -T -f CONFIG -C user=...,host=...,addr=...,lport=...`
gives the settings sshd would apply to that login (Match blocks included). Prints JSON:
the per-class answers, the ones that differ from EXPECT ("yes"/"no"), and the drop-in files
whose Match blocks turn password or keyboard-interactive logins on (named so an operator
knows which file to fix). Exit status 0 whatever the answer: the play decides.
"""

import glob
import json
import re
import subprocess
import sys

CONFIG, EXPECT = sys.argv[1], sys.argv[2]
USERS = [u for u in sys.argv[3].split(",") if u]
ADDRS = [a for a in sys.argv[4].split(",") if a]
LPORTS = [p for p in sys.argv[5].split(",") if p]
WATCHED = ("passwordauthentication", "kbdinteractiveauthentication",
           "challengeresponseauthentication")


def read(path):
    with open(path, encoding="utf-8") as handle:
        return handle.read()


def include_globs(path):
    found = []
    try:
        for line in read(path).splitlines():
            words = line.split()
            if len(words) > 1 and words[0].lower() == "include":
                for pattern in words[1:]:
                    found.append(pattern if pattern.startswith("/") else "/etc/ssh/" + pattern)
    except OSError:
        pass
    return found


def offending_files():
    """Drop-ins with a Match block that sets a password keyword to yes."""
    bad = []
    for pattern in include_globs(CONFIG):
        for path in sorted(glob.glob(pattern)):
            in_match = False
            try:
                lines = read(path).splitlines()
            except OSError:
                continue
            for line in lines:
                words = re.split(r"[\s=]+", line.strip(), maxsplit=1)
                if not words[0] or words[0].startswith("#"):
                    continue
                keyword = words[0].lower()
                value = words[1].strip().lower() if len(words) > 1 else ""
                if keyword == "match":
                    in_match = True
                elif in_match and keyword in WATCHED and value == "yes" and EXPECT == "no":
                    bad.append(path)
                    break
    return bad


def main():
    classes, wrong = [], []
    for user in USERS:
        for addr in ADDRS:
            for lport in LPORTS:
                spec = f"user={user},host=client.invalid,addr={addr},lport={lport}"
                done = subprocess.run(["/usr/sbin/sshd", "-T", "-f", CONFIG, "-C", spec],
                                      capture_output=True, text=True, timeout=30, check=False)
                settings = dict(line.partition(" ")[::2] for line in done.stdout.splitlines())
                answer = {"user": user, "addr": addr, "lport": int(lport),
                          "passwordauthentication": settings.get("passwordauthentication", "?"),
                          "kbdinteractiveauthentication":
                              settings.get("kbdinteractiveauthentication", "?"),
                          "error": done.stderr.strip()[-300:] if done.returncode else ""}
                classes.append(answer)
                if done.returncode or answer["passwordauthentication"] != EXPECT \
                        or answer["kbdinteractiveauthentication"] != EXPECT:
                    wrong.append(answer)
    print(json.dumps({"classes": classes, "wrong": wrong, "offending_files": offending_files()}))


main()
