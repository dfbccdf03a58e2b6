//! Process memory figures, for reports: peak and current resident set size.

/// Peak resident set size of this process in bytes (`VmHWM` in `/proc/self/status`), where the
/// platform reports it (Linux); `None` elsewhere.
pub fn peak_rss_bytes() -> Option<u64> {
    status_kib("VmHWM:").map(|k| k * 1024)
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
    fn peak_is_at_least_current_on_linux() {
        if let (Some(p), Some(c)) = (peak_rss_bytes(), current_rss_bytes()) {
            assert!(p >= c && c > 0, "peak {p} current {c}");
        }
    }
}
