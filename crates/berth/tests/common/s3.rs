//! Real S3 servers for black-box tests: SeaweedFS and Garage from `../shared/s3/`
//! (beside the checkout), started once per test binary in a temporary directory, or
//! reused when `scripts/test.sh` started them (`BERTH_TEST_S3_<KIND>_ENV` names the
//! file of `export` lines the start script printed). Every caller gets a
//! `rootdirectory` of its own in the shared bucket.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum S3Kind {
    SeaweedFs,
    Garage,
}

impl S3Kind {
    pub fn name(self) -> &'static str {
        match self {
            S3Kind::SeaweedFs => "seaweedfs",
            S3Kind::Garage => "garage",
        }
    }
}

/// What a start script exported: `S3_ENDPOINT`, `S3_REGION`, `S3_ACCESS_KEY_ID`,
/// `S3_SECRET_ACCESS_KEY`, `S3_BUCKET`, `S3_PID`, `S3_DIR`.
pub struct S3Server {
    pub env: HashMap<String, String>,
}

impl S3Server {
    pub fn get(&self, key: &str) -> &str {
        self.env
            .get(key)
            .unwrap_or_else(|| panic!("the S3 start script exported no {key}"))
    }

    /// A `storage:` section (deletes enabled) for a fresh root directory, and that root.
    pub fn storage_yaml(&self, extra: &str) -> (String, String) {
        let root = format!("bt-{}", unique_suffix());
        let yaml = format!(
            "storage:\n  delete:\n    enabled: true\n  s3:\n    accesskey: {}\n    secretkey: {}\n    region: {}\n    regionendpoint: {}\n    bucket: {}\n    rootdirectory: /{root}\n    chunksize: 5242880\n{extra}",
            self.get("S3_ACCESS_KEY_ID"),
            self.get("S3_SECRET_ACCESS_KEY"),
            self.get("S3_REGION"),
            self.get("S3_ENDPOINT"),
            self.get("S3_BUCKET"),
        );
        (yaml, root)
    }
}

/// A suffix no other caller in this run gets (process id and clock), for names of
/// bucket roots and databases.
pub fn unique_suffix() -> String {
    use std::time::{SystemTime, UNIX_EPOCH};
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("{:x}{:x}", std::process::id(), nanos)
}

/// The `export NAME=value` lines a start script printed (`../shared/s3/start-*.sh`,
/// `scripts/start-postgres.sh`), by name.
pub fn parse_env(text: &str) -> HashMap<String, String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("export ")?.split_once('='))
        .map(|(k, v)| (k.to_string(), v.trim_matches(['\'', '"']).to_string()))
        .collect()
}

fn start(kind: S3Kind) -> S3Server {
    let var = format!("BERTH_TEST_S3_{}_ENV", kind.name().to_uppercase());
    if let Ok(file) = std::env::var(&var) {
        let text = std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{var}={file}: {e}"));
        return S3Server {
            env: parse_env(&text),
        };
    }
    let shared = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/s3");
    let script = shared.join(format!("start-{}.sh", kind.name()));
    assert!(
        script.exists(),
        "{} is missing: ../shared/s3 must sit beside the checkout",
        script.display()
    );
    let dir = std::env::temp_dir().join(format!(
        "berth-bt-s3-{}-{}",
        kind.name(),
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).expect("s3 dir");
    S3Server {
        env: parse_env(&start_in(kind, &dir)),
    }
}

/// Start a server of `kind` of this test's own in `dir` with its start script; the
/// `export` lines it printed. The script picks free ports and then binds them, so a
/// port another process took in between fails the start: it is tried again (after the
/// stop script cleared `dir`), up to three times.
pub fn start_in(kind: S3Kind, dir: &std::path::Path) -> String {
    let shared = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/s3");
    let script = shared.join(format!("start-{}.sh", kind.name()));
    let stop = shared.join(format!("stop-{}.sh", kind.name()));
    let mut last = String::new();
    for attempt in 1..=3 {
        let out = Command::new("bash")
            .arg(&script)
            .arg(dir)
            .output()
            .expect("run the S3 start script");
        if out.status.success() {
            return String::from_utf8_lossy(&out.stdout).into_owned();
        }
        last = String::from_utf8_lossy(&out.stderr).into_owned();
        eprintln!(
            "{} failed (attempt {attempt} of 3), trying again: {}",
            script.display(),
            last.lines().last().unwrap_or_default()
        );
        let _ = Command::new("bash")
            .arg(&stop)
            .arg(dir)
            .arg("--purge")
            .output();
        std::fs::create_dir_all(dir).expect("s3 dir");
    }
    panic!("{} failed three times: {last}", script.display());
}

/// The server of `kind`, started on first use.
pub fn s3(kind: S3Kind) -> &'static S3Server {
    static SEAWEED: OnceLock<S3Server> = OnceLock::new();
    static GARAGE: OnceLock<S3Server> = OnceLock::new();
    match kind {
        S3Kind::SeaweedFs => SEAWEED.get_or_init(|| start(kind)),
        S3Kind::Garage => GARAGE.get_or_init(|| start(kind)),
    }
}
