//! Parsing of `/proc/self/mountinfo` and `/proc/self/cgroup`, the two texts cgroup detection
//! reads. Pure functions over strings, so every layout (hybrid, pure v1, pure v2, escaped
//! paths) is unit-tested without touching the machine.

use std::path::{Path, PathBuf};

use super::CgroupError;

/// One line of `/proc/self/mountinfo`, reduced to what cgroup detection needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    /// The root of the mount inside its filesystem (field 4), unescaped.
    pub root: PathBuf,
    /// Where it is mounted (field 5), unescaped.
    pub mount_point: PathBuf,
    /// The filesystem type after the ` - ` separator, e.g. `cgroup` or `cgroup2`.
    pub fs_type: String,
    /// The per-superblock options, e.g. `rw,cpu,cpuacct`.
    pub super_options: Vec<String>,
}

impl MountEntry {
    /// True if this is a cgroup v1 hierarchy with `controller` bound to it.
    pub fn has_v1_controller(&self, controller: &str) -> bool {
        self.fs_type == "cgroup" && self.super_options.iter().any(|o| o == controller)
    }
}

/// Undoes the octal escapes (`\040` space, `\011` tab, `\012` newline, `\134` backslash) the
/// kernel uses for paths in mountinfo.
pub fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 3 < bytes.len() {
            let digits = &bytes[i + 1..i + 4];
            if digits.iter().all(|d| (b'0'..=b'7').contains(d)) {
                let v = digits
                    .iter()
                    .fold(0u32, |acc, d| acc * 8 + u32::from(d - b'0'));
                if let Ok(b) = u8::try_from(v) {
                    out.push(b);
                    i += 4;
                    continue;
                }
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses the whole of `/proc/self/mountinfo`; malformed lines are errors naming the line.
pub fn parse_mountinfo(text: &str) -> Result<Vec<MountEntry>, CgroupError> {
    let mut entries = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad = |reason: &str| CgroupError::Parse {
            what: format!("mountinfo line {}", n + 1),
            reason: format!("{reason}: {line:?}"),
        };
        let fields: Vec<&str> = line.split(' ').collect();
        let sep = fields
            .iter()
            .position(|f| *f == "-")
            .ok_or_else(|| bad("no ' - ' separator"))?;
        if sep < 6 || fields.len() < sep + 3 {
            return Err(bad("too few fields"));
        }
        entries.push(MountEntry {
            root: PathBuf::from(unescape(fields[3])),
            mount_point: PathBuf::from(unescape(fields[4])),
            fs_type: fields[sep + 1].to_owned(),
            super_options: fields[sep + 3].split(',').map(str::to_owned).collect(),
        });
    }
    Ok(entries)
}

/// One line of `/proc/self/cgroup`: `hierarchy-id:controller-list:path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupEntry {
    /// The hierarchy id; 0 for the unified (v2) hierarchy.
    pub hierarchy_id: u32,
    /// The controllers bound to the hierarchy (empty for v2; may hold `name=systemd`).
    pub controllers: Vec<String>,
    /// The process's cgroup, relative to the hierarchy's root as seen from its cgroup namespace.
    pub path: PathBuf,
}

/// Parses `/proc/self/cgroup`.
pub fn parse_proc_cgroup(text: &str) -> Result<Vec<CgroupEntry>, CgroupError> {
    let mut entries = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad = |reason: &str| CgroupError::Parse {
            what: format!("/proc/self/cgroup line {}", n + 1),
            reason: format!("{reason}: {line:?}"),
        };
        let mut parts = line.splitn(3, ':');
        let (Some(id), Some(ctrls), Some(path)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(bad("expected id:controllers:path"));
        };
        let hierarchy_id = id
            .parse()
            .map_err(|_| bad("hierarchy id is not a number"))?;
        let path = path.strip_suffix(" (deleted)").unwrap_or(path);
        entries.push(CgroupEntry {
            hierarchy_id,
            controllers: ctrls
                .split(',')
                .filter(|c| !c.is_empty())
                .map(str::to_owned)
                .collect(),
            path: PathBuf::from(path),
        });
    }
    Ok(entries)
}

/// The directory of the process's own cgroup: `fs_root` + mount point + the cgroup path made
/// relative to the mount's root. When the path does not lie under the mount's root (a cgroup
/// namespace shows paths relative to its own root), the path is used as is.
pub fn own_cgroup_dir(fs_root: &Path, mount: &MountEntry, cgroup_path: &Path) -> PathBuf {
    let rel = cgroup_path
        .strip_prefix(&mount.root)
        .unwrap_or_else(|_| cgroup_path.strip_prefix("/").unwrap_or(cgroup_path));
    let mut dir = under_root(fs_root, &mount.mount_point);
    if !rel.as_os_str().is_empty() {
        dir.push(rel);
    }
    dir
}

/// `fs_root` joined with an absolute path from the mount table.
pub fn under_root(fs_root: &Path, abs: &Path) -> PathBuf {
    fs_root.join(abs.strip_prefix("/").unwrap_or(abs))
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    #[test]
    fn hybrid_mountinfo_lists_v1_controllers_and_unified() {
        let m = parse_mountinfo(HYBRID).unwrap();
        assert_eq!(m.len(), 5);
        assert_eq!(m[0].fs_type, "tmpfs");
        assert!(m[1].has_v1_controller("cpu"));
        assert!(!m[1].has_v1_controller("cpuacct"));
        assert!(m[3].has_v1_controller("memory"));
        assert_eq!(m[4].fs_type, "cgroup2");
        assert_eq!(m[4].mount_point, Path::new("/sys/fs/cgroup/unified"));
    }

    #[test]
    fn comounted_cpu_cpuacct_with_optional_fields() {
        let text = "25 20 0:22 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid shared:9 master:2 - \
                    cgroup cgroup rw,cpu,cpuacct\n";
        let m = parse_mountinfo(text).unwrap();
        assert!(m[0].has_v1_controller("cpu"));
        assert!(m[0].has_v1_controller("cpuacct"));
        assert_eq!(m[0].mount_point, Path::new("/sys/fs/cgroup/cpu,cpuacct"));
    }

    #[test]
    fn escaped_spaces_and_backslashes_are_unescaped() {
        let text = "40 1 0:40 /a\\040b /mnt/my\\040cgroups\\134x rw - cgroup2 none rw\n";
        let m = parse_mountinfo(text).unwrap();
        assert_eq!(m[0].root, Path::new("/a b"));
        assert_eq!(m[0].mount_point, Path::new("/mnt/my cgroups\\x"));
        assert_eq!(unescape("trailing\\04"), "trailing\\04");
        assert_eq!(unescape("tab\\011x"), "tab\tx");
    }

    #[test]
    fn malformed_mountinfo_line_is_an_error_naming_the_line() {
        let err = parse_mountinfo("1 2 3\n").unwrap_err().to_string();
        assert!(err.contains("mountinfo line 1"), "{err}");
    }

    #[test]
    fn proc_cgroup_parses_v1_and_v2_lines() {
        let text = "9:name=systemd:/\n4:memory:/process_api/abc\n2:cpu,cpuacct:/x\n0::/\n";
        let c = parse_proc_cgroup(text).unwrap();
        assert_eq!(c[0].controllers, vec!["name=systemd"]);
        assert_eq!(c[1].path, Path::new("/process_api/abc"));
        assert_eq!(c[2].controllers, vec!["cpu", "cpuacct"]);
        assert_eq!(c[3].hierarchy_id, 0);
        assert!(c[3].controllers.is_empty());
        assert!(parse_proc_cgroup("x:memory:/\n").is_err());
    }

    #[test]
    fn own_dir_strips_the_mount_root() {
        let m = &parse_mountinfo("1 1 0:1 /kubepods /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n")
            .unwrap()[0];
        let root = Path::new("/scratch");
        assert_eq!(
            own_cgroup_dir(root, m, Path::new("/kubepods/pod1")),
            Path::new("/scratch/sys/fs/cgroup/pod1")
        );
        // A cgroup namespace shows paths relative to its own root.
        assert_eq!(
            own_cgroup_dir(root, m, Path::new("/")),
            Path::new("/scratch/sys/fs/cgroup")
        );
        assert_eq!(
            own_cgroup_dir(Path::new("/"), m, Path::new("/other")),
            Path::new("/sys/fs/cgroup/other")
        );
    }

    fn escape(s: &str) -> String {
        s.replace('\\', "\\134")
            .replace(' ', "\\040")
            .replace('\t', "\\011")
            .replace('\n', "\\012")
    }

    proptest::proptest! {
        #[test]
        fn parsers_never_panic(text in ".{0,400}") {
            let _ = parse_mountinfo(&text);
            let _ = parse_proc_cgroup(&text);
        }

        #[test]
        fn escaped_mount_points_round_trip(name in "[a-z \t\n\\\\]{1,20}") {
            let line = format!("1 1 0:1 / /mnt/{} rw - cgroup2 cgroup2 rw", escape(&name));
            let m = parse_mountinfo(&line).unwrap();
            proptest::prop_assert_eq!(m[0].mount_point.clone(), PathBuf::from(format!("/mnt/{name}")));
        }
    }
}
