//! The write-ahead log: one file of frames (see `hadal_format::wal` for the byte layout).
//!
//! Invariants this module owns:
//! 1. A commit is one `write_at` of all its frames, commit frame last, then (for `Sync`) one
//!    `sync`. Frames are never rewritten in place while they are part of the current generation.
//! 2. Recovery keeps the longest prefix of frames whose chain verifies and that ends in a commit
//!    frame; LSNs in it are consecutive from the header's base LSN.
//! 3. The index maps each page to the frames that hold its images, newest last; it only ever
//!    holds frames newer than the last checkpoint. Readers look frames up and read them while
//!    holding the index's read lock, so a restart (which requires an empty index) can never
//!    pull a frame out from under a reader.
//! 4. The file is preallocated in steps and recycled: a restart writes a new header with a fresh
//!    salt at offset 0, so stale frames of older generations never verify again.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use hadal_format::limits::{WAL_FRAME_HEADER_BYTES, WAL_HEADER_BYTES};
use hadal_format::page;
use hadal_format::superblock::Superblock;
use hadal_format::wal::{CommitInfo, FrameHeader, WalHeader};
use hadal_format::{Lsn, PageNo, StateChecksum};
use parking_lot::{Mutex, RwLock};

use crate::error::{Error, Result};
use crate::storage::Storage;

/// The WAL file grows in steps of this size, so most commits overwrite preallocated space and
/// `fdatasync` need not update file metadata.
pub(crate) const WAL_GROW_BYTES: u64 = 16 * 1024 * 1024;
/// At a restart, a WAL file larger than this is shrunk back to it: a long reader or a slow
/// shipper may have grown it, and that space should not stay allocated forever.
pub(crate) const WAL_KEEP_BYTES: u64 = 256 * 1024 * 1024;
/// The append buffer is kept for the next commit only up to this size; a rare huge commit
/// should not pin its memory forever.
const APPEND_BUFFER_KEEP_BYTES: usize = 32 * 1024 * 1024;
/// Recovery reads the WAL in chunks of at most this many bytes.
const RECOVERY_READ_BYTES: usize = 4 * 1024 * 1024;

/// What the WAL knows about one commit of the current generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CommitMeta {
    pub lsn: Lsn,
    pub time_ms: u64,
    pub page_count: u32,
    pub checksum_before: StateChecksum,
    pub checksum_after: StateChecksum,
    pub first_frame: u64,
    pub frame_count: u32,
}

/// A commit's record and its page images, as read back from the WAL.
pub(crate) type CommitPages = (CommitMeta, Vec<(PageNo, Bytes)>);

/// Page number → frames holding its images (LSN, frame number), oldest first.
#[derive(Debug, Default)]
pub(crate) struct WalIndex {
    pages: HashMap<PageNo, Vec<(Lsn, u64)>>,
}

impl WalIndex {
    /// The newest frame of `page_no` at or below `at`.
    pub fn lookup(&self, page_no: PageNo, at: Lsn) -> Option<(Lsn, u64)> {
        self.pages
            .get(&page_no)?
            .iter()
            .rev()
            .find(|(lsn, _)| *lsn <= at)
            .copied()
    }

    pub fn is_empty(&self) -> bool {
        self.pages.is_empty()
    }

    /// For every page, the newest frame at or below `at`, sorted by page number.
    pub fn newest_through(&self, at: Lsn) -> Vec<(PageNo, Lsn, u64)> {
        let mut out: Vec<_> = self
            .pages
            .iter()
            .filter_map(|(p, v)| {
                v.iter()
                    .rev()
                    .find(|(l, _)| *l <= at)
                    .map(|&(l, f)| (*p, l, f))
            })
            .collect();
        out.sort_unstable_by_key(|(p, _, _)| *p);
        out
    }

    /// Forgets every frame at or below `at`: the main file now holds those images.
    pub fn drop_through(&mut self, at: Lsn) {
        self.pages.retain(|_, v| {
            v.retain(|(lsn, _)| *lsn > at);
            !v.is_empty()
        });
    }

    fn insert(&mut self, page_no: PageNo, lsn: Lsn, frame: u64) {
        self.pages.entry(page_no).or_default().push((lsn, frame));
    }
}

/// Append-side state, guarded by one mutex (lock order: state, then index).
#[derive(Debug)]
pub(crate) struct WalState {
    header: WalHeader,
    /// The header is not on disk (or is stale): the next append writes a new generation.
    restart_pending: bool,
    next_frame: u64,
    /// Frames before this one are covered by a checkpoint (the trigger counts only the rest).
    checkpoint_frame: u64,
    chain: u64,
    allocated_bytes: u64,
    /// Commits of the current generation, oldest first.
    pub commits: Vec<CommitMeta>,
    pub last_lsn: Lsn,
    pub last_checksum: StateChecksum,
    /// The append buffer, reused across commits: a fresh multi-megabyte buffer per commit
    /// makes the allocator map and zero memory every time.
    buf: AppendBuffer,
}

/// A reusable buffer whose `Debug` shows its size, not its megabytes.
#[derive(Default)]
struct AppendBuffer(Vec<u8>);

impl std::fmt::Debug for AppendBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AppendBuffer({} bytes capacity)", self.0.capacity())
    }
}

#[derive(Debug)]
pub(crate) struct Wal {
    file: Arc<dyn Storage>,
    page_size: usize,
    pub index: RwLock<WalIndex>,
    pub state: Mutex<WalState>,
}

/// The state of the image at the end of recovery.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Tip {
    pub lsn: Lsn,
    pub page_count: u32,
    pub checksum: StateChecksum,
    pub time_ms: u64,
}

impl Wal {
    fn frame_bytes(&self) -> u64 {
        (WAL_FRAME_HEADER_BYTES + self.page_size) as u64
    }

    fn frame_offset(&self, frame: u64) -> u64 {
        WAL_HEADER_BYTES as u64 + frame * self.frame_bytes()
    }

    fn io(&self, op: &'static str, e: std::io::Error) -> Error {
        Error::io(op, format!("wal {}", self.file.name()), e)
    }

    /// Opens the WAL after a crash or clean shutdown and rebuilds its index. `sb` is the
    /// superblock the main file was opened with.
    pub fn recover(file: Arc<dyn Storage>, sb: &Superblock) -> Result<(Wal, Tip)> {
        let page_size = sb.page_size as usize;
        let checkpoint_tip = Tip {
            lsn: sb.checkpoint_lsn,
            page_count: sb.page_count,
            checksum: sb.checksum,
            time_ms: sb.checkpoint_time_ms,
        };
        let len = file
            .len()
            .map_err(|e| Error::io("len", file.name().to_string(), e))?;
        let fresh_header = WalHeader {
            page_size: sb.page_size,
            salt: 0,
            restart_count: 0,
            base_lsn: sb.checkpoint_lsn,
            base_checksum: sb.checksum,
        };
        let mut wal = Wal {
            page_size,
            index: RwLock::default(),
            state: Mutex::new(WalState {
                header: fresh_header,
                restart_pending: true,
                next_frame: 0,
                checkpoint_frame: 0,
                chain: 0,
                allocated_bytes: len,
                commits: Vec::new(),
                last_lsn: sb.checkpoint_lsn,
                last_checksum: sb.checksum,
                buf: AppendBuffer::default(),
            }),
            file,
        };
        let mut raw = [0u8; WAL_HEADER_BYTES];
        if len < WAL_HEADER_BYTES as u64 {
            return Ok((wal, checkpoint_tip));
        }
        wal.file
            .read_at(0, &mut raw)
            .map_err(|e| wal.io("read header", e))?;
        let Ok(header) = WalHeader::decode(&raw) else {
            // A torn restart: the header is synced before any frame of its generation, so the
            // frames behind it are an older generation's, all already checkpointed. A valid
            // frame newer than the checkpoint behind it means the header itself was damaged.
            if let Some(lsn) = wal.first_frame_lsn(len)?
                && lsn > sb.checkpoint_lsn
            {
                return Err(Error::corrupt(
                    format!("wal {}", wal.file.name()),
                    format!(
                        "its header is damaged but it holds commit {lsn:?}, newer than the checkpoint {:?}",
                        sb.checkpoint_lsn
                    ),
                ));
            }
            return Ok((wal, checkpoint_tip));
        };
        if header.page_size != sb.page_size {
            return Err(Error::corrupt(
                format!("wal {}", wal.file.name()),
                format!(
                    "page size {} differs from the main file's {}",
                    header.page_size, sb.page_size
                ),
            ));
        }
        let (commits, chain) = wal.scan(&header, len)?;
        let state = wal.state.get_mut();
        state.header = header;
        state.restart_pending = false;
        state.chain = chain;
        state.last_lsn = header.base_lsn;
        state.last_checksum = header.base_checksum;
        if let Some(last) = commits.last() {
            state.next_frame = last.first_frame + u64::from(last.frame_count);
            state.last_lsn = last.lsn;
            state.last_checksum = last.checksum_after;
        }
        state.commits = commits;
        wal.reconcile(sb, checkpoint_tip)
    }

    /// The LSN of the first frame if it holds a verifiable page image (header unchecked).
    fn first_frame_lsn(&self, len: u64) -> Result<Option<Lsn>> {
        let frame_bytes = self.frame_bytes() as usize;
        if len < WAL_HEADER_BYTES as u64 + frame_bytes as u64 {
            return Ok(None);
        }
        let mut raw = vec![0u8; frame_bytes];
        self.file
            .read_at(WAL_HEADER_BYTES as u64, &mut raw)
            .map_err(|e| self.io("read frame", e))?;
        let (head, page) = raw.split_at(WAL_FRAME_HEADER_BYTES);
        Ok(match FrameHeader::decode(head) {
            Ok(fh) if page::verify(fh.page_no, page).is_ok() => Some(fh.lsn),
            _ => None,
        })
    }

    /// Reads frames after `header` and returns the complete commits, indexing their pages, and
    /// the chain value after the last commit frame (what the next frame continues).
    fn scan(&mut self, header: &WalHeader, len: u64) -> Result<(Vec<CommitMeta>, u64)> {
        let frame_bytes = self.frame_bytes() as usize;
        let frames_per_chunk = (RECOVERY_READ_BYTES / frame_bytes).max(1);
        let mut chain = header.chain_seed();
        let mut committed_chain = chain;
        let mut commits = Vec::new();
        let mut open: Vec<(PageNo, u64)> = Vec::new();
        let mut lsn = header.base_lsn.next();
        let mut checksum = header.base_checksum;
        let mut frame: u64 = 0;
        let mut buf = vec![0u8; frames_per_chunk * frame_bytes];
        'chunks: loop {
            let offset = self.frame_offset(frame);
            let available = len.saturating_sub(offset) as usize / frame_bytes;
            let n = available.min(frames_per_chunk);
            if n == 0 {
                break;
            }
            let chunk = &mut buf[..n * frame_bytes];
            self.file
                .read_at(offset, chunk)
                .map_err(|e| self.io("read frames", e))?;
            for raw in chunk.chunks_exact(frame_bytes) {
                let (head, page) = raw.split_at(WAL_FRAME_HEADER_BYTES);
                let Ok(fh) = FrameHeader::decode(head) else {
                    break 'chunks;
                };
                if fh.salt != header.salt || !FrameHeader::verify_chain(head, chain, page) {
                    break 'chunks;
                }
                if fh.lsn != lsn {
                    return Err(Error::corrupt(
                        format!("wal {} frame {frame}", self.file.name()),
                        format!("lsn {:?} where {:?} was expected", fh.lsn, lsn),
                    ));
                }
                if let Err(e) = page::verify(fh.page_no, page) {
                    return Err(Error::corrupt(
                        format!(
                            "wal {} frame {frame} (page {})",
                            self.file.name(),
                            fh.page_no
                        ),
                        e,
                    ));
                }
                chain = fh.chain;
                open.push((fh.page_no, frame));
                frame += 1;
                if let Some(info) = fh.commit {
                    let first_frame = frame - open.len() as u64;
                    commits.push(CommitMeta {
                        lsn,
                        time_ms: info.time_ms,
                        page_count: info.page_count,
                        checksum_before: checksum,
                        checksum_after: info.checksum_after,
                        first_frame,
                        frame_count: open.len() as u32,
                    });
                    let index = self.index.get_mut();
                    for (p, f) in open.drain(..) {
                        index.insert(p, lsn, f);
                    }
                    checksum = info.checksum_after;
                    committed_chain = chain;
                    lsn = lsn.next();
                }
            }
        }
        if !open.is_empty() {
            tracing::info!(
                wal = self.file.name(),
                frames = open.len(),
                "discarded a torn transaction at the end of the WAL"
            );
        }
        Ok((commits, committed_chain))
    }

    /// Checks the recovered WAL against the checkpoint and drops what the main file holds.
    fn reconcile(self, sb: &Superblock, checkpoint_tip: Tip) -> Result<(Wal, Tip)> {
        let object = || format!("wal {}", self.file.name());
        let mut state = self.state.lock();
        if state.header.base_lsn > sb.checkpoint_lsn {
            return Err(Error::corrupt(
                object(),
                format!(
                    "it starts after lsn {:?} but the main file holds only up to {:?}: commits are missing",
                    state.header.base_lsn, sb.checkpoint_lsn
                ),
            ));
        }
        if state.last_lsn < sb.checkpoint_lsn {
            // Everything in this generation is already in the main file.
            *self.index.write() = WalIndex::default();
            state.commits.clear();
            state.restart_pending = true;
            state.header.base_lsn = sb.checkpoint_lsn;
            state.header.base_checksum = sb.checksum;
            state.last_lsn = sb.checkpoint_lsn;
            state.last_checksum = sb.checksum;
            drop(state);
            return Ok((self, checkpoint_tip));
        }
        let at_checkpoint = if sb.checkpoint_lsn == state.header.base_lsn {
            state.header.base_checksum
        } else {
            state
                .commits
                .iter()
                .find(|c| c.lsn == sb.checkpoint_lsn)
                .map_or(sb.checksum, |c| c.checksum_after)
        };
        if at_checkpoint != sb.checksum {
            return Err(Error::corrupt(
                object(),
                format!(
                    "state checksum at the checkpoint lsn {:?} is {at_checkpoint:?} in the WAL but {:?} in the superblock",
                    sb.checkpoint_lsn, sb.checksum
                ),
            ));
        }
        self.index.write().drop_through(sb.checkpoint_lsn);
        if let Some(c) = state
            .commits
            .iter()
            .rev()
            .find(|c| c.lsn <= sb.checkpoint_lsn)
        {
            state.checkpoint_frame = c.first_frame + u64::from(c.frame_count);
        }
        let tip = match state.commits.last() {
            Some(c) if c.lsn > sb.checkpoint_lsn => Tip {
                lsn: c.lsn,
                page_count: c.page_count,
                checksum: c.checksum_after,
                time_ms: c.time_ms,
            },
            _ => checkpoint_tip,
        };
        drop(state);
        Ok((self, tip))
    }

    /// Appends one commit: all `pages` (sorted, non-empty) as frames, the last one the commit
    /// frame, in one write; then syncs if asked. Updates the index once the write is done.
    pub fn append(
        &self,
        lsn: Lsn,
        info: CommitInfo,
        pages: &[(PageNo, Bytes)],
        sync: bool,
    ) -> Result<CommitMeta> {
        let mut state = self.state.lock();
        debug_assert_eq!(
            lsn,
            state.last_lsn.next(),
            "commits are appended in LSN order"
        );
        if state.restart_pending {
            // The new header is made durable before any frame of its generation is written:
            // so an invalid header with a valid newer frame behind it can only be damage, and
            // recovery reports it instead of mistaking it for a torn restart.
            let header = WalHeader {
                page_size: self.page_size as u32,
                salt: rand::random(),
                restart_count: state.header.restart_count + 1,
                base_lsn: state.last_lsn,
                base_checksum: state.last_checksum,
            };
            if state.allocated_bytes > WAL_KEEP_BYTES {
                self.file
                    .set_len(WAL_KEEP_BYTES)
                    .map_err(|e| self.io("shrink", e))?;
                state.allocated_bytes = WAL_KEEP_BYTES;
            }
            self.file
                .write_at(0, &header.encode())
                .map_err(|e| self.io("restart", e))?;
            self.file.sync().map_err(|e| self.io("restart", e))?;
            state.allocated_bytes = state.allocated_bytes.max(WAL_HEADER_BYTES as u64);
            state.chain = header.chain_seed();
            state.next_frame = 0;
            state.checkpoint_frame = 0;
            state.header = header;
            state.commits.clear();
            state.restart_pending = false;
        }
        let mut buf = std::mem::take(&mut state.buf.0);
        buf.clear();
        let mut chain = state.chain;
        for (i, (page_no, image)) in pages.iter().enumerate() {
            let fh = FrameHeader {
                page_no: *page_no,
                lsn,
                salt: state.header.salt,
                commit: (i + 1 == pages.len()).then_some(info),
                chain: 0,
            };
            let head = fh.encode(chain, image);
            chain = u64::from_le_bytes(head[40..48].try_into().expect("8-byte chain field"));
            buf.extend_from_slice(&head);
            buf.extend_from_slice(image);
        }
        let first_frame = state.next_frame;
        let offset = self.frame_offset(first_frame);
        let end = offset + buf.len() as u64;
        if end > state.allocated_bytes {
            let grown = end.div_ceil(WAL_GROW_BYTES) * WAL_GROW_BYTES;
            self.file
                .set_len(grown)
                .map_err(|e| self.io("preallocate", e))?;
            state.allocated_bytes = grown;
        }
        let written = self.file.write_at(offset, &buf);
        if buf.capacity() <= APPEND_BUFFER_KEEP_BYTES {
            state.buf = AppendBuffer(buf);
        }
        written.map_err(|e| self.io("append", e))?;
        if sync {
            self.file.sync().map_err(|e| self.io("sync", e))?;
        }
        state.restart_pending = false;
        state.chain = chain;
        state.next_frame = first_frame + pages.len() as u64;
        let meta = CommitMeta {
            lsn,
            time_ms: info.time_ms,
            page_count: info.page_count,
            checksum_before: state.last_checksum,
            checksum_after: info.checksum_after,
            first_frame,
            frame_count: pages.len() as u32,
        };
        state.commits.push(meta);
        state.last_lsn = lsn;
        state.last_checksum = info.checksum_after;
        let mut index = self.index.write();
        for (i, (page_no, _)) in pages.iter().enumerate() {
            index.insert(*page_no, lsn, first_frame + i as u64);
        }
        Ok(meta)
    }

    /// Reads the page image of `frame` and verifies it is a valid image of `page_no`.
    pub fn read_frame_page(&self, frame: u64, page_no: PageNo) -> Result<Bytes> {
        let mut buf = vec![0u8; self.page_size];
        let offset = self.frame_offset(frame) + WAL_FRAME_HEADER_BYTES as u64;
        self.file
            .read_at(offset, &mut buf)
            .map_err(|e| self.io("read frame", e))?;
        page::verify(page_no, &buf).map_err(|e| {
            Error::corrupt(
                format!("wal {} frame {frame} (page {page_no})", self.file.name()),
                e,
            )
        })?;
        Ok(Bytes::from(buf))
    }

    pub fn sync(&self) -> Result<()> {
        self.file.sync().map_err(|e| self.io("sync", e))
    }

    /// The commits after `after` still in the WAL, with their page images.
    pub fn commits_since(&self, after: Lsn, max: usize) -> Result<Vec<CommitPages>> {
        let state = self.state.lock();
        let wanted: Vec<CommitMeta> = state
            .commits
            .iter()
            .filter(|c| c.lsn > after)
            .take(max)
            .copied()
            .collect();
        let oldest_available = state
            .commits
            .first()
            .map_or(state.last_lsn.next(), |c| c.lsn);
        if after < state.last_lsn && after.next() < oldest_available {
            return Err(Error::Invalid(format!(
                "commits after lsn {after:?} are no longer in the local WAL (it starts at {oldest_available:?}); \
                 open with shipping retention so the WAL keeps unshipped commits"
            )));
        }
        let frame_bytes = self.frame_bytes() as usize;
        let mut out = Vec::with_capacity(wanted.len());
        for meta in wanted {
            let mut raw = vec![0u8; meta.frame_count as usize * frame_bytes];
            self.file
                .read_at(self.frame_offset(meta.first_frame), &mut raw)
                .map_err(|e| self.io("read commit", e))?;
            let mut pages = Vec::with_capacity(meta.frame_count as usize);
            for (i, frame) in raw.chunks_exact(frame_bytes).enumerate() {
                let object = || {
                    format!(
                        "wal {} frame {}",
                        self.file.name(),
                        meta.first_frame + i as u64
                    )
                };
                let fh = FrameHeader::decode(&frame[..WAL_FRAME_HEADER_BYTES])
                    .map_err(|e| Error::corrupt(object(), e))?;
                let image = &frame[WAL_FRAME_HEADER_BYTES..];
                page::verify(fh.page_no, image).map_err(|e| Error::corrupt(object(), e))?;
                if fh.lsn != meta.lsn {
                    return Err(Error::corrupt(
                        object(),
                        format!("lsn {:?} where {:?} was expected", fh.lsn, meta.lsn),
                    ));
                }
                pages.push((fh.page_no, Bytes::copy_from_slice(image)));
            }
            out.push((meta, pages));
        }
        drop(state);
        Ok(out)
    }

    /// After a checkpoint through `lsn`: forget indexed frames it covered, and if it covered
    /// every commit, let the next append start a new generation.
    pub fn checkpointed_through(&self, lsn: Lsn, evict: impl Fn(PageNo)) {
        let mut state = self.state.lock();
        let mut index = self.index.write();
        for (p, _, _) in index.newest_through(lsn) {
            evict(p);
        }
        index.drop_through(lsn);
        if let Some(c) = state.commits.iter().rev().find(|c| c.lsn <= lsn) {
            state.checkpoint_frame = state
                .checkpoint_frame
                .max(c.first_frame + u64::from(c.frame_count));
        }
        if index.is_empty() && state.last_lsn == lsn {
            state.restart_pending = true;
        }
    }

    /// Forgets the current generation: the main file now holds the image at `lsn` (installed
    /// from a snapshot), and the next append starts a new generation based there.
    pub fn reset_to(&self, lsn: Lsn, checksum: StateChecksum) {
        let mut state = self.state.lock();
        *self.index.write() = WalIndex::default();
        state.commits.clear();
        state.restart_pending = true;
        state.last_lsn = lsn;
        state.last_checksum = checksum;
    }

    /// Throws the whole WAL away (an image is being replaced): runs `fence` and clears the index
    /// under the index write lock, so no reader is between its lookup and its read, then
    /// truncates the file and syncs it. A crash after this reopens at the main file's
    /// checkpoint, which the caller has not touched yet. The next append starts a new
    /// generation at whatever `reset_to` sets.
    pub fn discard(&self, fence: impl FnOnce()) -> Result<()> {
        let mut state = self.state.lock();
        {
            let mut index = self.index.write();
            fence();
            *index = WalIndex::default();
        }
        state.commits.clear();
        state.restart_pending = true;
        state.next_frame = 0;
        state.checkpoint_frame = 0;
        self.file.set_len(0).map_err(|e| self.io("discard", e))?;
        self.file.sync().map_err(|e| self.io("discard", e))?;
        state.allocated_bytes = 0;
        Ok(())
    }

    /// The commit record of `lsn`, if it is in the current generation.
    pub fn commit_meta(&self, lsn: Lsn) -> Option<CommitMeta> {
        self.state
            .lock()
            .commits
            .iter()
            .rev()
            .find(|c| c.lsn == lsn)
            .copied()
    }

    /// Whether the WAL never held a commit since the database was created empty.
    pub fn is_unused(&self) -> bool {
        let state = self.state.lock();
        state.commits.is_empty() && state.last_lsn == Lsn::ZERO
    }

    /// Bytes of frames not yet covered by a checkpoint: what the checkpoint trigger counts.
    pub fn bytes_pending_checkpoint(&self) -> u64 {
        let state = self.state.lock();
        if state.restart_pending {
            0
        } else {
            state.next_frame.saturating_sub(state.checkpoint_frame) * self.frame_bytes()
        }
    }

    /// Bytes of frames in the current generation.
    pub fn bytes_used(&self) -> u64 {
        let state = self.state.lock();
        if state.restart_pending {
            0
        } else {
            state.next_frame * self.frame_bytes()
        }
    }
}
