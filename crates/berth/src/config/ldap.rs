//! `auth.berth.ldap`: the directory Berth's users may log in through (URL, TLS, where
//! and how to find users and their groups). Produces plain values: the shape of the
//! URL and the settings that go together are checked here; the filters are checked by
//! the LDAP layer when the server starts. Knows nothing of LDAP libraries.

use super::yaml::Value;
use super::{bad, get, get_bool, get_str, parse_duration, ConfigError};
use std::path::PathBuf;
use std::time::Duration;

/// `auth.berth.ldap`.
#[derive(Debug, Clone, PartialEq)]
pub struct LdapConfig {
    /// `url`: `ldap://host[:port]` or `ldaps://host[:port]`.
    pub url: String,
    /// `starttls`: upgrade an `ldap://` connection with StartTLS (default false).
    pub starttls: bool,
    /// `skipverify`: accept any server certificate (default false; tests only).
    pub skip_verify: bool,
    /// `cacert`: PEM file of the CA certificates the server's certificate must chain
    /// to (default: the system's trust store).
    pub ca_cert: Option<PathBuf>,
    /// `basedn`: where users are searched (the whole subtree).
    pub base_dn: String,
    /// `searchfilter` (default `(objectClass=person)`).
    pub search_filter: String,
    /// `uid`: the attribute holding the login name (default `uid`).
    pub uid_attribute: String,
    /// `searchdn`: who Berth binds as to search (default: anonymous).
    pub search_dn: Option<String>,
    /// `searchpassword`: the password of `searchdn`.
    pub search_password: Option<String>,
    /// `groupbasedn`: where groups are searched; `None`: groups are not looked up.
    pub group_base_dn: Option<String>,
    /// `groupfilter` (default `(objectClass=groupOfNames)`).
    pub group_filter: String,
    /// `groupmemberattribute`: the group attribute naming member DNs (default `member`).
    pub group_member_attribute: String,
    /// `timeout`: how long one exchange with the directory (connect, binds, searches of
    /// one login) may take (default 5s).
    pub timeout: Duration,
}

/// `auth.berth.ldap`, when the section is there; `warnings` gets what is accepted but
/// unwise.
pub(super) fn read(
    tree: &Value,
    warnings: &mut Vec<String>,
) -> Result<Option<LdapConfig>, ConfigError> {
    const K: &str = "auth.berth.ldap";
    let Some(section) = get(tree, K) else {
        return Ok(None);
    };
    if !section.is_mapping() {
        return Err(bad(
            K,
            format!("must be a map of keys, e.g. `ldap: {{url: ldaps://ldap.example.org, basedn: \"ou=people,dc=example,dc=org\"}}`; got {}", section.describe()),
        ));
    }
    let text = |key: &str| -> Result<Option<String>, ConfigError> {
        Ok(get_str(tree, &format!("{K}.{key}"))?.filter(|s| !s.trim().is_empty()))
    };
    let need = |key: &str, example: &str| -> Result<String, ConfigError> {
        text(key)?.ok_or_else(|| {
            bad(
                &format!("{K}.{key}"),
                format!("must be set for LDAP logins, e.g. {example}"),
            )
        })
    };
    let flag = |key: &str| -> Result<bool, ConfigError> {
        Ok(get_bool(tree, &format!("{K}.{key}"))?.unwrap_or(false))
    };
    let url = need(
        "url",
        "ldaps://ldap.example.org or ldap://ldap.example.org:389",
    )?;
    let tls_url = check_url(&url).map_err(|why| bad(&format!("{K}.url"), why))?;
    let starttls = flag("starttls")?;
    if starttls && tls_url {
        return Err(bad(
            &format!("{K}.starttls"),
            "is for ldap:// URLs: an ldaps:// connection is TLS from the start; remove starttls or use ldap://",
        ));
    }
    if !tls_url && !starttls {
        warnings.push(format!(
            "{K}.url is {url} without starttls: passwords go to the directory in clear text; use ldaps:// or starttls: true"
        ));
    }
    let search_dn = text("searchdn")?;
    let search_password = get_str(tree, &format!("{K}.searchpassword"))?.filter(|s| !s.is_empty());
    match (&search_dn, &search_password) {
        (Some(_), None) => {
            return Err(bad(
                &format!("{K}.searchpassword"),
                "must be set with searchdn (a bind without a password is anonymous on most servers): set it, or remove searchdn to search anonymously",
            ))
        }
        (None, Some(_)) => {
            return Err(bad(
                &format!("{K}.searchdn"),
                "must be set with searchpassword: whose password is it?",
            ))
        }
        _ => {}
    }
    let timeout = match text("timeout")? {
        None => Duration::from_secs(5),
        Some(s) => parse_duration(&s).filter(|d| !d.is_zero()).ok_or_else(|| {
            bad(
                &format!("{K}.timeout"),
                format!("{s:?} is not a positive duration like 5s"),
            )
        })?,
    };
    Ok(Some(LdapConfig {
        url,
        starttls,
        skip_verify: flag("skipverify")?,
        ca_cert: text("cacert")?.map(PathBuf::from),
        base_dn: need("basedn", "\"ou=people,dc=example,dc=org\"")?,
        search_filter: text("searchfilter")?.unwrap_or_else(|| "(objectClass=person)".into()),
        uid_attribute: text("uid")?.unwrap_or_else(|| "uid".into()),
        search_dn,
        search_password,
        group_base_dn: text("groupbasedn")?,
        group_filter: text("groupfilter")?.unwrap_or_else(|| "(objectClass=groupOfNames)".into()),
        group_member_attribute: text("groupmemberattribute")?.unwrap_or_else(|| "member".into()),
        timeout,
    }))
}

/// Whether `url` is `ldaps://` (TLS) rather than `ldap://`; an error says what is wrong.
fn check_url(url: &str) -> Result<bool, String> {
    let (tls, rest) = if let Some(r) = url.strip_prefix("ldaps://") {
        (true, r)
    } else if let Some(r) = url.strip_prefix("ldap://") {
        (false, r)
    } else {
        return Err(format!(
            "{url:?} is not an LDAP URL: use ldap://host[:port] or ldaps://host[:port]"
        ));
    };
    let host_port = rest.strip_suffix('/').unwrap_or(rest);
    if host_port.is_empty() || host_port.contains(['/', '?', '#', '@', ' ']) {
        return Err(format!(
            "{url:?} must name a host (and port) only, like ldaps://ldap.example.org:636: the base DN and filters are keys of their own"
        ));
    }
    // `host`, `host:port`, `[v6]` or `[v6]:port`.
    let (host, port) = match host_port.strip_prefix('[') {
        Some(v6) => match v6.split_once(']') {
            Some((h, "")) => (h, None),
            Some((h, p)) => (h, Some(p.strip_prefix(':').unwrap_or("x"))),
            None => ("", None),
        },
        None => match host_port.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (host_port, None),
        },
    };
    if host.is_empty() {
        return Err(format!("{url:?} has no host"));
    }
    if port.is_some_and(|p| p.parse::<u16>().map_or(true, |p| p == 0)) {
        return Err(format!("{url:?} has no valid port after ':'"));
    }
    Ok(tls)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_yaml(yaml: &str) -> (Result<Option<LdapConfig>, ConfigError>, Vec<String>) {
        let tree = super::super::yaml::parse(yaml).expect("yaml");
        let mut w = Vec::new();
        (read(&tree, &mut w), w)
    }

    fn ldap(keys: &str) -> (Result<Option<LdapConfig>, ConfigError>, Vec<String>) {
        read_yaml(&format!("auth:\n  berth:\n    ldap:\n{keys}"))
    }

    #[test]
    fn defaults_and_every_key() {
        let (c, w) = ldap("      url: ldaps://ldap.example.org\n      basedn: dc=example,dc=org\n");
        let c = c.expect("ok").expect("some");
        assert!(w.is_empty(), "{w:?}");
        assert_eq!(c.search_filter, "(objectClass=person)");
        assert_eq!(c.uid_attribute, "uid");
        assert_eq!(c.group_filter, "(objectClass=groupOfNames)");
        assert_eq!(c.group_member_attribute, "member");
        assert_eq!(c.timeout, Duration::from_secs(5));
        assert_eq!(c.search_dn, None);
        assert_eq!(c.group_base_dn, None);
        assert!(!c.starttls && !c.skip_verify && c.ca_cert.is_none());

        let (c, w) = ldap(concat!(
            "      url: ldap://127.0.0.1:3389/\n",
            "      starttls: true\n      skipverify: yes\n      cacert: /ca.pem\n",
            "      basedn: ou=people,dc=example,dc=org\n",
            "      searchfilter: (objectClass=inetOrgPerson)\n      uid: sAMAccountName\n",
            "      searchdn: cn=reader,dc=example,dc=org\n      searchpassword: secret\n",
            "      groupbasedn: ou=groups,dc=example,dc=org\n      groupfilter: (objectClass=groupOfUniqueNames)\n",
            "      groupmemberattribute: uniqueMember\n      timeout: 2s\n",
        ));
        let c = c.expect("ok").expect("some");
        assert!(w.is_empty(), "{w:?}");
        assert_eq!(
            c,
            LdapConfig {
                url: "ldap://127.0.0.1:3389/".into(),
                starttls: true,
                skip_verify: true,
                ca_cert: Some("/ca.pem".into()),
                base_dn: "ou=people,dc=example,dc=org".into(),
                search_filter: "(objectClass=inetOrgPerson)".into(),
                uid_attribute: "sAMAccountName".into(),
                search_dn: Some("cn=reader,dc=example,dc=org".into()),
                search_password: Some("secret".into()),
                group_base_dn: Some("ou=groups,dc=example,dc=org".into()),
                group_filter: "(objectClass=groupOfUniqueNames)".into(),
                group_member_attribute: "uniqueMember".into(),
                timeout: Duration::from_secs(2),
            }
        );
        let (c, _) = read_yaml("auth:\n  berth:\n    adminpassword: x\n");
        assert_eq!(c.expect("ok"), None);
    }

    #[test]
    fn refusals_name_the_key() {
        for (keys, key) in [
            ("      basedn: dc=x\n", "auth.berth.ldap.url"),
            ("      url: ldaps://h\n", "auth.berth.ldap.basedn"),
            (
                "      url: http://h\n      basedn: dc=x\n",
                "auth.berth.ldap.url",
            ),
            (
                "      url: ldap://h/dc=x\n      basedn: dc=x\n",
                "auth.berth.ldap.url",
            ),
            (
                "      url: ldap://h:0\n      basedn: dc=x\n",
                "auth.berth.ldap.url",
            ),
            (
                "      url: ldap://h:x\n      basedn: dc=x\n",
                "auth.berth.ldap.url",
            ),
            (
                "      url: ldaps://h\n      starttls: true\n      basedn: dc=x\n",
                "auth.berth.ldap.starttls",
            ),
            (
                "      url: ldaps://h\n      basedn: dc=x\n      searchdn: cn=r\n",
                "auth.berth.ldap.searchpassword",
            ),
            (
                "      url: ldaps://h\n      basedn: dc=x\n      searchpassword: p\n",
                "auth.berth.ldap.searchdn",
            ),
            (
                "      url: ldaps://h\n      basedn: dc=x\n      timeout: 0s\n",
                "auth.berth.ldap.timeout",
            ),
            (
                "      url: ldaps://h\n      basedn: dc=x\n      starttls: maybe\n",
                "auth.berth.ldap.starttls",
            ),
        ] {
            let (c, _) = ldap(keys);
            let e = c.expect_err(keys);
            assert!(e.to_string().contains(key), "{keys}: {e}");
        }
        let (c, _) = read_yaml("auth:\n  berth:\n    ldap: ldaps://h\n");
        assert!(c.is_err());
    }

    #[test]
    fn clear_text_is_a_warning() {
        let (c, w) = ldap("      url: ldap://ldap.example.org\n      basedn: dc=x\n");
        assert!(c.expect("ok").is_some());
        assert!(w[0].contains("clear text"), "{w:?}");
        let (_, w) =
            ldap("      url: \"ldap://[::1]:389\"\n      starttls: true\n      basedn: dc=x\n");
        assert!(w.is_empty(), "{w:?}");
    }
}
