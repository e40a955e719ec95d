//! Shared by the benchmarks: peak memory of the running process (Linux).

/// Starts a new peak: writing 5 to clear_refs resets the peak resident set size.
pub fn peak_rss_reset() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// The peak resident set size since the start or the last reset, in MiB.
pub fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}
