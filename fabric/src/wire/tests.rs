//! The wire codec's tests: every request and reply round-trips, and malformed, truncated or
//! oversized messages are refused with the error that names them.

use super::*;

fn all_requests() -> Vec<Request> {
    vec![
        Request::Hello { pid: 4242 },
        Request::Listen,
        Request::Namespace,
        Request::Unlisten { listener: 7 },
        Request::Connect {
            addr: [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 127, 0, 0, 1],
            port: 5201,
            ring: 1 << 20,
            quiet: true,
        },
        Request::Cancel {
            request: u64::MAX,
            stalled_only: true,
            quiet: false,
        },
        Request::Accept {
            ring: 128 << 10,
            nowait: true,
        },
        Request::Hold,
        Request::Close {
            conn: 3,
            server: true,
            clean: true,
        },
        Request::Status,
        Request::List,
        Request::Stop,
        Request::Fallback {
            reason: 4,
            server: false,
        },
        Request::History,
        Request::Plain {
            request: 8,
            bytes: 78,
        },
        Request::Refetch {
            conn: 11,
            server: true,
        },
        Request::Forked,
    ]
}

fn all_replies() -> Vec<Reply> {
    vec![
        Reply::Welcome {
            service_pid: 1,
            ring_bytes: 1 << 20,
            window_bytes: 512 << 20,
            line: 3,
        },
        Reply::Listening { listener: 9 },
        Reply::Offered { conn: 10 },
        Reply::Reoffered { conn: 12, line: 4 },
        Reply::Paired {
            conn: 11,
            ring_bytes: 4096,
            server: true,
            own_line: 5,
            peer_line: 6,
            plain: 78,
            offset: 3 << 30,
        },
        Reply::Again(Again {
            conn: 14,
            ring_bytes: 16 << 10,
            server: false,
            own_line: 5,
            peer_line: 6,
            plain: 0,
            dev: 27,
            inode: 1 << 40,
            offset: u64::MAX - 4095,
        }),
        Reply::Bridged {
            conn: 13,
            ring_bytes: 1 << 20,
            server: false,
            own: Slice {
                mw: 1,
                vector: 7,
                offset: 4 << 20,
                len: (1 << 20) + 4096,
            },
            peer: Slice {
                mw: 0,
                vector: 2047,
                offset: 300 << 10,
                len: (1 << 20) + 4096,
            },
        },
        Reply::Declined { reason: 4 },
        Reply::Done,
        Reply::Status(Status {
            service_pid: 5,
            clients: 1,
            listeners: 2,
            offers: 3,
            connections: 4,
            window_used: 5,
            window_bytes: 6,
            paired: 7,
            declined: 8,
            refused: 9,
            reclaimed: 10,
        }),
        Reply::Refused { why: 3 },
        Reply::Entry(Box::new(Entry {
            conn: 9,
            ring_bytes: 65536,
            client_pid: 100,
            server_pid: 200,
            client: ([1; 16], 40000),
            server: ([2; 16], 5201),
            ends: [
                EndCounters {
                    on_tcp: false,
                    counters: std::array::from_fn(|i| i as u64 * 1000),
                },
                EndCounters {
                    on_tcp: true,
                    counters: [u64::MAX; END_COUNTERS],
                },
            ],
        })),
        Reply::Entry(Box::new(Entry {
            conn: 10,
            ring_bytes: 16384,
            client_pid: 0,
            server_pid: 0,
            client: ([5; 16], 1),
            server: ([6; 16], 2),
            ends: [EndCounters::default(); 2],
        })),
        Reply::Fallen(Fallen {
            when: 1_800_000_000,
            pid: 4242,
            uid: 33,
            reason: 4,
            server: true,
            local: ([3; 16], 80),
            peer: ([4; 16], 51234),
        }),
    ]
}

#[test]
fn every_message_round_trips() {
    for (i, r) in all_requests().into_iter().enumerate() {
        let b = r.encode(i as u64 + 100);
        assert!(b.len() <= MAX_MESSAGE);
        assert_eq!(Request::decode(&b, r.fds()), Ok((r, i as u64 + 100)));
    }
    for (i, r) in all_replies().into_iter().enumerate() {
        let b = r.encode(i as u64);
        assert!(b.len() <= MAX_MESSAGE);
        assert_eq!(Reply::decode(&b, r.fds()), Ok((r, i as u64)));
    }
}

#[test]
fn malformed_messages_are_refused() {
    let good = Request::Cancel {
        request: 1,
        stalled_only: false,
        quiet: false,
    }
    .encode(1);
    assert_eq!(
        Request::decode(&good[..HEADER - 1], 0),
        Err(WireError::Short(15))
    );
    assert_eq!(
        Request::decode(&vec![0u8; MAX_MESSAGE + 1], 0),
        Err(WireError::Long(MAX_MESSAGE + 1))
    );
    let mut b = good.clone();
    b[0] ^= 1;
    assert!(matches!(Request::decode(&b, 0), Err(WireError::Magic(_))));
    let mut b = good.clone();
    b[4] = 99;
    assert_eq!(Request::decode(&b, 0), Err(WireError::Version(99)));
    let mut b = good.clone();
    b[6] = 0x7f;
    assert_eq!(Request::decode(&b, 0), Err(WireError::Kind(0x7f)));
    // A body one byte short or long.
    assert!(matches!(
        Request::decode(&good[..good.len() - 1], 0),
        Err(WireError::Body { .. })
    ));
    let mut b = good.clone();
    b.push(0);
    assert!(matches!(
        Request::decode(&b, 0),
        Err(WireError::Body { .. })
    ));
    // Descriptors where none belong, and none where one must be.
    assert!(matches!(
        Request::decode(&good, 1),
        Err(WireError::Fds { .. })
    ));
    assert!(matches!(
        Request::decode(
            &Request::Accept {
                ring: 4096,
                nowait: false,
            }
            .encode(1),
            0
        ),
        Err(WireError::Fds { .. })
    ));
    // A pid that does not fit 32 bits.
    let b = encode(K_HELLO, 1, &[1 << 40]);
    assert!(matches!(
        Request::decode(&b, 2),
        Err(WireError::Value { .. })
    ));
    // A reply kind is not a request, and the reverse.
    assert!(Request::decode(&Reply::Done.encode(1), 0).is_err());
    assert!(Reply::decode(&Request::Status.encode(1), 0).is_err());
    // `server` is a boolean.
    let b = encode(K_PAIRED, 1, &[1, 4096, 2, 1, 2, 0, 0]);
    assert!(matches!(Reply::decode(&b, 4), Err(WireError::Value { .. })));
    // A segment's offset in its arena is a whole number of pages; a version 15 `Paired` (no
    // offset) and `Again` are refused.
    let b = encode(K_PAIRED, 1, &[1, 4096, 1, 1, 2, 0, 4096 + 8]);
    let off = Err(WireError::Value {
        kind: K_PAIRED,
        word: 6,
    });
    assert_eq!(Reply::decode(&b, 4), off);
    assert!(Reply::decode(&encode(K_PAIRED, 1, &[1, 4096, 1, 1, 2, 0, 8192]), 4).is_ok());
    let b = encode(K_AGAIN, 1, &[1, 4096, 1, 1, 2, 0, 3, 4, 100]);
    assert!(matches!(
        Reply::decode(&b, 0),
        Err(WireError::Value { word: 8, .. })
    ));
    for (kind, words, fds) in [(K_PAIRED, 6, 4), (K_AGAIN, 8, 0)] {
        let b = encode(kind, 1, &vec![0; words]);
        assert!(matches!(
            Reply::decode(&b, fds),
            Err(WireError::Body { .. })
        ));
    }
    // An entry's flags are a bit per end, no more; its ports 16 bits each.
    let mut w = vec![0u64; ENTRY_WORDS];
    w[9] = 0b11;
    assert!(
        matches!(Reply::decode(&encode(K_ENTRY, 1, &w), 0), Ok((Reply::Entry(e), 1))
        if e.ends.iter().all(|e| e.on_tcp))
    );
    w[9] = 1 << 2;
    assert_eq!(
        Reply::decode(&encode(K_ENTRY, 1, &w), 0),
        Err(WireError::Value {
            kind: K_ENTRY,
            word: 9
        })
    );
    w[9] = 0;
    w[8] = 1 << 32;
    assert_eq!(
        Reply::decode(&encode(K_ENTRY, 1, &w), 0),
        Err(WireError::Value {
            kind: K_ENTRY,
            word: 8
        })
    );
    // An entry of version 4's 9 words is refused.
    assert!(matches!(
        Reply::decode(&encode(K_ENTRY, 1, &w[..9]), 0),
        Err(WireError::Body { .. })
    ));
}

/// Every byte string up to a few bytes past a header, and random ones, decode to an error
/// or to a message that encodes back to the same bytes (no panic, no second meaning).
#[test]
fn arbitrary_bytes_never_panic_and_decode_canonically() {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let seeds: Vec<Vec<u8>> = all_requests()
        .iter()
        .map(|r| r.encode(1))
        .chain(all_replies().iter().map(|r| r.encode(1)))
        .collect();
    for round in 0..20_000 {
        let mut b = seeds[round % seeds.len()].clone();
        match next() % 4 {
            0 => {
                let i = (next() as usize) % b.len();
                b[i] = next() as u8;
            }
            1 => b.truncate((next() as usize) % (b.len() + 1)),
            2 => b.extend((0..next() % 300).map(|_| next() as u8)),
            _ => b = (0..next() % 64).map(|_| next() as u8).collect(),
        }
        let fds = (next() % 5) as usize;
        if let Ok((r, id)) = Request::decode(&b, fds) {
            assert_eq!(r.encode(id), b);
        }
        if let Ok((r, id)) = Reply::decode(&b, fds) {
            assert_eq!(r.encode(id), b);
        }
    }
}

#[test]
fn refusal_codes_round_trip() {
    for r in Refusal::ALL {
        assert_eq!(Refusal::from_code(r.code()), Some(r));
        assert!(!r.to_string().is_empty());
    }
    assert_eq!(Refusal::from_code(0), None);
}
