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
