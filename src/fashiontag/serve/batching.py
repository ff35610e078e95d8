"""Micro-batching: photos from concurrent requests share one forward pass.

Each request's decoded photos go on a queue, and one worker gathers what is pending (up to `max_batch` photos;
`max_wait_ms` > 0 also waits that long for more) into a single forward pass, run in a thread so the event loop keeps
accepting uploads meanwhile. While one pass runs the next batch fills up, so under load the batches grow by
themselves and throughput rises instead of latency; waiting on top of that only added latency in
benchmarks/serve.py, hence no wait by default.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from fashiontag.inference.tagger import PhotoResult, Tagger
from fashiontag.serve.errors import ServeError


@dataclass
class _Job:
    pixels: np.ndarray
    top_k: int
    future: asyncio.Future
    titles: list[str] | None = None


class MicroBatcher:
    """Gathers photos from concurrent requests into one `tagger.tag_pixels` call, run in its own inference thread;
    each request renders its own results (top_k, min_confidence) from them."""

    def __init__(self, tagger: Tagger, max_batch: int = 64, max_wait_ms: float = 0.0):
        self.tagger, self.max_batch, self.max_wait = tagger, max_batch, max_wait_ms / 1000
        self.pending = 0  # photos queued or being tagged
        self.stats = {"requests": 0, "photos": 0, "batches": 0, "largest_batch": 0, "busy_seconds": 0.0}
        self._queue: asyncio.Queue[_Job] | None = None
        self._task: asyncio.Task | None = None
        self._carry: _Job | None = None
        self._executor: ThreadPoolExecutor | None = None
        self.ready = False

    async def start(self, warm_up: bool = True) -> None:
        self._queue = asyncio.Queue()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="fashiontag-infer")
        if warm_up:  # the first forward pass allocates and picks kernels: do it before the first customer
            blank = np.full((1, *self.tagger.input_hw, 3), 255, np.uint8)
            await asyncio.get_running_loop().run_in_executor(self._executor, self.tagger.tag_pixels, blank)
        self._task = asyncio.create_task(self._run(), name="fashiontag-batcher")
        self.ready = True

    async def stop(self) -> None:
        self.ready = False
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        leftover = [self._carry] if self._carry else []
        while self._queue and not self._queue.empty():
            leftover.append(self._queue.get_nowait())
        for job in leftover:
            if not job.future.done():
                job.future.set_exception(ServeError(503, "shutting_down", "the server is shutting down"))
        if self._executor:
            self._executor.shutdown(wait=True)

    async def tag(self, pixels: np.ndarray, top_k: int = 1, titles: list[str] | None = None) -> list[PhotoResult]:
        """Results (see Tagger.tag_pixels) for (N, H, W, 3) uint8 photos (and their titles), with up to top_k - 1
        runners-up."""
        if not self.ready or self._queue is None:
            raise ServeError(503, "not_ready", "the model is still loading")
        future = asyncio.get_running_loop().create_future()
        self.pending += len(pixels)
        self.stats["requests"] += 1
        try:
            self._queue.put_nowait(_Job(pixels, top_k, future, titles))
            return await future
        finally:
            self.pending -= len(pixels)

    async def _gather(self) -> list[_Job]:
        loop = asyncio.get_running_loop()
        first, self._carry = self._carry or await self._queue.get(), None
        jobs, size = [first], len(first.pixels)
        deadline = loop.time() + self.max_wait
        while size < self.max_batch:
            try:
                job = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    job = await asyncio.wait_for(self._queue.get(), remaining)
                except asyncio.TimeoutError:
                    break
            if size + len(job.pixels) > self.max_batch:
                self._carry = job  # starts the next batch; a request is never split across passes
                break
            jobs.append(job)
            size += len(job.pixels)
        return [j for j in jobs if not j.future.done()]  # a client that went away is not tagged

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            jobs = await self._gather()
            if not jobs:
                continue
            pixels = jobs[0].pixels if len(jobs) == 1 else np.concatenate([j.pixels for j in jobs])
            # A request without titles joins one with titles as photos whose title is "" (none).
            titles = ([t for j in jobs for t in (j.titles or [""] * len(j.pixels))]
                      if any(j.titles for j in jobs) else None)
            started = time.perf_counter()
            try:
                results = await loop.run_in_executor(self._executor, self.tagger.tag_pixels, pixels,
                                                     max(j.top_k for j in jobs), None, titles)
            except Exception as e:  # noqa: BLE001 - reported to every waiting request, the worker lives on
                for j in jobs:
                    if not j.future.done():
                        j.future.set_exception(e)
                continue
            self.stats["busy_seconds"] += time.perf_counter() - started
            self.stats["batches"] += 1
            self.stats["photos"] += len(pixels)
            self.stats["largest_batch"] = max(self.stats["largest_batch"], len(pixels))
            i = 0
            for j in jobs:
                if not j.future.done():
                    j.future.set_result(results[i:i + len(j.pixels)])
                i += len(j.pixels)

