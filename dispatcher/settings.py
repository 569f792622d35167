"""Dispatcher configuration: ``DISPATCHER_*`` environment variables (plus ``REDIS_*``).

Every field is documented with its default; ``python -m dispatcher settings`` prints them.
Structured values (resources, nodeSelector, tolerations, secret mappings) are JSON, as the
Helm chart renders them.
"""

from __future__ import annotations

import re
import socket
import sys
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from contracts.messages import HANDLE_PATTERN, Action
from dispatcher import k8s_formats
from dispatcher.k8s_formats import CONFIG_KEY_PATTERN, DNS_SUBDOMAIN_PATTERN


class ExecutorKind(StrEnum):
    KUBERNETES = "kubernetes"
    LOCAL = "local"


class SecretKeyRef(BaseModel):
    """One environment variable of the runner filled from a key of a Kubernetes Secret."""

    model_config = ConfigDict(extra="forbid")

    secret: str = Field(description="Secret name", pattern=DNS_SUBDOMAIN_PATTERN,
                        max_length=253)
    key: str = Field(description="Key inside the Secret; empty only for an optional "
                     "reference, which is then left out of the Job", max_length=253)
    optional: bool = False

    @model_validator(mode="after")
    def _key(self) -> SecretKeyRef:
        if not self.key:
            if not self.optional:
                raise ValueError(
                    f"the key of a required secret reference (secret {self.secret!r}) is "
                    "empty; an empty key leaves the variable out, which only an optional "
                    "reference may do: name the key in the Secret")
        elif not re.match(CONFIG_KEY_PATTERN, self.key):
            raise ValueError(f"secret key {self.key!r} must be alphanumerics, '-', '_' or "
                             "'.' (a Secret's data key)")
        return self


class JobTemplateSettings(BaseSettings):
    """How runner Jobs look; the Helm chart sets these from its values."""

    model_config = SettingsConfigDict(env_prefix="DISPATCHER_JOB_", extra="ignore")

    image: str = Field(default="infra-service-runner:latest", description="Runner image")
    image_pull_policy: str = Field(default="IfNotPresent", pattern="^(Always|IfNotPresent|Never)$",
                                   description="imagePullPolicy of the runner container")
    command: list[str] | None = Field(
        default=None,
        description="Overrides the image's entrypoint (JSON list); leave unset so that tini "
        "stays PID 1 and reaps the ssh children of Ansible",
    )
    args: list[str] = Field(
        default_factory=lambda: ["run"], description="Arguments to the image's entrypoint"
    )
    active_deadline_seconds: int = Field(
        default=3600, gt=0, description="Kubernetes kills the Job after this; the runner's own "
        "play timeout must be shorter so it reports first"
    )
    ttl_seconds_after_finished: int = Field(
        default=86400, ge=0, description="Finished Jobs are garbage-collected after this"
    )
    pod_failure_policy: bool = Field(
        default=True, description="Give Jobs a podFailurePolicy that fails the Job at once on "
        "the runner's documented exit codes (condition reason PodFailurePolicy); GA since "
        "Kubernetes 1.31, the chart's floor"
    )
    service_account_name: str | None = Field(
        default=None, description="Service account of runner pods (its token is never mounted)"
    )
    resources: dict[str, Any] = Field(
        default_factory=lambda: {
            "requests": {"cpu": "100m", "memory": "256Mi"},
            "limits": {"memory": "1Gi"},
        },
        description="Container resources (JSON)",
    )
    node_selector: dict[str, str] = Field(default_factory=dict, description="JSON object")
    tolerations: list[dict[str, Any]] = Field(default_factory=list, description="JSON list")
    image_pull_secrets: list[str] = Field(default_factory=list, description="JSON list of names")
    env: dict[str, str] = Field(
        default_factory=dict,
        description="Plain (non-secret) environment for the runner, e.g. REDIS_URL, DATABASE_URL",
    )
    secret_env: dict[str, SecretKeyRef] = Field(
        default_factory=dict,
        description='Runner env vars from Secret keys: {"DATABASE_PASSWORD": {"secret": "db", '
        '"key": "password"}}; rendered as secretKeyRef, never as values',
    )
    env_from_secrets: list[str] = Field(
        default_factory=list, description="Secrets whose every key becomes runner env (envFrom)"
    )
    scratch_size_limit: str = Field(default="1Gi", description="emptyDir size for scratch space")
    run_as_user: int = Field(default=10001, description="UID of the runner container")
    labels: dict[str, str] = Field(default_factory=dict, description="Extra labels on Jobs/Pods")
    annotations: dict[str, str] = Field(default_factory=dict,
                                        description="Extra annotations on Jobs")
    pod_labels: dict[str, str] = Field(
        default_factory=dict, description="Extra labels on runner pods only (the pod "
        "template); the dispatcher's own labels win on a clash")
    pod_annotations: dict[str, str] = Field(
        default_factory=dict, description="Annotations on runner pods (the pod template), "
        'e.g. {"karpenter.sh/do-not-disrupt": "true"}; the dispatcher\'s own '
        "(infra-service.io/deadline-at) wins on a clash")

    # What the API server would refuse, refused here already, naming the setting (the
    # dry-run preflight at start catches the rest).
    @field_validator("resources")
    @classmethod
    def _quantities(cls, resources: dict[str, Any]) -> dict[str, Any]:
        problems = k8s_formats.resources_problems(resources)
        if problems:
            raise ValueError("; ".join(problems))
        return resources

    @field_validator("scratch_size_limit")
    @classmethod
    def _scratch_quantity(cls, value: str) -> str:
        problem = k8s_formats.quantity_problem(value)
        if problem:
            raise ValueError(problem)
        return value

    @field_validator("labels", "node_selector", "pod_labels")
    @classmethod
    def _labels(cls, labels: dict[str, str]) -> dict[str, str]:
        problems = k8s_formats.labels_problems(labels)
        if problems:
            raise ValueError("; ".join(problems))
        return labels

    @field_validator("annotations", "pod_annotations")
    @classmethod
    def _annotations(cls, annotations: dict[str, str]) -> dict[str, str]:
        problems = k8s_formats.annotations_problems(annotations)
        if problems:
            raise ValueError("; ".join(problems))
        return annotations

    @field_validator("tolerations")
    @classmethod
    def _tolerations(cls, tolerations: list[dict[str, Any]]) -> list[dict[str, Any]]:
        problems = [f"toleration {i}: {p}" for i, t in enumerate(tolerations)
                    for p in k8s_formats.toleration_problems(t)]
        if problems:
            raise ValueError("; ".join(problems))
        return tolerations

    @field_validator("env_from_secrets", "image_pull_secrets")
    @classmethod
    def _secret_names(cls, names: list[str]) -> list[str]:
        problems = [p for p in map(k8s_formats.dns_subdomain_problem, names) if p]
        if problems:
            raise ValueError("; ".join(problems))
        return names

    @field_validator("env")
    @classmethod
    def _no_reserved_env(cls, env: dict[str, str]) -> dict[str, str]:
        reserved = {"PROVISIONER_MESSAGE", "JOB_NAME", "ORCHESTRATOR_SSH_PUBLIC_KEY",
                    "JOB_DEADLINE_AT"}
        clash = reserved & env.keys()
        if clash:
            raise ValueError(f"{sorted(clash)} are set by the dispatcher itself")
        return env


class DispatcherSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DISPATCHER_", extra="ignore")

    executor: ExecutorKind = Field(
        default=ExecutorKind.KUBERNETES, description="kubernetes (Jobs) or local (subprocesses)"
    )
    replica_id: str = Field(
        default_factory=socket.gethostname,
        pattern=HANDLE_PATTERN,
        description="Identity of this replica (its processing list); default: the pod name",
    )
    instance: str = Field(
        default="infra-service", pattern=HANDLE_PATTERN,
        description="app.kubernetes.io/instance of the Jobs this dispatcher owns (Helm release)",
    )
    namespace: str = Field(default="default", description="Namespace of the runner Jobs")
    max_in_flight: int = Field(
        default=10, ge=1, description="Cap on Jobs in flight across all replicas (backpressure)"
    )
    action_caps: dict[Action, int] = Field(
        default_factory=dict,
        description="Cap on runs in flight per action, under max_in_flight (JSON object, "
        'e.g. {"reinstall": 2}); messages over it wait in push order, unclaimed',
    )
    heartbeat_seconds: float = Field(
        default=2.0, gt=0, description="Replica heartbeat period; a replica whose heartbeat is "
        "older than 3 periods is dead and its in-flight messages are requeued"
    )
    pending_timeout_seconds: float = Field(
        default=600, gt=0, description="A runner pod still unscheduled/not started after this "
        "fails the Job (with the Kubernetes reason)"
    )
    image_pull_grace_seconds: float = Field(
        default=120, gt=0, description="ErrImagePull/ImagePullBackOff fail the Job after this "
        "(pulls can recover from a registry hiccup; CreateContainerConfigError fails at once)"
    )
    reconcile_seconds: float = Field(
        default=15, gt=0, description="Period of the check of server slots against live Jobs"
    )
    orphan_grace_seconds: float = Field(
        default=30, gt=0, description="A slot whose Job is absent this long is released "
        "(the Job was deleted while no dispatcher watched)"
    )
    shutdown_timeout_seconds: float = Field(
        default=20, gt=0, description="SIGTERM: finish the dispatch in progress within this"
    )
    preflight_seconds: float = Field(
        default=300, gt=0, description="Period of the dry-run create of a Job built from the "
        "settings (also run at start): while the API refuses it, the dispatcher is not ready "
        "and consumes no message"
    )
    api_timeout_seconds: float = Field(default=10, gt=0, description="Per Kubernetes request")
    api_retry_max_seconds: float = Field(
        default=30, gt=0, description="Longest backoff between Kubernetes API retries"
    )
    dispatch_concurrency: int = Field(
        default=8, ge=1, le=64, description="Job creations running at once"
    )
    metrics_port: int = Field(default=9100, ge=0, le=65535, description="Prometheus /metrics")
    metrics_refresh_seconds: float = Field(
        default=5.0, gt=0, le=60,
        description="How often the exporting replica reads queue state from Redis for /metrics",
    )
    health_port: int = Field(default=8080, ge=0, le=65535, description="/healthz and /readyz")
    bind_address: str = Field(default="0.0.0.0", description="Address of both HTTP listeners")  # noqa: S104
    kubeconfig: str | None = Field(
        default=None, description="kubeconfig path; default: in-cluster config, then KUBECONFIG"
    )
    orchestrator_ssh_public_key: str = Field(
        default="",
        validation_alias="ORCHESTRATOR_SSH_PUBLIC_KEY",
        description="Deploy key passed to every runner (public, not a secret)",
    )
    local_command: list[str] = Field(
        default_factory=lambda: [sys.executable, "-m", "runner_image", "run"],
        description="local executor: the runner command (JSON list)",
    )
    local_workdir: str | None = Field(
        default=None, description="local executor: where runner logs go (default: a temp dir)"
    )
    log_level: str = Field(default="INFO", pattern="^(DEBUG|INFO|WARNING|ERROR)$",
                           description="DEBUG, INFO, WARNING or ERROR")

    @model_validator(mode="after")
    def _bounds(self) -> DispatcherSettings:
        if self.metrics_port and self.metrics_port == self.health_port:
            raise ValueError("DISPATCHER_METRICS_PORT and DISPATCHER_HEALTH_PORT must differ")
        for action, cap in self.action_caps.items():
            if not 1 <= cap <= self.max_in_flight:
                raise ValueError(
                    f"DISPATCHER_ACTION_CAPS: {action} is capped at {cap}; a cap must be between "
                    f"1 and DISPATCHER_MAX_IN_FLIGHT ({self.max_in_flight})")
        return self
