//! The garbage collection scenario of `compare`: each server, started fresh, is filled
//! with `gc_images` images (a config and `gc_layers` small random layers each, spread
//! over 100 repositories), then every other image is deleted by digest, leaving half
//! the blobs unreferenced. `gc_pull_clients` clients then pull the kept images (manifest
//! by tag, then its first layer) for `gc_baseline_secs` with no collection running, and
//! again while the registry's own `garbage-collect --delete-untagged` runs against the
//! same storage (Berth with `--grace 0s`; Distribution's collector is not safe while the
//! registry serves, and is timed the same way regardless). Afterwards every kept image
//! is pulled once more and the broken ones are counted.
//!
//! Figures: `gc` (seconds, the collector's peak RSS, blobs it found eligible),
//! `gc_pull_baseline` and `gc_pull_during` (pull latencies), `gc_pull_during.
//! p99_over_baseline`, `gc_pull_during.failed_pulls`, `gc_after.broken_images`, and `gc_setup` (images pushed per
//! second while filling, informational).

use crate::client::{Blob, Image, Registry};
use crate::procfs::Probe;
use crate::report::Figure;
use crate::servers::{Server, ServerSpec};
use crate::stats::{percentile_ms, rate};
use crate::workloads::Options;
use anyhow::{Context, Result};
use futures_util::StreamExt as _;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One kept image: where to pull it.
#[derive(Clone)]
struct Kept {
    repo: String,
    tag: String,
    layer: Blob,
}

pub async fn run(spec: &ServerSpec, workdir: Option<&Path>, opts: &Options) -> Result<Vec<Figure>> {
    let scale = &opts.scale;
    let server = Server::start(spec, workdir).await?;
    let registry = Registry::new(server.url())?;
    let mut figures = Vec::new();

    // Fill.
    let started = Instant::now();
    let images: Vec<(String, String, Image)> = (0..scale.gc_images)
        .map(|i| {
            let layers = (0..scale.gc_layers)
                .map(|_| Blob::random(scale.gc_layer_size))
                .collect();
            (
                format!("gc/app-{}", i % 100),
                format!("v{i}"),
                Image::new(layers),
            )
        })
        .collect();
    let pushed: Vec<Result<()>> = futures_util::stream::iter(&images)
        .map(|(repo, tag, image)| registry.push_image(repo, tag, image, 1))
        .buffer_unordered(scale.gc_push_concurrency)
        .collect()
        .await;
    for r in pushed {
        r.context("filling the registry for the garbage collection scenario")?;
    }
    figures.push(Figure::info(
        "gc_setup",
        "images_per_s",
        rate(images.len() as f64, started.elapsed()),
    ));

    // Delete every other image; its config and layers are then referenced by nothing.
    let deleted: Vec<Result<()>> = futures_util::stream::iter(images.iter().skip(1).step_by(2))
        .map(|(repo, _, image)| registry.delete_manifest(repo, &image.manifest.digest))
        .buffer_unordered(scale.gc_push_concurrency)
        .collect()
        .await;
    for r in deleted {
        r.context("deleting images for the garbage collection scenario")?;
    }
    let kept: Arc<Vec<Kept>> = Arc::new(
        images
            .iter()
            .step_by(2)
            .map(|(repo, tag, image)| Kept {
                repo: repo.clone(),
                tag: tag.clone(),
                layer: image.layers[0].clone(),
            })
            .collect(),
    );

    // Pulls with no collection running.
    let stop = Arc::new(AtomicBool::new(false));
    let pullers = pull(&registry, &kept, scale.gc_pull_clients, &stop);
    tokio::time::sleep(Duration::from_secs(scale.gc_baseline_secs)).await;
    stop.store(true, Ordering::Relaxed);
    let (baseline, baseline_failed) = pullers.await?;
    anyhow::ensure!(
        baseline_failed == 0,
        "{baseline_failed} pulls of kept images failed before any collection ran"
    );
    figures.push(Figure::lower(
        "gc_pull_baseline",
        "p99_ms",
        percentile_ms(&baseline, 0.99),
    ));

    // The same pulls while the collector runs.
    let stop = Arc::new(AtomicBool::new(false));
    let pullers = pull(&registry, &kept, scale.gc_pull_clients, &stop);
    let out = tempfile::NamedTempFile::new().context("a file for the collector's output")?;
    let mut cmd = tokio::process::Command::new(&spec.binary);
    cmd.arg("garbage-collect").arg("--delete-untagged");
    if spec.name != "distribution" {
        cmd.args(["--grace", "0s"]);
    }
    cmd.arg(server.config_path())
        .stdout(out.reopen().context("reopening the output file")?)
        .stderr(std::process::Stdio::null());
    if spec.name == "distribution" {
        // Debian's docker-registry with the s3 driver panics when it is set.
        cmd.env_remove("AWS_CA_BUNDLE");
    }
    let gc_started = Instant::now();
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting {} garbage-collect", spec.binary.display()))?;
    let probe = child.id().map(Probe::new).transpose()?;
    let mut peak = 0u64;
    let status = loop {
        if let Some(p) = &probe {
            if let Ok(rss) = p.peak_rss_bytes() {
                peak = peak.max(rss);
            }
        }
        tokio::select! {
            s = child.wait() => break s?,
            _ = tokio::time::sleep(Duration::from_millis(10)) => {}
        }
    };
    let gc_seconds = gc_started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let (during, during_failed) = pullers.await?;
    anyhow::ensure!(
        status.success(),
        "{} garbage-collect failed ({status})",
        spec.name
    );
    let report = std::fs::read_to_string(out.path()).unwrap_or_default();
    let eligible = report
        .lines()
        .filter(|l| l.contains("blob eligible for deletion"))
        .count();
    figures.push(Figure::lower("gc", "seconds", gc_seconds));
    figures.push(Figure::lower(
        "gc",
        "peak_rss_mib",
        peak as f64 / (1024.0 * 1024.0),
    ));
    figures.push(Figure::info("gc", "eligible_blobs", eligible as f64));
    let during_p99 = percentile_ms(&during, 0.99);
    figures.push(Figure::lower("gc_pull_during", "p99_ms", during_p99));
    figures.push(Figure::lower(
        "gc_pull_during",
        "failed_pulls",
        during_failed as f64,
    ));
    figures.push(Figure::lower(
        "gc_pull_during",
        "p99_over_baseline",
        during_p99 / percentile_ms(&baseline, 0.99).max(1e-3),
    ));

    // Everything kept must still pull.
    let mut broken = 0usize;
    for k in kept.iter() {
        if pull_once(&registry, k).await.is_err() {
            broken += 1;
        }
    }
    figures.push(Figure::lower("gc_after", "broken_images", broken as f64));
    server.stop()?;
    Ok(figures)
}

/// `clients` tasks pulling kept images round robin until `stop`; the latency of each
/// pull (manifest and first layer).
fn pull(
    registry: &Registry,
    kept: &Arc<Vec<Kept>>,
    clients: usize,
    stop: &Arc<AtomicBool>,
) -> impl std::future::Future<Output = Result<(Vec<Duration>, usize)>> {
    let tasks: Vec<_> = (0..clients)
        .map(|c| {
            let (registry, kept, stop) = (registry.clone(), kept.clone(), stop.clone());
            tokio::spawn(async move {
                let (mut latencies, mut failed) = (Vec::new(), 0usize);
                let mut i = c;
                while !stop.load(Ordering::Relaxed) {
                    let k = &kept[i % kept.len()];
                    let t = Instant::now();
                    match pull_once(&registry, k).await {
                        Ok(()) => latencies.push(t.elapsed()),
                        Err(_) => failed += 1,
                    }
                    i += clients;
                }
                (latencies, failed)
            })
        })
        .collect();
    async move {
        let (mut all, mut failed) = (Vec::new(), 0);
        for t in tasks {
            let (latencies, f) = t.await.context("a pulling client panicked")?;
            all.extend(latencies);
            failed += f;
        }
        Ok((all, failed))
    }
}

async fn pull_once(registry: &Registry, k: &Kept) -> Result<()> {
    registry.get_manifest(&k.repo, &k.tag).await?;
    registry
        .pull_blob(&k.repo, &k.layer.digest, k.layer.size(), false)
        .await?;
    Ok(())
}
