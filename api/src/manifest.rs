//! YAML manifests for `gantry apply`: parsing, strict validation and error reporting.
//!
//! A manifest is UTF-8 YAML holding one or more documents separated by `---`; every non-empty
//! document is one `kind: Service` object. Parsing happens in three layers, so that one run
//! reports as many problems as it can, each with file, line, column and field path:
//!
//! 1. **Syntax.** The text is cut into documents at `---` lines (document markers always start
//!    a line in YAML), and each document is parsed by `serde-saphyr` into a [`Node`] tree that
//!    remembers every node's line and column. A syntax error ends only its own document.
//! 2. **Types.** The envelope (`apiVersion`, `kind`, `metadata`, `status`) is checked by hand;
//!    the spec is deserialized into [`ServiceSpec`] through a deserializer over the tree that
//!    records the path and position of the first failing field. That field is then removed and
//!    the spec deserialized again, so several wrong fields of one document are all reported.
//! 3. **Semantics.** [`validate_service_spec`] (shared with the API server) checks what types
//!    cannot say: duplicate ports, undeclared probe ports, limits below requests, service
//!    ports (numbers, names, the node port range, named target ports)…
//!
//! Invariants: [`parse`] returns `Ok` only when the whole text has no error; returned objects
//! carry the normalized spec (defaults filled, quantities canonical) and no status. Empty
//! documents are skipped, so a file holding only `---` yields no objects (the CLI decides
//! whether "nothing to apply" is an error). Input larger than [`MAX_MANIFEST_BYTES`] and YAML
//! exceeding the parser budget (alias bombs, deep nesting) are refused with the limit named.

use crate::model::{
    IntOrPercent, PortRef, Probe, Protocol, ResourceList, ServiceSpec, API_VERSION, NODE_PORT_MAX,
    NODE_PORT_MIN,
};
use crate::objects::{validate_name, Kind, Object, ObjectError, ObjectMeta};
use serde::de::{self, DeserializeSeed, Error as _, IntoDeserializer, Visitor};
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};
use std::fmt;

/// The largest manifest text accepted, in bytes.
pub const MAX_MANIFEST_BYTES: usize = 1024 * 1024;
/// The most documents one manifest text may hold.
pub const MAX_DOCUMENTS: usize = 256;
/// The most replicas one service may ask for.
pub const MAX_REPLICAS: u32 = 10_000;
/// The longest port name accepted (an IANA service name, as in Kubernetes).
pub const MAX_PORT_NAME_LEN: usize = 15;
/// Deepest nesting of YAML collections accepted.
pub const MAX_YAML_DEPTH: usize = 32;
/// Most YAML nodes accepted per document.
pub const MAX_YAML_NODES: usize = 100_000;
/// Most aliases (`*name`) accepted per document.
pub const MAX_YAML_ALIASES: usize = 1_000;
/// Most parser events an alias may replay per document (what stops "billion laughs").
pub const MAX_YAML_REPLAYED_EVENTS: usize = 10_000;

/// Most errors reported per document before giving up on it.
const MAX_ERRORS_PER_DOCUMENT: usize = 64;

/// One problem in a manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestError {
    /// File name, or `-` for standard input.
    pub source: String,
    /// 1-based line; 0 when unknown.
    pub line: usize,
    /// 1-based column; 0 when unknown.
    pub column: usize,
    /// Field path such as `spec.template.ports[1].containerPort`, or empty.
    pub path: String,
    /// What is wrong (lower case, no trailing period).
    pub message: String,
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: ", self.source, self.line, self.column)?;
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for ManifestError {}

/// All problems of one or more files; `Display` prints one per line.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ManifestErrors(pub Vec<ManifestError>);

impl fmt::Display for ManifestErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ManifestErrors {}

/// Parses every document of `text` (named `source` in messages) into validated Service objects.
/// Reports every error of the text at once; returns `Ok` only when there is none.
///
/// Empty documents are skipped; a text without any document gives `Ok(vec![])`. Two documents
/// naming the same service are an error.
pub fn parse(source: &str, text: &str) -> Result<Vec<Object>, ManifestErrors> {
    let mut errors = Vec::new();
    let mut objects: Vec<(Object, (usize, usize))> = Vec::new();
    if text.len() > MAX_MANIFEST_BYTES {
        errors.push(ManifestError {
            source: source.to_string(),
            line: 0,
            column: 0,
            path: String::new(),
            message: format!(
                "manifest is {} bytes, above the limit of {MAX_MANIFEST_BYTES} bytes \
                 (MAX_MANIFEST_BYTES)",
                text.len()
            ),
        });
        return Err(ManifestErrors(errors));
    }
    let chunks = split_documents(text);
    if chunks.len() > MAX_DOCUMENTS {
        errors.push(ManifestError {
            source: source.to_string(),
            line: chunks[MAX_DOCUMENTS].1 + 1,
            column: 1,
            path: String::new(),
            message: format!("more than {MAX_DOCUMENTS} documents (MAX_DOCUMENTS)"),
        });
        return Err(ManifestErrors(errors));
    }
    for (chunk, line_offset) in chunks {
        let mut doc_errors = Vec::new();
        match parse_nodes(chunk) {
            Ok(docs) => {
                for mut doc in docs {
                    doc.shift_lines(line_offset);
                    if let Some(obj) = document(&doc, &mut doc_errors) {
                        objects.push(obj);
                    }
                }
            }
            Err((line, column, message)) => doc_errors.push(Problem {
                line: if line == 0 { 0 } else { line + line_offset },
                column,
                path: String::new(),
                message,
            }),
        }
        errors.extend(doc_errors.into_iter().map(|p| p.into_error(source)));
    }
    let mut seen: HashMap<&str, (usize, usize)> = HashMap::new();
    for (obj, (line, column)) in &objects {
        let name = obj.metadata.name.as_str();
        if let Some((first_line, first_column)) = seen.get(name) {
            errors.push(ManifestError {
                source: source.to_string(),
                line: *line,
                column: *column,
                path: "metadata.name".to_string(),
                message: format!(
                    "duplicate service name {name:?} (also at {source}:{first_line}:{first_column})"
                ),
            });
        } else {
            seen.insert(name, (*line, *column));
        }
    }
    // Documents are checked envelope first, spec second: show the file in reading order.
    errors.sort_by_key(|e| (e.line, e.column));
    if errors.is_empty() {
        Ok(objects.into_iter().map(|(o, _)| o).collect())
    } else {
        Err(ManifestErrors(errors))
    }
}

/// Duplicate object names across files: one error per object whose kind and name an earlier
/// pair already has. Each pair is `(source, object)` as returned by [`parse`]; positions are
/// unknown here (0:0), so the message names the other file.
pub fn check_unique(objs: &[(String, Object)]) -> Vec<ManifestError> {
    let mut seen: HashMap<(Kind, &str), &str> = HashMap::new();
    let mut errors = Vec::new();
    for (source, obj) in objs {
        let key = (obj.kind, obj.metadata.name.as_str());
        match seen.get(&key) {
            Some(first) => errors.push(ManifestError {
                source: source.clone(),
                line: 0,
                column: 0,
                path: "metadata.name".to_string(),
                message: format!(
                    "duplicate {} name {:?} (also in {first})",
                    obj.kind.as_str().to_lowercase(),
                    obj.metadata.name
                ),
            }),
            None => {
                seen.insert(key, source);
            }
        }
    }
    errors
}

// ---------------------------------------------------------------------------------------------
// Semantic validation
// ---------------------------------------------------------------------------------------------

/// Semantic validation of a [`ServiceSpec`] (shared with the API server, which calls it on every
/// Service write). Paths start with `spec.`; an empty result means the spec is valid.
pub fn validate_service_spec(spec: &ServiceSpec) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut err = |path: String, message: String| out.push((path, message));
    if spec.replicas > MAX_REPLICAS {
        err(
            "spec.replicas".into(),
            format!(
                "{} replicas is above the limit of {MAX_REPLICAS} (MAX_REPLICAS)",
                spec.replicas
            ),
        );
    }
    let t = &spec.template;
    if t.image.trim().is_empty() {
        err("spec.template.image".into(), "must not be empty".into());
    }
    if let Some(dir) = &t.working_dir {
        if !dir.starts_with('/') {
            err(
                "spec.template.workingDir".into(),
                format!("{dir:?} is not an absolute path"),
            );
        }
    }
    let mut env_seen: HashMap<&str, usize> = HashMap::new();
    for (i, env) in t.env.iter().enumerate() {
        let path = format!("spec.template.env[{i}].name");
        if let Err(reason) = check_env_name(&env.name) {
            err(
                path.clone(),
                format!("{:?} is not a valid variable name ({reason})", env.name),
            );
        }
        if let Some(first) = env_seen.insert(&env.name, i) {
            env_seen.insert(&env.name, first);
            err(
                path,
                format!("duplicate env name {:?} (also env[{first}])", env.name),
            );
        }
    }
    let mut port_seen: HashMap<(u16, Protocol), usize> = HashMap::new();
    let mut name_seen: HashMap<&str, usize> = HashMap::new();
    for (i, port) in t.ports.iter().enumerate() {
        let base = format!("spec.template.ports[{i}]");
        if port.container_port == 0 {
            err(
                format!("{base}.containerPort"),
                "port 0 is not allowed (1-65535)".into(),
            );
        } else if let Some(first) = port_seen.get(&(port.container_port, port.protocol)) {
            err(
                format!("{base}.containerPort"),
                format!(
                    "duplicate port {} (also ports[{first}])",
                    port.container_port
                ),
            );
        } else {
            port_seen.insert((port.container_port, port.protocol), i);
        }
        if let Some(name) = &port.name {
            validate_port_name(&base, name, i, &mut name_seen, &mut err);
        }
    }
    validate_service_ports(spec, &mut err);
    let probes = [
        ("livenessProbe", &t.liveness_probe, true),
        ("readinessProbe", &t.readiness_probe, false),
        ("startupProbe", &t.startup_probe, true),
    ];
    for (field, probe, single_success) in probes {
        if let Some(probe) = probe {
            let base = format!("spec.template.{field}");
            validate_probe(spec, &base, field, probe, single_success, &mut err);
        }
    }
    validate_resources(&t.resources.requests, &t.resources.limits, &mut err);
    let surge =
        validate_int_or_percent(&spec.strategy.max_surge, "spec.strategy.maxSurge", &mut err);
    let unavailable = validate_int_or_percent(
        &spec.strategy.max_unavailable,
        "spec.strategy.maxUnavailable",
        &mut err,
    );
    if surge == Some(0) && unavailable == Some(0) {
        err(
            "spec.strategy".into(),
            "maxSurge and maxUnavailable must not both be 0 (an update could never progress)"
                .into(),
        );
    }
    out
}

/// Port `i`'s name (at `base`): a valid name, not held by an earlier port of the same list
/// (`seen`, by name, which this records it in).
fn validate_port_name<'a>(
    base: &str,
    name: &'a str,
    i: usize,
    seen: &mut HashMap<&'a str, usize>,
    err: &mut impl FnMut(String, String),
) {
    if let Err(reason) = check_port_name(name) {
        err(
            format!("{base}.name"),
            format!("{name:?} is not a valid port name ({reason})"),
        );
    }
    if let Some(first) = seen.get(name) {
        err(
            format!("{base}.name"),
            format!("duplicate port name {name:?} (also ports[{first}])"),
        );
    } else {
        seen.insert(name, i);
    }
}

/// The service's own ports (`spec.ports`): numbers, names, node ports and target ports.
///
/// Duplicates are judged per protocol, as Kubernetes does, since a TCP and a UDP port of the
/// same number (DNS) are two different ports; each duplicate names the first holder.
fn validate_service_ports(spec: &ServiceSpec, err: &mut impl FnMut(String, String)) {
    let several = spec.ports.len() > 1;
    let mut port_seen: HashMap<(Protocol, u16), usize> = HashMap::new();
    let mut name_seen: HashMap<&str, usize> = HashMap::new();
    let mut node_port_seen: HashMap<(Protocol, u16), usize> = HashMap::new();
    for (i, port) in spec.ports.iter().enumerate() {
        let base = format!("spec.ports[{i}]");
        match &port.name {
            Some(name) => validate_port_name(&base, name, i, &mut name_seen, err),
            None if several => err(
                format!("{base}.name"),
                "a name is required when a service has several ports".into(),
            ),
            None => {}
        }
        let protocol = protocol_name(port.protocol);
        if port.port == 0 {
            err(
                format!("{base}.port"),
                "port 0 is not allowed (1-65535)".into(),
            );
        } else if let Some(first) = port_seen.get(&(port.protocol, port.port)) {
            err(
                format!("{base}.port"),
                format!(
                    "duplicate port {}/{protocol} (also ports[{first}])",
                    port.port
                ),
            );
        } else {
            port_seen.insert((port.protocol, port.port), i);
        }
        if let Some(np) = port.node_port {
            if !(NODE_PORT_MIN..=NODE_PORT_MAX).contains(&np) {
                err(
                    format!("{base}.nodePort"),
                    format!(
                        "nodePort {np} is outside the node port range \
                         {NODE_PORT_MIN}-{NODE_PORT_MAX}"
                    ),
                );
            } else if let Some(first) = node_port_seen.get(&(port.protocol, np)) {
                err(
                    format!("{base}.nodePort"),
                    format!("duplicate nodePort {np}/{protocol} (also ports[{first}])"),
                );
            } else {
                node_port_seen.insert((port.protocol, np), i);
            }
        }
        let path = format!("{base}.targetPort");
        match &port.target_port {
            None => {}
            Some(PortRef::Number(0)) => err(path, "port 0 is not allowed (1-65535)".into()),
            Some(PortRef::Number(_)) => {}
            Some(PortRef::Name(name)) => {
                let declared = spec
                    .template
                    .ports
                    .iter()
                    .any(|p| p.name.as_deref() == Some(name.as_str()));
                if !declared {
                    err(
                        path,
                        format!("port name {name:?} is not declared in spec.template.ports"),
                    );
                }
            }
        }
    }
}

fn protocol_name(p: Protocol) -> &'static str {
    match p {
        Protocol::TCP => "TCP",
        Protocol::UDP => "UDP",
    }
}

fn validate_probe(
    spec: &ServiceSpec,
    base: &str,
    field: &str,
    probe: &Probe,
    single_success: bool,
    err: &mut impl FnMut(String, String),
) {
    let mut set = Vec::new();
    if probe.exec.is_some() {
        set.push("exec");
    }
    if probe.http_get.is_some() {
        set.push("httpGet");
    }
    if probe.tcp_socket.is_some() {
        set.push("tcpSocket");
    }
    if set.len() != 1 {
        let found = if set.is_empty() {
            "none".to_string()
        } else {
            set.join(", ")
        };
        err(
            base.to_string(),
            format!("exactly one of exec, httpGet, tcpSocket must be set (found {found})"),
        );
    }
    if let Some(exec) = &probe.exec {
        if exec.command.first().is_none_or(|c| c.is_empty()) {
            err(format!("{base}.exec.command"), "must not be empty".into());
        }
    }
    if let Some(http) = &probe.http_get {
        if !http.path.starts_with('/') {
            err(
                format!("{base}.httpGet.path"),
                format!("{:?} must start with '/'", http.path),
            );
        }
        check_probe_port(spec, &format!("{base}.httpGet.port"), &http.port, err);
    }
    if let Some(tcp) = &probe.tcp_socket {
        check_probe_port(spec, &format!("{base}.tcpSocket.port"), &tcp.port, err);
    }
    let numbers = [
        ("periodSeconds", probe.period_seconds),
        ("timeoutSeconds", probe.timeout_seconds),
        ("successThreshold", probe.success_threshold),
        ("failureThreshold", probe.failure_threshold),
    ];
    for (name, value) in numbers {
        if value < 1 {
            err(format!("{base}.{name}"), "must be at least 1".into());
        }
    }
    if single_success && probe.success_threshold > 1 {
        err(
            format!("{base}.successThreshold"),
            format!("must be 1 for {field} (as in Kubernetes)"),
        );
    }
}

fn check_probe_port(
    spec: &ServiceSpec,
    path: &str,
    port: &PortRef,
    err: &mut impl FnMut(String, String),
) {
    let ports = &spec.template.ports;
    match port {
        PortRef::Number(0) => err(path.to_string(), "port 0 is not allowed (1-65535)".into()),
        PortRef::Number(n) => {
            if !ports.iter().any(|p| p.container_port == *n) {
                err(
                    path.to_string(),
                    format!("port {n} is not declared in spec.template.ports"),
                );
            }
        }
        PortRef::Name(name) => {
            if !ports
                .iter()
                .any(|p| p.name.as_deref() == Some(name.as_str()))
            {
                err(
                    path.to_string(),
                    format!("port name {name:?} is not declared in spec.template.ports"),
                );
            }
        }
    }
}

fn validate_resources(
    requests: &ResourceList,
    limits: &ResourceList,
    err: &mut impl FnMut(String, String),
) {
    let base = "spec.template.resources";
    if let (Some(req), Some(lim)) = (requests.cpu, limits.cpu) {
        if lim < req {
            err(
                format!("{base}.limits.cpu"),
                format!("limit {lim} is below the request {req}"),
            );
        }
    }
    if limits.cpu.is_some_and(|c| c.0 == 0) {
        err(
            format!("{base}.limits.cpu"),
            "a zero cpu limit would never let the process run".into(),
        );
    }
    if let (Some(req), Some(lim)) = (requests.memory, limits.memory) {
        if lim < req {
            err(
                format!("{base}.limits.memory"),
                format!("limit {lim} is below the request {req}"),
            );
        }
    }
    if limits.memory.is_some_and(|m| m.0 == 0) {
        err(
            format!("{base}.limits.memory"),
            "a zero memory limit leaves no memory for the process".into(),
        );
    }
    if limits.pids == Some(0) {
        err(format!("{base}.limits.pids"), "must be at least 1".into());
    }
    if requests.pids.is_some() {
        err(
            format!("{base}.requests.pids"),
            "pids can be limited, not requested".into(),
        );
    }
}

/// Checks a count or percentage; returns its value (0 means "zero" either way).
fn validate_int_or_percent(
    value: &IntOrPercent,
    path: &str,
    err: &mut impl FnMut(String, String),
) -> Option<u32> {
    match value {
        IntOrPercent::Int(n) => Some(*n),
        IntOrPercent::Percent(p) => {
            let parsed = p
                .strip_suffix('%')
                .filter(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|d| d.parse::<u32>().ok())
                .filter(|n| *n <= 100);
            if parsed.is_none() {
                err(
                    path.to_string(),
                    format!("malformed percentage {p:?} (expected 0% to 100%, such as \"25%\")"),
                );
            }
            parsed
        }
    }
}

/// Environment variable names: a C identifier, as shells can use it.
fn check_env_name(name: &str) -> Result<(), &'static str> {
    let mut bytes = name.bytes();
    match bytes.next() {
        None => Err("must not be empty"),
        Some(b) if !(b.is_ascii_alphabetic() || b == b'_') => {
            Err("must start with a letter or '_'")
        }
        _ if !bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_') => {
            Err("must consist of letters, digits and '_'")
        }
        _ => Ok(()),
    }
}

/// Port names: a DNS label of at most 15 characters with at least one letter (IANA service
/// name, as Kubernetes has it), so that it never reads as a number.
fn check_port_name(name: &str) -> Result<(), String> {
    if name.len() > MAX_PORT_NAME_LEN {
        return Err(format!("must be at most {MAX_PORT_NAME_LEN} characters"));
    }
    if let Err(ObjectError::InvalidName { reason, .. }) = validate_name(name) {
        return Err(reason.to_string());
    }
    if !name.bytes().any(|b| b.is_ascii_lowercase()) {
        return Err("must contain a letter".into());
    }
    if name.contains("--") {
        return Err("must not contain \"--\"".into());
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Documents and the envelope
// ---------------------------------------------------------------------------------------------

/// A problem inside one document, before it is given its file name.
#[derive(Debug)]
struct Problem {
    line: usize,
    column: usize,
    path: String,
    message: String,
}

impl Problem {
    fn at(node: &Node, path: impl Into<String>, message: impl Into<String>) -> Self {
        Problem {
            line: node.line,
            column: node.column,
            path: path.into(),
            message: message.into(),
        }
    }

    fn into_error(self, source: &str) -> ManifestError {
        ManifestError {
            source: source.to_string(),
            line: self.line,
            column: self.column,
            path: self.path,
            message: self.message,
        }
    }
}

const TOP_FIELDS: &[&str] = &["apiVersion", "kind", "metadata", "spec"];
const META_FIELDS: &[&str] = &["name", "labels"];

/// Checks one document; returns the object and the position of its name when it is valid.
fn document(doc: &Node, errors: &mut Vec<Problem>) -> Option<(Object, (usize, usize))> {
    let before = errors.len();
    let Val::Map(entries) = &doc.val else {
        errors.push(Problem::at(
            doc,
            "",
            format!(
                "expected a mapping with apiVersion, kind, metadata and spec, found {}",
                doc.val.describe()
            ),
        ));
        return None;
    };
    let mut kind_ok = false;
    let mut name = None;
    let mut labels = BTreeMap::new();
    let mut spec = None;
    let mut seen = [false; 4];
    for (key, value) in entries {
        let Val::Str(k) = &key.val else {
            errors.push(Problem::at(key, "", "expected a string key"));
            continue;
        };
        match k.as_str() {
            "apiVersion" => {
                seen[0] = true;
                match &value.val {
                    Val::Str(v) if v == API_VERSION => {}
                    other => errors.push(Problem::at(
                        value,
                        "apiVersion",
                        format!(
                            "unsupported apiVersion {} (expected {API_VERSION})",
                            other.describe()
                        ),
                    )),
                }
            }
            "kind" => {
                seen[1] = true;
                match &value.val {
                    Val::Str(v) if v == "Service" => kind_ok = true,
                    Val::Str(v) if matches!(v.as_str(), "Replica" | "Node" | "Event") => errors
                        .push(Problem::at(
                            value,
                            "kind",
                            format!(
                                "{v} objects are made by the cluster, not by manifests \
                                 (only kind Service is accepted)"
                            ),
                        )),
                    other => errors.push(Problem::at(
                        value,
                        "kind",
                        format!(
                            "unknown kind {} (only kind Service is accepted)",
                            other.describe()
                        ),
                    )),
                }
            }
            "metadata" => {
                seen[2] = true;
                (name, labels) = metadata(value, errors);
            }
            "spec" => {
                seen[3] = true;
                spec = Some(value);
            }
            "status" => errors.push(Problem::at(key, "status", "status is set by the cluster")),
            other => errors.push(Problem::at(
                key,
                other,
                unknown_field_message(other, TOP_FIELDS),
            )),
        }
    }
    for (i, field) in TOP_FIELDS.iter().enumerate() {
        if !seen[i] {
            errors.push(Problem::at(doc, "", format!("missing field `{field}`")));
        }
    }
    let spec = match spec {
        Some(node) if kind_ok => typed_spec(node, errors),
        _ => None,
    };
    if errors.len() > before {
        return None;
    }
    let (name, position) = name?;
    let spec = spec?;
    let mut obj = Object::new(Kind::Service, name);
    obj.metadata = ObjectMeta {
        labels,
        ..obj.metadata
    };
    obj.set_spec(&spec);
    Some((obj, position))
}

type NameAndLabels = (Option<(String, (usize, usize))>, BTreeMap<String, String>);

fn metadata(node: &Node, errors: &mut Vec<Problem>) -> NameAndLabels {
    let mut name = None;
    let mut labels = BTreeMap::new();
    let Val::Map(entries) = &node.val else {
        errors.push(Problem::at(
            node,
            "metadata",
            format!("expected a mapping, found {}", node.val.describe()),
        ));
        return (None, labels);
    };
    for (key, value) in entries {
        let Val::Str(k) = &key.val else {
            errors.push(Problem::at(key, "metadata", "expected a string key"));
            continue;
        };
        let path = format!("metadata.{k}");
        match k.as_str() {
            "name" => match &value.val {
                Val::Str(n) => match validate_name(n) {
                    Ok(()) => name = Some((n.clone(), (value.line, value.column))),
                    Err(ObjectError::InvalidName { reason, .. }) => errors.push(Problem::at(
                        value,
                        path,
                        format!("{n:?} is not a DNS-1123 label ({reason})"),
                    )),
                    Err(e) => errors.push(Problem::at(value, path, e.to_string())),
                },
                other => errors.push(Problem::at(
                    value,
                    path,
                    format!("expected a string, found {}", other.describe()),
                )),
            },
            "labels" => {
                match typed::<BTreeMap<String, String>>(value, vec![Seg::Key(path.clone())]) {
                    Ok(l) => labels = l,
                    Err(e) => errors.push(e.into_problem(value, &path)),
                }
            }
            "resourceVersion" | "creationTimestamp" => {
                errors.push(Problem::at(key, path, format!("{k} is set by the cluster")))
            }
            other => errors.push(Problem::at(
                key,
                path,
                unknown_field_message(other, META_FIELDS),
            )),
        }
    }
    if name.is_none() && !errors.iter().any(|e| e.path == "metadata.name") {
        errors.push(Problem::at(node, "metadata", "missing field `name`"));
    }
    (name, labels)
}

/// Deserializes the spec, removing each failing field and trying again so that every wrong
/// field is reported; then runs the semantic checks.
fn typed_spec(node: &Node, errors: &mut Vec<Problem>) -> Option<ServiceSpec> {
    let mut work = node.clone();
    let mut removed: Vec<String> = Vec::new();
    for _ in 0..MAX_ERRORS_PER_DOCUMENT {
        match typed::<ServiceSpec>(&work, vec![Seg::Key("spec".into())]) {
            Ok(spec) => {
                for (path, message) in validate_service_spec(&spec) {
                    // A removed field makes checks that look at it or across it unreliable.
                    let overlaps = removed.iter().any(|r| {
                        path.starts_with(r.as_str())
                            || r.starts_with(&path)
                            || (r.starts_with("spec.template.ports")
                                && message.contains("declared"))
                    });
                    if !overlaps {
                        let at = locate(node, &path);
                        errors.push(Problem::at(at, path, message));
                    }
                }
                return if removed.is_empty() { Some(spec) } else { None };
            }
            Err(e) => {
                let Some(at) = e.at.as_ref() else {
                    errors.push(e.into_problem(node, "spec"));
                    return None;
                };
                let path = render_path(&at.path);
                let at_path = at.path.clone();
                let cascade = e
                    .missing_field
                    .is_some_and(|field| removed.contains(&format!("{path}.{field}")));
                // A field we removed is missing now: already reported, so drop its parent
                // silently and go on with the rest.
                if !cascade {
                    errors.push(e.into_problem(node, "spec"));
                }
                if at_path.len() <= 1 || !remove(&mut work, &at_path[1..]) {
                    return None;
                }
                removed.push(path);
            }
        }
    }
    None
}

/// Removes the node at `path` (relative to `node`); false when there is none.
fn remove(node: &mut Node, path: &[Seg]) -> bool {
    let Some((first, rest)) = path.split_first() else {
        return false;
    };
    match (&mut node.val, first) {
        (Val::Map(entries), Seg::Key(k)) => {
            let Some(i) = entries
                .iter()
                .position(|(key, _)| matches!(&key.val, Val::Str(s) if s == k))
            else {
                return false;
            };
            if rest.is_empty() {
                entries.remove(i);
                true
            } else {
                remove(&mut entries[i].1, rest)
            }
        }
        (Val::Seq(items), Seg::Index(n)) => {
            let Some(i) = items.iter().position(|(idx, _)| idx == n) else {
                return false;
            };
            if rest.is_empty() {
                items.remove(i);
                true
            } else {
                remove(&mut items[i].1, rest)
            }
        }
        _ => false,
    }
}

/// The deepest node of `root` (the spec) along `path` (`spec.template.ports[1].name`).
fn locate<'a>(root: &'a Node, path: &str) -> &'a Node {
    let mut node = root;
    let rest = path.strip_prefix("spec").unwrap_or(path);
    for part in rest.split('.').filter(|p| !p.is_empty()) {
        let (key, indices) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        let Some(next) = node.get(key) else {
            return node;
        };
        node = next;
        for index in indices
            .split(['[', ']'])
            .filter(|s| !s.is_empty())
            .filter_map(|s| s.parse::<usize>().ok())
        {
            let Val::Seq(items) = &node.val else {
                return node;
            };
            match items.iter().find(|(i, _)| *i == index) {
                Some((_, item)) => node = item,
                None => return node,
            }
        }
    }
    node
}

fn unknown_field_message(field: &str, expected: &[&str]) -> String {
    match closest(field, expected) {
        Some(best) => format!("unknown field `{field}`, did you mean `{best}`?"),
        None if expected.is_empty() => format!("unknown field `{field}`, there are no fields"),
        None => format!(
            "unknown field `{field}`, expected one of {}",
            expected
                .iter()
                .map(|e| format!("`{e}`"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// The candidate within a small edit distance of `word`, ignoring case.
fn closest<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    let word = word.to_ascii_lowercase();
    let limit = if word.chars().count() <= 4 { 1 } else { 2 };
    candidates
        .iter()
        .map(|c| (edit_distance(&word, &c.to_ascii_lowercase()), *c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

// ---------------------------------------------------------------------------------------------
// Syntax: documents and the node tree
// ---------------------------------------------------------------------------------------------

/// Cuts `text` into documents at lines starting with `---`; returns each with the number of
/// lines before it. Directives and comments before a marker stay with the document they open.
fn split_documents(text: &str) -> Vec<(&str, usize)> {
    let mut chunks = Vec::new();
    let mut start = 0;
    let mut start_line = 0;
    let mut only_preamble = true;
    let mut offset = 0;
    for (line_no, line) in text.split_inclusive('\n').enumerate() {
        let content = line.trim_end_matches(['\n', '\r']);
        let is_marker = content
            .strip_prefix("---")
            .is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '\t']));
        if is_marker && !only_preamble {
            chunks.push((&text[start..offset], start_line));
            start = offset;
            start_line = line_no;
        }
        let trimmed = content.trim_start_matches('\u{feff}').trim();
        if is_marker || !(trimmed.is_empty() || trimmed.starts_with(['#', '%'])) {
            only_preamble = false;
        }
        offset += line.len();
    }
    if start < text.len() || chunks.is_empty() {
        chunks.push((&text[start..], start_line));
    }
    chunks
}

fn yaml_options() -> serde_saphyr::Options {
    let mut budget = serde_saphyr::Budget::default();
    budget.max_reader_input_bytes = Some(MAX_MANIFEST_BYTES);
    budget.max_depth = MAX_YAML_DEPTH;
    budget.max_nodes = MAX_YAML_NODES;
    budget.max_events = 4 * MAX_YAML_NODES;
    budget.max_aliases = MAX_YAML_ALIASES;
    budget.max_anchors = MAX_YAML_ALIASES;
    budget.max_documents = MAX_DOCUMENTS;
    budget.max_total_scalar_bytes = MAX_MANIFEST_BYTES;
    let mut options = serde_saphyr::Options::default();
    options.budget = Some(budget);
    options.alias_limits.max_total_replayed_events = MAX_YAML_REPLAYED_EVENTS;
    options.with_snippet = false;
    options
}

/// Parses one chunk into its documents, or returns the syntax error's line, column and text.
fn parse_nodes(chunk: &str) -> Result<Vec<Node>, (usize, usize, String)> {
    serde_saphyr::from_multiple_with_options::<Node>(chunk, yaml_options()).map_err(|e| {
        let (line, column) = e
            .location()
            .map(|l| (to_usize(l.line()), to_usize(l.column())))
            .unwrap_or((0, 0));
        (line, column, yaml_message(&e))
    })
}

fn to_usize(n: u64) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

/// The error's text without position (we print our own) and with budget breaches explained.
fn yaml_message(err: &serde_saphyr::Error) -> String {
    use serde_saphyr::MessageFormatter;
    let mut inner = err;
    while let serde_saphyr::Error::AliasError { error, .. }
    | serde_saphyr::Error::WithSnippet { error, .. } = inner
    {
        inner = error;
    }
    let text = serde_saphyr::UserMessageFormatter.format_message(inner);
    let mut text: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if let Some(i) = text.find(" at line ") {
        text.truncate(i);
    }
    let lower = text.to_lowercase();
    if matches!(inner, serde_saphyr::Error::Budget { .. })
        || ["budget", "limit", "too large", "too complex", "exceeded"]
            .iter()
            .any(|w| lower.contains(w))
    {
        text.push_str(&format!(
            " (manifest limits: depth {MAX_YAML_DEPTH}, nodes {MAX_YAML_NODES}, aliases \
             {MAX_YAML_ALIASES}, alias-replayed events {MAX_YAML_REPLAYED_EVENTS})"
        ));
    }
    text
}

/// A YAML node with the position (1-based) it was read from.
#[derive(Debug, Clone)]
struct Node {
    line: usize,
    column: usize,
    val: Val,
}

/// A YAML value; sequence items keep their original index so that paths stay right after
/// items are removed.
#[derive(Debug, Clone)]
enum Val {
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
    Str(String),
    Seq(Vec<(usize, Node)>),
    Map(Vec<(Node, Node)>),
}

impl Val {
    fn describe(&self) -> String {
        match self {
            Val::Null => "null".into(),
            Val::Bool(b) => format!("boolean `{b}`"),
            Val::Int(n) => format!("integer `{n}`"),
            Val::UInt(n) => format!("integer `{n}`"),
            Val::Float(f) => format!("number `{f}`"),
            Val::Str(s) => format!("{s:?}"),
            Val::Seq(_) => "a sequence".into(),
            Val::Map(_) => "a mapping".into(),
        }
    }
}

impl Node {
    fn get(&self, key: &str) -> Option<&Node> {
        match &self.val {
            Val::Map(entries) => entries
                .iter()
                .find(|(k, _)| matches!(&k.val, Val::Str(s) if s == key))
                .map(|(_, v)| v),
            _ => None,
        }
    }

    fn shift_lines(&mut self, by: usize) {
        if self.line != 0 {
            self.line += by;
        }
        match &mut self.val {
            Val::Seq(items) => items.iter_mut().for_each(|(_, n)| n.shift_lines(by)),
            Val::Map(entries) => entries.iter_mut().for_each(|(k, v)| {
                k.shift_lines(by);
                v.shift_lines(by);
            }),
            _ => {}
        }
    }
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let spanned = serde_saphyr::Spanned::<Val>::deserialize(d)?;
        Ok(Node {
            line: to_usize(spanned.referenced.line()),
            column: to_usize(spanned.referenced.column()),
            val: spanned.value,
        })
    }
}

impl<'de> Deserialize<'de> for Val {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ValVisitor)
    }
}

struct ValVisitor;

impl<'de> Visitor<'de> for ValVisitor {
    type Value = Val;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a YAML value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Val, E> {
        Ok(Val::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Val, E> {
        Ok(Val::Int(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Val, E> {
        Ok(Val::UInt(v))
    }
    fn visit_i128<E>(self, v: i128) -> Result<Val, E> {
        Ok(i64::try_from(v).map_or(Val::Float(v as f64), Val::Int))
    }
    fn visit_u128<E>(self, v: u128) -> Result<Val, E> {
        Ok(u64::try_from(v).map_or(Val::Float(v as f64), Val::UInt))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Val, E> {
        Ok(Val::Float(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Val, E> {
        Ok(Val::Str(v.to_string()))
    }
    fn visit_string<E>(self, v: String) -> Result<Val, E> {
        Ok(Val::Str(v))
    }
    fn visit_bytes<E>(self, v: &[u8]) -> Result<Val, E> {
        Ok(Val::Str(String::from_utf8_lossy(v).into_owned()))
    }
    fn visit_unit<E>(self) -> Result<Val, E> {
        Ok(Val::Null)
    }
    fn visit_none<E>(self) -> Result<Val, E> {
        Ok(Val::Null)
    }
    fn visit_some<D: de::Deserializer<'de>>(self, d: D) -> Result<Val, D::Error> {
        Val::deserialize(d)
    }
    fn visit_newtype_struct<D: de::Deserializer<'de>>(self, d: D) -> Result<Val, D::Error> {
        Val::deserialize(d)
    }
    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Val, A::Error> {
        let mut items = Vec::new();
        while let Some(node) = seq.next_element::<Node>()? {
            items.push((items.len(), node));
        }
        Ok(Val::Seq(items))
    }
    fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Val, A::Error> {
        let mut entries = Vec::new();
        while let Some(key) = map.next_key::<Node>()? {
            let value = map.next_value::<Node>()?;
            entries.push((key, value));
        }
        Ok(Val::Map(entries))
    }
}

// ---------------------------------------------------------------------------------------------
// Types: a deserializer over the node tree that remembers where it failed
// ---------------------------------------------------------------------------------------------

/// One step of a field path.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seg {
    Key(String),
    Index(usize),
}

fn render_path(path: &[Seg]) -> String {
    let mut out = String::new();
    for seg in path {
        match seg {
            Seg::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(k);
            }
            Seg::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

/// Where a deserialization error happened.
#[derive(Debug)]
struct ErrAt {
    path: Vec<Seg>,
    line: usize,
    column: usize,
}

/// A deserialization error; `at` is set by the innermost node that saw it.
#[derive(Debug)]
struct DeError {
    message: String,
    at: Option<ErrAt>,
    missing_field: Option<&'static str>,
}

impl DeError {
    fn into_problem(self, fallback: &Node, fallback_path: &str) -> Problem {
        match self.at {
            Some(at) => Problem {
                line: at.line,
                column: at.column,
                path: render_path(&at.path),
                message: self.message,
            },
            None => Problem::at(fallback, fallback_path, self.message),
        }
    }
}

impl fmt::Display for DeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for DeError {}

impl de::Error for DeError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        let mut message = msg.to_string();
        // Untagged enums only say that nothing matched: say what would have.
        if message.contains("untagged enum PortRef") {
            message = "expected a port number (1-65535) or a port name".into();
        } else if message.contains("untagged enum IntOrPercent") {
            message = "expected a count or a percentage such as \"25%\"".into();
        } else if message.contains("untagged enum Scalar") {
            message = "expected a quantity such as 500m or 64Mi".into();
        }
        DeError {
            message,
            at: None,
            missing_field: None,
        }
    }

    fn invalid_type(unexp: de::Unexpected<'_>, exp: &dyn de::Expected) -> Self {
        let expected = exp.to_string();
        let hint = match unexp {
            de::Unexpected::Unsigned(_)
            | de::Unexpected::Signed(_)
            | de::Unexpected::Float(_)
            | de::Unexpected::Bool(_)
                if expected.contains("string") =>
            {
                " (quote it to make it a string)"
            }
            _ => "",
        };
        let unexp = match unexp {
            de::Unexpected::Unit => "null".to_string(),
            other => other.to_string(),
        };
        Self::custom(format_args!(
            "invalid type: {unexp}, expected {expected}{hint}"
        ))
    }

    fn invalid_value(unexp: de::Unexpected<'_>, exp: &dyn de::Expected) -> Self {
        let expected = match exp.to_string().as_str() {
            "u8" => "an integer from 0 to 255".to_string(),
            "u16" => "an integer from 0 to 65535".to_string(),
            "u32" => "an integer from 0 to 4294967295".to_string(),
            "u64" => "a non-negative integer".to_string(),
            other => other.to_string(),
        };
        Self::custom(format_args!("invalid value: {unexp}, expected {expected}"))
    }

    fn unknown_field(field: &str, expected: &'static [&'static str]) -> Self {
        Self::custom(unknown_field_message(field, expected))
    }

    fn unknown_variant(variant: &str, expected: &'static [&'static str]) -> Self {
        let list = expected
            .iter()
            .map(|e| format!("`{e}`"))
            .collect::<Vec<_>>()
            .join(", ");
        match closest(variant, expected) {
            Some(best) => Self::custom(format_args!(
                "unknown value `{variant}`, did you mean `{best}`?"
            )),
            None => Self::custom(format_args!(
                "unknown value `{variant}`, expected one of {list}"
            )),
        }
    }

    fn missing_field(field: &'static str) -> Self {
        let mut e = Self::custom(format_args!("missing field `{field}`"));
        e.missing_field = Some(field);
        e
    }
}

/// Deserializes `node` (found at `path`) as `T`.
fn typed<T: de::DeserializeOwned>(node: &Node, path: Vec<Seg>) -> Result<T, DeError> {
    T::deserialize(NodeDe { node, path })
}

struct NodeDe<'a> {
    node: &'a Node,
    path: Vec<Seg>,
}

impl ErrAt {
    /// Gives an error raised at this position (and not deeper) its position.
    fn locate(self, mut e: DeError) -> DeError {
        if e.at.is_none() {
            e.at = Some(self);
        }
        e
    }
}

impl NodeDe<'_> {
    fn position(&self) -> ErrAt {
        ErrAt {
            path: self.path.clone(),
            line: self.node.line,
            column: self.node.column,
        }
    }

    /// Gives an error raised at this node its position.
    fn locate(&self, e: DeError) -> DeError {
        self.position().locate(e)
    }

    fn any<'de, V: Visitor<'de>>(&self, visitor: V) -> Result<V::Value, DeError> {
        match &self.node.val {
            Val::Null => visitor.visit_unit(),
            Val::Bool(b) => visitor.visit_bool(*b),
            Val::Int(n) => visitor.visit_i64(*n),
            Val::UInt(n) => visitor.visit_u64(*n),
            Val::Float(f) => visitor.visit_f64(*f),
            Val::Str(s) => visitor.visit_str(s),
            Val::Seq(items) => visitor.visit_seq(SeqDe {
                items: items.iter(),
                path: &self.path,
            }),
            Val::Map(entries) => visitor.visit_map(MapDe {
                entries: entries.iter(),
                value: None,
                path: &self.path,
            }),
        }
    }
}

macro_rules! forward_to_any {
    ($($method:ident)*) => {
        $(
            fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
                self.deserialize_any(visitor)
            }
        )*
    };
}

impl<'de> de::Deserializer<'de> for NodeDe<'_> {
    type Error = DeError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.any(visitor).map_err(|e| self.locate(e))
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match self.node.val {
            Val::Null => visitor.visit_none().map_err(|e| self.locate(e)),
            _ => visitor.visit_some(self),
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        let result = match &self.node.val {
            Val::Str(s) => visitor.visit_enum(s.as_str().into_deserializer()),
            other => Err(DeError::custom(format_args!(
                "expected a string, found {}",
                other.describe()
            ))),
        };
        result.map_err(|e| self.locate(e))
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        let result = match &self.node.val {
            Val::Str(s) => visitor.visit_str(s),
            other => Err(DeError::custom(format_args!(
                "expected a field name, found {}",
                other.describe()
            ))),
        };
        result.map_err(|e| self.locate(e))
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        visitor.visit_unit()
    }

    forward_to_any! {
        deserialize_bool deserialize_i8 deserialize_i16 deserialize_i32 deserialize_i64
        deserialize_u8 deserialize_u16 deserialize_u32 deserialize_u64 deserialize_f32
        deserialize_f64 deserialize_char deserialize_str deserialize_string deserialize_bytes
        deserialize_byte_buf deserialize_unit deserialize_seq deserialize_map
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        self.deserialize_any(visitor)
    }

    fn deserialize_tuple<V: Visitor<'de>>(
        self,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        self.deserialize_any(visitor)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        self.deserialize_any(visitor)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        self.deserialize_any(visitor)
    }
}

struct SeqDe<'a, 'p> {
    items: std::slice::Iter<'a, (usize, Node)>,
    path: &'p [Seg],
}

impl<'de> de::SeqAccess<'de> for SeqDe<'_, '_> {
    type Error = DeError;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, DeError> {
        let Some((index, node)) = self.items.next() else {
            return Ok(None);
        };
        let mut path = self.path.to_vec();
        path.push(Seg::Index(*index));
        let de = NodeDe { node, path };
        let at = de.position();
        seed.deserialize(de).map(Some).map_err(|e| at.locate(e))
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.items.len())
    }
}

struct MapDe<'a, 'p> {
    entries: std::slice::Iter<'a, (Node, Node)>,
    value: Option<(&'a Node, Vec<Seg>)>,
    path: &'p [Seg],
}

impl<'de> de::MapAccess<'de> for MapDe<'_, '_> {
    type Error = DeError;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, DeError> {
        let Some((key, value)) = self.entries.next() else {
            return Ok(None);
        };
        let mut path = self.path.to_vec();
        path.push(Seg::Key(match &key.val {
            Val::Str(s) => s.clone(),
            other => other.describe(),
        }));
        let result = seed.deserialize(NodeDe {
            node: key,
            path: path.clone(),
        });
        self.value = Some((value, path));
        result.map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, DeError> {
        match self.value.take() {
            Some((node, path)) => {
                let de = NodeDe { node, path };
                let at = de.position();
                seed.deserialize(de).map_err(|e| at.locate(e))
            }
            None => Err(DeError::custom("value requested before key")),
        }
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.entries.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_split_at_markers_keeping_line_offsets() {
        let text = "%YAML 1.2\n---\na: 1\n--- \nb: 2\n---x: 3\n...\n---\n";
        let chunks = split_documents(text);
        let got: Vec<_> = chunks
            .iter()
            .map(|(c, line)| (*line, c.lines().count()))
            .collect();
        // The directive stays with the document it opens; `---x` is not a marker.
        assert_eq!(got, [(0, 3), (3, 4), (7, 1)]);
        assert_eq!(split_documents(""), [("", 0)]);
    }

    #[test]
    fn closest_accepts_small_typos_only() {
        let fields = ["replicas", "template", "strategy", "nodeSelector"];
        assert_eq!(closest("replica", &fields), Some("replicas"));
        assert_eq!(closest("NodeSelecter", &fields), Some("nodeSelector"));
        assert_eq!(closest("image", &fields), None);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }

    #[test]
    fn spanned_nodes_keep_positions_of_keys_values_and_items() {
        let docs = parse_nodes("a:\n  - x\n  - {b: 2}\n").unwrap();
        let a = docs[0].get("a").unwrap();
        let Val::Seq(items) = &a.val else {
            panic!("seq")
        };
        let b = items[1].1.get("b").unwrap();
        assert_eq!((items[0].1.line, items[0].1.column), (2, 5));
        assert_eq!(
            (b.line, b.column, matches!(b.val, Val::UInt(2))),
            (3, 9, true)
        );
    }
}
