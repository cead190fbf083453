//! The runtime library driven from a multi-threaded process (as the node agent will): the
//! shim must then be exec'd as `gantry __shim`, never forked without exec.

mod common;

use common::{Root, IMAGE};
use gantry_runtime::container::{RunOptions, Runtime};
use gantry_runtime::root::RuntimeRoot;

#[test]
fn multi_threaded_starter_execs_the_shim_and_sees_the_sigkill_exit() {
    let root = Root::with_sample();
    // A second thread makes this process multi-threaded whatever the test harness does.
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let helper = std::thread::spawn(move || rx.recv());
    let rt =
        Runtime::new(RuntimeRoot::new(root.path())).with_shim_program(env!("CARGO_BIN_EXE_gantry"));
    let spec = rt
        .create(&RunOptions {
            image: IMAGE.into(),
            command: vec![
                "/app/gantry-workload".into(),
                "sleep".into(),
                "infinity".into(),
            ],
            ..Default::default()
        })
        .expect("create");
    let started = rt.start(&spec, false).expect("start");
    // The shim runs as an exec'd `gantry __shim DIR`, not as a fork of this test process.
    let shim = rt.inspect(&spec.id).unwrap().state.unwrap().shim_pid;
    let cmdline = std::fs::read(format!("/proc/{shim}/cmdline")).expect("the shim runs");
    let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
    assert!(cmdline.contains(" __shim "), "{cmdline}");
    let comm = std::fs::read_to_string(format!("/proc/{shim}/comm")).unwrap();
    assert_eq!(comm.trim(), "gantry-shim");
    // The workload's sleep ignores SIGTERM as pid 1, so stop ends it with SIGKILL.
    let info = rt
        .stop(&spec.id, std::time::Duration::from_millis(200))
        .expect("stop");
    assert!(!info.supervised);
    assert_eq!(
        started.wait().expect("wait"),
        (137, Some("Signaled(SIGKILL)".into()))
    );
    drop(tx);
    let _ = helper.join();
}
