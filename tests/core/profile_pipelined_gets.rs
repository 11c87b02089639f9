//! A native workload for profiling the session's data path (`valgrind --tool=callgrind` on the
//! `core` test binary, `--ignored pipelined_gets`): GET with pipeline 16, as in `make bench`. Ignored by default; it asserts only
//! that the bytes pass through.

use crate::support::{cmd, World};
use redis_idle_guard::config::Config;

#[test]
#[ignore]
fn pipelined_gets() {
    let mut w = World::new(Config::default());
    let one = cmd(&["GET", "key:000000000042"]);
    let batch: Vec<u8> = one.repeat(16);
    let reply: Vec<u8> = b"$16\r\nxxxxxxxxxxxxxxxx\r\n".repeat(16);
    for _ in 0..20_000 {
        w.now += 1;
        w.client(&batch);
        w.server(&reply);
    }
    assert_eq!(w.to_client.len(), reply.len() * 20_000);
}
