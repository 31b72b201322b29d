"""The reply cache opened by several processes at once: PPO's ranks under DDP open one Perspective cache together."""

from __future__ import annotations

import multiprocessing

from feedbackflow.llm.cache import CachedReply, ReplyCache, request_key

PROCESSES = 6
TRIALS = 40  # before the set-up lock, about 1 open in 60 failed here: 240 opens all passing is the test


def open_after_barrier(path: str, barrier, errors) -> None:
    barrier.wait()
    try:
        ReplyCache(path).close()
    except Exception as error:  # the test reports what failed, in the parent
        errors.put(repr(error))


def test_processes_opening_one_fresh_cache_at_once_all_succeed(tmp_path):
    context = multiprocessing.get_context("fork")
    failures = []
    for trial in range(TRIALS):
        path = str(tmp_path / f"cache{trial}.sqlite")
        barrier, errors = context.Barrier(PROCESSES), context.Queue()
        workers = [context.Process(target=open_after_barrier, args=(path, barrier, errors)) for _ in range(PROCESSES)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(timeout=60)
        assert all(worker.exitcode == 0 for worker in workers)
        while not errors.empty():
            failures.append(errors.get())
    assert failures == []


def test_the_cache_keeps_a_reply_across_connections(tmp_path):
    path = tmp_path / "cache.sqlite"
    key = request_key({"model": "m", "prompt": "p"})
    first = ReplyCache(path)
    first.put(key, {"model": "m", "prompt": "p"}, CachedReply("reply", 3, 1))
    first.close()
    again = ReplyCache(path)
    assert again.get(key) == CachedReply("reply", 3, 1) and len(again) == 1
