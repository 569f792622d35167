"""Pointing the official `kubernetes` client at an emulator: ApiClient and kubeconfig."""

from __future__ import annotations

import json
from pathlib import Path

import kubernetes.client


def configuration(url: str) -> kubernetes.client.Configuration:
    config = kubernetes.client.Configuration(host=url)
    config.verify_ssl = False
    return config


def api_client(url: str) -> kubernetes.client.ApiClient:
    """An ApiClient for `url`; close it (or use it as a context manager) when done."""
    return kubernetes.client.ApiClient(configuration(url))


def write_kubeconfig(path: str | Path, url: str, namespace: str = "default",
                     context: str = "emulator") -> Path:
    """Writes a kubeconfig (JSON is valid YAML) that `kubernetes.config.load_kube_config`
    and kubectl accept, with no credentials: the emulator does not authenticate."""
    path = Path(path)
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": context, "cluster": {"server": url}}],
        "users": [{"name": context, "user": {}}],
        "contexts": [{"name": context, "context": {"cluster": context, "user": context,
                                                    "namespace": namespace}}],
        "current-context": context,
        "preferences": {},
    }
    path.write_text(json.dumps(doc, indent=2) + "\n")
    return path
