"""Shared pieces of the benchmarks (bench.py, scale.py): lab import, machine and version facts,
/proc readings, an Envoy with redis_proxy, and small formatting helpers."""

from __future__ import annotations

import hashlib
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence

_TESTS = Path(__file__).resolve().parents[1]
if str(_TESTS) not in sys.path:
    sys.path.insert(0, str(_TESTS))  # the lab is the package tests/lab

from lab.envoy_proxy import EnvoyProxy, envoy_binary  # noqa: E402
from lab.procs import REPO_ROOT  # noqa: E402
from lab.redis_server import redis_server_binary  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
BENCH_DIR = REPO_ROOT / ".lab" / "bench"


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ---- /proc ------------------------------------------------------------------------------------

def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads) in seconds, from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # fields[0] is field 3 (state); utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * PAGE


def loadavg() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


# ---- facts for report headers -----------------------------------------------------------------

def _first_line(argv: Sequence[str]) -> str:
    try:
        out = subprocess.run(list(argv), capture_output=True, text=True, timeout=30)
        text = (out.stdout or out.stderr).strip()
        return text.splitlines()[-1] if text else "?"
    except (OSError, subprocess.SubprocessError) as exc:
        return f"? ({exc})"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def sha256_short(path: Path) -> str:
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:12]
    except OSError:
        return "missing"


def git_state() -> str:
    head = _first_line(["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"])
    try:
        dirty = subprocess.run(["git", "-C", str(REPO_ROOT), "status", "--porcelain",
                                "--untracked-files=no"],
                               capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        dirty = ""
    return head + (" + uncommitted changes" if dirty else "")


def machine_facts(wasm: Optional[Path] = None) -> Dict[str, str]:
    envoy_version = _first_line([envoy_binary(), "--version"])
    # "envoy  version: <sha>/1.40.0/Clean/RELEASE/BoringSSL" → keep the interesting part.
    if "version:" in envoy_version:
        envoy_version = envoy_version.split("version:", 1)[1].strip()
    facts = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": f"{os.cpu_count()} × {cpu_model()}, {platform.system()} {platform.release()}",
        "envoy": envoy_version,
        "redis": _first_line([redis_server_binary(), "--version"]),
        "git": git_state(),
    }
    if wasm is not None:
        facts["filter"] = (f"{wasm} ({Path(wasm).stat().st_size if Path(wasm).exists() else 0} "
                           f"bytes, sha256 {sha256_short(wasm)})")
    return facts


# ---- Envoy with redis_proxy -------------------------------------------------------------------

def redis_proxy_filter() -> Dict[str, Any]:
    """envoy.filters.network.redis_proxy to the lab's `redis` cluster (one pooled upstream
    connection per worker; Envoy answers PING itself; RESP2 only)."""
    return {
        "name": "envoy.filters.network.redis_proxy",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.redis_proxy.v3.RedisProxy",
            "stat_prefix": "redis",
            "settings": {"op_timeout": "5s"},
            "prefix_routes": {"catch_all_route": {"cluster": "redis"}},
        },
    }


class RedisProxyEnvoy(EnvoyProxy):
    """The lab's Envoy with its listener's filter chain replaced by redis_proxy (same listener
    name, cluster, admin and process handling)."""

    def __init__(self, upstream, **kwargs):
        kwargs.setdefault("name", "envoy-redis-proxy")
        super().__init__(upstream, module=None, **kwargs)

    def bootstrap(self) -> Dict[str, Any]:
        cfg = super().bootstrap()
        cfg["static_resources"]["listeners"][0]["filter_chains"] = [
            {"filters": [redis_proxy_filter()]}]
        return cfg


# ---- numbers ----------------------------------------------------------------------------------

def median(xs: Iterable[float]) -> Optional[float]:
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def percentile(xs: List[float], q: float) -> Optional[float]:
    """Nearest-rank percentile (q in 0..100) of a list."""
    if not xs:
        return None
    s = sorted(xs)
    k = max(0, min(len(s) - 1, int(round(q / 100.0 * len(s) + 0.5)) - 1))
    return s[k]


def spread(xs: Iterable[float]) -> Optional[tuple]:
    xs = [x for x in xs if x is not None]
    return (min(xs), max(xs)) if xs else None


def fmt(v: Optional[float], digits: int = 1, unit: str = "") -> str:
    if v is None:
        return "n/a"
    return f"{v:,.{digits}f}{unit}"


def fmt_range(r: Optional[tuple], digits: int = 1) -> str:
    if r is None:
        return "n/a"
    return f"{r[0]:,.{digits}f}–{r[1]:,.{digits}f}"


def text_table(rows: List[Sequence[Any]], headers: Sequence[str]) -> str:
    rows = [[str(c) for c in r] for r in rows]
    widths = [max(len(str(r[i])) for r in rows + [list(headers)]) for i in range(len(headers))]
    line = "  ".join("-" * w for w in widths)
    out = ["  ".join(str(h).ljust(w) for h, w in zip(headers, widths)), line]
    out += ["  ".join(c.rjust(w) if _numeric(c) else c.ljust(w) for c, w in zip(r, widths))
            for r in rows]
    return "\n".join(out)


def md_table(rows: List[Sequence[Any]], headers: Sequence[str]) -> str:
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def _numeric(c: str) -> bool:
    return bool(c) and (c[0].isdigit() or c[0] in "-–+") and c != "-"
