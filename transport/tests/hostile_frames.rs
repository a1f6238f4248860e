//! End-to-end over the emulated device: a peer that rewrites frame headers and read offsets in
//! our endpoint block after a real exchange (targeted cases; hostile.rs writes every field, at
//! random too).

mod common;

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use ntbdrv::NtbDevice;
use transport::{Connection, IoError, Transport};

use common::*;

// ---- hostile peers -------------------------------------------------------------------------------
//
// The peer can write anything anywhere in our endpoint block (its outbound window reaches all of
// it). These tests play such a peer by writing into the victim's block directly, after a real
// exchange, and check that the victim sees at worst an error on that connection.

/// Write a frame header (length, flags, sequence) at ring position `pos` of a victim's block.
fn write_header(block: &ntbdrv::Region, pos: usize, len: u32, flags: u16, seq: u64) {
    let mut h = [0u8; 16];
    h[0..4].copy_from_slice(&len.to_le_bytes());
    h[4..6].copy_from_slice(&flags.to_le_bytes());
    h[8..16].copy_from_slice(&seq.to_le_bytes());
    block
        .write(transport::proto::RING_START as usize + pos, &h)
        .unwrap();
}

/// A published 1000-byte frame of which the victim read 500 bytes.
fn half_read_frame(
    tag: &str,
) -> (
    Dir,
    Arc<dyn NtbDevice>,
    Transport,
    Arc<Connection>,
    Connection,
) {
    let (d, dev) = device(tag);
    let t = transport(&dev, 16 << 10);
    let (c, s, ks, kt) = pair(&t);
    std::mem::forget((ks, kt)); // keep the kernel sockets open (the liveness signal)
    let data: Vec<u8> = (0..1000).map(pattern).collect();
    c.send(&[&data], false, None).unwrap();
    let mut b = [0u8; 500];
    assert_eq!(s.recv(&mut [&mut b[..]], NONBLOCK, None), Ok(500));
    assert_eq!(&b[..], &data[..500]);
    (d, dev, t, Arc::new(s), c)
}

#[test]
fn a_frame_header_shrunk_under_the_read_offset_resets_instead_of_spinning() {
    let (_d, dev, t, s, c) = half_read_frame("shrink");
    // The same sequence number, a length below what was already read.
    write_header(&victims_block(&dev, &c), 0, 100, 0, 0);
    let s2 = s.clone();
    let r = within("recv", move || {
        let mut b = [0u8; 1000];
        s2.recv(&mut [&mut b[..]], NONBLOCK, None)
    });
    assert_eq!(r, Err(IoError::Protocol));
    assert_eq!(t.counters().protocol_errors.load(Relaxed), 1);
}

#[test]
fn readable_bytes_survives_a_shrunk_frame_header() {
    let (_d, dev, _t, s, c) = half_read_frame("fionread");
    assert_eq!(s.readable_bytes(), 500);
    write_header(&victims_block(&dev, &c), 0, 100, 0, 0);
    let n = within("readable_bytes", move || s.readable_bytes());
    assert!(n <= 1000, "FIONREAD reports {n} bytes of a 1000-byte frame");
}

#[test]
fn the_read_offset_in_the_block_is_not_the_receivers_state() {
    let (_d, dev, _t, s, c) = half_read_frame("offword");
    // The LOCAL line (0x80: consumer counter, 0x88: offset in the frame, 0x90: sequence) is in
    // the block too: the peer can write it.
    let block = victims_block(&dev, &c);
    block.atomic_u64(0x88).unwrap().store(5000, Relaxed);
    let s2 = s.clone();
    let r = within("recv", move || {
        let mut b = [0u8; 1000];
        s2.recv(&mut [&mut b[..]], NONBLOCK, None)
            .map(|n| b[..n].to_vec())
    });
    match r {
        Ok(got) => assert_eq!(got, (500..1000).map(pattern).collect::<Vec<_>>()),
        Err(e) => assert_eq!(e, IoError::Protocol),
    }
    // Moving the offset back does not make the victim read bytes twice.
    let (_d2, dev2, _t2, s, c) = half_read_frame("offback");
    victims_block(&dev2, &c)
        .atomic_u64(0x88)
        .unwrap()
        .store(0, Relaxed);
    let mut b = [0u8; 1000];
    let n = s.recv(&mut [&mut b[..]], NONBLOCK, None).unwrap();
    assert_eq!(&b[..n], &(500..1000).map(pattern).collect::<Vec<_>>()[..]);
}

#[test]
fn a_pad_frame_that_is_not_at_the_rings_end_is_a_protocol_error() {
    // A pad frame fills the ring to its end from the last 16 bytes or from the end of the
    // sender's reach, never from position 0: a pad there spanning the whole ring is a peer
    // stalling the reader with pads.
    let (_d, dev) = device("padflood");
    let t = transport(&dev, 16 << 10);
    let (c, s, _ks, _kt) = pair(&t);
    let cap = 16u64 << 10;
    let block = victims_block(&dev, &c);
    write_header(&block, 0, (cap - 16) as u32, 1, 0);
    block
        .atomic_u64(0)
        .unwrap()
        .store(cap, std::sync::atomic::Ordering::Release);
    let mut b = [0u8; 64];
    assert_eq!(
        s.recv(&mut [&mut b[..]], NONBLOCK, None),
        Err(IoError::Protocol)
    );
}

#[test]
fn the_idle_sweep_passes_only_a_pad_the_protocol_allows() {
    // The receiver's idle sweep passes a pad frame at its consumer counter (the peer's idle
    // release moves its next header slot to position 0 behind one: docs/PROTOCOL.md §2, *Idle
    // rings*). A forged one that does not end at the ring's end is not passed: the next
    // `recv` reports it, and the sweep neither panics nor moves the consumer counter.
    let (_d, dev) = device("sweeppad");
    let t = transport(&dev, 16 << 10);
    let (c, s, _ks, _kt) = pair(&t);
    let cap = 16usize << 10;
    let data: Vec<u8> = (0..100).map(pattern).collect();
    c.send(&[&data], false, None).unwrap();
    let mut b = [0u8; 100];
    assert_eq!(s.recv(&mut [&mut b[..]], NONBLOCK, None), Ok(100));
    // Frame 1 would go at 128 (16 + 112): a pad there, published by its own header, 16 bytes
    // short of the ring's end.
    let block = victims_block(&dev, &c);
    write_header(&block, 128, (cap - 128 - 32) as u32, 1, 1);
    let s = Arc::new(s);
    for now in [1, 2000, 4000] {
        let s = s.clone();
        let _ = within("sweep", move || s.release_idle_tx(now, 1000));
    }
    assert_eq!(t.counters().protocol_errors.load(Relaxed), 0);
    assert_eq!(
        s.recv(&mut [&mut b[..]], NONBLOCK, None),
        Err(IoError::Protocol)
    );
}
