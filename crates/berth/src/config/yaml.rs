//! The configuration's YAML as a tree of text. Every scalar keeps the text it was written
//! with and whether it was quoted, so a key whose type is a string gets exactly what the
//! operator wrote (`0x1F`, `1.10`, `True`), as Go's yaml.v2 gives Distribution; the typed
//! getters in `config` read bools, sizes, durations and counts from that text per key.
//!
//! Built from saphyr-parser's event stream: anchors and aliases are resolved, a key given
//! twice in one map is an error (as it was with serde_yaml), `<<` is an ordinary key, and
//! errors carry the line and column. Knows nothing of what the keys mean.

use saphyr_parser::{Event, Parser, ScalarStyle, Span};

/// A node of the configuration tree.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// An empty value, `~` or `null` (unquoted): the same as an absent key.
    Null,
    Scalar(Scalar),
    Sequence(Vec<Value>),
    Mapping(Mapping),
}

/// A scalar as written.
#[derive(Debug, Clone, PartialEq)]
pub struct Scalar {
    /// The text after YAML's quoting and folding rules, nothing else: `0x1F` stays `0x1F`.
    pub text: String,
    /// Quoted (single, double), a block scalar (`|`, `>`) or tagged `!!str`: always a
    /// string, never a number or a boolean.
    pub quoted: bool,
}

/// A map with string keys, in file order.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Mapping {
    entries: Vec<(String, Value)>,
}

impl Mapping {
    pub fn new() -> Mapping {
        Mapping::default()
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.entries.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    pub fn contains_key(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    /// Set `key` to `value`, in place when the key exists, else at the end.
    pub fn insert(&mut self, key: String, value: Value) {
        *self.entry(key) = value;
    }

    /// The value of `key`, inserted as `Null` at the end when absent.
    pub fn entry(&mut self, key: String) -> &mut Value {
        let i = match self.entries.iter().position(|(k, _)| *k == key) {
            Some(i) => i,
            None => {
                self.entries.push((key, Value::Null));
                self.entries.len() - 1
            }
        };
        &mut self.entries[i].1
    }

    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|(k, _)| k.as_str())
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v))
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

impl Value {
    /// A plain (unquoted) scalar with this text.
    pub fn plain(text: impl Into<String>) -> Value {
        Value::Scalar(Scalar {
            text: text.into(),
            quoted: false,
        })
    }

    pub fn as_mapping(&self) -> Option<&Mapping> {
        match self {
            Value::Mapping(m) => Some(m),
            _ => None,
        }
    }

    pub fn as_sequence(&self) -> Option<&[Value]> {
        match self {
            Value::Sequence(s) => Some(s),
            _ => None,
        }
    }

    /// The text of any scalar.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Scalar(s) => Some(&s.text),
            _ => None,
        }
    }

    /// The text of an unquoted scalar (the only kind YAML reads as a number or boolean).
    pub fn as_plain(&self) -> Option<&str> {
        match self {
            Value::Scalar(s) if !s.quoted => Some(&s.text),
            _ => None,
        }
    }

    pub fn is_mapping(&self) -> bool {
        matches!(self, Value::Mapping(_))
    }

    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }

    /// `key` of a map (`None` for anything else).
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.as_mapping()?.get(key)
    }

    /// What this is, for messages: `a list`, `the value "true"`.
    pub fn describe(&self) -> String {
        match self {
            Value::Null => "nothing".into(),
            Value::Scalar(s) => format!("the value {:?}", s.text),
            Value::Sequence(_) => "a list".into(),
            Value::Mapping(_) => "a map".into(),
        }
    }

    /// Nodes in this tree (to bound what aliases can multiply).
    fn size(&self) -> usize {
        match self {
            Value::Null | Value::Scalar(_) => 1,
            Value::Sequence(s) => 1 + s.iter().map(Value::size).sum::<usize>(),
            Value::Mapping(m) => 1 + m.entries.iter().map(|(_, v)| v.size()).sum::<usize>(),
        }
    }
}

/// A YAML syntax or structure error, with its position (line and column from 1).
#[derive(Debug, thiserror::Error)]
#[error("{message} at line {line} column {column}")]
pub struct YamlError {
    pub message: String,
    pub line: usize,
    pub column: usize,
}

impl YamlError {
    fn at(span: Span, message: impl Into<String>) -> YamlError {
        YamlError {
            message: message.into(),
            line: span.start.line(),
            column: span.start.col() + 1,
        }
    }
}

/// Most nodes aliases may copy in one document (a "billion laughs" file stops here).
const MAX_ALIAS_NODES: usize = 100_000;

enum Frame {
    Sequence(Vec<Value>, usize),
    /// The map, its anchor, and a key waiting for its value.
    Mapping(Mapping, usize, Option<String>),
}

/// Parse one YAML document (an empty text is `Null`).
pub fn parse(text: &str) -> Result<Value, YamlError> {
    let mut stack: Vec<Frame> = Vec::new();
    let mut anchors: std::collections::HashMap<usize, Value> = Default::default();
    let mut root: Option<Value> = None;
    let mut documents = 0;
    let mut copied = 0usize;
    for item in Parser::new_from_str(text) {
        let (event, span) = item.map_err(|e| YamlError {
            message: e.info().to_string(),
            line: e.marker().line(),
            column: e.marker().col() + 1,
        })?;
        let (value, anchor) = match event {
            Event::DocumentStart(_) => {
                documents += 1;
                if documents > 1 {
                    return Err(YamlError::at(
                        span,
                        "a second YAML document: the configuration must be one document",
                    ));
                }
                continue;
            }
            Event::SequenceStart(anchor, _) => {
                stack.push(Frame::Sequence(Vec::new(), anchor));
                continue;
            }
            Event::MappingStart(anchor, _) => {
                stack.push(Frame::Mapping(Mapping::new(), anchor, None));
                continue;
            }
            Event::SequenceEnd => match stack.pop() {
                Some(Frame::Sequence(items, anchor)) => (Value::Sequence(items), anchor),
                _ => return Err(YamlError::at(span, "unbalanced sequence")),
            },
            Event::MappingEnd => match stack.pop() {
                Some(Frame::Mapping(map, anchor, None)) => (Value::Mapping(map), anchor),
                _ => return Err(YamlError::at(span, "unbalanced mapping")),
            },
            Event::Scalar(text, style, anchor, tag) => {
                let tagged_str = tag
                    .as_ref()
                    .is_some_and(|t| t.is_yaml_core_schema() && t.suffix == "str");
                let quoted = tagged_str || !matches!(style, ScalarStyle::Plain);
                let null = !quoted && matches!(&*text, "" | "~" | "null" | "Null" | "NULL");
                let value = if null {
                    Value::Null
                } else {
                    Value::Scalar(Scalar {
                        text: text.into_owned(),
                        quoted,
                    })
                };
                (value, anchor)
            }
            Event::Alias(id) => {
                let value = anchors
                    .get(&id)
                    .cloned()
                    .ok_or_else(|| YamlError::at(span, "an alias to an unknown anchor"))?;
                copied += value.size();
                if copied > MAX_ALIAS_NODES {
                    return Err(YamlError::at(
                        span,
                        "aliases copy too many values (more than 100000)",
                    ));
                }
                (value, 0)
            }
            Event::StreamStart | Event::StreamEnd | Event::DocumentEnd | Event::Nothing => continue,
        };
        if anchor > 0 {
            anchors.insert(anchor, value.clone());
        }
        match stack.last_mut() {
            None => root = Some(value),
            Some(Frame::Sequence(items, _)) => items.push(value),
            Some(Frame::Mapping(map, _, pending)) => match pending.take() {
                Some(key) => map.insert(key, value),
                None => {
                    let key = match value {
                        Value::Scalar(s) => s.text,
                        Value::Null => String::new(),
                        _ => {
                            return Err(YamlError::at(
                                span,
                                "a map key must be a string, not a list or a map",
                            ))
                        }
                    };
                    if map.contains_key(&key) {
                        return Err(YamlError::at(
                            span,
                            format!("the key {key:?} is given twice in the same map"),
                        ));
                    }
                    *pending = Some(key);
                }
            },
        }
    }
    Ok(root.unwrap_or(Value::Null))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(v: &Value) -> (&str, bool) {
        match v {
            Value::Scalar(s) => (s.text.as_str(), s.quoted),
            other => panic!("not a scalar: {other:?}"),
        }
    }

    #[test]
    fn scalars_keep_their_text_and_style() {
        let v = parse(
            "a: 0x1F\nb: 1e3\nc: 1.10\nd: True\ne: '0x1F'\nf: \"1.10\"\ng: ~\nh:\ni: !!str 12\nj: |\n  x\n",
        )
        .expect("parse");
        assert_eq!(text(v.get("a").expect("a")), ("0x1F", false));
        assert_eq!(text(v.get("b").expect("b")), ("1e3", false));
        assert_eq!(text(v.get("c").expect("c")), ("1.10", false));
        assert_eq!(text(v.get("d").expect("d")), ("True", false));
        assert_eq!(text(v.get("e").expect("e")), ("0x1F", true));
        assert_eq!(text(v.get("f").expect("f")), ("1.10", true));
        assert!(v.get("g").expect("g").is_null());
        assert!(v.get("h").expect("h").is_null());
        assert_eq!(text(v.get("i").expect("i")), ("12", true));
        assert_eq!(text(v.get("j").expect("j")), ("x\n", true));
        let keys: Vec<&str> = v.as_mapping().expect("map").keys().collect();
        assert_eq!(keys, ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j"]);
    }

    #[test]
    fn aliases_duplicates_and_errors() {
        let v = parse("x: &a {k: [1, 2]}\ny: *a\n").expect("aliases");
        assert_eq!(v.get("x"), v.get("y"));
        let e = parse("a: 1\nb:\n  c: 2\n  c: 3\n").expect_err("duplicate");
        assert_eq!((e.line, e.column), (4, 3), "{e}");
        assert!(e.to_string().contains("\"c\" is given twice"), "{e}");
        let e = parse("a: [1, 2\n").expect_err("syntax");
        assert!(e.line >= 1, "{e}");
        let e = parse("a: *nope\n").expect_err("unknown alias");
        assert_eq!(e.line, 1, "{e}");
        let e = parse("a: 1\n---\nb: 2\n").expect_err("two documents");
        assert!(e.to_string().contains("one document"), "{e}");
        assert_eq!(parse("").expect("empty"), Value::Null);
        assert_eq!(parse("# only a comment\n").expect("comment"), Value::Null);
        let bomb = "a: &a [x, x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]\nc: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]\ne: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d]\n";
        assert!(parse(bomb).is_err(), "alias expansion is bounded");
    }
}
