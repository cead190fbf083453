//! The image store against hand-built `docker save` archives (Docker 1.10-24 and the OCI +
//! `manifest.json` form Docker >= 25 writes), name handling (moves, `name` = `name:latest`, ids
//! and id prefixes), and the bad-input cases `image_archives.rs` does not cover: unknown media
//! types, oversized JSON, zstd layers and hard links to entries not yet extracted. Every refused
//! archive must leave no image, no temp files and nothing outside the store.

mod common;

use common::{digest, gzip, Scratch};
use gantry_runtime::images::ImageError;

/// A tar of regular files (and hard links, `Some(target)`), names written raw.
fn layer(entries: &[(&str, &[u8], Option<&str>)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data, link) in entries {
        let mut h = tar::Header::new_gnu();
        h.as_gnu_mut().unwrap().name[..name.len()].copy_from_slice(name.as_bytes());
        match link {
            Some(t) => {
                h.set_entry_type(tar::EntryType::Link);
                h.set_link_name(t).unwrap();
                h.set_size(0);
            }
            None => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(data.len() as u64);
            }
        }
        h.set_mode(0o644);
        h.set_cksum();
        b.append(&h, if link.is_some() { &b""[..] } else { *data })
            .unwrap();
    }
    b.into_inner().unwrap()
}

fn tar_files(files: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        b.append_data(&mut h, path, data.as_slice()).unwrap();
    }
    b.into_inner().unwrap()
}

fn config_for(layers: &[Vec<u8>], cmd: &str) -> Vec<u8> {
    let diff_ids: Vec<String> = layers.iter().map(|l| digest(l)).collect();
    serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux", "created": "2026-01-01T00:00:00Z",
        "config": {"Cmd": [cmd], "Entrypoint": ["/bin/sh", "-c"], "ExposedPorts": {"8080/tcp": {}},
                   "Labels": {"a": "b"}},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }))
    .unwrap()
}

/// A Docker 1.10-24 `docker save`: `<id>.json`, `<n>/layer.tar`, `manifest.json` with RepoTags.
fn docker_save(layers: &[Vec<u8>], tags: &[&str], cmd: &str) -> Vec<u8> {
    let config = config_for(layers, cmd);
    let config_name = format!("{}.json", &digest(&config)[7..]);
    let mut files = vec![(config_name.clone(), config)];
    let mut layer_paths = Vec::new();
    for (i, l) in layers.iter().enumerate() {
        let p = format!("{i:064x}/layer.tar");
        files.push((p.clone(), l.clone()));
        files.push((format!("{i:064x}/VERSION"), b"1.0".to_vec()));
        layer_paths.push(p);
    }
    let manifest =
        serde_json::json!([{"Config": config_name, "RepoTags": tags, "Layers": layer_paths}]);
    files.push((
        "manifest.json".into(),
        serde_json::to_vec(&manifest).unwrap(),
    ));
    files.push(("repositories".into(), b"{}".to_vec()));
    tar_files(&files)
}

/// What Docker >= 25 writes: an OCI layout (`index.json`, `blobs/`) plus `manifest.json`
/// pointing into `blobs/sha256/`. `media` is the layers' media type in the OCI manifest.
fn docker25_save(layers: &[Vec<u8>], tag: &str, gz: bool, media: &str) -> Vec<u8> {
    let config = config_for(layers, "run");
    let blobs: Vec<Vec<u8>> = layers
        .iter()
        .map(|l| if gz { gzip(l) } else { l.clone() })
        .collect();
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": digest(&config), "size": config.len()},
        "layers": blobs.iter().map(|b| serde_json::json!({"mediaType": media, "digest": digest(b), "size": b.len()})).collect::<Vec<_>>(),
    }))
    .unwrap();
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": digest(&manifest),
        "size": manifest.len(), "annotations": {"io.containerd.image.name": format!("docker.io/library/{tag}"),
        "org.opencontainers.image.ref.name": tag.rsplit_once(':').map(|x| x.1).unwrap_or("latest")}}]});
    let docker = serde_json::json!([{"Config": format!("blobs/sha256/{}", &digest(&config)[7..]),
        "RepoTags": [tag],
        "Layers": blobs.iter().map(|b| format!("blobs/sha256/{}", &digest(b)[7..])).collect::<Vec<_>>()}]);
    let mut files = vec![
        (
            "oci-layout".into(),
            br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
        ),
        ("index.json".into(), serde_json::to_vec(&index).unwrap()),
        ("manifest.json".into(), serde_json::to_vec(&docker).unwrap()),
    ];
    for blob in blobs.iter().chain([&config, &manifest]) {
        files.push((format!("blobs/sha256/{}", &digest(blob)[7..]), blob.clone()));
    }
    tar_files(&files)
}

/// An OCI-only layout (no `manifest.json`) with one layer of media type `media`.
fn oci_only(layer_bytes: &[u8], media: &str, config_pad: usize) -> Vec<u8> {
    let mut cfg: serde_json::Value =
        serde_json::from_slice(&config_for(&[layer_bytes.to_vec()], "x")).unwrap();
    cfg["padding"] = serde_json::Value::String("p".repeat(config_pad));
    let config = serde_json::to_vec(&cfg).unwrap();
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": digest(&config), "size": config.len()},
        "layers": [{"mediaType": media, "digest": digest(layer_bytes), "size": layer_bytes.len()}],
    }))
    .unwrap();
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": digest(&manifest), "size": manifest.len()}]});
    let mut files = vec![
        (
            "oci-layout".into(),
            br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
        ),
        ("index.json".into(), serde_json::to_vec(&index).unwrap()),
    ];
    for blob in [layer_bytes.to_vec(), config, manifest] {
        files.push((format!("blobs/sha256/{}", &digest(&blob)[7..]), blob));
    }
    tar_files(&files)
}

#[test]
fn docker_save_archive_imports_with_repo_tags_and_config() {
    let s = Scratch::new();
    let l0 = layer(&[("bin/app", b"#!/bin/sh\n", None)]);
    let l1 = layer(&[
        ("etc/conf", b"x=1", None),
        ("etc/conf2", b"", Some("etc/conf")),
    ]);
    let img = s
        .import_as(
            &docker_save(&[l0.clone(), l1.clone()], &["web:1.0"], "serve"),
            None,
        )
        .unwrap();

    // Names come from RepoTags; layers are in manifest order, verified against diff_ids.
    assert_eq!(img.names, vec!["web:1.0".to_string()]);
    assert_eq!(img.layers, vec![digest(&l0), digest(&l1)]);
    assert_eq!(img.config.cmd, vec!["serve"]);
    assert_eq!(img.config.entrypoint, vec!["/bin/sh", "-c"]);
    assert_eq!(img.config.exposed_ports, vec!["8080/tcp"]);
    assert_eq!(img.config.labels.get("a").map(String::as_str), Some("b"));
    assert_eq!(img.created.as_deref(), Some("2026-01-01T00:00:00Z"));

    // The layers are unpacked lowest first, hard links preserved within the layer.
    let dirs = s.store.layer_dirs(&img);
    assert_eq!(
        std::fs::read(dirs[0].join("bin/app")).unwrap(),
        b"#!/bin/sh\n"
    );
    use std::os::unix::fs::MetadataExt;
    let a = std::fs::metadata(dirs[1].join("etc/conf")).unwrap();
    let b = std::fs::metadata(dirs[1].join("etc/conf2")).unwrap();
    assert_eq!(a.ino(), b.ino(), "hard link kept");
    assert_eq!(s.store.resolve("web:1.0").unwrap(), img);
}

#[test]
fn docker25_archive_with_oci_layout_and_manifest_json_imports() {
    let s = Scratch::new();
    let l0 = layer(&[("hello", b"world", None)]);
    let img = s
        .import_as(
            &docker25_save(
                std::slice::from_ref(&l0),
                "app:2",
                true,
                "application/vnd.oci.image.layer.v1.tar+gzip",
            ),
            Some("extra"),
        )
        .unwrap();
    assert!(img.names.contains(&"app:2".to_string()), "{:?}", img.names);
    assert!(
        img.names.contains(&"extra:latest".to_string()),
        "{:?}",
        img.names
    );
    assert_eq!(img.layers, vec![digest(&l0)]);
    assert_eq!(
        s.store.resolve("extra").unwrap().id,
        img.id,
        "name means name:latest"
    );
}

#[test]
fn references_resolve_by_name_id_and_unique_prefix() {
    let s = Scratch::new();
    let img = s
        .import_as(
            &docker_save(&[layer(&[("f", b"1", None)])], &["a/b:t"], "x"),
            None,
        )
        .unwrap();
    let hex = img.id.trim_start_matches("sha256:").to_string();

    assert_eq!(s.store.resolve("a/b:t").unwrap().id, img.id);
    assert_eq!(s.store.resolve(&img.id).unwrap().id, img.id, "full id");
    assert_eq!(s.store.resolve(&hex).unwrap().id, img.id, "bare hex");
    assert_eq!(
        s.store.resolve(&hex[..12]).unwrap().id,
        img.id,
        "12-hex prefix"
    );
    assert_eq!(
        s.store
            .resolve(&format!("sha256:{}", &hex[..12]))
            .unwrap()
            .id,
        img.id,
        "prefix with sha256:"
    );
    assert!(
        matches!(s.store.resolve("a/b"), Err(ImageError::NotFound(_))),
        "a/b:latest"
    );
    assert!(matches!(
        s.store.resolve("a/b:u"),
        Err(ImageError::NotFound(_))
    ));
    assert!(
        s.store.resolve(&hex[..6]).is_err(),
        "prefixes under 12 hex are not ids"
    );
}

#[test]
fn a_name_moves_to_the_newer_image_and_remove_keeps_shared_layers() {
    let s = Scratch::new();
    let shared = layer(&[("base", b"shared", None)]);
    let first = s
        .import_as(
            &docker_save(std::slice::from_ref(&shared), &["app:1"], "one"),
            None,
        )
        .unwrap();
    let second = s
        .import_as(
            &docker_save(
                &[shared.clone(), layer(&[("top", b"t", None)])],
                &["app:1"],
                "two",
            ),
            Some("app:2"),
        )
        .unwrap();

    // The tag moved; the first image stays, nameless.
    assert_eq!(s.store.resolve("app:1").unwrap().id, second.id);
    let old = s.store.resolve(&first.id).unwrap();
    assert!(old.names.is_empty(), "{:?}", old.names);
    assert_eq!(s.store.list().unwrap().len(), 2);

    // Removing the first keeps the shared layer that the second still uses.
    s.store.remove(&first.id).unwrap();
    let dirs = s.store.layer_dirs(&second);
    assert!(dirs.iter().all(|d| d.is_dir()));
    s.store.remove("app:2").unwrap();
    assert!(
        dirs.iter().all(|d| !d.exists()),
        "unused layers are deleted"
    );
    assert!(s.store.list().unwrap().is_empty());
    assert!(matches!(
        s.store.resolve("app:1"),
        Err(ImageError::NotFound(_))
    ));
}

#[test]
fn rejects_unknown_layer_media_type_and_leaves_no_image() {
    let s = Scratch::new();
    let l = layer(&[("f", b"1", None)]);
    s.expect_invalid(
        &oci_only(&l, "application/vnd.example.weird", 0),
        "unknown media type",
    );
}

#[test]
fn rejects_zstd_layer_media_type_and_magic() {
    let s = Scratch::new();
    let l = layer(&[("f", b"1", None)]);
    s.expect_invalid(
        &oci_only(&l, "application/vnd.oci.image.layer.v1.tar+zstd", 0),
        "zstd",
    );
    let mut zst = vec![0x28, 0xb5, 0x2f, 0xfd];
    zst.extend_from_slice(&[0; 64]);
    s.expect_invalid(&zst, "zstd");
}

#[test]
fn rejects_oversized_config_json() {
    let s = Scratch::new();
    let l = layer(&[("f", b"1", None)]);
    s.expect_invalid(
        &oci_only(&l, "application/vnd.oci.image.layer.v1.tar", 5 << 20),
        "limit",
    );
}

#[test]
fn rejects_hard_link_to_an_entry_not_yet_extracted() {
    let s = Scratch::new();
    let l = layer(&[("early", b"", Some("late")), ("late", b"data", None)]);
    s.expect_invalid(&docker_save(&[l], &["x:1"], "x"), "early");
}

#[test]
fn rejects_docker_save_with_a_layer_not_matching_its_diff_id() {
    let s = Scratch::new();
    let good = layer(&[("f", b"1", None)]);
    let mut archive_files = Vec::new();
    let config = config_for(&[good], "x");
    archive_files.push(("c.json".to_string(), config));
    archive_files.push(("0/layer.tar".to_string(), layer(&[("f", b"2", None)])));
    let m =
        serde_json::json!([{"Config": "c.json", "RepoTags": ["x:1"], "Layers": ["0/layer.tar"]}]);
    archive_files.push(("manifest.json".into(), serde_json::to_vec(&m).unwrap()));
    let err = s.import_as(&tar_files(&archive_files), None).unwrap_err();
    assert!(matches!(err, ImageError::DigestMismatch { .. }), "{err}");
    s.assert_untouched();
}

#[test]
fn rejects_docker_save_with_a_missing_layer() {
    let s = Scratch::new();
    let good = layer(&[("f", b"1", None)]);
    let m = serde_json::json!([{"Config": "c.json", "Layers": ["0/layer.tar"]}]);
    let files = vec![
        ("c.json".to_string(), config_for(&[good], "x")),
        ("manifest.json".to_string(), serde_json::to_vec(&m).unwrap()),
    ];
    s.expect_invalid(&tar_files(&files), "missing");
}

#[test]
fn resolving_a_name_is_fast() {
    let s = Scratch::new();
    for i in 0..20 {
        let tag = format!("img{i}:1");
        s.import_as(
            &docker_save(
                &[layer(&[("f", format!("{i}").as_bytes(), None)])],
                &[&tag],
                "x",
            ),
            None,
        )
        .unwrap();
    }
    let start = std::time::Instant::now();
    for _ in 0..200 {
        s.store.resolve("img7:1").unwrap();
    }
    let per = start.elapsed() / 200;
    eprintln!("resolve by name: {per:?}");
    // Generous for a loaded 2-core CI box; typically tens of microseconds.
    assert!(
        per < std::time::Duration::from_millis(5),
        "resolve took {per:?}"
    );
}

#[test]
fn a_later_bad_layer_leaves_no_orphan_of_the_earlier_ones() {
    let s = Scratch::new();
    let first = layer(&[("a", b"1", None)]);
    let second = layer(&[("b", b"2", None)]);
    let config = config_for(&[first.clone(), second], "x");
    let files =
        vec![
        ("c.json".to_string(), config),
        ("0/layer.tar".to_string(), first),
        ("1/layer.tar".to_string(), layer(&[("b", b"tampered", None)])),
        (
            "manifest.json".to_string(),
            serde_json::to_vec(&serde_json::json!([
                {"Config": "c.json", "RepoTags": ["x:1"], "Layers": ["0/layer.tar", "1/layer.tar"]}
            ]))
            .unwrap(),
        ),
    ];
    let err = s.import_as(&tar_files(&files), None).unwrap_err();
    assert!(matches!(err, ImageError::DigestMismatch { .. }), "{err}");
    s.assert_untouched();
}
