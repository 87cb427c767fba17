"""Private helper: NumPy work of a streamed pass on a few threads, its results taken in order.

BLAS releases the GIL, so a pass whose chunks are large matrix products (the gate drivers': milliseconds each) runs
on two cores when two chunks are computed at once. Passes of many small array operations do not gain: the GIL
changes hands between operations (stats and memory, tried: wall time unchanged). The reads stay on the calling
thread (one chunk ahead of the workers), and the results come back in the order of the tasks, so sums merged from
them are added in the same order as on one thread: the same numbers to the bit, whatever the number of threads.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from threadpoolctl import threadpool_limits

#: Threads of the gate drivers' pass (1: the calling thread only). Each runs one BLAS thread: two BLAS threads on
#: cache-sized blocks contend for the cores. The worker processes of analysis/parallel.py, one a core, set it to 1.
PASS_THREADS = 2


def ordered_map(tasks: Iterable[tuple[Callable[..., Any], tuple[Any, ...]]], threads: int) -> Iterator[Any]:
    """``fn(*args)`` of each ``(fn, args)`` in ``tasks``, in order, computed on ``threads`` threads.

    ``tasks`` is iterated on the calling thread (where the reads happen), at most ``threads`` tasks ahead of the
    result being yielded; BLAS is limited to one thread meanwhile.

    Examples
    --------
    >>> list(ordered_map(((pow, (2, k)) for k in range(5)), threads=2))
    [1, 2, 4, 8, 16]
    """
    with threadpool_limits(limits=1, user_api="blas"):
        if threads <= 1:
            for fn, args in tasks:
                yield fn(*args)
            return
        with ThreadPoolExecutor(threads, thread_name_prefix="gatelens-pass") as pool:
            pending: deque[Future] = deque()
            for fn, args in tasks:
                pending.append(pool.submit(fn, *args))
                while len(pending) >= threads:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
