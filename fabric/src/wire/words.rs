//! The word helpers of the codec: addresses as two words, checked narrow fields, and a window
//! slice in three words. They never panic on a word's value: one out of its field's range is an
//! error (`WireError::Value`).

use super::{Addr, WireError};

pub(super) fn addr_words(a: &Addr) -> (u64, u64) {
    let mut x = [0u8; 8];
    let mut y = [0u8; 8];
    x.copy_from_slice(&a[..8]);
    y.copy_from_slice(&a[8..]);
    (u64::from_le_bytes(x), u64::from_le_bytes(y))
}

pub(super) fn words_addr(x: u64, y: u64) -> Addr {
    let mut a = [0u8; 16];
    a[..8].copy_from_slice(&x.to_le_bytes());
    a[8..].copy_from_slice(&y.to_le_bytes());
    a
}

pub(super) fn u32_word(kind: u16, words: &[u64], i: usize) -> Result<u32, WireError> {
    u32::try_from(words[i]).map_err(|_| WireError::Value { kind, word: i })
}

/// An offset in an arena: a whole number of pages (4 KiB), as every segment's start is.
pub(super) fn page_word(kind: u16, words: &[u64], i: usize) -> Result<u64, WireError> {
    match words[i] {
        w if w % 4096 == 0 => Ok(w),
        _ => Err(WireError::Value { kind, word: i }),
    }
}

pub(super) fn bool_word(kind: u16, words: &[u64], i: usize) -> Result<bool, WireError> {
    match words[i] {
        0 => Ok(false),
        1 => Ok(true),
        _ => Err(WireError::Value { kind, word: i }),
    }
}

/// A slice of a memory window on the bridge: an endpoint block (docs/PROTOCOL.md §2) and the
/// interrupt vector of the process that reads it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Slice {
    pub mw: u32,
    pub vector: u32,
    pub offset: u64,
    pub len: u64,
}

impl Slice {
    pub(super) fn words(&self) -> Vec<u64> {
        vec![
            self.mw as u64 | (self.vector as u64) << 32,
            self.offset,
            self.len,
        ]
    }

    pub(super) fn from_words(kind: u16, w: &[u64], at: usize) -> Result<Slice, WireError> {
        Ok(Slice {
            mw: w[at] as u32,
            vector: (w[at] >> 32) as u32,
            offset: w[at + 1],
            len: w[at + 2],
        })
        .and_then(|s| {
            if s.len == 0 {
                Err(WireError::Value { kind, word: at + 2 })
            } else {
                Ok(s)
            }
        })
    }
}
