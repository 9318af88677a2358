//! Debian's `docker-registry` (CNCF Distribution 2.8.2) as a peer: started on a config the
//! test gives (`DATA` replaced by a temporary directory, `http.addr: 127.0.0.1:0` so the
//! kernel picks the port), ready once it logs `listening on ADDR` (so its `log.level` must
//! be `info` or lower), killed when dropped. Its log goes to the test's stderr and to a
//! file the test can read (the access log, with the default `log.accesslog`).

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// A running `docker-registry serve CONFIG`.
pub struct Registry2 {
    /// `127.0.0.1:PORT`
    pub host: String,
    /// `http://127.0.0.1:PORT`
    pub url: String,
    /// The temporary directory holding `config.yml`, `data/` and `registry.log`.
    pub dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Registry2 {
    /// Start with `config` (`DATA` is replaced by `data/` in the peer's own directory).
    pub fn start(config: &str) -> Registry2 {
        Registry2::start_env(config, &[])
    }

    /// Start with `config` and extra environment (`REGISTRY_*` overrides, say).
    pub fn start_env(config: &str, env: &[(&str, &str)]) -> Registry2 {
        let bin = super::require_tool("docker-registry");
        let dir = tempfile::tempdir().expect("tempdir");
        let text = config.replace("DATA", &dir.path().join("data").display().to_string());
        let path = dir.path().join("config.yml");
        std::fs::write(&path, text).expect("write config");
        let mut child = Command::new(bin)
            .arg("serve")
            .arg(&path)
            // Debian's build panics on it with some drivers; the filesystem one does not need it.
            .env_remove("AWS_CA_BUNDLE")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn docker-registry");
        let stderr = child.stderr.take().expect("stderr");
        let mut log = std::fs::File::create(dir.path().join("registry.log")).expect("log file");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                // 2.8 logs `msg="listening on 127.0.0.1:PORT"` once it is serving.
                if let Some(pos) = line.find("listening on ") {
                    let addr: String = line[pos + "listening on ".len()..]
                        .chars()
                        .take_while(|c| !c.is_whitespace() && *c != '"' && *c != ',')
                        .collect();
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(addr);
                    }
                }
                let _ = writeln!(log, "{line}");
                eprintln!("[docker-registry] {line}");
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(addr) => addr,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "docker-registry did not report its address within 30 s (is log.level info?)"
                );
            }
        };
        let port = addr.rsplit(':').next().expect("port").to_string();
        let host = format!("127.0.0.1:{port}");
        Registry2 {
            url: format!("http://{host}"),
            host,
            dir,
            child: Some(child),
        }
    }

    /// The peer's `data/` directory (where `DATA` in its config points).
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Everything the peer has logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// Kill the peer and wait for it (its store is then safe to read).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Registry2 {
    fn drop(&mut self) {
        self.stop();
    }
}
