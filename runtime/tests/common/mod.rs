//! Shared helpers of the image store tests: digests, gzip, and a scratch store whose
//! surroundings must stay untouched by any import.
#![allow(dead_code)]

use gantry_runtime::images::{Image, ImageError, ImageStore};
use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::{Path, PathBuf};

/// The name `Scratch::import` gives.
pub const TEST_NAME: &str = "test/img:1";

/// `sha256:<hex>` of `data`.
pub fn digest(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// `data` gzip-compressed.
pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// A scratch area: the store lives in `store/`, archives beside it, and `outside/` must stay
/// untouched whatever an import does.
pub struct Scratch {
    pub dir: tempfile::TempDir,
    pub store: ImageStore,
}

impl Scratch {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("outside")).unwrap();
        let store = ImageStore::open(&dir.path().join("store")).unwrap();
        Scratch { dir, store }
    }

    /// Writes `data` to a file beside the store.
    pub fn write(&self, name: &str, data: &[u8]) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::write(&p, data).unwrap();
        p
    }

    /// Imports `data` as an archive named [`TEST_NAME`].
    pub fn import(&self, data: &[u8]) -> Result<Image, ImageError> {
        self.import_as(data, Some(TEST_NAME))
    }

    /// Imports `data` as an archive, naming it `name` when given.
    pub fn import_as(&self, data: &[u8], name: Option<&str>) -> Result<Image, ImageError> {
        let p = self.write("archive.tar", data);
        self.store.import(&p, name)
    }

    /// The store holds no image, no layer, no temp files, and nothing was written outside it.
    pub fn assert_untouched(&self) {
        let root = self.dir.path();
        assert!(
            self.store.list().unwrap().is_empty(),
            "no image was recorded"
        );
        assert!(self.store.resolve(TEST_NAME).is_err());
        let count = |dir: &str| std::fs::read_dir(root.join(dir)).unwrap().count();
        assert_eq!(count("store/tmp"), 0, "no temp files are left");
        assert_eq!(count("store/layers"), 0, "no orphan layers are left");
        assert_eq!(count("outside"), 0, "nothing was written outside the store");
        assert!(!Path::new("/tmp/gantry-escape-test").exists());
    }

    /// Imports `data`, expects an error mentioning `needle`, and checks nothing was left.
    pub fn expect_invalid(&self, data: &[u8], needle: &str) {
        let msg = self
            .import(data)
            .expect_err("the archive must be refused")
            .to_string();
        assert!(
            msg.contains(needle),
            "error {msg:?} should mention {needle:?}"
        );
        self.assert_untouched();
    }
}
