//! Replies, protocol-neutral until encoded: [`Reply::encode`] writes RESP2 or RESP3 (whatever
//! the connection chose with `HELLO`) through the `redis-protocol` crate's encoders.

use bytes::{Bytes, BytesMut};
use redis_protocol::resp2::types::BytesFrame as Frame2;
use redis_protocol::resp3::types::BytesFrame as Frame3;

/// The protocol a connection speaks: 2 until `HELLO 3`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    /// RESP2.
    Resp2,
    /// RESP3.
    Resp3,
}

/// One reply.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// `+OK`.
    Ok,
    /// A status line (`+PONG`, `+QUEUED`).
    Status(String),
    /// An error line; the text starts with its code (`ERR`, `READONLY`, …).
    Error(String),
    /// An integer.
    Int(i64),
    /// A binary-safe string.
    Bulk(Bytes),
    /// No value (a missing key): RESP2 `$-1`, RESP3 `_`.
    Nil,
    /// No array (an aborted `EXEC`): RESP2 `*-1`, RESP3 `_`.
    NilArray,
    /// An array.
    Array(Vec<Reply>),
    /// A map (RESP3), sent as a flat array of keys and values in RESP2.
    Map(Vec<(Reply, Reply)>),
}

impl Reply {
    /// An error reply `-CODE message`.
    pub fn error(code: &str, message: impl std::fmt::Display) -> Reply {
        // A newline would end the error line early and desynchronise the client.
        let text = format!("{code} {message}").replace(['\r', '\n'], " ");
        Reply::Error(text)
    }

    /// A bulk string from text.
    pub fn text(s: impl Into<String>) -> Reply {
        Reply::Bulk(Bytes::from(s.into()))
    }

    /// Whether this is an error reply (for metrics).
    pub fn is_error(&self) -> bool {
        matches!(self, Reply::Error(_))
    }

    /// Appends the reply to `out` in `proto`.
    pub fn encode(self, proto: Proto, out: &mut BytesMut) {
        if self == Reply::NilArray && proto == Proto::Resp2 {
            // redis-protocol's RESP2 null is the bulk-string null; an aborted EXEC is `*-1`.
            out.extend_from_slice(b"*-1\r\n");
            return;
        }
        let encoded = match proto {
            Proto::Resp2 => {
                redis_protocol::resp2::encode::extend_encode(out, &self.into_resp2(), false)
            }
            Proto::Resp3 => redis_protocol::resp3::encode::complete::extend_encode(
                out,
                &self.into_resp3(),
                false,
            ),
        };
        if let Err(e) = encoded {
            // Only a frame the encoder cannot represent gets here (none of ours): say so
            // rather than send half a frame.
            out.extend_from_slice(
                format!("-ERR the server could not encode its reply: {e}\r\n").as_bytes(),
            );
        }
    }

    fn into_resp2(self) -> Frame2 {
        match self {
            Reply::Ok => Frame2::SimpleString(Bytes::from_static(b"OK")),
            Reply::Status(s) => Frame2::SimpleString(Bytes::from(s)),
            Reply::Error(e) => Frame2::Error(e.into()),
            Reply::Int(n) => Frame2::Integer(n),
            Reply::Bulk(b) => Frame2::BulkString(b),
            Reply::Nil | Reply::NilArray => Frame2::Null,
            Reply::Array(items) => {
                Frame2::Array(items.into_iter().map(Reply::into_resp2).collect())
            }
            Reply::Map(pairs) => Frame2::Array(
                pairs
                    .into_iter()
                    .flat_map(|(k, v)| [k.into_resp2(), v.into_resp2()])
                    .collect(),
            ),
        }
    }

    fn into_resp3(self) -> Frame3 {
        match self {
            Reply::Ok => Frame3::SimpleString {
                data: Bytes::from_static(b"OK"),
                attributes: None,
            },
            Reply::Status(s) => Frame3::SimpleString {
                data: Bytes::from(s),
                attributes: None,
            },
            Reply::Error(e) => Frame3::SimpleError {
                data: e.into(),
                attributes: None,
            },
            Reply::Int(n) => Frame3::Number {
                data: n,
                attributes: None,
            },
            Reply::Bulk(b) => Frame3::BlobString {
                data: b,
                attributes: None,
            },
            Reply::Nil | Reply::NilArray => Frame3::Null,
            Reply::Array(items) => Frame3::Array {
                data: items.into_iter().map(Reply::into_resp3).collect(),
                attributes: None,
            },
            Reply::Map(pairs) => Frame3::Map {
                data: pairs
                    .into_iter()
                    .map(|(k, v)| (k.into_resp3(), v.into_resp3()))
                    .collect(),
                attributes: None,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire(reply: Reply, proto: Proto) -> Vec<u8> {
        let mut out = BytesMut::new();
        reply.encode(proto, &mut out);
        out.to_vec()
    }

    #[test]
    fn replies_encode_as_redis_sends_them_in_both_protocols() {
        // Proves the byte forms clients parse: status, error, integer, bulk, the two nulls,
        // arrays, and maps (flattened in RESP2).
        use Proto::{Resp2, Resp3};
        assert_eq!(wire(Reply::Ok, Resp2), b"+OK\r\n");
        assert_eq!(
            wire(Reply::error("ERR", "bad\r\nthing"), Resp2),
            b"-ERR bad  thing\r\n"
        );
        assert_eq!(wire(Reply::Int(-3), Resp2), b":-3\r\n");
        assert_eq!(wire(Reply::Bulk(Bytes::from("ab")), Resp2), b"$2\r\nab\r\n");
        assert_eq!(wire(Reply::Nil, Resp2), b"$-1\r\n");
        assert_eq!(wire(Reply::NilArray, Resp2), b"*-1\r\n");
        assert_eq!(wire(Reply::Nil, Resp3), b"_\r\n");
        assert_eq!(
            wire(Reply::Array(vec![Reply::Int(1), Reply::Nil]), Resp2),
            b"*2\r\n:1\r\n$-1\r\n"
        );
        assert_eq!(
            wire(Reply::Map(vec![(Reply::text("a"), Reply::Int(1))]), Resp2),
            b"*2\r\n$1\r\na\r\n:1\r\n"
        );
        assert_eq!(
            wire(Reply::Map(vec![(Reply::text("a"), Reply::Int(1))]), Resp3),
            b"%1\r\n$1\r\na\r\n:1\r\n"
        );
    }
}
