//! Commands: inline and multibulk, and the errors Redis gives for them.

use super::{frames, frames_with, items, request, run};
use crate::resp::{Frame, FrameKind, Limits, RespError, Side, CAPTURE_ITEMS, CAPTURE_LEN};

fn s(b: &[u8]) -> Option<Vec<u8>> {
    Some(b.to_vec())
}

fn cmd(input: &[u8], want: &[&[u8]]) -> Frame {
    let fs = request(input);
    assert_eq!(fs.len(), 1, "{fs:?}");
    let f = fs[0].clone();
    assert_eq!(
        (f.start, f.end, f.kind),
        (0, input.len() as u64, FrameKind::Command)
    );
    assert_eq!(f.capture.count(), want.len() as u64);
    let want: Vec<_> = want
        .iter()
        .take(CAPTURE_ITEMS)
        .map(|w| s(&w[..w.len().min(CAPTURE_LEN)]))
        .collect();
    assert_eq!(items(&f.capture), want);
    f
}

#[test]
fn inline_commands() {
    cmd(b"PING\r\n", &[b"PING"]);
    cmd(b"PING\n", &[b"PING"]);
    cmd(b"ping\r\n", &[b"ping"]);
    cmd(b"SET a b\r\n", &[b"SET", b"a", b"b"]);
    cmd(b"  SET\ta   b  \r\n", &[b"SET", b"a", b"b"]);
    cmd(
        b"SET k \"a b\\r\\n\\x41\\x4\\q\"\r\n",
        &[b"SET", b"k", b"a b\r\nAx4q"],
    );
    cmd(b"SET k 'it\\'s \\n'\r\n", &[b"SET", b"k", b"it's \\n"]);
    cmd(b"SET k a\"b c\" d\r\n", &[b"SET", b"k", b"ab c", b"d"]);
    cmd(b"SET k \"\"\r\n", &[b"SET", b"k", b""]);
    // Only the CR right before the LF is stripped; another one separates words.
    cmd(b"a\rb\r\r\n", &[b"a", b"b"]);
    // A NUL ends the C string Redis splits.
    cmd(b"GET k\0 ignored \"\n", &[b"GET", b"k"]);
    // Not multibulk unless the very first byte is `*`.
    cmd(b" *1\r\n", &[b"*1"]);
    cmd(b"$3\r\n", &[b"$3"]);
    let f = cmd(
        b"a b c d e f g h i j\n",
        &[b"a", b"b", b"c", b"d", b"e", b"f", b"g", b"h", b"i", b"j"],
    );
    assert_eq!(f.capture.item(8), None);
    let long = vec![b'v'; 100];
    let mut input = b"SET k ".to_vec();
    input.extend_from_slice(&long);
    input.extend_from_slice(b"\r\n");
    let f = cmd(&input, &[b"SET", b"k", &long]);
    assert_eq!(f.capture.item_len(2), Some(100));
    // Empty lines are consumed and ignored.
    assert!(request(b"\r\n").is_empty());
    assert!(request(b"\n").is_empty());
    assert!(request(b"  \t \r\n").is_empty());
    assert!(request(b"\0abc\r\n").is_empty());
    let fs = request(b"\r\nPING\r\n\nPING\n");
    let spans: Vec<_> = fs.iter().map(|f| (f.start, f.end)).collect();
    assert_eq!(spans, vec![(2, 8), (9, 14)]);
}

#[test]
fn multibulk_commands() {
    cmd(b"*1\r\n$4\r\nPING\r\n", &[b"PING"]);
    let f = cmd(
        b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$6\r\na\r\nb\r\n\r\n",
        &[b"SET", b"k", b"a\r\nb\r\n"],
    );
    assert_eq!(f.capture.item_len(2), Some(6));
    cmd(b"*2\r\n$3\r\nGET\r\n$0\r\n\r\n", &[b"GET", b""]);
    // Zero or negative counts: consumed, nothing emitted.
    assert!(request(b"*0\r\n").is_empty());
    assert!(request(b"*-1\r\n").is_empty());
    let fs = request(b"*0\r\n*1\r\n$4\r\nPING\r\nPING\r\n*-5\r\n");
    let spans: Vec<_> = fs.iter().map(|f| (f.start, f.end)).collect();
    assert_eq!(spans, vec![(4, 18), (18, 24)]);
    let (_, res, f) = run(Side::Request, Limits::default(), &[b"*0\r\n"]);
    res.unwrap();
    assert!(f.at_boundary());
}

#[test]
fn request_errors() {
    let e = |input: &[u8]| {
        frames(Side::Request, input)
            .err()
            .unwrap_or_else(|| panic!("{}", String::from_utf8_lossy(input)))
    };
    assert_eq!(e(b"*1\r\n+PING\r\n"), RespError::BadRequest);
    assert_eq!(e(b"*1\r\n*1\r\n"), RespError::BadRequest);
    assert_eq!(e(b"*1\r\n$-1\r\n"), RespError::BadRequest);
    assert_eq!(e(b"*2147483648\r\n"), RespError::BadRequest);
    assert_eq!(e(b"*?\r\n"), RespError::BadNumber);
    assert_eq!(e(b"*x\r\n"), RespError::BadNumber);
    assert_eq!(e(b"*1\r\n$x\r\n"), RespError::BadNumber);
    assert_eq!(e(b"*1\r\n$1\r\nab\r\n"), RespError::ExpectedCrlf);
    assert_eq!(e(b"*1\n"), RespError::BadNumber);
    assert_eq!(e(b"SET k \"abc\r\n"), RespError::BadRequest);
    assert_eq!(e(b"SET k 'abc\r\n"), RespError::BadRequest);
    assert_eq!(e(b"SET k \"a\"b\r\n"), RespError::BadRequest);
    assert_eq!(e(b"SET k a\"b c\"d\r\n"), RespError::BadRequest);
    assert_eq!(e(b"SET k \"a\\\r\n"), RespError::BadRequest);
    let limits = Limits {
        max_depth: 64,
        max_line: 10,
    };
    assert_eq!(
        frames_with(Side::Request, limits, b"SET key value\r\n"),
        Err(RespError::LineTooLong)
    );
    assert_eq!(
        frames_with(Side::Request, limits, b"SET k v\r\n")
            .unwrap()
            .len(),
        1
    );
    let limits = Limits {
        max_depth: 64,
        max_line: 5,
    };
    assert_eq!(
        frames_with(Side::Request, limits, b"a\"b\"c\n"),
        Err(RespError::BadRequest)
    );
    assert_eq!(
        frames_with(Side::Request, limits, b"abcde\"b\"c\n"),
        Err(RespError::LineTooLong)
    );
}
