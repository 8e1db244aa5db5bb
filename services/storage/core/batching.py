"""Group commit: many concurrent writes acknowledged by one durable transaction.

A durable one-row commit is fsync-bound (DESIGN.md: 0.5 to 3k per second here), so storage batches the writes
that arrive while a commit is running into the next one, and answers each request only after the
transaction holding it is on disk (invariant 9: a reply that says done means durable).

If a batch fails, its requests are retried one by one, so one bad request (which the engine refuses
with a :class:`~shared.MeshError`) gets its own error and cannot fail the others.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

from shared import MeshError

Item = TypeVar("Item")
Result = TypeVar("Result")

#: Requests one transaction takes at most: bounds how long one commit holds the engine.
MAX_BATCH = 512


class GroupCommit(Generic[Item, Result]):
    """Queue items; ``commit(items)`` (async, runs the engine's batch write) returns one result per
    item in order. :meth:`submit` resolves once the item's transaction is durable."""

    def __init__(self, commit: Callable[[list[Item]], Awaitable[list[Result]]]) -> None:
        self._commit = commit
        self._pending: list[tuple[Item, asyncio.Future[Result]]] = []
        self._task: asyncio.Task[None] | None = None

    async def submit(self, item: Item) -> Result:
        """Write ``item`` in the next group commit; raises what the engine raised for it."""
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._drain(), name="storage-group-commit")
        # A caller that gives up must not cancel the write the others share.
        return await asyncio.shield(future)

    async def _drain(self) -> None:
        while self._pending:
            batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
            try:
                results = await self._commit([item for item, _ in batch])
            except MeshError:
                if len(batch) == 1:
                    await self._settle_one(batch[0])
                    continue
                for entry in batch:
                    await self._settle_one(entry)
                continue
            except Exception as exc:  # noqa: BLE001 - every waiter must hear of the failure
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for (_, future), result in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result(result)

    async def _settle_one(self, entry: tuple[Item, asyncio.Future[Result]]) -> None:
        item, future = entry
        try:
            (result,) = await self._commit([item])
        except Exception as exc:  # noqa: BLE001 - the error belongs to this one request
            if not future.done():
                future.set_exception(exc)
        else:
            if not future.done():
                future.set_result(result)
