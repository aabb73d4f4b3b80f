"""adapters.gate: listeners that cannot be held open, and the process's file budget (issue 22).

Real sockets on loopback: a flood of half-sent requests against the liveness endpoint, as the
red team's against the intake (whose own gate tests are in test_intake.py).
"""

from __future__ import annotations

import asyncio
import logging
import resource
import time
import urllib.request

import pytest

from runbook_operator.adapters import gate


def test_a_listener_holds_at_most_a_quarter_of_the_open_files_limit() -> None:
    assert gate.open_files_budget(256, 1024) == 256
    assert gate.open_files_budget(256, 400) == 100
    assert gate.open_files_budget(256, 2) == 1
    assert gate.open_files_budget(256, resource.RLIM_INFINITY) == 256


def test_the_soft_open_files_limit_is_raised_to_the_hard_one() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    low = 256 if hard == resource.RLIM_INFINITY or hard > 512 else hard // 2
    assert low < hard, f"a hard limit of {hard} leaves nothing to raise"
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (low, hard))
        before, now = gate.raise_open_files_limit()
        assert before == low and now > low
        assert resource.getrlimit(resource.RLIMIT_NOFILE) == (now, hard)
        assert gate.raise_open_files_limit() == (now, now)  # already there: nothing to do
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


async def test_the_liveness_endpoint_answers_and_cannot_be_held_open(monkeypatch: pytest.MonkeyPatch) -> None:
    """Kopf's own endpoint (aiohttp, no deadline for a request's head) kept every half-sent
    request open: on the pod's address, anyone could spend the operator's files there."""
    monkeypatch.setattr(gate, "HEALTH_TIMEOUT", 0.3)
    monkeypatch.setattr(gate, "HEALTH_CONNECTIONS", 4)
    health = await gate.serve_health("127.0.0.1", 0, "/healthz", logging.getLogger("test.health"))
    try:
        held = [await asyncio.open_connection("127.0.0.1", health.port) for _ in range(20)]
        for _, writer in held:
            writer.write(b"GET /heal")  # half a request line, and nothing more
        started = time.monotonic()
        answers = await asyncio.wait_for(asyncio.gather(*(reader.read() for reader, _ in held)), 5)
        waited = time.monotonic() - started
        busy = [a for a in answers if a.startswith(b"HTTP/1.1 503")]
        assert len(busy) == 16 and answers.count(b"") == 4, answers  # 16 refused at once, 4 closed at 0.3 s
        assert b"the liveness endpoint has too many connections open" in busy[0]
        assert 0.2 < waited < 2, waited
        assert health.connections == 0
        for _, writer in held:
            writer.close()

        def probe() -> tuple[int, bytes]:
            with urllib.request.urlopen(f"http://127.0.0.1:{health.port}/healthz", timeout=5) as answer:
                return answer.status, answer.read()

        assert await asyncio.to_thread(probe) == (200, b"{}")
    finally:
        await health.cleanup()
