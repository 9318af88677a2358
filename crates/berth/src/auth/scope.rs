//! Access scopes of Docker's token authentication: `repository:team/app:pull,push`,
//! `registry:catalog:*`. What a request needs, what a token request asks for, and what
//! a token grants are all lists of [`Scope`]s; [`covers`] answers whether granted scopes
//! hold a wanted one.

use std::collections::BTreeSet;
use std::fmt;

/// One resource and the actions on it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Scope {
    /// `repository` or `registry` (others parse, and are never granted by Berth).
    #[serde(rename = "type")]
    pub kind: String,
    /// A repository name, or `catalog`.
    pub name: String,
    /// `pull`, `push`, `delete`, `*`; kept sorted and unique.
    pub actions: Vec<String>,
}

impl Scope {
    pub fn new<'a>(kind: &str, name: &str, actions: impl IntoIterator<Item = &'a str>) -> Scope {
        let set: BTreeSet<String> = actions.into_iter().map(str::to_string).collect();
        Scope {
            kind: kind.to_string(),
            name: name.to_string(),
            actions: set.into_iter().collect(),
        }
    }

    pub fn repository<'a>(name: &str, actions: impl IntoIterator<Item = &'a str>) -> Scope {
        Scope::new("repository", name, actions)
    }

    pub fn catalog() -> Scope {
        Scope::new("registry", "catalog", ["*"])
    }

    /// Parse one scope as clients send it: `type[(class)]:name:action[,action...]`.
    /// The name may itself hold `:` (a registry with a port in some clients' scopes), so
    /// the type ends at the first `:` and the actions start after the last. A class
    /// (`repository(plugin)`) is dropped: Berth grants the same whatever the class.
    pub fn parse(text: &str) -> Option<Scope> {
        let (kind, rest) = text.split_once(':')?;
        let (name, actions) = rest.rsplit_once(':')?;
        let kind = kind.split_once('(').map_or(kind, |(k, _)| k);
        if kind.is_empty() || name.is_empty() {
            return None;
        }
        let actions: Vec<&str> = actions
            .split(',')
            .map(str::trim)
            .filter(|a| !a.is_empty())
            .collect();
        Some(Scope::new(kind, name, actions))
    }

    pub fn allows(&self, action: &str) -> bool {
        self.actions.iter().any(|a| a == action || a == "*")
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.kind, self.name, self.actions.join(","))
    }
}

/// Whether `granted` allows every action of `wanted`.
pub fn covers(granted: &[Scope], wanted: &Scope) -> bool {
    wanted.actions.iter().all(|action| {
        granted
            .iter()
            .any(|g| g.kind == wanted.kind && g.name == wanted.name && g.allows(action))
    })
}

/// The part of `wanted` that `granted` allows (`None` when no action is).
pub fn intersect(granted: &[Scope], wanted: &Scope) -> Option<Scope> {
    let actions: Vec<&str> = wanted
        .actions
        .iter()
        .filter(|a| {
            granted
                .iter()
                .any(|g| g.kind == wanted.kind && g.name == wanted.name && g.allows(a))
        })
        .map(String::as_str)
        .collect();
    (!actions.is_empty()).then(|| Scope::new(&wanted.kind, &wanted.name, actions))
}

/// Merge scopes naming the same resource (a token request may repeat one).
pub fn merge(scopes: Vec<Scope>) -> Vec<Scope> {
    let mut out: Vec<Scope> = Vec::new();
    for s in scopes {
        match out
            .iter_mut()
            .find(|o| o.kind == s.kind && o.name == s.name)
        {
            Some(o) => {
                let set: BTreeSet<String> = o.actions.drain(..).chain(s.actions).collect();
                o.actions = set.into_iter().collect();
            }
            None => out.push(s),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_clients_send() {
        let s = Scope::parse("repository:team/app:pull,push").expect("scope");
        assert_eq!(s, Scope::repository("team/app", ["push", "pull"]));
        assert_eq!(s.to_string(), "repository:team/app:pull,push");
        let s = Scope::parse("repository(plugin):a/b:pull").expect("class");
        assert_eq!(s.kind, "repository");
        let s = Scope::parse("registry:catalog:*").expect("catalog");
        assert_eq!(s, Scope::catalog());
        let s = Scope::parse("repository:localhost:5000/a/b:pull").expect("port");
        assert_eq!(s.name, "localhost:5000/a/b");
        let s = Scope::parse("repository:a/b:").expect("no actions");
        assert!(s.actions.is_empty());
        for bad in [
            "",
            "repository",
            "repository:a",
            ":a:pull",
            "repository::pull",
        ] {
            assert_eq!(Scope::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn covers_needs_every_action() {
        let granted = vec![
            Scope::repository("a/b", ["pull"]),
            Scope::repository("c/d", ["*"]),
        ];
        assert!(covers(&granted, &Scope::repository("a/b", ["pull"])));
        assert!(!covers(
            &granted,
            &Scope::repository("a/b", ["pull", "push"])
        ));
        assert!(covers(
            &granted,
            &Scope::repository("c/d", ["delete", "push"])
        ));
        assert!(!covers(&granted, &Scope::repository("a/bc", ["pull"])));
        assert!(!covers(&granted, &Scope::new("registry", "a/b", ["pull"])));
    }

    #[test]
    fn merges_repeated_resources() {
        let m = merge(vec![
            Scope::repository("a/b", ["pull"]),
            Scope::catalog(),
            Scope::repository("a/b", ["push", "pull"]),
        ]);
        assert_eq!(
            m,
            vec![Scope::repository("a/b", ["pull", "push"]), Scope::catalog()]
        );
    }
}
