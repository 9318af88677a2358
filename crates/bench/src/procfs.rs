//! Server resource probes read from Linux `/proc`: CPU time (utime + stime from
//! `/proc/PID/stat`) and peak resident set size (`VmHWM` from `/proc/PID/status`).
//!
//! The benchmark only observes the server process from the outside; this module never
//! starts or signals processes (that is `servers.rs`) and knows nothing about HTTP.

use anyhow::{bail, Context, Result};
use std::process::Command;

/// Reads CPU time and memory figures of one process.
#[derive(Debug, Clone, Copy)]
pub struct Probe {
    pid: u32,
    ticks_per_second: f64,
}

impl Probe {
    /// A probe for `pid`; fails if the process cannot be read right now.
    pub fn new(pid: u32) -> Result<Probe> {
        let probe = Probe {
            pid,
            ticks_per_second: clock_ticks_per_second(),
        };
        probe
            .cpu_seconds()
            .with_context(|| format!("cannot read CPU time of server process {pid}"))?;
        Ok(probe)
    }

    /// User plus system CPU seconds the process has used so far (all threads).
    pub fn cpu_seconds(&self) -> Result<f64> {
        let path = format!("/proc/{}/stat", self.pid);
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
        let ticks = parse_stat_cpu_ticks(&text).with_context(|| format!("parsing {path}"))?;
        Ok(ticks as f64 / self.ticks_per_second)
    }

    /// Peak resident set size in bytes (`VmHWM`).
    pub fn peak_rss_bytes(&self) -> Result<u64> {
        let path = format!("/proc/{}/status", self.pid);
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
        parse_status_kib(&text, "VmHWM:")
            .map(|kib| kib * 1024)
            .with_context(|| format!("no VmHWM line in {path}"))
    }
}

/// `getconf CLK_TCK`, falling back to 100 (the value on every mainstream Linux build).
fn clock_ticks_per_second() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|t| *t > 0.0)
        .unwrap_or(100.0)
}

/// utime + stime (fields 14 and 15) of a `/proc/PID/stat` line. The command name in
/// field 2 may contain spaces and parentheses, so fields are counted after the last `)`.
fn parse_stat_cpu_ticks(stat: &str) -> Result<u64> {
    let Some((_, rest)) = stat.rsplit_once(')') else {
        bail!("no ')' after the command name");
    };
    // rest starts with field 3 (state); utime is field 14, stime field 15.
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| -> Result<u64> {
        let raw = fields
            .get(n - 3)
            .with_context(|| format!("stat has no field {n}"))?;
        raw.parse()
            .with_context(|| format!("stat field {n} is not a number: {raw:?}"))
    };
    Ok(field(14)? + field(15)?)
}

/// The number in a `Key:   1234 kB` line of `/proc/PID/status`.
fn parse_status_kib(status: &str, key: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|line| line.strip_prefix(key))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_command_name() {
        let stat =
            "4242 (odd) name) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 9 0 1 2 3";
        assert_eq!(parse_stat_cpu_ticks(stat).ok(), Some(325));
        assert!(parse_stat_cpu_ticks("garbage").is_err());
        assert!(parse_stat_cpu_ticks("1 (x) S 1 2").is_err());
    }

    #[test]
    fn status_lines_are_parsed() {
        let status = "Name:\tberth\nVmPeak:\t  2000 kB\nVmHWM:\t  1536 kB\n";
        assert_eq!(parse_status_kib(status, "VmHWM:"), Some(1536));
        assert_eq!(parse_status_kib(status, "VmRSS:"), None);
    }

    #[test]
    fn own_process_can_be_probed() -> Result<()> {
        let probe = Probe::new(std::process::id())?;
        assert!(probe.cpu_seconds()? >= 0.0);
        assert!(probe.peak_rss_bytes()? > 0);
        Ok(())
    }
}
