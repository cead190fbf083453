//! The runtime library driven from a multi-threaded process (as the node agent will): the
//! shim must then be exec'd as `gantry __shim`, never forked without exec.

mod common;

use common::{Root, IMAGE};
use gantry_runtime::container::{RunOptions, Runtime};
use gantry_runtime::root::RuntimeRoot;

#[test]
fn multi_threaded_starter_execs_the_shim_and_gets_the_exit_code() {
    let root = Root::with_sample();
    // A second thread makes this process multi-threaded whatever the test harness does.
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let helper = std::thread::spawn(move || rx.recv());
    let rt =
        Runtime::new(RuntimeRoot::new(root.path())).with_shim_program(env!("CARGO_BIN_EXE_gantry"));
    let spec = rt
        .create(&RunOptions {
            image: IMAGE.into(),
            command: vec!["/app/gantry-workload".into(), "exit".into(), "7".into()],
            ..Default::default()
        })
        .expect("create");
    let started = rt.start(&spec, false).expect("start");
    let shim = rt.inspect(&spec.id).unwrap().state.unwrap().shim_pid;
    let comm = std::fs::read_to_string(format!("/proc/{shim}/comm")).unwrap_or_default();
    assert!(comm.is_empty() || comm.trim() == "gantry-shim", "{comm}");
    let (code, reason) = started.wait().expect("wait");
    assert_eq!(code, 7);
    assert_eq!(reason.as_deref(), Some("Error"));
    let info = rt
        .wait(&spec.id, Some(std::time::Duration::from_secs(10)))
        .unwrap();
    assert!(!info.supervised);
    drop(tx);
    let _ = helper.join();
}
