//! Over the host fabric service, messages of every size cross the client's ring, whose
//! positions in the segment's shared page past its first 1 KiB are the server's (its hole:
//! docs/PROTOCOL.md §2, *The shared page*), exactly.

mod common;

use common::pair;
use common::pattern;
use common::service::{exchange, service, transport};

/// Messages of every size, both ways, with the receiver reading now at once and now after a
/// burst: the server's frames into the client's ring go around its hole (pads to the hole's
/// end, and over the ring's end and the hole for frames too large for the bytes before it),
/// and every byte arrives in order.
#[test]
fn messages_of_every_size_cross_the_hole_exactly() {
    let svc = service();
    for ring in [16 << 10, 64 << 10] {
        let t = transport(&svc, ring);
        let (c, s, _cs, _ss) = pair(&t);
        let mut seed = 0x9e37_79b9_7f4a_7c15u64 ^ ring;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut at = 0u64;
        for round in 0..3000 {
            let len = match round % 5 {
                0 => 1 + next() % 64,
                1 => 900 + next() % 300,
                2 => 1000 + next() % 4000,
                _ => 1 + next() % 1500,
            } as usize;
            let msg: Vec<u8> = (at..at + len as u64).map(pattern).collect();
            at += len as u64;
            if round % 2 == 0 {
                exchange(&s, &c, &msg);
            } else {
                exchange(&c, &s, &msg);
            }
        }
    }
}
