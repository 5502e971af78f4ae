"""Jobs waiting for a slot: one FIFO queue per selection key.

A slot that frees on a node is offered only to the queues of the keys that node serves, oldest waiter first, so
its cost does not grow with the number of waiting jobs of other keys or with the number of full nodes.
"""

from __future__ import annotations

import collections
import itertools
from collections.abc import Iterator

from trioscheduler.registry.state import Job, NodeRecord


class WaitingJobs:
    """Waiting jobs by selection key, each queue in the order the jobs started waiting.

    Guarantees: a job is in at most one queue; ``first_fit`` returns the job that has waited longest among those
    the node may take (it serves the job's services and has not had the job), across every key the node serves.
    """

    __slots__ = ("_queues", "_count", "_seq")

    def __init__(self) -> None:
        self._queues: dict[str, collections.OrderedDict[Job, int]] = {}
        self._count = 0
        self._seq = itertools.count()

    def add(self, job: Job) -> None:
        key = job.spec.selection_key
        queue = self._queues.get(key)
        if queue is None:
            queue = self._queues[key] = collections.OrderedDict()
        if job not in queue:
            queue[job] = next(self._seq)
            self._count += 1

    def discard(self, job: Job) -> None:
        key = job.spec.selection_key
        queue = self._queues.get(key)
        if queue is None or queue.pop(job, None) is None:
            return
        self._count -= 1
        if not queue:
            del self._queues[key]

    def __contains__(self, job: Job) -> bool:
        queue = self._queues.get(job.spec.selection_key)
        return queue is not None and job in queue

    def __len__(self) -> int:
        return self._count

    def __bool__(self) -> bool:
        return self._count > 0

    def __iter__(self) -> Iterator[Job]:
        for queue in self._queues.values():
            yield from queue

    def per_key(self) -> dict[str, int]:
        return {key: len(queue) for key, queue in self._queues.items()}

    def first_fit(self, node: NodeRecord, *, require_ready: bool = True) -> Job | None:
        """The longest-waiting job, over the keys ``node`` is indexed under, that ``node`` may take if it has a
        free slot. Waiters the node may not take (it already had them, or, with ``require_ready``, a service they
        need is not ready on it) are passed over; the scan of a queue stops at its first job the node may take."""
        queues = self._queues
        keys = node.index_keys
        if len(keys) > len(queues):
            keys = queues.keys() & keys  # type: ignore[assignment]
        best: Job | None = None
        best_seq = 0
        node_id = node.node_id
        for key in keys:
            queue = queues.get(key)
            if queue is None:
                continue
            for job, seq in queue.items():
                if best is not None and seq > best_seq:
                    break  # everything further back waited less than the best found so far
                if node_id not in job.tried and (not require_ready or node.serves(job.services)):
                    best, best_seq = job, seq
                    break
        return best
