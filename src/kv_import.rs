//! `hadal kv import`: bulk writes from `key<TAB>value` lines, one transaction per line.
//!
//! Commits are pipelined: line N+1 is committed while line N's segment is still uploading, and
//! the handles are awaited in commit order, so an acknowledgement (`--print-acks`) is printed
//! exactly when its commit is durable, and never for a commit after the writer stopped.
//!
//! Invariants:
//! 1. An `ack` line is written only after `WriteHandle::durable` succeeded for that line, and
//!    acks appear in LSN order.
//! 2. At most `IN_FLIGHT_MAX` commits await durability at once (bounded memory; the reader
//!    blocks when the pipeline is full).
//! 3. The first failure (a refused commit, a handle that can never become durable, a malformed
//!    line, an unreadable input) stops reading; the commits before it are still acknowledged as
//!    they become durable, and the command fails with the reason.

use std::collections::VecDeque;
use std::io::{BufRead, Write};
use std::time::Duration;

use anyhow::Context;
use hadal::{Batch, Lsn, WriteHandle};
use tokio::sync::mpsc;

/// Commits awaiting durability at once.
const IN_FLIGHT_MAX: usize = 4096;
/// Lines read ahead of the committer.
const LINES_BUFFERED: usize = 1024;
/// How often progress is printed on stderr.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

/// What an import did.
#[derive(Debug)]
pub struct Summary {
    pub lines: u64,
    pub lsn_last: Lsn,
}

/// A line read from the input.
type Line = std::io::Result<Vec<u8>>;

/// Reads lines on a thread of its own (stdin and files block), feeding a bounded channel.
fn spawn_reader(source: &str) -> anyhow::Result<mpsc::Receiver<Line>> {
    let file = if source == "-" {
        None
    } else {
        Some(std::fs::File::open(source).with_context(|| format!("opening {source}"))?)
    };
    let (tx, rx) = mpsc::channel(LINES_BUFFERED);
    std::thread::Builder::new()
        .name("hadal-import-reader".into())
        .spawn(move || {
            let stdin = std::io::stdin();
            let mut reader: Box<dyn BufRead> = match file {
                Some(f) => Box::new(std::io::BufReader::new(f)),
                None => Box::new(stdin.lock()),
            };
            loop {
                let mut line = Vec::new();
                match reader.read_until(b'\n', &mut line) {
                    Ok(0) => return,
                    Ok(_) => {
                        if tx.blocking_send(Ok(line)).is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        let _ = tx.blocking_send(Err(e));
                        return;
                    }
                }
            }
        })
        .context("starting the input reader thread")?;
    Ok(rx)
}

/// Splits `key<TAB>value\n` (the value may hold tabs; `\r\n` endings are accepted). `None` for
/// an empty line.
fn parse(mut line: &[u8], number: u64) -> anyhow::Result<Option<(Vec<u8>, Vec<u8>)>> {
    if let Some(rest) = line.strip_suffix(b"\n") {
        line = rest.strip_suffix(b"\r").unwrap_or(rest);
    }
    if line.is_empty() {
        return Ok(None);
    }
    let tab = line
        .iter()
        .position(|b| *b == b'\t')
        .with_context(|| format!("line {number}: expected key<TAB>value, found no tab"))?;
    Ok(Some((line[..tab].to_vec(), line[tab + 1..].to_vec())))
}

/// Says in plain words what a fence means for an import.
fn stopped(e: hadal::Error) -> anyhow::Error {
    let fenced = e.kind() == hadal::ErrorKind::Fenced;
    let e = anyhow::Error::from(e);
    if fenced {
        e.context("another writer took over the bucket")
    } else {
        e
    }
}

/// The import loop's state.
struct Pipeline {
    pending: VecDeque<(WriteHandle, Vec<u8>)>,
    committed: u64,
    acked: u64,
    lsn_acked: Lsn,
    print_acks: bool,
}

impl Pipeline {
    /// Prints the ack of the oldest pending commit, which just became durable.
    fn ack_front(&mut self) -> anyhow::Result<()> {
        let Some((handle, key)) = self.pending.pop_front() else {
            return Ok(());
        };
        self.acked += 1;
        self.lsn_acked = handle.lsn;
        if self.print_acks {
            let mut out = std::io::stdout().lock();
            out.write_all(format!("ack\t{}\t", handle.lsn.get()).as_bytes())?;
            out.write_all(&key)?;
            out.write_all(b"\n")?;
            out.flush()?;
        }
        Ok(())
    }

    /// Acknowledges the pending commits in order until one fails.
    async fn drain(&mut self) -> anyhow::Result<()> {
        while let Some(front) = self.pending.front().map(|(h, _)| h.clone()) {
            front.durable().await.map_err(stopped)?;
            self.ack_front()?;
        }
        Ok(())
    }
}

/// Imports the lines of `source` into `table`.
pub async fn import(
    db: &hadal::Database,
    table: &str,
    source: &str,
    print_acks: bool,
) -> anyhow::Result<Summary> {
    let mut lines = spawn_reader(source)?;
    let mut p = Pipeline {
        pending: VecDeque::new(),
        committed: 0,
        acked: 0,
        lsn_acked: Lsn::ZERO,
        print_acks,
    };
    let mut number = 0u64;
    let mut reading = true;
    let mut failure: Option<anyhow::Error> = None;
    let mut progress = tokio::time::interval(PROGRESS_EVERY);
    progress.tick().await;
    while reading || !p.pending.is_empty() {
        let front = p.pending.front().map(|(h, _)| h.clone());
        tokio::select! {
            biased;
            durable = async {
                match &front {
                    Some(h) => h.durable().await,
                    None => std::future::pending().await,
                }
            }, if front.is_some() => {
                if let Err(e) = durable {
                    failure = Some(stopped(e));
                    break;
                }
                p.ack_front()?;
            }
            line = lines.recv(), if reading && p.pending.len() < IN_FLIGHT_MAX => {
                let line = match line {
                    None => { reading = false; continue; }
                    Some(Err(e)) => {
                        failure = Some(anyhow::Error::from(e).context(format!("reading line {}", number + 1)));
                        reading = false;
                        continue;
                    }
                    Some(Ok(line)) => line,
                };
                number += 1;
                let (key, value) = match parse(&line, number) {
                    Ok(Some(kv)) => kv,
                    Ok(None) => continue,
                    Err(e) => { failure = Some(e); reading = false; continue; }
                };
                match db.apply(Batch::new().put_in(table, key.clone(), value, None)).await {
                    Ok(handle) => {
                        p.committed += 1;
                        p.pending.push_back((handle, key));
                    }
                    Err(e) => {
                        failure = Some(stopped(e).context(format!("committing line {number}")));
                        reading = false;
                    }
                }
            }
            _ = progress.tick() => {
                eprintln!(
                    "import: {} lines committed, {} durable (lsn {})",
                    p.committed, p.acked, p.lsn_acked.get()
                );
            }
        }
    }
    // After a refused commit the earlier ones may still become durable: acknowledge them.
    if let Err(e) = p.drain().await {
        failure.get_or_insert(e);
    }
    match failure {
        Some(e) => Err(e.context(format!(
            "the import stopped after {} lines ({} committed, {} durable, last durable lsn {})",
            number,
            p.committed,
            p.acked,
            p.lsn_acked.get()
        ))),
        None => Ok(Summary {
            lines: p.acked,
            lsn_last: p.lsn_acked,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Proves the line format: tab-separated, value may hold tabs, CRLF accepted, empty lines
    // skipped, and a line without a tab is an error naming its number.
    #[test]
    fn lines_parse_as_key_tab_value() {
        assert_eq!(
            parse(b"k\tv\n", 1).expect("ok"),
            Some((b"k".to_vec(), b"v".to_vec()))
        );
        assert_eq!(
            parse(b"k\ta\tb\r\n", 2).expect("ok"),
            Some((b"k".to_vec(), b"a\tb".to_vec()))
        );
        assert_eq!(
            parse(b"k\t", 3).expect("ok"),
            Some((b"k".to_vec(), Vec::new()))
        );
        assert_eq!(parse(b"\n", 4).expect("ok"), None);
        let err = parse(b"no tab here\n", 7).expect_err("no tab");
        assert!(err.to_string().contains("line 7"), "{err}");
    }
}
