"""Auto-pipelining of the hot scripts (engine/autopipe.py), against the real Redis: concurrent
calls share round trips, each still gets its own answer or its own error, and a Redis that lost
its script cache or stopped answering is handled like a lone call would be."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from engine.autopipe import ScriptPipeline, pack


def test_pack_speaks_resp() -> None:
    assert pack(("EVALSHA", b"ab", 2, "k1", "é")) == (
        b"*5\r\n$7\r\nEVALSHA\r\n$2\r\nab\r\n$1\r\n2\r\n$2\r\nk1\r\n$2\r\n\xc3\xa9\r\n"
    )
    assert pack(("X", -15, 2**53)) == b"*3\r\n$1\r\nX\r\n$3\r\n-15\r\n$16\r\n9007199254740992\r\n"
    for bad in (1.5, True, None):
        with pytest.raises(TypeError):
            pack(("X", bad))


# Keeps Redis busy for ARGV[1] seconds (DEBUG SLEEP is disabled on many servers).
BUSY_LOOP = """
local function now() local t = redis.call('TIME') return t[1] + t[2] / 1e6 end
local until_ = now() + tonumber(ARGV[1])
while now() < until_ do end
return 1
"""


@pytest.fixture
async def pipeline(redis: Any) -> Any:
    pipe = ScriptPipeline(redis)
    yield pipe
    await pipe.aclose()


async def test_concurrent_calls_share_round_trips_and_keep_their_answers(
    redis: Any, pipeline: ScriptPipeline, monkeypatch: Any
) -> None:
    echo = redis.register_script("return {KEYS[1], ARGV[1], redis.call('INCR', KEYS[2])}")
    await redis.delete("autopipe:n")
    trips: list[int] = []
    original = pipeline._roundtrip

    async def counted(batch: list[Any]) -> list[Any]:
        trips.append(len(batch))
        return await original(batch)

    monkeypatch.setattr(pipeline, "_roundtrip", counted)
    results = await asyncio.gather(
        *(pipeline(echo, [f"k{i}", "autopipe:n"], [i]) for i in range(200))
    )
    # Each call has its own answer, and each script ran once, on its own (INCR saw 1..200).
    assert [r[:2] for r in results] == [[f"k{i}".encode(), str(i).encode()] for i in range(200)]
    assert sorted(r[2] for r in results) == list(range(1, 201))
    assert sum(trips) == 200 and len(trips) <= 3


async def test_an_error_fails_only_its_own_call(redis: Any, pipeline: ScriptPipeline) -> None:
    script = redis.register_script("return redis.call('INCR', KEYS[1])")
    await redis.set("autopipe:text", "not a number")
    await redis.delete("autopipe:a", "autopipe:b")
    results = await asyncio.gather(
        pipeline(script, ["autopipe:a"], []),
        pipeline(script, ["autopipe:text"], []),
        pipeline(script, ["autopipe:b"], []),
        return_exceptions=True,
    )
    assert results[0] == 1 and results[2] == 1
    assert "not an integer" in str(results[1])
    assert await pipeline(script, ["autopipe:a"], []) == 2  # the connection is still in step


async def test_a_flushed_script_cache_is_loaded_again(redis: Any, pipeline: ScriptPipeline) -> None:
    script = redis.register_script("return ARGV[1] .. '!'")
    assert await pipeline(script, [], ["a"]) == b"a!"
    await redis.script_flush()
    results = await asyncio.gather(*(pipeline(script, [], [str(i)]) for i in range(20)))
    assert results == [f"{i}!".encode() for i in range(20)]


async def test_a_redis_that_stops_answering_fails_the_batch_within_its_deadline(
    redis: Any, pipeline: ScriptPipeline, monkeypatch: Any
) -> None:
    monkeypatch.setattr("engine.autopipe.BATCH_TIMEOUT_S", 0.5)
    script = redis.register_script("return 1")
    assert await pipeline(script, [], []) == 1
    # Redis busy for a second (a slow script elsewhere): the batch times out, not hangs.
    busy = redis.register_script(BUSY_LOOP)
    sleeper = asyncio.create_task(busy(args=[1.0]))
    await asyncio.sleep(0.05)
    started = time.monotonic()
    results = await asyncio.gather(
        *(pipeline(script, [], []) for _ in range(5)), return_exceptions=True
    )
    assert all(isinstance(r, TimeoutError) for r in results), results
    assert time.monotonic() - started < 0.9
    await sleeper
    assert await pipeline(script, [], []) == 1  # a new connection, in step again
