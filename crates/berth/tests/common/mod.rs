//! Test harness: starts the real `berth` binary on a random loopback port with its own
//! temporary data directory, and finds external client programs. Shared by every black-box
//! test file (`mod common;`).
#![allow(dead_code)]

pub mod cluster;
pub mod docker;
pub mod jwt;
pub mod layout;
pub mod ldap;
pub mod pki;
pub mod push;
pub mod registry2;
pub mod s3;
pub mod tools;

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

    /// Stop the server with SIGTERM (a graceful shutdown), wait for it to exit, and start
    /// it again on the same data directory. The port changes.
    pub fn stop_and_restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// Stop the server with SIGTERM (a graceful shutdown) and wait for it to exit; its
    /// directory stays until this value is dropped.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            run(Command::new("kill").args(["-TERM", &c.id().to_string()]));
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            while c.try_wait().expect("wait").is_none() {
                assert!(
                    std::time::Instant::now() < deadline,
                    "berth still running 30 s after SIGTERM"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
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

/// Path of the `berth` binary the tests run: the one cargo built for them, or
/// `BERTH_BIN` when set. Checkouts that share a target directory overwrite each
/// other's `berth` (same unit names, freshness by file times); a copy of this
/// checkout's own build named in `BERTH_BIN` keeps a run on its own code.
pub fn berth_bin() -> &'static str {
    static BIN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    BIN.get_or_init(|| match std::env::var("BERTH_BIN") {
        Ok(path) if !path.is_empty() => {
            assert!(Path::new(&path).is_file(), "BERTH_BIN={path} is not a file");
            path
        }
        _ => env!("CARGO_BIN_EXE_berth").to_string(),
    })
}

/// Spawn `berth ARGS...`, wait for its "listening on http://ADDR" log line and return the
/// child and ADDR. The server's log goes on to this test's stderr (and to `log_lines`).
pub fn spawn_berth(args: &[&std::ffi::OsStr]) -> (Child, String) {
    spawn_berth_with(args, &[], "http")
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

/// The Python of the test virtual environment (harborapi, oras from PyPI), which the
/// README's test command makes (`scripts/install-test-deps.sh`).
pub fn python() -> PathBuf {
    let venv = std::env::var_os("BERTH_TEST_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
                .join(".cache/berth-test-venv")
        });
    let py = venv.join("bin/python");
    assert!(
        py.is_file(),
        "{} is missing: run the README's test command (scripts/test.sh), which installs harborapi and oras there",
        py.display()
    );
    py
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
        Berth::start_with_config_env(config, &[], "http")
    }

    /// Sizes of the files in the upload area.
    pub fn upload_file_sizes(&self) -> Vec<u64> {
        self.upload_files()
            .iter()
            .filter_map(|p| std::fs::metadata(p).ok().map(|m| m.len()))
            .collect()
    }

    /// The files in the upload area (`uploads/<first two characters>/<name>`).
    pub fn upload_files(&self) -> Vec<PathBuf> {
        let mut files = Vec::new();
        for fan in std::fs::read_dir(self.data_dir().join("uploads"))
            .into_iter()
            .flatten()
            .flatten()
        {
            files.extend(
                std::fs::read_dir(fan.path())
                    .into_iter()
                    .flatten()
                    .flatten()
                    .map(|e| e.path()),
            );
        }
        files
    }

    /// Where the upload area keeps the file named `name` (an upload id, or
    /// `<id>.kept`).
    pub fn upload_path(&self, name: &str) -> PathBuf {
        self.data_dir()
            .join("uploads")
            .join(name.get(..2).unwrap_or(name))
            .join(name)
    }
}

/// A temporary directory holding `config.yml` with `config`, `DATA` in it replaced by the
/// directory's `data/`; returns the directory and the file's path.
fn write_config(config: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = config.replace("DATA", &dir.path().join("data").display().to_string());
    let path = dir.path().join("config.yml");
    std::fs::write(&path, text).expect("write config");
    (dir, path)
}

/// One server's log lines.
type LogLines = std::sync::Arc<std::sync::Mutex<Vec<String>>>;

/// Log lines of every server this test process started, by process id.
fn log_sink(pid: u32) -> LogLines {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};
    static LOGS: OnceLock<Mutex<HashMap<u32, LogLines>>> = OnceLock::new();
    LOGS.get_or_init(Default::default)
        .lock()
        .expect("logs lock")
        .entry(pid)
        .or_default()
        .clone()
}

impl Berth {
    /// The log lines the running server process has written so far.
    pub fn log_lines(&self) -> Vec<String> {
        log_sink(self.pid()).lock().expect("log lock").clone()
    }

    /// Wait (at most `timeout`) until more than `after` log lines contain `needle`;
    /// return the matching lines.
    pub fn wait_for_log(&self, needle: &str, after: usize, timeout: Duration) -> Vec<String> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let hits: Vec<String> = self
                .log_lines()
                .into_iter()
                .filter(|l| l.contains(needle))
                .collect();
            if hits.len() > after {
                return hits;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no new log line containing {needle:?} within {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Spawn `berth ARGS...` and wait until a log line containing each of `markers` has
/// appeared; returns the child and, per marker, the word that follows it on its line.
/// The server's log goes on to this test's stderr.
pub fn spawn_berth_until(args: &[&std::ffi::OsStr], markers: &[&str]) -> (Child, Vec<String>) {
    let mut child = Command::new(berth_bin())
        .args(args)
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn berth");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = mpsc::channel();
    let wanted: Vec<String> = markers.iter().map(|m| m.to_string()).collect();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            for (i, m) in wanted.iter().enumerate() {
                if let Some(pos) = line.find(m.as_str()) {
                    let word: String = line[pos + m.len()..]
                        .chars()
                        .take_while(|c| !c.is_whitespace())
                        .collect();
                    let _ = tx.send((i, word));
                }
            }
            eprintln!("[berth] {line}");
        }
    });
    let mut found: Vec<Option<String>> = vec![None; markers.len()];
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while found.iter().any(Option::is_none) {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok((i, word)) => found[i] = found[i].take().or(Some(word)),
            Err(_) => {
                let _ = child.kill();
                panic!("berth did not log {markers:?} within 30 s");
            }
        }
    }
    (child, found.into_iter().flatten().collect())
}

impl Berth {
    /// Start with a complete config file (`DATA` replaced by the data directory) whose
    /// `http.debug.addr` is set; returns the server and the debug server's `host:port`.
    pub fn start_with_debug(config: &str) -> (Berth, String) {
        let (dir, path) = write_config(config);
        let (child, found) = spawn_berth_until(
            &["serve".as_ref(), path.as_os_str()],
            &["listening on http://", "debug server listening "],
        );
        let b = Berth {
            host: found[0].clone(),
            url: format!("http://{}", found[0]),
            dir,
            extra_config: String::new(),
            child: Some(child),
        };
        (b, found[1].clone())
    }
}

/// Spawn `berth ARGS...` with extra environment variables, wait for its
/// "listening on SCHEME://ADDR" log line and return the child and ADDR. The log goes to
/// this test's stderr and is kept for `Berth::log_lines`.
pub fn spawn_berth_with(
    args: &[&std::ffi::OsStr],
    env: &[(&str, &str)],
    scheme: &str,
) -> (Child, String) {
    let mut cmd = Command::new(berth_bin());
    cmd.args(args)
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn berth");
    let stderr = child.stderr.take().expect("stderr");
    let pid = child.id();
    let marker = format!("listening on {scheme}://");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut tx = Some(tx);
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if let Some(pos) = line.find(&marker) {
                let rest = &line[pos + marker.len()..];
                // Text lines end the address at a space, JSON lines at the closing quote.
                let addr: String = rest
                    .chars()
                    .take_while(|c| !c.is_whitespace() && *c != '"')
                    .collect();
                if let Some(tx) = tx.take() {
                    let _ = tx.send(addr);
                }
            }
            log_sink(pid).lock().expect("log lock").push(line.clone());
            eprintln!("[berth] {line}");
        }
    });
    match rx.recv_timeout(Duration::from_secs(30)) {
        Ok(addr) => (child, addr),
        Err(_) => {
            let _ = child.kill();
            panic!("berth did not report a {scheme} listening address within 30 s");
        }
    }
}

impl Berth {
    /// Start with a complete config file (`DATA` replaced by the data directory) and
    /// extra environment; `scheme` is `http` or `https` (with `http.tls` configured).
    pub fn start_with_config_env(config: &str, env: &[(&str, &str)], scheme: &str) -> Berth {
        let (dir, path) = write_config(config);
        let (child, addr) = spawn_berth_with(&["serve".as_ref(), path.as_os_str()], env, scheme);
        Berth {
            host: addr.clone(),
            url: format!("{scheme}://{addr}"),
            dir,
            extra_config: String::new(),
            child: Some(child),
        }
    }

    /// Run `berth serve` with `config` and expect it to refuse to start; returns its
    /// standard error.
    pub fn fails_to_start(config: &str) -> String {
        Berth::fails_to_start_in(config, &[], None)
    }

    /// Like [`Berth::fails_to_start`], with extra environment variables and, when given,
    /// `cwd` as the working directory.
    pub fn fails_to_start_in(config: &str, env: &[(&str, &str)], cwd: Option<&Path>) -> String {
        let (dir, path) = write_config(config);
        let log = dir.path().join("stderr.log");
        let mut cmd = Command::new(berth_bin());
        cmd.args(["serve".as_ref(), path.as_os_str()])
            .env("NO_COLOR", "1")
            // A refusal is one line for an operator, even with backtraces asked for.
            .env("RUST_BACKTRACE", "1")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"));
        if let Some(cwd) = cwd {
            cmd.current_dir(cwd);
        }
        let mut child = cmd.spawn().expect("spawn berth");
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait") {
                break status;
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                panic!("berth kept running with {config}");
            }
            let so_far = std::fs::read_to_string(&log).unwrap_or_default();
            if so_far.contains("listening on ") {
                let _ = child.kill();
                let _ = child.wait();
                panic!("berth started serving with {config}\n{so_far}");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(!status.success(), "berth exited successfully with {config}");
        std::fs::read_to_string(&log).expect("read log")
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

impl Berth {
    /// `berth ARGS... CONFIG` on this server's configuration (the account commands of
    /// `auth.berth`), with `stdin` (a password) when given; it must succeed. Its
    /// standard output.
    pub fn cli(&self, args: &[&str], stdin: Option<&str>) -> String {
        use std::io::Write as _;
        let mut child = Command::new(berth_bin())
            .args(args)
            .arg(self.config_path())
            .env("NO_COLOR", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn berth");
        let mut input = child.stdin.take().expect("stdin");
        if let Some(s) = stdin {
            input.write_all(s.as_bytes()).expect("write stdin");
            input.write_all(b"\n").expect("write stdin");
        }
        drop(input);
        let out = child.wait_with_output().expect("berth output");
        assert!(
            out.status.success(),
            "berth {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}
