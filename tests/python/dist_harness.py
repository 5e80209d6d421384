"""Runs a function on W gloo processes on this machine, for the distributed tests: every process
binds to 127.0.0.1 only, rendezvous on a free port, and everything is bounded in time, so a hang
fails the test instead of blocking CI.

run_ranks(fn, world, *args) calls fn(rank, world, *args) in each of `world` spawned processes
(with torch.distributed initialised) and returns the W return values, rank order. If any rank
raises, RankError carries every rank's outcome (the message and traceback of each failure)."""

from __future__ import annotations

import datetime
import io
import os
import queue
import socket
import time
import traceback
from typing import Any, Callable, Dict, List

import multiprocessing as mp

import torch

COLLECTIVE_TIMEOUT_S = 30  # a collective waiting longer than this raises in the rank
DEFAULT_TIMEOUT_S = 120    # the whole run (process start, imports, work)


class RankError(AssertionError):
    """One or more ranks raised; outcomes: {rank: ("ok", value) or ("error", type, message, traceback)}."""

    def __init__(self, outcomes: Dict[int, tuple]) -> None:
        self.outcomes = outcomes
        lines = [f"rank {r}: {o[1]}: {o[2]}\n{o[3]}" for r, o in sorted(outcomes.items()) if o[0] == "error"]
        super().__init__("\n".join(lines))

    def errors(self) -> Dict[int, tuple]:
        """{rank: (exception type name, message)} of the ranks that raised."""
        return {r: (o[1], o[2]) for r, o in self.outcomes.items() if o[0] == "error"}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def loopback_env() -> Dict[str, str]:
    """Environment that keeps gloo on the loopback interface."""
    return {"GLOO_SOCKET_IFNAME": "lo", "MASTER_ADDR": "127.0.0.1"}


def _entry(fn: Callable, rank: int, world: int, port: int, results, args) -> None:
    import torch
    import torch.distributed as dist

    os.environ.update(loopback_env())
    torch.set_num_threads(1)
    try:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                                timeout=datetime.timedelta(seconds=COLLECTIVE_TIMEOUT_S))
        try:
            value = fn(rank, world, *args)
            buffer = io.BytesIO()
            torch.save(value, buffer)  # bytes, not shared-memory handles that die with the process
            results.put((rank, ("ok", buffer.getvalue())))
        finally:
            if dist.is_initialized():
                dist.destroy_process_group()
    except BaseException as e:  # reported to the parent, which fails the test
        results.put((rank, ("error", type(e).__name__, str(e), traceback.format_exc())))


def run_ranks(fn: Callable, world: int, *args, timeout: float = DEFAULT_TIMEOUT_S) -> List[Any]:
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=_entry, args=(fn, rank, world, port, results, args), daemon=True)
             for rank in range(world)]
    for p in procs:
        p.start()
    outcomes: Dict[int, tuple] = {}
    try:
        deadline = time.monotonic() + timeout
        while len(outcomes) < world:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"distributed run timed out after {timeout:.0f} s; ranks that finished: "
                                     f"{sorted(outcomes)} (a hang?)")
            try:
                rank, outcome = results.get(timeout=min(left, 1.0))
                outcomes[rank] = outcome
            except queue.Empty:
                dead = [i for i, p in enumerate(procs) if p.exitcode not in (None, 0) and i not in outcomes]
                if dead:
                    raise AssertionError(f"ranks {dead} died (exit codes {[procs[i].exitcode for i in dead]}) "
                                         f"without reporting")
    finally:
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
                p.join()
    if any(o[0] == "error" for o in outcomes.values()):
        raise RankError(outcomes)
    return [torch.load(io.BytesIO(outcomes[r][1]), weights_only=False) for r in range(world)]
