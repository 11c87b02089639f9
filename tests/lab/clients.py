"""The application side of the incident: a redis.asyncio client with retries off.

run_incident() is the scenario shared by the e2e test and the demo: warm up with SET/GET, then
`rounds` times: idle `idle_s` seconds, then SET + GET, recording errors and the latency of the
first command after the idle spell.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

import redis.asyncio as aioredis
from redis.backoff import NoBackoff
from redis.retry import Retry


def make_async_client(address: Tuple[str, int], *, protocol: int = 3,
                      single_connection_client: bool = True,
                      socket_timeout: Optional[float] = 5.0, **kwargs) -> aioredis.Redis:
    """redis.asyncio client with every retry off, as a latency-sensitive service would run it.

    single_connection_client=True keeps one connection and sends on it without checking it
    first, which is how a dead pooled connection surfaces as "Connection closed by server.".
    (redis-py's ConnectionPool.get_connection looks at the socket before lending it out and
    reconnects if the server already sent a FIN, which hides a Redis `timeout` close, but not a
    silent drop.)
    """
    host, port = address
    return aioredis.Redis(
        host=host, port=port, protocol=protocol,
        single_connection_client=single_connection_client,
        retry=Retry(NoBackoff(), 0), retry_on_error=[],
        socket_timeout=socket_timeout, socket_connect_timeout=5,
        health_check_interval=0,
        **kwargs,
    )


@dataclass
class RoundResult:
    round: int
    ok: bool
    error: Optional[str]
    first_command_s: float  # latency of the first command after the idle spell (or time to error)
    at: Optional[float] = None  # when that command was sent (time.time(), for a timeline)


@dataclass
class IncidentResult:
    label: str
    protocol: int
    idle_s: float
    rounds: List[RoundResult] = field(default_factory=list)
    warmup_at: Optional[float] = None  # when the warm-up SET was sent (time.time())

    @property
    def errors(self) -> List[RoundResult]:
        return [r for r in self.rounds if not r.ok]

    @property
    def error_texts(self) -> List[str]:
        return [r.error for r in self.errors]

    def p50_ok_ms(self) -> Optional[float]:
        xs = [r.first_command_s for r in self.rounds if r.ok]
        return statistics.median(xs) * 1000 if xs else None

    def p50_error_ms(self) -> Optional[float]:
        xs = [r.first_command_s for r in self.rounds if not r.ok]
        return statistics.median(xs) * 1000 if xs else None

    def summary(self) -> str:
        p50 = self.p50_ok_ms()
        return (f"{self.label} RESP{self.protocol}: {len(self.rounds)} rounds, "
                f"{len(self.errors)} errors, p50 first command after idle "
                f"{'n/a' if p50 is None else f'{p50:.2f} ms'}"
                + (f", e.g. {self.errors[0].error!r}" if self.errors else ""))


def incident_key(key: str, label: str, protocol: int) -> str:
    """The Redis key a run_incident() client writes: it tells that client's commands apart."""
    return f"{key}:{label}:{protocol}"


async def run_incident(address: Tuple[str, int], *, rounds: int, idle_s: float, protocol: int = 3,
                       label: str = "", key: str = "incident", progress=None,
                       **client_kwargs) -> IncidentResult:
    """Command → idle → command …, retries off; never raises for Redis errors, records them."""
    result = IncidentResult(label=label, protocol=protocol, idle_s=idle_s)
    client = make_async_client(address, protocol=protocol, **client_kwargs)
    key = incident_key(key, label, protocol)
    try:
        result.warmup_at = time.time()
        await client.set(key, "warmup")
        assert await client.get(key) == b"warmup"
        for i in range(1, rounds + 1):
            await asyncio.sleep(idle_s)
            at, t0 = time.time(), time.perf_counter()
            try:
                await client.set(key, str(i))
                elapsed = time.perf_counter() - t0
                got = await client.get(key)
                if got != str(i).encode():
                    raise AssertionError(f"GET returned {got!r}, expected {i}")
                result.rounds.append(RoundResult(i, True, None, elapsed, at))
            except (aioredis.RedisError, OSError, asyncio.TimeoutError) as exc:
                elapsed = time.perf_counter() - t0
                result.rounds.append(RoundResult(i, False, f"{type(exc).__name__}: {exc}", elapsed,
                                                 at))
            if progress:
                progress(label, result.rounds[-1])
    finally:
        await client.aclose()
    return result
