//! Requests off the wire: a RESP multibulk (`*N\r\n` then N bulk strings `$LEN\r\nBYTES\r\n`)
//! or an inline command (one line of words, as `telnet` or `nc` send). That is all a Redis
//! server accepts as a request, so this parser reads exactly that, flat: an array inside a
//! request is a protocol error at its first byte, not a recursion. Replies are encoded by the
//! `redis-protocol` crate (`reply.rs`); its decoder is not used here because it builds nested
//! frames recursively, which a hostile `*1\r\n*1\r\n…` would turn into a stack overflow.
//!
//! Invariants:
//! 1. [`next_command`] consumes bytes only when it returns a whole command; on `Ok(None)` the
//!    buffer is untouched and more bytes are needed.
//! 2. Every length is checked against the connection's limit before any bytes are waited for
//!    or allocated, so a client cannot make the server buffer more than the limit allows.

use bytes::{Buf, Bytes, BytesMut};

/// The most arguments one multibulk request may have (as Redis: 1024 × 1024).
pub const ARGS_MAX: usize = 1024 * 1024;

/// The longest inline command line and the longest `*N` or `$LEN` header line.
pub const INLINE_BYTES_MAX: usize = 64 * 1024;

/// A malformed request. The connection cannot be resynchronised after one, so the server
/// replies `-ERR Protocol error: …` and closes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtocolError(pub String);

impl std::fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn error(message: impl Into<String>) -> ProtocolError {
    ProtocolError(message.into())
}

/// Takes the next whole command off `buf`: its arguments (possibly none, for an empty line or
/// `*0`, which the caller skips), `Ok(None)` when more bytes are needed, or why the bytes are
/// not a request. `limit` bounds one request's argument bytes.
pub fn next_command(buf: &mut BytesMut, limit: usize) -> Result<Option<Vec<Bytes>>, ProtocolError> {
    match buf.first() {
        None => Ok(None),
        Some(b'*') => multibulk(buf, limit),
        Some(_) => inline(buf),
    }
}

/// The line starting at `at` (without its `\r\n`) and where the next one starts, `Ok(None)` if
/// it is not complete yet.
fn line(buf: &[u8], at: usize, what: &str) -> Result<Option<(usize, usize)>, ProtocolError> {
    let window = &buf[at..buf.len().min(at + INLINE_BYTES_MAX)];
    match window.iter().position(|&b| b == b'\n') {
        Some(nl) if nl > 0 && window[nl - 1] == b'\r' => Ok(Some((at + nl - 1, at + nl + 1))),
        Some(_) => Err(error(format!("{what} must end with \\r\\n"))),
        None if window.len() == INLINE_BYTES_MAX => Err(error(format!(
            "{what} is longer than {INLINE_BYTES_MAX} bytes"
        ))),
        None => Ok(None),
    }
}

/// A decimal header value (`*N` or `$LEN`), as Redis reads it.
fn number(digits: &[u8], what: &str) -> Result<i64, ProtocolError> {
    std::str::from_utf8(digits)
        .ok()
        .and_then(|s| s.parse::<i64>().ok())
        .ok_or_else(|| {
            error(format!(
                "invalid {what} {:?}",
                String::from_utf8_lossy(&digits[..digits.len().min(32)])
            ))
        })
}

fn multibulk(buf: &mut BytesMut, limit: usize) -> Result<Option<Vec<Bytes>>, ProtocolError> {
    let Some((end, mut at)) = line(buf, 0, "a multibulk header")? else {
        return Ok(None);
    };
    let count = number(&buf[1..end], "multibulk length")?;
    if count > ARGS_MAX as i64 {
        return Err(error(format!(
            "invalid multibulk length {count}: at most {ARGS_MAX} arguments"
        )));
    }
    if count <= 0 {
        buf.advance(at);
        return Ok(Some(Vec::new()));
    }
    // First pass: find every argument's bounds without consuming (invariant 1).
    let mut spans = Vec::with_capacity((count as usize).min(1024));
    let mut total = 0usize;
    for _ in 0..count {
        match buf.get(at) {
            None => return Ok(None),
            Some(b'$') => {}
            Some(&other) => {
                return Err(error(format!(
                    "expected '$', got '{}'",
                    char::from(other).escape_default()
                )));
            }
        }
        let Some((end, start)) = line(buf, at, "a bulk length")? else {
            return Ok(None);
        };
        let len = number(&buf[at + 1..end], "bulk length")?;
        if len < 0 || len as u64 > limit as u64 {
            return Err(error(format!(
                "invalid bulk length {len}: an argument holds 0 to {limit} bytes"
            )));
        }
        let len = len as usize;
        total += len;
        if total > limit {
            return Err(error(format!(
                "the request's arguments exceed {limit} bytes; raise body_limit in the server's config for larger values"
            )));
        }
        if buf.len() < start + len + 2 {
            return Ok(None);
        }
        if &buf[start + len..start + len + 2] != b"\r\n" {
            return Err(error("a bulk string must end with \\r\\n"));
        }
        spans.push((start, len));
        at = start + len + 2;
    }
    let frozen = buf.split_to(at).freeze();
    Ok(Some(
        spans
            .into_iter()
            .map(|(start, len)| frozen.slice(start..start + len))
            .collect(),
    ))
}

fn inline(buf: &mut BytesMut) -> Result<Option<Vec<Bytes>>, ProtocolError> {
    let window = &buf[..buf.len().min(INLINE_BYTES_MAX)];
    let Some(nl) = window.iter().position(|&b| b == b'\n') else {
        if window.len() == INLINE_BYTES_MAX {
            return Err(error(format!(
                "too big inline request (over {INLINE_BYTES_MAX} bytes)"
            )));
        }
        return Ok(None);
    };
    let line = buf.split_to(nl + 1).freeze();
    let text = line.slice(..nl);
    let text = text.strip_suffix(b"\r").unwrap_or(&text);
    Ok(Some(
        text.split(|b| b.is_ascii_whitespace())
            .filter(|w| !w.is_empty())
            .map(Bytes::copy_from_slice)
            .collect(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(bytes: &[u8]) -> Result<Option<Vec<Bytes>>, ProtocolError> {
        next_command(&mut BytesMut::from(bytes), 1024)
    }

    #[test]
    fn multibulk_and_inline_commands_parse_and_consume_exactly_one_command() {
        // Proves both request forms, and that a pipelined second command stays in the buffer.
        let mut buf = BytesMut::from(&b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\nPING\r\n"[..]);
        let first = next_command(&mut buf, 1024).expect("ok").expect("whole");
        assert_eq!(first, vec![Bytes::from("GET"), Bytes::from("k")]);
        assert_eq!(&buf[..], b"PING\r\n");
        let second = next_command(&mut buf, 1024).expect("ok").expect("whole");
        assert_eq!(second, vec![Bytes::from("PING")]);
        assert!(buf.is_empty());
        assert_eq!(
            parse(b"set  a\tb\n").expect("ok").expect("whole"),
            vec![Bytes::from("set"), Bytes::from("a"), Bytes::from("b")]
        );
        // Binary values, including CR and LF inside a bulk string.
        assert_eq!(
            parse(b"*1\r\n$4\r\n\r\n\x00\xff\r\n")
                .expect("ok")
                .expect("whole"),
            vec![Bytes::from_static(b"\r\n\x00\xff")]
        );
        assert_eq!(parse(b"*0\r\n").expect("ok"), Some(vec![]));
    }

    #[test]
    fn a_partial_command_waits_and_leaves_the_buffer_untouched() {
        // Proves invariant 1 at every cut point of a command.
        let whole = b"*2\r\n$3\r\nSET\r\n$5\r\nvalue\r\n";
        for cut in 0..whole.len() {
            let mut buf = BytesMut::from(&whole[..cut]);
            assert_eq!(next_command(&mut buf, 1024), Ok(None), "cut at {cut}");
            assert_eq!(&buf[..], &whole[..cut]);
        }
    }

    #[test]
    fn malformed_and_oversized_requests_are_protocol_errors() {
        // Proves nesting, bad lengths and sizes over the limit fail at once, before any
        // waiting for bytes that would never come (invariant 2).
        let nested = b"*1\r\n".repeat(100_000);
        assert!(
            parse(&nested)
                .expect_err("nested")
                .0
                .contains("expected '$'")
        );
        assert!(parse(b"*abc\r\n").is_err());
        assert!(parse(b"*1\r\n$-5\r\n").is_err());
        assert!(parse(b"*1\r\n$10000000000\r\n").is_err());
        assert!(parse(b"*1\r\n$1025\r\n").is_err());
        assert!(parse(b"*2\r\n$1000\r\n").is_ok(), "under the limit: waits");
        assert!(parse(b"*2\r\n$1000\r\n").expect("ok").is_none());
        assert!(
            next_command(&mut BytesMut::from(&b"*2\r\n$600\r\n"[..]), 1024)
                .expect("ok")
                .is_none()
        );
        let mut two = BytesMut::from(&b"*2\r\n$600\r\n"[..]);
        two.extend_from_slice(&[b'x'; 600]);
        two.extend_from_slice(b"\r\n$600\r\n");
        assert!(
            next_command(&mut two, 1024).is_err(),
            "total over the limit"
        );
        assert!(parse(b"*1\r\n$1\r\nab\r\n").is_err(), "missing CRLF");
        assert!(parse(b"*1\n").is_err(), "bare LF header");
        assert!(parse(b"*99999999999\r\n").is_err());
        assert!(parse(&[b'x'; INLINE_BYTES_MAX]).is_err());
        assert!(parse(&[b'x'; 100]).expect("ok").is_none());
    }
}
