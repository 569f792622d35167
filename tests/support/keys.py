"""Throwaway SSH key pairs for tests (ssh-keygen, ed25519, no passphrase)."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Keypair:
    private: str
    public: str

    @property
    def body(self) -> str:
        return self.public.split()[1]


def make_keypair(directory: Path, name: str) -> Keypair:
    path = directory / name
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(path)],
                   check=True)
    return Keypair(path.read_text(), (directory / f"{name}.pub").read_text().strip())
