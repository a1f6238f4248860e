//! The drain-and-switch protocol, as pure state machines: how a connection's two ends move one
//! direction of the stream from the NTB ring to the connection's own TCP socket and back,
//! without losing, duplicating or reordering a byte.
//!
//! Called by `failover` (the connection's I/O around these machines); no I/O, no unsafe, no
//! clocks, so the tests below drive every transition. It never decides *when* to switch (that
//! is detection, in `failover`), only what is sent and what a received record means.
//!
//! Each direction switches on its own, decided by its sender, at a marker on the TCP socket:
//!
//! - **END** (sender → receiver over TCP): "the ring stream ends at producer counter `tail`;
//!   what follows on TCP continues it". The receiver consumes its ring up to exactly `tail`
//!   (the ring is its own memory: what landed there is consumed there), then reads TCP. Bytes
//!   below `tail` are never re-sent; bytes at or after it are never put into the ring before a
//!   BACK, so none is delivered twice.
//! - **DATA** (sender → receiver over TCP, after END): `len` stream bytes; `arg` is the byte
//!   offset of the first one since the END (a check against a lost or doubled record).
//! - **BACK** (sender → receiver over TCP): "the TCP part ends after `arg` bytes; the stream
//!   continues in the ring at the producer counter where END left it".
//! - **SHUT** (sender → receiver over TCP, after END): "the sender shut down writing after `arg`
//!   bytes since the END": the stream ends there, and the kernel's FIN that follows is a
//!   half-close, not the sender's death (a receiver on another host cannot ask the sender's
//!   process; [`shut_ahead`]).
//!
//! A receiver on the ring cannot know that the sender left it and came back (the END is on
//! TCP, which it does not read while the ring has data): frames written after a BACK would be
//! read before the TCP bytes that precede them. So a BACK starts a new *epoch* of the ring's
//! sequence numbers (the top 16 bits, [`next_epoch`]): the first frame after it carries a
//! sequence number the receiver does not expect yet ([`is_later_epoch`]), and the receiver then
//! reads TCP up to the BACK first. The ring's fast path is unchanged: the sequence check was
//! there already.
//!
//! Every byte on the TCP socket after a connection was upgraded is part of such a record, so
//! a plain peer (one that never upgraded) never sees one, and after a switch the receiver can
//! tell a marker from data. A record is 16 bytes of header (little-endian) and, for DATA, the
//! payload:
//!
//! | bytes | field |
//! |---|---|
//! | 0 | magic `0xF5` |
//! | 1 | kind: 1 DATA, 2 END, 3 BACK, 4 SHUT |
//! | 2 | flags: END bit 0 = FIN (the sender shut down writing before the switch) |
//! | 3 | zero |
//! | 4..8 | payload length (DATA: 1 ..= `MAX_RECORD`; others 0) |
//! | 8..16 | argument (END: producer counter; DATA: offset since END; BACK, SHUT: bytes since END) |

// Decodes what a peer writes: it must never panic on it.
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::indexing_slicing,
        clippy::arithmetic_side_effects
    )
)]

use crate::proto::{ProtoError, FRAME_ALIGN};

/// Bytes of a record header.
pub const RECORD_HDR: usize = 16;
/// Largest DATA payload of one record.
pub const MAX_RECORD: u32 = 256 << 10;
const MAGIC: u8 = 0xF5;
/// END flag: the sender had shut down writing; the stream ends at the END's counter.
pub const END_FIN: u8 = 1;

/// Bits of a frame sequence number below the epoch.
const EPOCH_SHIFT: u32 = 48;

/// The first sequence number of the epoch after the one `seq` is in (the next frame after a
/// BACK, on both sides).
pub fn next_epoch(seq: u64) -> u64 {
    let count = seq & ((1 << EPOCH_SHIFT) - 1);
    // The epoch is 16 bits: after the last one the next is 0 again (the shift drops the carry).
    (((seq >> EPOCH_SHIFT).wrapping_add(1)) << EPOCH_SHIFT) | count
}

/// The frame count of a sequence number, without its epoch.
pub fn seq_count(seq: u64) -> u64 {
    seq & ((1 << EPOCH_SHIFT) - 1)
}

/// A frame numbered `got` where `expected` was due is the same frame of a later epoch: the
/// sender went back to the ring (once or more, each after an END and a BACK) after TCP records
/// this receiver has not read yet.
pub fn is_later_epoch(expected: u64, got: u64) -> bool {
    let low = (1 << EPOCH_SHIFT) - 1;
    got & low == expected & low && got != expected
}

/// Do the records at the start of `wire` (complete ones, read from the peer's socket) hold a
/// BACK? An END read late may have its BACK right behind it: the peer left the ring and came
/// back while we were not reading, and following it off the ring would only cost a spell on TCP.
/// Stops at the first incomplete or malformed record (the reader reports those).
pub fn back_follows(wire: &[u8]) -> bool {
    let mut at = 0usize;
    while let Some(h) = wire.get(at..).and_then(|w| w.first_chunk::<RECORD_HDR>()) {
        let Ok(r) = Record::decode(h) else {
            return false;
        };
        match r.kind {
            Kind::Back => return true,
            Kind::Shut => return false,
            Kind::End => at = at.saturating_add(RECORD_HDR),
            Kind::Data => {
                at = at.saturating_add(RECORD_HDR).saturating_add(r.len as usize);
            }
        }
    }
    false
}

/// Do the records in `wire` (taken from the peer's socket and not parsed yet, `reader` being
/// where the parse stands) say the peer shut down writing: a SHUT, or an END with FIN? Then
/// the end of its TCP socket after them is its half-close, not its death. Looks without
/// parsing (a draining receiver may not parse yet); stops at the first incomplete or malformed
/// record (the reader reports those).
pub fn shut_ahead(reader: &Reader, wire: &[u8]) -> bool {
    let mut at = usize::try_from(reader.left).unwrap_or(usize::MAX);
    while let Some(h) = wire.get(at..).and_then(|w| w.first_chunk::<RECORD_HDR>()) {
        let Ok(r) = Record::decode(h) else {
            return false;
        };
        match r.kind {
            Kind::Shut => return true,
            Kind::End if r.flags & END_FIN != 0 => return true,
            Kind::End | Kind::Back => at = at.saturating_add(RECORD_HDR),
            Kind::Data => {
                at = at.saturating_add(RECORD_HDR).saturating_add(r.len as usize);
            }
        }
    }
    false
}

/// What a record is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Data = 1,
    End = 2,
    Back = 3,
    Shut = 4,
}

/// A record header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Record {
    pub kind: Kind,
    pub flags: u8,
    pub len: u32,
    pub arg: u64,
}

impl Record {
    pub fn encode(&self) -> [u8; RECORD_HDR] {
        let mut b = [0u8; RECORD_HDR];
        b[0] = MAGIC;
        b[1] = self.kind as u8;
        b[2] = self.flags;
        b[4..8].copy_from_slice(&self.len.to_le_bytes());
        b[8..16].copy_from_slice(&self.arg.to_le_bytes());
        b
    }

    /// Decode and check a header the peer wrote.
    pub fn decode(b: &[u8; RECORD_HDR]) -> Result<Record, ProtoError> {
        let [magic, kind, flags, zero, l0, l1, l2, l3, a0, a1, a2, a3, a4, a5, a6, a7] = *b;
        if magic != MAGIC || zero != 0 {
            return Err(ProtoError::BadRecord("switch record: bad magic"));
        }
        let len = u32::from_le_bytes([l0, l1, l2, l3]);
        let arg = u64::from_le_bytes([a0, a1, a2, a3, a4, a5, a6, a7]);
        let kind = match kind {
            1 => Kind::Data,
            2 => Kind::End,
            3 => Kind::Back,
            4 => Kind::Shut,
            _ => return Err(ProtoError::BadRecord("switch record: bad kind")),
        };
        let ok = match kind {
            Kind::Data => flags == 0 && (1..=MAX_RECORD).contains(&len),
            Kind::End => flags & !END_FIN == 0 && len == 0,
            Kind::Back | Kind::Shut => flags == 0 && len == 0,
        };
        if !ok {
            return Err(ProtoError::BadRecord("switch record: bad flags or length"));
        }
        Ok(Record {
            kind,
            flags,
            len,
            arg,
        })
    }
}

/// The sending side of one direction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct TxSwitch {
    /// On TCP since an END, with this many bytes sent since.
    tcp: Option<u64>,
    /// The producer counter where the ring stream stopped (the ring resumes there).
    end: u64,
    /// Shut down writing while on TCP (SHUT sent): nothing follows, not even a BACK.
    shut: bool,
}

impl TxSwitch {
    pub fn on_tcp(&self) -> bool {
        self.tcp.is_some()
    }

    /// Leave the ring at producer counter `tail` (everything below it is published): the END
    /// to send first on TCP. `None` if already on TCP.
    pub fn leave_ring(&mut self, tail: u64, fin: bool) -> Option<Record> {
        if self.tcp.is_some() {
            return None;
        }
        self.tcp = Some(0);
        self.end = tail;
        Some(Record {
            kind: Kind::End,
            flags: if fin { END_FIN } else { 0 },
            len: 0,
            arg: tail,
        })
    }

    /// The header of the next DATA record, for up to `want` bytes (at most `MAX_RECORD`);
    /// `None` on the ring (or for zero bytes). The caller sends exactly `len` payload bytes
    /// after it.
    pub fn data(&mut self, want: usize) -> Option<Record> {
        let off = self.tcp.filter(|_| !self.shut)?;
        let len = u32::try_from(want).unwrap_or(MAX_RECORD).min(MAX_RECORD);
        if len == 0 {
            return None;
        }
        // Our own byte count on TCP: 2^64 bytes is no stream's.
        self.tcp = Some(off.saturating_add(u64::from(len)));
        Some(Record {
            kind: Kind::Data,
            flags: 0,
            len,
            arg: off,
        })
    }

    /// Go back to the ring: the BACK to send, and the producer counter the ring resumes at.
    /// `None` if on the ring already.
    pub fn back_to_ring(&mut self) -> Option<(Record, u64)> {
        if self.shut {
            return None;
        }
        let sent = self.tcp.take()?;
        Some((
            Record {
                kind: Kind::Back,
                flags: 0,
                len: 0,
                arg: sent,
            },
            self.end,
        ))
    }
}

impl TxSwitch {
    /// Bytes sent on TCP since the END, while on TCP.
    pub fn sent_on_tcp(&self) -> Option<u64> {
        self.tcp
    }

    /// The switch as another process holding the connection left it (a forked child that
    /// sent last): on TCP with `sent` bytes since an END at `end` (the producer counter, which
    /// does not move while on TCP), or on the ring; `shut` if writing was shut down.
    pub fn taken_over(sent: Option<u64>, end: u64, shut: bool) -> TxSwitch {
        TxSwitch {
            tcp: sent,
            end,
            shut: shut && sent.is_some(),
        }
    }

    /// Shut down writing while on TCP: the SHUT to send before the kernel's FIN. `None` on the
    /// ring (the ring's FIN says it there) or if already sent.
    pub fn shut(&mut self) -> Option<Record> {
        let sent = self.tcp?;
        if self.shut {
            return None;
        }
        self.shut = true;
        Some(Record {
            kind: Kind::Shut,
            flags: 0,
            len: 0,
            arg: sent,
        })
    }
}

/// Where the receiving side of one direction takes its next bytes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RxMode {
    /// The ring (and, after a BACK, first the TCP bytes already taken in).
    Ring,
    /// The ring up to producer counter `end`, then TCP.
    Drain { end: u64 },
    /// TCP records.
    Tcp,
}

/// What a record (or the end of a drain) means to the receiver.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RxEvent {
    /// The sender left the ring at `end` (`fin`: and will send nothing after it).
    Switched { end: u64, fin: bool },
    /// `len` payload bytes follow: stream data.
    Data { len: u32 },
    /// The sender went back to the ring.
    Back,
    /// The sender shut down writing: the stream ends here.
    Shut,
}

/// The receiving side of one direction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RxSwitch {
    mode: RxMode,
    /// Payload bytes taken on TCP since the last END.
    tcp_off: u64,
    /// The ring's capacity (an END can be at most this far ahead of our consumer counter).
    cap: u64,
    /// The stream ends: at the END's counter (FIN before the switch), or at a SHUT.
    fin: bool,
}

impl RxSwitch {
    pub fn new(cap: u64) -> RxSwitch {
        RxSwitch {
            mode: RxMode::Ring,
            tcp_off: 0,
            cap,
            fin: false,
        }
    }

    /// The receiving side of a connection upgraded late (made while the link was down): as if
    /// the sender had left the ring at producer counter 0 and sent its `sent` plain bytes in
    /// one DATA record since (the caller's [`Reader::pending`] holds what of it is unread).
    pub fn late(cap: u64, sent: u64) -> RxSwitch {
        RxSwitch {
            mode: RxMode::Tcp,
            tcp_off: sent,
            cap,
            fin: false,
        }
    }

    pub fn mode(&self) -> RxMode {
        self.mode
    }

    /// The END said FIN (after the drain the stream is at its end), or a SHUT ended it.
    pub fn fin(&self) -> bool {
        self.fin
    }

    /// The ring's producer counter the receiver may read up to now (`u64::MAX`: no limit).
    pub fn ring_limit(&self, head: u64) -> u64 {
        match self.mode {
            RxMode::Ring => u64::MAX,
            RxMode::Drain { end } => end,
            RxMode::Tcp => head,
        }
    }

    /// A record header arrived, with our ring's consumer counter at `head` (and `off` bytes of
    /// the frame there read). Validates it against our state.
    pub fn on_record(&mut self, r: &Record, head: u64, off: u64) -> Result<RxEvent, ProtoError> {
        match (self.mode, r.kind) {
            (RxMode::Ring, Kind::End) => {
                let end = r.arg;
                // The ring stream cannot end before what we consumed (those bytes would come
                // twice) nor more than a ring ahead of it, and frames end 16-aligned.
                let behind = end < head || (end == head && off != 0);
                let ahead = end.saturating_sub(head);
                if behind || ahead > self.cap || !end.is_multiple_of(FRAME_ALIGN) {
                    return Err(ProtoError::BadRecord("END outside the ring's stream"));
                }
                self.mode = RxMode::Drain { end };
                self.tcp_off = 0;
                self.fin = r.flags & END_FIN != 0;
                self.drained(head, off)?;
                Ok(RxEvent::Switched { end, fin: self.fin })
            }
            // Records after the END are read only once the ring is drained up to it (the
            // caller parses nothing while draining), so TCP bytes never overtake ring bytes.
            (RxMode::Tcp, Kind::Data) if !self.fin => {
                if r.arg != self.tcp_off {
                    return Err(ProtoError::BadRecord("DATA out of sequence"));
                }
                self.tcp_off = self
                    .tcp_off
                    .checked_add(u64::from(r.len))
                    .ok_or(ProtoError::BadRecord("DATA beyond the stream's end"))?;
                Ok(RxEvent::Data { len: r.len })
            }
            (RxMode::Tcp, Kind::Back) if !self.fin => {
                if r.arg != self.tcp_off {
                    return Err(ProtoError::BadRecord("BACK after another byte count"));
                }
                self.mode = RxMode::Ring;
                Ok(RxEvent::Back)
            }
            (RxMode::Tcp, Kind::Shut) if !self.fin => {
                if r.arg != self.tcp_off {
                    return Err(ProtoError::BadRecord("SHUT after another byte count"));
                }
                self.fin = true;
                Ok(RxEvent::Shut)
            }
            _ => Err(ProtoError::BadRecord("switch record in the wrong state")),
        }
    }

    /// Our consumer counter reached `head` (`off` into its frame) while draining: true when
    /// the drain is complete (we read TCP from now on). Past the END is a protocol error.
    pub fn drained(&mut self, head: u64, off: u64) -> Result<bool, ProtoError> {
        match self.mode {
            RxMode::Drain { end } if head == end && off == 0 => {
                self.mode = RxMode::Tcp;
                Ok(true)
            }
            RxMode::Drain { end } if head > end => {
                Err(ProtoError::BadRecord("ring read past the END"))
            }
            RxMode::Drain { .. } => Ok(false),
            _ => Ok(true),
        }
    }
}

/// Splits a stream of TCP bytes into records: payload bytes and control events.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Reader {
    /// Payload bytes of the current DATA record still to come.
    left: u64,
}

/// One step of [`Reader::step`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// The next `n` input bytes are stream data.
    Payload(usize),
    /// A record header was consumed (`RECORD_HDR` input bytes) and means this.
    RendezvousArea(RxEvent),
    /// Not enough input for a header.
    NeedMore,
}

impl Reader {
    /// A reader inside a DATA record with `left` payload bytes still to come (a late upgrade:
    /// the plain bytes the peer sent before it that were not read yet, [`RxSwitch::late`]).
    pub fn pending(left: u64) -> Reader {
        Reader { left }
    }

    /// Is the reader between records (no payload pending)?
    pub fn at_boundary(&self) -> bool {
        self.left == 0
    }

    /// Take the next step over `input` (which starts where the last step ended).
    pub fn step(
        &mut self,
        input: &[u8],
        sw: &mut RxSwitch,
        head: u64,
        off: u64,
    ) -> Result<Step, ProtoError> {
        if self.left > 0 {
            if input.is_empty() {
                return Ok(Step::NeedMore);
            }
            let n = (input.len() as u64).min(self.left);
            self.left = self.left.saturating_sub(n);
            return Ok(Step::Payload(n as usize));
        }
        let Some(h) = input.first_chunk::<RECORD_HDR>() else {
            return Ok(Step::NeedMore);
        };
        let r = Record::decode(h)?;
        let ev = sw.on_record(&r, head, off)?;
        if let RxEvent::Data { len } = ev {
            self.left = u64::from(len);
        }
        Ok(Step::RendezvousArea(ev))
    }
}

#[cfg(test)]
mod tests;
