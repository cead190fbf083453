//! The kubectl-like commands (`config`, `get`, `apply`, `diff`, `describe`, `scale`,
//! `delete`, `cordon`, `events`, `completion`) run as the real `gantry` binary against a real
//! single-member control plane on a free loopback port. Objects the controllers do not make
//! (nodes, events, statuses an agent would write) are written through the typed client, the
//! test playing that part.

mod common;

use common::{run_with_deadline, wait_for};
use gantry_api::client::Client;
use gantry_api::objects::{Kind, Object};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

const DEADLINE: Duration = Duration::from_secs(30);

/// One `gantry server --init` in a temp dir, killed by PID when dropped. The CLI config and
/// HOME point into the temp dir, so the real `~/.gantry` is never touched.
struct Cluster {
    dir: tempfile::TempDir,
    addr: String,
    server: Child,
}

impl Cluster {
    fn start() -> Cluster {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let addr = format!("127.0.0.1:{port}");
        let log = std::fs::File::create(dir.path().join("server.log")).expect("log");
        let server = Command::new(env!("CARGO_BIN_EXE_gantry"))
            .args(["server", "--name", "s1", "--init", "--listen", &addr])
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start gantry server");
        let cluster = Cluster { dir, addr, server };
        wait_for("the server to elect itself", DEADLINE, || {
            let out = cluster.run(&["get", "members", "-o", "json"]);
            out.status.success() && stdout(&out).contains("\"leader\": true")
        });
        cluster
    }

    fn config_path(&self) -> PathBuf {
        self.dir.path().join("gantry-config")
    }

    /// `gantry ARGS…` aimed at this server through `GANTRY_SERVER`.
    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = self.bare_command(args);
        cmd.env("GANTRY_SERVER", &self.addr);
        cmd
    }

    /// `gantry ARGS…` with no server given (the config decides).
    fn bare_command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_gantry"));
        cmd.args(args)
            .env_remove("GANTRY_SERVER")
            .env("GANTRY_CONFIG", self.config_path())
            .env("HOME", self.dir.path())
            .current_dir(self.dir.path());
        cmd
    }

    fn run(&self, args: &[&str]) -> Output {
        run_with_deadline(self.command(args), Duration::from_secs(60))
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "gantry {args:?} failed with {:?}: {}{}",
            out.status.code(),
            stdout(&out),
            stderr(&out)
        );
        stdout(&out)
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        std::fs::write(&path, text).unwrap();
        path
    }

    /// Runs `f` with a client of this server.
    fn with_client<T>(&self, f: impl AsyncFnOnce(&mut Client) -> T) -> T {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let mut client = Client::connect(std::slice::from_ref(&self.addr))
                .await
                .expect("connect");
            f(&mut client).await
        })
    }

    fn get(&self, kind: Kind, name: &str) -> Option<Object> {
        self.with_client(async |c: &mut Client| c.get(kind, name).await.expect("get"))
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg("-9")
            .arg(self.server.id().to_string())
            .status();
        let _ = self.server.wait();
    }
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn service_yaml(name: &str, replicas: u32, labels: &str) -> String {
    format!(
        "apiVersion: gantry/v1\nkind: Service\nmetadata:\n  name: {name}\n  labels:\n    {labels}\n\
         spec:\n  replicas: {replicas}\n  template:\n    image: gantry/sample:latest\n"
    )
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

#[test]
fn apply_reports_created_then_unchanged_then_configured() {
    let cluster = Cluster::start();
    let file = cluster.write("web.yaml", &service_yaml("web", 2, "app: web"));
    assert_eq!(
        cluster.ok(&["apply", "-f", p(&file)]),
        "service/web created\n"
    );
    // Applying the same file again changes nothing, even after the controller wrote status.
    assert_eq!(
        cluster.ok(&["apply", "-f", p(&file)]),
        "service/web unchanged\n"
    );
    cluster.write("web.yaml", &service_yaml("web", 3, "app: web"));
    assert_eq!(
        cluster.ok(&["apply", "-f", p(&file)]),
        "service/web configured\n"
    );
    let stored = cluster.get(Kind::Service, "web").expect("stored");
    assert_eq!(stored.spec["replicas"], 3);
    // A label change alone is a change too.
    cluster.write("web.yaml", &service_yaml("web", 3, "app: web2"));
    assert_eq!(
        cluster.ok(&["apply", "-f", p(&file)]),
        "service/web configured\n"
    );
}

#[test]
fn apply_of_invalid_file_prints_positioned_errors_and_sends_nothing() {
    let cluster = Cluster::start();
    let good = cluster.write("good.yaml", &service_yaml("good", 1, "app: good"));
    let bad = cluster.write(
        "bad.yaml",
        "apiVersion: gantry/v1\nkind: Service\nmetadata:\n  name: bad\nspec:\n  replica: 2\n  \
         template:\n    image: x\n",
    );
    let out = cluster.run(&["apply", "-f", p(&good), "-f", p(&bad)]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    let bad_name = bad.display().to_string();
    assert!(
        err.lines()
            .any(|l| l.starts_with(&format!("{bad_name}:6:")) && l.contains("replica")),
        "errors name file:line:col and the field: {err}"
    );
    assert!(err.contains("nothing was sent"), "{err}");
    assert_eq!(stdout(&out), "", "nothing reported as applied");
    // The valid file was not applied either.
    let out = cluster.run(&["get", "services"]);
    assert!(out.status.success());
    assert_eq!(stdout(&out), "");
    assert!(
        stderr(&out).contains("No services found"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn apply_of_directory_applies_its_manifests_in_name_order() {
    let cluster = Cluster::start();
    cluster.write("dir/b.yml", &service_yaml("bravo", 1, "app: b"));
    cluster.write("dir/a.yaml", &service_yaml("alpha", 1, "app: a"));
    cluster.write(
        "dir/c.json",
        r#"{"apiVersion": "gantry/v1", "kind": "Service", "metadata": {"name": "charlie"},
            "spec": {"replicas": 1, "template": {"image": "gantry/sample:latest"}}}"#,
    );
    cluster.write("dir/notes.txt", "not a manifest");
    let dir = cluster.dir.path().join("dir");
    assert_eq!(
        cluster.ok(&["apply", "-f", p(&dir)]),
        "service/alpha created\nservice/bravo created\nservice/charlie created\n"
    );
}

#[test]
fn dry_run_reports_but_sends_nothing() {
    let cluster = Cluster::start();
    let file = cluster.write("web.yaml", &service_yaml("web", 1, "app: web"));
    assert_eq!(
        cluster.ok(&["apply", "-f", p(&file), "--dry-run"]),
        "service/web created (dry run)\n"
    );
    assert!(cluster.get(Kind::Service, "web").is_none());
    cluster.ok(&["apply", "-f", p(&file)]);
    let before = cluster.get(Kind::Service, "web").unwrap();
    cluster.write("web.yaml", &service_yaml("web", 4, "app: web"));
    assert_eq!(
        cluster.ok(&["apply", "-f", p(&file), "--dry-run"]),
        "service/web configured (dry run)\n"
    );
    assert_eq!(cluster.get(Kind::Service, "web").unwrap().spec, before.spec);
}

#[test]
fn diff_exits_zero_when_equal_and_one_with_the_changed_lines() {
    let cluster = Cluster::start();
    let file = cluster.write("web.yaml", &service_yaml("web", 2, "app: web"));
    // Not there yet: everything is an addition.
    let out = cluster.run(&["diff", "-f", p(&file)]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stdout(&out).contains("+  replicas: 2"), "{}", stdout(&out));
    cluster.ok(&["apply", "-f", p(&file)]);
    let out = cluster.run(&["diff", "-f", p(&file)]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    assert_eq!(stdout(&out), "");
    cluster.write("web.yaml", &service_yaml("web", 5, "app: web"));
    let out = cluster.run(&["diff", "-f", p(&file)]);
    assert_eq!(out.status.code(), Some(1));
    let text = stdout(&out);
    assert!(text.contains("--- service/web (live)"), "{text}");
    assert!(text.contains("+++ service/web (applied)"), "{text}");
    assert!(text.contains("-  replicas: 2\n+  replicas: 5"), "{text}");
    // A broken manifest is an error, not a difference.
    let bad = cluster.write("bad.yaml", "kind: Service\nmetadata: {name: Bad}\n");
    assert_eq!(cluster.run(&["diff", "-f", p(&bad)]).status.code(), Some(2));
}

#[test]
fn get_prints_tables_and_whole_objects_with_kubernetes_field_names() {
    let cluster = Cluster::start();
    let file = cluster.write("web.yaml", &service_yaml("web", 2, "app: web"));
    cluster.ok(&["apply", "-f", p(&file)]);
    let table = cluster.ok(&["get", "svc"]);
    let mut lines = table.lines();
    assert_eq!(
        lines.next(),
        Some("NAME   READY   UP-TO-DATE   AVAILABLE   CLUSTER-IP   PORTS    AGE")
    );
    let row = lines.next().expect("a row");
    assert!(row.starts_with("web    0/2   "), "{row}");
    let wide = cluster.ok(&["get", "service", "web", "-o", "wide"]);
    assert!(wide.contains("gantry/sample:latest"), "{wide}");
    assert!(wide.contains("gantry.io/service=web"), "{wide}");
    // The controller writes the status; wait until it did, so status fields are there.
    wait_for("the service status", DEADLINE, || {
        let json: serde_json::Value =
            serde_json::from_str(&cluster.ok(&["get", "svc", "web", "-o", "json"])).unwrap();
        json.pointer("/status/readyReplicas").is_some()
    });
    let one: serde_json::Value =
        serde_json::from_str(&cluster.ok(&["get", "svc", "web", "-o", "json"])).unwrap();
    assert_eq!(one["kind"], "Service");
    assert_eq!(one["spec"]["replicas"], 2);
    assert_eq!(one["metadata"]["labels"]["app"], "web");
    let list: serde_json::Value =
        serde_json::from_str(&cluster.ok(&["get", "services", "-o", "json"])).unwrap();
    assert_eq!(list["kind"], "List");
    assert_eq!(list["apiVersion"], "gantry/v1");
    assert_eq!(list["items"][0]["metadata"]["name"], "web");
    let yaml = cluster.ok(&["get", "svc", "web", "-o", "yaml"]);
    assert!(yaml.contains("kind: Service"), "{yaml}");
    assert!(yaml.contains("  replicas: 2"), "{yaml}");
    assert!(yaml.contains("readyReplicas:"), "{yaml}");
    assert_eq!(cluster.ok(&["get", "svc", "-o", "name"]), "service/web\n");
    let members: serde_json::Value =
        serde_json::from_str(&cluster.ok(&["get", "members", "-o", "json"])).unwrap();
    assert_eq!(members["items"][0]["kind"], "Member");
    assert_eq!(members["items"][0]["status"]["leader"], true);
    assert_eq!(
        members["items"][0]["status"]["address"],
        cluster.addr.as_str()
    );
}

#[test]
fn services_with_ports_show_their_address_and_ports_in_get_and_describe() {
    let cluster = Cluster::start();
    let text = "apiVersion: gantry/v1\nkind: Service\nmetadata: {name: web}\nspec:\n  \
                replicas: 0\n  template:\n    image: gantry/sample:latest\n    \
                ports: [{name: http, containerPort: 8080}]\n  \
                ports: [{name: http, port: 80, targetPort: http, nodePort: 30080}]\n";
    let file = cluster.write("web.yaml", text);
    cluster.ok(&["apply", "-f", p(&file)]);
    // The network controller gives it the first address of the default service range.
    wait_for("web's clusterIP", DEADLINE, || {
        cluster
            .get(Kind::Service, "web")
            .is_some_and(|s| s.status["clusterIP"].is_string())
    });
    let table = cluster.ok(&["get", "svc"]);
    let row = table.lines().nth(1).expect("a row");
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(
        cells[..6],
        ["web", "0/0", "0", "0", "10.215.0.2", "80:30080/TCP"],
        "{table}"
    );
    let text = cluster.ok(&["describe", "service", "web"]);
    assert!(
        text.contains("Cluster IP:") && text.contains("10.215.0.2"),
        "{text}"
    );
    assert!(
        text.contains("http 80/TCP -> http, nodePort 30080"),
        "{text}"
    );
    assert!(text.contains("Network error:"), "{text}");

    // A node gets its replica subnet, shown by `get nodes -o wide` and `describe node`.
    cluster.with_client(async |c: &mut Client| {
        let mut node = Object::new(Kind::Node, "n1");
        node.spec = serde_json::json!({"address": "127.0.0.1:7100"});
        c.create(&node).await.expect("create node");
    });
    wait_for("n1's subnet", DEADLINE, || {
        cluster
            .get(Kind::Node, "n1")
            .is_some_and(|n| n.spec["replicaCidr"].is_string())
    });
    let wide = cluster.ok(&["get", "nodes", "-o", "wide"]);
    assert!(wide.lines().next().unwrap().ends_with("SUBNET"), "{wide}");
    assert!(wide.contains("10.214.0.0/24"), "{wide}");
    let text = cluster.ok(&["describe", "node", "n1"]);
    assert!(text.contains("10.214.0.0/24"), "{text}");
}

#[test]
fn server_refuses_unusable_address_ranges_before_serving() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let run = |extra: &[&str]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_gantry"));
        cmd.args([
            "server",
            "--name",
            "s1",
            "--init",
            "--listen",
            "127.0.0.1:0",
        ])
        .arg("--data-dir")
        .arg(&data)
        .args(extra);
        run_with_deadline(cmd, Duration::from_secs(30))
    };
    let out = run(&["--cluster-cidr", "10.0.0.0/8"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out),
        "gantry: --cluster-cidr 10.0.0.0/8 and --service-cidr 10.215.0.0/16 overlap: replica \
         and service addresses must be distinct\n"
    );
    let out = run(&["--node-cidr-size", "31"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("--node-cidr-size 31 leaves 2 addresses per node"),
        "{}",
        stderr(&out)
    );
    let out = run(&["--cluster-cidr", "10.214.0.0/24", "--node-cidr-size", "24"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("--node-cidr-size 24 must be longer"),
        "{}",
        stderr(&out)
    );
    // Nothing was written.
    assert!(!data.exists());
}

#[test]
fn label_selector_filters_objects() {
    let cluster = Cluster::start();
    let a = cluster.write("a.yaml", &service_yaml("front", 1, "tier: web"));
    let b = cluster.write("b.yaml", &service_yaml("db", 1, "tier: data"));
    cluster.ok(&["apply", "-f", p(&a), "-f", p(&b)]);
    assert_eq!(
        cluster.ok(&["get", "svc", "-l", "tier=web", "-o", "name"]),
        "service/front\n"
    );
    assert_eq!(
        cluster.ok(&["get", "svc", "-l", "tier!=web", "-o", "name"]),
        "service/db\n"
    );
    assert_eq!(
        cluster.ok(&["get", "svc", "-l", "tier", "-o", "name"]),
        "service/db\nservice/front\n"
    );
}

#[test]
fn get_watch_prints_a_change_made_after_it_started() {
    let cluster = Cluster::start();
    let early = cluster.write("early.yaml", &service_yaml("early", 1, "app: early"));
    cluster.ok(&["apply", "-f", p(&early)]);
    let mut child = cluster
        .command(&["get", "services", "-w"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start get -w");
    let (tx, rx) = std::sync::mpsc::channel();
    let out = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // The initial list has been printed (so the watch starts from its revision) once the
    // existing service's row is out; only then is the new one created.
    let first = rx.recv_timeout(DEADLINE).expect("header");
    assert!(first.starts_with("NAME"), "{first}");
    let row = rx.recv_timeout(DEADLINE).expect("row");
    assert!(row.starts_with("early "), "{row}");
    let file = cluster.write("late.yaml", &service_yaml("late", 1, "app: late"));
    cluster.ok(&["apply", "-f", p(&file)]);
    let deadline = std::time::Instant::now() + DEADLINE;
    let mut seen = Vec::new();
    let found = loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if line.starts_with("late ") => break true,
            Ok(line) => seen.push(line),
            Err(_) => break false,
        }
    };
    let _ = Command::new("kill").arg(child.id().to_string()).status();
    let _ = child.wait();
    assert!(found, "get -w never printed the new service; saw {seen:?}");
}

#[test]
fn scale_changes_only_that_service() {
    let cluster = Cluster::start();
    let a = cluster.write("a.yaml", &service_yaml("web", 1, "app: web"));
    let b = cluster.write("b.yaml", &service_yaml("api", 1, "app: api"));
    cluster.ok(&["apply", "-f", p(&a), "-f", p(&b)]);
    let api_before = cluster.get(Kind::Service, "api").unwrap();
    assert_eq!(
        cluster.ok(&["scale", "service", "web", "--replicas", "3"]),
        "service/web scaled\n"
    );
    let web = cluster.get(Kind::Service, "web").unwrap();
    assert_eq!(web.spec["replicas"], 3);
    assert_eq!(web.spec["template"]["image"], "gantry/sample:latest");
    let api_after = cluster.get(Kind::Service, "api").unwrap();
    assert_eq!(api_after.spec, api_before.spec);
    assert_eq!(api_after.metadata.labels, api_before.metadata.labels);
    if api_after.status == api_before.status {
        // Only the controller's status writes may move api's version; scale must not.
        assert_eq!(
            api_after.metadata.resource_version,
            api_before.metadata.resource_version
        );
    }
    let out = cluster.run(&["scale", "svc", "nope", "--replicas", "1"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stderr(&out), "gantry: service \"nope\" not found\n");
}

#[test]
fn delete_removes_services_and_reports_missing_ones() {
    let cluster = Cluster::start();
    let file = cluster.write("web.yaml", &service_yaml("web", 1, "app: web"));
    cluster.ok(&["apply", "-f", p(&file)]);
    // The controller removes the replicas after the service: whether `--wait` saw one left
    // (and said so) depends on timing; it must end with none.
    let out = cluster.ok(&["delete", "-f", p(&file), "--wait", "--timeout", "20s"]);
    let mut lines = out.lines();
    assert_eq!(lines.next(), Some("service \"web\" deleted"), "{out}");
    assert!(lines.all(|l| l == "web: 1 replicas left"), "{out}");
    assert!(cluster.get(Kind::Service, "web").is_none());
    let left =
        cluster.with_client(async |c: &mut Client| c.list(Kind::Replica).await.expect("list").0);
    assert!(
        left.is_empty(),
        "replicas left after delete --wait: {left:?}"
    );
    let out = cluster.run(&["delete", "service", "web"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("service \"web\" not found"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        cluster
            .run(&["delete", "svc", "web", "--ignore-not-found"])
            .status
            .code(),
        Some(0)
    );
}

#[test]
fn cordon_and_uncordon_flip_unschedulable() {
    let cluster = Cluster::start();
    cluster.with_client(async |c: &mut Client| {
        let mut node = Object::new(Kind::Node, "n1");
        node.spec = serde_json::json!({"address": "127.0.0.1:7100"});
        c.create(&node).await.expect("create node");
    });
    assert_eq!(cluster.ok(&["cordon", "n1"]), "node/n1 cordoned\n");
    assert_eq!(
        cluster.get(Kind::Node, "n1").unwrap().spec["unschedulable"],
        true
    );
    let table = cluster.ok(&["get", "nodes"]);
    assert!(table.contains("SchedulingDisabled"), "{table}");
    assert_eq!(cluster.ok(&["cordon", "n1"]), "node/n1 already cordoned\n");
    assert_eq!(cluster.ok(&["uncordon", "n1"]), "node/n1 uncordoned\n");
    assert_eq!(
        cluster.get(Kind::Node, "n1").unwrap().spec["unschedulable"],
        false
    );
    assert!(!cluster.ok(&["get", "no"]).contains("SchedulingDisabled"));
    let out = cluster.run(&["cordon", "ghost"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stderr(&out), "gantry: node \"ghost\" not found\n");
}

#[test]
fn describe_shows_spec_replicas_and_events() {
    let cluster = Cluster::start();
    let file = cluster.write("web.yaml", &service_yaml("web", 1, "app: web"));
    cluster.ok(&["apply", "-f", p(&file)]);
    cluster.with_client(async |c: &mut Client| {
        let spec = gantry_api::events::new_spec(
            gantry_api::model::ObjectRef {
                kind: "Service".into(),
                name: "web".into(),
            },
            gantry_api::model::EventType::Warning,
            "TestReason",
            "something the test reported",
            "test",
            &gantry_api::events::now_rfc3339_millis(),
        );
        let event = gantry_api::events::to_object(&gantry_api::events::event_name("web"), &spec);
        c.create(&event).await.expect("create event");
    });
    let text = cluster.ok(&["describe", "service", "web"]);
    assert!(text.contains("Name:"), "{text}");
    assert!(text.contains("gantry/sample:latest"), "{text}");
    assert!(text.contains("Replicas:"), "{text}");
    assert!(text.contains("TestReason"), "{text}");
    assert!(text.contains("something the test reported"), "{text}");
    let events = cluster.ok(&["events"]);
    assert!(events.starts_with("LAST SEEN"), "{events}");
    assert!(events.contains("service/web"), "{events}");
    let out = cluster.run(&["describe", "svc", "nope"]);
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn apply_wait_succeeds_once_the_service_reports_ready() {
    let cluster = Cluster::start();
    let file = cluster.write("web.yaml", &service_yaml("web", 1, "app: web"));
    let mut waiter = cluster
        .command(&["apply", "-f", p(&file), "--wait", "--timeout", "30s"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let out = waiter.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // The first progress line means the waiter has listed and is watching: from then on it
    // sees every write, including the one below (which the controller may soon overwrite).
    assert_eq!(rx.recv_timeout(DEADLINE).unwrap(), "service/web created");
    let progress = rx.recv_timeout(DEADLINE).unwrap();
    assert!(progress.starts_with("web: 0/1 ready"), "{progress}");
    // Play the agent and controller: report the service ready (CAS, retried on conflict).
    cluster.with_client(async |c: &mut Client| {
        for _ in 0..50 {
            let mut svc = c.get_existing(Kind::Service, "web").await.unwrap();
            let spec: gantry_api::model::ServiceSpec = svc.spec_as().unwrap();
            svc.status = serde_json::json!({
                "replicas": 1, "readyReplicas": 1, "updatedReplicas": 1,
                "templateHash":
                    gantry_control_plane::controllers::service::template_hash(&spec.template),
            });
            if c.update(&svc).await.is_ok() {
                return;
            }
        }
        panic!("could not write the status");
    });
    let status = waiter.wait().unwrap();
    let mut stderr_text = String::new();
    std::io::Read::read_to_string(&mut waiter.stderr.take().unwrap(), &mut stderr_text).unwrap();
    assert_eq!(status.code(), Some(0), "{stderr_text}");
    let rest: Vec<String> = rx.iter().collect();
    assert_eq!(
        rest.last().map(String::as_str),
        Some("web: 1/1 ready"),
        "{rest:?}"
    );
}

#[test]
fn apply_wait_times_out_naming_the_service_and_why() {
    let cluster = Cluster::start();
    let file = cluster.write("web.yaml", &service_yaml("web", 2, "app: web"));
    let out = cluster.run(&["apply", "-f", p(&file), "--wait", "--timeout", "2s"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.starts_with("gantry: web: 0/2 ready after 2s: "),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
}

#[test]
fn contexts_are_listed_switched_and_used() {
    let cluster = Cluster::start();
    let ok = |args: &[&str]| {
        let out = run_with_deadline(cluster.bare_command(args), Duration::from_secs(60));
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        stdout(&out)
    };
    ok(&["config", "set-context", "dev", "--server", &cluster.addr]);
    ok(&["config", "set-context", "dead", "--server", "127.0.0.1:1"]);
    let list = ok(&["config", "get-contexts"]);
    assert!(
        list.contains("*         dev"),
        "the first context is current: {list}"
    );
    // The current context is used when nothing else names a server.
    assert!(ok(&["get", "members"]).contains(&cluster.addr));
    ok(&["config", "use-context", "dead"]);
    assert!(ok(&["config", "get-contexts"]).contains("*         dead"));
    assert_eq!(ok(&["config", "current-context"]), "dead\n");
    // --context picks another one.
    assert!(ok(&["--context", "dev", "get", "members"]).contains(&cluster.addr));
    let text = std::fs::read_to_string(cluster.config_path()).unwrap();
    assert!(text.contains("current-context: dead"), "{text}");
}

#[test]
fn unknown_context_is_one_line_and_nonzero() {
    let cluster = Cluster::start();
    let out = run_with_deadline(
        cluster.bare_command(&["--context", "nope", "get", "services"]),
        Duration::from_secs(60),
    );
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("gantry: context \"nope\" not found"),
        "{err}"
    );
    let out = run_with_deadline(
        cluster.bare_command(&["config", "use-context", "nope"]),
        Duration::from_secs(60),
    );
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn unreachable_server_is_one_line_naming_every_address() {
    let cluster = Cluster::start();
    let out = run_with_deadline(
        cluster.bare_command(&["--server", "127.0.0.1:1,127.0.0.1:2", "get", "services"]),
        Duration::from_secs(60),
    );
    assert_eq!(out.status.code(), Some(125));
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("127.0.0.1:1,127.0.0.1:2"), "{err}");
    // And a list of members where a later one answers works.
    let out = run_with_deadline(
        cluster.bare_command(&[
            "--server",
            &format!("127.0.0.1:1,{}", cluster.addr),
            "get",
            "members",
        ]),
        Duration::from_secs(60),
    );
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn name_not_found_is_exit_one_with_kubectl_message() {
    let cluster = Cluster::start();
    for (resource, word) in [("svc", "service"), ("replica", "replica"), ("no", "node")] {
        let out = cluster.run(&["get", resource, "x"]);
        assert_eq!(out.status.code(), Some(1));
        assert_eq!(stderr(&out), format!("gantry: {word} \"x\" not found\n"));
    }
    let out = cluster.run(&["get", "pods"]);
    assert_eq!(out.status.code(), Some(2), "clap rejects unknown resources");
}

#[test]
fn completion_scripts_generate_for_each_shell() {
    for (shell, marker) in [
        ("bash", "_gantry()"),
        ("zsh", "#compdef gantry"),
        ("fish", "complete -c gantry"),
    ] {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_gantry"));
        cmd.args(["completion", shell]);
        let out = run_with_deadline(cmd, Duration::from_secs(30));
        assert!(out.status.success(), "{shell}: {}", stderr(&out));
        let text = stdout(&out);
        assert!(
            text.contains(marker),
            "{shell}: {}",
            &text[..text.len().min(200)]
        );
        assert!(text.contains("apply"), "{shell} completes subcommands");
    }
}
