"""The pictures of `make demo` (tests/lab/plot.py) drawn from small recorded data, and the Redis
watch that records the demo's keepalives and connections, against a real redis-server."""

from __future__ import annotations

import csv
import time
from pathlib import Path

from PIL import Image

from lab import RawConnection
from lab.plot import (DPI, WIDTH_IN, Command, Connection, Timeline, main, plot_demo,
                      read_matrix_csv, timelines_from_json, timelines_to_json)
from lab.redis_watch import RedisWatch

MATRIX_HEAD = ["fault", "fault_title", "chain", "client", "rounds", "errors", "error_texts",
               "latency_p50_ms", "latency_max_ms", "bites_tcp_proxy_alone", "claim", "claim_why",
               "harness_errors"]


def _png_size(path: Path) -> "tuple[int, int]":
    with Image.open(path) as img:
        assert img.format == "PNG"
        return img.size


def test_demo_picture_from_a_timeline(tmp_path):
    plain = Timeline("without the filter", [Command(0.0, True, warmup=True),
                                            Command(3.0, False, "ConnectionError: closed"),
                                            Command(6.0, True)],
                     [], [Connection(0.0, 2.6), Connection(6.0, None)])
    guard = Timeline("with the filter", [Command(0.0, True, warmup=True), Command(3.0, True),
                                         Command(6.0, True)],
                     [1.0, 2.0, 4.0, 5.0], [Connection(0.0, 6.2)])
    text = timelines_to_json([plain, guard], "title", "note")
    again, title, note = timelines_from_json(text)
    assert again == [plain, guard] and (title, note) == ("title", "note")
    png = plot_demo(again, tmp_path / "demo.png", title=title, note=note)
    width, height = _png_size(png)
    assert width == WIDTH_IN * DPI and 300 < height < width


def test_matrix_picture_from_a_csv(tmp_path):
    rows = [MATRIX_HEAD]
    for chain, errors in (("tcp_proxy", 2), ("guard", 0)):
        for client in ("py-sync", "node-ioredis"):
            texts = f"{errors}× TimeoutError: Timeout reading" if errors else ""
            rows.append(["a", "NAT forgets idle flows after 2s, drops silently", chain, client, 2,
                         errors, texts, 1.0, 2.0, "yes", "PASS" if chain == "guard" else "",
                         "", ""])
    data = tmp_path / "matrix-short.csv"
    with open(data, "w", newline="") as fh:
        csv.writer(fh).writerows(rows)
    cells = read_matrix_csv(data)
    assert [(c.chain, c.errors, c.error_texts) for c in cells[:1]] == [
        ("tcp_proxy", 2, {"TimeoutError: Timeout reading": 2})]
    png = tmp_path / "matrix.png"
    assert main(["matrix", str(data), str(png)]) == 0
    assert _png_size(png)[0] == WIDTH_IN * DPI


def test_redis_watch_sees_commands_and_closes(lab):
    """A PING and Redis's idle close (`timeout 1`), as the demo records the filter's keepalives
    and the connections; the watch's own connections outlive the timeout and are left out."""
    redis = lab.redis(timeout=1)
    with RedisWatch(redis.address) as watch:
        idle = RawConnection(redis.address)
        assert idle.command("PING").raw == b"+PONG\r\n"
        sent = time.time()
        with RawConnection(redis.address) as brief:
            brief.command("SET", "watch:key", "1")
        waited, _, _ = idle.wait_eof(5)  # Redis closes it after 1-2 s idle
        idle.close()
        time.sleep(3 * watch.poll_s)
    assert waited > 0.9
    assert len(watch.clients) == 2
    first, second = watch.clients
    assert [c.name for c in first.commands] == ["PING"]
    assert second.commands[0].args == ["SET", "watch:key", "1"]
    assert abs(first.commands[0].at - sent) < 0.5
    assert first.closed is not None and 0.9 < first.closed - first.commands[0].at < 3.5
    assert second.closed is not None and second.closed < first.closed
