//! What the kubectl-like commands share: output formats (`-o`), object rendering (JSON, YAML,
//! `kind/name`), ages, label selectors, resource names with their aliases, and the split of
//! errors into user-level failures (exit 1) and Gantry's own failures (exit 125).
//!
//! Nothing here writes colour: output goes to pipes and scripts as often as to terminals.

use anyhow::Context;
use gantry_api::client::ClientError;
use gantry_api::objects::{Kind, Object};
use std::collections::BTreeMap;
use std::fmt;

/// A failure caused by what the user asked (not found, invalid input, timeout, differences):
/// the command prints it and exits 1 instead of 125.
#[derive(Debug)]
pub struct UserError(pub String);

impl fmt::Display for UserError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UserError {}

/// A user-level failure with `message`.
pub fn user_error(message: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(UserError(message.into()))
}

/// Turns a user-level failure into exit code 1 after printing it as one `gantry: …` line;
/// every other error is returned for `main` to report (exit 125).
pub fn finish(result: anyhow::Result<i32>) -> anyhow::Result<i32> {
    match result {
        Err(err) if err.chain().any(|c| c.is::<UserError>()) => {
            eprintln!("gantry: {err:#}");
            Ok(1)
        }
        other => other,
    }
}

/// Maps a client error: what the user can fix (not found, invalid, already exists) becomes a
/// [`UserError`]; the rest stays a Gantry failure. `what` names the operation.
pub fn client_error(err: ClientError, what: &str) -> anyhow::Error {
    match err {
        ClientError::NotFound(m) | ClientError::Invalid(m) | ClientError::AlreadyExists(m) => {
            user_error(format!("{what}: {m}"))
        }
        ClientError::Unreachable { .. } => anyhow::Error::new(err),
        other => anyhow::Error::new(other).context(what.to_string()),
    }
}

/// Writes `text` to stdout and flushes; when the reader has gone away (`gantry get … | head`)
/// the process ends quietly with status 0 instead of panicking on the broken pipe.
pub fn emit(text: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
    }
}

/// The "not found" error of kubectl: `service "web" not found`.
pub fn not_found(kind: Kind, name: &str) -> anyhow::Error {
    user_error(format!("{} {name:?} not found", lower(kind)))
}

/// The kind in lower case (`service`).
pub fn lower(kind: Kind) -> String {
    kind.as_str().to_ascii_lowercase()
}

/// `-o` formats.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputFormat {
    /// The table with more columns.
    Wide,
    /// Whole objects as JSON.
    Json,
    /// Whole objects as YAML.
    Yaml,
    /// `kind/name`, one per line.
    Name,
}

/// The resources the commands accept, with kubectl-like aliases.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource {
    /// Services.
    Services,
    /// Replicas.
    Replicas,
    /// Nodes.
    Nodes,
    /// Control-plane members (not stored objects).
    Members,
    /// Events.
    Events,
}

impl Resource {
    /// Parses a resource name: plural, singular or short alias, any case.
    pub fn parse(text: &str) -> Option<Resource> {
        Some(match text.to_ascii_lowercase().as_str() {
            "services" | "service" | "svc" => Resource::Services,
            "replicas" | "replica" | "rep" | "reps" => Resource::Replicas,
            "nodes" | "node" | "no" => Resource::Nodes,
            "members" | "member" => Resource::Members,
            "events" | "event" | "ev" => Resource::Events,
            _ => return None,
        })
    }

    /// The stored kind, `None` for members.
    pub fn kind(self) -> Option<Kind> {
        match self {
            Resource::Services => Some(Kind::Service),
            Resource::Replicas => Some(Kind::Replica),
            Resource::Nodes => Some(Kind::Node),
            Resource::Events => Some(Kind::Event),
            Resource::Members => None,
        }
    }
}

/// clap value parser for [`Resource`].
pub fn parse_resource(text: &str) -> Result<Resource, String> {
    Resource::parse(text).ok_or_else(|| {
        format!(
            "unknown resource type {text:?} (expected services, replicas, nodes, members or \
             events, or svc, rep, no, ev)"
        )
    })
}

/// Parses a kind accepted by `describe`, `delete` and friends (`service`, `svc`, …).
pub fn parse_kind(text: &str) -> Result<Kind, String> {
    match Resource::parse(text).and_then(Resource::kind) {
        Some(kind) => Ok(kind),
        None => Err(format!(
            "unknown resource type {text:?} (expected service, replica, node or event)"
        )),
    }
}

/// The JSON of `objects`: one object as itself, several (or none, when `list`) as a `List`.
pub fn to_json_value(objects: &[serde_json::Value], list: bool) -> serde_json::Value {
    if objects.len() == 1 && !list {
        return objects[0].clone();
    }
    serde_json::json!({
        "apiVersion": gantry_api::model::API_VERSION,
        "kind": "List",
        "items": objects,
    })
}

/// Renders a JSON value as pretty JSON or YAML, ending with a newline.
pub fn render(value: &serde_json::Value, format: OutputFormat) -> anyhow::Result<String> {
    let mut text = match format {
        OutputFormat::Yaml => serde_saphyr::to_string(value).context("cannot render YAML")?,
        _ => serde_json::to_string_pretty(value).context("cannot render JSON")?,
    };
    if !text.ends_with('\n') {
        text.push('\n');
    }
    Ok(text)
}

/// An object as a JSON value.
pub fn object_value(object: &Object) -> serde_json::Value {
    serde_json::to_value(object).unwrap_or(serde_json::Value::Null)
}

/// `service/web`.
pub fn ref_name(kind: Kind, name: &str) -> String {
    format!("{}/{name}", lower(kind))
}

/// Age of an RFC 3339 timestamp as kubectl prints it (`5s`, `3m`, `2h`, `4d`, `1y`); `<unknown>`
/// when absent or unparsable.
pub fn age(timestamp: Option<&str>) -> String {
    match timestamp.and_then(gantry_api::events::parse_rfc3339) {
        Some(then) => short_duration(gantry_api::events::now_secs().saturating_sub(then)),
        None => "<unknown>".to_string(),
    }
}

/// kubectl's short human duration.
pub fn short_duration(secs: u64) -> String {
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m", s / 60),
        s if s < 86_400 => format!("{}h", s / 3600),
        s if s < 365 * 86_400 => format!("{}d", s / 86_400),
        s => format!("{}y", s / (365 * 86_400)),
    }
}

/// [`parse_duration`] for periods and deadlines that must not be zero.
pub fn parse_positive_duration(text: &str) -> Result<std::time::Duration, String> {
    let d = parse_duration(text)?;
    if d.is_zero() {
        return Err(format!("{text:?}: must be longer than zero"));
    }
    Ok(d)
}

/// Parses a duration such as `60s`, `2m`, `1h`, `500ms` or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(text.len());
    let (num, unit) = text.split_at(split);
    let value: f64 = num
        .parse()
        .map_err(|_| format!("invalid duration {text:?} (expected e.g. 60s, 2m, 500ms)"))?;
    let secs = match unit {
        "" | "s" => value,
        "ms" => value / 1000.0,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => return Err(format!("invalid duration unit in {text:?} (ms, s, m or h)")),
    };
    if !secs.is_finite() || secs < 0.0 {
        return Err(format!("invalid duration {text:?}"));
    }
    Ok(std::time::Duration::from_secs_f64(secs))
}

/// A timeout as the user would write it (`60s`, `500ms`).
pub fn format_timeout(d: std::time::Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

/// One requirement of a label selector.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    Exists(String),
    NotExists(String),
}

/// A label selector: `key=value`, `key==value`, `key!=value`, `key`, `!key`, comma-separated;
/// all must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selector(Vec<Requirement>);

impl Selector {
    /// Parses a selector.
    ///
    /// # Errors
    /// An empty key.
    pub fn parse(text: &str) -> Result<Selector, String> {
        let mut reqs = Vec::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let req = if let Some((k, v)) = part.split_once("!=") {
                Requirement::NotEquals(k.trim().into(), v.trim().into())
            } else if let Some((k, v)) = part.split_once("==") {
                Requirement::Equals(k.trim().into(), v.trim().into())
            } else if let Some((k, v)) = part.split_once('=') {
                Requirement::Equals(k.trim().into(), v.trim().into())
            } else if let Some(k) = part.strip_prefix('!') {
                Requirement::NotExists(k.trim().into())
            } else {
                Requirement::Exists(part.into())
            };
            let key = match &req {
                Requirement::Equals(k, _)
                | Requirement::NotEquals(k, _)
                | Requirement::Exists(k)
                | Requirement::NotExists(k) => k,
            };
            if key.is_empty() {
                return Err(format!("invalid selector {text:?}: empty label key"));
            }
            reqs.push(req);
        }
        Ok(Selector(reqs))
    }

    /// Whether `labels` satisfy every requirement.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.0.iter().all(|r| match r {
            Requirement::Equals(k, v) => labels.get(k) == Some(v),
            Requirement::NotEquals(k, v) => labels.get(k) != Some(v),
            Requirement::Exists(k) => labels.contains_key(k),
            Requirement::NotExists(k) => !labels.contains_key(k),
        })
    }
}

/// Column widths fixed by a header and its first rows, so that rows printed later (by `-w`)
/// line up with them.
#[derive(Debug, Clone)]
pub struct Columns {
    widths: Vec<usize>,
}

impl Columns {
    /// Widths that fit `headers` and `rows`.
    pub fn fit(headers: &[&str], rows: &[Vec<String>]) -> Columns {
        let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
        for row in rows {
            for (i, cell) in row.iter().enumerate() {
                if let Some(w) = widths.get_mut(i) {
                    *w = (*w).max(cell.chars().count());
                }
            }
        }
        Columns { widths }
    }

    /// One line: cells padded to the widths with three spaces between, no trailing spaces.
    pub fn line<S: AsRef<str>>(&self, cells: &[S]) -> String {
        let mut text = String::new();
        for (i, cell) in cells.iter().enumerate() {
            let cell = cell.as_ref();
            text.push_str(cell);
            if i + 1 < cells.len() {
                let width = self.widths.get(i).copied().unwrap_or(0);
                let pad = width.saturating_sub(cell.chars().count()) + 3;
                text.extend(std::iter::repeat_n(' ', pad));
            }
        }
        text.trim_end().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_read_like_kubectl() {
        assert_eq!(short_duration(5), "5s");
        assert_eq!(short_duration(190), "3m");
        assert_eq!(short_duration(2 * 3600 + 5), "2h");
        assert_eq!(short_duration(4 * 86_400), "4d");
        assert_eq!(age(None), "<unknown>");
    }

    #[test]
    fn selectors_support_equality_inequality_and_existence() {
        let labels: BTreeMap<String, String> = [("app".to_string(), "web".to_string())]
            .into_iter()
            .collect();
        assert!(Selector::parse("app=web").unwrap().matches(&labels));
        assert!(Selector::parse("app==web,app").unwrap().matches(&labels));
        assert!(!Selector::parse("app!=web").unwrap().matches(&labels));
        assert!(Selector::parse("!tier").unwrap().matches(&labels));
        assert!(!Selector::parse("tier=db").unwrap().matches(&labels));
        assert!(Selector::parse("=x").is_err());
    }

    #[test]
    fn resources_accept_singular_plural_and_short_names() {
        for (text, want) in [
            ("svc", Resource::Services),
            ("Service", Resource::Services),
            ("rep", Resource::Replicas),
            ("no", Resource::Nodes),
            ("member", Resource::Members),
            ("ev", Resource::Events),
        ] {
            assert_eq!(Resource::parse(text), Some(want));
        }
        assert!(parse_resource("pods").is_err());
    }

    #[test]
    fn durations_parse_units() {
        assert_eq!(parse_duration("60s").unwrap().as_secs(), 60);
        assert_eq!(parse_duration("2m").unwrap().as_secs(), 120);
        assert_eq!(parse_duration("500ms").unwrap().as_millis(), 500);
        assert_eq!(parse_duration("7").unwrap().as_secs(), 7);
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("10x").is_err());
        assert!(parse_positive_duration("0s").is_err());
        assert_eq!(parse_duration("1.5s").unwrap().as_millis(), 1500);
        assert_eq!(format_timeout(std::time::Duration::from_secs(60)), "60s");
        assert_eq!(format_timeout(std::time::Duration::from_secs(5)), "5s");
    }
}
