//! Named limits, each with a unit and a reason. Limits that depend on each other are checked at
//! compile time, so changing one cannot silently break another.

/// Smallest page size: the OS page and the smallest torn-write unit on common disks.
pub const PAGE_SIZE_MIN: u32 = 4096;
/// Largest page size: page offsets inside a page must fit a `u16`.
pub const PAGE_SIZE_MAX: u32 = 65536;
/// Default page size: redb's, LMDB's and SQLite's choice; keeps WAL bytes per dirty page small.
pub const PAGE_SIZE_DEFAULT: u32 = 4096;

/// Bytes at the start of every page: CRC32C (4) and type tag (1), then type-specific header.
pub const PAGE_HEADER_BYTES: usize = 16;

/// Longest user key. A leaf must hold at least four maximal cells so splits always make
/// progress, and branch separators are copies of keys.
pub const KEY_BYTES_MAX: usize = 896;
/// Internal tables prefix a user key with up to this many bytes (the expiry index).
pub const INTERNAL_KEY_PREFIX_BYTES_MAX: usize = 16;
/// Longest key stored in any tree, user or internal.
pub const TREE_KEY_BYTES_MAX: usize = KEY_BYTES_MAX + INTERNAL_KEY_PREFIX_BYTES_MAX;
/// Largest value: 64 MiB, carried by an overflow page chain.
pub const VALUE_BYTES_MAX: usize = 64 * 1024 * 1024;
/// Longest table name. Names starting with a NUL byte are reserved for internal tables.
pub const TABLE_NAME_BYTES_MAX: usize = 64;

/// Largest leaf cell header: flags (1), key length (2), value length (4), LSN (8), expiry (8).
pub const LEAF_CELL_HEADER_BYTES_MAX: usize = 23;
/// Bytes of an overflow reference inside a leaf cell: the first page of the chain.
pub const OVERFLOW_REF_BYTES: usize = 4;
/// Bytes of a slot in a page's slot array.
pub const SLOT_BYTES: usize = 2;
/// A leaf cell larger than this moves its value to an overflow chain.
pub const LEAF_CELL_BYTES_MAX: usize =
    (PAGE_SIZE_MIN as usize - PAGE_HEADER_BYTES) / 4 - SLOT_BYTES;

/// WAL header: magic, version, page size, salt, restart count, base LSN, CRC.
pub const WAL_HEADER_BYTES: usize = 64;
/// WAL frame header, followed by one page image.
pub const WAL_FRAME_HEADER_BYTES: usize = 48;
/// Each superblock copy occupies one region of this size at the start of the main file, so a
/// torn write of one copy can never touch the other.
pub const SUPERBLOCK_REGION_BYTES: u64 = 4096;
/// Encoded superblock length inside its region.
pub const SUPERBLOCK_BYTES: usize = 128;
/// The image's page 0 starts after both superblock regions.
pub const MAIN_FILE_PAGES_OFFSET: u64 = 2 * SUPERBLOCK_REGION_BYTES;

const _: () = assert!(PAGE_SIZE_MIN.is_power_of_two() && PAGE_SIZE_MAX.is_power_of_two());
const _: () = assert!(PAGE_SIZE_DEFAULT >= PAGE_SIZE_MIN && PAGE_SIZE_DEFAULT <= PAGE_SIZE_MAX);
// Offsets inside a page are u16; the page end itself (65536) is never stored as an offset.
const _: () = assert!(PAGE_SIZE_MAX as usize <= u16::MAX as usize + 1);
// A maximal key with an overflow reference must fit one leaf cell, so four fit a leaf.
const _: () = assert!(
    LEAF_CELL_HEADER_BYTES_MAX + TREE_KEY_BYTES_MAX + OVERFLOW_REF_BYTES <= LEAF_CELL_BYTES_MAX
);
// A branch cell is a child pointer (4), key length (2) and key: four must fit a branch page.
const _: () = assert!(
    4 * (6 + TREE_KEY_BYTES_MAX + SLOT_BYTES) <= PAGE_SIZE_MIN as usize - PAGE_HEADER_BYTES
);
const _: () = assert!(SUPERBLOCK_BYTES as u64 <= SUPERBLOCK_REGION_BYTES);
const _: () = assert!(VALUE_BYTES_MAX <= u32::MAX as usize);

/// Whether `page_size` is one Hadal can create or open.
pub fn page_size_is_valid(page_size: u32) -> bool {
    page_size.is_power_of_two() && (PAGE_SIZE_MIN..=PAGE_SIZE_MAX).contains(&page_size)
}

/// The shipper seals a segment once its page bytes reach this size (a single larger commit
/// still goes into one segment: commits are never split).
pub const SEGMENT_BYTES_TARGET: usize = 8 * 1024 * 1024;
/// The shipper seals a segment once it holds this many commits.
pub const SEGMENT_COMMITS_MAX: usize = 4096;
/// Decoders refuse a segment whose uncompressed body claims more than this: a bound on what a
/// corrupt or hostile object can make us allocate. Also the largest commit that can ship.
pub const SEGMENT_BODY_BYTES_MAX: usize = 1024 * 1024 * 1024;
/// A snapshot part carries at most this many pages' bytes, so parts upload and download in
/// parallel and a retry costs little.
pub const SNAPSHOT_PART_BYTES_TARGET: usize = 32 * 1024 * 1024;
/// Decoders refuse a snapshot part claiming more pages than this.
pub const SNAPSHOT_PART_PAGES_MAX: u32 = 1 << 20;
/// Decoders refuse manifests larger than this (pins and snapshot lists are small).
pub const MANIFEST_BYTES_MAX: usize = 16 * 1024 * 1024;

const _: () = assert!(SEGMENT_BYTES_TARGET <= SEGMENT_BODY_BYTES_MAX);
const _: () = assert!(SEGMENT_COMMITS_MAX <= u32::MAX as usize);
