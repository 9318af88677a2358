//! Test harness: starts the real `berth` binary on a random loopback port with its own
//! temporary data directory, and finds external client programs. Shared by every black-box
//! test file (`mod common;`).
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// A running `berth serve` process.
pub struct Berth {
    /// `127.0.0.1:PORT`
    pub host: String,
    /// `http://127.0.0.1:PORT`
    pub url: String,
    /// The temporary directory holding `config.yml` and `data/`.
    pub dir: tempfile::TempDir,
    extra_config: String,
    child: Option<Child>,
}

impl Berth {
    /// Start with deletes enabled and default limits.
    pub fn start() -> Berth {
        Berth::start_with("")
    }

    /// Start with `extra` YAML appended to the base config (top-level keys only: `log`,
    /// `storage`, `http` are already present, so add e.g. `limits:` or new sections).
    pub fn start_with(extra: &str) -> Berth {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut b = Berth {
            host: String::new(),
            url: String::new(),
            dir,
            extra_config: extra.to_string(),
            child: None,
        };
        b.spawn();
        b
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("config.yml")
    }

    fn spawn(&mut self) {
        let data = self.data_dir();
        let config = format!(
            "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:0\n{}",
            data.display(),
            self.extra_config
        );
        std::fs::write(self.config_path(), config).expect("write config");
        let (child, addr) = spawn_berth(&["serve".as_ref(), self.config_path().as_os_str()]);
        self.host = addr.clone();
        self.url = format!("http://{addr}");
        self.child = Some(child);
    }

    /// Kill the server with SIGKILL (a crash: no graceful shutdown) and start it again on
    /// the same data directory. The port changes.
    pub fn crash_and_restart(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.spawn();
    }

    /// The server's process id (for /proc inspection).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }
}

impl Drop for Berth {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Path of the `berth` binary cargo built for these tests.
pub fn berth_bin() -> &'static str {
    env!("CARGO_BIN_EXE_berth")
}

/// Spawn `berth ARGS...`, wait for its "listening on http://ADDR" log line and return the
/// child and ADDR. The server's log goes on to this test's stderr.
pub fn spawn_berth(args: &[&std::ffi::OsStr]) -> (Child, String) {
    let mut child = Command::new(berth_bin())
        .args(args)
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn berth");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut tx = Some(tx);
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if let Some(pos) = line.find("listening on http://") {
                let rest = &line[pos + "listening on http://".len()..];
                let addr: String = rest.chars().take_while(|c| !c.is_whitespace()).collect();
                if let Some(tx) = tx.take() {
                    let _ = tx.send(addr);
                }
            }
            eprintln!("[berth] {line}");
        }
    });
    match rx.recv_timeout(Duration::from_secs(30)) {
        Ok(addr) => (child, addr),
        Err(_) => {
            let _ = child.kill();
            panic!("berth did not report a listening address within 30 s");
        }
    }
}

/// Fail loudly (never skip) when a client program the suite needs is missing.
pub fn require_tool(name: &str) -> PathBuf {
    for dir in std::env::var("PATH").unwrap_or_default().split(':') {
        let p = Path::new(dir).join(name);
        if p.is_file() {
            return p;
        }
    }
    panic!("{name} is not installed: run the README's test command (scripts/test.sh), which installs every client the suite uses");
}

/// Run a command, panic with its output if it fails, return stdout.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    if !out.status.success() {
        panic!(
            "{cmd:?} failed with {}\nstdout:\n{}\nstderr:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl Berth {
    /// Start with a complete config file; `DATA` in it is replaced by the data directory.
    pub fn start_with_config(config: &str) -> Berth {
        let dir = tempfile::tempdir().expect("tempdir");
        let text = config.replace("DATA", &dir.path().join("data").display().to_string());
        let path = dir.path().join("config.yml");
        std::fs::write(&path, text).expect("write config");
        let (child, addr) = spawn_berth(&["serve".as_ref(), path.as_os_str()]);
        Berth {
            host: addr.clone(),
            url: format!("http://{addr}"),
            dir,
            extra_config: String::new(),
            child: Some(child),
        }
    }

    /// Sizes of the files in the upload area.
    pub fn upload_file_sizes(&self) -> Vec<u64> {
        std::fs::read_dir(self.data_dir().join("uploads"))
            .map(|rd| {
                rd.filter_map(|e| e.ok()?.metadata().ok().map(|m| m.len()))
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Berth {
    /// Start `berth serve CONFIG` on a config file the test wrote (and perhaps used for
    /// other commands first) inside `dir`, which lives as long as the server.
    pub fn serve_config_in(dir: tempfile::TempDir, config: &Path) -> Berth {
        let (child, addr) = spawn_berth(&["serve".as_ref(), config.as_os_str()]);
        Berth {
            host: addr.clone(),
            url: format!("http://{addr}"),
            dir,
            extra_config: String::new(),
            child: Some(child),
        }
    }
}

/// Run `berth ARGS...` to completion and return its output, whatever the exit status.
pub fn berth_command(args: &[&std::ffi::OsStr]) -> std::process::Output {
    Command::new(berth_bin())
        .args(args)
        .env("NO_COLOR", "1")
        .output()
        .expect("run berth")
}
