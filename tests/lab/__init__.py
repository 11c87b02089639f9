"""The redis-idle-guard test lab: real redis-server and Envoy processes on loopback, shared by
the end-to-end tests (tests/e2e) and the demo (tests/lab/demo.py).

Every process the lab starts is registered in `lab.procs`; it is stopped by its context manager,
by an atexit hook, and (if the Python process dies abruptly) by the kernel through
PR_SET_PDEATHSIG. Only 127.0.0.1 is ever used, plus the private 10.199.0.0/16 addresses of the
fault lab's network namespaces (faults.py: NAT timeouts, black holes, Redis restarts and stalls
on the path from Envoy to Redis; matrix.py: the idle-death matrix built on them).
"""

from .procs import LabError, ManagedProcess, lab_dir, live_processes, stop_all
from .redis_server import RedisServer, RedisStartError
from .envoy_proxy import EnvoyProxy, EnvoyStartError
from .module import FilterModule, default_native_path, default_wasm_path
from .resp import RespReader, RawConnection, encode_command
from .clients import IncidentResult, RoundResult, make_async_client, run_incident

__all__ = [
    "LabError",
    "ManagedProcess",
    "lab_dir",
    "live_processes",
    "stop_all",
    "RedisServer",
    "RedisStartError",
    "EnvoyProxy",
    "EnvoyStartError",
    "FilterModule",
    "default_native_path",
    "default_wasm_path",
    "RespReader",
    "RawConnection",
    "encode_command",
    "IncidentResult",
    "RoundResult",
    "make_async_client",
    "run_incident",
]
