//! Typed IDs. Each is a newtype with a private field so an LSN can never be passed where a slot
//! is expected. Arithmetic exists only where the domain has it (the next LSN, the next slot).
//! `Display` of the bucket-facing IDs gives the 20-digit zero-padded form used in bucket keys,
//! so that listing order is numeric order; `Debug` is compact.

use std::fmt;

macro_rules! sequence_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
        pub struct $name(u64);

        impl $name {
            /// The value before the first one: nothing has happened yet.
            pub const ZERO: Self = Self(0);

            pub const fn new(value: u64) -> Self {
                Self(value)
            }

            pub const fn get(self) -> u64 {
                self.0
            }

            /// The following ID. Sequences are dense, so this is the only step there is.
            pub fn next(self) -> Self {
                Self(self.0.checked_add(1).expect(concat!(stringify!($name), " overflow: 2^64 values are never reached")))
            }

            /// The preceding ID, or `None` at zero.
            pub fn prev(self) -> Option<Self> {
                self.0.checked_sub(1).map(Self)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{:020}", self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "({})"), self.0)
            }
        }
    };
}

sequence_id!(
    /// Log sequence number: the number of a committed write transaction, 1, 2, 3, …, continuing
    /// across writer changes, restores and branches. `Lsn::ZERO` is the empty database.
    Lsn
);
sequence_id!(
    /// A segment slot in the bucket's commit log: dense, starting at 1.
    Slot
);
sequence_id!(
    /// A writer epoch: raised by every takeover; never decreases along the log.
    Epoch
);
sequence_id!(
    /// A manifest's number in the bucket's metadata log: dense, starting at 1.
    ManifestId
);

/// The index of a page in the database image. Page 0 is the meta page.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct PageNo(u32);

impl PageNo {
    /// The meta page: the root of everything else in the image.
    pub const META: Self = Self(0);

    pub const fn new(value: u32) -> Self {
        Self(value)
    }

    pub const fn get(self) -> u32 {
        self.0
    }

    /// The page's index as a `u64`, for offset arithmetic.
    pub const fn index(self) -> u64 {
        self.0 as u64
    }
}

impl fmt::Display for PageNo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl fmt::Debug for PageNo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PageNo({})", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_is_the_bucket_key_form() {
        // Proves listing order equals numeric order: the key form is fixed-width.
        assert_eq!(Lsn::new(42).to_string(), "00000000000000000042");
        assert_eq!(Slot::new(u64::MAX).to_string(), "18446744073709551615");
        assert!(Lsn::new(9).to_string() < Lsn::new(10).to_string());
        assert_eq!(format!("{:?}", Epoch::new(3)), "Epoch(3)");
    }

    #[test]
    fn sequences_step_by_one() {
        // Proves next/prev are inverse and prev stops at zero.
        assert_eq!(Lsn::ZERO.next(), Lsn::new(1));
        assert_eq!(Lsn::new(1).prev(), Some(Lsn::ZERO));
        assert_eq!(Lsn::ZERO.prev(), None);
    }
}
