//! Figures and their presentation: the `workload key=value ...` lines printed by `run`
//! and the median comparison table printed by `compare`.
//!
//! A [`Figure`] is one measured number with its direction (higher or lower is better).
//! This module formats figures; it does not measure anything or talk to servers.

use crate::stats::median;
use std::fmt::Write as _;

/// Which direction of a figure is an improvement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Better {
    Higher,
    Lower,
    /// Informational (a count, a sanity check): not ranked.
    Info,
}

impl Better {
    fn label(self) -> &'static str {
        match self {
            Better::Higher => "higher",
            Better::Lower => "lower",
            Better::Info => "info",
        }
    }
}

/// One measured number of one workload, e.g. `push mb_per_s`.
#[derive(Debug, Clone)]
pub struct Figure {
    pub workload: &'static str,
    pub key: &'static str,
    pub value: f64,
    pub better: Better,
}

impl Figure {
    pub fn higher(workload: &'static str, key: &'static str, value: f64) -> Figure {
        Figure {
            workload,
            key,
            value,
            better: Better::Higher,
        }
    }

    pub fn lower(workload: &'static str, key: &'static str, value: f64) -> Figure {
        Figure {
            workload,
            key,
            value,
            better: Better::Lower,
        }
    }

    pub fn info(workload: &'static str, key: &'static str, value: f64) -> Figure {
        Figure {
            workload,
            key,
            value,
            better: Better::Info,
        }
    }

    fn name(&self) -> String {
        format!("{}.{}", self.workload, self.key)
    }
}

/// A number with enough precision for both small latencies and large rates; counts
/// (informational integers) are shown without decimals.
fn format_value(v: f64, better: Better) -> String {
    if v.is_nan() {
        "nan".to_string()
    } else if better == Better::Info && v == v.trunc() && v.abs() < 1e15 {
        format!("{v:.0}")
    } else if v.abs() >= 100.0 {
        format!("{v:.1}")
    } else if v.abs() >= 1.0 {
        format!("{v:.3}")
    } else {
        format!("{v:.4}")
    }
}

/// The machine-readable lines for one workload's figures:
/// `workload key=value key=value ...`, one line per workload, in order of appearance.
pub fn workload_lines(prefix: &str, figures: &[Figure]) -> Vec<String> {
    let mut lines: Vec<(&'static str, String)> = Vec::new();
    for f in figures {
        let pair = format!(" {}={}", f.key, format_value(f.value, f.better));
        match lines.iter_mut().find(|(w, _)| *w == f.workload) {
            Some((_, line)) => line.push_str(&pair),
            None => lines.push((f.workload, format!("{prefix}{}{pair}", f.workload))),
        }
    }
    lines.into_iter().map(|(_, line)| line).collect()
}

/// The comparison table of two servers' rounds: for every figure, each side's median
/// over its rounds, the ratio left/right, and which side is ahead.
pub fn comparison_table(
    left_name: &str,
    left_rounds: &[Vec<Figure>],
    right_name: &str,
    right_rounds: &[Vec<Figure>],
) -> String {
    // Rows in order of first appearance across both sides.
    let mut rows: Vec<(String, Better)> = Vec::new();
    for f in left_rounds.iter().chain(right_rounds).flatten() {
        let name = f.name();
        if !rows.iter().any(|(n, _)| *n == name) {
            rows.push((name, f.better));
        }
    }
    let median_of = |rounds: &[Vec<Figure>], name: &str| -> Option<f64> {
        let values: Vec<f64> = rounds
            .iter()
            .flatten()
            .filter(|f| f.name() == name)
            .map(|f| f.value)
            .collect();
        median(&values)
    };

    let header = [
        "figure".to_string(),
        "better".to_string(),
        format!("{left_name} median"),
        format!("{right_name} median"),
        format!("ratio {left_name}/{right_name}"),
        "verdict".to_string(),
    ];
    let mut table: Vec<[String; 6]> = vec![header];
    for (name, better) in &rows {
        let left = median_of(left_rounds, name);
        let right = median_of(right_rounds, name);
        let cell = |v: Option<f64>| v.map_or_else(|| "-".to_string(), |v| format_value(v, *better));
        let ratio = match (left, right) {
            (Some(l), Some(r)) if r != 0.0 => Some(l / r),
            _ => None,
        };
        let verdict = verdict(*better, ratio, left_name, right_name);
        table.push([
            name.clone(),
            better.label().to_string(),
            cell(left),
            cell(right),
            ratio.map_or_else(|| "-".to_string(), |r| format!("{r:.2}")),
            verdict,
        ]);
    }

    let mut widths = [0usize; 6];
    for row in &table {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let mut out = String::new();
    for (i, row) in table.iter().enumerate() {
        let mut line = String::new();
        for (col, (cell, w)) in row.iter().zip(widths).enumerate() {
            // Names and words left-aligned, numbers right-aligned.
            let _ = if col <= 1 || col == 5 {
                write!(line, "{cell:<w$}  ")
            } else {
                write!(line, "{cell:>w$}  ")
            };
        }
        out.push_str(line.trim_end());
        out.push('\n');
        if i == 0 {
            let total = widths.iter().sum::<usize>() + 2 * (widths.len() - 1);
            out.push_str(&"-".repeat(total));
            out.push('\n');
        }
    }
    out
}

/// "left 1.85x better", "right 1.20x better", "even" (within 2%), or "" for info rows.
fn verdict(better: Better, ratio: Option<f64>, left: &str, right: &str) -> String {
    let Some(ratio) = ratio.filter(|r| r.is_finite() && *r > 0.0) else {
        return String::new();
    };
    let advantage = match better {
        Better::Higher => ratio,
        Better::Lower => 1.0 / ratio,
        Better::Info => return String::new(),
    };
    if (advantage - 1.0).abs() < 0.02 {
        "even".to_string()
    } else if advantage > 1.0 {
        format!("{left} {advantage:.2}x better")
    } else {
        format!("{right} {:.2}x better", 1.0 / advantage)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_group_figures_by_workload() {
        let figures = vec![
            Figure::higher("push", "mb_per_s", 640.0),
            Figure::lower("push", "wall_s", 1.5),
            Figure::info("catalog", "repos", 1000.0),
        ];
        assert_eq!(
            workload_lines("", &figures),
            vec![
                "push mb_per_s=640.0 wall_s=1.500".to_string(),
                "catalog repos=1000".to_string()
            ]
        );
    }

    #[test]
    fn table_reports_medians_ratio_and_verdict() {
        let left = vec![
            vec![Figure::higher("pull", "mb_per_s", 200.0)],
            vec![Figure::higher("pull", "mb_per_s", 300.0)],
            vec![Figure::higher("pull", "mb_per_s", 250.0)],
        ];
        let right = vec![vec![Figure::higher("pull", "mb_per_s", 125.0)]];
        let table = comparison_table("a", &left, "b", &right);
        let row = table
            .lines()
            .find(|l| l.starts_with("pull.mb_per_s"))
            .unwrap_or_default();
        assert!(row.contains("250.0"), "{table}");
        assert!(row.contains("125.0"), "{table}");
        assert!(row.contains("2.00"), "{table}");
        assert!(row.ends_with("a 2.00x better"), "{table}");
    }

    #[test]
    fn lower_is_better_inverts_the_verdict() {
        assert_eq!(
            verdict(Better::Lower, Some(2.0), "a", "b"),
            "b 2.00x better"
        );
        assert_eq!(
            verdict(Better::Lower, Some(0.5), "a", "b"),
            "a 2.00x better"
        );
        assert_eq!(verdict(Better::Higher, Some(1.01), "a", "b"), "even");
        assert_eq!(verdict(Better::Info, Some(3.0), "a", "b"), "");
    }
}
