//! `gantry describe service|replica|node NAME`: a human summary of one object: spec, status,
//! conditions, a service's replicas or a node's bound replicas, and the object's recent events
//! (oldest first, newest last).

use super::get::{bool_at, cluster_ip, headers, node_status, replica_status, row, str_at, u64_at};
use super::output::{age, client_error, finish, not_found, parse_kind, Columns};
use super::target::TargetArgs;
use super::wait::replica_service;
use clap::Args;
use gantry_api::client::Client;
use gantry_api::objects::{Kind, Object};
use serde_json::Value;
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// Arguments of `gantry describe`.
#[derive(Args, Debug)]
#[command(after_help = "Examples:\n  \
    gantry describe service web\n  \
    gantry describe replica web-x7k2p\n  \
    gantry describe node n1")]
pub struct DescribeArgs {
    /// The kind: service (svc), replica (rep), node (no).
    #[arg(value_parser = parse_kind, value_name = "KIND")]
    pub kind: Kind,
    /// The object's name.
    pub name: String,
}

/// Runs `gantry describe`.
pub fn run(target: &TargetArgs, args: DescribeArgs) -> anyhow::Result<i32> {
    finish(super::target::runtime()?.block_on(async move {
        let mut client = target.connect().await?;
        let what = format!(
            "describe {}",
            super::output::ref_name(args.kind, &args.name)
        );
        let Some(object) = client
            .get(args.kind, &args.name)
            .await
            .map_err(|e| client_error(e, &what))?
        else {
            return Err(not_found(args.kind, &args.name));
        };
        print!("{}", describe(&mut client, &object).await?);
        Ok(0)
    }))
}

/// Aligned `Key:   value` lines.
#[derive(Default)]
struct Fields(Vec<(String, String)>);

impl Fields {
    fn add(&mut self, key: &str, value: impl Into<String>) {
        let value = value.into();
        self.0.push((
            key.to_string(),
            if value.is_empty() {
                "<none>".to_string()
            } else {
                value
            },
        ));
    }

    fn render(&self, out: &mut String) {
        let width = self.0.iter().map(|(k, _)| k.len() + 1).max().unwrap_or(0);
        for (k, v) in &self.0 {
            let _ = writeln!(out, "{:<width$}  {v}", format!("{k}:"));
        }
    }
}

fn labels(object: &Object) -> String {
    object
        .metadata
        .labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

fn text(v: Option<&Value>) -> String {
    match v {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}

/// A service's ports as `http 80/TCP -> http, nodePort 30080; 53/UDP -> 5353`.
fn service_ports(spec: &Value) -> String {
    let Some(ports) = spec.get("ports").and_then(Value::as_array) else {
        return String::new();
    };
    ports
        .iter()
        .map(|p| {
            let port = text(p.get("port"));
            let protocol = Some(str_at(p, "/protocol"))
                .filter(|s| !s.is_empty())
                .unwrap_or("TCP");
            let target = match p.get("targetPort") {
                None | Some(Value::Null) => port.clone(),
                t => text(t),
            };
            let mut out = String::new();
            let name = str_at(p, "/name");
            if !name.is_empty() {
                let _ = write!(out, "{name} ");
            }
            let _ = write!(out, "{port}/{protocol} -> {target}");
            if let Some(np) = p.get("nodePort").filter(|v| !v.is_null()) {
                let _ = write!(out, ", nodePort {}", text(Some(np)));
            }
            out
        })
        .collect::<Vec<_>>()
        .join("; ")
}

fn created(object: &Object) -> String {
    match &object.metadata.creation_timestamp {
        Some(ts) => format!("{ts} ({} ago)", age(Some(ts))),
        None => String::new(),
    }
}

async fn describe(client: &mut Client, object: &Object) -> anyhow::Result<String> {
    let mut out = String::new();
    let mut f = Fields::default();
    let (spec, status) = (&object.spec, &object.status);
    f.add("Name", object.metadata.name.clone());
    f.add("Kind", object.kind.as_str());
    f.add("Labels", labels(object));
    f.add("Created", created(object));
    f.add(
        "Resource version",
        object.metadata.resource_version.clone().unwrap_or_default(),
    );
    let mut related: Vec<Object> = Vec::new();
    match object.kind {
        Kind::Service => {
            let desired = spec
                .pointer("/replicas")
                .and_then(Value::as_u64)
                .unwrap_or(1);
            f.add(
                "Replicas",
                format!(
                    "{desired} desired | {} updated | {} total | {} ready",
                    u64_at(status, "/updatedReplicas"),
                    u64_at(status, "/replicas"),
                    u64_at(status, "/readyReplicas"),
                ),
            );
            f.add("Cluster IP", cluster_ip(object));
            f.add("Service ports", service_ports(spec));
            f.add("Network error", str_at(status, "/networkError"));
            f.add("Image", str_at(spec, "/template/image"));
            f.add("Command", text(spec.pointer("/template/command")));
            f.add("Args", text(spec.pointer("/template/args")));
            f.add("Ports", text(spec.pointer("/template/ports")));
            f.add("Env", text(spec.pointer("/template/env")));
            f.add("Resources", text(spec.pointer("/template/resources")));
            f.add("Restart policy", str_at(spec, "/template/restartPolicy"));
            f.add("Liveness", text(spec.pointer("/template/livenessProbe")));
            f.add("Readiness", text(spec.pointer("/template/readinessProbe")));
            f.add("Strategy", text(spec.pointer("/strategy")));
            f.add("Node selector", text(spec.pointer("/nodeSelector")));
            f.add("Template hash", str_at(status, "/templateHash"));
            let (replicas, _) = client
                .list(Kind::Replica)
                .await
                .map_err(|e| client_error(e, "list replicas"))?;
            related = replicas
                .into_iter()
                .filter(|r| replica_service(r) == object.metadata.name)
                .collect();
        }
        Kind::Replica => {
            f.add("Service", str_at(spec, "/service"));
            f.add("Node", str_at(spec, "/nodeName"));
            f.add("Status", replica_status(object));
            f.add("Phase", str_at(status, "/phase"));
            f.add("Ready", bool_at(status, "/ready").to_string());
            f.add("Restarts", u64_at(status, "/restartCount").to_string());
            f.add("Reason", str_at(status, "/reason"));
            f.add("Message", str_at(status, "/message"));
            f.add("Last exit code", text(status.pointer("/lastExitCode")));
            f.add("IP", str_at(status, "/replicaIp"));
            f.add("Container", str_at(status, "/containerId"));
            f.add("Started", str_at(status, "/startTime"));
            f.add("Image", str_at(spec, "/template/image"));
            f.add("Template hash", str_at(spec, "/templateHash"));
        }
        Kind::Node => {
            f.add("Status", node_status(object));
            f.add("Address", str_at(spec, "/address"));
            f.add("Unschedulable", bool_at(spec, "/unschedulable").to_string());
            f.add("Reason", str_at(status, "/reason"));
            f.add("Last heartbeat", str_at(status, "/lastHeartbeat"));
            f.add("Agent version", str_at(status, "/agentVersion"));
            f.add("Capacity", text(spec.pointer("/capacity")));
            f.add("Replica CIDR", str_at(spec, "/replicaCidr"));
            f.add("Cluster CIDR", str_at(spec, "/clusterCidr"));
            f.add("Service CIDR", str_at(spec, "/serviceCidr"));
            let (replicas, _) = client
                .list(Kind::Replica)
                .await
                .map_err(|e| client_error(e, "list replicas"))?;
            related = replicas
                .into_iter()
                .filter(|r| str_at(&r.spec, "/nodeName") == object.metadata.name)
                .collect();
        }
        Kind::Event => {
            f.add("Object", text(spec.pointer("/involvedObject")));
            f.add("Type", str_at(spec, "/type"));
            f.add("Reason", str_at(spec, "/reason"));
            f.add("Message", str_at(spec, "/message"));
            f.add("Count", text(spec.pointer("/count")));
        }
    }
    f.render(&mut out);
    if let Some(conditions) = status.get("conditions").and_then(Value::as_array) {
        out.push_str("Conditions:\n");
        let rows: Vec<Vec<String>> = conditions
            .iter()
            .map(|c| {
                vec![
                    text(c.get("type")),
                    text(c.get("status")),
                    text(c.get("reason")),
                    text(c.get("message")),
                ]
            })
            .collect();
        table(&mut out, &["TYPE", "STATUS", "REASON", "MESSAGE"], &rows);
    }
    if matches!(object.kind, Kind::Service | Kind::Node) {
        out.push_str("Replicas:\n");
        if related.is_empty() {
            out.push_str("  <none>\n");
        } else {
            related.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
            let rows: Vec<Vec<String>> = related
                .iter()
                .map(|r| row(r, false, &BTreeMap::new()))
                .collect();
            table(&mut out, &headers(Kind::Replica, false), &rows);
        }
    }
    if object.kind != Kind::Event {
        out.push_str("Events:\n");
        let events = events_of(client, object.kind, &object.metadata.name).await?;
        if events.is_empty() {
            out.push_str("  <none>\n");
        } else {
            let rows: Vec<Vec<String>> = events
                .iter()
                .map(|e| {
                    let s = &e.spec;
                    vec![
                        age(Some(str_at(s, "/lastTimestamp")).filter(|t| !t.is_empty())),
                        str_at(s, "/type").to_string(),
                        str_at(s, "/reason").to_string(),
                        str_at(s, "/source").to_string(),
                        str_at(s, "/message").to_string(),
                    ]
                })
                .collect();
            table(
                &mut out,
                &["LAST SEEN", "TYPE", "REASON", "FROM", "MESSAGE"],
                &rows,
            );
        }
    }
    Ok(out)
}

fn table(out: &mut String, headers: &[&str], rows: &[Vec<String>]) {
    let columns = Columns::fit(headers, rows);
    let _ = writeln!(out, "  {}", columns.line(headers));
    for r in rows {
        let _ = writeln!(out, "  {}", columns.line(r));
    }
}

/// The events about `kind/name`, oldest first.
pub async fn events_of(client: &mut Client, kind: Kind, name: &str) -> anyhow::Result<Vec<Object>> {
    let (mut events, _) = client
        .list(Kind::Event)
        .await
        .map_err(|e| client_error(e, "list events"))?;
    events.retain(|e| {
        str_at(&e.spec, "/involvedObject/kind").eq_ignore_ascii_case(kind.as_str())
            && str_at(&e.spec, "/involvedObject/name") == name
    });
    super::get::sort_for_display(Kind::Event, &mut events);
    Ok(events)
}
