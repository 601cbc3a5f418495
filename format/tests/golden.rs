//! Golden encodings: the bytes in `testdata/` were written by format version 1 and must decode,
//! and re-encode identically, forever. Set `HADAL_BLESS=1` only when adding a new format version
//! (never to paper over a changed encoding of an existing one).

use std::path::PathBuf;

use hadal_format::page::{self, PageType};
use hadal_format::superblock::Superblock;
use hadal_format::wal::{CommitInfo, FrameHeader, WalHeader};
use hadal_format::{Lsn, PageNo, StateChecksum};

fn golden(name: &str, encoded: &[u8]) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("testdata")
        .join(name);
    if std::env::var_os("HADAL_BLESS").is_some() {
        std::fs::write(&path, encoded).expect("write golden file");
    }
    let stored = std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "golden file {} missing ({e}); see this file's doc",
            path.display()
        )
    });
    assert_eq!(
        stored, encoded,
        "encoding of {name} changed: formats are forever"
    );
    stored
}

fn sample_page() -> Vec<u8> {
    let mut page: Vec<u8> = (0..4096u32).map(|i| (i * 31 % 251) as u8).collect();
    page::seal(PageNo::new(17), PageType::Leaf, &mut page);
    page
}

#[test]
fn page_v1_decodes() {
    // Proves a sealed leaf page from version 1 still verifies as page 17 of type Leaf.
    let stored = golden("page-leaf-17.bin", &sample_page());
    assert_eq!(page::verify(PageNo::new(17), &stored), Ok(PageType::Leaf));
}

#[test]
fn wal_header_and_commit_frame_v1_decode() {
    // Proves the WAL header and a commit frame header from version 1 decode to the same fields
    // and the frame's chain still verifies against the stored seed.
    let header = WalHeader {
        page_size: 4096,
        salt: 0x1234_5678_9abc_def0,
        restart_count: 2,
        base_lsn: Lsn::new(41),
        base_checksum: StateChecksum::from_raw(0x5151),
    };
    let stored = golden("wal-header.bin", &header.encode());
    let decoded = WalHeader::decode(&stored).expect("golden WAL header decodes");
    assert_eq!(decoded, header);

    let frame = FrameHeader {
        page_no: PageNo::new(17),
        lsn: Lsn::new(42),
        salt: header.salt,
        commit: Some(CommitInfo {
            page_count: 18,
            time_ms: 1_763_000_000_000,
            checksum_after: StateChecksum::from_raw(0x0bad_cafe),
        }),
        chain: 0,
    };
    let page = sample_page();
    let stored = golden(
        "wal-frame-commit.bin",
        &frame.encode(decoded.chain_seed(), &page),
    );
    let got = FrameHeader::decode(&stored).expect("golden frame decodes");
    assert_eq!(
        (got.page_no, got.lsn, got.salt, got.commit),
        (frame.page_no, frame.lsn, frame.salt, frame.commit)
    );
    assert!(FrameHeader::verify_chain(
        &stored,
        decoded.chain_seed(),
        &page
    ));
}

#[test]
fn superblock_v1_decodes() {
    // Proves a version-1 superblock decodes to the same fields.
    let sb = Superblock {
        page_size: 4096,
        generation: 7,
        checkpoint_lsn: Lsn::new(1000),
        page_count: 250,
        checksum: StateChecksum::from_raw(0xdead_beef_0000_0001),
        checkpoint_time_ms: 1_763_000_000_000,
        db_id: *b"hadal-golden-db!",
    };
    let stored = golden("superblock.bin", &sb.encode());
    assert_eq!(Superblock::decode(&stored), Ok(sb));
}

#[test]
fn state_checksum_v1_is_stable() {
    // Proves the state checksum function (xxh3 of page number ‖ bytes, XORed) never changes:
    // replicas built by older releases must verify against newer ones.
    let mut sum = StateChecksum::EMPTY;
    sum.add(PageNo::new(0), &[1u8; 4096]);
    sum.add(PageNo::new(1), &sample_page());
    let text = format!("{:016x}\n", sum.get());
    let stored = golden("state-checksum.txt", text.as_bytes());
    assert_eq!(String::from_utf8(stored).expect("utf8"), text);
}

/// Like `golden`, but only decoding is forever: compressed bodies may encode differently with
/// a newer zstd, so the stored bytes are compared only when blessing.
fn golden_decode_only(name: &str, encoded: &[u8]) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("testdata")
        .join(name);
    if std::env::var_os("HADAL_BLESS").is_some() {
        std::fs::write(&path, encoded).expect("write golden file");
    }
    std::fs::read(&path).unwrap_or_else(|e| panic!("golden file {} missing ({e})", path.display()))
}

fn sample_segment() -> hadal_format::segment::Segment {
    use hadal_format::segment::{Segment, SegmentCommit};
    use hadal_format::{Epoch, ObjectHash, Slot};
    let commits = vec![
        SegmentCommit {
            lsn: Lsn::new(41),
            time_ms: 1_763_000_000_000,
            page_count: 18,
            checksum_before: StateChecksum::from_raw(0x10),
            checksum_after: StateChecksum::from_raw(0x11),
            pages: vec![
                (PageNo::new(0), vec![1u8; 4096]),
                (PageNo::new(17), sample_page()),
            ],
        },
        SegmentCommit {
            lsn: Lsn::new(42),
            time_ms: 1_763_000_000_005,
            page_count: 18,
            checksum_before: StateChecksum::from_raw(0x11),
            checksum_after: StateChecksum::from_raw(0x12),
            pages: vec![(PageNo::new(0), vec![2u8; 4096])],
        },
    ];
    Segment::commits(
        *b"hadal-golden-db!",
        Epoch::new(3),
        Slot::new(7),
        [9; 16],
        ObjectHash([0x5a; 32]),
        4096,
        commits,
    )
    .expect("valid sample segment")
}

#[test]
fn segment_v1_decodes() {
    // Proves a version-1 segment (two commits) and a fence decode to the same fields and pages.
    use hadal_format::segment::Segment;
    use hadal_format::{Epoch, ObjectHash, Slot};
    let seg = sample_segment();
    let stored = golden_decode_only("segment-commits.bin", &seg.encode().expect("encode").0);
    assert_eq!(
        Segment::decode(&stored).expect("golden segment decodes").0,
        seg
    );
    let fence = Segment::fence(
        *b"hadal-golden-db!",
        Epoch::new(4),
        Slot::new(8),
        [3; 16],
        ObjectHash([0x6b; 32]),
        4096,
        Lsn::new(42),
        StateChecksum::from_raw(0x12),
    );
    let stored = golden_decode_only("segment-fence.bin", &fence.encode().expect("encode").0);
    assert_eq!(
        Segment::decode(&stored).expect("golden fence decodes").0,
        fence
    );
}

#[test]
fn snapshot_part_v1_decodes() {
    // Proves a version-1 snapshot part decodes to the same pages.
    use hadal_format::snapshot::SnapshotPart;
    let mut pages = vec![1u8; 4096];
    pages.extend(sample_page());
    let part = SnapshotPart {
        page_size: 4096,
        db_id: *b"hadal-golden-db!",
        lsn: Lsn::new(42),
        part: 0,
        first_page: PageNo::new(0),
        pages,
    };
    let stored = golden_decode_only("snapshot-part.bin", &part.encode().expect("encode").0);
    assert_eq!(
        SnapshotPart::decode(&stored)
            .expect("golden part decodes")
            .0,
        part
    );
}

#[test]
fn manifest_v1_decodes() {
    // Proves a version-1 manifest (with a snapshot, a pin and a parent) decodes, and its JSON
    // encoding is stable.
    use hadal_format::manifest::{Manifest, Parent, PartRef, Pin, SnapshotRef};
    let mut m = Manifest::first(*b"hadal-golden-db!", 4096, 1_763_000_000_000);
    m = m.successor(hadal_format::ObjectHash([0x11; 32]), 1_763_000_000_100);
    m.nonce = "00112233445566778899aabbccddeeff".into();
    m.writer_epoch = 3;
    m.snapshots.push(SnapshotRef {
        lsn: 40,
        slot: 6,
        checksum: "0000000000000010".into(),
        time_ms: 1_762_999_999_000,
        page_count: 18,
        dir: "snap/00000000000000000040-aa".into(),
        parts: vec![PartRef {
            key: "snap/00000000000000000040-aa/part-00000".into(),
            bytes: 1234,
            sha256: "ab".repeat(32),
            first_page: 0,
            page_count: 18,
        }],
    });
    m.pins.push(Pin {
        name: "branch-x".into(),
        lsn: 41,
        created_ms: 1_763_000_000_050,
    });
    m.parent = Some(Parent {
        url: "file:///parent".into(),
        lsn: 9,
        slot: 2,
        segment_hash: "cd".repeat(32),
        checksum: "00000000000000aa".into(),
    });
    let stored = golden("manifest.json", &m.encode().expect("encode").0);
    assert_eq!(
        Manifest::decode(&stored)
            .expect("golden manifest decodes")
            .0,
        m
    );
}
