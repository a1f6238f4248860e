//! CPU time a process spent, from the kernel's own account (`/proc/<pid>/stat`: user + system time of all its
//! threads, in clock ticks): what the idle tests measure. A server whose clients have gone must sleep, so the CPU
//! it burns over an idle window is a count of ticks compared with the window's own ticks, never a latency.

use std::fs;
use std::thread;
use std::time::{Duration, Instant};

/// User + system CPU time of `pid` so far, in clock ticks.
pub fn cpu_ticks(pid: u32) -> Result<u64, String> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|e| format!("/proc/{pid}/stat: {e}"))?;
    parse_cpu_ticks(&text).ok_or_else(|| format!("/proc/{pid}/stat: no utime/stime in {text:?}"))
}

/// utime + stime (fields 14 and 15) of a `/proc/<pid>/stat` line.
fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    // The command name is in parentheses and may contain spaces: split after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // fields[0] is field 3 (state): utime is field 14, stime field 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// How many times the threads of `pid` went to sleep and were woken (the sum of `voluntary_ctxt_switches` over
/// `/proc/<pid>/task/*/status`): a process that polls on a timer shows it here even when each round costs less
/// than a clock tick.
pub fn wakeups(pid: u32) -> Result<u64, String> {
    let dir = format!("/proc/{pid}/task");
    let mut total = 0;
    for e in fs::read_dir(&dir)
        .map_err(|e| format!("{dir}: {e}"))?
        .flatten()
    {
        // A thread that ended meanwhile has no status any more: it adds nothing.
        if let Ok(text) = fs::read_to_string(e.path().join("status")) {
            total += parse_voluntary_switches(&text).unwrap_or(0);
        }
    }
    Ok(total)
}

fn parse_voluntary_switches(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
        .and_then(|v| v.trim().parse().ok())
}

/// Clock ticks per second (`_SC_CLK_TCK`).
pub fn ticks_per_second() -> u64 {
    crate::sys::clock_ticks_per_second()
}

/// What some processes spent over an idle window.
#[derive(Debug, Clone)]
pub struct IdleCpu {
    /// How long the window lasted.
    pub window: Duration,
    /// `(pid, CPU ticks spent in the window)` per process.
    pub ticks: Vec<(u32, u64)>,
    /// `(pid, wake-ups in the window)` per process (see [`wakeups`]).
    pub wakeups: Vec<(u32, u64)>,
    /// Clock ticks per second.
    pub hz: u64,
}

impl IdleCpu {
    /// Reads the CPU time of `pids`, sleeps `window`, reads it again. A process that exits in the window fails the
    /// measurement (an idle server must not die either).
    pub fn measure(pids: &[u32], window: Duration) -> Result<IdleCpu, String> {
        let before = pids
            .iter()
            .map(|&p| Ok((cpu_ticks(p)?, wakeups(p)?)))
            .collect::<Result<Vec<_>, String>>()?;
        let t0 = Instant::now();
        thread::sleep(window);
        let mut ticks = Vec::with_capacity(pids.len());
        let mut woke = Vec::with_capacity(pids.len());
        for (&pid, (t, w)) in pids.iter().zip(before) {
            ticks.push((pid, cpu_ticks(pid)?.saturating_sub(t)));
            woke.push((pid, wakeups(pid)?.saturating_sub(w)));
        }
        Ok(IdleCpu {
            window: t0.elapsed(),
            ticks,
            wakeups: woke,
            hz: ticks_per_second(),
        })
    }

    /// Clock ticks the window lasted.
    pub fn window_ticks(&self) -> u64 {
        (self.window.as_secs_f64() * self.hz as f64) as u64
    }

    /// Every process spent at most `max_share` of the window's ticks on the CPU (at least one tick is always
    /// allowed: the account is in whole ticks).
    pub fn check(&self, max_share: f64) -> Result<(), String> {
        let window = self.window_ticks();
        let limit = ((window as f64 * max_share) as u64).max(1);
        let busy: Vec<String> = self
            .ticks
            .iter()
            .filter(|&&(_, t)| t > limit)
            .map(|&(pid, t)| {
                format!(
                    "pid {pid} spent {t} of {window} ticks ({:.0}%)",
                    100.0 * t as f64 / window as f64
                )
            })
            .collect();
        if busy.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "idle but on the CPU (limit {limit} ticks, {:.0}% of the {:.1} s window): {}",
                max_share * 100.0,
                self.window.as_secs_f64(),
                busy.join("; ")
            ))
        }
    }
}

impl IdleCpu {
    /// Every process woke at most `per_second` times a second of the window on average (a server with idle
    /// connections may re-check them now and then; it must not poll them on a short timer).
    pub fn check_wakeups(&self, per_second: f64) -> Result<(), String> {
        let limit = (self.window.as_secs_f64() * per_second).ceil() as u64;
        let busy: Vec<String> = self
            .wakeups
            .iter()
            .filter(|&&(_, w)| w > limit)
            .map(|&(pid, w)| format!("pid {pid} woke {w} times"))
            .collect();
        if busy.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "idle but waking up (limit {limit} in the {:.1} s window, {per_second} a second): {}",
                self.window.as_secs_f64(),
                busy.join("; ")
            ))
        }
    }
}

impl std::fmt::Display for IdleCpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:.1} s idle ({} ticks):",
            self.window.as_secs_f64(),
            self.window_ticks()
        )?;
        for ((pid, t), (_, w)) in self.ticks.iter().zip(&self.wakeups) {
            write!(f, " pid {pid} {t} ticks {w} wake-ups")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_utime_and_stime_after_a_name_with_spaces() {
        let line = "1234 (a b) c) S 1 1234 1234 0 -1 4194560 100 0 0 0 7 5 0 0 20 0 1 0 99 0 0";
        assert_eq!(parse_cpu_ticks(line), Some(12));
    }

    #[test]
    fn a_busy_process_fails_the_check_and_an_idle_one_passes() {
        let busy = IdleCpu {
            window: Duration::from_secs(2),
            ticks: vec![(1, 0), (2, 150)],
            wakeups: vec![(1, 3), (2, 40)],
            hz: 100,
        };
        let err = busy.check(0.05).unwrap_err();
        assert!(err.contains("pid 2 spent 150 of 200"), "{err}");
        assert!(!err.contains("pid 1 "), "{err}");
        let idle = IdleCpu {
            ticks: vec![(1, 0), (2, 10)],
            ..busy
        };
        assert!(idle.check(0.05).is_ok());
        // 2 s at 10 a second: 20 allowed.
        let err = idle.check_wakeups(10.0).unwrap_err();
        assert!(err.contains("pid 2 woke 40 times"), "{err}");
        assert!(!err.contains("pid 1 "), "{err}");
    }

    #[test]
    fn parses_voluntary_switches_and_counts_a_sleeping_thread() {
        let status = "Name:\tx\nvoluntary_ctxt_switches:\t42\nnonvoluntary_ctxt_switches:\t7\n";
        assert_eq!(parse_voluntary_switches(status), Some(42));
        let me = std::process::id();
        let before = wakeups(me).unwrap();
        thread::sleep(Duration::from_millis(5));
        assert!(
            wakeups(me).unwrap() > before,
            "a sleep is a voluntary switch"
        );
    }

    #[test]
    fn this_process_burning_cpu_is_counted() {
        let me = std::process::id();
        let before = cpu_ticks(me).unwrap();
        let t0 = Instant::now();
        let mut x = 0u64;
        while t0.elapsed() < Duration::from_millis(300) {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        assert!(
            cpu_ticks(me).unwrap() > before,
            "300 ms of spinning counted no tick"
        );
    }
}
