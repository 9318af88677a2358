//! A real OpenLDAP `slapd` for tests: its own configuration file (`slapd -f`) and mdb
//! database in a temporary directory, loaded with `slapadd` before it starts, serving
//! `ldap://` (and `ldaps://` with a test certificate) on 127.0.0.1 ports of its own.
//! Nothing system-wide is used or left running: the process is this test's child,
//! runs as whoever runs the test, and is killed with it.
//!
//! The directory (`dc=example,dc=org`): users `alice` and `bob` (inetOrgPerson, `uid`,
//! `{SSHA}` passwords made with `slappasswd`) under `ou=people`, the group
//! `cn=devs,ou=groups` (groupOfNames) with alice as its one member, and the search
//! account `cn=reader`. Anonymous clients may bind and nothing more, so searches need
//! the search account.

use super::pki::Pki;
use super::run;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

pub const BASE_DN: &str = "dc=example,dc=org";
pub const PEOPLE_DN: &str = "ou=people,dc=example,dc=org";
pub const GROUPS_DN: &str = "ou=groups,dc=example,dc=org";
pub const DEVS_DN: &str = "cn=devs,ou=groups,dc=example,dc=org";
pub const ALICE_DN: &str = "uid=alice,ou=people,dc=example,dc=org";
pub const READER_DN: &str = "cn=reader,dc=example,dc=org";
pub const READER_PASSWORD: &str = "R3ader-secret";
pub const ALICE_PASSWORD: &str = "Alice-in-LDAP-1";
pub const BOB_PASSWORD: &str = "Bob-in-LDAP-2";

/// slapd's log lines, as a reader thread collects them.
type Log = Arc<Mutex<Vec<String>>>;

/// A running slapd.
pub struct Slapd {
    /// Configuration, database, certificates.
    pub dir: tempfile::TempDir,
    /// `ldap://127.0.0.1:PORT` (StartTLS offered when started with TLS).
    pub url: String,
    /// `ldaps://127.0.0.1:PORT` when started with TLS.
    pub ldaps_url: Option<String>,
    child: Child,
    /// Its `-d stats` log: connections, binds, searches with their filters.
    log: Log,
}

impl Drop for Slapd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A program of the slapd package: in /usr/sbin, which a PATH may lack.
fn sbin(name: &str) -> PathBuf {
    let p = Path::new("/usr/sbin").join(name);
    if p.is_file() {
        p
    } else {
        super::require_tool(name)
    }
}

/// An `{SSHA}` hash of `password`, made by `slappasswd`.
fn ssha(password: &str) -> String {
    run(Command::new(sbin("slappasswd")).args(["-h", "{SSHA}", "-s", password]))
        .trim()
        .to_string()
}

/// A port nothing listens on now (slapd cannot be handed a bound socket; a port taken
/// meanwhile makes slapd fail to bind, and [`Slapd::start`] tries another).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

impl Slapd {
    /// slapd on `ldap://` only.
    pub fn start() -> Slapd {
        Slapd::start_inner(None)
    }

    /// slapd with the server certificate of `pki` (for 127.0.0.1): StartTLS on the
    /// `ldap://` port, and an `ldaps://` port.
    pub fn start_tls(pki: &Pki) -> Slapd {
        Slapd::start_inner(Some(pki))
    }

    fn start_inner(pki: Option<&Pki>) -> Slapd {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        std::fs::create_dir(d.join("db")).expect("db dir");
        let tls = match pki {
            Some(pki) => {
                // slapd reads them as the user running the test: copies of its own.
                for f in ["ca.crt", "server.crt", "server.key"] {
                    std::fs::copy(pki.path(f), d.join(f)).expect("copy certificate");
                }
                format!(
                    "TLSCACertificateFile {0}/ca.crt\nTLSCertificateFile {0}/server.crt\nTLSCertificateKeyFile {0}/server.key\n",
                    d.display()
                )
            }
            None => String::new(),
        };
        let conf = format!(
            r#"include /etc/ldap/schema/core.schema
include /etc/ldap/schema/cosine.schema
include /etc/ldap/schema/inetorgperson.schema
modulepath /usr/lib/ldap
moduleload back_mdb
pidfile {dir}/slapd.pid
argsfile {dir}/slapd.args
{tls}
database mdb
maxsize 16777216
suffix "{BASE_DN}"
rootdn "cn=admin,{BASE_DN}"
directory {dir}/db
index objectClass eq
index uid eq
index member eq
access to attrs=userPassword
    by anonymous auth
    by self read
    by * none
access to *
    by users read
    by * none
"#,
            dir = d.display()
        );
        let conf_path = d.join("slapd.conf");
        std::fs::write(&conf_path, conf).expect("slapd.conf");
        let ldif = format!(
            "dn: {BASE_DN}\nobjectClass: dcObject\nobjectClass: organization\no: Example\ndc: example\n\n\
             dn: {PEOPLE_DN}\nobjectClass: organizationalUnit\nou: people\n\n\
             dn: {GROUPS_DN}\nobjectClass: organizationalUnit\nou: groups\n\n\
             dn: {READER_DN}\nobjectClass: organizationalRole\nobjectClass: simpleSecurityObject\ncn: reader\nuserPassword: {reader}\n\n\
             dn: {ALICE_DN}\nobjectClass: inetOrgPerson\nuid: alice\ncn: Alice Liddell\nsn: Liddell\nmail: alice@example.org\nuserPassword: {alice}\n\n\
             dn: uid=bob,{PEOPLE_DN}\nobjectClass: inetOrgPerson\nuid: bob\ncn: Bob Builder\nsn: Builder\nuserPassword: {bob}\n\n\
             dn: {DEVS_DN}\nobjectClass: groupOfNames\ncn: devs\nmember: {ALICE_DN}\n",
            reader = ssha(READER_PASSWORD),
            alice = ssha(ALICE_PASSWORD),
            bob = ssha(BOB_PASSWORD),
        );
        std::fs::write(d.join("data.ldif"), ldif).expect("ldif");
        run(Command::new(sbin("slapadd"))
            .arg("-f")
            .arg(&conf_path)
            .arg("-l")
            .arg(d.join("data.ldif")));
        let mut last_error = String::new();
        for _ in 0..5 {
            let port = free_port();
            let url = format!("ldap://127.0.0.1:{port}");
            let ldaps_url = pki.map(|_| format!("ldaps://127.0.0.1:{}", free_port()));
            let listen = match &ldaps_url {
                Some(s) => format!("{url}/ {s}/"),
                None => format!("{url}/"),
            };
            match spawn(&conf_path, &listen) {
                Ok((child, log)) => {
                    return Slapd {
                        dir,
                        url,
                        ldaps_url,
                        child,
                        log,
                    }
                }
                Err(e) => last_error = e,
            }
        }
        panic!("slapd did not start: {last_error}");
    }

    /// slapd's log lines so far.
    pub fn log(&self) -> Vec<String> {
        self.log.lock().expect("log lock").clone()
    }

    /// How many connections slapd has accepted so far.
    pub fn connections(&self) -> usize {
        self.log().iter().filter(|l| l.contains(" ACCEPT ")).count()
    }

    /// `ldap:` keys for Berth's `auth.berth` section (indented for it) for `url`, with
    /// the search account and groups; `extra` holds more keys (6-space indented).
    pub fn berth_config(&self, url: &str, extra: &str) -> String {
        format!(
            "    ldap:\n      url: {url}\n      basedn: {PEOPLE_DN}\n      searchfilter: (objectClass=inetOrgPerson)\n      searchdn: {READER_DN}\n      searchpassword: {READER_PASSWORD}\n      groupbasedn: {GROUPS_DN}\n      timeout: 5s\n{extra}"
        )
    }
}

/// Start slapd in the foreground (`-d stats`: it does not fork, and logs to stderr);
/// wait until it says it is serving, or why it is not.
fn spawn(conf: &Path, listen: &str) -> Result<(Child, Log), String> {
    let mut child = Command::new(sbin("slapd"))
        .arg("-f")
        .arg(conf)
        .args(["-h", listen, "-d", "stats"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run slapd: {e}"))?;
    let stderr = child.stderr.take().expect("stderr");
    let log: Log = Arc::new(Mutex::new(Vec::new()));
    let sink = log.clone();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut tx = Some(tx);
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if line.contains("slapd starting") {
                if let Some(tx) = tx.take() {
                    let _ = tx.send(());
                }
            }
            eprintln!("[slapd] {line}");
            sink.lock().expect("log lock").push(line);
        }
    });
    match rx.recv_timeout(Duration::from_secs(20)) {
        Ok(()) => Ok((child, log)),
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            Err(log.lock().expect("log lock").join("\n"))
        }
    }
}
