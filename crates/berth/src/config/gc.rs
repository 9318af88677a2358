//! `storage.maintenance.garbagecollect`: a garbage collection schedule in the
//! configuration, for deployments that do not set one through the management API
//! (a schedule stored through `/api/v2.0/system/gc/schedule` takes precedence).
//! Plain data for `jobs/gc.rs`.

use super::events::rekey;
use super::yaml::Value;
use super::{bad, get, get_bool, go_duration, scalar, ConfigError};
use std::time::Duration;

const KEY: &str = "storage.maintenance.garbagecollect";

/// A scheduled collection.
#[derive(Debug, Clone, PartialEq)]
pub struct GcScheduleConfig {
    /// Six cron fields, seconds first, UTC (a five-field crontab line gets second 0).
    pub cron: String,
    /// `deleteuntagged`: delete manifests no tag reaches (default false).
    pub delete_untagged: bool,
    /// `grace`: content younger than this is kept (default 2h, Harbor's time window).
    pub grace: Duration,
}

/// Read the section; `None` when absent or `enabled: false`.
pub(super) fn read(tree: &Value) -> Result<Option<GcScheduleConfig>, ConfigError> {
    let Some(node) = get(tree, KEY) else {
        return Ok(None);
    };
    if !node.is_mapping() {
        return Err(bad(
            KEY,
            "expected a map with schedule, and optionally deleteuntagged, grace and enabled",
        ));
    }
    let key = |k: &str| format!("{KEY}.{k}");
    if get_bool(node, "enabled").map_err(|e| rekey(e, &key("enabled")))? == Some(false) {
        return Ok(None);
    }
    let cron = get(node, "schedule")
        .and_then(scalar)
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .ok_or_else(|| {
            bad(
                &key("schedule"),
                "missing: a cron schedule such as \"0 0 3 * * *\" (03:00 UTC daily) is required",
            )
        })?;
    let cron = if cron.split_whitespace().count() == 5 {
        format!("0 {cron}")
    } else {
        cron
    };
    crate::registry::gc_runs::check_cron(&cron).map_err(|e| bad(&key("schedule"), e))?;
    Ok(Some(GcScheduleConfig {
        cron,
        delete_untagged: get_bool(node, "deleteuntagged")
            .map_err(|e| rekey(e, &key("deleteuntagged")))?
            .unwrap_or(false),
        grace: go_duration(node, "grace")
            .map_err(|e| rekey(e, &key("grace")))?
            .unwrap_or(Duration::from_secs(2 * 3600)),
    }))
}

#[cfg(test)]
mod tests {
    use crate::config::load_tests::load;
    use std::time::Duration;

    const FS: &str = "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: /tmp/x\n";

    fn with(section: &str) -> String {
        format!("{FS}  maintenance:\n    garbagecollect:\n{section}")
    }

    #[test]
    fn schedule_from_the_configuration() {
        assert_eq!(load(FS, &[]).expect("load").config.gc_schedule, None);
        let loaded = load(
            &with("      schedule: \"30 3 * * 0\"\n      deleteuntagged: true\n      grace: 24h\n"),
            &[],
        )
        .expect("load");
        assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
        let s = loaded.config.gc_schedule.expect("schedule");
        assert_eq!(s.cron, "0 30 3 * * 0", "a crontab line gets second 0");
        assert!(s.delete_untagged);
        assert_eq!(s.grace, Duration::from_secs(24 * 3600));
        // Defaults, and the REGISTRY_* variable.
        let s = load(
            FS,
            &[(
                "REGISTRY_STORAGE_MAINTENANCE_GARBAGECOLLECT_SCHEDULE",
                "0 0 * * * *",
            )],
        )
        .expect("load")
        .config
        .gc_schedule
        .expect("schedule from the environment");
        assert_eq!(s.cron, "0 0 * * * *");
        assert!(!s.delete_untagged);
        assert_eq!(s.grace, Duration::from_secs(2 * 3600));
        let off = load(
            &with("      schedule: \"0 0 * * * *\"\n      enabled: false\n"),
            &[],
        )
        .expect("load");
        assert_eq!(off.config.gc_schedule, None);
        for (section, needle) in [
            (
                "      schedule: \"0 0 61 * * *\"\n",
                "garbagecollect.schedule",
            ),
            ("      deleteuntagged: true\n", "garbagecollect.schedule"),
            (
                "      schedule: \"0 0 * * * *\"\n      grace: soon\n",
                "garbagecollect.grace",
            ),
        ] {
            let err = load(&with(section), &[]).expect_err(section);
            assert!(err.to_string().contains(needle), "{section}: {err}");
        }
    }
}
