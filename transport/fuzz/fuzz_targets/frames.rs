//! A ring whose bytes and counters the peer controls: drive a consumer over arbitrary frame
//! headers and producer counters; it must never accept a frame outside the published bytes or
//! the ring, and never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use transport::proto::{Frame, FrameHeader, Ring};

fuzz_target!(|data: &[u8]| {
    if data.len() < 24 {
        return;
    }
    let cap = 4096u64 << (data[0] % 8);
    let ring = Ring::new(cap).expect("power of two in range");
    let mut head = u64::from_le_bytes(data[1..9].try_into().unwrap()) & !15 & 0xFFFF_FFFF;
    let mut tail = head + u64::from_le_bytes(data[9..17].try_into().unwrap()) % (2 * cap);
    let mut seq = data[17] as u64;
    for chunk in data[18..].chunks(16) {
        let mut b = [0u8; 16];
        b[..chunk.len()].copy_from_slice(chunk);
        let hdr = FrameHeader::decode(&b);
        match ring.check_frame(head, tail, &hdr, seq) {
            Ok(Frame::Data { len, size }) => {
                assert!(len >= 1 && size >= 16 + len);
                assert!(ring.pos(head) + size <= cap, "frame crosses the ring's end");
                assert!(size <= tail - head, "frame beyond the published bytes");
                head += size;
                seq += 1;
            }
            Ok(Frame::Pad { size }) => {
                assert_eq!(ring.pos(head) + size, cap);
                assert!(size <= tail - head);
                head += size;
            }
            Err(_) => tail = tail.wrapping_add(chunk[0] as u64),
        }
        // The sender's view: credits the peer returned must be validated too.
        let _ = ring.free(tail, head);
        let _ = ring.place(tail, head.min(tail), 1 + chunk.len() as u64 * 97);
    }
});
