//! The receiving side of the wire protocol: a receiver's position in its ring and each step of
//! a read ([`Ring::read_step`]), the credit policy ([`credit_return`]) and the frame header's
//! encoding. Pure functions, as the rest of `proto` (whose lints it inherits): they never panic on
//! what a peer wrote.

use super::{Frame, ProtoError, Ring, FRAME_HDR};

/// A receiver's position in its ring: the consumer counter, the bytes of the frame there that
/// were read already, and the sequence number of the next data frame. It lives in the
/// receiver's private memory; the peer only ever sees a copy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadPos {
    pub head: u64,
    pub off: u64,
    pub seq: u64,
}

/// One step of a read: copy `n` payload bytes from ring position `from`, then stand at `next`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadStep {
    /// Ring position of the first payload byte to copy (a frame never crosses the ring's end).
    pub from: u64,
    /// Bytes to copy: at most what the buffer has room for and what the frame has left.
    pub n: u64,
    /// The position after the copy: past the frame (its sequence number used) once it was read
    /// whole, and at once for a pad frame.
    pub next: ReadPos,
}

impl ReadStep {
    /// The step took the reader past its frame.
    pub fn passed_frame(&self, from: &ReadPos) -> bool {
        self.next.head != from.head
    }
}

impl Ring {
    /// The receiver at `at`, facing `frame` (validated by [`Ring::check_frame`] at `at.head`),
    /// with `room` bytes of buffer left: what it copies and where it then stands. The frame's
    /// length is the peer's (it may have rewritten the header since the reader took part of the
    /// frame), the offset is ours: an offset the frame does not have is an error, never a
    /// step that makes no progress. A pad frame is skipped whole, and only from its start.
    // `check_frame` put the frame (header, payload, padding) below the ring's end, so the
    // sums stay below `cap`, and `off < len` before each subtraction.
    #[allow(clippy::arithmetic_side_effects)]
    #[inline]
    pub fn read_step(&self, at: ReadPos, frame: Frame, room: u64) -> Result<ReadStep, ProtoError> {
        match frame {
            Frame::Pad { size } => {
                if at.off != 0 {
                    return Err(ProtoError::BadOffset {
                        off: at.off,
                        len: 0,
                    });
                }
                Ok(ReadStep {
                    from: self.pos(at.head),
                    n: 0,
                    next: ReadPos {
                        head: at.head.wrapping_add(size),
                        ..at
                    },
                })
            }
            Frame::Data { len, size } => {
                if at.off >= len {
                    return Err(ProtoError::BadOffset { off: at.off, len });
                }
                let n = room.min(len - at.off);
                let from = self.pos(at.head) + FRAME_HDR + at.off;
                let off = at.off + n;
                let next = if off == len {
                    ReadPos {
                        head: at.head.wrapping_add(size),
                        off: 0,
                        seq: at.seq.wrapping_add(1),
                    }
                } else {
                    ReadPos { off, ..at }
                };
                Ok(ReadStep { from, n, next })
            }
        }
    }
}

/// The receiver's credit policy: when it hands its consumer counter back to the sender. Each
/// return is a store into the sender's memory (across the bridge, and into a cache line the
/// sender reads), so credits gather until a quarter of the ring is free again; a sender that
/// waits for them, or a receiver about to sleep or arm (`force`), gets them at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CreditReturn {
    /// Nothing was consumed since the last return.
    Nothing,
    /// Less than a quarter of the ring gathered: return only if the sender waits for credits.
    IfSenderWaits,
    /// Return now.
    Now,
}

/// Credits gather until this share of the ring (1/`CREDIT_BATCH`) is free again.
pub const CREDIT_BATCH: u64 = 4;

/// What the receiver of a ring of `cap` bytes does with its consumer counter `head`, having
/// last returned `returned`; `force`: it is about to sleep or arm, and must leave no sender
/// waiting on credits it holds.
#[inline]
pub fn credit_return(cap: u64, head: u64, returned: u64, force: bool) -> CreditReturn {
    if head == returned {
        CreditReturn::Nothing
    } else if !force && head.saturating_sub(returned) < cap / CREDIT_BATCH {
        CreditReturn::IfSenderWaits
    } else {
        CreditReturn::Now
    }
}

/// A frame header: `len` payload bytes, flags, and the frame's sequence number (data frames are
/// numbered from 0 per direction; pad frames carry the next number without using it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    pub len: u32,
    pub flags: u16,
    pub seq: u64,
}

impl FrameHeader {
    #[inline]
    pub fn encode(&self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[0..4].copy_from_slice(&self.len.to_le_bytes());
        b[4..6].copy_from_slice(&self.flags.to_le_bytes());
        b[8..16].copy_from_slice(&self.seq.to_le_bytes());
        b
    }

    pub fn decode(b: &[u8; 16]) -> FrameHeader {
        FrameHeader {
            len: u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            flags: u16::from_le_bytes([b[4], b[5]]),
            seq: u64::from_le_bytes([b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]]),
        }
    }
}
