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
//! | 1 | kind: 1 DATA, 2 END, 3 BACK |
//! | 2 | flags: END bit 0 = FIN (the sender shut down writing before the switch) |
//! | 3 | zero |
//! | 4..8 | payload length (DATA: 1 ..= `MAX_RECORD`; others 0) |
//! | 8..16 | argument (END: producer counter; DATA: offset since END; BACK: bytes since END) |

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
            Kind::End => at = at.saturating_add(RECORD_HDR),
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
            _ => return Err(ProtoError::BadRecord("switch record: bad kind")),
        };
        let ok = match kind {
            Kind::Data => flags == 0 && (1..=MAX_RECORD).contains(&len),
            Kind::End => flags & !END_FIN == 0 && len == 0,
            Kind::Back => flags == 0 && len == 0,
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
        let off = self.tcp?;
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
}

/// The receiving side of one direction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RxSwitch {
    mode: RxMode,
    /// Payload bytes taken on TCP since the last END.
    tcp_off: u64,
    /// The ring's capacity (an END can be at most this far ahead of our consumer counter).
    cap: u64,
    /// The stream ends at the END's counter (FIN before the switch).
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

    pub fn mode(&self) -> RxMode {
        self.mode
    }

    /// The END said FIN: after the drain the stream is at its end.
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
mod tests {
    use super::*;

    /// A BACK behind an END is found across DATA records; an incomplete or malformed record
    /// stops the look.
    #[test]
    fn a_back_behind_an_end_is_found() {
        let rec = |kind, len: u32| {
            Record {
                kind,
                flags: 0,
                len,
                arg: 0,
            }
            .encode()
            .to_vec()
        };
        let mut w = rec(Kind::Data, 5);
        w.extend_from_slice(b"hello");
        assert!(!back_follows(&w));
        w.extend(rec(Kind::End, 0));
        assert!(!back_follows(&w));
        let mut with_back = w.clone();
        with_back.extend(rec(Kind::Back, 0));
        assert!(back_follows(&with_back));
        assert!(
            !back_follows(&with_back[..with_back.len() - 1]),
            "incomplete"
        );
        let mut bad = w.clone();
        bad.extend_from_slice(&[0u8; RECORD_HDR]);
        bad.extend(rec(Kind::Back, 0));
        assert!(!back_follows(&bad), "past a malformed record");
        // A DATA record whose payload is not all here hides what follows it.
        let mut short = rec(Kind::Data, 100);
        short.extend(rec(Kind::Back, 0));
        assert!(!back_follows(&short));
    }

    /// The sender's and receiver's view of one direction, with a ring that either lands every
    /// write or loses the unpublished ones (the machines do not care which: the END carries
    /// only what was published).
    struct Pipe {
        tx: TxSwitch,
        rx: RxSwitch,
        reader: Reader,
        /// Bytes on TCP not yet read.
        wire: Vec<u8>,
        /// Ring frames published: (producer counter after it, sequence number, payload).
        ring: Vec<(u64, u64, Vec<u8>)>,
        tx_seq: u64,
        rx_seq: u64,
        tail: u64,
        head: u64,
        delivered: Vec<u8>,
    }

    impl Pipe {
        fn new() -> Pipe {
            Pipe {
                tx: TxSwitch::default(),
                rx: RxSwitch::new(1 << 16),
                reader: Reader::default(),
                wire: Vec::new(),
                ring: Vec::new(),
                tx_seq: 0,
                rx_seq: 0,
                tail: 0,
                head: 0,
                delivered: Vec::new(),
            }
        }

        fn send(&mut self, bytes: &[u8]) {
            if self.tx.on_tcp() {
                let mut rest = bytes;
                while !rest.is_empty() {
                    let r = self.tx.data(rest.len()).unwrap();
                    self.wire.extend_from_slice(&r.encode());
                    let (now, later) = rest.split_at(r.len as usize);
                    self.wire.extend_from_slice(now);
                    rest = later;
                }
            } else {
                self.tail += 16 + (bytes.len() as u64).div_ceil(16) * 16;
                self.ring.push((self.tail, self.tx_seq, bytes.to_vec()));
                self.tx_seq += 1;
            }
        }

        fn leave(&mut self, fin: bool) {
            let r = self.tx.leave_ring(self.tail, fin).unwrap();
            self.wire.extend_from_slice(&r.encode());
        }

        fn back(&mut self) {
            let (r, resume) = self.tx.back_to_ring().unwrap();
            assert_eq!(resume, self.tail);
            self.tx_seq = next_epoch(self.tx_seq);
            self.wire.extend_from_slice(&r.encode());
        }

        /// The receiver reads what it can, in order, as `failover` does.
        fn receive(&mut self) -> Result<(), ProtoError> {
            loop {
                let limit = self.rx.ring_limit(self.head);
                let mut progressed = false;
                // Ring frames below the limit.
                while let Some((end, seq, p)) = self.ring.first().cloned() {
                    if end > limit || !matches!(self.rx.mode(), RxMode::Ring | RxMode::Drain { .. })
                    {
                        break;
                    }
                    if seq != self.rx_seq {
                        // Only a frame of the next epoch may come out of order: read TCP.
                        assert!(is_later_epoch(self.rx_seq, seq));
                        break;
                    }
                    self.rx_seq += 1;
                    self.delivered.extend_from_slice(&p);
                    self.head = end;
                    self.ring.remove(0);
                    progressed = true;
                }
                self.rx.drained(self.head, 0)?;
                match self.rx.mode() {
                    RxMode::Ring if progressed && !self.ring.is_empty() => continue,
                    // The ring is short of the END (writes that never landed): stuck.
                    RxMode::Drain { .. } => return Ok(()),
                    _ => {}
                }
                match self.reader.step(&self.wire, &mut self.rx, self.head, 0)? {
                    Step::NeedMore => {
                        if !progressed {
                            return Ok(());
                        }
                    }
                    Step::Payload(n) => {
                        self.delivered.extend_from_slice(&self.wire[..n]);
                        self.wire.drain(..n);
                    }
                    Step::RendezvousArea(ev) => {
                        if ev == RxEvent::Back {
                            self.rx_seq = next_epoch(self.rx_seq);
                        }
                        self.wire.drain(..RECORD_HDR);
                    }
                }
            }
        }
    }

    fn bytes(from: u8, n: usize) -> Vec<u8> {
        (0..n).map(|i| from.wrapping_add(i as u8)).collect()
    }

    #[test]
    fn records_round_trip_and_reject_garbage() {
        for r in [
            Record {
                kind: Kind::Data,
                flags: 0,
                len: 7,
                arg: 99,
            },
            Record {
                kind: Kind::End,
                flags: END_FIN,
                len: 0,
                arg: 4096,
            },
            Record {
                kind: Kind::Back,
                flags: 0,
                len: 0,
                arg: 12,
            },
        ] {
            assert_eq!(Record::decode(&r.encode()), Ok(r));
        }
        let good = Record {
            kind: Kind::Data,
            flags: 0,
            len: 7,
            arg: 0,
        }
        .encode();
        for (i, v) in [(0, 0u8), (1, 9), (2, 1), (3, 1)] {
            let mut b = good;
            b[i] = v;
            assert!(Record::decode(&b).is_err(), "byte {i} = {v}");
        }
        let mut b = good;
        b[4..8].copy_from_slice(&(MAX_RECORD + 1).to_le_bytes());
        assert!(Record::decode(&b).is_err());
        b[4..8].copy_from_slice(&0u32.to_le_bytes());
        assert!(Record::decode(&b).is_err());
        // Plain application bytes (what a non-pcisock peer would send) are no record.
        assert!(Record::decode(b"GET / HTTP/1.1\r\n").is_err());
    }

    #[test]
    fn ring_then_tcp_then_ring_keeps_every_byte_once_in_order() {
        let mut p = Pipe::new();
        let mut want = Vec::new();
        for (i, n) in [5usize, 100, 3].iter().enumerate() {
            let b = bytes(i as u8 * 10, *n);
            want.extend_from_slice(&b);
            p.send(&b);
        }
        // The receiver has read part of the ring before the switch.
        let (end, _, first) = p.ring.remove(0);
        p.delivered.extend_from_slice(&first);
        p.head = end;
        p.rx_seq = 1;
        p.leave(false);
        for n in [1usize, 300_000, 17] {
            let b = bytes(n as u8, n);
            want.extend_from_slice(&b);
            p.send(&b);
        }
        p.back();
        let b = bytes(7, 40);
        want.extend_from_slice(&b);
        p.send(&b);
        p.receive().unwrap();
        assert_eq!(p.delivered, want);
        assert_eq!(p.rx.mode(), RxMode::Ring);
    }

    #[test]
    fn the_ring_is_drained_before_tcp_bytes_even_when_they_arrive_first() {
        let mut p = Pipe::new();
        p.send(b"ring");
        p.leave(false);
        p.send(b"tcp");
        // The receiver sees the END before it looked at its ring.
        let ev = p.reader.step(&p.wire, &mut p.rx, 0, 0).unwrap();
        assert_eq!(
            ev,
            Step::RendezvousArea(RxEvent::Switched {
                end: 32,
                fin: false
            })
        );
        p.wire.drain(..RECORD_HDR);
        assert_eq!(p.rx.ring_limit(0), 32);
        p.receive().unwrap();
        assert_eq!(p.delivered, b"ringtcp");
        assert_eq!(p.rx.mode(), RxMode::Tcp);
    }

    #[test]
    fn switching_with_nothing_in_flight_and_flapping() {
        let mut p = Pipe::new();
        let mut want = Vec::new();
        for round in 0..40u8 {
            p.leave(false);
            p.back();
            let b = bytes(round, 1 + round as usize);
            want.extend_from_slice(&b);
            p.send(&b);
            if round % 3 == 0 {
                p.leave(false);
                let b = bytes(round ^ 0x55, 33);
                want.extend_from_slice(&b);
                p.send(&b);
                p.back();
            }
            if round % 5 == 0 {
                p.receive().unwrap();
            }
        }
        p.receive().unwrap();
        assert_eq!(p.delivered, want);
    }

    #[test]
    fn an_end_after_fin_ends_the_stream() {
        let mut p = Pipe::new();
        p.send(b"last");
        p.leave(true);
        p.receive().unwrap();
        assert_eq!(p.delivered, b"last");
        assert!(p.rx.fin());
        assert_eq!(p.rx.mode(), RxMode::Tcp);
        // Nothing may follow a FIN.
        let mut rx = p.rx;
        let d = Record {
            kind: Kind::Data,
            flags: 0,
            len: 1,
            arg: 0,
        };
        assert!(rx.on_record(&d, p.head, 0).is_err());
    }

    #[test]
    fn ends_that_would_duplicate_or_overrun_are_refused() {
        let end = |arg| Record {
            kind: Kind::End,
            flags: 0,
            len: 0,
            arg,
        };
        // Behind what we consumed: those bytes would be delivered twice.
        assert!(RxSwitch::new(4096).on_record(&end(32), 64, 0).is_err());
        // At our head but we are inside a frame there.
        assert!(RxSwitch::new(4096).on_record(&end(64), 64, 5).is_err());
        // More than a ring ahead, or not frame-aligned.
        assert!(RxSwitch::new(4096)
            .on_record(&end(64 + 4097), 64, 0)
            .is_err());
        assert!(RxSwitch::new(4096).on_record(&end(72), 64, 0).is_err());
        // DATA or BACK before any END, a second END, DATA out of sequence.
        let mut rx = RxSwitch::new(4096);
        let d = |arg| Record {
            kind: Kind::Data,
            flags: 0,
            len: 4,
            arg,
        };
        assert!(rx.on_record(&d(0), 0, 0).is_err());
        assert_eq!(
            rx.on_record(&end(0), 0, 0),
            Ok(RxEvent::Switched { end: 0, fin: false })
        );
        assert!(rx.on_record(&end(0), 0, 0).is_err());
        assert!(rx.on_record(&d(1), 0, 0).is_err());
        assert_eq!(rx.on_record(&d(0), 0, 0), Ok(RxEvent::Data { len: 4 }));
        let back = |arg| Record {
            kind: Kind::Back,
            flags: 0,
            len: 0,
            arg,
        };
        // A BACK that claims another byte count: a record was lost or doubled.
        assert!(rx.clone().on_record(&back(3), 0, 0).is_err());
        assert_eq!(rx.on_record(&back(4), 0, 0), Ok(RxEvent::Back));
    }

    #[test]
    fn a_drain_past_the_end_is_an_error() {
        let mut rx = RxSwitch::new(4096);
        let end = Record {
            kind: Kind::End,
            flags: 0,
            len: 0,
            arg: 128,
        };
        rx.on_record(&end, 64, 0).unwrap();
        assert_eq!(rx.drained(96, 0), Ok(false));
        assert_eq!(rx.drained(128, 8), Ok(false));
        assert!(rx.drained(144, 0).is_err());
    }

    #[test]
    fn epochs() {
        assert_eq!(next_epoch(5), (1 << 48) | 5);
        assert!(is_later_epoch(5, (1 << 48) | 5));
        assert!(is_later_epoch(5, (2 << 48) | 5));
        assert!(!is_later_epoch(5, 6));
        assert!(!is_later_epoch(5, 5));
        assert!(!is_later_epoch(5, (1 << 48) | 6));
    }

    #[test]
    fn payload_split_across_reads() {
        let mut tx = TxSwitch::default();
        let mut rx = RxSwitch::new(4096);
        let mut wire = tx.leave_ring(0, false).unwrap().encode().to_vec();
        wire.extend_from_slice(&tx.data(10).unwrap().encode());
        wire.extend_from_slice(b"0123456789");
        let mut reader = Reader::default();
        let mut got = Vec::new();
        let mut at = 0;
        // Feed one byte at a time: headers wait for 16 bytes, payload comes out byte by byte.
        for upto in 1..=wire.len() {
            loop {
                match reader.step(&wire[at..upto], &mut rx, 0, 0).unwrap() {
                    Step::NeedMore => break,
                    Step::Payload(n) => {
                        got.extend_from_slice(&wire[at..at + n]);
                        at += n;
                    }
                    Step::RendezvousArea(_) => at += RECORD_HDR,
                }
            }
        }
        assert_eq!(got, b"0123456789");
        assert!(reader.at_boundary());
    }
}
