//! Reply frames: scalars, aggregates, attributes, streamed values, and the errors.

use super::{frames, frames_with, items, reply, run};
use crate::resp::{Frame, FrameKind, Limits, RespError, Side, CAPTURE_LEN};

/// `input` is one complete reply frame of `kind` whose items are `want`; also checks it is
/// found again when followed by part of the next frame.
fn one(input: &[u8], kind: FrameKind, count: u64, want: &[Option<&[u8]>]) -> Frame {
    let fs = reply(input);
    assert_eq!(fs.len(), 1, "{fs:?}");
    let f = fs[0].clone();
    assert_eq!(
        (f.start, f.end, f.kind),
        (0, input.len() as u64, kind),
        "{f:?}"
    );
    assert_eq!(f.capture.count(), count);
    let want: Vec<Option<Vec<u8>>> = want
        .iter()
        .map(|w| w.map(|w| w[..w.len().min(CAPTURE_LEN)].to_vec()))
        .collect();
    assert_eq!(items(&f.capture), want);
    // Padded with the start of the next frame: same frame, not at a boundary.
    let mut padded = input.to_vec();
    padded.extend_from_slice(b"*2\r\n$3\r\nab");
    let (out, res, fr) = run(Side::Reply, Limits::default(), &[&padded]);
    res.unwrap();
    assert_eq!(out, vec![f.clone()]);
    assert!(!fr.at_boundary());
    f
}

#[test]
fn scalars() {
    let f = one(b"+OK\r\n", FrameKind::Simple, 1, &[Some(b"OK")]);
    assert_eq!(f.capture.item_len(0), Some(2));
    one(b"+\r\n", FrameKind::Simple, 1, &[Some(b"")]);
    one(
        b"-ERR unknown\r\n",
        FrameKind::Error,
        1,
        &[Some(b"ERR unknown")],
    );
    one(b":0\r\n", FrameKind::Number, 1, &[Some(b"0")]);
    one(
        b":-9223372036854775808\r\n",
        FrameKind::Number,
        1,
        &[Some(b"-9223372036854775808")],
    );
    one(
        b":9223372036854775807\r\n",
        FrameKind::Number,
        1,
        &[Some(b"9223372036854775807")],
    );
    let f = one(b"$5\r\nhello\r\n", FrameKind::Bulk, 1, &[Some(b"hello")]);
    assert_eq!(f.capture.item_len(0), Some(5));
    one(b"$0\r\n\r\n", FrameKind::Bulk, 1, &[Some(b"")]);
    one(b"$4\r\na\r\nb\r\n", FrameKind::Bulk, 1, &[Some(b"a\r\nb")]);
    one(b",3.14\r\n", FrameKind::Number, 1, &[Some(b"3.14")]);
    one(b",-inf\r\n", FrameKind::Number, 1, &[Some(b"-inf")]);
    one(b",1.5e-10\r\n", FrameKind::Number, 1, &[Some(b"1.5e-10")]);
    one(b",nan\r\n", FrameKind::Number, 1, &[Some(b"nan")]);
    one(b"#t\r\n", FrameKind::Number, 1, &[Some(b"t")]);
    one(b"#f\r\n", FrameKind::Number, 1, &[Some(b"f")]);
    one(
        b"(-3492890328409238509324850943850943825024385\r\n",
        FrameKind::Number,
        1,
        &[Some(b"-3492890328409238509324850943850")],
    );
    one(
        b"!21\r\nSYNTAX invalid syntax\r\n",
        FrameKind::Error,
        1,
        &[Some(b"SYNTAX invalid syntax")],
    );
    one(
        b"=15\r\ntxt:Some string\r\n",
        FrameKind::Bulk,
        1,
        &[Some(b"txt:Some string")],
    );
    one(b"_\r\n", FrameKind::Null, 0, &[]);
    one(b"$-1\r\n", FrameKind::Null, 0, &[]);
    one(b"*-1\r\n", FrameKind::Null, 0, &[]);
}

#[test]
fn long_values_keep_a_prefix_and_full_length() {
    let v = vec![b'x'; 1000];
    let mut input = b"$1000\r\n".to_vec();
    input.extend_from_slice(&v);
    input.extend_from_slice(b"\r\n");
    let f = one(&input, FrameKind::Bulk, 1, &[Some(&v[..CAPTURE_LEN])]);
    assert_eq!(f.capture.item_len(0), Some(1000));
    let mut input = b"+".to_vec();
    input.extend_from_slice(&v);
    input.extend_from_slice(b"\r\n");
    let f = one(&input, FrameKind::Simple, 1, &[Some(&v[..CAPTURE_LEN])]);
    assert_eq!(f.capture.item_len(0), Some(1000));
}

#[test]
fn aggregates() {
    let f = one(
        b"*2\r\n$4\r\npong\r\n$0\r\n\r\n",
        FrameKind::Aggregate,
        2,
        &[Some(b"pong"), Some(b"")],
    );
    assert_eq!(f.capture.item_len(0), Some(4));
    assert_eq!(f.capture.item_len(1), Some(0));
    assert_eq!(f.capture.item(2), None);
    one(b"*0\r\n", FrameKind::Aggregate, 0, &[]);
    one(b"%0\r\n", FrameKind::Aggregate, 0, &[]);
    one(
        b"*3\r\n*1\r\n:1\r\n$-1\r\n:7\r\n",
        FrameKind::Aggregate,
        3,
        &[None, None, Some(b"7")],
    );
    one(
        b"%2\r\n+a\r\n:1\r\n+b\r\n*2\r\n:1\r\n:2\r\n",
        FrameKind::Aggregate,
        4,
        &[Some(b"a"), Some(b"1"), Some(b"b"), None],
    );
    one(
        b"~2\r\n#t\r\n,1.0\r\n",
        FrameKind::Aggregate,
        2,
        &[Some(b"t"), Some(b"1.0")],
    );
    one(
        b">3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$2\r\nhi\r\n",
        FrameKind::Push,
        3,
        &[Some(b"message"), Some(b"ch"), Some(b"hi")],
    );
    // Nested push is just an element.
    one(b"*1\r\n>1\r\n:1\r\n", FrameKind::Aggregate, 1, &[None]);
    // Only the first CAPTURE_ITEMS items are captured; count is all of them.
    let mut input = b"*10\r\n".to_vec();
    for i in 0..10 {
        input.extend_from_slice(format!(":{i}\r\n").as_bytes());
    }
    let f = one(
        &input,
        FrameKind::Aggregate,
        10,
        &[
            Some(b"0"),
            Some(b"1"),
            Some(b"2"),
            Some(b"3"),
            Some(b"4"),
            Some(b"5"),
            Some(b"6"),
            Some(b"7"),
        ],
    );
    assert_eq!(f.capture.item(8), None);
    assert_eq!(f.capture.item_len(8), None);
}

#[test]
fn attributes_fold_into_the_next_value() {
    // Top level: start is the attribute's, kind/capture the value's.
    let input = b"|1\r\n+key-popularity\r\n%2\r\n$1\r\na\r\n,0.1923\r\n$1\r\nb\r\n,0.0012\r\n*2\r\n:2039123\r\n:9543892\r\n";
    one(
        input,
        FrameKind::Aggregate,
        2,
        &[Some(b"2039123"), Some(b"9543892")],
    );
    one(
        b"|1\r\n+a\r\n+b\r\n+OK\r\n",
        FrameKind::Simple,
        1,
        &[Some(b"OK")],
    );
    one(
        b"|0\r\n|1\r\n+a\r\n+b\r\n>1\r\n+x\r\n",
        FrameKind::Push,
        1,
        &[Some(b"x")],
    );
    // Inside an aggregate: not an element, not counted.
    one(
        b"*2\r\n|1\r\n+ttl\r\n:3600\r\n+one\r\n+two\r\n",
        FrameKind::Aggregate,
        2,
        &[Some(b"one"), Some(b"two")],
    );
    one(b"*1\r\n:1\r\n", FrameKind::Aggregate, 1, &[Some(b"1")]);
    // An attribute whose key carries an attribute.
    one(
        b"|1\r\n|1\r\n+a\r\n+b\r\n+k\r\n+v\r\n:5\r\n",
        FrameKind::Number,
        1,
        &[Some(b"5")],
    );
    // A lone attribute is not a frame.
    let (out, res, f) = run(Side::Reply, Limits::default(), &[b"|1\r\n+a\r\n+b\r\n"]);
    res.unwrap();
    assert!(out.is_empty());
    assert!(!f.at_boundary());
}

#[test]
fn streamed() {
    let f = one(
        b"$?\r\n;4\r\nHell\r\n;6\r\no worl\r\n;1\r\nd\r\n;0\r\n",
        FrameKind::Bulk,
        1,
        &[Some(b"Hello world")],
    );
    assert_eq!(f.capture.item_len(0), Some(11));
    one(b"$?\r\n;0\r\n", FrameKind::Bulk, 1, &[Some(b"")]);
    one(
        b"*?\r\n:1\r\n:2\r\n:3\r\n.\r\n",
        FrameKind::Aggregate,
        3,
        &[Some(b"1"), Some(b"2"), Some(b"3")],
    );
    one(b"*?\r\n.\r\n", FrameKind::Aggregate, 0, &[]);
    one(
        b"%?\r\n+a\r\n:1\r\n+b\r\n:2\r\n.\r\n",
        FrameKind::Aggregate,
        4,
        &[Some(b"a"), Some(b"1"), Some(b"b"), Some(b"2")],
    );
    one(
        b"~?\r\n*?\r\n.\r\n$?\r\n;2\r\nab\r\n;0\r\n.\r\n",
        FrameKind::Aggregate,
        2,
        &[None, Some(b"ab")],
    );
    one(b">?\r\n+m\r\n.\r\n", FrameKind::Push, 1, &[Some(b"m")]);
    one(
        b"|?\r\n+a\r\n+b\r\n.\r\n:1\r\n",
        FrameKind::Number,
        1,
        &[Some(b"1")],
    );
    // A long streamed string: capture is the concatenated prefix.
    let mut input = b"$?\r\n".to_vec();
    for _ in 0..10 {
        input.extend_from_slice(b";5\r\n01234\r\n");
    }
    input.extend_from_slice(b";0\r\n");
    let f = one(
        &input,
        FrameKind::Bulk,
        1,
        &[Some(b"01234012340123401234012340123401")],
    );
    assert_eq!(f.capture.item_len(0), Some(50));
}

#[test]
fn several_frames_and_offsets() {
    let input = b"+OK\r\n:1\r\n*1\r\n$1\r\nx\r\n_\r\n";
    let fs = reply(input);
    let spans: Vec<_> = fs.iter().map(|f| (f.start, f.end, f.kind)).collect();
    assert_eq!(
        spans,
        vec![
            (0, 5, FrameKind::Simple),
            (5, 9, FrameKind::Number),
            (9, 20, FrameKind::Aggregate),
            (20, 23, FrameKind::Null),
        ]
    );
}

#[test]
fn reply_errors() {
    let e = |input: &[u8]| {
        frames(Side::Reply, input)
            .err()
            .unwrap_or_else(|| panic!("{}", String::from_utf8_lossy(input)))
    };
    assert_eq!(e(b"?"), RespError::BadType(b'?'));
    assert_eq!(e(b"PONG\r\n"), RespError::BadType(b'P'));
    assert_eq!(e(b".\r\n"), RespError::BadType(b'.'));
    assert_eq!(e(b"*1\r\n.\r\n"), RespError::BadType(b'.'));
    assert_eq!(e(b"$?\r\n+x\r\n"), RespError::BadType(b'+'));
    assert_eq!(e(b":1x\r\n"), RespError::BadNumber);
    assert_eq!(e(b":\r\n"), RespError::BadNumber);
    assert_eq!(e(b":-\r\n"), RespError::BadNumber);
    assert_eq!(e(b":9223372036854775808\r\n"), RespError::BadNumber);
    assert_eq!(e(b":-9223372036854775809\r\n"), RespError::BadNumber);
    assert_eq!(e(b"$-2\r\n"), RespError::BadNumber);
    assert_eq!(e(b"%-1\r\n"), RespError::BadNumber);
    assert_eq!(e(b"!-1\r\n"), RespError::BadNumber);
    assert_eq!(e(b"$1?\r\n"), RespError::BadNumber);
    assert_eq!(e(b"$?1\r\n"), RespError::BadNumber);
    assert_eq!(e(b":?\r\n"), RespError::BadNumber);
    assert_eq!(e(b"=?\r\n"), RespError::BadNumber);
    assert_eq!(e(b"#x\r\n"), RespError::BadNumber);
    assert_eq!(e(b"#tt\r\n"), RespError::BadNumber);
    assert_eq!(e(b"#\r\n"), RespError::BadNumber);
    assert_eq!(e(b",1.0z\r\n"), RespError::BadNumber);
    assert_eq!(e(b"(12a\r\n"), RespError::BadNumber);
    assert_eq!(e(b"$?\r\n;-1\r\n"), RespError::BadNumber);
    assert_eq!(
        e(b"$000000000000000000000000000000000000000000000000000000000000001\r\n"),
        RespError::LineTooLong
    );
    assert_eq!(e(b"$3\r\nabcd\r\n"), RespError::ExpectedCrlf);
    assert_eq!(e(b"$3\r\nabc\rx"), RespError::ExpectedCrlf);
    assert_eq!(e(b"+OK\rx"), RespError::ExpectedCrlf);
    assert_eq!(e(b":1\rx"), RespError::ExpectedCrlf);
    assert_eq!(e(b"_x"), RespError::ExpectedCrlf);
    assert_eq!(e(b"_\rx"), RespError::ExpectedCrlf);
    let deep = b"*1\r\n".repeat(65);
    assert_eq!(e(&deep), RespError::TooDeep);
    let limits = Limits {
        max_depth: 64,
        max_line: 8,
    };
    assert_eq!(
        frames_with(Side::Reply, limits, b",1234567890\r\n"),
        Err(RespError::LineTooLong)
    );
    assert_eq!(
        frames_with(Side::Reply, limits, b"$123456\r\n"),
        Err(RespError::LineTooLong)
    );
    // Simple strings are not bounded.
    assert_eq!(
        frames_with(Side::Reply, limits, b"+1234567890\r\n")
            .unwrap()
            .len(),
        1
    );
}

#[test]
fn depth_limit_is_exact() {
    let mut ok = b"*1\r\n".repeat(64);
    ok.extend_from_slice(b":1\r\n");
    assert_eq!(reply(&ok).len(), 1);
    let limits = Limits {
        max_depth: 0,
        max_line: 1024,
    };
    assert_eq!(
        frames_with(Side::Reply, limits, b"*1\r\n:1\r\n"),
        Err(RespError::TooDeep)
    );
    assert_eq!(
        frames_with(Side::Reply, limits, b"*0\r\n").unwrap().len(),
        1
    );
}

#[test]
fn very_deep_nesting_is_too_deep_not_a_stack_overflow() {
    let deep = b"*1\r\n".repeat(100_000);
    let (_, res, f) = run(Side::Reply, Limits::default(), &[&deep]);
    assert_eq!(res, Err(RespError::TooDeep));
    assert_eq!(f.error(), Some(&RespError::TooDeep));
}
