//! Process memory figures, for reports: peak and current resident set size.

/// Peak resident set size of this process in bytes (`VmHWM` in `/proc/self/status`, or the
/// current `VmRSS` when that is larger: the kernel updates the high-water mark lazily), where
/// the platform reports it (Linux); `None` elsewhere.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let hwm = parse_kib(&status, "VmHWM:")?;
    let rss = parse_kib(&status, "VmRSS:").unwrap_or(0);
    Some(hwm.max(rss) * 1024)
}

/// Current resident set size in bytes (`VmRSS`), where the platform reports it.
pub fn current_rss_bytes() -> Option<u64> {
    status_kib("VmRSS:").map(|k| k * 1024)
}

fn status_kib(key: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    parse_kib(&status, key)
}

fn parse_kib(status: &str, key: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with(key))?;
    let mut parts = line[key.len()..].split_whitespace();
    let value: u64 = parts.next()?.parse().ok()?;
    match parts.next() {
        Some("kB") | None => Some(value),
        Some(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_status_lines() {
        let s = "Name:\tx\nVmHWM:\t  123456 kB\nVmRSS:\t    100 kB\n";
        assert_eq!(parse_kib(s, "VmHWM:"), Some(123_456));
        assert_eq!(parse_kib(s, "VmRSS:"), Some(100));
        assert_eq!(parse_kib(s, "VmSwap:"), None);
        assert_eq!(parse_kib("VmHWM:\tlots kB\n", "VmHWM:"), None);
    }

    #[test]
    fn peak_grows_with_a_touched_allocation_on_linux() {
        let Some(before) = peak_rss_bytes() else {
            return; // not Linux
        };
        assert!(before > 0);
        // 64 MiB written page by page must show up in the peak.
        let mut v = vec![0u8; 64 << 20];
        for i in (0..v.len()).step_by(4096) {
            v[i] = 1;
        }
        std::hint::black_box(&v);
        // Other tests run in parallel, so only the lower bounds this allocation implies hold.
        let rss = current_rss_bytes().expect("rss");
        let peak = peak_rss_bytes().expect("peak");
        assert!(rss >= 60 << 20, "current {rss}");
        assert!(peak >= 60 << 20, "peak {peak} current {rss}");
    }
}
