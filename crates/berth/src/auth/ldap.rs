//! Logins against an LDAP directory (`auth.berth.ldap`), with the `ldap3` client over
//! rustls (ring): bind with the search account (or none: anonymous), find the user by
//! `(&<searchfilter>(<uid>=<name>))` with the name escaped as RFC 4515 asks, bind as
//! the entry found with the password (an empty password is refused before anything is
//! sent: many servers take an empty password as an anonymous bind and answer success),
//! then find the user's groups (`groupfilter` entries under `groupbasedn` whose
//! member attribute names the user's DN).
//!
//! One connection per exchange, each bounded in time as a whole, ended with it:
//! successful logins are remembered for [`LOGIN_TTL`] keyed on a keyed hash of name and
//! password (clients send Basic credentials with every request), and users' groups for
//! the same time by name (the lookup of a token's subject). Failures are never
//! remembered. Knows nothing of HTTP, of the metadata database or of configuration
//! files: the caller hands in plain [`LdapSettings`].

use ldap3::{Ldap, LdapConnAsync, LdapConnSettings, Scope, SearchEntry, SearchOptions};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use sha2::Digest as _;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a successful login (and a user's groups) is trusted without asking the
/// directory again: the most a changed password or group membership lags behind.
pub const LOGIN_TTL: Duration = Duration::from_secs(60);

/// Remembered logins and lookups at most (the stale ones are dropped first).
const MAX_CACHED: usize = 4096;

/// What the access layer needs of `auth.berth.ldap`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LdapSettings {
    /// `ldap://host:port` or `ldaps://host:port`.
    pub url: String,
    /// Upgrade an `ldap://` connection with StartTLS.
    pub starttls: bool,
    /// Accept any certificate (tests only).
    pub skip_verify: bool,
    /// PEM certificates the server's must chain to; `None`: the system's trust store.
    pub ca_pem: Option<String>,
    pub base_dn: String,
    pub search_filter: String,
    /// The attribute holding login names.
    pub uid_attribute: String,
    /// The search account; `None`: anonymous searches.
    pub search_dn: Option<String>,
    pub search_password: Option<String>,
    /// Where groups are; `None`: no groups.
    pub group_base_dn: Option<String>,
    pub group_filter: String,
    pub group_member_attribute: String,
    /// The bound of one exchange with the directory.
    pub timeout: Duration,
}

/// A user the directory vouched for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectoryUser {
    pub dn: String,
    /// The login name as the directory spells it (the matching value of the uid
    /// attribute; the name given when none matches exactly but for case).
    pub username: String,
    /// `mail`, empty when absent.
    pub email: String,
    /// `cn`, empty when absent.
    pub realname: String,
    /// The DNs of the user's groups, as [`normalize_dn`] writes them.
    pub groups: Vec<String>,
}

/// Why a login did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum LdapError {
    /// The credentials prove nothing (unknown or ambiguous name, wrong or empty
    /// password): for the log; the client only learns it was not authenticated.
    #[error("{0}")]
    Refused(String),
    /// The directory could not answer (unreachable, timed out, TLS failed, the search
    /// account refused): not the client's fault.
    #[error("{0}")]
    Unavailable(String),
}

type Result<T> = std::result::Result<T, LdapError>;

/// The directory of `auth.berth.ldap`, with its caches.
pub struct Directory {
    settings: LdapSettings,
    /// The full search filter with `{}` where the escaped name goes.
    user_filter: (String, String),
    tls: Option<Arc<rustls::ClientConfig>>,
    secret: [u8; 32],
    logins: Mutex<HashMap<[u8; 32], (Instant, DirectoryUser)>>,
    /// By lower-cased login name; `None`: not in the directory.
    lookups: Mutex<HashMap<String, (Instant, Option<DirectoryUser>)>>,
}

impl std::fmt::Debug for Directory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Directory")
            .field("url", &self.settings.url)
            .finish_non_exhaustive()
    }
}

/// `filter` in parentheses (`objectClass=person` is accepted for `(objectClass=person)`).
fn parenthesized(filter: &str) -> String {
    let f = filter.trim();
    if f.starts_with('(') {
        f.to_string()
    } else {
        format!("({f})")
    }
}

/// An attribute description as RFC 4512 has it: a name (letter, then letters, digits,
/// hyphens) or a numeric OID.
fn is_attribute(a: &str) -> bool {
    let name = a.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && a.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
    let oid = !a.is_empty()
        && a.split('.')
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    name || oid
}

/// Escape `value` for the value of an LDAP filter (RFC 4515, section 3): `*`, `(`,
/// `)`, `\` and NUL become `\2a`, `\28`, `\29`, `\5c` and `\00`, so a name can never
/// add a wildcard or a clause of its own (`*)(uid=*` matches only that literal text).
pub fn escape_filter_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '*' => out.push_str("\\2a"),
            '(' => out.push_str("\\28"),
            ')' => out.push_str("\\29"),
            '\\' => out.push_str("\\5c"),
            '\0' => out.push_str("\\00"),
            c => out.push(c),
        }
    }
    out
}

/// A DN in the form group memberships are stored and compared in: attribute types and
/// values lower-cased, no spaces around `,`, `+` and `=` (escaped characters kept), so
/// `CN=Devs, ou=Groups,dc=example,dc=org` is `cn=devs,ou=groups,dc=example,dc=org`.
/// Directories compare these values without case; a stored membership must match
/// whatever spelling the directory returns.
pub fn normalize_dn(dn: &str) -> String {
    let mut out = String::with_capacity(dn.len());
    let mut chars = dn.trim().chars();
    let mut after_separator = false;
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                out.push('\\');
                if let Some(next) = chars.next() {
                    out.extend(next.to_lowercase());
                }
                after_separator = false;
            }
            ',' | '+' | '=' => {
                while out.ends_with(' ') && !out.ends_with("\\ ") {
                    out.pop();
                }
                out.push(c);
                after_separator = true;
            }
            ' ' if after_separator => {}
            c => {
                out.extend(c.to_lowercase());
                after_separator = false;
            }
        }
    }
    out
}

impl Directory {
    /// Check the settings (filters, attribute names, certificates) and set up; nothing
    /// is sent until the first login.
    pub fn new(settings: LdapSettings) -> std::result::Result<Directory, String> {
        for (key, attr) in [
            ("uid", &settings.uid_attribute),
            ("groupmemberattribute", &settings.group_member_attribute),
        ] {
            if !is_attribute(attr) {
                return Err(format!(
                    "{key}: {attr:?} is not an attribute name (letters, digits and '-', starting with a letter)"
                ));
            }
        }
        let prefix = format!(
            "(&{}({}=",
            parenthesized(&settings.search_filter),
            settings.uid_attribute
        );
        let user_filter = (prefix, "))".to_string());
        for (key, filter) in [
            (
                "searchfilter",
                format!("{}alice{}", user_filter.0, user_filter.1),
            ),
            (
                "groupfilter",
                group_filter(&settings, "uid=alice,dc=example,dc=org"),
            ),
        ] {
            if ldap3::parse_filter(&filter).is_err() {
                return Err(format!("{key}: {filter:?} is not a valid LDAP filter (RFC 4515), e.g. (objectClass=person)"));
            }
        }
        if settings.base_dn.trim().is_empty() {
            return Err("basedn must name where users are".into());
        }
        let tls = if settings.url.starts_with("ldaps://") || settings.starttls {
            Some(tls_config(&settings)?)
        } else {
            None
        };
        let mut secret = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut secret);
        Ok(Directory {
            settings,
            user_filter,
            tls,
            secret,
            logins: Mutex::new(HashMap::new()),
            lookups: Mutex::new(HashMap::new()),
        })
    }

    pub fn settings(&self) -> &LdapSettings {
        &self.settings
    }

    fn login_key(&self, name: &str, password: &str) -> [u8; 32] {
        let mut h = sha2::Sha256::new();
        h.update(self.secret);
        for part in [name, password] {
            h.update((part.len() as u64).to_be_bytes());
            h.update(part.as_bytes());
        }
        h.finalize().into()
    }

    /// Check `name` and `password` with the directory (or the memory of a recent
    /// success) and return the user with their groups.
    pub async fn login(&self, name: &str, password: &str) -> Result<DirectoryUser> {
        if password.is_empty() {
            return Err(LdapError::Refused(
                "an empty password is never sent to the directory (most servers take it for an anonymous bind)".into(),
            ));
        }
        if name.is_empty() || name.len() > 256 || name.contains('\0') {
            return Err(LdapError::Refused(
                "not a name the directory is asked about".into(),
            ));
        }
        let key = self.login_key(name, password);
        if let Some((at, user)) = lock(&self.logins).get(&key) {
            if at.elapsed() < LOGIN_TTL {
                return Ok(user.clone());
            }
        }
        let user = self
            .bounded(async {
                let mut s = self.connect().await?;
                s.bind_search().await?;
                let mut entry = s.find_user(name).await?.ok_or_else(|| {
                    LdapError::Refused(format!(
                        "no entry under {} matches {}",
                        self.settings.base_dn,
                        self.filter_for(name)
                    ))
                })?;
                s.bind_user(&entry.dn, password).await?;
                if self.settings.group_base_dn.is_some() {
                    // The user may not read groups: search them as the search account.
                    s.bind_search_again().await?;
                    entry.groups = s.groups_of(&entry.dn).await?;
                }
                s.close().await;
                Ok(entry)
            })
            .await?;
        remember(&self.logins, key, user.clone());
        remember(
            &self.lookups,
            user.username.to_lowercase(),
            Some(user.clone()),
        );
        Ok(user)
    }

    /// The directory's entry (with groups) of the user called `name`, without their
    /// password: for a token's subject. `None` when the directory has no such user now.
    pub async fn lookup(&self, name: &str) -> Result<Option<DirectoryUser>> {
        let key = name.to_lowercase();
        if let Some((at, found)) = lock(&self.lookups).get(&key) {
            if at.elapsed() < LOGIN_TTL {
                return Ok(found.clone());
            }
        }
        let found = self
            .bounded(async {
                let mut s = self.connect().await?;
                s.bind_search().await?;
                let Some(mut entry) = s.find_user(name).await? else {
                    s.close().await;
                    return Ok(None);
                };
                if self.settings.group_base_dn.is_some() {
                    entry.groups = s.groups_of(&entry.dn).await?;
                }
                s.close().await;
                Ok(Some(entry))
            })
            .await?;
        remember(&self.lookups, key, found.clone());
        Ok(found)
    }

    fn filter_for(&self, name: &str) -> String {
        format!(
            "{}{}{}",
            self.user_filter.0,
            escape_filter_value(name),
            self.user_filter.1
        )
    }

    /// `exchange`, cut off at the configured timeout.
    async fn bounded<T>(
        &self,
        exchange: impl std::future::Future<Output = Result<T>>,
    ) -> Result<T> {
        match tokio::time::timeout(self.settings.timeout, exchange).await {
            Ok(r) => r,
            Err(_) => Err(LdapError::Unavailable(format!(
                "{} did not answer within {:?} (auth.berth.ldap.timeout)",
                self.settings.url, self.settings.timeout
            ))),
        }
    }

    async fn connect(&self) -> Result<Session<'_>> {
        let url = &self.settings.url;
        let mut conn_settings = LdapConnSettings::new()
            .set_conn_timeout(self.settings.timeout)
            .set_starttls(self.settings.starttls);
        if let Some(tls) = &self.tls {
            conn_settings = conn_settings.set_config(tls.clone());
        }
        let (conn, ldap) = LdapConnAsync::with_settings(conn_settings, url)
            .await
            .map_err(|e| {
                LdapError::Unavailable(format!(
                    "cannot connect to {url}{}: {e}",
                    if self.settings.starttls {
                        " (with StartTLS)"
                    } else {
                        ""
                    }
                ))
            })?;
        // Every exchange is bounded as a whole by `bounded`.
        let driver = tokio::spawn(async move {
            if let Err(e) = conn.drive().await {
                tracing::debug!("LDAP connection ended: {e}");
            }
        });
        Ok(Session {
            dir: self,
            ldap,
            driver,
        })
    }
}

/// The full group filter for a member DN.
fn group_filter(settings: &LdapSettings, member_dn: &str) -> String {
    format!(
        "(&{}({}={}))",
        parenthesized(&settings.group_filter),
        settings.group_member_attribute,
        escape_filter_value(member_dn)
    )
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn remember<K: std::hash::Hash + Eq, V>(cache: &Mutex<HashMap<K, (Instant, V)>>, key: K, v: V) {
    let mut c = lock(cache);
    if c.len() >= MAX_CACHED {
        c.retain(|_, (at, _)| at.elapsed() < LOGIN_TTL);
        if c.len() >= MAX_CACHED {
            c.clear();
        }
    }
    c.insert(key, (Instant::now(), v));
}

/// One connection, driven by a task of its own that ends with it.
struct Session<'a> {
    dir: &'a Directory,
    ldap: Ldap,
    driver: tokio::task::JoinHandle<()>,
}

impl Drop for Session<'_> {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

/// A result code's meaning, for messages.
fn rc_text(rc: u32, text: &str) -> String {
    let name = match rc {
        1 => "operationsError",
        2 => "protocolError",
        3 => "timeLimitExceeded",
        4 => "sizeLimitExceeded",
        8 => "strongerAuthRequired",
        13 => "confidentialityRequired",
        32 => "noSuchObject",
        34 => "invalidDNSyntax",
        48 => "inappropriateAuthentication",
        49 => "invalidCredentials",
        50 => "insufficientAccessRights",
        51 => "busy",
        52 => "unavailable",
        53 => "unwillingToPerform",
        _ => "",
    };
    let mut out = format!("result {rc}");
    if !name.is_empty() {
        out.push_str(&format!(" {name}"));
    }
    if !text.is_empty() {
        out.push_str(&format!(": {text}"));
    }
    out
}

impl Session<'_> {
    fn failed(&self, what: &str, e: ldap3::LdapError) -> LdapError {
        LdapError::Unavailable(format!("{} {what}: {e}", self.dir.settings.url))
    }

    /// Bind as the search account, if there is one (else stay anonymous).
    async fn bind_search(&mut self) -> Result<()> {
        let s = &self.dir.settings;
        let (Some(dn), Some(pw)) = (&s.search_dn, &s.search_password) else {
            return Ok(());
        };
        let r = self
            .ldap
            .simple_bind(dn, pw)
            .await
            .map_err(|e| self.failed("bind as the search account", e))?;
        if r.rc != 0 {
            return Err(LdapError::Unavailable(format!(
                "{} refused the bind as the search account {dn} ({}): check auth.berth.ldap.searchdn and searchpassword",
                s.url,
                rc_text(r.rc, &r.text)
            )));
        }
        Ok(())
    }

    /// Back to the search account after a user's bind (an anonymous bind when there is
    /// none: RFC 4513's empty name and password, never a user's name).
    async fn bind_search_again(&mut self) -> Result<()> {
        if self.dir.settings.search_dn.is_some() {
            return self.bind_search().await;
        }
        let r = self
            .ldap
            .simple_bind("", "")
            .await
            .map_err(|e| self.failed("anonymous bind", e))?;
        if r.rc != 0 {
            return Err(LdapError::Unavailable(format!(
                "{} refused an anonymous bind to search groups ({}): set auth.berth.ldap.searchdn",
                self.dir.settings.url,
                rc_text(r.rc, &r.text)
            )));
        }
        Ok(())
    }

    /// The one entry the user filter finds for `name`; `None` when none does.
    async fn find_user(&mut self, name: &str) -> Result<Option<DirectoryUser>> {
        let s = &self.dir.settings;
        let filter = self.dir.filter_for(name);
        let attrs = [s.uid_attribute.as_str(), "mail", "cn"];
        let r = self
            .ldap
            .with_search_options(
                SearchOptions::new()
                    .sizelimit(2)
                    .timelimit(s.timeout.as_secs().clamp(1, i32::MAX as u64) as i32),
            )
            .search(&s.base_dn, Scope::Subtree, &filter, attrs)
            .await
            .map_err(|e| self.failed("user search", e))?;
        let ldap3::SearchResult(entries, result) = r;
        match result.rc {
            0 => {}
            4 => {
                return Err(LdapError::Refused(format!(
                    "more than one entry under {} matches {filter}: refusing to guess (make auth.berth.ldap.searchfilter or uid select one entry per name)",
                    s.base_dn
                )))
            }
            rc => {
                return Err(LdapError::Unavailable(format!(
                    "{} refused the search for users under {} ({}): check auth.berth.ldap.basedn, searchfilter and the search account's rights",
                    s.url,
                    s.base_dn,
                    rc_text(rc, &result.text)
                )))
            }
        }
        let mut found: Vec<SearchEntry> = entries
            .into_iter()
            .filter(|e| !e.is_ref() && !e.is_intermediate())
            .filter_map(construct)
            .collect();
        if found.len() > 1 {
            return Err(LdapError::Refused(format!(
                "more than one entry under {} matches {filter}: refusing to guess",
                s.base_dn
            )));
        }
        let Some(entry) = found.pop() else {
            return Ok(None);
        };
        let first = |attr: &str| {
            attribute(&entry, attr)
                .and_then(|v| v.first().cloned())
                .unwrap_or_default()
        };
        let wanted = name.trim().to_lowercase();
        let username = attribute(&entry, &s.uid_attribute)
            .and_then(|vals| vals.iter().find(|v| v.trim().to_lowercase() == wanted))
            .map(|v| v.trim().to_string())
            .unwrap_or_else(|| name.to_string());
        Ok(Some(DirectoryUser {
            dn: entry.dn.clone(),
            username,
            email: first("mail"),
            realname: first("cn"),
            groups: Vec::new(),
        }))
    }

    /// Bind as `dn` with `password`: success proves the password.
    async fn bind_user(&mut self, dn: &str, password: &str) -> Result<()> {
        if dn.is_empty() || password.is_empty() {
            // Either would make it an anonymous or unauthenticated bind.
            return Err(LdapError::Refused(
                "refusing a bind without a DN or a password".into(),
            ));
        }
        let r = self
            .ldap
            .simple_bind(dn, password)
            .await
            .map_err(|e| self.failed("bind as the user", e))?;
        match r.rc {
            0 => Ok(()),
            48..=50 | 53 => Err(LdapError::Refused(format!(
                "the directory refused the bind as {dn} ({})",
                rc_text(r.rc, &r.text)
            ))),
            rc => Err(LdapError::Unavailable(format!(
                "{} failed the bind as {dn} ({})",
                self.dir.settings.url,
                rc_text(rc, &r.text)
            ))),
        }
    }

    /// The DNs of the groups naming `dn` as a member.
    async fn groups_of(&mut self, dn: &str) -> Result<Vec<String>> {
        let s = &self.dir.settings;
        let Some(base) = &s.group_base_dn else {
            return Ok(Vec::new());
        };
        let filter = group_filter(s, dn);
        let r = self
            .ldap
            .search(base, Scope::Subtree, &filter, ["1.1"])
            .await
            .map_err(|e| self.failed("group search", e))?;
        let ldap3::SearchResult(entries, result) = r;
        match result.rc {
            0 => {}
            4 => tracing::warn!(
                "the directory's size limit cut the groups of {dn} short: only the first {} count",
                entries.len()
            ),
            rc => {
                return Err(LdapError::Unavailable(format!(
                    "{} refused the search for groups under {base} ({}): check auth.berth.ldap.groupbasedn and groupfilter",
                    s.url,
                    rc_text(rc, &result.text)
                )))
            }
        }
        let mut groups: Vec<String> = entries
            .into_iter()
            .filter(|e| !e.is_ref() && !e.is_intermediate())
            .filter_map(construct)
            .map(|e| normalize_dn(&e.dn))
            .collect();
        groups.sort();
        groups.dedup();
        Ok(groups)
    }

    async fn close(mut self) {
        let _ = self.ldap.unbind().await;
    }
}

/// An entry's parts (`SearchEntry::construct` panics on a malformed entry: a broken
/// server must not take a request down with it).
fn construct(e: ldap3::ResultEntry) -> Option<SearchEntry> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| SearchEntry::construct(e))).ok()
}

/// The values of `attr` (attribute names compare without case).
fn attribute<'a>(entry: &'a SearchEntry, attr: &str) -> Option<&'a Vec<String>> {
    entry
        .attrs
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(attr))
        .map(|(_, v)| v)
}

/// The TLS client configuration: rustls with ring; the CA file's certificates, or the
/// system's, or none checked at all (`skipverify`).
fn tls_config(s: &LdapSettings) -> std::result::Result<Arc<rustls::ClientConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?;
    if s.skip_verify {
        return Ok(Arc::new(
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
                .with_no_client_auth(),
        ));
    }
    let mut roots = rustls::RootCertStore::empty();
    match &s.ca_pem {
        Some(pem) => {
            for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
                let cert = cert.map_err(|e| format!("cacert: not a PEM certificate file: {e}"))?;
                roots
                    .add(cert)
                    .map_err(|e| format!("cacert: a certificate rustls cannot use: {e}"))?;
            }
            if roots.is_empty() {
                return Err("cacert: the file holds no PEM certificate".into());
            }
        }
        None => {
            let native = rustls_native_certs::load_native_certs();
            for e in &native.errors {
                tracing::warn!("auth.berth.ldap: reading the system's CA certificates: {e}");
            }
            roots.add_parsable_certificates(native.certs);
            if roots.is_empty() {
                tracing::warn!("auth.berth.ldap: the system's trust store holds no CA certificate, so no LDAP server certificate will verify: set auth.berth.ldap.cacert");
            }
        }
    }
    Ok(Arc::new(
        builder.with_root_certificates(roots).with_no_client_auth(),
    ))
}

/// `skipverify`: any certificate is accepted (the handshake's signatures are still
/// checked, so the peer holds the key of the certificate it showed).
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(url: &str) -> LdapSettings {
        LdapSettings {
            url: url.into(),
            starttls: false,
            skip_verify: false,
            ca_pem: None,
            base_dn: "dc=example,dc=org".into(),
            search_filter: "(objectClass=person)".into(),
            uid_attribute: "uid".into(),
            search_dn: None,
            search_password: None,
            group_base_dn: None,
            group_filter: "(objectClass=groupOfNames)".into(),
            group_member_attribute: "member".into(),
            timeout: Duration::from_secs(5),
        }
    }

    #[test]
    fn filter_values_are_escaped() {
        assert_eq!(escape_filter_value("alice"), "alice");
        assert_eq!(escape_filter_value("*)(uid=*"), "\\2a\\29\\28uid=\\2a");
        assert_eq!(escape_filter_value("a\\b\0c"), "a\\5cb\\00c");
        assert_eq!(escape_filter_value("jürgen"), "jürgen");
        let d = Directory::new(settings("ldap://127.0.0.1:1")).expect("dir");
        assert_eq!(
            d.filter_for("*)(|(uid=*"),
            "(&(objectClass=person)(uid=\\2a\\29\\28|\\28uid=\\2a))"
        );
        // Whatever the name, the filter stays one well-formed clause.
        for name in ["*", ")(", "\\", "a)(objectClass=*", "x\0y"] {
            assert!(ldap3::parse_filter(d.filter_for(name)).is_ok(), "{name}");
        }
    }

    #[test]
    fn dns_normalize() {
        assert_eq!(
            normalize_dn("CN=Devs, OU=Groups,  dc=Example ,dc=org"),
            "cn=devs,ou=groups,dc=example,dc=org"
        );
        assert_eq!(
            normalize_dn("cn = A\\, B + uid=X,dc=org"),
            "cn=a\\, b+uid=x,dc=org"
        );
        assert_eq!(
            normalize_dn("cn=trailing\\ ,dc=org"),
            "cn=trailing\\ ,dc=org"
        );
    }

    #[test]
    fn settings_are_checked() {
        let bad = |f: &dyn Fn(&mut LdapSettings)| {
            let mut s = settings("ldap://127.0.0.1:1");
            f(&mut s);
            Directory::new(s).expect_err("refused")
        };
        assert!(bad(&|s| s.uid_attribute = "uid)(x".into()).contains("uid"));
        assert!(bad(&|s| s.search_filter = "(objectClass=person".into()).contains("searchfilter"));
        assert!(bad(&|s| s.group_filter = "((".into()).contains("groupfilter"));
        assert!(bad(&|s| s.group_member_attribute = "".into()).contains("groupmemberattribute"));
        assert!(bad(&|s| {
            s.url = "ldaps://h".into();
            s.ca_pem = Some("not pem".into());
        })
        .contains("cacert"));
        // A filter without parentheses is taken as one clause.
        let mut s = settings("ldap://127.0.0.1:1");
        s.search_filter = "objectClass=inetOrgPerson".into();
        s.uid_attribute = "sAMAccountName".into();
        let d = Directory::new(s).expect("ok");
        assert_eq!(
            d.filter_for("bob"),
            "(&(objectClass=inetOrgPerson)(sAMAccountName=bob))"
        );
        assert!(is_attribute("2.5.4.3") && !is_attribute("2..5") && !is_attribute("-a"));
    }

    #[tokio::test]
    async fn empty_passwords_are_never_sent() {
        // Nothing listens there: a connection attempt would be Unavailable.
        let d = Directory::new(settings("ldap://127.0.0.1:1")).expect("dir");
        assert!(matches!(
            d.login("alice", "").await,
            Err(LdapError::Refused(_))
        ));
        assert!(matches!(
            d.login("", "pw").await,
            Err(LdapError::Refused(_))
        ));
        match d.login("alice", "pw").await {
            Err(LdapError::Unavailable(why)) => {
                assert!(
                    why.contains("cannot connect to ldap://127.0.0.1:1"),
                    "{why}"
                )
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn a_silent_server_times_out() {
        // Accepts connections and never answers.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let held = tokio::spawn(async move {
            let mut conns = Vec::new();
            while let Ok((c, _)) = listener.accept().await {
                conns.push(c);
            }
        });
        let mut s = settings(&format!("ldap://{addr}"));
        s.search_dn = Some("cn=reader,dc=example,dc=org".into());
        s.search_password = Some("pw".into());
        s.timeout = Duration::from_millis(300);
        let d = Directory::new(s).expect("dir");
        let started = Instant::now();
        match d.login("alice", "pw").await {
            Err(LdapError::Unavailable(why)) => assert!(
                why.contains("did not answer within") || why.contains("timeout"),
                "{why}"
            ),
            other => panic!("{other:?}"),
        }
        assert!(started.elapsed() < Duration::from_secs(3));
        held.abort();
    }
}
