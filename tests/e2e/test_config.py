"""(e) Configuration: bad plugin configs are rejected with the field named, by both builds;
good ones work; the shipped envoy/envoy.yaml (Wasm) and envoy/native.yaml validate and run."""

from __future__ import annotations

import json
import re
import subprocess

import pytest

from lab import EnvoyProxy, EnvoyStartError, RawConnection
from lab.envoy_proxy import envoy_binary
from lab.procs import REPO_ROOT, ManagedProcess, unique_workdir

BAD_CONFIGS = [
    ('{"keepalive_interval": "soon"}', "keepalive_interval"),
    ('{"bogus": 1}', "bogus"),
    ('{"keepalive_interval": "1s", "ping_timeout": "-3s"}', "ping_timeout"),
]


@pytest.mark.parametrize("config,field", BAD_CONFIGS, ids=["bad-interval", "unknown-field",
                                                           "bad-timeout"])
def test_bad_config_is_rejected_and_names_the_field(lab, module, config, field):
    redis = lab.redis()
    envoy = EnvoyProxy(redis, module=module, plugin_config=config)
    try:
        envoy.start(ready_timeout=10)
    except EnvoyStartError as exc:
        log = exc.log
        print(f"envoy refused to start (exit {exc.returncode}); log tail:\n"
              + "\n".join(log.splitlines()[-8:]))
    else:
        # It came up: the listener must at least not be serving with a silently ignored config.
        log = envoy.log_text()
        try:
            with RawConnection(envoy.address, timeout=2) as c:
                reply = c.command("PING", timeout=2).raw
        except Exception as exc:  # noqa: BLE001
            reply = repr(exc)
        envoy.stop()
        pytest.fail(f"Envoy accepted plugin config {config} and served PING → {reply!r}; "
                    f"log:\n{log[-3000:]}")
    finally:
        envoy.stop()
    module_lines = [line for line in log.splitlines() if f"[{module.log_component}]" in line]
    assert any(field in line for line in module_lines), (
        f"no {module.log_component} log line names {field!r}:\n" + "\n".join(module_lines[-10:]))


def test_keepalive_off(lab, module):
    """keepalive_interval "0s": the filter forwards bytes and never pings."""
    redis = lab.redis()
    envoy = lab.envoy(redis, module=module, plugin_config={"keepalive_interval": "0s"})
    with RawConnection(envoy.address) as c:
        assert c.command("PING").raw == b"+PONG\r\n"
        assert c.expect_silence(1.2) == b""
        assert c.command("ECHO", "x").raw == b"$1\r\nx\r\n"
    assert envoy.guard_stat("keepalive.sent", 0) == 0


def test_default_config(lab, module):
    """An empty configuration means the defaults (30s / 5s)."""
    redis = lab.redis()
    envoy = lab.envoy(redis, module=module, plugin_config={})
    with RawConnection(envoy.address) as c:
        assert c.command("PING").raw == b"+PONG\r\n"


SHIPPED = {"wasm": "envoy/envoy.yaml", "native": "envoy/native.yaml"}


def _shipped_yaml_for_lab(module, redis_port: int) -> str:
    """The shipped bootstrap of this build, with its ports moved to free ones and the module
    path made absolute."""
    text = (REPO_ROOT / SHIPPED[module.kind]).read_text()
    moves = [(r"port_value: 9901\b", "port_value: 0"),
             (r"port_value: 16379\b", "port_value: 0"),
             (r"port_value: 6379\b", f"port_value: {redis_port}")]
    file = r"filename: \S+libredis_idle_guard\.so" if module.native else \
        r"filename: \S+redis_idle_guard\.wasm"
    moves.append((file, f"filename: {module.path.resolve()}"))
    for old, new in moves:
        text, n = re.subn(old, new, text)
        # The native build names its .so twice: the filter's and the bootstrap extension's.
        expected = 2 if module.native and "libredis" in old else 1
        assert n == expected, f"{SHIPPED[module.kind]} no longer has {expected} of {old!r}"
    return text


def test_shipped_envoy_yaml_validates(module):
    """`envoy --mode validate -c envoy/<build>.yaml` from the repo root (it loads the module from
    where `make build` or `make build-native` puts it, as the file says)."""
    proc = subprocess.run([envoy_binary(), "--mode", "validate", "-c", SHIPPED[module.kind],
                           "--disable-hot-restart"],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]


def test_shipped_envoy_yaml_runs(lab, module):
    """The shipped bootstrap, with its ports moved to free ones, proxies Redis with the filter."""
    redis = lab.redis()
    workdir = unique_workdir("envoy-shipped")
    cfg = workdir / "envoy.yaml"
    cfg.write_text(_shipped_yaml_for_lab(module, redis.port))
    admin_path = workdir / "admin_address"
    proc = ManagedProcess("envoy-shipped", [envoy_binary(), "-c", str(cfg), "--concurrency", "1",
                                            "--disable-hot-restart", "--admin-address-path",
                                            str(admin_path)], workdir / "envoy.log", cwd=workdir)
    proc.start()
    try:
        # Reuse EnvoyProxy's admin helpers on the running process.
        view = EnvoyProxy(redis, module=module)
        view.process, view.workdir = proc, workdir
        view._wait_ready(admin_path, 20)
        with RawConnection(view.address) as c:
            assert c.command("SET", "shipped", "yes").raw == b"+OK\r\n"
            assert c.command("GET", "shipped").raw == b"$3\r\nyes\r\n"
            assert view.guard_stat("connections") == 1
    except Exception:
        print(proc.log_text()[-4000:])
        raise
    finally:
        proc.stop()


@pytest.mark.parametrize("config,field", BAD_CONFIGS[:2], ids=["bad-interval", "unknown-field"])
def test_validate_mode_rejects_bad_config(module, tmp_path, config, field):
    """`envoy --mode validate` loads the module and runs its configure step, so a CI job can
    catch a bad plugin configuration before any rollout."""
    bootstrap = EnvoyProxy(("127.0.0.1", 1), module=module, plugin_config=config).bootstrap()
    cfg = tmp_path / "bootstrap.json"
    cfg.write_text(json.dumps(bootstrap))
    proc = subprocess.run([envoy_binary(), "--mode", "validate", "-c", str(cfg),
                           "--disable-hot-restart"], capture_output=True, text=True, timeout=60)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out[-2000:]
    assert field in out, out[-2000:]
