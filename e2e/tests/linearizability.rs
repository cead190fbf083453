//! A short seeded fault run: clients read, write and CAS registers while members are killed,
//! stopped and partitioned; the history must be linearizable and no acknowledged write lost.

use gantry_e2e::nemesis::{self, RunConfig};
use gantry_e2e::serial;
use std::time::Duration;

#[test]
fn registers_stay_linearizable_under_kills_stops_and_partitions() {
    let _one = serial();
    let config = RunConfig {
        seed: 20_240_601,
        duration: Duration::from_secs(15),
        clients: 3,
        keys: 3,
        servers: 3,
    };
    let report = nemesis::run(&config).expect("fault run");
    eprintln!("{report}");

    // The run exercised the cluster: faults happened and operations went through them.
    assert!(!report.faults.is_empty(), "no fault injected");
    assert!(
        report.ok > 50,
        "too few operations completed: {}",
        report.ok
    );

    // Correctness: nothing the cluster acknowledged is contradicted by what it served.
    assert_eq!(report.anomalies(), 0, "linearizability violations");
    assert!(
        report.lost.is_empty(),
        "acknowledged writes lost: {:?}",
        report.lost
    );
    assert_eq!(
        report.check.inconclusive(),
        0,
        "the checker gave up on a key"
    );
    assert!(
        report.nemesis_errors.is_empty(),
        "{:?}",
        report.nemesis_errors
    );
}
