//! The Redis protocol front-end on `--resp`: enough of Redis for `redis-cli`,
//! `redis-benchmark` and ordinary Redis clients to use Hadal as a string key-value store.
//!
//! - `parse.rs`: requests off the wire (multibulk and inline), flat and bounded.
//! - `reply.rs`: replies, encoded as RESP2 or RESP3 by the `redis-protocol` crate.
//! - `command.rs`: the key-value commands, run on one snapshot view that collects their writes.
//! - `session.rs`: a connection's state (auth, `HELLO`, `MULTI`/`WATCH`, `SCAN` cursors) and the
//!   dispatch of every command.
//!
//! A connection runs every whole command it has received in order (each write commits locally
//! before the next command runs, so a pipeline sees its own writes), then sends the replies in
//! order, each once its write is durable per the mode: a pipeline of `strict` writes waits for
//! one upload, not one per command.
//!
//! Invariants:
//! 1. A malformed request gets `-ERR Protocol error: …` and its connection is closed; nothing
//!    else is affected.
//! 2. On shutdown the listener stops accepting, each connection finishes the commands it has
//!    read and sends their replies, then closes; [`serve`] returns only when every connection
//!    has, so the backend is closed after every acknowledged write (see `run.rs`).

pub mod command;
pub mod parse;
pub mod reply;
pub mod session;

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::server::http::App;
use reply::{Proto, Reply};
use session::{Answer, Session};

/// Most connections served at once (as Redis's default `maxclients`).
pub const CONNECTIONS_MAX: u64 = 10_000;

/// How much a request may exceed `body_limit`: room for the command name, the key and the
/// options around a value of the largest size the HTTP API accepts.
pub const REQUEST_OVERHEAD_BYTES: u64 = 64 * 1024;

/// Buffers grown past this by one large request or reply are given back afterwards.
const BUFFER_KEEP_BYTES: usize = 1024 * 1024;
const BUFFER_INITIAL_BYTES: usize = 16 * 1024;

/// Serves RESP on `listener` until `stop` turns true, then shuts down gracefully
/// (invariant 2).
pub async fn serve(listener: TcpListener, app: Arc<App>, stop: watch::Receiver<bool>) {
    let limit =
        usize::try_from(app.config.body_limit + REQUEST_OVERHEAD_BYTES).unwrap_or(usize::MAX);
    let mut connections = JoinSet::new();
    let mut stopped = stop.clone();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((mut stream, peer)) => {
                    if app.resp_metrics.connections() >= CONNECTIONS_MAX {
                        tracing::warn!(%peer, "refusing a RESP connection: {CONNECTIONS_MAX} are open");
                        let _ = stream.write_all(b"-ERR max number of clients reached\r\n").await;
                        continue;
                    }
                    let _ = stream.set_nodelay(true);
                    connections.spawn(connection(stream, app.clone(), stop.clone(), limit));
                }
                Err(e) => {
                    // Out of file descriptors and the like: wait instead of spinning.
                    tracing::warn!(error = %e, "accepting a RESP connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            () = stopping(&mut stopped) => break,
        }
    }
    drop(listener);
    while connections.join_next().await.is_some() {}
}

/// Resolves once `stop` turns true.
async fn stopping(stop: &mut watch::Receiver<bool>) {
    // The guard `wait_for` returns is not `Send`; drop it here, not across an await.
    let _ = stop.wait_for(|s| *s).await.is_ok();
}

/// Counts a connection open for as long as it lives.
struct Counted(Arc<App>);

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.resp_metrics.disconnected();
    }
}

async fn connection(
    stream: TcpStream,
    app: Arc<App>,
    mut stop: watch::Receiver<bool>,
    limit: usize,
) {
    app.resp_metrics.connected();
    let _counted = Counted(app.clone());
    let peer = stream.peer_addr().ok();
    let (mut rd, mut wr) = stream.into_split();
    let mut session = Session::new(app.clone());
    let mut input = BytesMut::with_capacity(BUFFER_INITIAL_BYTES);
    let mut output = BytesMut::with_capacity(BUFFER_INITIAL_BYTES);
    let mut answers: Vec<(&'static str, Proto, Answer)> = Vec::new();
    loop {
        // Run every whole command received so far, in order.
        let mut malformed = None;
        while !session.closing {
            match parse::next_command(&mut input, limit) {
                Ok(Some(args)) if args.is_empty() => {}
                Ok(Some(args)) => {
                    let name = session::metric_name(&args);
                    let answer = session.execute(args).await;
                    answers.push((name, session.proto, answer));
                }
                Ok(None) => break,
                Err(e) => {
                    malformed = Some(e);
                    break;
                }
            }
        }
        // Their replies, in order, each once its write is durable.
        for (name, proto, answer) in answers.drain(..) {
            let reply = match answer {
                Answer::Now(reply) => reply,
                Answer::Later(durable) => durable.await,
            };
            app.resp_metrics.command(name, reply.is_error());
            reply.encode(proto, &mut output);
        }
        if let Some(e) = &malformed {
            tracing::debug!(?peer, error = %e, "closing a RESP connection after a malformed request");
            Reply::error("ERR", format!("Protocol error: {e}")).encode(session.proto, &mut output);
        }
        if !output.is_empty() {
            if wr.write_all(&output).await.is_err() {
                return;
            }
            output.clear();
            if output.capacity() > BUFFER_KEEP_BYTES {
                output = BytesMut::with_capacity(BUFFER_INITIAL_BYTES);
            }
        }
        if malformed.is_some() || session.closing {
            let _ = wr.shutdown().await;
            return;
        }
        if input.is_empty() && input.capacity() > BUFFER_KEEP_BYTES {
            input = BytesMut::with_capacity(BUFFER_INITIAL_BYTES);
        }
        input.reserve(BUFFER_INITIAL_BYTES);
        tokio::select! {
            read = rd.read_buf(&mut input) => match read {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            },
            () = stopping(&mut stop) => return,
        }
    }
}
