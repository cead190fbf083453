//! The image store: imports OCI image layouts, `docker save` archives and plain rootfs
//! tarballs; keeps config and manifest blobs content-addressed, unpacks each layer once into
//! `layers/<diff-id>/` (shared by every image that has it) with OCI whiteouts turned into
//! overlayfs whiteouts, and names images `name:tag`.
//!
//! Invariants:
//! - Nothing is written outside the store, whatever the archive holds: entry paths with `..`
//!   or a leading `/`, writes through symlinks, hard links out of the layer, and device nodes
//!   are refused. Absolute symlink *targets* are legal: they resolve inside the container's
//!   root at run time, never on the host.
//! - An import is all or nothing: layers unpack into `tmp/` and are renamed into place after
//!   their diff-id is verified; the image record is written last, atomically. A failed import
//!   leaves no image and no temp files.
//! - Every blob's sha256 is checked against its digest, every layer's uncompressed stream
//!   against its diff-id.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufReader, Read, Seek, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

/// Metadata files (index, manifest, config) larger than this are refused.
pub const MAX_JSON_BYTES: u64 = 4 * 1024 * 1024;

/// Why an image operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// No image has this name, id or id prefix.
    #[error("no such image: {0}")]
    NotFound(String),
    /// An id prefix matches several images.
    #[error("image reference {0} is ambiguous: give more of the id")]
    Ambiguous(String),
    /// The reference is not `name[:tag]`, `sha256:<hex>` or an id prefix.
    #[error("invalid image reference {0:?}: {1}")]
    InvalidReference(String, String),
    /// The archive breaks a rule; the message names the entry.
    #[error("invalid image archive {archive}: {reason}")]
    Invalid {
        /// The archive file.
        archive: PathBuf,
        /// What is wrong, naming the entry or field.
        reason: String,
    },
    /// A digest did not match the content.
    #[error("digest mismatch for {what}: expected {expected}, got {actual}")]
    DigestMismatch {
        /// Which blob or layer.
        what: String,
        /// The digest the archive claims.
        expected: String,
        /// The digest of the content.
        actual: String,
    },
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
}

/// The parts of an image's config a container needs.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ImageConfig {
    /// `Entrypoint`.
    pub entrypoint: Vec<String>,
    /// `Cmd`.
    pub cmd: Vec<String>,
    /// `Env`, `KEY=VALUE`.
    pub env: Vec<String>,
    /// `WorkingDir`.
    pub working_dir: String,
    /// `User`.
    pub user: String,
    /// `ExposedPorts` keys, e.g. `8080/tcp`.
    pub exposed_ports: Vec<String>,
    /// `Labels`.
    pub labels: BTreeMap<String, String>,
}

/// An imported image.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Image {
    /// `sha256:<hex>` of the config blob (synthesised for rootfs tarballs).
    pub id: String,
    /// `name:tag` references pointing at it.
    pub names: Vec<String>,
    /// Layer diff-ids, lowest first.
    pub layers: Vec<String>,
    /// Its config.
    pub config: ImageConfig,
    /// Unpacked bytes of all its layers.
    pub size: u64,
    /// The config's `created`.
    pub created: Option<String>,
    /// Unix seconds of the import.
    pub imported_at: u64,
}

/// The store under one directory.
#[derive(Debug, Clone)]
pub struct ImageStore {
    dir: PathBuf,
}

type Result<T> = std::result::Result<T, ImageError>;

fn io_err(path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> ImageError {
    let path = path.into();
    move |source| ImageError::Io { path, source }
}

impl ImageStore {
    /// Opens (creating if needed) the store at `dir`.
    pub fn open(dir: &Path) -> Result<Self> {
        for sub in ["blobs/sha256", "layers", "images", "tmp"] {
            std::fs::create_dir_all(dir.join(sub)).map_err(io_err(dir.join(sub)))?;
        }
        Ok(Self {
            dir: dir.to_path_buf(),
        })
    }

    /// Imports an archive; `name` (`repo[:tag]`) names the image in addition to (or instead
    /// of, when the archive has none) the names in the archive.
    pub fn import(&self, archive: &Path, name: Option<&str>) -> Result<Image> {
        let extra = name.map(normalize_name).transpose()?;
        let _lock = self.lock()?;
        let staging = TempDir::new(&self.dir.join("tmp"), "import")?;
        // Layers this import unpacked: a failure after them must not leave them orphaned.
        let mut created = Vec::new();
        let result = self.import_locked(archive, extra, &staging.0, &mut created);
        if result.is_err() {
            for diff_id in &created {
                let _ = std::fs::remove_dir_all(self.layer_path(diff_id));
            }
        }
        result
    }

    fn import_locked(
        &self,
        archive: &Path,
        extra: Option<String>,
        staging: &Path,
        created: &mut Vec<String>,
    ) -> Result<Image> {
        let invalid = |reason: String| ImageError::Invalid {
            archive: archive.to_path_buf(),
            reason,
        };
        let kind = detect_kind(archive)?;
        let (config_bytes, layer_files, mut names) = match kind {
            ArchiveKind::Rootfs => {
                let (diff_id, size) = self.unpack_layer(archive, archive, None, created)?;
                let config = serde_json::json!({
                    "architecture": "amd64", "os": "linux", "config": {},
                    "rootfs": {"type": "layers", "diff_ids": [diff_id]},
                });
                let bytes = serde_json::to_vec(&config).map_err(|e| invalid(e.to_string()))?;
                return self.commit(&bytes, vec![(diff_id, size)], extra.into_iter().collect());
            }
            ArchiveKind::Layout => {
                stage_archive(archive, staging)?;
                read_layout(archive, staging)?
            }
        };
        if let Some(n) = extra {
            names.push(n);
        }
        let config: RawConfig = serde_json::from_slice(&config_bytes)
            .map_err(|e| invalid(format!("image config: {e}")))?;
        let diff_ids = config.rootfs.map(|r| r.diff_ids).unwrap_or_default();
        if diff_ids.len() != layer_files.len() {
            return Err(invalid(format!(
                "config lists {} diff_ids but the manifest has {} layers",
                diff_ids.len(),
                layer_files.len()
            )));
        }
        let mut layers = Vec::new();
        for (file, diff_id) in layer_files.iter().zip(&diff_ids) {
            layers.push(self.unpack_layer(archive, file, Some(diff_id), created)?);
        }
        self.commit(&config_bytes, layers, names)
    }

    /// Writes the config blob and the image record, then points the names at it.
    fn commit(
        &self,
        config_bytes: &[u8],
        layers: Vec<(String, u64)>,
        names: Vec<String>,
    ) -> Result<Image> {
        let id = format!("sha256:{}", hex::encode(Sha256::digest(config_bytes)));
        let blob = self.blob_path(&id);
        if !blob.exists() {
            write_atomic(&blob, config_bytes)?;
        }
        let raw: RawConfig = serde_json::from_slice(config_bytes).unwrap_or_default();
        let c = raw.config.unwrap_or_default();
        let mut image = Image {
            id: id.clone(),
            names: Vec::new(),
            layers: layers.iter().map(|(d, _)| d.clone()).collect(),
            config: ImageConfig {
                entrypoint: c.entrypoint.unwrap_or_default(),
                cmd: c.cmd.unwrap_or_default(),
                env: c.env.unwrap_or_default(),
                working_dir: c.working_dir.unwrap_or_default(),
                user: c.user.unwrap_or_default(),
                exposed_ports: c
                    .exposed_ports
                    .map(|p| p.into_keys().collect())
                    .unwrap_or_default(),
                labels: c.labels.unwrap_or_default(),
            },
            size: layers.iter().map(|(_, s)| s).sum(),
            created: raw.created,
            imported_at: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
        };
        let mut repos = self.read_names()?;
        for n in names {
            repos.insert(n, id.clone());
        }
        image.names = repos
            .iter()
            .filter(|(_, v)| **v == id)
            .map(|(k, _)| k.clone())
            .collect();
        let record = serde_json::to_vec_pretty(&image)
            .map_err(|e| io_err(&self.dir)(io::Error::other(e)))?;
        write_atomic(&self.record_path(&id), &record)?;
        self.write_names(&repos)?;
        // Other images that lost a name keep their records; refresh their name lists.
        self.refresh_names(&repos)?;
        tracing::info!(image = %id, names = ?image.names, "imported");
        Ok(image)
    }

    /// Every image, newest import first.
    pub fn list(&self) -> Result<Vec<Image>> {
        let dir = self.dir.join("images");
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&dir).map_err(io_err(&dir))? {
            let path = entry.map_err(io_err(&dir))?.path();
            if path.extension().is_some_and(|e| e == "json") {
                if let Ok(img) = read_record(&path) {
                    out.push(img);
                }
            }
        }
        out.sort_by(|a, b| b.imported_at.cmp(&a.imported_at).then(a.id.cmp(&b.id)));
        Ok(out)
    }

    /// Finds an image by `name[:tag]`, `sha256:<hex>`, or a unique id prefix.
    pub fn resolve(&self, reference: &str) -> Result<Image> {
        if reference.is_empty() {
            return Err(ImageError::InvalidReference(
                reference.into(),
                "empty".into(),
            ));
        }
        let hex_part = reference.strip_prefix("sha256:").unwrap_or(reference);
        let looks_like_id = reference.starts_with("sha256:")
            || (hex_part.len() >= 12 && hex_part.chars().all(|c| c.is_ascii_hexdigit()));
        if !reference.starts_with("sha256:") {
            if let Ok(name) = normalize_name(reference) {
                if let Some(id) = self.read_names()?.get(&name) {
                    return read_record(&self.record_path(id));
                }
            }
        }
        if looks_like_id && hex_part.chars().all(|c| c.is_ascii_hexdigit()) && !hex_part.is_empty()
        {
            let dir = self.dir.join("images");
            let mut found = Vec::new();
            for entry in std::fs::read_dir(&dir).map_err(io_err(&dir))?.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if let Some(h) = name.strip_suffix(".json") {
                    if h.starts_with(hex_part) {
                        found.push(entry.path());
                    }
                }
            }
            return match found.as_slice() {
                [one] => read_record(one),
                [] => Err(ImageError::NotFound(reference.into())),
                _ => Err(ImageError::Ambiguous(reference.into())),
            };
        }
        Err(ImageError::NotFound(reference.into()))
    }

    /// Removes an image and its names; layers and blobs no other image uses go too.
    pub fn remove(&self, reference: &str) -> Result<Image> {
        let _lock = self.lock()?;
        let image = self.resolve(reference)?;
        let mut repos = self.read_names()?;
        repos.retain(|_, v| *v != image.id);
        self.write_names(&repos)?;
        let record = self.record_path(&image.id);
        std::fs::remove_file(&record).map_err(io_err(&record))?;
        let remaining = self.list()?;
        for layer in &image.layers {
            if !remaining.iter().any(|i| i.layers.contains(layer)) {
                let dir = self.layer_path(layer);
                let _ = std::fs::remove_dir_all(&dir);
            }
        }
        if !remaining.iter().any(|i| i.id == image.id) {
            let _ = std::fs::remove_file(self.blob_path(&image.id));
        }
        Ok(image)
    }

    /// The unpacked layer directories, lowest first.
    pub fn layer_dirs(&self, image: &Image) -> Vec<PathBuf> {
        image.layers.iter().map(|d| self.layer_path(d)).collect()
    }

    fn layer_path(&self, diff_id: &str) -> PathBuf {
        self.dir
            .join("layers")
            .join(diff_id.trim_start_matches("sha256:"))
    }

    fn blob_path(&self, digest: &str) -> PathBuf {
        self.dir
            .join("blobs/sha256")
            .join(digest.trim_start_matches("sha256:"))
    }

    fn record_path(&self, id: &str) -> PathBuf {
        self.dir
            .join("images")
            .join(format!("{}.json", id.trim_start_matches("sha256:")))
    }

    fn read_names(&self) -> Result<BTreeMap<String, String>> {
        let path = self.dir.join("repositories.json");
        match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| io_err(&path)(io::Error::other(e))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(BTreeMap::new()),
            Err(e) => Err(io_err(path)(e)),
        }
    }

    fn write_names(&self, names: &BTreeMap<String, String>) -> Result<()> {
        let bytes =
            serde_json::to_vec_pretty(names).map_err(|e| io_err(&self.dir)(io::Error::other(e)))?;
        write_atomic(&self.dir.join("repositories.json"), &bytes)
    }

    fn refresh_names(&self, repos: &BTreeMap<String, String>) -> Result<()> {
        for mut img in self.list()? {
            let names: Vec<String> = repos
                .iter()
                .filter(|(_, v)| **v == img.id)
                .map(|(k, _)| k.clone())
                .collect();
            if names != img.names {
                img.names = names;
                let bytes = serde_json::to_vec_pretty(&img)
                    .map_err(|e| io_err(&self.dir)(io::Error::other(e)))?;
                write_atomic(&self.record_path(&img.id), &bytes)?;
            }
        }
        Ok(())
    }

    /// An exclusive lock on the store for imports and removals.
    fn lock(&self) -> Result<File> {
        let path = self.dir.join("lock");
        let f = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io_err(&path))?;
        // SAFETY: flock on an fd we own; released when the returned file is dropped.
        if unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&f), libc::LOCK_EX) } < 0 {
            return Err(io_err(path)(io::Error::last_os_error()));
        }
        Ok(f)
    }

    /// Unpacks one layer (plain or gzip tar) unless a layer with this diff-id is present;
    /// returns its diff-id and unpacked size, and records a layer it created in `created`.
    fn unpack_layer(
        &self,
        archive: &Path,
        file: &Path,
        expected: Option<&str>,
        created: &mut Vec<String>,
    ) -> Result<(String, u64)> {
        if let Some(d) = expected {
            validate_digest(archive, d)?;
            let existing = self.layer_path(d);
            if existing.is_dir() {
                return Ok((d.to_string(), dir_size(&existing)));
            }
        }
        let tmp = TempDir::new(&self.dir.join("tmp"), "layer")?;
        let reader = open_maybe_gzip(archive, file)?;
        let mut hashing = HashingReader {
            inner: reader,
            hasher: Sha256::new(),
        };
        let size = unpack_into(archive, &mut hashing, &tmp.0)?;
        // Drain what tar did not read (padding), so the hash covers the whole stream.
        io::copy(&mut hashing, &mut io::sink()).map_err(|e| corrupt(archive, file, e))?;
        let actual = format!("sha256:{}", hex::encode(hashing.hasher.finalize()));
        if let Some(d) = expected {
            if d != actual {
                return Err(ImageError::DigestMismatch {
                    what: format!("layer {}", file.display()),
                    expected: d.into(),
                    actual,
                });
            }
        }
        let dest = self.layer_path(&actual);
        if dest.is_dir() {
            return Ok((actual, size));
        }
        std::fs::rename(&tmp.0, &dest).map_err(io_err(&dest))?;
        created.push(actual.clone());
        // `tmp` now names nothing; dropping it removes nothing.
        Ok((actual, size))
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum ArchiveKind {
    Layout,
    Rootfs,
}

/// An OCI layout or docker-save archive has `index.json` or `manifest.json` at its top.
fn detect_kind(archive: &Path) -> Result<ArchiveKind> {
    let mut tar = tar::Archive::new(open_maybe_gzip(archive, archive)?);
    let entries = tar.entries().map_err(|e| corrupt(archive, archive, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| corrupt(archive, archive, e))?;
        let path = entry
            .path()
            .map_err(|e| corrupt(archive, archive, e))?
            .into_owned();
        let p = path.strip_prefix("./").unwrap_or(&path);
        if p == Path::new("index.json")
            || p == Path::new("manifest.json")
            || p == Path::new("oci-layout")
        {
            return Ok(ArchiveKind::Layout);
        }
    }
    Ok(ArchiveKind::Rootfs)
}

/// Copies the archive's regular files into `staging`, and resolves symlinks between them
/// (old `docker save` links duplicate layers) by copying, refusing any that leave the archive.
fn stage_archive(archive: &Path, staging: &Path) -> Result<()> {
    let mut tar = tar::Archive::new(open_maybe_gzip(archive, archive)?);
    let mut links = Vec::new();
    for entry in tar.entries().map_err(|e| corrupt(archive, archive, e))? {
        let mut entry = entry.map_err(|e| corrupt(archive, archive, e))?;
        let raw = entry
            .path()
            .map_err(|e| corrupt(archive, archive, e))?
            .into_owned();
        let rel = safe_relative(archive, &raw)?;
        let dest = staging.join(&rel);
        match entry.header().entry_type() {
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                if let Some(parent) = dest.parent() {
                    std::fs::create_dir_all(parent).map_err(io_err(parent))?;
                }
                let mut out = File::create(&dest).map_err(io_err(&dest))?;
                io::copy(&mut entry, &mut out).map_err(|e| corrupt(archive, &raw, e))?;
            }
            tar::EntryType::Symlink => {
                let target = link_target(archive, &raw, &entry)?;
                let resolved = rel.parent().unwrap_or(Path::new("")).join(&target);
                let resolved = lexical_normalize(&resolved).ok_or_else(|| ImageError::Invalid {
                    archive: archive.into(),
                    reason: format!(
                        "entry {}: symlink to {} leaves the archive",
                        raw.display(),
                        target.display()
                    ),
                })?;
                links.push((dest, staging.join(resolved)));
            }
            _ => {}
        }
    }
    for (link, target) in links {
        if target.is_file() {
            if let Some(parent) = link.parent() {
                std::fs::create_dir_all(parent).map_err(io_err(parent))?;
            }
            std::fs::copy(&target, &link).map_err(io_err(&link))?;
        }
    }
    Ok(())
}

/// Reads an OCI index (or docker `manifest.json`) from a staged archive: the config bytes,
/// the layer files in order, and the names the archive gives.
fn read_layout(archive: &Path, staging: &Path) -> Result<(Vec<u8>, Vec<PathBuf>, Vec<String>)> {
    let invalid = |reason: String| ImageError::Invalid {
        archive: archive.to_path_buf(),
        reason,
    };
    let index_path = staging.join("index.json");
    let docker_path = staging.join("manifest.json");
    let mut names = Vec::new();
    if docker_path.is_file() {
        let list: Vec<DockerManifest> = serde_json::from_slice(&read_json(archive, &docker_path)?)
            .map_err(|e| invalid(format!("manifest.json: {e}")))?;
        let m = list
            .into_iter()
            .next()
            .ok_or_else(|| invalid("manifest.json lists no image".into()))?;
        for tag in m.repo_tags.unwrap_or_default() {
            names.push(normalize_name(&tag)?);
        }
        let config_rel = safe_relative(archive, Path::new(&m.config))?;
        let config = read_json(archive, &staging.join(&config_rel))?;
        if let Some(hex) = config_rel
            .to_str()
            .and_then(|s| s.strip_prefix("blobs/sha256/"))
        {
            verify_bytes(
                &format!("config {}", m.config),
                &format!("sha256:{hex}"),
                &config,
            )?;
        }
        let mut layers = Vec::new();
        for l in m.layers {
            let rel = safe_relative(archive, Path::new(&l))?;
            let p = staging.join(&rel);
            if !p.is_file() {
                return Err(invalid(format!("manifest.json: layer {l} is missing")));
            }
            if let Some(hex) = rel.to_str().and_then(|s| s.strip_prefix("blobs/sha256/")) {
                verify_file(&format!("layer blob {l}"), &format!("sha256:{hex}"), &p)?;
            }
            layers.push(p);
        }
        return Ok((config, layers, names));
    }
    if !index_path.is_file() {
        return Err(invalid(
            "neither index.json nor manifest.json at the top".into(),
        ));
    }
    let index: OciIndex = serde_json::from_slice(&read_json(archive, &index_path)?)
        .map_err(|e| invalid(format!("index.json: {e}")))?;
    let mut desc = index
        .manifests
        .into_iter()
        .next()
        .ok_or_else(|| invalid("index.json lists no manifest".into()))?;
    if let Some(n) = desc.annotations.as_ref().and_then(|a| {
        a.get("io.containerd.image.name")
            .or_else(|| a.get("org.opencontainers.image.ref.name"))
    }) {
        if let Ok(n) = normalize_name(n) {
            names.push(n);
        }
    }
    // A nested index (multi-platform): take its linux/amd64 manifest, else its first.
    for _ in 0..2 {
        if desc.media_type.as_deref() != Some("application/vnd.oci.image.index.v1+json") {
            break;
        }
        let bytes = read_blob(archive, staging, &desc.digest)?;
        let nested: OciIndex = serde_json::from_slice(&bytes)
            .map_err(|e| invalid(format!("index {}: {e}", desc.digest)))?;
        desc = nested
            .manifests
            .iter()
            .find(|m| {
                m.platform
                    .as_ref()
                    .is_some_and(|p| p.os == "linux" && p.architecture == "amd64")
            })
            .or(nested.manifests.first())
            .cloned()
            .ok_or_else(|| invalid(format!("index {} lists no manifest", desc.digest)))?;
    }
    let manifest: OciManifest = serde_json::from_slice(&read_blob(archive, staging, &desc.digest)?)
        .map_err(|e| invalid(format!("manifest {}: {e}", desc.digest)))?;
    let config = read_blob(archive, staging, &manifest.config.digest)?;
    let mut layers = Vec::new();
    for l in &manifest.layers {
        let mt = l.media_type.as_deref().unwrap_or("");
        if mt.contains("zstd") {
            return Err(invalid(format!(
                "layer {} is zstd-compressed ({mt}), which Gantry does not support yet",
                l.digest
            )));
        }
        if !(mt.is_empty()
            || mt.ends_with("tar")
            || mt.ends_with("tar+gzip")
            || mt.ends_with("tar.gzip")
            || mt.ends_with("diff.tar.gzip"))
        {
            return Err(invalid(format!(
                "layer {} has unknown media type {mt:?}",
                l.digest
            )));
        }
        validate_digest(archive, &l.digest)?;
        let p = staging
            .join("blobs/sha256")
            .join(l.digest.trim_start_matches("sha256:"));
        if !p.is_file() {
            return Err(invalid(format!("layer blob {} is missing", l.digest)));
        }
        verify_file(&format!("layer blob {}", l.digest), &l.digest, &p)?;
        layers.push(p);
    }
    Ok((config, layers, names))
}

fn read_blob(archive: &Path, staging: &Path, digest: &str) -> Result<Vec<u8>> {
    validate_digest(archive, digest)?;
    let p = staging
        .join("blobs/sha256")
        .join(digest.trim_start_matches("sha256:"));
    if !p.is_file() {
        return Err(ImageError::Invalid {
            archive: archive.into(),
            reason: format!("blob {digest} is missing"),
        });
    }
    let bytes = read_json(archive, &p)?;
    verify_bytes(&format!("blob {digest}"), digest, &bytes)?;
    Ok(bytes)
}

fn read_json(archive: &Path, path: &Path) -> Result<Vec<u8>> {
    let meta = std::fs::metadata(path).map_err(|_| ImageError::Invalid {
        archive: archive.into(),
        reason: format!(
            "{} is missing",
            path.file_name().unwrap_or_default().to_string_lossy()
        ),
    })?;
    if meta.len() > MAX_JSON_BYTES {
        return Err(ImageError::Invalid {
            archive: archive.into(),
            reason: format!(
                "{} is {} bytes, over the {} byte limit",
                path.display(),
                meta.len(),
                MAX_JSON_BYTES
            ),
        });
    }
    std::fs::read(path).map_err(io_err(path))
}

fn validate_digest(archive: &Path, digest: &str) -> Result<()> {
    let ok = digest.strip_prefix("sha256:").is_some_and(|h| {
        h.len() == 64
            && h.chars()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
    });
    if ok {
        Ok(())
    } else {
        Err(ImageError::Invalid {
            archive: archive.into(),
            reason: format!("digest {digest:?} is not sha256:<64 hex>"),
        })
    }
}

fn verify_bytes(what: &str, expected: &str, bytes: &[u8]) -> Result<()> {
    check_digest(what, expected, Sha256::digest(bytes).as_slice())
}

fn verify_file(what: &str, expected: &str, path: &Path) -> Result<()> {
    let mut f = File::open(path).map_err(io_err(path))?;
    let mut hasher = Sha256::new();
    io::copy(&mut f, &mut hasher).map_err(io_err(path))?;
    check_digest(what, expected, hasher.finalize().as_slice())
}

fn check_digest(what: &str, expected: &str, hash: &[u8]) -> Result<()> {
    let actual = format!("sha256:{}", hex::encode(hash));
    if actual == expected {
        Ok(())
    } else {
        Err(ImageError::DigestMismatch {
            what: what.into(),
            expected: expected.into(),
            actual,
        })
    }
}

/// Opens a file, transparently decompressing gzip; refuses zstd with a clear error.
fn open_maybe_gzip(archive: &Path, file: &Path) -> Result<Box<dyn Read>> {
    let mut f = File::open(file).map_err(io_err(file))?;
    let mut magic = [0u8; 4];
    let n = f.read(&mut magic).map_err(io_err(file))?;
    f.rewind().map_err(io_err(file))?;
    let reader = BufReader::with_capacity(256 * 1024, f);
    if n >= 2 && magic[..2] == [0x1f, 0x8b] {
        return Ok(Box::new(flate2::read::MultiGzDecoder::new(reader)));
    }
    if n == 4 && magic == [0x28, 0xb5, 0x2f, 0xfd] {
        return Err(ImageError::Invalid {
            archive: archive.into(),
            reason: format!(
                "{} is zstd-compressed, which Gantry does not support yet",
                file.display()
            ),
        });
    }
    Ok(Box::new(reader))
}

fn corrupt(archive: &Path, what: &Path, e: io::Error) -> ImageError {
    ImageError::Invalid {
        archive: archive.into(),
        reason: format!("{}: corrupt or truncated: {e}", what.display()),
    }
}

/// The target a symlink or hard link entry names.
fn link_target<R: Read>(archive: &Path, raw: &Path, entry: &tar::Entry<R>) -> Result<PathBuf> {
    Ok(entry
        .link_name()
        .map_err(|e| corrupt(archive, raw, e))?
        .unwrap_or_default()
        .into_owned())
}

/// An entry path made relative and checked: no `..`, not absolute (a leading `./` is fine).
fn safe_relative(archive: &Path, raw: &Path) -> Result<PathBuf> {
    let bad = |why: &str| ImageError::Invalid {
        archive: archive.into(),
        reason: format!("entry {}: {why}", raw.display()),
    };
    let mut out = PathBuf::new();
    for c in raw.components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::CurDir => {}
            Component::ParentDir => return Err(bad("path contains '..'")),
            Component::RootDir | Component::Prefix(_) => return Err(bad("absolute path")),
        }
    }
    Ok(out)
}

/// Resolves `.` and `..` lexically; `None` when it climbs above the start.
fn lexical_normalize(p: &Path) -> Option<PathBuf> {
    let mut parts: Vec<&std::ffi::OsStr> = Vec::new();
    for c in p.components() {
        match c {
            Component::Normal(x) => parts.push(x),
            Component::CurDir => {}
            Component::ParentDir => {
                parts.pop()?;
            }
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(parts.iter().collect())
}

/// Unpacks a layer's tar stream into `dest` under the store's rules; returns bytes written.
fn unpack_into(archive: &Path, reader: &mut dyn Read, dest: &Path) -> Result<u64> {
    let mut tar = tar::Archive::new(reader);
    let mut size = 0u64;
    let mut dirs: Vec<(PathBuf, u32, u64)> = Vec::new();
    for entry in tar
        .entries()
        .map_err(|e| corrupt(archive, Path::new("layer"), e))?
    {
        let mut entry = entry.map_err(|e| corrupt(archive, Path::new("layer"), e))?;
        let raw = entry
            .path()
            .map_err(|e| corrupt(archive, Path::new("layer"), e))?
            .into_owned();
        let rel = safe_relative(archive, &raw)?;
        if rel.as_os_str().is_empty() {
            continue;
        }
        let bad = |why: String| ImageError::Invalid {
            archive: archive.into(),
            reason: format!("entry {}: {why}", raw.display()),
        };
        let parent_rel = rel.parent().unwrap_or(Path::new(""));
        ensure_no_symlink_ancestor(dest, parent_rel).map_err(bad)?;
        let parent = dest.join(parent_rel);
        std::fs::create_dir_all(&parent).map_err(io_err(&parent))?;
        let file_name = rel
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        let header = entry.header().clone();
        let mode = header.mode().unwrap_or(0o644) & 0o7777;
        let uid = header.uid().unwrap_or(0) as u32;
        let gid = header.gid().unwrap_or(0) as u32;
        let mtime = header.mtime().unwrap_or(0);

        if file_name == ".wh..wh..opq" {
            set_opaque(&parent).map_err(io_err(&parent))?;
            continue;
        }
        if let Some(hidden) = file_name.strip_prefix(".wh.") {
            if hidden.is_empty() || hidden == "." || hidden == ".." {
                return Err(bad("malformed whiteout".into()));
            }
            let target = parent.join(hidden);
            remove_existing(&target);
            nix::sys::stat::mknod(
                &target,
                nix::sys::stat::SFlag::S_IFCHR,
                nix::sys::stat::Mode::empty(),
                0,
            )
            .map_err(|e| io_err(&target)(io::Error::from(e)))?;
            continue;
        }
        let path = dest.join(&rel);
        match header.entry_type() {
            tar::EntryType::Directory => {
                if let Ok(m) = std::fs::symlink_metadata(&path) {
                    if !m.is_dir() {
                        remove_existing(&path);
                    }
                }
                std::fs::create_dir_all(&path).map_err(io_err(&path))?;
                dirs.push((path.clone(), mode, mtime));
                lchown(&path, uid, gid)?;
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                remove_existing(&path);
                let mut out = File::options()
                    .write(true)
                    .create_new(true)
                    .open(&path)
                    .map_err(io_err(&path))?;
                size += io::copy(&mut entry, &mut out).map_err(|e| corrupt(archive, &raw, e))?;
                out.flush().map_err(io_err(&path))?;
                drop(out);
                lchown(&path, uid, gid)?;
                std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(mode))
                    .map_err(io_err(&path))?;
                set_mtime(&path, mtime);
            }
            tar::EntryType::Symlink => {
                let target = link_target(archive, &raw, &entry)?;
                if target.is_relative() && lexical_normalize(&parent_rel.join(&target)).is_none() {
                    return Err(bad(format!(
                        "symlink to {} climbs out of the rootfs",
                        target.display()
                    )));
                }
                remove_existing(&path);
                std::os::unix::fs::symlink(&target, &path).map_err(io_err(&path))?;
                lchown(&path, uid, gid)?;
            }
            tar::EntryType::Link => {
                let target = link_target(archive, &raw, &entry)?;
                let target_rel = safe_relative(archive, &target).map_err(|_| {
                    bad(format!(
                        "hard link to {} points out of the rootfs",
                        target.display()
                    ))
                })?;
                ensure_no_symlink_ancestor(dest, target_rel.parent().unwrap_or(Path::new("")))
                    .map_err(bad)?;
                let src = dest.join(&target_rel);
                match std::fs::symlink_metadata(&src) {
                    Ok(m) if m.is_file() => {}
                    _ => {
                        return Err(bad(format!(
                            "hard link to {} which is not a file extracted before it",
                            target.display()
                        )))
                    }
                }
                remove_existing(&path);
                std::fs::hard_link(&src, &path).map_err(io_err(&path))?;
            }
            tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => {
                return Err(bad(
                    "device nodes and fifos are not allowed in images".into()
                ));
            }
            tar::EntryType::XGlobalHeader
            | tar::EntryType::XHeader
            | tar::EntryType::GNULongName
            | tar::EntryType::GNULongLink => {}
            other => return Err(bad(format!("unsupported entry type {other:?}"))),
        }
    }
    // Directory modes and times last: files written into them would change their mtime, and a
    // read-only directory must still receive its files.
    for (path, mode, mtime) in dirs.iter().rev() {
        let _ = std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(*mode));
        set_mtime(path, *mtime);
    }
    Ok(size)
}

/// Refuses a path whose existing ancestors (inside `root`) include a symlink: writing through
/// it could land anywhere on the host.
fn ensure_no_symlink_ancestor(root: &Path, rel: &Path) -> std::result::Result<(), String> {
    let mut cur = root.to_path_buf();
    for c in rel.components() {
        cur.push(c);
        match std::fs::symlink_metadata(&cur) {
            Ok(m) if m.file_type().is_symlink() => {
                return Err(format!(
                    "parent {} is a symlink",
                    cur.strip_prefix(root).unwrap_or(&cur).display()
                ))
            }
            Ok(m) if !m.is_dir() => {
                return Err(format!(
                    "parent {} is not a directory",
                    cur.strip_prefix(root).unwrap_or(&cur).display()
                ))
            }
            Ok(_) => {}
            Err(_) => return Ok(()),
        }
    }
    Ok(())
}

fn remove_existing(path: &Path) {
    if let Ok(m) = std::fs::symlink_metadata(path) {
        if m.is_dir() {
            let _ = std::fs::remove_dir_all(path);
        } else {
            let _ = std::fs::remove_file(path);
        }
    }
}

fn lchown(path: &Path, uid: u32, gid: u32) -> Result<()> {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid)).map_err(io_err(path))
}

fn set_mtime(path: &Path, secs: u64) {
    let t = nix::sys::time::TimeSpec::new(secs as i64, 0);
    let _ = nix::sys::stat::utimensat(
        nix::fcntl::AT_FDCWD,
        path,
        &t,
        &t,
        nix::sys::stat::UtimensatFlags::NoFollowSymlink,
    );
}

fn set_opaque(dir: &Path) -> io::Result<()> {
    let c = std::ffi::CString::new(std::os::unix::ffi::OsStrExt::as_bytes(dir.as_os_str()))?;
    // SAFETY: both strings are NUL-terminated and outlive the call; the value is 1 byte.
    let rc = unsafe {
        libc::lsetxattr(
            c.as_ptr(),
            c"trusted.overlay.opaque".as_ptr(),
            b"y".as_ptr().cast(),
            1,
            0,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn dir_size(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        if let Ok(entries) = std::fs::read_dir(&d) {
            for e in entries.flatten() {
                if let Ok(m) = e.metadata() {
                    if m.is_dir() {
                        stack.push(e.path());
                    } else {
                        total += m.size();
                    }
                }
            }
        }
    }
    total
}

/// `repo[:tag]` with the tag defaulting to `latest`, validated.
fn normalize_name(name: &str) -> Result<String> {
    let bad = |why: &str| ImageError::InvalidReference(name.into(), why.into());
    if name.is_empty() || name.len() > 255 {
        return Err(bad("must be 1-255 characters"));
    }
    let (repo, tag) = match name.rsplit_once(':') {
        Some((r, t)) if !t.contains('/') => (r, t),
        _ => (name, "latest"),
    };
    let repo_ok = !repo.is_empty()
        && repo
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-/:".contains(c))
        && !repo.starts_with(['.', '-', '/'])
        && !repo.ends_with('/');
    let tag_ok = !tag.is_empty()
        && tag.len() <= 128
        && tag
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
    if !repo_ok {
        return Err(bad(
            "repository must be lower-case letters, digits, '.', '_', '-' and '/'",
        ));
    }
    if !tag_ok {
        return Err(bad(
            "tag must be 1-128 characters of letters, digits, '.', '_' and '-'",
        ));
    }
    Ok(format!("{repo}:{tag}"))
}

fn read_record(path: &Path) -> Result<Image> {
    let bytes = std::fs::read(path).map_err(io_err(path))?;
    serde_json::from_slice(&bytes).map_err(|e| io_err(path)(io::Error::other(e)))
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = File::create(&tmp).map_err(io_err(&tmp))?;
    f.write_all(bytes).map_err(io_err(&tmp))?;
    f.sync_all().map_err(io_err(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io_err(path))
}

/// A directory removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(parent: &Path, prefix: &str) -> Result<Self> {
        let mut rnd = [0u8; 8];
        File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut rnd))
            .map_err(io_err("/dev/urandom"))?;
        let path = parent.join(format!("{prefix}-{}", hex::encode(rnd)));
        std::fs::create_dir(&path).map_err(io_err(&path))?;
        Ok(Self(path))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

#[derive(Deserialize, Default)]
struct RawConfig {
    config: Option<RawContainerConfig>,
    rootfs: Option<RawRootfs>,
    created: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
struct RawContainerConfig {
    entrypoint: Option<Vec<String>>,
    cmd: Option<Vec<String>>,
    env: Option<Vec<String>>,
    working_dir: Option<String>,
    user: Option<String>,
    exposed_ports: Option<BTreeMap<String, serde_json::Value>>,
    labels: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize, Default)]
struct RawRootfs {
    #[serde(default)]
    diff_ids: Vec<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerManifest {
    config: String,
    repo_tags: Option<Vec<String>>,
    #[serde(default)]
    layers: Vec<String>,
}

#[derive(Deserialize)]
struct OciIndex {
    #[serde(default)]
    manifests: Vec<Descriptor>,
}

#[derive(Deserialize, Clone)]
#[serde(rename_all = "camelCase")]
struct Descriptor {
    media_type: Option<String>,
    digest: String,
    annotations: Option<BTreeMap<String, String>>,
    platform: Option<Platform>,
}

#[derive(Deserialize, Clone)]
struct Platform {
    #[serde(default)]
    os: String,
    #[serde(default)]
    architecture: String,
}

#[derive(Deserialize)]
struct OciManifest {
    config: Descriptor,
    #[serde(default)]
    layers: Vec<Descriptor>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_default_to_latest_and_are_validated() {
        assert_eq!(
            normalize_name("gantry/sample").unwrap(),
            "gantry/sample:latest"
        );
        assert_eq!(
            normalize_name("localhost:5000/x:1").unwrap(),
            "localhost:5000/x:1"
        );
        assert!(normalize_name("Bad Name").is_err());
        assert!(normalize_name("x:").is_err());
    }

    #[test]
    fn entry_paths_must_stay_inside() {
        let a = Path::new("a.tar");
        assert_eq!(
            safe_relative(a, Path::new("./etc/passwd")).unwrap(),
            PathBuf::from("etc/passwd")
        );
        assert!(safe_relative(a, Path::new("../x")).is_err());
        assert!(safe_relative(a, Path::new("/etc/passwd")).is_err());
        assert!(safe_relative(a, Path::new("a/../../x")).is_err());
    }

    #[test]
    fn relative_symlinks_may_not_climb_out() {
        assert!(lexical_normalize(Path::new("bin/../lib")).is_some());
        assert!(lexical_normalize(Path::new("bin/../../etc")).is_none());
    }
}
