"""``PoolSettings``: every knob of worker mode, each with a documented default."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..config import MAX_POOL_SIZE

if TYPE_CHECKING:
    from ..config import RuntimeConfig

#: Above this many workers per CPU the pool says it is probably oversized (boefjes mostly wait on the
#: network, so a few per CPU make sense; dozens do not).
WORKERS_PER_CPU_WARNING = 4


@dataclass(frozen=True, kw_only=True)
class PoolSettings:
    """How a :class:`~boefje_runtime.pool.WorkerPool` behaves. Defaults are OpenKAT's where it has one."""

    #: Worker processes, each running one task at a time.
    pool_size: int = 2
    #: The scheduler queue to pop from.
    queue: str = "boefje"
    #: Longest wait between pops while the queue stays empty (seconds).
    poll_interval: float = 10.0
    #: Longest the supervisor sleeps while every worker is busy (seconds); it wakes earlier on events.
    heartbeat: float = 1.0
    #: Run tasks of one pop that are duplicates once and post the output to each.
    deduplicate: bool = True
    #: With ``deduplicate``, the pop limit, so a group of duplicates arrives whole (pop_policy.py).
    dedup_group_limit: int = 32
    #: Kill a task's process after this many seconds (None: no limit).
    task_timeout: float | None = None
    #: Replace a worker after it ran this many tasks (None: never).
    max_tasks_per_child: int | None = None
    #: Replace a worker once its resident memory passes this many MiB (None: never).
    max_memory_per_child: float | None = None
    #: On SIGTERM/SIGINT, how long running tasks get to finish before they are killed (seconds).
    shutdown_timeout: float = 25.0
    #: Tasks popped beyond the free workers. 0, because a prefetched task waits on a busy
    #: container while other containers may be idle. N > 0 pops in batches of N + 1: fewer
    #: requests (2 + 1/(N+1) per task) for queues that are always full.
    prefetch: int = 0
    #: Pop for a worker before it is free: once its boefje has returned (while it posts the output),
    #: or when its boefje usually ends within four pop round trips, so the round trip overlaps the end
    #: of the task; also for the end of the task after that one, when that comes within them too (a
    #: boefje shorter than a few pop round trips). At most two tasks wait per such worker, in its
    #: next-task pipe and in the supervisor (any idle worker may take them), one for a worker whose
    #: task is its last (``MAX_TASKS_PER_CHILD``); the rule is ``pops_wanted`` (popthreads.py).
    #: False: pop only for idle workers.
    pop_ahead: bool = True
    #: Stop (exit 0) once the queue has nothing for this worker.
    burst: bool = False
    #: Stop after this many tasks were started (None: no limit).
    max_tasks: int | None = None
    #: Refuse boefje output larger than this (bytes) with a FAILED task instead of exhausting memory.
    max_output_bytes: int | None = 64 * 1024 * 1024
    #: First wait after an empty pop; waits grow from here to ``poll_interval``. A task that arrives
    #: while a worker is free waits at most this long; an empty queue is asked at most 1/this
    #: times a second (the pop right after a task finishes is not delayed). The default keeps a
    #: fleet whose tasks trickle in from popping the scheduler 50 times a second per container
    #: (0.02 s picks such a task up within about 20 ms); ``FIRST_POLL_WAIT`` sets it.
    first_poll_wait: float = 0.25
    #: Keep waits at ``first_poll_wait`` this long after the last task, so bursty queues are picked
    #: up fast; only a queue that stays empty backs off towards ``poll_interval``.
    hot_window: float = 1.0
    #: Longest back-off after Boefje API errors (seconds).
    max_error_backoff: float = 30.0
    #: A worker that has not said "ready" this long after it was forked (a boefje import that
    #: hangs) is killed and counted as a start-up death (seconds).
    startup_timeout: float = 60.0
    #: Make the supervisor a child subreaper that kills and reaps every child process it did not
    #: start itself (boefje daemons whose worker died, their zombies). Right when the pool owns its
    #: process: worker mode, a container's PID 1 (then it is on whatever this says). Leave it off
    #: when embedding the pool in a program that starts child processes of its own. See reaper.py.
    adopt_orphans: bool = False

    @classmethod
    def from_config(cls, config: RuntimeConfig) -> PoolSettings:
        """Worker mode's settings, as the CLI gives them (the pool owns its process there, so it
        adopts orphaned boefje processes; see reaper.py)."""
        return cls(
            pool_size=config.pool_size,
            queue=config.queue,
            poll_interval=config.poll_interval,
            first_poll_wait=config.first_poll_wait,
            heartbeat=config.worker_heartbeat,
            deduplicate=config.deduplicate,
            dedup_group_limit=config.dedup_group_limit,
            task_timeout=config.task_timeout or None,
            max_tasks_per_child=config.max_tasks_per_child or None,
            max_memory_per_child=config.max_memory_per_child or None,
            shutdown_timeout=config.shutdown_timeout,
            prefetch=config.prefetch,
            pop_ahead=config.pop_ahead,
            burst=config.burst,
            max_tasks=config.max_tasks or None,
            max_output_bytes=config.max_output_bytes,
            adopt_orphans=True,
        )

    def __post_init__(self) -> None:
        if not 1 <= self.pool_size <= MAX_POOL_SIZE:
            raise ValueError(f"pool_size must be between 1 and {MAX_POOL_SIZE}, not {self.pool_size}")
        if self.poll_interval <= 0 or self.heartbeat <= 0:
            raise ValueError("poll_interval and heartbeat must be positive")
        if self.startup_timeout <= 0:
            raise ValueError("startup_timeout must be positive")
        if self.prefetch < 0:
            raise ValueError("prefetch must be 0 or more")

    @property
    def oversized(self) -> bool:
        """More workers than :data:`WORKERS_PER_CPU_WARNING` per CPU: worth a warning."""
        return self.pool_size > WORKERS_PER_CPU_WARNING * (os.cpu_count() or 1)
