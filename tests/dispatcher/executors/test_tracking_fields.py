"""The watches decode only JOB_FIELDS and POD_FIELDS of each object: the bookkeeping must
read nothing else, so that slim_job and slim_pod give the same from the cut object as from
the whole one, whatever else and whatever values it holds."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dispatcher.executors.tracking import JOB_FIELDS, POD_FIELDS, slim_job, slim_pod
from dispatcher.kube.projection import Shape, project

pytestmark = pytest.mark.unit

_names = ["name", "labels", "uid", "creationTimestamp", "resourceVersion", "managedFields",
          "conditions", "startTime", "completionTime", "active", "phase", "reason", "message",
          "containerStatuses", "nodeName", "containers", "other"]
_scalars = st.none() | st.booleans() | st.integers() | st.text(max_size=6)
_json = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=3)
                     | st.dictionaries(st.sampled_from(_names), inner, max_size=4),
                     max_leaves=20)
_part = st.dictionaries(st.sampled_from(_names), _json, max_size=8)
_objects = st.fixed_dictionaries({}, optional={"metadata": _part, "spec": _part,
                                               "status": _part, "kind": st.text(max_size=5)})


@pytest.mark.parametrize(("slim", "shape"), [(slim_job, JOB_FIELDS), (slim_pod, POD_FIELDS)])
@given(obj=_objects)
def test_the_bookkeeping_reads_the_same_from_the_decoded_fields(
        slim: Callable[[dict[str, Any]], dict[str, Any]], shape: Shape,
        obj: dict[str, Any]) -> None:
    assert slim(project(obj, shape)) == slim(obj)
