//! The benchmark workloads, run in sequence against one registry: big-image push and
//! pull, concurrent fetches of one blob, many small pushes, manifest GET/HEAD latency,
//! and catalog pagination over many repositories.
//!
//! Each workload prepares its content before the clock starts (random data and digests
//! are client work, not server work), measures wall time and, when the server's PID is
//! known, the server's CPU time, and returns [`Figure`]s. Nothing here starts servers or
//! prints: callers decide how figures are shown.

use crate::client::{Blob, Image, Registry};
use crate::procfs::Probe;
use crate::report::Figure;
use crate::stats::{percentile_ms, rate, GIB, MB};
use anyhow::{ensure, Context, Result};
use bytes::Bytes;
use futures_util::StreamExt as _;
use rand::Rng as _;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::JoinSet;

const MIB: usize = 1024 * 1024;

/// How much work each workload does.
#[derive(Debug, Clone)]
pub struct Scale {
    /// Layers of the big image, and their size.
    pub layers: usize,
    pub layer_size: usize,
    /// Layers pushed or pulled at once (docker's default is 3 to 5).
    pub transfer_concurrency: usize,
    /// Concurrent GETs of one blob, and how many times that burst is repeated.
    pub fanout_clients: usize,
    pub fanout_repeats: usize,
    /// Small images (one layer of `small_layer_size`) and the pushes in flight.
    pub small_images: usize,
    pub small_layer_size: usize,
    pub small_concurrency: usize,
    /// Manifest requests per method, and how many are in flight.
    pub manifest_requests: usize,
    pub manifest_concurrency: usize,
    /// Repositories created for the catalog, page size, timed full walks and
    /// first-page samples.
    pub catalog_repos: usize,
    pub catalog_page: usize,
    pub catalog_walks: usize,
    pub catalog_first_page_samples: usize,
    pub catalog_setup_concurrency: usize,
    /// Pull-through cache scenario (`compare` only): images in the upstream, their layers
    /// and layer size, and the clients pulling one uncached image at once.
    pub proxy_images: usize,
    pub proxy_layers: usize,
    pub proxy_layer_size: usize,
    pub proxy_clients: usize,
    /// Garbage collection scenario (`compare` only): images (each a config and
    /// `gc_layers` layers of `gc_layer_size`), pushes in flight while filling, clients
    /// pulling, and seconds of pulls with no collection running.
    pub gc_images: usize,
    pub gc_layers: usize,
    pub gc_layer_size: usize,
    pub gc_push_concurrency: usize,
    pub gc_pull_clients: usize,
    pub gc_baseline_secs: u64,
}

impl Scale {
    /// The real benchmark.
    pub fn full() -> Scale {
        Scale {
            layers: 8,
            layer_size: 64 * MIB,
            transfer_concurrency: 4,
            fanout_clients: 8,
            fanout_repeats: 3,
            small_images: 200,
            small_layer_size: 4 * 1024,
            small_concurrency: 8,
            manifest_requests: 20_000,
            manifest_concurrency: 32,
            catalog_repos: 1_000,
            catalog_page: 100,
            catalog_walks: 10,
            catalog_first_page_samples: 50,
            catalog_setup_concurrency: 8,
            proxy_images: 8,
            proxy_layers: 4,
            proxy_layer_size: 8 * MIB,
            proxy_clients: 10,
            gc_images: 10_000,
            gc_layers: 4,
            gc_layer_size: 1024,
            gc_push_concurrency: 16,
            gc_pull_clients: 8,
            gc_baseline_secs: 10,
        }
    }

    /// A smoke test that finishes in seconds (pagination still spans several pages).
    pub fn quick() -> Scale {
        Scale {
            layer_size: 4 * MIB,
            fanout_repeats: 2,
            small_images: 20,
            manifest_requests: 2_000,
            catalog_repos: 100,
            catalog_page: 10,
            catalog_walks: 3,
            catalog_first_page_samples: 10,
            proxy_images: 2,
            proxy_layer_size: MIB,
            gc_images: 40,
            gc_baseline_secs: 1,
            ..Scale::full()
        }
    }
}

/// Everything a benchmark run needs besides the registry.
#[derive(Debug, Clone)]
pub struct Options {
    pub scale: Scale,
    /// Check the digest of every pulled blob (costs client CPU).
    pub verify_digests: bool,
    /// `scale` is the quick smoke-test scale (its figures are not measurements).
    pub quick: bool,
}

/// Server CPU time at the start of a measurement, if the server can be observed.
struct CpuMark(Option<(Probe, f64)>);

impl CpuMark {
    fn start(probe: Option<&Probe>) -> Result<CpuMark> {
        Ok(CpuMark(match probe {
            Some(p) => Some((*p, p.cpu_seconds()?)),
            None => None,
        }))
    }

    /// Server CPU seconds since `start`, or `None` without a probe.
    fn elapsed(&self) -> Result<Option<f64>> {
        match &self.0 {
            Some((p, start)) => Ok(Some(p.cpu_seconds()? - start)),
            None => Ok(None),
        }
    }
}

/// Runs every workload in order against `registry`, calling `emit` with each
/// workload's figures as soon as it finishes, and returns all of them.
pub async fn run_all(
    registry: &Registry,
    probe: Option<&Probe>,
    opts: &Options,
    mut emit: impl FnMut(&[Figure]),
) -> Result<Vec<Figure>> {
    ensure!(
        registry
            .ping()
            .await
            .with_context(|| format!("registry at {} is not reachable", registry.base()))?,
        "GET {}v2/ did not answer 200 (registries that require auth are not supported)",
        registry.base()
    );
    let prefix = format!("bench-{:08x}", rand::thread_rng().gen::<u32>());
    let scale = &opts.scale;
    let mut all = Vec::new();
    let mut record = |figures: Vec<Figure>, all: &mut Vec<Figure>| {
        emit(&figures);
        all.extend(figures);
    };

    let big_repo = format!("{prefix}/big");
    let (figures, image) = push_big(registry, probe, scale, &big_repo).await?;
    record(figures, &mut all);
    record(pull_big(registry, probe, opts, &big_repo).await?, &mut all);
    let layer = image
        .layers
        .first()
        .context("the big image has no layers")?;
    record(
        blob_fanout(registry, probe, opts, &big_repo, layer).await?,
        &mut all,
    );
    drop(image);
    record(
        small_pushes(registry, probe, scale, &prefix).await?,
        &mut all,
    );
    for head in [false, true] {
        record(
            manifest_requests(registry, probe, scale, &big_repo, head).await?,
            &mut all,
        );
    }
    for figures in catalog(registry, probe, scale, &prefix).await? {
        record(figures, &mut all);
    }
    if let Some(p) = probe {
        let rss = p.peak_rss_bytes()? as f64 / MIB as f64;
        let cpu = p.cpu_seconds()?;
        record(
            vec![
                Figure::lower("server", "peak_rss_mib", rss),
                Figure::info("server", "total_cpu_s", cpu),
            ],
            &mut all,
        );
    }
    Ok(all)
}

/// Generates `count` random blobs of `size` bytes on blocking threads.
pub(crate) async fn random_blobs(count: usize, size: usize) -> Result<Vec<Blob>> {
    let mut tasks = JoinSet::new();
    for i in 0..count {
        tasks.spawn_blocking(move || (i, Blob::random(size)));
    }
    let mut blobs = Vec::with_capacity(count);
    while let Some(done) = tasks.join_next().await {
        blobs.push(done.context("generating random content")?);
    }
    blobs.sort_by_key(|(i, _)| *i);
    Ok(blobs.into_iter().map(|(_, b)| b).collect())
}

/// Figures shared by the byte-moving workloads.
fn transfer_figures(
    workload: &'static str,
    bytes: u64,
    wall: Duration,
    cpu: Option<f64>,
) -> Vec<Figure> {
    let mut figures = vec![
        Figure::higher(workload, "mb_per_s", rate(bytes as f64 / MB, wall)),
        Figure::lower(workload, "wall_s", wall.as_secs_f64()),
    ];
    if let Some(cpu) = cpu {
        figures.push(Figure::lower(workload, "cpu_s", cpu));
        figures.push(Figure::lower(
            workload,
            "cpu_s_per_gib",
            cpu / (bytes as f64 / GIB),
        ));
    }
    figures
}

/// Pushes one image of `layers` fresh random layers, `transfer_concurrency` at a time.
async fn push_big(
    registry: &Registry,
    probe: Option<&Probe>,
    scale: &Scale,
    repo: &str,
) -> Result<(Vec<Figure>, Image)> {
    let image = Image::new(random_blobs(scale.layers, scale.layer_size).await?);
    let cpu = CpuMark::start(probe)?;
    let start = Instant::now();
    registry
        .push_image(repo, "v1", &image, scale.transfer_concurrency)
        .await
        .context("push workload")?;
    let wall = start.elapsed();
    let figures = transfer_figures("push", image.layer_bytes(), wall, cpu.elapsed()?);
    Ok((figures, image))
}

/// Pulls the big image by tag: manifest, config, then layers `transfer_concurrency` at a
/// time.
async fn pull_big(
    registry: &Registry,
    probe: Option<&Probe>,
    opts: &Options,
    repo: &str,
) -> Result<Vec<Figure>> {
    let verify = opts.verify_digests;
    let cpu = CpuMark::start(probe)?;
    let start = Instant::now();
    let manifest = registry
        .pull_manifest(repo, "v1")
        .await
        .context("pull workload")?;
    registry
        .pull_blob(repo, &manifest.config.digest, manifest.config.size, true)
        .await?;
    let results: Vec<Result<u64>> = futures_util::stream::iter(&manifest.layers)
        .map(|l| registry.pull_blob(repo, &l.digest, l.size, verify))
        .buffer_unordered(opts.scale.transfer_concurrency.max(1))
        .collect()
        .await;
    let mut bytes = 0;
    for r in results {
        bytes += r.context("pull workload")?;
    }
    let wall = start.elapsed();
    ensure!(
        manifest.layers.len() == opts.scale.layers,
        "pulled manifest lists {} layers, pushed {}",
        manifest.layers.len(),
        opts.scale.layers
    );
    Ok(transfer_figures("pull", bytes, wall, cpu.elapsed()?))
}

/// `fanout_clients` simultaneous GETs of the same blob, repeated `fanout_repeats` times.
async fn blob_fanout(
    registry: &Registry,
    probe: Option<&Probe>,
    opts: &Options,
    repo: &str,
    blob: &Blob,
) -> Result<Vec<Figure>> {
    let scale = &opts.scale;
    let cpu = CpuMark::start(probe)?;
    let start = Instant::now();
    let mut bytes = 0;
    for _ in 0..scale.fanout_repeats {
        let mut tasks = JoinSet::new();
        for _ in 0..scale.fanout_clients {
            let (registry, repo, digest) =
                (registry.clone(), repo.to_string(), blob.digest.clone());
            let (size, verify) = (blob.size(), opts.verify_digests);
            tasks.spawn(async move { registry.pull_blob(&repo, &digest, size, verify).await });
        }
        while let Some(done) = tasks.join_next().await {
            bytes += done
                .context("blob fan-out task")?
                .context("blob fan-out workload")?;
        }
    }
    let wall = start.elapsed();
    Ok(transfer_figures("blob_fanout", bytes, wall, cpu.elapsed()?))
}

/// Pushes `small_images` images of one small unique layer each, `small_concurrency` at a
/// time, each tagged in one repository.
async fn small_pushes(
    registry: &Registry,
    probe: Option<&Probe>,
    scale: &Scale,
    prefix: &str,
) -> Result<Vec<Figure>> {
    let repo = format!("{prefix}/small");
    let images: Vec<Image> = random_blobs(scale.small_images, scale.small_layer_size)
        .await?
        .into_iter()
        .map(|layer| Image::new(vec![layer]))
        .collect();
    let cpu = CpuMark::start(probe)?;
    let start = Instant::now();
    let results: Vec<Result<()>> = futures_util::stream::iter(images.iter().enumerate())
        .map(|(i, image)| {
            let repo = &repo;
            async move {
                registry
                    .push_image(repo, &format!("img-{i}"), image, 1)
                    .await
            }
        })
        .buffer_unordered(scale.small_concurrency.max(1))
        .collect()
        .await;
    for r in results {
        r.context("small-image push workload")?;
    }
    let wall = start.elapsed();
    let count = images.len() as f64;
    let mut figures = vec![
        Figure::higher("small_push", "images_per_s", rate(count, wall)),
        Figure::lower("small_push", "wall_s", wall.as_secs_f64()),
    ];
    if let Some(cpu) = cpu.elapsed()? {
        figures.push(Figure::lower("small_push", "cpu_s", cpu));
        figures.push(Figure::lower(
            "small_push",
            "cpu_ms_per_image",
            cpu * 1000.0 / count,
        ));
    }
    Ok(figures)
}

/// `manifest_requests` GETs (or HEADs) of one manifest by tag from
/// `manifest_concurrency` workers, after an untimed warm-up that opens the connections.
pub(crate) async fn manifest_requests(
    registry: &Registry,
    probe: Option<&Probe>,
    scale: &Scale,
    repo: &str,
    head: bool,
) -> Result<Vec<Figure>> {
    let workload = if head {
        "manifest_head"
    } else {
        "manifest_get"
    };
    let expected = registry.get_manifest(repo, "v1").await?;
    let expected_digest = Blob::new(expected).digest;
    let concurrency = scale.manifest_concurrency.max(1);

    let run = |total: usize| {
        let counter = Arc::new(AtomicUsize::new(0));
        let mut tasks = JoinSet::new();
        for _ in 0..concurrency {
            let (registry, repo, counter) = (registry.clone(), repo.to_string(), counter.clone());
            let expected_digest = expected_digest.clone();
            tasks.spawn(async move {
                let mut latencies = Vec::new();
                while counter.fetch_add(1, Ordering::Relaxed) < total {
                    let t = Instant::now();
                    if head {
                        registry.head_manifest(&repo, "v1").await?;
                    } else {
                        let body = registry.get_manifest(&repo, "v1").await?;
                        let got = Blob::new(body).digest;
                        ensure!(got == expected_digest, "manifest GET returned digest {got}");
                    }
                    latencies.push(t.elapsed());
                }
                Ok::<_, anyhow::Error>(latencies)
            });
        }
        async move {
            let mut all = Vec::with_capacity(total);
            while let Some(done) = tasks.join_next().await {
                all.extend(done.context("manifest worker")?.context(workload)?);
            }
            Ok::<_, anyhow::Error>(all)
        }
    };

    run(concurrency * 4).await?;
    let cpu = CpuMark::start(probe)?;
    let start = Instant::now();
    let latencies = run(scale.manifest_requests).await?;
    let wall = start.elapsed();
    let count = latencies.len() as f64;
    let mut figures = vec![
        Figure::higher(workload, "req_per_s", rate(count, wall)),
        Figure::lower(workload, "p50_ms", percentile_ms(&latencies, 50.0)),
        Figure::lower(workload, "p99_ms", percentile_ms(&latencies, 99.0)),
    ];
    if let Some(cpu) = cpu.elapsed()? {
        figures.push(Figure::lower(workload, "cpu_s", cpu));
        figures.push(Figure::lower(workload, "cpu_us_per_req", cpu * 1e6 / count));
    }
    Ok(figures)
}

/// Walks the catalog from the first page, following `Link` headers. Returns the
/// repositories seen and the number of pages.
async fn walk_catalog(registry: &Registry, page_size: usize) -> Result<(Vec<String>, usize)> {
    let mut url = Some(registry.catalog_url(page_size)?);
    let (mut repos, mut pages) = (Vec::new(), 0);
    while let Some(page_url) = url {
        let (page, next) = registry.catalog_page(&page_url).await?;
        pages += 1;
        ensure!(
            pages <= 1_000_000,
            "catalog pagination does not end (last page {page_url})"
        );
        let empty = page.is_empty();
        repos.extend(page);
        url = if empty { None } else { next };
    }
    Ok((repos, pages))
}

/// Creates `catalog_repos` repositories holding one tiny image each (blobs mounted from a
/// base repository), then measures full paginated catalog walks and first-page latency.
async fn catalog(
    registry: &Registry,
    probe: Option<&Probe>,
    scale: &Scale,
    prefix: &str,
) -> Result<Vec<Vec<Figure>>> {
    // Setup: one base image whose blobs every catalog repository mounts.
    let base_repo = format!("{prefix}/base");
    let image = Image::new(vec![Blob::new(Bytes::from(format!("tiny layer {prefix}")))]);
    registry
        .push_image(&base_repo, "latest", &image, 1)
        .await
        .context("catalog setup: base image")?;

    let cpu = CpuMark::start(probe)?;
    let start = Instant::now();
    let results: Vec<Result<usize>> = futures_util::stream::iter(0..scale.catalog_repos)
        .map(|i| {
            let (image, base_repo) = (&image, &base_repo);
            async move {
                let repo = format!("{prefix}/cat-{i:05}");
                let mut fallbacks = 0;
                for blob in image.layers.iter().chain([&image.config]) {
                    if !registry.mount_or_upload(&repo, blob, base_repo).await? {
                        fallbacks += 1;
                    }
                }
                registry
                    .put_manifest(&repo, "latest", &image.manifest)
                    .await?;
                Ok(fallbacks)
            }
        })
        .buffer_unordered(scale.catalog_setup_concurrency.max(1))
        .collect()
        .await;
    let mut fallbacks = 0;
    for r in results {
        fallbacks += r.context("catalog setup")?;
    }
    let wall = start.elapsed();
    let mut setup = vec![
        Figure::higher(
            "catalog_setup",
            "repos_per_s",
            rate(scale.catalog_repos as f64, wall),
        ),
        Figure::info("catalog_setup", "mount_fallbacks", fallbacks as f64),
    ];
    if let Some(cpu) = cpu.elapsed()? {
        setup.push(Figure::lower("catalog_setup", "cpu_s", cpu));
    }

    // A checked walk first: every repository just created must be listed.
    let (repos, pages) = walk_catalog(registry, scale.catalog_page).await?;
    let ours = repos
        .iter()
        .filter(|r| r.starts_with(&format!("{prefix}/cat-")))
        .count();
    ensure!(
        ours == scale.catalog_repos && repos.len() >= scale.catalog_repos,
        "catalog walk found {ours} of the {} repositories created ({} in total)",
        scale.catalog_repos,
        repos.len()
    );

    let cpu = CpuMark::start(probe)?;
    let start = Instant::now();
    for _ in 0..scale.catalog_walks {
        let (seen, _) = walk_catalog(registry, scale.catalog_page).await?;
        ensure!(
            seen.len() >= repos.len(),
            "catalog walk found {} repositories, an earlier walk {}",
            seen.len(),
            repos.len()
        );
    }
    let wall = start.elapsed();
    let walks = scale.catalog_walks as f64;
    let cpu = cpu.elapsed()?;

    let first = registry.catalog_url(scale.catalog_page)?;
    let mut latencies = Vec::with_capacity(scale.catalog_first_page_samples);
    for _ in 0..scale.catalog_first_page_samples {
        let t = Instant::now();
        registry.catalog_page(&first).await?;
        latencies.push(t.elapsed());
    }

    let mut figures = vec![
        Figure::higher("catalog", "walks_per_s", rate(walks, wall)),
        Figure::lower(
            "catalog",
            "ms_per_walk",
            wall.as_secs_f64() * 1000.0 / walks,
        ),
        Figure::lower(
            "catalog",
            "first_page_p50_ms",
            percentile_ms(&latencies, 50.0),
        ),
        Figure::info("catalog", "repos_listed", repos.len() as f64),
        Figure::info("catalog", "pages_per_walk", pages as f64),
    ];
    if let Some(cpu) = cpu {
        figures.push(Figure::lower(
            "catalog",
            "cpu_ms_per_walk",
            cpu * 1000.0 / walks,
        ));
    }
    Ok(vec![setup, figures])
}
