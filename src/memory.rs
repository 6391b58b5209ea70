//! The process's memory and glibc's allocator: the settings a probe's large, short-lived
//! buffers want ([`tune_allocator`], once at start) and handing freed pages back to the
//! operating system ([`return_freed_memory`], after a reload or once cached results expire).
//!
//! A 10,000-device probe allocates ~19 MiB at its peak (the page text, the compressed answer in
//! pieces, the keyset gate; heaptrack), but with glibc's defaults its process peaked at ~40 MiB
//! resident: two things kept freed memory resident.
//!
//! - **The mmap threshold.** A block above it is its own mapping, unmapped when freed. glibc
//!   raises the threshold to the size of each such block freed (up to 32 MiB), so after the
//!   first probe a page's 10 MB buffer comes from a heap and stays resident as free space there.
//!   A fixed threshold keeps large buffers in their own mappings (and turns the raising off).
//! - **The arenas.** Every thread that allocates gets a heap of its own (up to 8 per core):
//!   the HTTP workers and the background reads each keep their free space apart. Two arenas
//!   keep the workers from contending on one lock while bounding that spread.
//!
//! Measured with `cargo run --release --example loadbench` (docs/performance.md, "Allocator
//! settings"). An operator's own `MALLOC_ARENA_MAX`, `MALLOC_MMAP_THRESHOLD_` or
//! `GLIBC_TUNABLES` wins: nothing is set then.

/// One allocator setting: its name (as glibc's environment spells it), `mallopt`'s parameter
/// and the value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Setting {
    /// The environment variable that would set it (`MALLOC_ARENA_MAX`, …).
    pub env: &'static str,
    /// `mallopt`'s parameter number (glibc's `M_…`).
    pub param: i32,
    /// The value.
    pub value: i32,
}

/// Blocks from this size up are their own mappings (256 KiB: a 64 KiB text piece and its
/// compressed form stay in the heaps; a page's text, a row table, an answer's piece list not).
pub const MMAP_THRESHOLD: i32 = 256 * 1024;

/// At most this many arenas.
pub const ARENA_MAX: i32 = 2;

/// The settings [`tune_allocator`] applies, given the environment (`env(name)`): none when the
/// operator tuned glibc's allocator through its environment.
pub fn settings(env: impl Fn(&str) -> Option<std::ffi::OsString>) -> Vec<Setting> {
    const M_MMAP_THRESHOLD: i32 = -3;
    const M_ARENA_MAX: i32 = -8;
    let ours = [
        Setting {
            env: "MALLOC_MMAP_THRESHOLD_",
            param: M_MMAP_THRESHOLD,
            value: MMAP_THRESHOLD,
        },
        Setting {
            env: "MALLOC_ARENA_MAX",
            param: M_ARENA_MAX,
            value: ARENA_MAX,
        },
    ];
    if env("GLIBC_TUNABLES").is_some_and(|t| t.to_string_lossy().contains("glibc.malloc.")) {
        return Vec::new();
    }
    ours.into_iter().filter(|s| env(s.env).is_none()).collect()
}

/// Applies [`settings`] to glibc's allocator (nothing on other C libraries). Call it first in
/// `main`, before any thread starts: arenas made before it stay. Returns what was set.
pub fn tune_allocator() -> Vec<Setting> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let mut chosen = settings(|k| std::env::var_os(k));
        // SAFETY: mallopt only changes the allocator's parameters (documented as settable at
        // any time); this runs before other threads exist. It returns 1 when it took the value.
        chosen.retain(|s| unsafe { libc::mallopt(s.param, s.value) } == 1);
        chosen
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    Vec::new()
}

/// Hands memory freed by the process back to the operating system (glibc keeps freed pages of
/// its arenas otherwise: the resident size would stay at its peak after cached results go).
pub fn return_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory of the allocator's own heaps.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsString;

    fn with(vars: &[(&str, &str)]) -> Vec<&'static str> {
        let vars: Vec<(String, OsString)> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), OsString::from(v)))
            .collect();
        settings(|k| vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()))
            .into_iter()
            .map(|s| s.env)
            .collect()
    }

    #[test]
    fn both_settings_apply_by_default_and_match_glibc() {
        let all = settings(|_| None);
        assert_eq!(all.len(), 2);
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        for s in &all {
            let glibc = match s.env {
                "MALLOC_MMAP_THRESHOLD_" => libc::M_MMAP_THRESHOLD,
                "MALLOC_ARENA_MAX" => libc::M_ARENA_MAX,
                other => panic!("unknown setting {other}"),
            };
            assert_eq!(s.param, glibc, "{}", s.env);
        }
    }

    #[test]
    fn an_operators_environment_wins() {
        assert_eq!(
            with(&[("MALLOC_ARENA_MAX", "4")]),
            ["MALLOC_MMAP_THRESHOLD_"]
        );
        assert_eq!(
            with(&[("MALLOC_MMAP_THRESHOLD_", "1")]),
            ["MALLOC_ARENA_MAX"]
        );
        assert!(with(&[("GLIBC_TUNABLES", "glibc.malloc.arena_max=1")]).is_empty());
        // Tunables of other parts of glibc leave the allocator's to us.
        assert_eq!(with(&[("GLIBC_TUNABLES", "glibc.pthread.rseq=0")]).len(), 2);
    }
}
