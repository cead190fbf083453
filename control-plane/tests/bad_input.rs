//! Malformed and oversized requests get clear errors and write nothing.

mod common;

use common::*;
use gantry_api::proto::{self, ListRequest};
use gantry_control_plane::server::Bootstrap;

fn create(json: Vec<u8>) -> proto::CreateRequest {
    proto::CreateRequest {
        object: Some(proto::Object {
            kind: "Node".into(),
            name: String::new(),
            resource_version: 0,
            json,
        }),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_oversized_requests_are_refused_clearly() {
    init_tracing();
    let root = tempfile::tempdir().unwrap();
    let opts = Options::default();
    let s1 = start("s1", root.path().join("s1"), None, Bootstrap::Init, &opts)
        .await
        .expect("s1");
    wait_for("s1 to lead", || async { s1.is_leader().then_some(()) }).await;
    let mut c = s1.client().await;

    // Not JSON.
    let err = c.create(create(b"{not json".to_vec())).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(
        err.message().starts_with("object: invalid JSON"),
        "{}",
        err.message()
    );

    // Unknown kind.
    let err = c
        .create(create(
            br#"{"kind":"Pod","metadata":{"name":"a"}}"#.to_vec(),
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("Pod"), "{}", err.message());

    // Larger than the object limit (but under the message limit).
    let big = node_json(
        "big",
        serde_json::json!({ "x": "a".repeat(2 * 1024 * 1024) }),
    );
    let err = c.create(create(big)).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(
        err.message().contains("exceeds the limit"),
        "{}",
        err.message()
    );

    // Larger than the gRPC message limit: refused by the transport, naming the limit.
    let huge = node_json(
        "huge",
        serde_json::json!({ "x": "a".repeat(5 * 1024 * 1024) }),
    );
    let err = c.create(create(huge)).await.unwrap_err();
    assert!(err.message().contains("too large"), "{:?}", err);

    // Nothing was written, and the member still serves.
    let list = c
        .list(ListRequest {
            kind: "Node".into(),
            consistency: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(list.items.is_empty());
    create_node(&mut c, "ok").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_watcher_is_cut_off_with_an_error() {
    init_tracing();
    let root = tempfile::tempdir().unwrap();
    let opts = Options {
        watch_buffer: 2,
        watch_ring: 8,
        ..Options::default()
    };
    let s1 = start("s1", root.path().join("s1"), None, Bootstrap::Init, &opts)
        .await
        .expect("s1");
    wait_for("s1 to lead", || async { s1.is_leader().then_some(()) }).await;
    let mut c = s1.client().await;
    let rev = c
        .list(ListRequest {
            kind: "Node".into(),
            consistency: 0,
        })
        .await
        .unwrap()
        .into_inner()
        .revision;
    let mut w = c
        .watch(proto::WatchRequest {
            kind: "Node".into(),
            from_revision: rev,
        })
        .await
        .unwrap()
        .into_inner();

    // The watcher reads nothing while far more changes than its buffers happen. The objects
    // are large so that the HTTP/2 windows (2 MiB per stream in hyper's client) fill up too.
    let pad = "p".repeat(100 * 1024);
    for i in 0..40 {
        let name = format!("n{i}");
        c.create(create(node_json(&name, serde_json::json!({ "pad": pad }))))
            .await
            .expect("create");
    }

    // It gets what fitted, then an error telling it to list again; never all 40 events.
    let mut events = 0;
    let status = loop {
        match tokio::time::timeout(DEADLINE, w.message())
            .await
            .expect("stream answers")
        {
            Ok(Some(_)) => events += 1,
            Ok(None) => panic!("stream ended without an error after {events} events"),
            Err(status) => break status,
        }
    };
    assert!(events < 40, "{events}");
    assert_eq!(status.code(), tonic::Code::ResourceExhausted);
    assert!(
        status.message().contains("too slow"),
        "{}",
        status.message()
    );
}
