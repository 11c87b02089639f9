use std::fmt;

/// Why a byte stream is not RESP we can follow. Any of these puts the connection in passthrough
/// (the filter stops following it and passes its bytes through untouched), never drops or
/// alters bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RespError {
    /// A byte that cannot start a frame of this side's protocol.
    BadType(u8),
    /// A length, count or integer header that is not a valid number.
    BadNumber,
    /// A header line longer than the limit.
    LineTooLong,
    /// Aggregates nested deeper than the limit.
    TooDeep,
    /// A CRLF was expected (after a bulk payload, or a lone CR inside a line).
    ExpectedCrlf,
    /// A request (client side) that Redis itself would reject as a protocol error.
    BadRequest,
}

impl fmt::Display for RespError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RespError::BadType(b) => write!(f, "unexpected type byte 0x{b:02x}"),
            RespError::BadNumber => write!(f, "malformed length or number"),
            RespError::LineTooLong => write!(f, "header line too long"),
            RespError::TooDeep => write!(f, "aggregates nested too deeply"),
            RespError::ExpectedCrlf => write!(f, "expected CRLF"),
            RespError::BadRequest => write!(f, "malformed request"),
        }
    }
}

impl std::error::Error for RespError {}
