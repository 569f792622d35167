"""Validating public keys and the remote script that installs them in authorized_keys.

A key is checked before anything touches a server: one line, a known key type, a base64
body whose embedded type matches, no options (``command=``, ``from=``...). Error messages
describe the problem without repeating the value.
"""

from __future__ import annotations

import base64
import binascii
import re
import struct
from dataclasses import dataclass

KEY_TYPES = frozenset({
    "ssh-ed25519",
    "ssh-rsa",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
})

USER_PATTERN = r"^[a-z_][a-z0-9_-]{0,31}$"
_COMMENT_OK = re.compile(r"^[\x20-\x7e]*$")


class InvalidPublicKey(ValueError):
    """A public key that must not be installed; the message never contains the key."""


@dataclass(frozen=True)
class PublicKey:
    key_type: str
    body: str
    comment: str = ""

    @property
    def line(self) -> str:
        return f"{self.key_type} {self.body}" + (f" {self.comment}" if self.comment else "")


def parse_public_key(text: str) -> PublicKey:
    """Validate one OpenSSH public key line (as in a ``.pub`` file)."""
    if "PRIVATE KEY" in text:
        raise InvalidPublicKey("this is a private key; give the public key (the .pub file)")
    stripped = text.strip()
    if not stripped:
        raise InvalidPublicKey("the key is empty")
    if any(ch in stripped for ch in "\r\n\x00"):
        raise InvalidPublicKey("the key must be exactly one line (found several lines)")
    fields = stripped.split(None, 2)
    first = fields[0]
    if first not in KEY_TYPES:
        if "=" in first or "," in first or first in {"restrict", "no-pty", "cert-authority"}:
            raise InvalidPublicKey(
                "authorized_keys options (command=, from=, restrict...) are not allowed; "
                "give a plain public key line"
            )
        raise InvalidPublicKey(
            f"unknown key type (expected one of: {', '.join(sorted(KEY_TYPES))})"
        )
    if len(fields) < 2:
        raise InvalidPublicKey("the key has a type but no base64 body")
    body = fields[1]
    try:
        blob = base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidPublicKey("the key body is not valid base64") from None
    if len(blob) < 4:
        raise InvalidPublicKey("the key body is too short to be a key")
    (name_len,) = struct.unpack(">I", blob[:4])
    if blob[4:4 + name_len].decode("ascii", "replace") != first:
        raise InvalidPublicKey("the key body does not match its declared key type")
    comment = fields[2] if len(fields) == 3 else ""
    if not _COMMENT_OK.match(comment):
        raise InvalidPublicKey("the key comment contains non-printable characters")
    return PublicKey(first, body, comment)


# Runs on the target as the SSH user via `sh -s -- USER`; the keys arrive inside the script
# (public values, on stdin, never on a command line). For each managed key exactly one
# line remains: an identical existing line keeps its place, other lines carrying the same
# key body are replaced, lines for other keys are untouched. The file is replaced
# atomically and only when its content changes.
_INSTALL_SCRIPT = r"""set -eu
user="$1"
home=$(getent passwd "$user" | cut -d: -f6)
if [ -z "$home" ]; then echo "user $user does not exist on the server" >&2; exit 3; fi
group=$(id -gn "$user")
dir="$home/.ssh"
file="$dir/authorized_keys"
umask 077
[ -d "$dir" ] || mkdir -p "$dir"
chmod 0700 "$dir"
chown "$user:$group" "$dir"
[ -f "$file" ] || : > "$file"
keys=$(mktemp)
tmp=$(mktemp "$dir/.authorized_keys.XXXXXX")
trap 'rm -f "$keys" "$tmp"' EXIT
cat > "$keys" <<'__INFRA_KEYS__'
@KEYS@
__INFRA_KEYS__
awk -v OFS=' ' '
  NR == FNR { if (NF) { want[$2] = $0; order[++n] = $2 }; next }
  {
    for (i = 1; i <= NF; i++) if ($i in want) {
      if ($0 == want[$i] && !(($i) in seen)) { seen[$i] = 1; print; next }
      next
    }
    print
  }
  END { for (k = 1; k <= n; k++) if (!(order[k] in seen)) print want[order[k]] }
' "$keys" "$file" > "$tmp"
if cmp -s "$tmp" "$file"; then
  echo "authorized_keys unchanged"
else
  chmod 0600 "$tmp"
  chown "$user:$group" "$tmp"
  mv -f "$tmp" "$file"
  echo "authorized_keys changed"
fi
chmod 0600 "$file"
chown "$user:$group" "$file"
"""


def install_script(keys: list[PublicKey]) -> str:
    """The shell script that makes ``keys`` present exactly once for the user given as $1."""
    return _INSTALL_SCRIPT.replace("@KEYS@", "\n".join(k.line for k in keys))
