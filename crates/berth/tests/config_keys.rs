//! Black-box tests of Distribution configuration keys around logging and the listener:
//! `log.fields`, `http.net: unix`, `http.tls.ciphersuites`, `http.tls.letsencrypt` and
//! Berth's `limits.headerreadtimeout`, against the real binary with curl and openssl.

mod common;

use common::Berth;
use serde_json::Value;
use std::time::Duration;

fn base(extra: &str) -> String {
    format!(
        "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: DATA\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:0\n{extra}"
    )
}

#[tokio::test]
async fn log_fields_are_on_every_json_line() {
    let b = Berth::start_with_config(&base(
        "log:\n  level: info\n  formatter: json\n  fields:\n    service: registry\n    environment: staging\n    level: shadowed\n",
    ));
    let r = reqwest::get(format!("{}/v2/", b.url)).await.expect("get");
    assert_eq!(r.status(), 200);
    b.wait_for_log("berth::access", 0, Duration::from_secs(10));
    let lines: Vec<Value> = b
        .log_lines()
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let startup = lines
        .iter()
        .find(|v| {
            v["fields"]["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("listening on"))
        })
        .expect("start-up line");
    let access = lines
        .iter()
        .find(|v| v["target"] == "berth::access")
        .expect("access line");
    for line in [startup, access] {
        assert_eq!(line["service"], "registry", "{line}");
        assert_eq!(line["environment"], "staging", "{line}");
        assert_eq!(
            line["level"], "INFO",
            "the formatter's own key is kept: {line}"
        );
        assert_eq!(line["fields.level"], "shadowed", "{line}");
    }
    assert_eq!(access["fields"]["path"], "/v2/");
}

#[tokio::test]
async fn log_fields_end_text_lines() {
    let b = Berth::start_with_config(&base(
        "log:\n  level: info\n  fields:\n    service: registry\n    note: two words\n",
    ));
    reqwest::get(format!("{}/v2/", b.url)).await.expect("get");
    let access = b.wait_for_log("berth::access", 0, Duration::from_secs(10));
    assert!(
        access[0].ends_with(" service=registry note=\"two words\""),
        "{}",
        access[0]
    );
    let startup = b.wait_for_log("listening on", 0, Duration::from_secs(1));
    assert!(startup[0].ends_with(" service=registry note=\"two words\""));
}
