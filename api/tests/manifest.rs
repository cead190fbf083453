//! Manifest parsing end to end: every validation rule with its message and position, several
//! errors at once, multi-document files, limits, and the example manifests of `manifests/`.

use gantry_api::manifest::{
    check_unique, parse, validate_service_spec, ManifestError, MAX_MANIFEST_BYTES, MAX_REPLICAS,
};
use gantry_api::model::ServiceSpec;
use gantry_api::objects::{Kind, Object};
use proptest::prelude::*;

/// A valid envelope; the spec body given to [`doc`] starts on line 6.
const HEAD: &str = "apiVersion: gantry/v1\nkind: Service\nmetadata:\n  name: web\nspec:\n";

fn doc(spec_body: &str) -> String {
    format!("{HEAD}{spec_body}")
}

/// The errors of `text`, which must not parse.
fn errors(text: &str) -> Vec<ManifestError> {
    match parse("t.yaml", text) {
        Ok(objs) => panic!("expected errors, parsed {objs:?}"),
        Err(e) => e.0,
    }
}

/// The single error of `text`.
fn only_error(text: &str) -> ManifestError {
    let errs = errors(text);
    assert_eq!(errs.len(), 1, "expected one error, got:\n{}", render(&errs));
    errs.into_iter().next().unwrap()
}

fn render(errs: &[ManifestError]) -> String {
    errs.iter().map(|e| format!("{e}\n")).collect()
}

/// 1-based column of the first `needle` on 1-based `line` of `text`.
fn col(text: &str, line: usize, needle: &str) -> usize {
    let l = text.lines().nth(line - 1).expect("line exists");
    l.find(needle)
        .unwrap_or_else(|| panic!("{needle:?} not in {l:?}"))
        + 1
}

/// Asserts that `text` fails with exactly one error at `line`, at the first `needle` on that
/// line, with `path` and `message`.
fn expect_one(text: &str, line: usize, needle: &str, path: &str, message: &str) {
    let e = only_error(text);
    assert_eq!(
        (e.line, e.column, e.path.as_str(), e.message.as_str()),
        (line, col(text, line, needle), path, message),
        "{e}"
    );
}

fn spec_of(obj: &Object) -> ServiceSpec {
    obj.spec_as().expect("typed spec")
}

// ----- the examples -------------------------------------------------------------------------

#[test]
fn every_example_manifest_parses() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests");
    let mut seen = 0;
    let mut all = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("manifests/ exists") {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let name = path.display().to_string();
        let objs = parse(&name, &text).unwrap_or_else(|e| panic!("{e}"));
        assert!(!objs.is_empty(), "{name} holds no object");
        for obj in objs {
            assert!(
                obj.validate().is_ok(),
                "{name}: server validation refuses it"
            );
            all.push((name.clone(), obj));
        }
        seen += 1;
    }
    assert!(seen >= 4, "expected web, worker, crasher and limited");
    assert!(check_unique(&all).is_empty(), "example names collide");
}

#[test]
fn web_example_is_normalized_with_defaults_and_canonical_quantities() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../manifests/web.yaml"
    ))
    .unwrap();
    let objs = parse("web.yaml", &text).unwrap();
    let [web] = objs.as_slice() else {
        panic!("one object")
    };
    assert_eq!(
        (web.api_version.as_str(), web.kind),
        ("gantry/v1", Kind::Service)
    );
    assert_eq!(web.metadata.name, "web");
    assert_eq!(
        web.metadata.labels.get("tier").map(String::as_str),
        Some("frontend")
    );
    assert!(web.status.is_null() && web.metadata.resource_version.is_none());
    let spec = spec_of(web);
    assert_eq!(spec.replicas, 3);
    assert_eq!(spec.template.image, "gantry/sample:latest");
    // Defaults filled in the stored JSON, quantities in canonical form.
    assert_eq!(web.spec["template"]["livenessProbe"]["failureThreshold"], 3);
    assert_eq!(
        web.spec["template"]["resources"]["requests"]["memory"],
        "32Mi"
    );
    assert_eq!(web.spec["template"]["ports"][0]["protocol"], "TCP");
    // The service is exposed: port 80 of its address and node port 30080, to the named port.
    assert_eq!(spec.ports.len(), 1);
    assert_eq!(
        (spec.ports[0].port, spec.ports[0].node_port),
        (80, Some(30080))
    );
    assert_eq!(web.spec["ports"][0]["protocol"], "TCP");
}

// ----- documents ----------------------------------------------------------------------------

#[test]
fn several_documents_give_several_objects_in_order() {
    let text = format!(
        "{}---\n{}",
        doc("  template: {image: a}\n"),
        doc("  template: {image: b}\n").replace("name: web", "name: api")
    );
    let objs = parse("t.yaml", &text).unwrap();
    let names: Vec<_> = objs.iter().map(|o| o.metadata.name.as_str()).collect();
    assert_eq!(names, ["web", "api"]);
    assert_eq!(spec_of(&objs[1]).template.image, "b");
}

#[test]
fn empty_documents_are_skipped() {
    let text = format!(
        "---\n# only a comment\n---\n{}---\n...\n---\n",
        doc("  template: {image: a}\n")
    );
    assert_eq!(parse("t.yaml", &text).unwrap().len(), 1);
}

#[test]
fn marker_only_or_empty_file_gives_no_objects() {
    // Documented choice: no documents is not an error for the parser; the CLI decides.
    assert_eq!(parse("t.yaml", "---\n").unwrap(), vec![]);
    assert_eq!(parse("t.yaml", "").unwrap(), vec![]);
}

#[test]
fn errors_of_later_documents_carry_file_line_numbers() {
    let second = doc("  template: {image: b}\n  replica: 2\n").replace("name: web", "name: api");
    let text = format!("{}---\n{second}", doc("  template: {image: a}\n"));
    // First document: 6 lines; marker on 7; the second's `replica` on 7 + 7 = 14.
    expect_one(
        &text,
        14,
        "replica",
        "spec.replica",
        "unknown field `replica`, did you mean `replicas`?",
    );
}

#[test]
fn syntax_error_stops_only_its_document() {
    let text = format!(
        "{}---\nkind: [\n---\n{}",
        doc("  template: {image: a}\n  replicas: -1\n"),
        doc("  template: {image: b}\n").replace("name: web", "name: api")
    );
    let errs = errors(&text);
    assert_eq!(errs.len(), 2, "{}", render(&errs));
    assert_eq!((errs[0].line, errs[0].path.as_str()), (7, "spec.replicas"));
    assert_eq!(errs[1].line, 9, "{}", errs[1]);
    assert!(errs[1].message.contains("bracket"), "{}", errs[1]);
}

#[test]
fn one_document_with_three_problems_gives_three_errors() {
    let text = doc(concat!(
        "  replica: 3\n",                                          // line 6
        "  template:\n",                                           // 7
        "    image: a\n",                                          // 8
        "    resources: {limits: {memory: lots}}\n",               // 9
        "    ports: [{containerPort: 80}, {containerPort: 80}]\n", // 10
    ));
    let errs = errors(&text);
    let got: Vec<_> = errs
        .iter()
        .map(|e| (e.line, e.column, e.path.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            (6, 3, "spec.replica"),
            (
                9,
                col(&text, 9, "lots"),
                "spec.template.resources.limits.memory"
            ),
            (
                10,
                col(&text, 10, "80}]"),
                "spec.template.ports[1].containerPort"
            ),
        ],
        "{}",
        render(&errs)
    );
    assert!(errs[1].message.contains("memory quantity"), "{}", errs[1]);
    assert_eq!(errs[2].message, "duplicate port 80 (also ports[0])");
    assert_eq!(
        errs[2].to_string(),
        format!(
            "t.yaml:10:{}: spec.template.ports[1].containerPort: duplicate port 80 (also ports[0])",
            errs[2].column
        )
    );
}

#[test]
fn several_type_errors_are_each_reported_with_their_position() {
    let text = doc(concat!(
        "  replicas: many\n", // 6
        "  template:\n",      // 7
        "    image: a\n",     // 8
        "    ports: [{containerPort: 70000}, {containerPort: 80, protocol: SCTP}]\n", // 9
        "    restartPolicy: always\n", // 10
    ));
    let errs = errors(&text);
    let got: Vec<_> = errs.iter().map(|e| (e.line, e.path.as_str())).collect();
    assert_eq!(
        got,
        [
            (6, "spec.replicas"),
            (9, "spec.template.ports[0].containerPort"),
            (9, "spec.template.ports[1].protocol"),
            (10, "spec.template.restartPolicy"),
        ],
        "{}",
        render(&errs)
    );
    assert_eq!(
        errs[1].message,
        "invalid value: integer `70000`, expected an integer from 0 to 65535"
    );
    assert_eq!(
        errs[3].message,
        "unknown value `always`, did you mean `Always`?"
    );
}

#[test]
fn duplicate_service_names_in_one_text_are_errors() {
    let text = format!(
        "{}---\n{}",
        doc("  template: {image: a}\n"),
        doc("  template: {image: b}\n")
    );
    let e = only_error(&text);
    assert_eq!(
        (e.line, e.column, e.path.as_str()),
        (11, 9, "metadata.name")
    );
    assert_eq!(
        e.message,
        "duplicate service name \"web\" (also at t.yaml:4:9)"
    );
}

#[test]
fn duplicate_names_across_files_are_found_by_check_unique() {
    let a = parse("a.yaml", &doc("  template: {image: a}\n")).unwrap();
    let b = parse("b.yaml", &doc("  template: {image: b}\n")).unwrap();
    let all: Vec<_> = a
        .into_iter()
        .map(|o| ("a.yaml".to_string(), o))
        .chain(b.into_iter().map(|o| ("b.yaml".to_string(), o)))
        .collect();
    let errs = check_unique(&all);
    assert_eq!(errs.len(), 1);
    assert_eq!(
        errs[0].to_string(),
        "b.yaml:0:0: metadata.name: duplicate service name \"web\" (also in a.yaml)"
    );
}

// ----- limits -------------------------------------------------------------------------------

#[test]
fn alias_bomb_is_refused_with_a_limit_error() {
    let mut text = String::from("a: &a [x, x, x, x, x, x, x, x, x, x]\n");
    for (i, name) in ["b", "c", "d", "e", "f", "g", "h"].iter().enumerate() {
        let prev = ["a", "b", "c", "d", "e", "f", "g"][i];
        let refs = vec![format!("*{prev}"); 10].join(", ");
        text.push_str(&format!("{name}: &{name} [{refs}]\n"));
    }
    let started = std::time::Instant::now();
    let e = only_error(&text);
    assert!(
        started.elapsed() < std::time::Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );
    assert!(e.line > 0, "{e}");
    assert!(e.message.contains("too large or too complex"), "{e}");
    assert!(e.message.contains("alias-replayed events 10000"), "{e}");
}

#[test]
fn deep_nesting_is_refused() {
    let text = format!("{}{}", "[".repeat(200), "]".repeat(200));
    let e = only_error(&text);
    assert!(e.message.contains("depth 32"), "{e}");
}

#[test]
fn oversized_input_is_refused_naming_the_limit() {
    let text = format!(
        "{}{}",
        doc("  template: {image: a}\n"),
        "#".repeat(MAX_MANIFEST_BYTES)
    );
    let e = only_error(&text);
    assert!(
        e.message
            .contains("limit of 1048576 bytes (MAX_MANIFEST_BYTES)"),
        "{e}"
    );
}

// ----- envelope -----------------------------------------------------------------------------

#[test]
fn only_service_kind_is_accepted() {
    let text = doc("  template: {image: a}\n").replace("kind: Service", "kind: Replica");
    expect_one(
        &text,
        2,
        "Replica",
        "kind",
        "Replica objects are made by the cluster, not by manifests (only kind Service is accepted)",
    );
    let text = doc("  template: {image: a}\n").replace("kind: Service", "kind: Pod");
    expect_one(
        &text,
        2,
        "Pod",
        "kind",
        "unknown kind \"Pod\" (only kind Service is accepted)",
    );
}

#[test]
fn wrong_api_version_is_refused() {
    let text = doc("  template: {image: a}\n").replace("gantry/v1", "apps/v1");
    expect_one(
        &text,
        1,
        "apps",
        "apiVersion",
        "unsupported apiVersion \"apps/v1\" (expected gantry/v1)",
    );
}

#[test]
fn status_in_a_manifest_is_refused() {
    let text = format!(
        "{}status: {{replicas: 3}}\n",
        doc("  template: {image: a}\n")
    );
    expect_one(&text, 7, "status", "status", "status is set by the cluster");
}

#[test]
fn cluster_set_metadata_is_refused() {
    let text = doc("  template: {image: a}\n")
        .replace("  name: web\n", "  name: web\n  resourceVersion: \"4\"\n");
    expect_one(
        &text,
        5,
        "resourceVersion",
        "metadata.resourceVersion",
        "resourceVersion is set by the cluster",
    );
    let text = doc("  template: {image: a}\n")
        .replace("  name: web\n", "  name: web\n  creationTimestamp: x\n");
    expect_one(
        &text,
        5,
        "creationTimestamp",
        "metadata.creationTimestamp",
        "creationTimestamp is set by the cluster",
    );
    let text =
        doc("  template: {image: a}\n").replace("  name: web\n", "  name: web\n  lables: {a: b}\n");
    expect_one(
        &text,
        5,
        "lables",
        "metadata.lables",
        "unknown field `lables`, did you mean `labels`?",
    );
}

#[test]
fn metadata_name_must_be_a_dns_label() {
    let text = doc("  template: {image: a}\n").replace("name: web", "name: Web_1");
    expect_one(
        &text,
        4,
        "Web_1",
        "metadata.name",
        "\"Web_1\" is not a DNS-1123 label (must consist of lower-case letters, digits and '-')",
    );
}

#[test]
fn missing_spec_and_name_are_reported() {
    let errs = errors("apiVersion: gantry/v1\nkind: Service\nmetadata: {labels: {a: b}}\n");
    let msgs: Vec<_> = errs
        .iter()
        .map(|e| format!("{}:{}:{}", e.line, e.path, e.message))
        .collect();
    assert_eq!(
        msgs,
        ["1::missing field `spec`", "3:metadata:missing field `name`"],
        "{}",
        render(&errs)
    );
}

#[test]
fn a_document_that_is_not_a_mapping_is_refused() {
    let e = only_error("just text\n");
    assert_eq!(
        e.message,
        "expected a mapping with apiVersion, kind, metadata and spec, found \"just text\""
    );
}

// ----- types --------------------------------------------------------------------------------

#[test]
fn unknown_field_suggests_the_closest_name() {
    let text = doc("  template: {image: a, imagePullPolicy: Always, comand: [x]}\n");
    let errs = errors(&text);
    assert_eq!(errs.len(), 2, "{}", render(&errs));
    assert_eq!(errs[0].path, "spec.template.imagePullPolicy");
    assert!(
        errs[0]
            .message
            .starts_with("unknown field `imagePullPolicy`, expected one of `image`, `command`"),
        "{}",
        errs[0]
    );
    assert_eq!(
        (errs[1].column, errs[1].message.as_str()),
        (
            col(&text, 6, "comand"),
            "unknown field `comand`, did you mean `command`?"
        )
    );
}

#[test]
fn numbers_where_strings_belong_ask_for_quotes() {
    let text = doc("  template: {image: a, env: [{name: PORT, value: 8080}]}\n");
    expect_one(
        &text,
        6,
        "8080",
        "spec.template.env[0].value",
        "invalid type: integer `8080`, expected a string (quote it to make it a string)",
    );
}

#[test]
fn missing_required_field_names_it() {
    let text = doc("  template: {command: [x]}\n");
    expect_one(
        &text,
        6,
        "{command",
        "spec.template",
        "missing field `image`",
    );
}

#[test]
fn bad_probe_port_type_says_what_is_expected() {
    let text = doc("  template: {image: a, livenessProbe: {tcpSocket: {port: [1]}}}\n");
    expect_one(
        &text,
        6,
        "[1]",
        "spec.template.livenessProbe.tcpSocket.port",
        "expected a port number (1-65535) or a port name",
    );
}

// ----- semantics ----------------------------------------------------------------------------

fn template(lines: &str) -> String {
    doc(&format!("  template:\n    image: a\n{lines}"))
}

#[test]
fn empty_image_is_refused() {
    expect_one(
        &doc("  template: {image: \" \"}\n"),
        6,
        "\" \"",
        "spec.template.image",
        "must not be empty",
    );
}

#[test]
fn env_names_must_be_identifiers() {
    let text = template("    env: [{name: 1X, value: a}]\n");
    expect_one(
        &text,
        8,
        "1X",
        "spec.template.env[0].name",
        "\"1X\" is not a valid variable name (must start with a letter or '_')",
    );
}

#[test]
fn duplicate_env_names_are_refused() {
    let text = template("    env: [{name: A}, {name: B}, {name: A}]\n");
    expect_one(
        &text,
        8,
        "A}]",
        "spec.template.env[2].name",
        "duplicate env name \"A\" (also env[0])",
    );
}

#[test]
fn port_names_must_be_short_dns_labels() {
    let text = template("    ports: [{name: a-very-long-port-name, containerPort: 80}]\n");
    expect_one(
        &text,
        8,
        "a-very",
        "spec.template.ports[0].name",
        "\"a-very-long-port-name\" is not a valid port name (must be at most 15 characters)",
    );
    let text = template("    ports: [{name: HTTP, containerPort: 80}]\n");
    expect_one(
        &text,
        8,
        "HTTP",
        "spec.template.ports[0].name",
        "\"HTTP\" is not a valid port name (must consist of lower-case letters, digits and '-')",
    );
}

#[test]
fn duplicate_port_names_are_refused() {
    let text =
        template("    ports: [{name: http, containerPort: 80}, {name: http, containerPort: 81}]\n");
    let e = only_error(&text);
    assert_eq!(
        (e.column, e.path.as_str(), e.message.as_str()),
        (
            text.lines().nth(7).unwrap().rfind("http").unwrap() + 1,
            "spec.template.ports[1].name",
            "duplicate port name \"http\" (also ports[0])"
        )
    );
}

#[test]
fn duplicate_container_ports_are_refused_per_protocol() {
    let text = template("    ports: [{containerPort: 53}, {containerPort: 53, protocol: UDP}, {containerPort: 53}]\n");
    let e = only_error(&text);
    assert_eq!(
        (e.line, e.path.as_str(), e.message.as_str()),
        (
            8,
            "spec.template.ports[2].containerPort",
            "duplicate port 53 (also ports[0])"
        )
    );
    assert_eq!(
        e.column,
        text.lines().nth(7).unwrap().rfind("53").unwrap() + 1
    );
}

#[test]
fn port_zero_is_refused() {
    expect_one(
        &template("    ports: [{containerPort: 0}]\n"),
        8,
        "0}",
        "spec.template.ports[0].containerPort",
        "port 0 is not allowed (1-65535)",
    );
}

#[test]
fn probe_port_number_must_be_declared() {
    let text =
        template("    ports: [{containerPort: 80}]\n    livenessProbe: {httpGet: {port: 8080}}\n");
    expect_one(
        &text,
        9,
        "8080",
        "spec.template.livenessProbe.httpGet.port",
        "port 8080 is not declared in spec.template.ports",
    );
}

#[test]
fn probe_port_name_must_be_declared() {
    let text = template("    ports: [{name: http, containerPort: 80}]\n    readinessProbe: {tcpSocket: {port: web}}\n");
    expect_one(
        &text,
        9,
        "web",
        "spec.template.readinessProbe.tcpSocket.port",
        "port name \"web\" is not declared in spec.template.ports",
    );
}

#[test]
fn probe_needs_exactly_one_action() {
    let text = template("    ports: [{containerPort: 80}]\n    livenessProbe: {httpGet: {port: 80}, tcpSocket: {port: 80}}\n");
    expect_one(
        &text,
        9,
        "{httpGet",
        "spec.template.livenessProbe",
        "exactly one of exec, httpGet, tcpSocket must be set (found httpGet, tcpSocket)",
    );
    let text = template("    startupProbe: {periodSeconds: 3}\n");
    expect_one(
        &text,
        8,
        "{period",
        "spec.template.startupProbe",
        "exactly one of exec, httpGet, tcpSocket must be set (found none)",
    );
}

#[test]
fn exec_probe_command_must_not_be_empty() {
    let text = template("    livenessProbe: {exec: {command: []}}\n");
    expect_one(
        &text,
        8,
        "[]",
        "spec.template.livenessProbe.exec.command",
        "must not be empty",
    );
}

#[test]
fn probe_timings_and_thresholds_must_be_positive() {
    for field in [
        "periodSeconds",
        "timeoutSeconds",
        "failureThreshold",
        "successThreshold",
    ] {
        let text = template(&format!(
            "    readinessProbe: {{exec: {{command: [x]}}, {field}: 0}}\n"
        ));
        expect_one(
            &text,
            8,
            "0}",
            &format!("spec.template.readinessProbe.{field}"),
            "must be at least 1",
        );
    }
}

#[test]
fn liveness_and_startup_success_threshold_must_be_one() {
    for probe in ["livenessProbe", "startupProbe"] {
        let text = template(&format!(
            "    {probe}: {{exec: {{command: [x]}}, successThreshold: 2}}\n"
        ));
        expect_one(
            &text,
            8,
            "2}",
            &format!("spec.template.{probe}.successThreshold"),
            &format!("must be 1 for {probe} (as in Kubernetes)"),
        );
    }
    // Readiness may ask for several passes.
    assert!(parse(
        "t.yaml",
        &template("    readinessProbe: {exec: {command: [x]}, successThreshold: 2}\n")
    )
    .is_ok());
}

#[test]
fn http_probe_path_must_be_absolute() {
    let text = template("    ports: [{containerPort: 80}]\n    livenessProbe: {httpGet: {port: 80, path: healthz}}\n");
    expect_one(
        &text,
        9,
        "healthz",
        "spec.template.livenessProbe.httpGet.path",
        "\"healthz\" must start with '/'",
    );
}

#[test]
fn limits_below_requests_are_refused() {
    let text = template("    resources: {requests: {cpu: 500m}, limits: {cpu: 0.25}}\n");
    expect_one(
        &text,
        8,
        "0.25",
        "spec.template.resources.limits.cpu",
        "limit 250m is below the request 500m",
    );
    let text = template("    resources: {requests: {memory: 64Mi}, limits: {memory: 32Mi}}\n");
    expect_one(
        &text,
        8,
        "32Mi",
        "spec.template.resources.limits.memory",
        "limit 32Mi is below the request 64Mi",
    );
}

#[test]
fn zero_memory_limit_is_refused() {
    expect_one(
        &template("    resources: {limits: {memory: 0}}\n"),
        8,
        "0}",
        "spec.template.resources.limits.memory",
        "a zero memory limit leaves no memory for the process",
    );
}

#[test]
fn replicas_above_the_limit_are_refused() {
    let text = doc(&format!(
        "  replicas: {}\n  template: {{image: a}}\n",
        MAX_REPLICAS + 1
    ));
    expect_one(
        &text,
        6,
        "10001",
        "spec.replicas",
        "10001 replicas is above the limit of 10000 (MAX_REPLICAS)",
    );
}

#[test]
fn surge_and_unavailable_must_not_both_be_zero() {
    let text = doc("  template: {image: a}\n  strategy: {maxSurge: 0%, maxUnavailable: 0}\n");
    expect_one(
        &text,
        7,
        "{max",
        "spec.strategy",
        "maxSurge and maxUnavailable must not both be 0 (an update could never progress)",
    );
}

#[test]
fn malformed_percentages_are_refused() {
    let text =
        doc("  template: {image: a}\n  strategy: {maxSurge: 25, maxUnavailable: \"150%\"}\n");
    expect_one(
        &text,
        7,
        "\"150%\"",
        "spec.strategy.maxUnavailable",
        "malformed percentage \"150%\" (expected 0% to 100%, such as \"25%\")",
    );
    let text = doc("  template: {image: a}\n  strategy: {maxSurge: lots}\n");
    expect_one(
        &text,
        7,
        "lots",
        "spec.strategy.maxSurge",
        "malformed percentage \"lots\" (expected 0% to 100%, such as \"25%\")",
    );
}

// ----- service ports ------------------------------------------------------------------------

/// A service whose `spec.ports` is `ports` (line 7) and whose template declares the port
/// `http` (8080).
fn with_ports(ports: &str) -> String {
    doc(&format!(
        "  template: {{image: a, ports: [{{name: http, containerPort: 8080}}]}}\n  ports: {ports}\n"
    ))
}

#[test]
fn service_ports_parse_with_defaults() {
    let text = with_ports("[{name: web, port: 80, targetPort: http, nodePort: 30080}, {name: dns, port: 53, protocol: UDP}]");
    let objs = parse("t.yaml", &text).unwrap_or_else(|e| panic!("{e}"));
    let spec = spec_of(&objs[0]);
    assert_eq!(spec.ports.len(), 2);
    assert_eq!(spec.ports[0].node_port, Some(30080));
    assert_eq!(objs[0].spec["ports"][0]["protocol"], "TCP");
    assert_eq!(objs[0].spec["ports"][1]["protocol"], "UDP");
    // One unnamed port is fine, and node ports at both ends of the range too.
    assert!(parse("t.yaml", &with_ports("[{port: 80, nodePort: 30000}]")).is_ok());
    assert!(parse("t.yaml", &with_ports("[{port: 80, nodePort: 32767}]")).is_ok());
}

#[test]
fn service_port_zero_is_refused() {
    expect_one(
        &with_ports("[{port: 0}]"),
        7,
        "0}",
        "spec.ports[0].port",
        "port 0 is not allowed (1-65535)",
    );
}

#[test]
fn service_port_above_65535_is_refused() {
    expect_one(
        &with_ports("[{port: 70000}]"),
        7,
        "70000",
        "spec.ports[0].port",
        "invalid value: integer `70000`, expected an integer from 0 to 65535",
    );
}

#[test]
fn node_port_outside_the_range_is_refused() {
    let text = with_ports("[{name: a, port: 80}, {name: b, port: 81, nodePort: 8080}]");
    expect_one(
        &text,
        7,
        "8080",
        "spec.ports[1].nodePort",
        "nodePort 8080 is outside the node port range 30000-32767",
    );
    expect_one(
        &with_ports("[{port: 80, nodePort: 32768}]"),
        7,
        "32768",
        "spec.ports[0].nodePort",
        "nodePort 32768 is outside the node port range 30000-32767",
    );
}

#[test]
fn service_port_names_must_be_dns_labels() {
    expect_one(
        &with_ports("[{name: Web, port: 80}]"),
        7,
        "Web",
        "spec.ports[0].name",
        "\"Web\" is not a valid port name (must consist of lower-case letters, digits and '-')",
    );
}

#[test]
fn service_port_names_are_required_with_several_ports() {
    let text = with_ports("[{name: a, port: 80}, {port: 81}]");
    expect_one(
        &text,
        7,
        "{port: 81",
        "spec.ports[1].name",
        "a name is required when a service has several ports",
    );
}

#[test]
fn duplicate_service_ports_are_refused_per_protocol() {
    let text = with_ports(
        "[{name: a, port: 53}, {name: b, port: 53, protocol: UDP}, {name: c, port: 53}]",
    );
    let e = only_error(&text);
    assert_eq!(
        (e.line, e.column, e.path.as_str(), e.message.as_str()),
        (
            7,
            text.lines().nth(6).unwrap().rfind("53").unwrap() + 1,
            "spec.ports[2].port",
            "duplicate port 53/TCP (also ports[0])"
        )
    );
}

#[test]
fn duplicate_service_port_names_are_refused() {
    let text = with_ports("[{name: a, port: 80}, {name: a, port: 81}]");
    let e = only_error(&text);
    assert_eq!(
        (e.line, e.column, e.path.as_str(), e.message.as_str()),
        (
            7,
            text.lines().nth(6).unwrap().rfind("a,").unwrap() + 1,
            "spec.ports[1].name",
            "duplicate port name \"a\" (also ports[0])"
        )
    );
}

#[test]
fn duplicate_node_ports_are_refused() {
    let text =
        with_ports("[{name: a, port: 80, nodePort: 30080}, {name: b, port: 81, nodePort: 30080}]");
    let e = only_error(&text);
    assert_eq!(
        (e.line, e.column, e.path.as_str(), e.message.as_str()),
        (
            7,
            text.lines().nth(6).unwrap().rfind("30080").unwrap() + 1,
            "spec.ports[1].nodePort",
            "duplicate nodePort 30080/TCP (also ports[0])"
        )
    );
    // The same number over another protocol is another port.
    let text = with_ports(
        "[{name: a, port: 53, nodePort: 30053}, {name: b, port: 53, protocol: UDP, nodePort: 30053}]",
    );
    assert!(parse("t.yaml", &text).is_ok());
}

#[test]
fn named_target_port_must_be_declared() {
    expect_one(
        &with_ports("[{port: 80, targetPort: web}]"),
        7,
        "web",
        "spec.ports[0].targetPort",
        "port name \"web\" is not declared in spec.template.ports",
    );
}

#[test]
fn target_port_zero_is_refused() {
    expect_one(
        &with_ports("[{port: 80, targetPort: 0}]"),
        7,
        "0}",
        "spec.ports[0].targetPort",
        "port 0 is not allowed (1-65535)",
    );
}

#[test]
fn server_validation_checks_service_ports() {
    let mut obj = Object::new(Kind::Service, "web");
    obj.spec = serde_json::json!({"template": {"image": "a"},
        "ports": [{"name": "a", "port": 80, "nodePort": 80}]});
    assert_eq!(
        obj.validate().unwrap_err().to_string(),
        "spec: ports[0].nodePort: nodePort 80 is outside the node port range 30000-32767"
    );
}

#[test]
fn validate_service_spec_reports_paths_from_spec() {
    let spec: ServiceSpec = serde_json::from_value(serde_json::json!({
        "replicas": 1, "template": {"image": "", "ports": [{"containerPort": 0}]}
    }))
    .unwrap();
    assert_eq!(
        validate_service_spec(&spec),
        [
            (
                "spec.template.image".to_string(),
                "must not be empty".to_string()
            ),
            (
                "spec.template.ports[0].containerPort".to_string(),
                "port 0 is not allowed (1-65535)".to_string()
            ),
        ]
    );
}

#[test]
fn server_validation_checks_service_specs() {
    let mut obj = Object::new(Kind::Service, "web");
    obj.spec = serde_json::json!({"template": {"image": "a", "ports": [{"containerPort": 80}, {"containerPort": 80}]}});
    let err = obj.validate().unwrap_err();
    assert_eq!(
        err.to_string(),
        "spec: template.ports[1].containerPort: duplicate port 80 (also ports[0])"
    );
    obj.spec = serde_json::json!({"template": {"image": "a"}, "replica": 2});
    assert!(obj
        .validate()
        .unwrap_err()
        .to_string()
        .contains("unknown field `replica`"));
    obj.spec = serde_json::json!({"template": {"image": "a"}});
    assert!(obj.validate().is_ok());
    // Other kinds keep their untyped specs.
    let mut node = Object::new(Kind::Node, "n1");
    node.spec = serde_json::json!({"anything": 1});
    assert!(node.validate().is_ok());
}

proptest! {
    #[test]
    fn random_text_never_panics(text in "\\PC{0,200}") {
        let _ = parse("p.yaml", &text);
    }

    #[test]
    fn yaml_shaped_text_never_panics(
        text in "([a-zA-Z:{}\\[\\],&*!|>'\"#%@`\\- \n0-9.]|---\n|spec:|template:|ports:){0,120}"
    ) {
        let _ = parse("p.yaml", &text);
    }

    #[test]
    fn mangled_example_never_panics(cut in 0usize..700, insert in "[\\[\\]{}:&*\\- \n\"a0]{0,4}") {
        let base = include_str!("../../manifests/web.yaml");
        let cut = base.char_indices().map(|(i, _)| i).find(|i| *i >= cut).unwrap_or(base.len());
        let text = format!("{}{}{}", &base[..cut], insert, &base[cut..]);
        let _ = parse("p.yaml", &text);
    }
}
