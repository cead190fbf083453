//! `gantry get`: tables, `-o wide|json|yaml|name`, label selectors and `-w` (list, then watch
//! from the list's revision, listing again when the watch expires).
//!
//! The table columns follow kubectl's for the nearest Kubernetes kind (Deployment for
//! services, Pod for replicas). Cells read the stored JSON leniently, so an object written by
//! a newer agent or controller still prints.

use super::output::{
    age, client_error, emit, finish, lower, not_found, object_value, parse_resource, ref_name,
    render, to_json_value, user_error, Columns, OutputFormat, Resource, Selector,
};
use super::target::TargetArgs;
use clap::Args;
use gantry_api::client::{Client, ClientError};
use gantry_api::objects::{Kind, Object};
use serde_json::Value;
use std::collections::BTreeMap;
use std::time::Duration;

/// The label the service controller puts on a service's replicas.
pub const LABEL_SERVICE: &str = "gantry.io/service";

/// Arguments of `gantry get`.
#[derive(Args, Debug)]
#[command(after_help = "Examples:\n  \
    gantry get services\n  \
    gantry get svc web -o yaml\n  \
    gantry get replicas -l gantry.io/service=web -o wide\n  \
    gantry get nodes -w\n  \
    gantry get members -o json")]
pub struct GetArgs {
    /// What to list: services (svc), replicas (rep), nodes (no), members, events (ev).
    #[arg(value_parser = parse_resource, value_name = "RESOURCE")]
    pub resource: Resource,
    /// Only this object.
    pub name: Option<String>,
    /// Output format.
    #[arg(short = 'o', long, value_enum)]
    pub output: Option<OutputFormat>,
    /// Only objects whose labels match (`key=value,key!=value,key,!key`).
    #[arg(short = 'l', long, value_name = "SELECTOR")]
    pub selector: Option<String>,
    /// After printing, keep printing changes.
    #[arg(short = 'w', long)]
    pub watch: bool,
}

/// Runs `gantry get`.
pub fn run(target: &TargetArgs, args: GetArgs) -> anyhow::Result<i32> {
    finish(super::target::runtime()?.block_on(get(target, args)))
}

async fn get(target: &TargetArgs, args: GetArgs) -> anyhow::Result<i32> {
    let selector = match &args.selector {
        Some(text) => Selector::parse(text).map_err(user_error)?,
        None => Selector::default(),
    };
    let mut client = target.connect().await?;
    let Some(kind) = args.resource.kind() else {
        if args.watch {
            return Err(user_error("--watch is not supported for members"));
        }
        return print_members(&mut client, args.name.as_deref(), args.output).await;
    };
    let filter = Filter {
        name: args.name.clone(),
        selector,
    };
    let (objects, revision) = list(&mut client, kind, &filter).await?;
    if let Some(name) = &args.name {
        if objects.is_empty() && !args.watch {
            return Err(not_found(kind, name));
        }
    }
    let mut printer = Printer::new(kind, args.output, args.name.is_some());
    printer.load_context(&mut client).await?;
    printer.initial(&objects)?;
    if args.watch {
        watch(&mut client, kind, &filter, revision, &mut printer).await?;
    }
    Ok(0)
}

/// Which objects a command shows.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Only this name.
    pub name: Option<String>,
    /// Only these labels.
    pub selector: Selector,
}

impl Filter {
    /// Whether `object` passes.
    pub fn matches(&self, object: &Object) -> bool {
        self.name
            .as_ref()
            .is_none_or(|n| *n == object.metadata.name)
            && self.selector.matches(&object.metadata.labels)
    }
}

/// Lists `kind` (one object when the filter names one), sorted for display, and the revision to
/// watch from.
pub async fn list(
    client: &mut Client,
    kind: Kind,
    filter: &Filter,
) -> anyhow::Result<(Vec<Object>, u64)> {
    let (mut objects, revision) = client
        .list(kind)
        .await
        .map_err(|e| client_error(e, &format!("list {}s", lower(kind))))?;
    objects.retain(|o| filter.matches(o));
    sort_for_display(kind, &mut objects);
    Ok((objects, revision))
}

/// Events by last occurrence (oldest first), everything else by name.
pub fn sort_for_display(kind: Kind, objects: &mut [Object]) {
    if kind == Kind::Event {
        objects.sort_by(|a, b| {
            (str_at(&a.spec, "/lastTimestamp"), &a.metadata.name)
                .cmp(&(str_at(&b.spec, "/lastTimestamp"), &b.metadata.name))
        });
    } else {
        objects.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    }
}

/// Streams changes of `kind` after `revision` through `printer` until the process is stopped.
async fn watch(
    client: &mut Client,
    kind: Kind,
    filter: &Filter,
    mut revision: u64,
    printer: &mut Printer,
) -> anyhow::Result<()> {
    let mut failures = 0u32;
    loop {
        let mut stream = match client.watch(kind, revision).await {
            Ok(s) => s,
            Err(ClientError::Expired(_)) => {
                revision = relist(client, kind, filter, printer).await?;
                continue;
            }
            Err(e) if e.is_transient() && failures < 10 => {
                failures += 1;
                tokio::time::sleep(Duration::from_millis(200 * u64::from(failures))).await;
                continue;
            }
            Err(e) => return Err(client_error(e, &format!("watch {}s", lower(kind)))),
        };
        loop {
            match stream.next().await {
                Ok(Some(change)) => {
                    failures = 0;
                    revision = revision.max(change.revision);
                    if filter.matches(&change.object) {
                        if kind == Kind::Node {
                            printer.load_context(client).await?;
                        }
                        printer.change(&change.object)?;
                    }
                }
                Ok(None) => break,
                Err(ClientError::Expired(_)) => {
                    revision = relist(client, kind, filter, printer).await?;
                    break;
                }
                Err(e) if e.is_transient() && failures < 10 => {
                    failures += 1;
                    break;
                }
                Err(e) => return Err(client_error(e, &format!("watch {}s", lower(kind)))),
            }
        }
    }
}

async fn relist(
    client: &mut Client,
    kind: Kind,
    filter: &Filter,
    printer: &mut Printer,
) -> anyhow::Result<u64> {
    let (objects, revision) = list(client, kind, filter).await?;
    printer.load_context(client).await?;
    for o in &objects {
        printer.change(o)?;
    }
    Ok(revision)
}

/// Prints objects in one output format, keeping table columns aligned across `-w` updates.
pub struct Printer {
    kind: Kind,
    format: Option<OutputFormat>,
    single: bool,
    columns: Option<Columns>,
    /// Replicas per node (for the nodes table).
    replicas_per_node: BTreeMap<String, usize>,
}

impl Printer {
    /// A printer of `kind` in `format` (`None`: the table); `single` when one object was named.
    pub fn new(kind: Kind, format: Option<OutputFormat>, single: bool) -> Printer {
        Printer {
            kind,
            format,
            single,
            columns: None,
            replicas_per_node: BTreeMap::new(),
        }
    }

    /// Reads what the table needs beyond the objects themselves (replica counts of nodes).
    pub async fn load_context(&mut self, client: &mut Client) -> anyhow::Result<()> {
        if self.kind == Kind::Node && matches!(self.format, None | Some(OutputFormat::Wide)) {
            let (replicas, _) = client
                .list(Kind::Replica)
                .await
                .map_err(|e| client_error(e, "list replicas"))?;
            self.replicas_per_node = replicas_per_node(&replicas);
        }
        Ok(())
    }

    /// The first output: the table with its header, or the objects.
    pub fn initial(&mut self, objects: &[Object]) -> anyhow::Result<()> {
        match self.format {
            None | Some(OutputFormat::Wide) => {
                let wide = self.format == Some(OutputFormat::Wide);
                let headers = headers(self.kind, wide);
                let rows: Vec<Vec<String>> = objects
                    .iter()
                    .map(|o| row(o, wide, &self.replicas_per_node))
                    .collect();
                let columns = Columns::fit(&headers, &rows);
                if rows.is_empty() && !self.single {
                    eprintln!("No {}s found.", lower(self.kind));
                } else {
                    emit(&format!("{}\n", columns.line(&headers)));
                    for r in &rows {
                        emit(&format!("{}\n", columns.line(r)));
                    }
                }
                self.columns = Some(columns);
            }
            Some(OutputFormat::Name) => {
                for o in objects {
                    emit(&format!("{}\n", ref_name(o.kind, &o.metadata.name)));
                }
            }
            Some(format) => {
                let values: Vec<Value> = objects.iter().map(object_value).collect();
                emit(&render(&to_json_value(&values, !self.single), format)?);
            }
        }
        Ok(())
    }

    /// One changed object, as a row (no header) or a whole object.
    pub fn change(&mut self, object: &Object) -> anyhow::Result<()> {
        match self.format {
            None | Some(OutputFormat::Wide) => {
                let wide = self.format == Some(OutputFormat::Wide);
                let cells = row(object, wide, &self.replicas_per_node);
                let columns = self
                    .columns
                    .get_or_insert_with(|| Columns::fit(&headers(object.kind, wide), &[]));
                emit(&format!("{}\n", columns.line(&cells)));
            }
            Some(OutputFormat::Name) => {
                emit(&format!(
                    "{}\n",
                    ref_name(object.kind, &object.metadata.name)
                ));
            }
            Some(format) => {
                if format == OutputFormat::Yaml {
                    emit("---\n");
                }
                emit(&render(&object_value(object), format)?);
            }
        }
        Ok(())
    }
}

/// Counts the live replicas bound to each node.
pub fn replicas_per_node(replicas: &[Object]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for r in replicas {
        let phase = str_at(&r.status, "/phase");
        if phase == "Succeeded" || phase == "Failed" {
            continue;
        }
        if let Some(node) = r.spec.pointer("/nodeName").and_then(Value::as_str) {
            *counts.entry(node.to_string()).or_insert(0) += 1;
        }
    }
    counts
}

/// The string at a JSON pointer, or `""`.
pub fn str_at<'a>(value: &'a Value, pointer: &str) -> &'a str {
    value.pointer(pointer).and_then(Value::as_str).unwrap_or("")
}

/// The number at a JSON pointer, or 0.
pub fn u64_at(value: &Value, pointer: &str) -> u64 {
    value.pointer(pointer).and_then(Value::as_u64).unwrap_or(0)
}

/// The bool at a JSON pointer, or false.
pub fn bool_at(value: &Value, pointer: &str) -> bool {
    value
        .pointer(pointer)
        .and_then(Value::as_bool)
        .unwrap_or(false)
}

fn or_none(s: &str) -> String {
    if s.is_empty() {
        "<none>".to_string()
    } else {
        s.to_string()
    }
}

/// Table headers of `kind`.
pub fn headers(kind: Kind, wide: bool) -> Vec<&'static str> {
    let (base, extra): (&[&str], &[&str]) = match kind {
        Kind::Service => (
            &[
                "NAME",
                "READY",
                "UP-TO-DATE",
                "AVAILABLE",
                "CLUSTER-IP",
                "PORTS",
                "AGE",
            ],
            &["IMAGE", "SELECTOR"],
        ),
        Kind::Replica => (
            &["NAME", "READY", "STATUS", "RESTARTS", "AGE", "NODE"],
            &["IP", "CONTAINER"],
        ),
        Kind::Node => (
            &["NAME", "STATUS", "REPLICAS", "AGE", "VERSION"],
            &["ADDRESS", "CPU", "MEMORY", "SUBNET"],
        ),
        Kind::Event => (
            &["LAST SEEN", "TYPE", "REASON", "OBJECT", "MESSAGE"],
            &["SOURCE", "COUNT"],
        ),
    };
    let mut h = base.to_vec();
    if wide {
        h.extend_from_slice(extra);
    }
    h
}

/// A service's virtual address: `status.clusterIP`, `<pending>` while a service with ports
/// waits for one, `<none>` for a service without ports.
pub fn cluster_ip(object: &Object) -> String {
    let ip = str_at(&object.status, "/clusterIP");
    if !ip.is_empty() {
        return ip.to_string();
    }
    let has_ports = object
        .spec
        .get("ports")
        .and_then(Value::as_array)
        .is_some_and(|p| !p.is_empty());
    if has_ports { "<pending>" } else { "<none>" }.to_string()
}

/// A service's ports as kubectl prints them: `80:30080/TCP,53/UDP`.
fn ports(spec: &Value) -> String {
    let Some(ports) = spec.get("ports").and_then(Value::as_array) else {
        return "<none>".to_string();
    };
    let cells: Vec<String> = ports
        .iter()
        .map(|p| {
            let port = value_text(p.get("port"));
            let protocol = Some(str_at(p, "/protocol"))
                .filter(|s| !s.is_empty())
                .unwrap_or("TCP");
            match p.get("nodePort").and_then(Value::as_u64) {
                Some(np) => format!("{port}:{np}/{protocol}"),
                None => format!("{port}/{protocol}"),
            }
        })
        .collect();
    or_none(&cells.join(","))
}

/// The status word of a replica: its reason when set (`CrashLoopBackOff`), else its phase.
pub fn replica_status(object: &Object) -> String {
    let reason = str_at(&object.status, "/reason");
    if !reason.is_empty() {
        return reason.to_string();
    }
    let phase = str_at(&object.status, "/phase");
    if phase.is_empty() {
        "Pending".to_string()
    } else {
        phase.to_string()
    }
}

/// `Ready`/`NotReady`, plus `,SchedulingDisabled` when cordoned.
pub fn node_status(object: &Object) -> String {
    let mut s = if bool_at(&object.status, "/ready") {
        "Ready"
    } else {
        "NotReady"
    }
    .to_string();
    if bool_at(&object.spec, "/unschedulable") {
        s.push_str(",SchedulingDisabled");
    }
    s
}

/// One table row of `object`.
pub fn row(
    object: &Object,
    wide: bool,
    replicas_per_node: &BTreeMap<String, usize>,
) -> Vec<String> {
    let (spec, status) = (&object.spec, &object.status);
    let name = object.metadata.name.clone();
    let created = age(object.metadata.creation_timestamp.as_deref());
    let mut cells = match object.kind {
        Kind::Service => vec![
            name.clone(),
            format!(
                "{}/{}",
                u64_at(status, "/readyReplicas"),
                spec.pointer("/replicas")
                    .and_then(Value::as_u64)
                    .unwrap_or(1)
            ),
            u64_at(status, "/updatedReplicas").to_string(),
            u64_at(status, "/readyReplicas").to_string(),
            cluster_ip(object),
            ports(spec),
            created,
        ],
        Kind::Replica => vec![
            name.clone(),
            format!("{}/1", u8::from(bool_at(status, "/ready"))),
            replica_status(object),
            u64_at(status, "/restartCount").to_string(),
            created,
            or_none(str_at(spec, "/nodeName")),
        ],
        Kind::Node => vec![
            name.clone(),
            node_status(object),
            replicas_per_node
                .get(&name)
                .copied()
                .unwrap_or(0)
                .to_string(),
            created,
            or_none(str_at(status, "/agentVersion")),
        ],
        Kind::Event => vec![
            age(Some(str_at(spec, "/lastTimestamp")).filter(|s| !s.is_empty())),
            or_none(str_at(spec, "/type")).replace("<none>", "Normal"),
            str_at(spec, "/reason").to_string(),
            format!(
                "{}/{}",
                str_at(spec, "/involvedObject/kind").to_ascii_lowercase(),
                str_at(spec, "/involvedObject/name")
            ),
            str_at(spec, "/message").to_string(),
        ],
    };
    if wide {
        match object.kind {
            Kind::Service => {
                cells.push(or_none(str_at(spec, "/template/image")));
                cells.push(format!("{LABEL_SERVICE}={name}"));
            }
            Kind::Replica => {
                cells.push(or_none(str_at(status, "/replicaIp")));
                let id = str_at(status, "/containerId");
                cells.push(or_none(&id.chars().take(12).collect::<String>()));
            }
            Kind::Node => {
                cells.push(or_none(str_at(spec, "/address")));
                cells.push(value_text(spec.pointer("/capacity/cpu")));
                cells.push(value_text(spec.pointer("/capacity/memory")));
                cells.push(or_none(str_at(spec, "/replicaCidr")));
            }
            Kind::Event => {
                cells.push(or_none(str_at(spec, "/source")));
                cells.push(
                    spec.pointer("/count")
                        .and_then(Value::as_u64)
                        .unwrap_or(1)
                        .to_string(),
                );
            }
        }
    }
    cells
}

fn value_text(v: Option<&Value>) -> String {
    match v {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        _ => "<none>".to_string(),
    }
}

/// Prints control-plane members (`gantry get members`, `gantry members ls`).
pub async fn print_members(
    client: &mut Client,
    name: Option<&str>,
    format: Option<OutputFormat>,
) -> anyhow::Result<i32> {
    let resp = client
        .members()
        .await
        .map_err(|e| client_error(e, "members"))?;
    let mut members = resp.members;
    if let Some(name) = name {
        members.retain(|m| m.name == name);
        if members.is_empty() {
            return Err(user_error(format!("member {name:?} not found")));
        }
    }
    members.sort_by(|a, b| a.name.cmp(&b.name));
    match format {
        None | Some(OutputFormat::Wide) => {
            let rows: Vec<Vec<String>> = members
                .iter()
                .map(|m| {
                    vec![
                        m.name.clone(),
                        m.addr.clone(),
                        if m.leader {
                            "leader"
                        } else if m.voter {
                            "voter"
                        } else {
                            "learner"
                        }
                        .to_string(),
                        m.term.to_string(),
                        m.last_applied.to_string(),
                    ]
                })
                .collect();
            super::print_table(&["NAME", "ADDRESS", "ROLE", "TERM", "APPLIED"], &rows);
        }
        Some(OutputFormat::Name) => {
            for m in &members {
                println!("member/{}", m.name);
            }
        }
        Some(format) => {
            let values: Vec<Value> = members
                .iter()
                .map(|m| {
                    serde_json::json!({
                        "apiVersion": gantry_api::model::API_VERSION,
                        "kind": "Member",
                        "metadata": {"name": m.name},
                        "status": {
                            "leader": m.leader,
                            "term": m.term,
                            "lastApplied": m.last_applied,
                            "address": m.addr,
                            "voter": m.voter,
                        },
                    })
                })
                .collect();
            print!(
                "{}",
                render(&to_json_value(&values, name.is_none()), format)?
            );
        }
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replica_rows_show_the_reason_over_the_phase() {
        let mut r = Object::new(Kind::Replica, "web-abcde");
        r.spec = serde_json::json!({"service": "web", "nodeName": "n1"});
        r.status = serde_json::json!({"phase": "Pending", "reason": "CrashLoopBackOff",
            "restartCount": 4, "replicaIp": "10.0.0.5", "containerId": "0123456789abcdef"});
        let cells = row(&r, true, &BTreeMap::new());
        assert_eq!(cells[..4], ["web-abcde", "0/1", "CrashLoopBackOff", "4"]);
        assert_eq!(cells[5..], ["n1", "10.0.0.5", "0123456789ab"]);
        r.status = serde_json::json!({"phase": "Running", "ready": true});
        assert_eq!(row(&r, false, &BTreeMap::new())[1..3], ["1/1", "Running"]);
    }

    #[test]
    fn service_rows_show_the_address_and_ports_kubectl_style() {
        let mut s = Object::new(Kind::Service, "web");
        s.spec = serde_json::json!({"replicas": 2, "ports": [
            {"name": "http", "port": 80, "nodePort": 30080, "protocol": "TCP"},
            {"name": "dns", "port": 53, "protocol": "UDP"}]});
        assert_eq!(
            row(&s, false, &BTreeMap::new())[4..6],
            ["<pending>", "80:30080/TCP,53/UDP"]
        );
        s.status = serde_json::json!({"clusterIP": "10.215.0.2", "readyReplicas": 1});
        let cells = row(&s, false, &BTreeMap::new());
        assert_eq!(cells[1], "1/2");
        assert_eq!(cells[4..6], ["10.215.0.2", "80:30080/TCP,53/UDP"]);
        s.spec = serde_json::json!({"replicas": 1});
        assert_eq!(
            row(&s, false, &BTreeMap::new())[4..6],
            ["10.215.0.2", "<none>"]
        );
        s.status = serde_json::json!({});
        assert_eq!(row(&s, false, &BTreeMap::new())[4..6], ["<none>", "<none>"]);
        assert_eq!(headers(Kind::Service, false).len(), 7);
    }

    #[test]
    fn node_rows_show_readiness_cordon_and_replica_count() {
        let mut n = Object::new(Kind::Node, "n1");
        n.spec = serde_json::json!({"unschedulable": true});
        n.status = serde_json::json!({"ready": true, "agentVersion": "0.1.0"});
        let counts: BTreeMap<String, usize> = [("n1".to_string(), 2)].into_iter().collect();
        let cells = row(&n, false, &counts);
        assert_eq!(cells[1..3], ["Ready,SchedulingDisabled", "2"]);
        assert_eq!(cells[4], "0.1.0");
        n.spec = serde_json::json!({"address": "10.0.0.1:7100", "replicaCidr": "10.214.3.0/24"});
        let cells = row(&n, true, &counts);
        assert_eq!(cells.len(), headers(Kind::Node, true).len());
        assert_eq!(cells[cells.len() - 1], "10.214.3.0/24");
        n.spec = serde_json::json!({});
        assert_eq!(row(&n, true, &counts)[8], "<none>");
    }
}
