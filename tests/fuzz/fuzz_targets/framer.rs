//! Fuzz the RESP framer: however the input is cut (including skipping bulk payloads the way the
//! adapter does), it must report the same frames and error as one whole feed, and never panic.
//! The first input byte picks the side, the limits and the piece sizes.
//!
//! Run from the repository root after `cargo install cargo-fuzz` and
//! `mkdir -p tests/fuzz/corpus/framer` (RUSTC_BOOTSTRAP lets the stable
//! toolchain accept the nightly flags cargo-fuzz passes; the env var skips build.rs's wasm build):
//!   REDIS_IDLE_GUARD_SKIP_WASM=1 RUSTC_BOOTSTRAP=1 cargo fuzz run --fuzz-dir tests/fuzz framer \
//!     tests/fuzz/corpus/framer tests/fuzz/seeds -- -dict=tests/fuzz/framer.dict -max_total_time=60
#![no_main]

use libfuzzer_sys::fuzz_target;
use redis_idle_guard::resp::{Frame, Framer, Limits, RespError, Side};

type Outcome = (Vec<Frame>, Result<(), RespError>, u64);

/// Small deterministic piece sizes from a seed (1..=max).
struct Sizes(u32, usize);

impl Sizes {
    fn next(&mut self) -> usize {
        self.0 = self.0.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        1 + (self.0 >> 16) as usize % self.1
    }
}

fn limits(small: bool) -> Limits {
    if small {
        // Small limits so the fuzzer reaches TooDeep and LineTooLong.
        Limits {
            max_depth: 4,
            max_line: 24,
        }
    } else {
        Limits::default()
    }
}

fn whole(side: Side, l: Limits, data: &[u8]) -> Outcome {
    let mut f = Framer::new(side, l);
    let mut out = Vec::new();
    let r = f.feed(data, &mut |fr| out.push(fr.clone()));
    (out, r, f.offset())
}

fn pieces(side: Side, l: Limits, data: &[u8], mut sizes: Sizes, skip: bool) -> Outcome {
    let mut f = Framer::new(side, l);
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < data.len() {
        let s = f.skippable();
        if skip && s > 0 {
            let k = s.min((data.len() - pos) as u64);
            f.skip(k);
            pos += k as usize;
            continue;
        }
        let n = sizes.next().min(data.len() - pos);
        if let Err(e) = f.feed(&data[pos..pos + n], &mut |fr| out.push(fr.clone())) {
            // Poisoned: the same error again.
            assert_eq!(f.feed(b"+", &mut |_| {}), Err(e.clone()));
            return (out, Err(e), 0);
        }
        pos += n;
        assert_eq!(f.offset(), pos as u64);
    }
    (out, Ok(()), f.offset())
}

fuzz_target!(|input: &[u8]| {
    let Some((&ctl, data)) = input.split_first() else {
        return;
    };
    let side = if ctl & 1 == 0 {
        Side::Reply
    } else {
        Side::Request
    };
    let l = limits(ctl & 2 != 0);
    let max = 1 + usize::from(ctl >> 2);
    let seed = u32::from(ctl) * 7919 + data.len() as u32;

    let (frames, res, off) = whole(side, l, data);
    if res.is_ok() {
        assert_eq!(off, data.len() as u64);
    }
    // Frames are ordered, non-empty, within what was consumed.
    let mut prev = 0;
    for f in &frames {
        assert!(
            prev <= f.start && f.start < f.end && f.end <= data.len() as u64,
            "{f:?}"
        );
        prev = f.end;
    }
    let want = (frames, res);
    for (sizes, skip) in [
        (Sizes(seed, max), false),
        (Sizes(seed, max), true),
        (Sizes(seed ^ 0x5555, 3), true),
    ] {
        let (fs, r, _) = pieces(side, l, data, sizes, skip);
        assert_eq!((&fs, &r), (&want.0, &want.1), "max {max} skip {skip}");
    }
});
