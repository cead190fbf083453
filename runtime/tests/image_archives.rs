//! The image store against hand-built archives: every supported form, OCI whiteouts, shared
//! layers, and every kind of malicious or broken input, each of which must be refused with an
//! error naming the problem, leaving no image, no temp files, and nothing outside the store.

mod common;

use common::{digest, gzip, Scratch};
use gantry_runtime::images::ImageError;
use proptest::prelude::*;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::PathBuf;

/// One tar entry of a test layer.
enum E<'a> {
    File(&'a str, &'a [u8]),
    Dir(&'a str),
    Symlink(&'a str, &'a str),
    Hardlink(&'a str, &'a str),
    CharDev(&'a str),
}

/// Builds a tar stream, writing names raw so that hostile paths (`..`, absolute) survive.
fn tar_of(entries: &[E]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_gnu();
        let (name, kind, data, link): (&str, tar::EntryType, &[u8], Option<&str>) = match e {
            E::File(n, d) => (n, tar::EntryType::Regular, d, None),
            E::Dir(n) => (n, tar::EntryType::Directory, b"", None),
            E::Symlink(n, t) => (n, tar::EntryType::Symlink, b"", Some(t)),
            E::Hardlink(n, t) => (n, tar::EntryType::Link, b"", Some(t)),
            E::CharDev(n) => (n, tar::EntryType::Char, b"", None),
        };
        h.as_gnu_mut().unwrap().name[..name.len()].copy_from_slice(name.as_bytes());
        if let Some(t) = link {
            h.as_gnu_mut().unwrap().linkname[..t.len()].copy_from_slice(t.as_bytes());
        }
        h.set_entry_type(kind);
        h.set_size(data.len() as u64);
        h.set_mode(if kind == tar::EntryType::Directory {
            0o755
        } else {
            0o644
        });
        h.set_cksum();
        b.append(&h, data).unwrap();
    }
    b.into_inner().unwrap()
}

/// An OCI image layout archive of these layers (gzip-compressed when asked). `tamper` may
/// change the blobs after their digests were recorded.
fn oci_archive(
    layers: &[Vec<u8>],
    gz: bool,
    name: &str,
    tamper: impl Fn(&mut Vec<(String, Vec<u8>)>),
) -> Vec<u8> {
    let diff_ids: Vec<String> = layers.iter().map(|l| digest(l)).collect();
    let blobs: Vec<Vec<u8>> = layers
        .iter()
        .map(|l| if gz { gzip(l) } else { l.clone() })
        .collect();
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Cmd": ["/bin/app"], "Env": ["A=1"], "WorkingDir": "/srv", "User": "1000"},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    });
    let config = serde_json::to_vec(&config).unwrap();
    let media = if gz {
        "application/vnd.oci.image.layer.v1.tar+gzip"
    } else {
        "application/vnd.oci.image.layer.v1.tar"
    };
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": digest(&config), "size": config.len()},
        "layers": blobs.iter().map(|b| serde_json::json!({"mediaType": media, "digest": digest(b), "size": b.len()})).collect::<Vec<_>>(),
    });
    let manifest = serde_json::to_vec(&manifest).unwrap();
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": digest(&manifest),
                       "size": manifest.len(), "annotations": {"org.opencontainers.image.ref.name": name}}],
    });
    let mut files: Vec<(String, Vec<u8>)> = vec![
        (
            "oci-layout".into(),
            br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
        ),
        ("index.json".into(), serde_json::to_vec(&index).unwrap()),
    ];
    for blob in blobs.iter().chain([&config, &manifest]) {
        files.push((format!("blobs/sha256/{}", &digest(blob)[7..]), blob.clone()));
    }
    tamper(&mut files);
    let mut b = tar::Builder::new(Vec::new());
    for (path, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        b.append_data(&mut h, path, data.as_slice()).unwrap();
    }
    b.into_inner().unwrap()
}

#[test]
fn oci_layout_with_gzip_layers_imports_with_its_config_and_name() {
    let s = Scratch::new();
    let layer = tar_of(&[
        E::Dir("bin"),
        E::File("bin/app", b"#!x"),
        E::Symlink("bin/sh", "/bin/app"),
    ]);
    let img = s
        .store
        .import(
            &s.write("a.tar", &oci_archive(&[layer], true, "demo/web:2", |_| {})),
            None,
        )
        .unwrap();
    assert_eq!(img.names, vec!["demo/web:2".to_string()]);
    assert_eq!(img.config.cmd, vec!["/bin/app"]);
    assert_eq!(img.config.working_dir, "/srv");
    assert_eq!(img.config.user, "1000");
    let resolved = s.store.resolve("demo/web:2").unwrap();
    assert_eq!(resolved.id, img.id);
    assert_eq!(
        s.store.resolve(&img.id[7..19]).unwrap().id,
        img.id,
        "by 12-hex id prefix"
    );
    assert_eq!(s.store.resolve(&img.id).unwrap().id, img.id, "by full id");
    let dirs = s.store.layer_dirs(&img);
    assert_eq!(std::fs::read(dirs[0].join("bin/app")).unwrap(), b"#!x");
    assert_eq!(
        std::fs::read_link(dirs[0].join("bin/sh")).unwrap(),
        PathBuf::from("/bin/app"),
        "absolute symlink targets are kept"
    );
}

#[test]
fn whiteouts_become_overlay_whiteouts_and_opaque_dirs() {
    let s = Scratch::new();
    let base = tar_of(&[
        E::Dir("a"),
        E::File("a/gone", b"1"),
        E::Dir("b"),
        E::File("b/old", b"2"),
    ]);
    let top = tar_of(&[
        E::Dir("a"),
        E::File("a/.wh.gone", b""),
        E::Dir("b"),
        E::File("b/.wh..wh..opq", b""),
        E::File("b/new", b"3"),
    ]);
    let img = s
        .import(&oci_archive(&[base, top], false, "x", |_| {}))
        .unwrap();
    let dirs = s.store.layer_dirs(&img);
    let wh = std::fs::symlink_metadata(dirs[1].join("a/gone")).unwrap();
    assert!(
        wh.file_type().is_char_device() && wh.rdev() == 0,
        "whiteout is a 0:0 char device"
    );
    assert!(!dirs[1].join("a/.wh.gone").exists());
    let mut buf = [0u8; 4];
    let c = std::ffi::CString::new(dirs[1].join("b").to_str().unwrap()).unwrap();
    // SAFETY: valid NUL-terminated strings and a buffer of the given length.
    let n = unsafe {
        libc::lgetxattr(
            c.as_ptr(),
            c"trusted.overlay.opaque".as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    assert_eq!(n, 1, "opaque xattr set");
    assert_eq!(buf[0], b'y');
    assert!(dirs[1].join("b/new").exists());
}

#[test]
fn shared_layers_are_unpacked_once_and_kept_while_used() {
    let s = Scratch::new();
    let base = tar_of(&[E::File("base", b"shared")]);
    let one = s
        .store
        .import(
            &s.write(
                "1.tar",
                &oci_archive(
                    &[base.clone(), tar_of(&[E::File("one", b"1")])],
                    true,
                    "one",
                    |_| {},
                ),
            ),
            None,
        )
        .unwrap();
    let two = s
        .store
        .import(
            &s.write(
                "2.tar",
                &oci_archive(
                    &[base, tar_of(&[E::File("two", b"2")])],
                    false,
                    "two",
                    |_| {},
                ),
            ),
            None,
        )
        .unwrap();
    assert_eq!(one.layers[0], two.layers[0]);
    assert_eq!(
        std::fs::read_dir(s.dir.path().join("store/layers"))
            .unwrap()
            .count(),
        3
    );
    s.store.remove("one").unwrap();
    assert_eq!(
        std::fs::read_dir(s.dir.path().join("store/layers"))
            .unwrap()
            .count(),
        2,
        "the shared layer stays"
    );
    assert!(s.store.resolve("two").is_ok());
    assert!(matches!(
        s.store.resolve("one"),
        Err(ImageError::NotFound(_))
    ));
}

#[test]
fn rootfs_tarball_imports_as_one_layer() {
    let s = Scratch::new();
    let img = s
        .import(&gzip(&tar_of(&[
            E::Dir("etc"),
            E::File("etc/hostname", b"h"),
        ])))
        .unwrap();
    assert_eq!(img.layers.len(), 1);
    assert_eq!(img.names, vec!["test/img:1".to_string()]);
    assert!(s.store.layer_dirs(&img)[0].join("etc/hostname").exists());
}

#[test]
fn rejects_dotdot_entry_and_leaves_no_image() {
    let s = Scratch::new();
    s.expect_invalid(
        &oci_archive(
            &[tar_of(&[E::File("../../outside/evil", b"x")])],
            false,
            "x",
            |_| {},
        ),
        "..",
    );
    s.expect_invalid(&tar_of(&[E::File("a/../../outside/evil", b"x")]), "..");
}

#[test]
fn rejects_absolute_entry_paths() {
    let s = Scratch::new();
    s.expect_invalid(
        &oci_archive(
            &[tar_of(&[E::File("/tmp/gantry-escape-test", b"x")])],
            false,
            "x",
            |_| {},
        ),
        "absolute",
    );
}

#[test]
fn rejects_writes_through_a_symlink() {
    let s = Scratch::new();
    let outside = s.dir.path().join("outside");
    let layer = tar_of(&[
        E::Symlink("link", outside.to_str().unwrap()),
        E::File("link/evil", b"x"),
    ]);
    s.expect_invalid(&oci_archive(&[layer], false, "x", |_| {}), "symlink");
}

#[test]
fn rejects_hard_links_out_of_the_rootfs() {
    let s = Scratch::new();
    s.expect_invalid(
        &oci_archive(
            &[tar_of(&[E::Hardlink("passwd", "../../../etc/passwd")])],
            false,
            "x",
            |_| {},
        ),
        "hard link",
    );
    s.expect_invalid(
        &oci_archive(
            &[tar_of(&[E::Hardlink("passwd", "/etc/passwd")])],
            false,
            "x",
            |_| {},
        ),
        "hard link",
    );
}

#[test]
fn rejects_relative_symlinks_climbing_out() {
    let s = Scratch::new();
    s.expect_invalid(
        &oci_archive(
            &[tar_of(&[E::Dir("a"), E::Symlink("a/up", "../../../etc")])],
            false,
            "x",
            |_| {},
        ),
        "climbs out",
    );
}

#[test]
fn rejects_device_nodes() {
    let s = Scratch::new();
    s.expect_invalid(
        &oci_archive(&[tar_of(&[E::CharDev("dev/sda")])], false, "x", |_| {}),
        "device",
    );
}

#[test]
fn rejects_truncated_and_corrupt_gzip() {
    let s = Scratch::new();
    let good = oci_archive(
        &[tar_of(&[E::File("f", &[7u8; 50_000])])],
        true,
        "x",
        |_| {},
    );
    let whole = gzip(&good);
    s.expect_invalid(&whole[..whole.len() / 2], "corrupt or truncated");
    let mut flipped = whole.clone();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 0xff;
    assert!(s.import(&flipped).is_err());
    s.assert_untouched();
}

#[test]
fn rejects_wrong_digests_and_missing_blobs() {
    let s = Scratch::new();
    let layer = tar_of(&[E::File("f", b"content")]);
    let tampered = oci_archive(std::slice::from_ref(&layer), false, "x", |files| {
        let blob = files
            .iter_mut()
            .find(|(p, d)| p.starts_with("blobs/") && d.len() > 1000)
            .unwrap();
        blob.1[600] ^= 1;
    });
    s.expect_invalid(&tampered, "digest mismatch");
    let missing = oci_archive(&[layer], false, "x", |files| {
        files.retain(|(p, d)| !(p.starts_with("blobs/") && d.len() > 1000));
    });
    s.expect_invalid(&missing, "missing");
}

#[test]
fn rejects_zstd_with_a_clear_error() {
    let s = Scratch::new();
    s.expect_invalid(&[0x28, 0xb5, 0x2f, 0xfd, 0, 0, 0, 0], "zstd");
}

#[test]
fn unknown_references_are_not_found() {
    let s = Scratch::new();
    assert!(matches!(
        s.store.resolve("nope:1"),
        Err(ImageError::NotFound(_))
    ));
    assert!(s.store.resolve("").is_err());
    assert!(s.store.remove("nope").is_err());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, .. ProptestConfig::default() })]

    /// Random corruption of a valid archive never panics, and a failed import leaves nothing.
    #[test]
    fn corrupted_archives_never_panic_or_leave_partial_images(
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in proptest::option::of(any::<prop::sample::Index>()),
        gz in any::<bool>(),
    ) {
        let s = Scratch::new();
        let layer = tar_of(&[E::Dir("d"), E::File("d/f", b"hello"), E::Symlink("d/l", "f")]);
        let mut data = oci_archive(&[layer], gz, "x", |_| {});
        for (i, v) in flips {
            let at = i.index(data.len());
            data[at] ^= v;
        }
        if let Some(c) = cut {
            data.truncate(c.index(data.len()));
        }
        if s.import(&data).is_err() {
            s.assert_untouched();
        }
    }
}
