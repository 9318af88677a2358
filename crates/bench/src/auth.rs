//! The authentication scenario of `compare` (Berth only: Distribution has no token
//! service of its own): what Berth's token authentication costs. Berth is started once
//! without authentication (the baseline: the same image, the same requests), then with
//! `auth.berth`, where a public project holds the image. Timed, as in the standard
//! `manifest_get` workload: manifest GETs and blob HEADs without auth, anonymously on
//! the public project, then with a bearer token from `/service/token` (verification is
//! cached per token), then token requests per second (Basic credentials, one scope).
//!
//! Figures: `auth_open_*`, `auth_anonymous_*`, `auth_bearer_*` for `manifest_get` and
//! `blob_head` (req/s, latencies), the ratios `auth_bearer_*_vs_open` and
//! `auth_bearer_*_vs_anonymous`, and `auth_token_issue` (req/s).

use crate::client::{Blob, Image, Registry};
use crate::report::Figure;
use crate::servers::{Extra, Server, ServerSpec};
use crate::stats::{percentile_ms, rate};
use crate::workloads::{manifest_requests, Options};
use anyhow::{ensure, Context, Result};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tokio::task::JoinSet;

const ADMIN_PASSWORD: &str = "Bench12345";
const REPO: &str = "bench/app";

/// Basic credentials of the administrator.
fn basic() -> String {
    use std::fmt::Write as _;
    let raw = format!("admin:{ADMIN_PASSWORD}");
    // Base64 by hand: the bench has no base64 dependency.
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let bytes = raw.as_bytes();
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                let _ = out.write_char(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    format!("Basic {out}")
}

/// Run the scenario against `spec` (skipped, with no figures, for anything but Berth).
pub async fn run(spec: &ServerSpec, workdir: Option<&Path>, opts: &Options) -> Result<Vec<Figure>> {
    if spec.name != "berth" {
        return Ok(Vec::new());
    }
    let extra = Extra {
        access_log: false,
        yaml: format!("auth:\n  berth:\n    adminpassword: {ADMIN_PASSWORD}\n"),
    };
    let open = Server::start(spec, workdir).await?;
    let baseline = measure_open(&open, opts).await;
    let baseline = baseline.map_err(|e| e.context(format!("berth log tail:\n{}", open.log_tail())));
    open.stop()?;
    let baseline = baseline?;
    let server = Server::start_with(spec, workdir, &extra).await?;
    let result = measure(&server, opts, &baseline).await;
    let result = result.map_err(|e| e.context(format!("berth log tail:\n{}", server.log_tail())));
    server.stop()?;
    result
}

/// The same requests on a server without authentication: (manifest GET req/s, blob
/// HEAD req/s, figures).
struct Baseline {
    manifest_get: f64,
    blob_head: f64,
    figures: Vec<Figure>,
}

async fn measure_open(server: &Server, opts: &Options) -> Result<Baseline> {
    let registry = Registry::new(server.url())?;
    let image = Image::new(vec![Blob::random(4096)]);
    registry
        .push_image(REPO, "v1", &image, 1)
        .await
        .context("pushing the image")?;
    let probe = server.probe()?;
    let mut figures = Vec::new();
    let mut manifest_get = 0.0;
    for mut f in manifest_requests(&registry, Some(&probe), &opts.scale, REPO, false).await? {
        if f.key == "req_per_s" {
            manifest_get = f.value;
        }
        f.workload = "auth_open_manifest_get";
        figures.push(f);
    }
    let digest = image.layers[0].digest.clone();
    let (blob_head, more) = timed("auth_open_blob_head", opts, move || {
        let (registry, digest) = (registry.clone(), digest.clone());
        async move {
            ensure!(
                registry.blob_exists(REPO, &digest).await?,
                "blob HEAD: not found"
            );
            Ok(())
        }
    })
    .await?;
    figures.extend(more);
    Ok(Baseline {
        manifest_get,
        blob_head,
        figures,
    })
}

async fn measure(server: &Server, opts: &Options, baseline: &Baseline) -> Result<Vec<Figure>> {
    let anonymous = Registry::new(server.url())?;
    let admin = anonymous.with_authorization(&basic())?;
    let created = admin
        .http()
        .post(format!("{}/api/v2.0/projects", server.url()))
        .header("content-type", "application/json")
        .body(r#"{"project_name":"bench","metadata":{"public":"true"}}"#)
        .send()
        .await
        .context("creating the project")?;
    ensure!(
        created.status().as_u16() == 201,
        "creating the project: {}",
        created.status()
    );
    let image = Image::new(vec![Blob::random(4096)]);
    admin
        .push_image(REPO, "v1", &image, 1)
        .await
        .context("pushing the image")?;
    let token_url = format!(
        "{}/service/token?service=berth-registry&scope=repository:{REPO}:pull",
        server.url()
    );
    let answer: serde_json::Value = admin
        .http()
        .get(&token_url)
        .send()
        .await?
        .json()
        .await
        .context("reading a token")?;
    let token = answer["token"].as_str().context("no token in the answer")?;
    let bearer = anonymous.with_authorization(&format!("Bearer {token}"))?;
    let probe = server.probe()?;
    let mut figures = baseline.figures.clone();
    let mut rates = [[0.0; 2]; 2];
    for (i, (registry, manifest_name, head_name)) in [
        (
            &anonymous,
            "auth_anonymous_manifest_get",
            "auth_anonymous_blob_head",
        ),
        (&bearer, "auth_bearer_manifest_get", "auth_bearer_blob_head"),
    ]
    .into_iter()
    .enumerate()
    {
        for mut f in manifest_requests(registry, Some(&probe), &opts.scale, REPO, false).await? {
            if f.key == "req_per_s" {
                rates[0][i] = f.value;
            }
            f.workload = manifest_name;
            figures.push(f);
        }
        let digest = image.layers[0].digest.clone();
        let (req_per_s, more) = timed(head_name, opts, {
            let registry = registry.clone();
            move || {
                let (registry, digest) = (registry.clone(), digest.clone());
                async move {
                    ensure!(
                        registry.blob_exists(REPO, &digest).await?,
                        "blob HEAD: not found"
                    );
                    Ok(())
                }
            }
        })
        .await?;
        rates[1][i] = req_per_s;
        figures.extend(more);
    }
    for (workload, [anon, bearer]) in [
        ("auth_bearer_manifest_get_vs_anonymous", rates[0]),
        ("auth_bearer_blob_head_vs_anonymous", rates[1]),
    ] {
        if anon > 0.0 {
            figures.push(Figure::higher(workload, "ratio", bearer / anon));
        }
    }
    for (workload, open, bearer) in [
        (
            "auth_bearer_manifest_get_vs_open",
            baseline.manifest_get,
            rates[0][1],
        ),
        (
            "auth_bearer_blob_head_vs_open",
            baseline.blob_head,
            rates[1][1],
        ),
    ] {
        if open > 0.0 {
            figures.push(Figure::higher(workload, "ratio", bearer / open));
        }
    }
    let (_, more) = timed("auth_token_issue", opts, {
        let http = admin.http().clone();
        move || {
            let (http, url) = (http.clone(), token_url.clone());
            async move {
                let r = http.get(url).send().await?;
                ensure!(r.status().is_success(), "token request: {}", r.status());
                let _ = r.bytes().await?;
                Ok(())
            }
        }
    })
    .await?;
    figures.extend(more);
    Ok(figures)
}

/// `manifest_requests` requests of `one()` from `manifest_concurrency` workers after a
/// warm-up: (req/s, figures).
async fn timed<F, Fut>(workload: &'static str, opts: &Options, one: F) -> Result<(f64, Vec<Figure>)>
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Result<()>> + Send,
{
    let concurrency = opts.scale.manifest_concurrency.max(1);
    let run = |total: usize| {
        let counter = Arc::new(AtomicUsize::new(0));
        let mut tasks = JoinSet::new();
        for _ in 0..concurrency {
            let (one, counter) = (one.clone(), counter.clone());
            tasks.spawn(async move {
                let mut latencies = Vec::new();
                while counter.fetch_add(1, Ordering::Relaxed) < total {
                    let t = Instant::now();
                    one().await?;
                    latencies.push(t.elapsed());
                }
                Ok::<_, anyhow::Error>(latencies)
            });
        }
        async move {
            let mut all = Vec::with_capacity(total);
            while let Some(done) = tasks.join_next().await {
                all.extend(done.context("worker")?.context(workload)?);
            }
            Ok::<_, anyhow::Error>(all)
        }
    };
    run(concurrency * 4).await?;
    let start = Instant::now();
    let latencies = run(opts.scale.manifest_requests).await?;
    let wall = start.elapsed();
    let per_s = rate(latencies.len() as f64, wall);
    Ok((
        per_s,
        vec![
            Figure::higher(workload, "req_per_s", per_s),
            Figure::lower(workload, "p50_ms", percentile_ms(&latencies, 50.0)),
            Figure::lower(workload, "p99_ms", percentile_ms(&latencies, 99.0)),
        ],
    ))
}

#[cfg(test)]
mod tests {
    #[test]
    fn basic_header_is_base64() {
        // "admin:Bench12345"
        assert_eq!(super::basic(), "Basic YWRtaW46QmVuY2gxMjM0NQ==");
    }
}
