//! `gantry image import|ls|rm` with the sample image in all three archive forms, run from the
//! real binary.

mod common;

use common::{require_root, sample_archive, Root};

fn archive(kind: &str) -> String {
    let oci = sample_archive();
    let path = oci.with_file_name(format!("gantry-sample.{kind}.tar"));
    assert!(
        path.exists(),
        "{} is missing: run scripts/sample-image.sh",
        path.display()
    );
    path.to_string_lossy().into_owned()
}

#[test]
fn oci_docker_save_and_rootfs_archives_all_import_and_run() {
    require_root();
    let root = Root::with_sample();
    root.ok(&[
        "image",
        "import",
        &archive("docker"),
        "--name",
        "from/docker:1",
    ]);
    root.ok(&[
        "image",
        "import",
        &archive("rootfs"),
        "--name",
        "from/rootfs",
    ]);
    let ls = root.ok(&["image", "ls"]);
    for name in ["gantry/sample", "from/docker", "from/rootfs"] {
        assert!(ls.contains(name), "{ls}");
    }
    for image in [
        "gantry/sample:latest",
        "from/docker:1",
        "from/rootfs:latest",
    ] {
        let out = root.ok(&[
            "run",
            "--rm",
            image,
            "/app/gantry-workload",
            "echo",
            "hello",
        ]);
        assert_eq!(out, "hello\n", "{image}");
    }
}

#[test]
fn images_resolve_by_id_prefix_and_rm_refuses_while_in_use() {
    let root = Root::with_sample();
    let id = root.ok(&["image", "ls", "-q"]);
    let id = id.lines().next().unwrap().to_string();
    assert_eq!(id.len(), 12);
    root.ok(&["run", "--name", "user", &id, "/bin/true"]);
    let out = root.gantry(&["image", "rm", "gantry/sample"]);
    assert_ne!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stderr).contains("used by container"));
    root.ok(&["rm", "user"]);
    root.ok(&["image", "rm", "gantry/sample"]);
    assert_eq!(root.ok(&["image", "ls", "-q"]).trim(), "");
    let layers = std::fs::read_dir(root.path().join("images/layers"))
        .unwrap()
        .count();
    assert_eq!(layers, 0, "layers no image uses are removed");
}

#[test]
fn import_of_garbage_fails_naming_the_file_and_leaves_nothing() {
    let root = Root::with_sample();
    let bad = root.path().join("garbage.tar");
    std::fs::write(&bad, b"\x1f\x8b\x08\x00 this is not gzip at all").unwrap();
    let out = root.gantry(&["image", "import", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(125));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("garbage.tar"), "{err}");
    assert_eq!(
        root.ok(&["image", "ls", "-q"]).lines().count(),
        1,
        "only the sample image"
    );
    let tmp = std::fs::read_dir(root.path().join("images/tmp"))
        .unwrap()
        .count();
    assert_eq!(tmp, 0, "no temp files left");
}
