"""Lock wake-ups from a listener thread to blocking waiters (threads) and async ones (tasks).

Nothing is timed: a waiter is woken when its event or future is set, and the tests bound every
wait far above the time a wake-up takes.
"""

from __future__ import annotations

import asyncio
import threading

from django_statemodes.providers.wakeups import Wakeups

PATIENCE = 60.0


def test_a_thread_is_woken_by_a_wake_from_another_thread() -> None:
    wakeups = Wakeups()
    woken = threading.Event()
    registered = threading.Event()

    def waiter() -> None:
        with wakeups.expecting("s1") as event:
            registered.set()
            if event.wait(PATIENCE):
                woken.set()

    thread = threading.Thread(target=waiter)
    thread.start()
    assert registered.wait(PATIENCE)
    threading.Thread(target=wakeups.wake, args=("s1",)).start()  # the listener's thread
    thread.join(PATIENCE)
    assert woken.is_set()
    assert wakeups.waiters() == 0  # unregistered on the way out


def test_a_wake_only_wakes_the_waiters_of_its_key() -> None:
    wakeups = Wakeups()
    with wakeups.expecting("s1") as mine, wakeups.expecting("s2") as theirs:
        assert wakeups.waiters() == 2
        wakeups.wake("s2")
        assert theirs.is_set() and not mine.is_set()
        wakeups.wake("nobody waits for this")
    assert wakeups.waiters() == 0


def test_a_wake_before_the_wait_is_not_lost() -> None:
    # Registered first, then the release, then the wait: the event is already set.
    wakeups = Wakeups()
    with wakeups.expecting("s1") as event:
        wakeups.wake("s1")
        assert event.wait(0)


def test_a_task_is_woken_by_a_wake_from_another_thread() -> None:
    wakeups = Wakeups()

    async def scenario() -> list[str]:
        events: list[str] = []
        registered = asyncio.Event()

        async def waiter(name: str) -> None:
            async with wakeups.aexpecting("s1") as future:
                registered.set()
                await asyncio.wait_for(future, PATIENCE)
                events.append(name)

        tasks = [asyncio.ensure_future(waiter(f"task-{i}")) for i in range(3)]
        await registered.wait()
        while wakeups.waiters() < 3:
            await asyncio.sleep(0)
        events.append("waking")
        thread = threading.Thread(target=wakeups.wake, args=("s1",))
        thread.start()  # wake() runs off the loop: the futures are set by call_soon_threadsafe
        await asyncio.wait_for(asyncio.gather(*tasks), PATIENCE)
        thread.join(PATIENCE)
        return events

    events = asyncio.run(scenario())
    assert events[0] == "waking" and sorted(events[1:]) == ["task-0", "task-1", "task-2"]
    assert wakeups.waiters() == 0


def test_wake_all_wakes_threads_and_tasks_of_every_key() -> None:
    wakeups = Wakeups()

    async def scenario() -> bool:
        with wakeups.expecting("s1") as event:
            async with wakeups.aexpecting("s2") as future:
                await asyncio.to_thread(wakeups.wake_all)
                await asyncio.wait_for(future, PATIENCE)
                return event.is_set()

    assert asyncio.run(scenario())


def test_a_wake_for_a_closed_loop_is_dropped_quietly() -> None:
    wakeups = Wakeups()
    loop = asyncio.new_event_loop()
    future: asyncio.Future[None] = loop.create_future()
    with wakeups._mutex:
        wakeups._futures["s1"] = {(loop, future)}
    loop.close()
    wakeups.wake("s1")  # the waiter's loop is gone: no error for the listener thread
    assert not future.done()


def test_a_cancelled_async_waiter_unregisters() -> None:
    wakeups = Wakeups()

    async def scenario() -> None:
        async def waiter() -> None:
            async with wakeups.aexpecting("s1") as future:
                await future

        task = asyncio.ensure_future(waiter())
        while wakeups.waiters() == 0:
            await asyncio.sleep(0)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    asyncio.run(scenario())
    assert wakeups.waiters() == 0
    wakeups.wake("s1")  # nothing left to wake
