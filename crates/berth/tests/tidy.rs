//! Architecture checks (house rule 10): the dependency rules of ARCHITECTURE.md, `//!` on
//! every module, and no printing or exiting from library code.

use std::path::{Path, PathBuf};

fn sources(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).expect("read src") {
        let p = entry.expect("entry").path();
        if p.is_dir() {
            out.extend(sources(&p));
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
    out.sort();
    out
}

/// Source lines outside `#[cfg(test)]` modules (a test module runs to the end of file
/// in this codebase by convention: `#[cfg(test)]` followed by an inline `mod ... {` at
/// column 0).
fn non_test_code(text: &str) -> String {
    let mut at = 0;
    while let Some(i) = text[at..].find("#[cfg(test)]\n") {
        let start = at + i;
        let next = &text[start + "#[cfg(test)]\n".len()..];
        let line = next.lines().next().unwrap_or("");
        // An inline test module (`mod tests {`), not a declaration of a file (`mod x;`).
        if ["mod ", "pub mod ", "pub(crate) mod "]
            .iter()
            .any(|m| line.starts_with(m))
            && line.trim_end().ends_with('{')
        {
            return text[..start].to_string();
        }
        at = start + 1;
    }
    text.to_string()
}

/// A whole file that is a test-only module: its parent declares it under `#[cfg(test)]`
/// (`meta/postgres_test.rs`, the shared suites).
fn test_only_file(file: &Path) -> bool {
    let (Some(dir), Some(stem)) = (file.parent(), file.file_stem()) else {
        return false;
    };
    let stem = stem.to_string_lossy();
    let parent = ["mod.rs", "lib.rs", "main.rs"]
        .iter()
        .filter_map(|p| std::fs::read_to_string(dir.join(p)).ok())
        .collect::<String>();
    ["mod ", "pub mod ", "pub(crate) mod "]
        .iter()
        .any(|m| parent.contains(&format!("#[cfg(test)]\n{m}{stem};")))
}

fn crate_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Which top-level module of `src/` a file belongs to.
fn module_of(path: &Path) -> String {
    let rel = path
        .strip_prefix(crate_root().join("src"))
        .expect("under src");
    let first = rel.components().next().expect("component");
    first
        .as_os_str()
        .to_string_lossy()
        .trim_end_matches(".rs")
        .to_string()
}

#[test]
fn dependency_rules() {
    // (pattern, modules allowed to contain it, why)
    let rules: &[(&str, &[&str], &str)] = &[
        ("axum::", &["http"], "only http/ knows the HTTP framework"),
        ("hyper", &["http"], "only http/ knows hyper"),
        ("StatusCode", &["http"], "only http/ names status codes"),
        ("sqlx", &["meta"], "only meta/ talks SQL"),
        (
            "tokio::fs",
            &["storage"],
            "only storage/ touches blob files",
        ),
        (
            "std::fs",
            &["storage", "config", "auth", "import", "state"],
            "file access stays in storage/ (config reads its own file, auth its htpasswd file; import/ reads a foreign Distribution store, only through its reader; state binds and removes the http.net: unix socket file)",
        ),
        (
            "crate::http",
            &["http", "state"],
            "nothing below http/ knows it",
        ),
        (
            "crate::registry",
            &["registry", "http", "state", "config", "jobs", "import", "upstream"],
            "storage/ and meta/ sit below registry/ (jobs/, import/ and upstream/ sit above it)",
        ),
        (
            "crate::jobs",
            &["jobs", "state", "http"],
            "jobs are started by the composition root only (http/ only reads the health status)",
        ),
        (
            "reqwest",
            &["jobs", "upstream", "storage"],
            "outgoing HTTP stays in jobs/ (webhooks), upstream/ (the pull-through cache's client) and storage/ (the S3 object store's client)",
        ),
        ("crate::state", &["state"], "state is the composition root"),
        (
            "crate::upstream",
            &["upstream", "state"],
            "the registry uses the Upstream trait; only state picks the HTTP client",
        ),
        (
            "FsBlobStore",
            &["storage", "state"],
            "only state picks backends",
        ),
        (
            "SqliteMeta",
            &["meta", "state"],
            "only state picks backends",
        ),
    ];
    let mut violations = Vec::new();
    for file in sources(&crate_root().join("src")) {
        if file.ends_with("main.rs") || test_only_file(&file) {
            continue;
        }
        let module = module_of(&file);
        let code = non_test_code(&std::fs::read_to_string(&file).expect("read"));
        for (pattern, allowed, why) in rules {
            if code.contains(pattern) && !allowed.contains(&module.as_str()) {
                violations.push(format!("{}: uses `{pattern}` ({why})", file.display()));
            }
        }
    }
    assert!(
        violations.is_empty(),
        "dependency rule violations:\n{}",
        violations.join("\n")
    );
}

#[test]
fn oci_crate_has_no_io_dependencies() {
    let manifest =
        std::fs::read_to_string(crate_root().join("../oci/Cargo.toml")).expect("oci Cargo.toml");
    for dep in ["tokio", "axum", "hyper", "sqlx", "reqwest"] {
        assert!(
            !manifest.contains(dep),
            "crates/oci must not depend on {dep}"
        );
    }
}

#[test]
fn every_module_documents_itself() {
    let mut roots = sources(&crate_root().join("src"));
    roots.extend(sources(&crate_root().join("../oci/src")));
    roots.extend(sources(&crate_root().join("../bench/src")));
    let missing: Vec<String> = roots
        .iter()
        .filter(|f| {
            let text = std::fs::read_to_string(f).expect("read");
            !text.trim_start().starts_with("//!")
        })
        .map(|f| f.display().to_string())
        .collect();
    assert!(
        missing.is_empty(),
        "modules without a //! paragraph:\n{}",
        missing.join("\n")
    );
}

#[test]
fn library_code_does_not_print_or_exit() {
    let mut bad = Vec::new();
    for file in sources(&crate_root().join("src")) {
        if file.ends_with("main.rs") || test_only_file(&file) {
            continue;
        }
        let code = non_test_code(&std::fs::read_to_string(&file).expect("read"));
        for pattern in [
            "println!",
            "eprintln!",
            "process::exit",
            "dbg!",
            ".unwrap()",
        ] {
            if code.contains(pattern) {
                bad.push(format!("{}: {pattern}", file.display()));
            }
        }
    }
    assert!(
        bad.is_empty(),
        "library code must log through tracing and return errors:\n{}",
        bad.join("\n")
    );
}

/// Nodes of two versions run side by side during a rolling upgrade (and a node of the
/// older version restarts on a schema the newer one migrated: `set_ignore_missing`), so
/// a migration may only add: tables, nullable or defaulted columns, indexes. Removing or
/// changing what older code reads (a "contract" step) needs a release of its own once no
/// node of the version using it runs; this fails on one sneaking into a migration.
#[test]
fn migrations_are_expand_only() {
    let contract = [
        "drop table",
        "drop column",
        "rename",
        "alter column",
        "set not null",
        "drop index",
        "drop constraint",
        "truncate",
        "delete from",
    ];
    let mut found = Vec::new();
    for dir in ["migrations/sqlite", "migrations/postgres"] {
        for entry in std::fs::read_dir(crate_root().join(dir)).expect("migrations") {
            let path = entry.expect("entry").path();
            let text = std::fs::read_to_string(&path).expect("read");
            for (n, line) in text.lines().enumerate() {
                let code = line.split("--").next().unwrap_or("").to_ascii_lowercase();
                for c in contract {
                    if code.contains(c) {
                        found.push(format!("{}:{}: {}", path.display(), n + 1, line.trim()));
                    }
                }
            }
        }
    }
    assert!(
        found.is_empty(),
        "migrations must be expand-only (see ARCHITECTURE.md, rolling upgrades):\n{}",
        found.join("\n")
    );
}
