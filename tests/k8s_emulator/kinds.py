"""The emulated resource types: identity, defaulting, validation and field selectors.

Each kind follows the API server's registry strategy for it, in the subset that matters to
clients: what is defaulted, what is validated (and with which field paths), which fields the
main resource and the /status subresource may change, and which field selectors exist.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from . import podfailurepolicy
from . import validation as v
from .status import (
    FieldError,
    GroupResource,
    duplicate,
    forbidden,
    invalid_value,
    not_supported,
    required,
    too_long,
)

JOB_NAME_LABELS = ("batch.kubernetes.io/job-name", "job-name")
CONTROLLER_UID_LABELS = ("batch.kubernetes.io/controller-uid", "controller-uid")
SECRET_MAX_BYTES = 1024 * 1024


def _dig(obj: dict[str, Any], *path: str) -> Any:
    node: Any = obj
    for part in path:
        if not isinstance(node, dict):
            return None
        node = node.get(part)
    return node


def _field(*path: str) -> Callable[[dict[str, Any]], str]:
    def get(obj: dict[str, Any]) -> str:
        value = _dig(obj, *path)
        if value is None:
            return ""
        if isinstance(value, bool):
            return "true" if value else "false"
        return str(value)
    return get


META_FIELDS = {"metadata.name": _field("metadata", "name"),
               "metadata.namespace": _field("metadata", "namespace")}


@dataclass
class Kind:
    """One resource type; the hooks mutate the object dict in place or return field errors."""

    plural: str
    kind: str
    group: str
    version: str
    has_status: bool = False
    generation: bool = False
    return_deleted_object: bool = False
    allow_create_on_update: bool = False
    orphan_by_default: bool = False
    fields: dict[str, Callable[[dict[str, Any]], str]] = field(default_factory=dict)
    # Defaulting applied when a body is decoded.
    default: Callable[[dict[str, Any]], None] = lambda obj: None
    # The registry strategy's create-time preparation (uid is already set); may refuse.
    prepare_create: Callable[[dict[str, Any]], list[FieldError]] = lambda obj: []
    validate: Callable[[dict[str, Any], dict[str, Any] | None], list[FieldError]] = (
        lambda obj, old: [])
    # Defaulting the server applies to stored objects when it reads them back.
    finish: Callable[[dict[str, Any]], None] = lambda obj: None
    initial_status: Callable[[dict[str, Any]], Any] | None = None

    def __post_init__(self) -> None:
        self.fields = {**META_FIELDS, **self.fields}
        self.gr = GroupResource(self.group, self.plural, self.kind)
        self.api_version = f"{self.group}/{self.version}" if self.group else self.version
        self.list_kind = self.kind + "List"
        self.base_path = (f"/apis/{self.group}/{self.version}" if self.group
                          else f"/api/{self.version}")


# ---- pod spec (shared by Pods and Job templates) ----

def _default_container(c: dict[str, Any]) -> None:
    c.setdefault("terminationMessagePath", "/dev/termination-log")
    c.setdefault("terminationMessagePolicy", "File")
    image = c.get("image") or ""
    if "imagePullPolicy" not in c:
        tagless = ":" not in image.rsplit("/", 1)[-1] and "@" not in image
        c["imagePullPolicy"] = ("Always" if tagless or image.endswith(":latest")
                                else "IfNotPresent")
    c.setdefault("resources", {})


def default_pod_spec(spec: dict[str, Any]) -> None:
    spec.setdefault("restartPolicy", "Always")
    spec.setdefault("terminationGracePeriodSeconds", 30)
    spec.setdefault("dnsPolicy", "ClusterFirst")
    spec.setdefault("securityContext", {})
    spec.setdefault("schedulerName", "default-scheduler")
    for key in ("containers", "initContainers"):
        for c in spec.get(key) or []:
            if isinstance(c, dict):
                _default_container(c)


def validate_pod_spec(spec: Any, path: str) -> list[FieldError]:
    if not isinstance(spec, dict):
        return [required(path)]
    errors: list[FieldError] = []
    containers = spec.get("containers")
    if not containers:
        errors.append(required(f"{path}.containers"))
    seen: set[str] = set()
    for key in ("initContainers", "containers"):
        for i, c in enumerate(spec.get(key) or []):
            errors += _validate_container(c, f"{path}.{key}[{i}]", seen)
    policy = spec.get("restartPolicy")
    if policy not in ("Always", "OnFailure", "Never"):
        errors.append(not_supported(f"{path}.restartPolicy", policy,
                                    ["Always", "OnFailure", "Never"]))
    for i, toleration in enumerate(spec.get("tolerations") or []):
        errors += _validate_toleration(toleration, f"{path}.tolerations[{i}]")
    errors += v.labels(f"{path}.nodeSelector", spec.get("nodeSelector"))
    return errors


_TOLERATION_EFFECTS = ["NoSchedule", "PreferNoSchedule", "NoExecute"]


def _validate_toleration(t: Any, path: str) -> list[FieldError]:
    """ValidateTolerations of kube-apiserver (core/validation)."""
    if not isinstance(t, dict):
        return [invalid_value(path, str(t), "must be an object")]
    errors: list[FieldError] = []
    key, operator, value = t.get("key") or "", t.get("operator") or "", t.get("value") or ""
    effect = t.get("effect") or ""
    if key:
        errors += v.each(f"{path}.key", key, v.qualified_name(key))
    elif operator != "Exists":
        errors.append(invalid_value(f"{path}.operator", operator,
                                    "operator must be Exists when `key` is empty, which "
                                    "means \"match all values and all keys\""))
    if t.get("tolerationSeconds") is not None and effect != "NoExecute":
        errors.append(invalid_value(f"{path}.effect", effect,
                                    "effect must be 'NoExecute' when `tolerationSeconds` is set"))
    if operator in ("", "Equal"):
        errors += v.each(f"{path}.value", value, v.label_value(value)) if value else []
    elif operator == "Exists":
        if value:
            errors.append(invalid_value(f"{path}.operator", t,
                                        "value must be empty when `operator` is 'Exists'"))
    else:
        errors.append(not_supported(f"{path}.operator", operator, ["Equal", "Exists"]))
    if effect and effect not in _TOLERATION_EFFECTS:
        errors.append(not_supported(f"{path}.effect", effect, _TOLERATION_EFFECTS))
    return errors


def _validate_container(c: Any, path: str, seen: set[str]) -> list[FieldError]:
    if not isinstance(c, dict):
        return [invalid_value(path, str(c), "must be an object")]
    errors: list[FieldError] = []
    name = c.get("name")
    if not name:
        errors.append(required(f"{path}.name"))
    elif not isinstance(name, str):
        errors.append(invalid_value(f"{path}.name", name, "must be a string"))
    else:
        errors += v.each(f"{path}.name", name, v.dns1123_label(name))
        if name in seen:
            errors.append(duplicate(f"{path}.name", name))
        seen.add(name)
    if not c.get("image"):
        errors.append(required(f"{path}.image"))
    for j, env in enumerate(c.get("env") or []):
        epath = f"{path}.env[{j}]"
        ename = env.get("name") if isinstance(env, dict) else None
        if not ename:
            errors.append(required(f"{epath}.name"))
        elif not isinstance(ename, str):
            errors.append(invalid_value(f"{epath}.name", ename, "must be a string"))
        else:
            errors += v.each(f"{epath}.name", ename, v.env_var_name(ename))
        if isinstance(env, dict) and env.get("value") and env.get("valueFrom") is not None:
            errors.append(invalid_value(f"{epath}.valueFrom", "",
                                        "may not be specified when `value` is not empty"))
        source = env.get("valueFrom") if isinstance(env, dict) else None
        if isinstance(source, dict):
            refs = [k for k in ("fieldRef", "resourceFieldRef", "configMapKeyRef",
                                "secretKeyRef") if source.get(k) is not None]
            if len(refs) != 1:
                errors.append(invalid_value(f"{epath}.valueFrom", "",
                                            "may not have more than one field specified at a "
                                            "time" if refs else "must specify one of: "
                                            "`fieldRef`, `resourceFieldRef`, `configMapKeyRef` "
                                            "or `secretKeyRef`"))
            for ref in ("secretKeyRef", "configMapKeyRef"):
                sel = source.get(ref)
                if not isinstance(sel, dict):
                    continue
                if not sel.get("name"):
                    errors.append(required(f"{epath}.valueFrom.{ref}.name"))
                if not sel.get("key"):
                    errors.append(required(f"{epath}.valueFrom.{ref}.key"))
                elif isinstance(sel["key"], str):
                    errors += v.each(f"{epath}.valueFrom.{ref}.key", sel["key"],
                                     v.config_key(sel["key"]))
    return errors


# ---- Jobs ----

def _default_job(job: dict[str, Any]) -> None:
    spec = job.get("spec")
    if not isinstance(spec, dict):
        spec = job["spec"] = {}
    if spec.get("completions") is None and spec.get("parallelism") is None:
        spec["completions"] = 1
    spec.setdefault("parallelism", 1)
    spec.setdefault("backoffLimit", 6)
    spec.setdefault("completionMode", "NonIndexed")
    spec.setdefault("suspend", False)
    spec.setdefault("podReplacementPolicy",
                    "Failed" if spec.get("podFailurePolicy") else "TerminatingOrFailed")
    template = spec.get("template")
    if isinstance(template, dict) and isinstance(template.get("spec"), dict):
        default_pod_spec(template["spec"])


def _prepare_job(job: dict[str, Any]) -> list[FieldError]:
    """What the Job strategy does on create: generated selector and template labels."""
    spec = job.get("spec")
    if not isinstance(spec, dict) or spec.get("manualSelector"):
        return []
    uid = job["metadata"]["uid"]
    name = job["metadata"]["name"]
    template = spec.get("template")
    if isinstance(template, dict):
        meta = template.get("metadata")
        if not isinstance(meta, dict):
            meta = template["metadata"] = {}
        labels = meta.get("labels")
        if not isinstance(labels, dict):
            labels = meta["labels"] = {}
        for key in CONTROLLER_UID_LABELS:
            labels.setdefault(key, uid)
        for key in JOB_NAME_LABELS:
            labels.setdefault(key, name)
    if spec.get("selector") is not None:
        return [invalid_value("spec.selector", spec["selector"], "selector not auto-generated")]
    spec["selector"] = {"matchLabels": {CONTROLLER_UID_LABELS[0]: uid}}
    return []


def _finish_job(job: dict[str, Any]) -> None:
    """Defaulting the server applies on read: a Job without labels shows its template's."""
    if not job["metadata"].get("labels"):
        labels = _dig(job, "spec", "template", "metadata", "labels")
        if labels:
            job["metadata"]["labels"] = dict(labels)


def _validate_job(job: dict[str, Any], old: dict[str, Any] | None) -> list[FieldError]:
    errors: list[FieldError] = []
    spec = job.get("spec")
    if not isinstance(spec, dict):
        return [required("spec")]
    template = spec.get("template")
    if not isinstance(template, dict) or not isinstance(template.get("spec"), dict):
        errors.append(required("spec.template.spec"))
        return errors
    tmeta = template.get("metadata") or {}
    errors += v.labels("spec.template.labels", tmeta.get("labels"))
    errors += v.annotations("spec.template.annotations", tmeta.get("annotations"))
    errors += validate_pod_spec(template.get("spec"), "spec.template.spec")
    policy = template["spec"].get("restartPolicy")
    if policy not in ("OnFailure", "Never"):
        errors = [e for e in errors if e.field != "spec.template.spec.restartPolicy"]
        errors.append(not_supported("spec.template.spec.restartPolicy", policy,
                                    ["OnFailure", "Never"]))
    for key in ("parallelism", "completions", "backoffLimit", "activeDeadlineSeconds",
                "ttlSecondsAfterFinished"):
        value = spec.get(key)
        if value is not None and (not isinstance(value, int) or value < 0):
            errors.append(invalid_value(f"spec.{key}", value,
                                        "must be greater than or equal to 0"))
    if spec.get("activeDeadlineSeconds") == 0:
        errors.append(invalid_value("spec.activeDeadlineSeconds", 0, "must be greater than 0"))
    errors += podfailurepolicy.validate(spec)
    if old is not None:
        for key in ("selector", "template", "completionMode"):
            if spec.get(key) != _dig(old, "spec", key):
                errors.append(invalid_value(f"spec.{key}", spec.get(key), "field is immutable"))
    return errors


# ---- Pods ----

def _default_pod(pod: dict[str, Any]) -> None:
    if not isinstance(pod.get("spec"), dict):
        pod["spec"] = {}
    default_pod_spec(pod["spec"])


def _pod_status(pod: dict[str, Any]) -> dict[str, Any]:
    return {"phase": "Pending", "qosClass": _qos_class(pod.get("spec") or {})}


def _qos_class(spec: dict[str, Any]) -> str:
    resources = [c.get("resources") or {} for c in spec.get("containers") or []]
    if not any(r.get("requests") or r.get("limits") for r in resources):
        return "BestEffort"
    guaranteed = all(
        r.get("limits") and {"cpu", "memory"} <= set(r["limits"])
        and all((r.get("requests") or r["limits"]).get(k) == r["limits"][k]
                for k in ("cpu", "memory"))
        for r in resources)
    return "Guaranteed" if guaranteed else "Burstable"


_POD_MUTABLE = ("image",)


def _validate_pod(pod: dict[str, Any], old: dict[str, Any] | None) -> list[FieldError]:
    errors = validate_pod_spec(pod.get("spec"), "spec")
    if old is not None:
        def strip(spec: dict[str, Any]) -> dict[str, Any]:
            spec = dict(spec)
            spec["containers"] = [{k: c[k] for k in c if k not in _POD_MUTABLE}
                                  for c in spec.get("containers") or []]
            spec.pop("activeDeadlineSeconds", None)
            spec.pop("tolerations", None)
            return spec
        if strip(pod.get("spec") or {}) != strip(old.get("spec") or {}):
            errors.append(forbidden(
                "spec", "pod updates may not change fields other than `spec.containers[*]."
                "image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec."
                "tolerations` (only additions to existing tolerations),`spec."
                "terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously "
                "negative)"))
    return errors


# ---- Secrets and ConfigMaps ----

def _default_secret(secret: dict[str, Any]) -> None:
    secret.setdefault("type", "Opaque")
    string_data = secret.pop("stringData", None)
    if isinstance(string_data, dict):
        data = secret.setdefault("data", {}) or {}
        for key, value in string_data.items():
            data[key] = base64.b64encode(str(value).encode()).decode()
        secret["data"] = data


def _validate_data_keys(obj: dict[str, Any], keys: list[str]) -> list[FieldError]:
    errors: list[FieldError] = []
    for section in keys:
        for key in obj.get(section) or {}:
            errors += v.each(f"{section}[{key}]", key, v.config_key(key))
    return errors


def _validate_immutable(obj: dict[str, Any], old: dict[str, Any] | None,
                        sections: tuple[str, ...]) -> list[FieldError]:
    if old is None or not old.get("immutable"):
        return []
    errors: list[FieldError] = []
    if not obj.get("immutable"):
        errors.append(forbidden("immutable", "field is immutable when `immutable` is set"))
    for section in sections:
        if (obj.get(section) or {}) != (old.get(section) or {}):
            errors.append(forbidden(section, "field is immutable when `immutable` is set"))
    return errors


def _validate_secret(secret: dict[str, Any], old: dict[str, Any] | None) -> list[FieldError]:
    errors = _validate_data_keys(secret, ["data"])
    total = 0
    for key, value in (secret.get("data") or {}).items():
        try:
            total += len(base64.b64decode(value or "", validate=True))
        except (binascii.Error, TypeError, ValueError):
            errors.append(invalid_value(f"data[{key}]", "<secret contents redacted>",
                                        "illegal base64 data"))
    if total > SECRET_MAX_BYTES:
        errors.append(too_long("data", SECRET_MAX_BYTES))
    if old is not None and secret.get("type") != old.get("type"):
        errors.append(invalid_value("type", secret.get("type"), "field is immutable"))
    return errors + _validate_immutable(secret, old, ("data",))


def _validate_configmap(cm: dict[str, Any], old: dict[str, Any] | None) -> list[FieldError]:
    errors = _validate_data_keys(cm, ["data", "binaryData"])
    for key in set(cm.get("data") or {}) & set(cm.get("binaryData") or {}):
        errors.append(invalid_value("data", key, "duplicate of key present in binaryData"))
    return errors + _validate_immutable(cm, old, ("data", "binaryData"))


# ---- Events ----

def _validate_event(event: dict[str, Any], old: dict[str, Any] | None) -> list[FieldError]:
    errors: list[FieldError] = []
    involved = event.get("involvedObject")
    if not isinstance(involved, dict):
        return [required("involvedObject")]
    ns = event["metadata"].get("namespace")
    if involved.get("namespace") and involved["namespace"] != ns:
        errors.append(invalid_value("involvedObject.namespace", involved["namespace"],
                                    "does not match event.namespace"))
    if event.get("type") not in (None, "", "Normal", "Warning"):
        errors.append(not_supported("type", event.get("type"), ["Normal", "Warning"]))
    return errors


JOBS = Kind(
    "jobs", "Job", "batch", "v1", has_status=True, generation=True, orphan_by_default=True,
    fields={"status.successful": _field("status", "succeeded")},
    default=_default_job, prepare_create=_prepare_job, validate=_validate_job,
    finish=_finish_job, initial_status=lambda obj: {},
)
PODS = Kind(
    "pods", "Pod", "", "v1", has_status=True, generation=True, return_deleted_object=True,
    fields={
        "spec.nodeName": _field("spec", "nodeName"),
        "spec.restartPolicy": _field("spec", "restartPolicy"),
        "spec.schedulerName": _field("spec", "schedulerName"),
        "spec.serviceAccountName": _field("spec", "serviceAccountName"),
        "status.phase": _field("status", "phase"),
        "status.podIP": _field("status", "podIP"),
        "status.nominatedNodeName": _field("status", "nominatedNodeName"),
    },
    default=_default_pod, validate=_validate_pod, initial_status=_pod_status,
)
SECRETS = Kind("secrets", "Secret", "", "v1", fields={"type": _field("type")},
               default=_default_secret, validate=_validate_secret)
CONFIGMAPS = Kind("configmaps", "ConfigMap", "", "v1", validate=_validate_configmap)
EVENTS = Kind(
    "events", "Event", "", "v1", allow_create_on_update=True,
    fields={
        "involvedObject.kind": _field("involvedObject", "kind"),
        "involvedObject.namespace": _field("involvedObject", "namespace"),
        "involvedObject.name": _field("involvedObject", "name"),
        "involvedObject.uid": _field("involvedObject", "uid"),
        "involvedObject.apiVersion": _field("involvedObject", "apiVersion"),
        "involvedObject.resourceVersion": _field("involvedObject", "resourceVersion"),
        "involvedObject.fieldPath": _field("involvedObject", "fieldPath"),
        "reason": _field("reason"),
        "reportingComponent": _field("reportingComponent"),
        "source": _field("source", "component"),
        "type": _field("type"),
    },
    validate=_validate_event,
)

# events.k8s.io/v1: routed and discovered, stored as the core/v1 EVENTS (eventsv1.py converts).
EVENTS_V1 = Kind("events", "Event", "events.k8s.io", "v1")

ALL: tuple[Kind, ...] = (JOBS, PODS, SECRETS, CONFIGMAPS, EVENTS)
SERVED: tuple[Kind, ...] = (*ALL, EVENTS_V1)
BY_PATH: dict[tuple[str, str], Kind] = {(k.base_path, k.plural): k for k in SERVED}
BY_PLURAL: dict[str, Kind] = {k.plural: k for k in ALL}
