//! A minimal TCP echo pair for byte-exactness tests, written with plain `std::net` so that under LD_PRELOAD it is
//! an ordinary socket application.
//!
//! - `echo serve PORT`: listens on 127.0.0.1:PORT, accepts one connection, echoes everything until EOF, then
//!   shuts down its write side and exits 0.
//! - `echo send PORT BYTES SEED`: connects, sends BYTES of a deterministic pseudo-random stream (from SEED) in
//!   writes of varying size, shuts down its write side, reads everything back and compares it with the stream.
//!   Prints `ok bytes=N fnv1a=HEX` and exits 0 only if every byte came back in order; otherwise prints where it
//!   differed and exits 1.
//! - `echo send PORT BYTES SEED MIB_PER_S`: the same, the writes paced to that rate (a stream that lasts a known
//!   time, for tests that inject faults while it runs).
#![deny(unsafe_code)]

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::process::ExitCode;
use std::thread;
use std::time::{Duration, Instant};

/// splitmix64: the stream generator and the write-size generator.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// The deterministic byte stream: byte `i` is byte `i % 8` of the `i / 8`-th output of splitmix64(seed).
struct Stream {
    rng: Rng,
    word: [u8; 8],
    used: usize,
}

impl Stream {
    fn new(seed: u64) -> Stream {
        Stream {
            rng: Rng(seed),
            word: [0; 8],
            used: 8,
        }
    }

    fn fill(&mut self, buf: &mut [u8]) {
        for b in buf {
            if self.used == 8 {
                self.word = self.rng.next().to_le_bytes();
                self.used = 0;
            }
            *b = self.word[self.used];
            self.used += 1;
        }
    }
}

fn serve(port: u16) -> io::Result<()> {
    let listener = TcpListener::bind(("127.0.0.1", port))?;
    let (mut conn, _) = listener.accept()?;
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = conn.read(&mut buf)?;
        if n == 0 {
            break;
        }
        conn.write_all(&buf[..n])?;
    }
    conn.shutdown(Shutdown::Write)?;
    Ok(())
}

fn send(port: u16, bytes: u64, seed: u64, mib_per_s: Option<u64>) -> io::Result<bool> {
    let conn = TcpStream::connect(("127.0.0.1", port))?;
    let mut writer = conn.try_clone()?;
    let sender = thread::spawn(move || -> io::Result<()> {
        let mut stream = Stream::new(seed);
        let mut sizes = Rng(seed ^ 0x5151_5151);
        let mut buf = vec![0u8; 1 << 20];
        let mut left = bytes;
        let start = Instant::now();
        while left > 0 {
            if let Some(rate) = mib_per_s.filter(|r| *r > 0) {
                // Paced: byte `sent` goes out no earlier than sent / rate after the start.
                let sent = bytes - left;
                let due = Duration::from_secs_f64(sent as f64 / (rate << 20) as f64);
                if let Some(wait) = due.checked_sub(start.elapsed()) {
                    thread::sleep(wait);
                }
            }
            // Write sizes from 1 byte to 1 MiB, log-uniform, so small and large frames both occur.
            let r = sizes.next();
            let max = 1u64 << (r % 21);
            let n = (1 + (r >> 8) % max).min(left) as usize;
            stream.fill(&mut buf[..n]);
            writer.write_all(&buf[..n])?;
            left -= n as u64;
        }
        writer.shutdown(Shutdown::Write)
    });

    let mut reader = conn;
    let mut expected = Stream::new(seed);
    let mut buf = vec![0u8; 256 * 1024];
    let mut want = vec![0u8; 256 * 1024];
    let mut got: u64 = 0;
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut same = true;
    loop {
        let n = reader.read(&mut buf)?;
        if n == 0 {
            break;
        }
        expected.fill(&mut want[..n]);
        if same && buf[..n] != want[..n] {
            let i = buf[..n]
                .iter()
                .zip(&want[..n])
                .position(|(a, b)| a != b)
                .unwrap_or(0);
            println!(
                "mismatch at byte {}: got {:#04x}, expected {:#04x}",
                got + i as u64,
                buf[i],
                want[i]
            );
            same = false;
        }
        for b in &buf[..n] {
            hash = (hash ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
        }
        got += n as u64;
        if got > bytes {
            break;
        }
    }
    sender
        .join()
        .map_err(|_| io::Error::other("sender thread panicked"))??;
    if got != bytes {
        println!("length mismatch: sent {bytes} bytes, got {got} back");
        same = false;
    }
    if same {
        println!("ok bytes={got} fnv1a={hash:016x}");
    }
    Ok(same)
}

fn usage() -> ExitCode {
    eprintln!("usage: echo serve PORT | echo send PORT BYTES SEED [MIB_PER_S]");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let parse = |s: &String| s.parse::<u64>().ok();
    let result = match args.as_slice() {
        [cmd, port] if cmd == "serve" => match port.parse() {
            Ok(port) => serve(port).map(|()| true),
            Err(_) => return usage(),
        },
        [cmd, port, bytes, seed] if cmd == "send" => {
            match (port.parse(), parse(bytes), parse(seed)) {
                (Ok(port), Some(bytes), Some(seed)) => send(port, bytes, seed, None),
                _ => return usage(),
            }
        }
        [cmd, port, bytes, seed, rate] if cmd == "send" => {
            match (port.parse(), parse(bytes), parse(seed), parse(rate)) {
                (Ok(port), Some(bytes), Some(seed), Some(rate)) => {
                    send(port, bytes, seed, Some(rate))
                }
                _ => return usage(),
            }
        }
        _ => return usage(),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("echo: {e}");
            ExitCode::FAILURE
        }
    }
}
