//! The pull-through cache scenario of `compare`: one upstream registry (Distribution,
//! access log on) holding `images` images of `layers` random layers; then each server
//! under test, started fresh with `proxy.remoteurl` pointing at it, is pulled through:
//!
//! - `proxy_cold_pull`: every image once, nothing cached (MB/s through the cache);
//! - `proxy_warm_pull`: the same images again, all cached;
//! - `proxy_fanout`: `clients` clients pull one image nobody pulled before, all at once
//!   (wall time, and how many blob GETs reached the upstream, from its access log).
//!
//! Images are pulled the way `docker pull` does: manifest by tag, config, then layers
//! `transfer_concurrency` at a time. Nothing here prints; figures go to the caller.

use crate::client::{Image, Registry};
use crate::report::Figure;
use crate::servers::{Extra, Server, ServerSpec};
use crate::stats::rate;
use crate::workloads::{random_blobs, Options};
use anyhow::{ensure, Context, Result};
use futures_util::StreamExt as _;
use std::path::Path;
use std::time::Instant;
use tokio::task::JoinSet;

/// The images the upstream holds: repositories `PREFIX/image-N`, tag `v1`.
pub struct Upstream {
    server: Server,
    registry: Registry,
    prefix: String,
    images: usize,
}

impl Upstream {
    /// Start Distribution (`spec`) as the upstream and push the scenario's images to it.
    pub async fn start(
        spec: &ServerSpec,
        workdir: Option<&Path>,
        opts: &Options,
    ) -> Result<Upstream> {
        let extra = Extra {
            access_log: true,
            yaml: String::new(),
        };
        let server = Server::start_with(spec, workdir, &extra)
            .await
            .context("starting the upstream registry of the pull-through scenario")?;
        let registry = Registry::new(server.url())?;
        let scale = &opts.scale;
        let up = Upstream {
            server,
            registry,
            prefix: format!("proxy-{:08x}", rand::random::<u32>()),
            images: scale.proxy_images,
        };
        for i in 0..up.images {
            up.push(&format!("{}/image-{i}", up.prefix), opts).await?;
        }
        Ok(up)
    }

    async fn push(&self, repo: &str, opts: &Options) -> Result<()> {
        let scale = &opts.scale;
        let image = Image::new(random_blobs(scale.proxy_layers, scale.proxy_layer_size).await?);
        self.registry
            .push_image(repo, "v1", &image, scale.transfer_concurrency)
            .await
            .with_context(|| format!("pushing {repo} to the upstream"))
    }

    /// Successful blob GETs of `repo` in the upstream's access log.
    fn blob_gets(&self, repo: &str) -> usize {
        count_blob_gets(&self.server.log_text(), repo)
    }

    pub fn stop(self) -> Result<()> {
        self.server.stop()
    }
}

/// Lines `"GET /v2/REPO/blobs/... HTTP/x" 200 ` of a combined-format access log.
fn count_blob_gets(log: &str, repo: &str) -> usize {
    let needle = format!("\"GET /v2/{repo}/blobs/");
    log.lines()
        .filter(|l| {
            l.split_once(&needle)
                .and_then(|(_, rest)| rest.split_once("\" "))
                .is_some_and(|(_, rest)| rest.starts_with("200 "))
        })
        .count()
}

/// Untimed pause before the upstream's access log is read: it logs a request when the
/// response is complete, and a server may still be fetching in the background.
async fn settle() {
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
}

/// Pull `repo:v1` through `registry` like `docker pull`; the bytes of config and layers.
async fn pull_image(registry: &Registry, repo: &str, opts: &Options) -> Result<u64> {
    let manifest = registry.pull_manifest(repo, "v1").await?;
    let mut bytes = registry
        .pull_blob(repo, &manifest.config.digest, manifest.config.size, true)
        .await?;
    let layers = manifest.layers.len();
    // Owned futures: this runs inside spawned tasks (the fan-out), which need them 'static.
    let pulls = manifest.layers.into_iter().map(|l| {
        let (registry, repo, verify) = (registry.clone(), repo.to_string(), opts.verify_digests);
        async move { registry.pull_blob(&repo, &l.digest, l.size, verify).await }
    });
    let results: Vec<Result<u64>> = futures_util::stream::iter(pulls)
        .buffer_unordered(opts.scale.transfer_concurrency.max(1))
        .collect()
        .await;
    for r in results {
        bytes += r?;
    }
    ensure!(
        layers == opts.scale.proxy_layers,
        "{repo}: the manifest lists {layers} layers, {} were pushed",
        opts.scale.proxy_layers
    );
    Ok(bytes)
}

/// Run the scenario against `spec` as a pull-through cache of `upstream` (fresh cache
/// directory); `label` makes the fan-out image unique to this run.
pub async fn run(
    spec: &ServerSpec,
    workdir: Option<&Path>,
    upstream: &Upstream,
    opts: &Options,
    label: &str,
) -> Result<Vec<Figure>> {
    // An image only this run pulls, pushed before the clock starts.
    let fanout_repo = format!("{}/fanout-{label}", upstream.prefix);
    upstream.push(&fanout_repo, opts).await?;
    let extra = Extra {
        access_log: false,
        yaml: format!("proxy:\n  remoteurl: {}\n", upstream.server.url()),
    };
    let server = Server::start_with(spec, workdir, &extra).await?;
    let result = async {
        let registry = Registry::new(server.url())?;
        let repos: Vec<String> = (0..upstream.images)
            .map(|i| format!("{}/image-{i}", upstream.prefix))
            .collect();
        let mut figures = Vec::new();
        for workload in ["proxy_cold_pull", "proxy_warm_pull"] {
            let gets_before: usize = repos.iter().map(|r| upstream.blob_gets(r)).sum();
            let start = Instant::now();
            let mut bytes = 0;
            for repo in &repos {
                bytes += pull_image(&registry, repo, opts)
                    .await
                    .with_context(|| format!("{workload} of {repo}"))?;
            }
            let wall = start.elapsed();
            settle().await;
            let gets: usize =
                repos.iter().map(|r| upstream.blob_gets(r)).sum::<usize>() - gets_before;
            figures.push(Figure::higher(
                workload,
                "mb_per_s",
                rate(bytes as f64 / crate::stats::MB, wall),
            ));
            figures.push(Figure::lower(workload, "wall_s", wall.as_secs_f64()));
            // Ideally one per blob when cold and none when warm. Distribution 2.8 fetches
            // a missed blob twice (once for the client, once in a goroutine that stores
            // it) and may not have stored it yet when the warm pull comes.
            figures.push(Figure::lower(workload, "upstream_blob_gets", gets as f64));
        }

        let clients = opts.scale.proxy_clients.max(1);
        let start = Instant::now();
        let mut tasks = JoinSet::new();
        for _ in 0..clients {
            let (registry, repo, opts) = (registry.clone(), fanout_repo.clone(), opts.clone());
            tasks.spawn(async move { pull_image(&registry, &repo, &opts).await });
        }
        let mut bytes = 0;
        while let Some(done) = tasks.join_next().await {
            bytes += done
                .context("proxy fan-out task")?
                .context("proxy fan-out pull")?;
        }
        let wall = start.elapsed();
        settle().await;
        let blobs = opts.scale.proxy_layers + 1;
        figures.push(Figure::lower("proxy_fanout", "wall_s", wall.as_secs_f64()));
        figures.push(Figure::higher(
            "proxy_fanout",
            "mb_per_s",
            rate(bytes as f64 / crate::stats::MB, wall),
        ));
        figures.push(Figure::lower(
            "proxy_fanout",
            "upstream_blob_gets",
            upstream.blob_gets(&fanout_repo) as f64,
        ));
        figures.push(Figure::info(
            "proxy_fanout",
            "blobs_per_image",
            blobs as f64,
        ));
        Ok::<_, anyhow::Error>(figures)
    }
    .await
    .map_err(|e| e.context(format!("{} log tail:\n{}", spec.name, server.log_tail())));
    server.stop()?;
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_successful_blob_gets_of_one_repository() {
        let log = concat!(
            "127.0.0.1 - - [1/Jan/2024] \"GET /v2/p/a/blobs/sha256:01 HTTP/1.1\" 200 5 \"\" \"x\"\n",
            "127.0.0.1 - - [1/Jan/2024] \"GET /v2/p/a/blobs/sha256:02 HTTP/1.1\" 307 0 \"\" \"x\"\n",
            "127.0.0.1 - - [1/Jan/2024] \"HEAD /v2/p/a/blobs/sha256:01 HTTP/1.1\" 200 0 \"\" \"x\"\n",
            "127.0.0.1 - - [1/Jan/2024] \"GET /v2/p/ab/blobs/sha256:01 HTTP/1.1\" 200 5 \"\" \"x\"\n",
            "127.0.0.1 - - [1/Jan/2024] \"GET /v2/p/a/blobs/sha256:03 HTTP/2.0\" 200 5 \"\" \"x\"\n",
        );
        assert_eq!(count_blob_gets(log, "p/a"), 2);
    }
}
