//! Keeps the idle shim small. A shim lives as long as its container, one per container, so its
//! resident memory is paid many times over. After start-up the shim touches only a few pages
//! of code (its poll loop), but the kernel faulted in whole runs of the executable and of libc
//! around every page used during start-up, and the dynamic loader read the whole relocation
//! table. Those pages are clean copies of files: dropping them from this process is free and
//! safe, because any page needed again is faulted back from the page cache.
//!
//! Invariant: only clean, read-only, file-backed private mappings are dropped. Dirty pages
//! (relocated `.data.rel.ro`, data, heap, stack) are never touched: discarding them would
//! lose their contents.

/// Drops clean file-backed pages from this process and asks the kernel not to fault in runs
/// of neighbours again. Failures are ignored: this only trims memory.
pub(crate) fn trim_clean_file_pages() {
    let Ok(smaps) = std::fs::read_to_string("/proc/self/smaps") else {
        return;
    };
    for region in clean_file_regions(&smaps) {
        // SAFETY: the region is a whole, read-only, private, file-backed mapping of this
        // process with no dirty pages; MADV_RANDOM and MADV_DONTNEED on it only change which
        // of its pages are resident, and every page reads back identical from the file.
        unsafe {
            let addr = region.0 as *mut libc::c_void;
            libc::madvise(addr, region.1, libc::MADV_RANDOM);
            libc::madvise(addr, region.1, libc::MADV_DONTNEED);
        }
    }
}

/// `(start, length)` of the mappings that are file-backed, private, not writable and have no
/// dirty pages, from the text of `/proc/self/smaps`.
fn clean_file_regions(smaps: &str) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut current: Option<(usize, usize, bool)> = None;
    let mut dirty = 0u64;
    let flush = |cur: Option<(usize, usize, bool)>, dirty: u64, out: &mut Vec<(usize, usize)>| {
        if let Some((start, end, eligible)) = cur {
            if eligible && dirty == 0 && end > start {
                out.push((start, end - start));
            }
        }
    };
    for line in smaps.lines() {
        let mut fields = line.split_whitespace();
        let first = fields.next().unwrap_or("");
        if let Some((a, b)) = first
            .split_once('-')
            .filter(|(a, _)| a.chars().all(|c| c.is_ascii_hexdigit()))
        {
            flush(current.take(), dirty, &mut out);
            dirty = 0;
            let perms = fields.next().unwrap_or("");
            let path = fields.nth(3).unwrap_or("");
            let eligible = perms.len() == 4
                && !perms.contains('w')
                && perms.ends_with('p')
                && path.starts_with('/');
            if let (Ok(start), Ok(end)) =
                (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16))
            {
                current = Some((start, end, eligible));
            }
        } else if first == "Private_Dirty:" || first == "Shared_Dirty:" {
            dirty += fields
                .next()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(1);
        }
    }
    flush(current.take(), dirty, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMAPS: &str = "\
55e0a0000000-55e0a0070000 r--p 00000000 fe:00 123 /usr/bin/gantry
Rss:                 448 kB
Shared_Dirty:          0 kB
Private_Dirty:         0 kB
55e0a0070000-55e0a0400000 r-xp 00070000 fe:00 123 /usr/bin/gantry
Private_Dirty:         0 kB
55e0a0400000-55e0a0450000 r--p 00400000 fe:00 123 /usr/bin/gantry
Private_Dirty:       312 kB
55e0a0450000-55e0a0460000 rw-p 00450000 fe:00 123 /usr/bin/gantry
Private_Dirty:        28 kB
55e0a1000000-55e0a1021000 rw-p 00000000 00:00 0 [heap]
Private_Dirty:        92 kB
7ffd0000000-7ffd0002000 r-xp 00000000 00:00 0 [vdso]
Private_Dirty:         0 kB
";

    #[test]
    fn only_clean_read_only_file_mappings_are_trimmed() {
        let regions = clean_file_regions(SMAPS);
        assert_eq!(
            regions,
            vec![(0x55e0a0000000, 0x70000), (0x55e0a0070000, 0x390000)]
        );
    }

    #[test]
    fn trimming_keeps_this_process_working() {
        trim_clean_file_pages();
        // Code and read-only data fault back in from the page cache.
        let v: Vec<String> = (0..100).map(|i| format!("{i}")).collect();
        assert_eq!(v[99], "99");
    }
}
