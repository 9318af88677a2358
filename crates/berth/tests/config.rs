//! Start-up against configuration files, as an operator meets it: a key Berth does not
//! know is reported by its path and the server runs; a bad value stops start-up with one
//! line naming the key and the reason (no backtrace, whatever `RUST_BACKTRACE` says).

mod common;

use common::Berth;
use std::time::Duration;

#[test]
fn bad_value_stops_startup_with_one_line_naming_the_key() {
    let cases = [
        (
            "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: DATA\n  delete:\n    enabled: maybe\nhttp:\n  addr: 127.0.0.1:0\n",
            "storage.delete.enabled",
        ),
        (
            "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: DATA\nhttp:\n  addr: 127.0.0.1:0\nlimits:\n  manifestsize: lots\n",
            "limits.manifestsize",
        ),
        (
            "version: 0.1\nstorage:\n  inmemory: {}\nhttp:\n  addr: 127.0.0.1:0\n",
            "storage.inmemory",
        ),
    ];
    for (config, key) in cases {
        let stderr = Berth::fails_to_start(config);
        let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "one line expected, got:\n{stderr}");
        assert!(lines[0].starts_with("error: "), "{stderr}");
        assert!(lines[0].contains(key), "{key} not named:\n{stderr}");
        assert!(!stderr.contains("backtrace"), "{stderr}");
    }
}

#[tokio::test]
async fn unknown_key_is_reported_by_path_and_the_server_runs() {
    let berth = Berth::start_with_config(
        "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: DATA\nhttp:\n  addr: 127.0.0.1:0\n  notakey: 1\nfrobnicate:\n  level: 3\n",
    );
    let nested = berth.wait_for_log("http.notakey", 0, Duration::from_secs(10));
    assert!(nested[0].contains("WARN"), "{nested:?}");
    berth.wait_for_log("frobnicate", 0, Duration::from_secs(10));
    let status = reqwest::get(format!("{}/v2/", berth.url))
        .await
        .expect("GET /v2/")
        .status();
    assert_eq!(status, 200);
}
