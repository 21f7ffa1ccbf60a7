"""How the daemon's commands leave: an urgent lane ahead of everything, and a windowed bulk lane.

Each tick splits the due racks in two (`CommandBook.due_lanes`):
- urgent: racks whose GPUs draw now more than the sum of their new caps, so a limit is exceeded
  until the command lands. They are built and handed to the MQTT client at once, by the tick
  that found them, whatever else is being sent; no window holds them back.
- bulk: every other due rack, in the book's order (lowering first, then the largest moves). One
  long-lived task sends them in windows of `BULK_WINDOW` commands and hands the client the next
  window only once the broker has acknowledged the last. At most one window is ever ahead of an
  urgent command in the connection (the client's queue, the socket, the broker), so a fleet-wide
  move of 10k racks delays it by one window, not by the burst.
Between ticks, protective cuts (`controller.protect`) resend racks their caps in force on a third
lane, `protect`, handed to the client at once like urgent commands. They do not wait for the
daemon's lock (held through a whole urgent send and each bulk window), only for a diff that a
worker thread is running over the book, and never overtake an urgent command already built.
Each tick replaces the bulk plan with its own ordered list, so a burst is never queued behind
itself: racks not yet sent stay due and go out built from the newest decision.

Commands are QoS 1; one that the broker does not acknowledge within the MQTT timeout makes every
rack due again, as does a publish the client refuses (the connection is gone; the reconnect
resends every rack's command anyway).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

import aiomqtt
import numpy as np
import structlog
from numpy.typing import NDArray

from controller import wire
from controller.command_book import CommandBook
from controller.mqtt_client import Client
from controller.runtime import Runtime
from policies.decision import Decision

log = structlog.get_logger("rheostat.controller")

#: Bulk commands awaiting the broker's acknowledgement at most; also the most that can be ahead of
#: an urgent command. A window of 32-GPU commands is about 100 kB, which a loaded broker takes a
#: few ms to route.
BULK_WINDOW = 128

#: Urgent commands handed to the client per slice; between slices other tasks get a turn (a
#: fleet-wide cut can make every rack urgent), but the bulk lane does not.
URGENT_SLICE = 256

#: `protect`: a protective cut (`controller.protect`), sent between ticks like an urgent command.
Lane = Literal["urgent", "bulk", "protect"]


@dataclass(frozen=True, slots=True, kw_only=True)
class SendTimes:
    """Where one send's time went, as `time.monotonic()` stamps. Units: s.

    tick start → decided (snapshot, hooks, decision) → diffed (`due_lanes`) → build started (for
    the bulk lane, after the windows ahead of it) → encoded → published (handed to the client).
    """

    tick_started_s: float
    decided_s: float
    diffed_s: float
    build_started_s: float
    encoded_s: float
    published_s: float


class SendTrace(Protocol):
    """Told of every send (benchmarks use it to break latency down); must return at once."""

    def sent(self, lane: Lane, racks: Sequence[str], times: SendTimes) -> None: ...


@dataclass(eq=False, kw_only=True)
class _Plan:
    """One tick's bulk racks, in order; `sent` of them are out."""

    book: CommandBook
    decision: Decision
    racks: NDArray[np.int64]
    sent: int
    tick_started_s: float
    decided_s: float
    diffed_s: float


class CommandPublisher:
    """The two lanes; `send_due` is called by each tick and after a reconnect, `run` is a task.

    `lock` is the daemon's lock over the command book (a reconnect invalidates it under the same
    lock); the event loop is the only caller.
    """

    def __init__(
        self,
        runtime: Runtime,
        lock: asyncio.Lock,
        *,
        clock: Callable[[], float],
        wall_clock: Callable[[], float] = time.time,
        may_send: Callable[[], bool] = lambda: True,
        trace: SendTrace | None = None,
    ) -> None:
        self._rt = runtime
        self._lock = lock
        #: Monotonic: what the command book times refreshes by. `wall_clock` only stamps
        #: `issued_at` (informational on the wire).
        self._clock = clock
        self._wall_clock = wall_clock
        #: Leadership: a controller that may not command sends nothing, bulk windows included.
        self._may_send = may_send
        self.trace = trace
        self._client: Client | None = None
        self._plan: _Plan | None = None
        self._wake = asyncio.Event()
        #: Set while no worker thread reads or writes the command book (`send_due`'s diff):
        #: all that a protective cut, which runs on the loop's thread, has to wait for.
        self._book_idle = asyncio.Event()
        self._book_idle.set()
        #: Racks whose urgent commands are built but not yet handed to the client: a
        #: protective cut leaves them alone (built later, it would overtake them and the agent
        #: would refuse theirs as older).
        self.urgent_unsent: NDArray[np.int64] = np.zeros(0, np.int64)
        self._window: asyncio.Future[None] | None = None
        #: Urgent sends whose acknowledgements are still awaited.
        self.confirming: set[asyncio.Task[None]] = set()

    def connected(self, client: Client) -> None:
        self._client = client

    def disconnected(self) -> None:
        """Forget the connection's sends: the reconnect makes every rack due again."""
        client, self._client, self._plan = self._client, None, None
        for task in self.confirming:
            task.cancel()
        window, self._window = self._window, None
        if window is not None and not window.done():
            if client is not None:
                client.forget(window)
            window.set_exception(aiomqtt.MqttError("connection lost"))

    @property
    def bulk_pending(self) -> int:
        """Racks of the current bulk plan not yet handed to the client."""
        plan = self._plan
        return 0 if plan is None else int(plan.racks.size - plan.sent)

    @property
    def bulk_busy(self) -> bool:
        """Bulk commands are waiting to be sent or for the broker's acknowledgement."""
        window = self._window
        return self.bulk_pending > 0 or (window is not None and not window.done())

    async def send_due(
        self, *, tick_started_s: float | None = None, decided_s: float | None = None
    ) -> tuple[int, int]:
        """Send the urgent commands now and make the rest the bulk plan: (urgent sent, bulk due).

        Choosing and building run in a worker thread (the diff over 320k GPUs takes ms).
        Skipped while disconnected or before the first decision.
        """
        rt = self._rt
        client, decision, stale = self._client, rt.decision, rt.stale_rack
        if client is None or decision is None or stale is None or not self._may_send():
            return 0, 0
        async with self._lock:
            book = rt.book
            power_w, last_seen_s = rt.fleet.power_w, rt.fleet.rack_last_seen_s

            def choose() -> tuple[
                float, float, float, list[tuple[str, bytes]], NDArray[np.int64], NDArray[np.int64]
            ]:
                diff_started_s = time.monotonic()
                now_s = self._clock()
                urgent, rest = book.due_lanes(
                    decision,
                    now_s=now_s,
                    stale_rack=stale,
                    last_seen_s=last_seen_s,
                    power_w=power_w,
                )
                diffed_s = time.monotonic()
                messages = (
                    book.build(decision, urgent, now_s=now_s, issued_at_s=self._wall_clock())
                    if urgent.size
                    else []
                )
                return diff_started_s, diffed_s, time.monotonic(), messages, urgent, rest

            self._book_idle.clear()
            try:
                (
                    diff_started_s,
                    diffed_s,
                    encoded_s,
                    messages,
                    urgent,
                    rest,
                ) = await asyncio.to_thread(choose)
            finally:
                self._book_idle.set()
            started_s = diff_started_s if tick_started_s is None else tick_started_s
            decided = diff_started_s if decided_s is None else decided_s
            self._plan = (
                _Plan(
                    book=book,
                    decision=decision,
                    racks=rest,
                    sent=0,
                    tick_started_s=started_s,
                    decided_s=decided,
                    diffed_s=diffed_s,
                )
                if rest.size
                else None
            )
            if rest.size:
                self._wake.set()
            if messages:
                times = SendTimes(
                    tick_started_s=started_s,
                    decided_s=decided,
                    diffed_s=diffed_s,
                    build_started_s=diffed_s,
                    encoded_s=encoded_s,
                    published_s=0.0,
                )
                futures: list[asyncio.Future[None]] = []
                try:
                    for first in range(0, len(messages), URGENT_SLICE):
                        self.urgent_unsent = urgent[first:]
                        if first:
                            await asyncio.sleep(0)  # ingest gets a turn; the bulk lane waits
                        part = messages[first : first + URGENT_SLICE]
                        future = self._publish(client, book, "urgent", part, times)
                        if future is None:
                            break
                        futures.append(future)
                finally:
                    self.urgent_unsent = urgent[:0]
                if futures:
                    self._confirm_later(client, futures, book)
        return len(messages), int(rest.size)

    async def send_in_force(
        self,
        book: CommandBook,
        racks: NDArray[np.int64],
        *,
        scan_started_s: float,
        detected_s: float,
    ) -> int:
        """Protective cuts: resend `racks` their caps in force (`CommandBook.build_in_force`)
        now, on the urgent path, without waiting for a tick; returns the commands handed over.

        Not behind the daemon's lock: that is held through a whole urgent send (slices with
        turns for other tasks between them) and each bulk window, all on this thread, where a
        cut may come between any two awaits. Only a diff in a worker thread touches the book
        concurrently, and that is waited for. `book` is the one `racks` were chosen from: after
        a reload swapped it, nothing is sent (the racks' indices may mean other racks).
        `scan_started_s` and `detected_s` (`time.monotonic()`) are the scan's, for the trace.
        """
        rt = self._rt
        while not self._book_idle.is_set():  # set again and cleared before this task ran
            await self._book_idle.wait()
        # From here to the hand-over, no await: nothing else touches the book meanwhile.
        client, decision = self._client, rt.decision
        if client is None or decision is None or not racks.size or not self._may_send():
            return 0
        if rt.book is not book:
            return 0
        if self.urgent_unsent.size:
            racks = racks[~np.isin(racks, self.urgent_unsent)]
            if not racks.size:
                return 0
        idle_s = time.monotonic()
        messages = book.build_in_force(
            decision, racks, now_s=self._clock(), issued_at_s=self._wall_clock()
        )
        times = SendTimes(
            tick_started_s=scan_started_s,
            decided_s=detected_s,
            diffed_s=detected_s,
            build_started_s=idle_s,
            encoded_s=time.monotonic(),
            published_s=0.0,
        )
        future = self._publish(client, book, "protect", messages, times)
        if future is None:
            return 0
        self._confirm_later(client, [future], book)
        return len(messages)

    def _confirm_later(
        self, client: Client, futures: list[asyncio.Future[None]], book: CommandBook
    ) -> None:
        task = asyncio.create_task(self._confirm(client, futures, book))
        self.confirming.add(task)
        task.add_done_callback(self.confirming.discard)

    async def run(self) -> None:
        """The bulk lane: the current plan, window by window, each once the last is acknowledged."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            while (window := await self._send_window()) is not None:
                future, client, book = window
                self._window = future
                try:
                    async with asyncio.timeout(self._rt.policy.config.mqtt.timeout_s):
                        await future
                except TimeoutError:
                    client.forget(future)
                    async with self._lock:
                        book.invalidate()
                    log.warning("commands not confirmed; will resend")
                    break
                except aiomqtt.MqttError:
                    break  # the connection is gone: the reconnect resends every rack's command
                finally:
                    self._window = None

    async def _send_window(self) -> tuple[asyncio.Future[None], Client, CommandBook] | None:
        """Build and hand over the plan's next window; None when there is nothing to send."""
        async with self._lock:
            plan, client = self._plan, self._client
            if plan is not None and plan.book is not self._rt.book:
                plan = self._plan = None  # a reload brought another fleet: its book starts over
            if plan is None or client is None or not self._may_send():
                return None
            racks = plan.racks[plan.sent : plan.sent + BULK_WINDOW]
            plan.sent += racks.size
            if plan.sent >= plan.racks.size:
                self._plan = None
            build_started_s = time.monotonic()
            messages = plan.book.build(
                plan.decision, racks, now_s=self._clock(), issued_at_s=self._wall_clock()
            )
            times = SendTimes(
                tick_started_s=plan.tick_started_s,
                decided_s=plan.decided_s,
                diffed_s=plan.diffed_s,
                build_started_s=build_started_s,
                encoded_s=time.monotonic(),
                published_s=0.0,
            )
            future = self._publish(client, plan.book, "bulk", messages, times)
            return None if future is None else (future, client, plan.book)

    def _publish(
        self,
        client: Client,
        book: CommandBook,
        lane: Lane,
        messages: list[tuple[str, bytes]],
        times: SendTimes,
    ) -> asyncio.Future[None] | None:
        site = self._rt.policy.site
        try:
            future = client.publish_batch(
                ((wire.command_topic(site, rack), payload) for rack, payload in messages), qos=1
            )
        except aiomqtt.MqttError as exc:
            book.invalidate()  # resend everything once the connection is back
            self._plan = None
            log.warning("commands not sent; will resend", error=str(exc), lane=lane)
            return None
        if self.trace is not None:
            self.trace.sent(
                lane,
                [rack for rack, _ in messages],
                dataclasses.replace(times, published_s=time.monotonic()),
            )
        return future

    async def _confirm(
        self, client: Client, futures: list[asyncio.Future[None]], book: CommandBook
    ) -> None:
        """Wait for an urgent send's acknowledgements; a missing one makes every rack due again."""
        try:
            async with asyncio.timeout(self._rt.policy.config.mqtt.timeout_s):
                await asyncio.gather(*futures)
        except TimeoutError:
            for future in futures:
                client.forget(future)
            async with self._lock:
                book.invalidate()
            log.warning("commands not confirmed; will resend")
