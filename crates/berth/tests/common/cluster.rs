//! A Berth cluster for black-box tests: N `berth serve` nodes on loopback ports sharing
//! one real S3 bucket root (SeaweedFS, `common::s3`) and one real PostgreSQL database
//! (a fresh database on the test cluster of `scripts/start-postgres.sh`, or on
//! `BERTH_TEST_POSTGRES_URL`), behind a real nginx load balancer (round-robin, config
//! generated here).

use super::s3::{parse_env, s3, unique_suffix, S3Kind};
use super::{require_tool, run, Berth};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The PostgreSQL server for tests (an existing database on it, for administration).
pub fn postgres_url() -> String {
    static URL: OnceLock<String> = OnceLock::new();
    URL.get_or_init(|| {
        if let Ok(url) = std::env::var("BERTH_TEST_POSTGRES_URL") {
            if !url.is_empty() {
                return url;
            }
        }
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/start-postgres.sh");
        let uid = std::fs::metadata("/proc/self")
            .map(|m| std::os::unix::fs::MetadataExt::uid(&m))
            .unwrap_or(0);
        let dir = std::env::temp_dir().join(format!("berth-test-postgres-{uid}"));
        let lock = std::env::temp_dir().join(format!("berth-test-postgres-{uid}.lock"));
        let out = Command::new("flock")
            .arg("-o")
            .arg(&lock)
            .arg("bash")
            .arg(&script)
            .arg(&dir)
            .output()
            .expect("run scripts/start-postgres.sh");
        assert!(
            out.status.success(),
            "cannot start PostgreSQL for the cluster tests (install it with scripts/install-test-deps.sh): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        parse_env(&String::from_utf8_lossy(&out.stdout))
            .remove("BERTH_TEST_POSTGRES_URL")
            .expect("start-postgres.sh printed no URL")
    })
    .clone()
}

/// A new, empty database on the test server; returns its DSN.
pub fn fresh_database() -> String {
    require_tool("psql");
    let admin = postgres_url();
    let name = format!("berth_cluster_{}", unique_suffix());
    run(Command::new("psql")
        .arg(&admin)
        .args(["-v", "ON_ERROR_STOP=1", "-q", "-c"])
        .arg(format!("CREATE DATABASE {name}")));
    // Same server and user, the new database.
    let (base, _) = admin.rsplit_once('/').expect("a database in the URL");
    format!("{base}/{name}")
}

pub struct Cluster {
    /// The shared configuration (without `http.addr`, which each node gets its own of).
    config: String,
    pub nodes: Vec<Option<Berth>>,
    nginx: Option<Nginx>,
    /// `127.0.0.1:PORT` of nginx.
    pub host: String,
    /// `http://127.0.0.1:PORT` of nginx.
    pub url: String,
    pub dsn: String,
}

impl Cluster {
    /// `n` nodes over a fresh bucket root and database, behind nginx. `extra` is
    /// top-level YAML added to every node's configuration.
    pub fn start(n: usize, extra: &str) -> Cluster {
        Cluster::start_with_storage(n, "", extra)
    }

    /// [`Cluster::start`] with `storage_extra` YAML inside the `storage:` section (e.g.
    /// `redirect:`).
    pub fn start_with_storage(n: usize, storage_extra: &str, extra: &str) -> Cluster {
        let dsn = fresh_database();
        let (storage, _) = s3(S3Kind::SeaweedFs).storage_yaml(storage_extra);
        let config = format!(
            "version: 0.1\nlog:\n  level: info\n{storage}database:\n  driver: postgres\n  dsn: {dsn}\n{extra}"
        );
        let mut cluster = Cluster {
            config,
            nodes: Vec::new(),
            nginx: None,
            host: String::new(),
            url: String::new(),
            dsn,
        };
        // One node first, so the others start on a migrated database (they would wait
        // on its lock anyway).
        for _ in 0..n {
            cluster.add_node();
        }
        let nginx = Nginx::start(&cluster.upstreams());
        cluster.host = nginx.host.clone();
        cluster.url = nginx.url.clone();
        cluster.nginx = Some(nginx);
        cluster
    }

    /// Start one more node (not yet behind nginx: call `reload_nginx`).
    pub fn add_node(&mut self) -> &Berth {
        let node =
            Berth::start_with_config(&format!("{}http:\n  addr: 127.0.0.1:0\n", self.config));
        self.nodes.push(Some(node));
        self.nodes.last().and_then(Option::as_ref).expect("node")
    }

    /// The running nodes.
    pub fn live(&self) -> Vec<&Berth> {
        self.nodes.iter().flatten().collect()
    }

    fn upstreams(&self) -> Vec<String> {
        self.live().iter().map(|n| n.host.clone()).collect()
    }

    /// SIGKILL node `i` (it stays in nginx's upstream list, as a crashed server would).
    pub fn kill_node(&mut self, i: usize) {
        if let Some(node) = self.nodes[i].take() {
            run(Command::new("kill").args(["-KILL", &node.pid().to_string()]));
            drop(node);
        }
    }

    /// Rewrite nginx's upstream list to the live nodes and reload it.
    pub fn reload_nginx(&mut self) {
        let upstreams = self.upstreams();
        if let Some(nginx) = &self.nginx {
            nginx.reload(&upstreams);
        }
    }

    /// nginx's access log (one line per proxied request).
    pub fn nginx_log(&self) -> String {
        self.nginx.as_ref().map(Nginx::log).unwrap_or_default()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.nginx.take();
        for node in self.nodes.iter_mut() {
            node.take();
        }
        let _ = Command::new("psql")
            .arg(postgres_url())
            .args(["-q", "-c"])
            .arg(format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.dsn.rsplit('/').next().unwrap_or("none")
            ))
            .output();
    }
}

/// A real nginx on a free 127.0.0.1 port, load-balancing round-robin over `HOST:PORT`
/// upstreams as the guides configure it for registry:2 (no body size limit, no
/// buffering, a failed or 503 answer retried on the next node for idempotent requests,
/// a failing node set aside for 2 s); stopped on drop.
pub struct Nginx {
    child: Child,
    dir: tempfile::TempDir,
    port: u16,
    /// `127.0.0.1:PORT`.
    pub host: String,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
}

impl Nginx {
    pub fn start(upstreams: &[String]) -> Nginx {
        require_tool("nginx");
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let conf = dir.path().join("nginx.conf");
        std::fs::write(&conf, nginx_conf(dir.path(), port, upstreams)).expect("nginx.conf");
        let child = Command::new("nginx")
            .arg("-c")
            .arg(&conf)
            .arg("-p")
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nginx");
        let host = format!("127.0.0.1:{port}");
        let nginx = Nginx {
            child,
            dir,
            port,
            url: format!("http://{host}"),
            host,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(&nginx.host).is_err() {
            assert!(
                Instant::now() < deadline,
                "nginx did not listen on {}",
                nginx.host
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        nginx
    }

    /// Rewrite the upstream list and reload.
    pub fn reload(&self, upstreams: &[String]) {
        let conf = self.dir.path().join("nginx.conf");
        std::fs::write(&conf, nginx_conf(self.dir.path(), self.port, upstreams))
            .expect("nginx.conf");
        run(Command::new("nginx")
            .arg("-c")
            .arg(&conf)
            .arg("-p")
            .arg(self.dir.path())
            .args(["-s", "reload"]));
        std::thread::sleep(Duration::from_millis(500));
    }

    /// The access log (one line per proxied request: method, URI, status, upstream).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("access.log")).unwrap_or_default()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn nginx_conf(dir: &std::path::Path, port: u16, upstreams: &[String]) -> String {
    let dir = dir.display().to_string();
    let servers: String = upstreams
        .iter()
        .map(|h| format!("    server {h} max_fails=1 fail_timeout=2s;\n"))
        .collect();
    let user = if is_root() { "user root;\n" } else { "" };
    format!(
        "{user}daemon off;\nworker_processes 1;\npid {dir}/nginx.pid;\nerror_log {dir}/error.log warn;\n\
         events {{ worker_connections 1024; }}\n\
         http {{\n  log_format upstream '$request_method $uri $status $upstream_addr';\n  access_log {dir}/access.log upstream;\n  client_body_temp_path {dir}/body;\n  proxy_temp_path {dir}/proxy;\n  fastcgi_temp_path {dir}/fastcgi;\n  uwsgi_temp_path {dir}/uwsgi;\n  scgi_temp_path {dir}/scgi;\n\
         upstream berth {{\n{servers}    keepalive 32;\n  }}\n\
         server {{\n    listen 127.0.0.1:{port};\n    client_max_body_size 0;\n    chunked_transfer_encoding on;\n\
         location / {{\n      proxy_pass http://berth;\n      proxy_http_version 1.1;\n      proxy_set_header Connection \"\";\n      proxy_set_header Host $http_host;\n      proxy_set_header X-Forwarded-Proto $scheme;\n      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;\n      proxy_request_buffering off;\n      proxy_buffering off;\n      proxy_read_timeout 900s;\n      proxy_send_timeout 900s;\n      proxy_next_upstream error timeout http_502 http_503;\n    }}\n  }}\n}}\n"
    )
}

fn is_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false)
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}
