//! Log line formatting beyond what `tracing-subscriber` offers: `log.fields`, fields
//! added to every line as Distribution 2.8 does (top-level keys in JSON, `key=value` at
//! the end of a text line). Knows nothing of the server; `main.rs` installs it.

use std::fmt;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// Top-level keys the JSON formatter writes itself; a `log.fields` key with one of these
/// names is written as `fields.<name>` instead (logrus, Distribution's logger, does the
/// same with its own keys), so no line ever has a duplicate key.
const JSON_RESERVED: &[&str] = &[
    "timestamp",
    "level",
    "fields",
    "target",
    "span",
    "spans",
    "threadName",
    "threadId",
    "filename",
    "line_number",
];

/// An event formatter that adds fixed fields to every line written by `inner`.
pub struct WithFields<F> {
    inner: F,
    /// Pre-rendered: `"k":v,` for JSON, ` k=v` for text.
    rendered: String,
    json: bool,
}

impl<F> WithFields<F> {
    /// `fields` in configuration order; `json` selects the rendering.
    pub fn new(inner: F, fields: &[(String, serde_json::Value)], json: bool) -> Self {
        let mut rendered = String::new();
        for (key, value) in fields {
            if json {
                let key = if JSON_RESERVED.contains(&key.as_str()) {
                    format!("fields.{key}")
                } else {
                    key.clone()
                };
                let k = serde_json::Value::String(key).to_string();
                rendered.push_str(&format!("{k}:{value},"));
            } else {
                let text = match value {
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                rendered.push_str(&format!(" {key}={}", text_value(&text)));
            }
        }
        WithFields {
            inner,
            rendered,
            json,
        }
    }

    /// Insert the fields into one formatted line.
    fn decorate(&self, line: &str) -> String {
        if self.rendered.is_empty() {
            return line.to_string();
        }
        if self.json {
            match line.strip_prefix('{') {
                Some(rest) => format!("{{{}{rest}", self.rendered),
                None => line.to_string(),
            }
        } else {
            let (body, end) = match line.strip_suffix('\n') {
                Some(body) => (body, "\n"),
                None => (line, ""),
            };
            format!("{body}{}{end}", self.rendered)
        }
    }
}

/// A text value as `key=value` shows it: bare when it is one word, quoted otherwise.
fn text_value(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| !c.is_whitespace() && !c.is_control() && c != '"' && c != '=');
    if plain {
        s.to_string()
    } else {
        format!("{s:?}")
    }
}

impl<S, N, F> FormatEvent<S, N> for WithFields<F>
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> fmt::Result {
        if self.rendered.is_empty() {
            return self.inner.format_event(ctx, writer, event);
        }
        // The inner formatter writes into a buffer so the fields can go inside the JSON
        // object or before the newline (colours are not kept on this path).
        let mut line = String::new();
        self.inner
            .format_event(ctx, Writer::new(&mut line), event)?;
        writer.write_str(&self.decorate(&line))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields() -> Vec<(String, serde_json::Value)> {
        vec![
            ("service".into(), serde_json::json!("registry")),
            ("level".into(), serde_json::json!("x")),
            ("n".into(), serde_json::json!(3)),
            ("env".into(), serde_json::json!("two words")),
        ]
    }

    #[test]
    fn json_fields_are_top_level_keys() {
        let f = WithFields::new((), &fields(), true);
        let line = f.decorate("{\"timestamp\":\"t\",\"level\":\"INFO\"}\n");
        let v: serde_json::Value = serde_json::from_str(&line).expect("json");
        assert_eq!(v["service"], "registry");
        assert_eq!(v["n"], 3);
        assert_eq!(v["level"], "INFO", "the formatter's own key wins");
        assert_eq!(v["fields.level"], "x");
        assert!(line.ends_with('\n'));
    }

    #[test]
    fn text_fields_end_the_line() {
        let f = WithFields::new((), &fields(), false);
        assert_eq!(
            f.decorate("INFO berth: hello\n"),
            "INFO berth: hello service=registry level=x n=3 env=\"two words\"\n"
        );
        let none = WithFields::new((), &[], false);
        assert_eq!(none.decorate("a\n"), "a\n");
    }
}
