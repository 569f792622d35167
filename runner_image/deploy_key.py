"""Validating public keys and the remote script that installs them in authorized_keys.

A key is checked before anything touches a server: one line of bounded length, no options
(``command=``, ``from=``...), an allowed key type, and a body that ``cryptography``'s
``load_ssh_public_key`` decodes as a real key of that type and an allowed size, in its
canonical encoding (no trailing bytes). Error messages describe the problem without
repeating the value.
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
# RSA moduli outside this range are refused: below 2048 bits is breakable, above 16384 is
# what OpenSSH itself refuses.
RSA_MIN_BITS = 2048
RSA_MAX_BITS = 16384
# The longest allowed line: a 16384-bit RSA key is about 2,800 characters; a comment may
# add a little.
MAX_KEY_LINE = 4096

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


def parse_public_key(text: str, *, decode: bool = True) -> PublicKey:
    """Validate one OpenSSH public key line (as in a ``.pub`` file).

    ``decode=False`` checks only the line's structure; ``check_key_material`` then decodes
    the key (the runner does that in a thread while it connects to the database, as
    importing ``cryptography`` takes a noticeable part of its start-up).
    """
    if "PRIVATE KEY" in text:
        raise InvalidPublicKey("this is a private key; give the public key (the .pub file)")
    stripped = text.strip()
    if not stripped:
        raise InvalidPublicKey("the key is empty")
    if len(stripped) > MAX_KEY_LINE:
        raise InvalidPublicKey(f"the key line is too long (at most {MAX_KEY_LINE} characters)")
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
    if decode:
        check_key_material(first, body)
    comment = fields[2] if len(fields) == 3 else ""
    if not _COMMENT_OK.match(comment):
        raise InvalidPublicKey("the key comment contains non-printable characters")
    return PublicKey(first, body, comment)


def check_key_material(key_type: str, body: str) -> None:
    """Decode the key for real: a valid point/modulus of an allowed size, nothing extra."""
    # Imported on first use: the run decodes the key in a thread beside its database
    # connection, and importing cryptography is a noticeable part of the start-up.
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.hazmat.primitives.serialization import (
        Encoding,
        PublicFormat,
        load_ssh_public_key,
    )

    try:
        key = load_ssh_public_key(f"{key_type} {body}".encode())
    except (ValueError, UnsupportedAlgorithm, NotImplementedError):
        # NotImplementedError: e.g. an ECDSA point in compressed form (found by the
        # property-based test); anything the parser cannot take is not a key to install.
        raise InvalidPublicKey(f"the key body is not a valid {key_type} public key "
                               "(truncated or corrupted?)") from None
    if isinstance(key, rsa.RSAPublicKey) and not RSA_MIN_BITS <= key.key_size <= RSA_MAX_BITS:
        raise InvalidPublicKey(f"the RSA key has {key.key_size} bits; between {RSA_MIN_BITS} "
                               f"and {RSA_MAX_BITS} are allowed")
    if not key_type.startswith("sk-"):
        # Re-encoded, a key must give back exactly its body: no trailing or altered bytes.
        canonical = key.public_bytes(Encoding.OpenSSH, PublicFormat.OpenSSH).split()[1]
        if canonical != body.encode():
            raise InvalidPublicKey("the key body carries bytes that are not part of the key")


# Runs on the target as root (directly or through sudo) via `sh -s -- USER`; the keys arrive
# inside the script (public values, on stdin, never on a command line). For each managed
# key exactly one line remains: an identical existing line keeps its place, other lines
# carrying the same key body are replaced, lines for other keys are untouched.
#
# No symlink is followed for any user: a symlinked home, ~/.ssh or authorized_keys, or one
# owned by someone else, is refused (exit 4, a message on stderr). The work happens inside
# the verified ~/.ssh (cd, then its physical path and owner are checked), modes and owner
# are set on "." and on the new file before it is renamed over the old one, and another
# user's authorized_keys is read with that user's privileges (setpriv), so swapping a file
# for a symlink at the wrong moment gains nothing.
_INSTALL_SCRIPT = r"""set -eu
user="$1"
refuse() { echo "refusing to install SSH keys for $user: $*" >&2; exit 4; }
home=$(getent passwd "$user" | cut -d: -f6)
if [ -z "$home" ]; then echo "user $user does not exist on the server" >&2; exit 3; fi
uid=$(id -u "$user")
gid=$(id -g "$user")
[ ! -L "$home" ] || refuse "the home directory $home is a symlink"
[ -d "$home" ] || refuse "the home directory $home does not exist"
cd "$home"
real_home=$(pwd -P)
umask 077
[ ! -L .ssh ] || refuse "$home/.ssh is a symlink"
if [ ! -e .ssh ]; then mkdir .ssh && chown -h "$uid:$gid" .ssh; fi
[ -d .ssh ] || refuse "$home/.ssh is not a directory"
cd .ssh
[ "$(pwd -P)" = "$real_home/.ssh" ] || refuse "$home/.ssh changed into a symlink"
owner=$(stat -c %u .)
[ "$owner" = "$uid" ] || refuse "$home/.ssh is owned by uid $owner, not by $user"
chmod 0700 .
as_user() {
  if [ "$uid" = 0 ]; then "$@"; else setpriv --reuid="$uid" --regid="$gid" --clear-groups "$@"; fi
}
if [ -L authorized_keys ]; then refuse "$home/.ssh/authorized_keys is a symlink"; fi
if [ -e authorized_keys ]; then
  [ -f authorized_keys ] || refuse "$home/.ssh/authorized_keys is not a regular file"
  owner=$(stat -c %u authorized_keys)
  [ "$owner" = "$uid" ] || refuse "$home/.ssh/authorized_keys is owned by uid $owner, not by $user"
fi
keys=$(mktemp)
old=$(mktemp)
tmp=$(mktemp ./.authorized_keys.XXXXXX)
trap 'rm -f "$keys" "$old" "$tmp"' EXIT
cat > "$keys" <<'__INFRA_KEYS__'
@KEYS@
__INFRA_KEYS__
if [ -e authorized_keys ]; then as_user cat authorized_keys > "$old"; fi
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
' "$keys" "$old" > "$tmp"
if [ -e authorized_keys ] && cmp -s "$tmp" "$old" \
    && [ "$(stat -c '%a %u %g' authorized_keys)" = "600 $uid $gid" ]; then
  echo "authorized_keys unchanged"
else
  chmod 0600 "$tmp"
  chown -h "$uid:$gid" "$tmp"
  mv -f "$tmp" authorized_keys
  echo "authorized_keys changed"
fi
"""


def install_script(keys: list[PublicKey]) -> str:
    """The shell script that makes ``keys`` present exactly once for the user given as $1."""
    return _INSTALL_SCRIPT.replace("@KEYS@", "\n".join(k.line for k in keys))

