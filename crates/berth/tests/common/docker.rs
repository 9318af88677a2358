//! The real Docker Engine for black-box tests: Berth's container image, built once per
//! test binary (`scripts/build-image.sh`), user-defined bridge networks and containers
//! that are removed on drop (also when a test panics), and [`Relay`], a TCP relay on the
//! host's address of one network that lets the containers on it (and only them) reach a
//! server listening on 127.0.0.1 (the test PostgreSQL and S3 servers). Nothing is
//! pulled: the image is built from scratch here.

use super::{require_tool, run};
use std::io;
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

/// The tag `image()` builds.
pub const IMAGE: &str = "berth:dev";

/// Build the image once for every test in this run (tests run as threads of one process).
pub fn image() -> &'static str {
    static BUILT: OnceLock<Result<(), String>> = OnceLock::new();
    let built = BUILT.get_or_init(|| {
        require_tool("docker");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/build-image.sh");
        let out = Command::new("bash")
            .arg(&script)
            .arg(IMAGE)
            .output()
            .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "{} failed:\n{}\n{}",
                script.display(),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    });
    if let Err(e) = built {
        panic!("building the image: {e}");
    }
    IMAGE
}

pub fn docker() -> Command {
    require_tool("docker");
    Command::new("docker")
}

/// A user-defined bridge network made with `--internal` (no way out of the host).
/// Removed on drop (after the containers on it: declare it first).
pub struct Network {
    pub name: String,
    /// The host's address on the network (the bridge's gateway).
    pub gateway: IpAddr,
    /// `ADDRESS/BITS`.
    pub subnet: String,
}

impl Network {
    pub fn create(name: &str) -> Network {
        run(docker().args([
            "network",
            "create",
            "--driver",
            "bridge",
            "--internal",
            name,
        ]));
        // Made first, so the network is removed if the inspection fails.
        let mut network = Network {
            name: name.to_string(),
            gateway: IpAddr::from([0, 0, 0, 0]),
            subnet: String::new(),
        };
        let gateway = run(docker().args([
            "network",
            "inspect",
            "--format",
            "{{range .IPAM.Config}}{{.Gateway}} {{.Subnet}} {{end}}",
            name,
        ]));
        let words: Vec<&str> = gateway.split_whitespace().collect();
        let (gateway, subnet) = words
            .chunks(2)
            .find_map(|w| Some((w[0].parse::<std::net::Ipv4Addr>().ok()?, *w.get(1)?)))
            .unwrap_or_else(|| panic!("network {name} has no IPv4 gateway: {words:?}"));
        network.gateway = IpAddr::V4(gateway);
        network.subnet = subnet.to_string();
        network
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        let _ = Command::new("docker")
            .args(["network", "rm", &self.name])
            .output();
    }
}

/// A container, removed (`docker rm -f`) on drop.
pub struct Container {
    pub name: String,
}

impl Container {
    /// `docker create --name NAME` on the first of `networks` with `args` (options such
    /// as `-v`) and `image`, connected to the other networks, then started.
    pub fn start(name: &str, networks: &[&Network], args: &[&str], image: &str) -> Container {
        let (first, rest) = networks.split_first().expect("at least one network");
        let mut create = docker();
        create
            .args(["create", "--name", name, "--network", &first.name])
            .args(args)
            .arg(image);
        run(&mut create);
        let container = Container {
            name: name.to_string(),
        };
        for n in rest {
            container.connect(n);
        }
        run(docker().args(["start", name]));
        container
    }

    /// The container's address on `network`.
    pub fn ip(&self, network: &Network) -> String {
        let format = format!(
            "{{{{(index .NetworkSettings.Networks \"{}\").IPAddress}}}}",
            network.name
        );
        let ip = run(docker().args(["inspect", "--format", &format, &self.name]));
        let ip = ip.trim();
        assert!(
            !ip.is_empty(),
            "{} has no address on {}",
            self.name,
            network.name
        );
        ip.to_string()
    }

    /// `docker network disconnect NETWORK NAME`.
    pub fn disconnect(&self, network: &Network) {
        run(docker().args(["network", "disconnect", &network.name, &self.name]));
    }

    /// `docker network connect NETWORK NAME`.
    pub fn connect(&self, network: &Network) {
        run(docker().args(["network", "connect", &network.name, &self.name]));
    }

    /// What the container wrote to stdout and stderr so far.
    pub fn logs(&self) -> String {
        docker()
            .args(["logs", &self.name])
            .output()
            .map(|o| {
                format!(
                    "{}{}",
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                )
            })
            .unwrap_or_default()
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = Command::new("docker")
            .args(["rm", "-f", &self.name])
            .output();
    }
}

/// Accepts TCP connections on a free port of the host's address on a network and pipes
/// each to `target`, a thread per direction. A host firewall rule (`iptables`, removed on
/// drop) drops packets to that port from anywhere but the network's subnet: Docker gives
/// a container a default route through its first network even when that network is
/// `--internal`, so a container disconnected from the relay's network would otherwise
/// still reach the host's address on it that way. With the rule, it is cut off as across
/// a real partition: its connection attempts go unanswered (no refusal, no reset).
pub struct Relay {
    pub addr: SocketAddr,
    /// The `iptables` rule, as given to `-I`/`-D`.
    rule: Vec<String>,
    stop: Arc<AtomicBool>,
}

impl Relay {
    pub fn start(network: &Network, target: SocketAddr) -> Relay {
        require_tool("iptables");
        let listen = network.gateway;
        let listener = TcpListener::bind((listen, 0))
            .unwrap_or_else(|e| panic!("relay: cannot listen on {listen}: {e}"));
        let addr = listener.local_addr().expect("relay address");
        let rule: Vec<String> = [
            "INPUT",
            "-p",
            "tcp",
            "-d",
            &listen.to_string(),
            "--dport",
            &addr.port().to_string(),
            "!",
            "-s",
            &network.subnet,
            "-j",
            "DROP",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        run(Command::new("iptables").arg("-I").args(&rule));
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stopped.load(Ordering::SeqCst) {
                    break;
                }
                if let Ok(client) = conn {
                    std::thread::spawn(move || pipe(client, target));
                }
            }
        });
        Relay { addr, rule, stop }
    }
}

/// Copy both ways between `client` and a new connection to `target` until each side
/// has ended; an end in one direction is passed on as a shutdown of writes.
fn pipe(client: TcpStream, target: SocketAddr) {
    let Ok(server) = TcpStream::connect(target) else {
        let _ = client.shutdown(Shutdown::Both);
        return;
    };
    let (Ok(mut client_in), Ok(mut server_out)) = (client.try_clone(), server.try_clone()) else {
        return;
    };
    let up = std::thread::spawn(move || {
        let _ = io::copy(&mut client_in, &mut server_out);
        let _ = server_out.shutdown(Shutdown::Write);
    });
    let (mut server_in, mut client_out) = (server, client);
    let _ = io::copy(&mut server_in, &mut client_out);
    let _ = client_out.shutdown(Shutdown::Write);
    let _ = up.join();
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = Command::new("iptables").arg("-D").args(&self.rule).output();
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(self.addr);
    }
}

/// A second Docker Engine (`dockerd`) of the test's own, with its own data, socket,
/// `daemon.json` and bridge, and no iptables rules, forwarding or masquerading: for what
/// only the daemon's configuration decides, such as `registry-mirrors`. Stopped on drop,
/// its bridge removed. (Not `--bridge none`: a daemon started so deletes `docker0`, the
/// host daemon's bridge.)
pub struct Engine {
    dir: tempfile::TempDir,
    child: Option<std::process::Child>,
    bridge: String,
}

impl Engine {
    /// Start `dockerd` with `daemon_json` as its configuration file.
    pub fn start(daemon_json: &str) -> Engine {
        let bin = require_tool("dockerd");
        require_tool("docker");
        let uid = run(Command::new("id").arg("-u"));
        assert_eq!(
            uid.trim(),
            "0",
            "a second dockerd needs root: run the suite as root (the README's test command does)"
        );
        // Short paths: the daemon's and its containerd's sockets live under them.
        let dir = tempfile::Builder::new()
            .prefix("de")
            .tempdir_in("/tmp")
            .expect("tempdir");
        let p = |n: &str| dir.path().join(n);
        std::fs::write(p("daemon.json"), daemon_json).expect("daemon.json");
        let log = std::fs::File::create(p("dockerd.log")).expect("log");
        require_tool("ip");
        let pid = std::process::id();
        let bridge = format!("brt{}", pid % 1_000_000);
        run(Command::new("ip").args(["link", "add", &bridge, "type", "bridge"]));
        let mut engine = Engine {
            dir,
            child: None,
            bridge,
        };
        run(Command::new("ip").args([
            "addr",
            "add",
            &format!("10.213.{}.1/24", pid % 250 + 1),
            "dev",
            &engine.bridge,
        ]));
        run(Command::new("ip").args(["link", "set", &engine.bridge, "up"]));
        let p = |n: &str| engine.dir.path().join(n);
        let child = Command::new(bin)
            .arg("--config-file")
            .arg(p("daemon.json"))
            .arg("--data-root")
            .arg(p("data"))
            .arg("--exec-root")
            .arg(p("x"))
            .arg("--pidfile")
            .arg(p("dockerd.pid"))
            .arg("-H")
            .arg(format!("unix://{}", p("d.sock").display()))
            .arg("--bridge")
            .arg(&engine.bridge)
            .args([
                "--iptables=false",
                "--ip6tables=false",
                "--ip-forward=false",
                "--ip-masq=false",
            ])
            // Its own containerd namespaces: should it share the host's containerd, its
            // images and events stay apart from the host daemon's.
            .arg("--containerd-namespace")
            .arg(format!("berth-test-{}", std::process::id()))
            .arg("--containerd-plugins-namespace")
            .arg(format!("berth-test-plugins-{}", std::process::id()))
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn dockerd");
        engine.child = Some(child);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
        loop {
            let ok = engine
                .docker()
                .arg("info")
                .output()
                .is_ok_and(|o| o.status.success());
            if ok {
                return engine;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the second dockerd did not answer within 90 s: {}",
                engine.log()
            );
            std::thread::sleep(std::time::Duration::from_millis(250));
        }
    }

    /// The Docker CLI, talking to this engine (with a configuration of its own).
    pub fn docker(&self) -> Command {
        let mut c = Command::new("docker");
        c.arg("--config")
            .arg(self.dir.path().join("cli"))
            .arg("-H")
            .arg(format!(
                "unix://{}",
                self.dir.path().join("d.sock").display()
            ));
        c
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("dockerd.log")).unwrap_or_default()
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.stop();
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .status();
    }
}

impl Engine {
    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SIGTERM: the daemon stops its containerd and unmounts what it mounted.
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
            while std::time::Instant::now() < deadline {
                if matches!(c.try_wait(), Ok(Some(_))) {
                    return;
                }
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
