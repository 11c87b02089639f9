//! The framer's unit tests. Most feed an input whole, at every 2-way split and a byte at a time,
//! and require the same frames (`frames_with`). Replies in `reply`, commands in `request`; here
//! the helpers and what both sides share (poisoning, skipping, boundaries).

mod reply;
mod request;

use crate::resp::{Capture, Frame, Framer, Limits, RespError, Side, CAPTURE_ITEMS, CAPTURE_LEN};

fn run(
    side: Side,
    limits: Limits,
    chunks: &[&[u8]],
) -> (Vec<Frame>, Result<(), RespError>, Framer) {
    let mut f = Framer::new(side, limits);
    let mut out = Vec::new();
    let mut res = Ok(());
    for c in chunks {
        res = f.feed(c, &mut |fr| out.push(fr.clone()));
        if res.is_err() {
            break;
        }
    }
    (out, res, f)
}

/// Frames of `input` fed whole; asserts every 2-way split and byte-at-a-time agree.
fn frames_with(side: Side, limits: Limits, input: &[u8]) -> Result<Vec<Frame>, RespError> {
    let (whole, res, f) = run(side, limits, &[input]);
    if res.is_ok() {
        assert_eq!(f.offset(), input.len() as u64);
    }
    for i in 0..=input.len() {
        let (a, b) = input.split_at(i);
        let (out, r, _) = run(side, limits, &[a, b]);
        assert_eq!(out, whole, "split at {i}");
        assert_eq!(r, res, "split at {i}");
    }
    let bytes: Vec<&[u8]> = input.chunks(1).collect();
    let (out, r, _) = run(side, limits, &bytes);
    assert_eq!(out, whole, "byte at a time");
    assert_eq!(r, res, "byte at a time");
    res.map(|()| whole)
}

fn frames(side: Side, input: &[u8]) -> Result<Vec<Frame>, RespError> {
    frames_with(side, Limits::default(), input)
}

fn reply(input: &[u8]) -> Vec<Frame> {
    frames(Side::Reply, input).unwrap()
}

fn request(input: &[u8]) -> Vec<Frame> {
    frames(Side::Request, input)
        .unwrap_or_else(|e| panic!("{}: {e:?}", String::from_utf8_lossy(input)))
}

fn items(c: &Capture) -> Vec<Option<Vec<u8>>> {
    (0..CAPTURE_ITEMS)
        .map(|i| c.item(i).map(<[u8]>::to_vec))
        .take(c.count() as usize)
        .collect()
}

#[test]
fn poisoned_after_error() {
    let mut f = Framer::new(Side::Reply, Limits::default());
    let mut n = 0;
    assert_eq!(
        f.feed(b"+OK\r\n?", &mut |_| n += 1),
        Err(RespError::BadType(b'?'))
    );
    assert_eq!(
        f.feed(b"+OK\r\n", &mut |_| n += 1),
        Err(RespError::BadType(b'?'))
    );
    assert_eq!(n, 1);
    assert_eq!(f.skippable(), 0);
}

#[test]
fn skip_leaves_the_capture_prefix_and_the_crlf() {
    let mut f = Framer::new(Side::Reply, Limits::default());
    let mut out = Vec::new();
    f.feed(b"*2\r\n$100\r\n", &mut |fr| out.push(fr.clone()))
        .unwrap();
    // The first CAPTURE_LEN (16) bytes are wanted for the capture.
    assert_eq!(f.skippable(), 0);
    f.feed(&[b'a'; 10], &mut |fr| out.push(fr.clone())).unwrap();
    assert_eq!(f.skippable(), 0);
    f.feed(&[b'b'; 22], &mut |fr| out.push(fr.clone())).unwrap();
    assert_eq!(f.skippable(), 68);
    f.skip(60);
    assert_eq!(f.skippable(), 8);
    f.skip(100); // clamped
    assert_eq!(f.skippable(), 0);
    f.feed(b"\r\n$3\r\n", &mut |fr| out.push(fr.clone()))
        .unwrap();
    // Second item: also captured.
    assert_eq!(f.skippable(), 0);
    f.feed(b"xyz\r\n", &mut |fr| out.push(fr.clone())).unwrap();
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].end, f.offset());
    assert_eq!(f.offset(), 4 + 6 + 100 + 2 + 4 + 5);
    let mut want = vec![b'a'; 10];
    want.extend_from_slice(&[b'b'; CAPTURE_LEN - 10]);
    assert_eq!(out[0].capture.item(0), Some(&want[..]));
    assert_eq!(out[0].capture.item_len(0), Some(100));
    assert_eq!(out[0].capture.item(1), Some(&b"xyz"[..]));

    // Nested or ninth items are not captured: skippable at once.
    let mut f = Framer::new(Side::Reply, Limits::default());
    f.feed(b"*1\r\n*1\r\n$1000\r\n", &mut |_| {}).unwrap();
    assert_eq!(f.skippable(), 1000);
    let mut f = Framer::new(Side::Request, Limits::default());
    f.feed(b"*9\r\n", &mut |_| {}).unwrap();
    for _ in 0..8 {
        f.feed(b"$1\r\nx\r\n", &mut |_| {}).unwrap();
    }
    f.feed(b"$1000\r\n", &mut |_| {}).unwrap();
    assert_eq!(f.skippable(), 1000);
    f.skip(1000);
    let mut n = 0;
    f.feed(b"\r\n", &mut |fr| {
        n += 1;
        assert_eq!(fr.capture.count(), 9);
    })
    .unwrap();
    assert_eq!(n, 1);
}

#[test]
fn boundary_tracking() {
    let mut f = Framer::new(Side::Reply, Limits::default());
    assert!(f.at_boundary());
    f.feed(b"+O", &mut |_| {}).unwrap();
    assert!(!f.at_boundary());
    f.feed(b"K\r", &mut |_| {}).unwrap();
    assert!(!f.at_boundary());
    f.feed(b"\n", &mut |_| {}).unwrap();
    assert!(f.at_boundary());
    let mut f = Framer::new(Side::Request, Limits::default());
    f.feed(b"PI", &mut |_| {}).unwrap();
    assert!(!f.at_boundary());
    f.feed(b"NG\r\n", &mut |_| {}).unwrap();
    assert!(f.at_boundary());
}
