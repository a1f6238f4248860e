//! iperf 2 (2.1.8) runners and the parser of its CSV reports (`-y C`). The server (`iperf -s`) runs until it is
//! stopped; `-1` would serialize clients (and refuse `-P` streams), so it is not used: [`Iperf2Server::collect`]
//! waits for the expected report lines, then stops the server.

use std::path::Path;
use std::time::Duration;

use crate::proc::{command, Proc};
use crate::PreloadEnv;

/// How much a client sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Amount {
    /// `-n BYTES` (per stream for iperf 2, in total for iperf 3).
    Bytes(u64),
    /// `-t SECS`.
    Secs(u32),
}

/// One CSV report line: `time,local_ip,local_port,remote_ip,remote_port,id,start-end,bytes,bits_per_second[,…]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Iperf2Record {
    /// Local address.
    pub local_addr: String,
    /// Local port.
    pub local_port: u16,
    /// Remote address.
    pub remote_addr: String,
    /// Remote port.
    pub remote_port: u16,
    /// Stream id; negative for a sum over streams.
    pub id: i64,
    /// Interval start, seconds.
    pub start: f64,
    /// Interval end, seconds.
    pub end: f64,
    /// Bytes in the interval.
    pub bytes: u64,
    /// Bits per second over the interval.
    pub bits_per_second: f64,
}

/// Everything one iperf 2 process reported.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Iperf2Output {
    /// Every CSV record, in order.
    pub records: Vec<Iperf2Record>,
}

/// Parses `-y C` output. Lines that are not CSV reports (warnings such as "read tcp flags (runt) failed") are
/// skipped; a line that looks like a report (9+ comma-separated fields) but does not parse is an error.
pub fn parse_iperf2_csv(text: &str) -> Result<Iperf2Output, String> {
    let mut records = Vec::new();
    for line in text.lines() {
        let fields: Vec<&str> = line.trim().split(',').collect();
        if fields.len() < 9 {
            continue;
        }
        let bad = |what: &str| format!("iperf2 CSV line {line:?}: bad {what}");
        let (start, end) = fields[6].split_once('-').ok_or_else(|| bad("interval"))?;
        records.push(Iperf2Record {
            local_addr: fields[1].to_owned(),
            local_port: fields[2].parse().map_err(|_| bad("local port"))?,
            remote_addr: fields[3].to_owned(),
            remote_port: fields[4].parse().map_err(|_| bad("remote port"))?,
            id: fields[5].parse().map_err(|_| bad("id"))?,
            start: start.parse().map_err(|_| bad("interval start"))?,
            end: end.parse().map_err(|_| bad("interval end"))?,
            bytes: fields[7].parse().map_err(|_| bad("bytes"))?,
            bits_per_second: fields[8].parse().map_err(|_| bad("bits/s"))?,
        });
    }
    Ok(Iperf2Output { records })
}

impl Iperf2Output {
    /// Per-stream records (id ≥ 0).
    pub fn streams(&self) -> impl Iterator<Item = &Iperf2Record> {
        self.records.iter().filter(|r| r.id >= 0)
    }

    /// The sum record (id < 0), if iperf printed one.
    pub fn sum(&self) -> Option<&Iperf2Record> {
        self.records.iter().rev().find(|r| r.id < 0)
    }

    /// Total bytes: the sum record if present, else the sum of the stream records.
    pub fn total_bytes(&self) -> u64 {
        match self.sum() {
            Some(s) => s.bytes,
            None => self.streams().map(|r| r.bytes).sum(),
        }
    }

    /// Checks a client's report: `streams` streams of exactly `bytes_each`, all with a positive rate, and a sum
    /// (if any) that adds up.
    pub fn check_client(&self, streams: usize, bytes_each: u64) -> Result<(), String> {
        let got: Vec<_> = self.streams().collect();
        if got.len() != streams {
            return Err(format!(
                "iperf2 client reported {} streams, expected {streams}: {self:?}",
                got.len()
            ));
        }
        for r in &got {
            if r.bytes != bytes_each || r.bits_per_second <= 0.0 {
                return Err(format!(
                    "iperf2 client stream {} sent {} bytes at {} bit/s, expected {bytes_each}",
                    r.id, r.bytes, r.bits_per_second
                ));
            }
        }
        if self.total_bytes() != streams as u64 * bytes_each {
            return Err(format!(
                "iperf2 client total {} != {}",
                self.total_bytes(),
                streams as u64 * bytes_each
            ));
        }
        Ok(())
    }

    /// Checks that the server (`self`) received on each stream exactly what `client` sent on it, matching streams
    /// by the client's ephemeral port (iperf 2.1.8's server prints it as the remote port, or sometimes, with the
    /// addresses seen from the client, as the local port).
    pub fn check_server_agrees(&self, client: &Iperf2Output) -> Result<(), String> {
        for c in client.streams() {
            let s = self
                .streams()
                .find(|s| s.remote_port == c.local_port || s.local_port == c.local_port)
                .ok_or_else(|| {
                    format!(
                        "iperf2 server has no report for client port {}: {self:?}",
                        c.local_port
                    )
                })?;
            if s.bytes != c.bytes {
                return Err(format!(
                    "iperf2 stream from port {}: client sent {} bytes, server got {}",
                    c.local_port, c.bytes, s.bytes
                ));
            }
        }
        if self.streams().count() != client.streams().count() {
            return Err(format!(
                "iperf2 server reported {} streams, client {}",
                self.streams().count(),
                client.streams().count()
            ));
        }
        Ok(())
    }
}

/// An `iperf -s -p PORT -y C` process.
#[derive(Debug)]
pub struct Iperf2Server {
    /// The server process.
    pub proc: Proc,
    /// Its port.
    pub port: u16,
}

impl Iperf2Server {
    /// Starts the server (preloaded or plain) with logs in `dir` and waits until it listens.
    pub fn start(
        port: u16,
        preload: Option<&PreloadEnv>,
        dir: &Path,
    ) -> Result<Iperf2Server, String> {
        let port_s = port.to_string();
        let cmd = command("iperf", &["-s", "-p", &port_s, "-y", "C"], preload);
        let mut proc = Proc::spawn("iperf2-server", cmd, dir)?;
        proc.wait_listening(port, Duration::from_secs(10))?;
        Ok(Iperf2Server { proc, port })
    }

    /// Waits (at most `timeout`) until the server has reported `streams` streams, then stops it (SIGTERM, so it
    /// exits normally and the library writes its stats at exit) and returns its reports.
    pub fn collect(&mut self, streams: usize, timeout: Duration) -> Result<Iperf2Output, String> {
        let enough = |text: &str| {
            parse_iperf2_csv(text)
                .map(|o| o.streams().count() >= streams)
                .unwrap_or(false)
        };
        self.proc.wait_stdout(timeout, enough)?;
        self.stop()
    }

    /// Stops the server and returns what it reported.
    pub fn stop(&mut self) -> Result<Iperf2Output, String> {
        self.proc.terminate()?;
        parse_iperf2_csv(&self.proc.stdout()).map_err(|e| format!("{e}\n{}", self.proc.describe()))
    }
}

/// An `iperf -c 127.0.0.1 …` client.
#[derive(Debug, Clone)]
pub struct Iperf2Client {
    /// Server port.
    pub port: u16,
    /// `-l`: bytes per write.
    pub len: Option<u64>,
    /// `-n` (per stream) or `-t`.
    pub amount: Amount,
    /// `-P`.
    pub parallel: u32,
    /// Extra arguments.
    pub extra: Vec<String>,
}

impl Iperf2Client {
    /// A one-stream client sending `bytes` with iperf's default write size.
    pub fn new(port: u16, bytes: u64) -> Iperf2Client {
        Iperf2Client {
            port,
            len: None,
            amount: Amount::Bytes(bytes),
            parallel: 1,
            extra: Vec::new(),
        }
    }

    /// The command-line arguments.
    pub fn args(&self) -> Vec<String> {
        let mut a: Vec<String> = ["-c", "127.0.0.1", "-p", &self.port.to_string(), "-y", "C"]
            .map(String::from)
            .into();
        if let Some(len) = self.len {
            a.extend(["-l".into(), len.to_string()]);
        }
        match self.amount {
            Amount::Bytes(n) => a.extend(["-n".into(), n.to_string()]),
            Amount::Secs(s) => a.extend(["-t".into(), s.to_string()]),
        }
        if self.parallel > 1 {
            a.extend(["-P".into(), self.parallel.to_string()]);
        }
        a.extend(self.extra.iter().cloned());
        a
    }

    /// Runs the client to completion (at most `timeout`); it must exit 0. Returns the process (for its logs) and
    /// its reports.
    pub fn run(
        &self,
        preload: Option<&PreloadEnv>,
        dir: &Path,
        timeout: Duration,
    ) -> Result<(Proc, Iperf2Output), String> {
        let mut proc = Proc::spawn(
            "iperf2-client",
            command("iperf", &self.args(), preload),
            dir,
        )?;
        proc.wait_success(timeout)?;
        let out =
            parse_iperf2_csv(&proc.stdout()).map_err(|e| format!("{e}\n{}", proc.describe()))?;
        Ok((proc, out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Real iperf 2.1.8 output on this machine (client -P 4 -n 16M; then a server with a warning line).
    const CLIENT_P4: &str =
        "19700101000000,127.0.0.1,41530,127.0.0.1,5393,4,0.0-0.0,16777216,7905856629
19700101000000,127.0.0.1,41518,127.0.0.1,5393,2,0.0-0.0,16777216,7971120560
19700101000000,127.0.0.1,41526,127.0.0.1,5393,1,0.0-0.0,16777216,8384415792
19700101000000,127.0.0.1,41520,127.0.0.1,5393,3,0.0-0.0,16777216,8105914240
";
    const SERVER_P4: &str = "read tcp flags (runt) failed
19700101000000,127.0.0.1,5393,127.0.0.1,41518,1,0.0-0.0,16777216,25930782071
19700101000000,127.0.0.1,5393,127.0.0.1,41520,2,0.0-0.0,16777216,25290696815
19700101000000,127.0.0.1,5393,127.0.0.1,41530,4,0.0-0.0,16777216,28441985166
19700101000000,127.0.0.1,5393,127.0.0.1,41526,3,0.0-0.0,16777216,25677774631
";

    #[test]
    fn parses_client_csv() {
        let out = parse_iperf2_csv(CLIENT_P4).unwrap();
        assert_eq!(out.records.len(), 4);
        let r = &out.records[0];
        assert_eq!(
            (r.local_port, r.remote_port, r.id, r.bytes),
            (41530, 5393, 4, 16777216)
        );
        assert_eq!(r.bits_per_second, 7905856629.0);
        assert!(out.sum().is_none());
        assert_eq!(out.total_bytes(), 4 * 16777216);
        out.check_client(4, 16777216).unwrap();
        assert!(out.check_client(1, 16777216).is_err());
        assert!(out.check_client(4, 1).is_err());
    }

    #[test]
    fn server_agrees_by_client_port() {
        let client = parse_iperf2_csv(CLIENT_P4).unwrap();
        let server = parse_iperf2_csv(SERVER_P4).unwrap();
        server.check_server_agrees(&client).unwrap();
        let short = SERVER_P4.replace("41526,3,0.0-0.0,16777216", "41526,3,0.0-0.0,16777215");
        let err = parse_iperf2_csv(&short)
            .unwrap()
            .check_server_agrees(&client)
            .unwrap_err();
        assert!(err.contains("41526"), "{err}");
        // Server lines with the client's view of the addresses (seen on this machine too).
        let swapped = "19700101000000,127.0.0.1,41530,127.0.0.1,5393,1,0.0-0.0,16777216,1\n\
                       19700101000000,127.0.0.1,41518,127.0.0.1,5393,2,0.0-0.0,16777216,1\n\
                       19700101000000,127.0.0.1,41526,127.0.0.1,5393,3,0.0-0.0,16777216,1\n\
                       19700101000000,127.0.0.1,41520,127.0.0.1,5393,4,0.0-0.0,16777216,1\n";
        parse_iperf2_csv(swapped)
            .unwrap()
            .check_server_agrees(&client)
            .unwrap();
    }

    #[test]
    fn sum_line_wins_and_bad_lines_fail() {
        let text = "x,127.0.0.1,1,127.0.0.1,2,3,0.0-10.0,100,80\nx,127.0.0.1,1,127.0.0.1,2,-1,0.0-10.0,250,200\n";
        let out = parse_iperf2_csv(text).unwrap();
        assert_eq!(out.streams().count(), 1);
        assert_eq!(out.total_bytes(), 250);
        assert_eq!((out.records[0].start, out.records[0].end), (0.0, 10.0));
        assert!(parse_iperf2_csv("x,127.0.0.1,port,127.0.0.1,2,3,0.0-1.0,100,80").is_err());
        assert!(parse_iperf2_csv("Connection refused\n")
            .unwrap()
            .records
            .is_empty());
    }

    #[test]
    fn client_arguments() {
        let c = Iperf2Client {
            port: 6000,
            len: Some(65536),
            amount: Amount::Bytes(1 << 20),
            parallel: 4,
            extra: vec![],
        };
        assert_eq!(
            c.args().join(" "),
            "-c 127.0.0.1 -p 6000 -y C -l 65536 -n 1048576 -P 4"
        );
        let t = Iperf2Client {
            amount: Amount::Secs(2),
            parallel: 1,
            len: None,
            ..c
        };
        assert_eq!(t.args().join(" "), "-c 127.0.0.1 -p 6000 -y C -t 2");
    }
}
