"""Identifier formats (the original's): job ids are ``job-<uuid>`` with a real version-4 UUID, all distinct."""

from __future__ import annotations

import random
import re
import uuid

from hypothesis import given
from hypothesis import strategies as st

from trioscheduler import ids


@given(st.integers(min_value=0, max_value=2**32 - 1))
def test_random_uuid_is_a_version_4_rfc4122_uuid(seed: int) -> None:
    random.seed(seed)
    text = ids.random_uuid()
    parsed = uuid.UUID(text)
    assert str(parsed) == text
    assert parsed.version == 4 and parsed.variant == uuid.RFC_4122


def test_job_ids_are_distinct_and_in_the_originals_format() -> None:
    job_ids = {ids.new_job_id() for _ in range(20_000)}
    assert len(job_ids) == 20_000
    assert all(re.fullmatch(r"job-[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}", j)
               for j in job_ids)


def test_session_and_node_ids_keep_their_formats() -> None:
    assert re.fullmatch(r"s-[0-9A-F]{8}", ids.new_session_id())
    assert re.fullmatch(r"node-[0-9A-F]{8}", ids.new_node_id())
