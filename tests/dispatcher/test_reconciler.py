"""Reconciliation decisions: pure, no services."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dispatcher.executors.base import JobEnd, JobView
from dispatcher.reconciler import SlotFate, orphaned_claims, slot_fate
from dispatcher.store.queue import Slot, SlotState
from tests.support.dispatcher_fakes import PROPERTY

pytestmark = pytest.mark.unit

GRACE = 60.0
NOW = 10_000.0
END = JobEnd("job-1", "srv-1", "r-1", False, "OOMKilled", "killed")


def _slot(state: SlotState, age: float) -> Slot:
    return Slot("srv-1", "r-1", "job-1", NOW - age, state)


@pytest.mark.parametrize("state", list(SlotState))
def test_an_ended_job_is_finished_whatever_the_slot(state: SlotState) -> None:
    view = JobView("job-1", "srv-1", "r-1", END)
    assert slot_fate(_slot(state, 0), view, NOW, GRACE) is SlotFate.FINISH


@pytest.mark.parametrize("state", list(SlotState))
def test_a_running_job_or_a_young_slot_is_kept(state: SlotState) -> None:
    running = JobView("job-1", "srv-1", "r-1", None)
    assert slot_fate(_slot(state, 10 * GRACE), running, NOW, GRACE) is SlotFate.KEEP
    assert slot_fate(_slot(state, GRACE - 1), None, NOW, GRACE) is SlotFate.KEEP


def test_a_created_job_that_vanished_is_reported_deleted() -> None:
    assert slot_fate(_slot(SlotState.CREATED, GRACE), None, NOW, GRACE) is SlotFate.JOB_GONE


@pytest.mark.parametrize("state", [SlotState.CLAIMED, SlotState.ACQUIRED, SlotState.RESERVED])
def test_a_slot_without_job_is_released_unless_its_message_waits(state: SlotState) -> None:
    fate = slot_fate(_slot(state, GRACE + 1), None, NOW, GRACE)
    assert fate is SlotFate.RELEASE_UNLESS_PENDING


PAYLOADS = st.sets(st.binary(min_size=1, max_size=4), max_size=8)


@PROPERTY
@given(st.lists(st.tuples(PAYLOADS, PAYLOADS), min_size=1, max_size=6))
def test_a_claim_is_requeued_only_when_unowned_in_two_passes_in_a_row(
        passes: list[tuple[set[bytes], set[bytes]]]) -> None:
    suspects: set[bytes] = set()
    previous_unowned: set[bytes] = set()
    for listed, claimed in passes:
        requeue, suspects = orphaned_claims(listed, claimed, suspects)
        unowned = listed - claimed
        assert requeue == unowned & previous_unowned
        assert not requeue & claimed
        assert suspects == unowned
        previous_unowned = unowned
