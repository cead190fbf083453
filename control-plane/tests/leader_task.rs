//! The leader-only hook: a task runs on the leader alone and moves with leadership.

mod common;

use common::*;
use futures::future::BoxFuture;
use gantry_control_plane::server::{LeaderContext, LeaderTask};
use std::sync::{Arc, Mutex};
use tokio_util::sync::CancellationToken;

/// Records which members currently run the task.
#[derive(Default)]
struct Recorder {
    running: Arc<Mutex<Vec<String>>>,
}

impl LeaderTask for Recorder {
    fn name(&self) -> &str {
        "recorder"
    }

    fn run(&self, ctx: LeaderContext, stop: CancellationToken) -> BoxFuture<'static, ()> {
        self.running.lock().unwrap().push(ctx.member.clone());
        let me = ctx.member.clone();
        let running = Arc::clone(&self.running);
        Box::pin(async move {
            stop.cancelled().await;
            running.lock().unwrap().retain(|m| *m != me);
        })
    }
}

fn running(r: &Recorder) -> Vec<String> {
    r.running.lock().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leader_task_runs_only_on_the_leader_and_moves_with_leadership() {
    init_tracing();
    let recorder = Arc::new(Recorder::default());
    let root = tempfile::tempdir().unwrap();
    let opts = Options {
        leader_tasks: vec![recorder.clone()],
        ..Options::default()
    };
    let mut members = cluster(root.path(), &opts).await;

    // Only the leader runs it.
    let leader = leader_index(&members).await;
    let leader_name = members[leader].name.clone();
    wait_for("the task on the leader only", || async {
        (running(&recorder) == vec![leader_name.clone()]).then_some(())
    })
    .await;

    // Stopping the leader stops its task; the new leader starts one.
    let mut old = members.remove(leader);
    old.stop().await;
    let new_leader = leader_index(&members).await;
    let new_name = members[new_leader].name.clone();
    assert_ne!(new_name, leader_name);
    wait_for("the task to move to the new leader", || async {
        (running(&recorder) == vec![new_name.clone()]).then_some(())
    })
    .await;
}
