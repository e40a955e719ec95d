//! The process's allocator: the system's, with glibc's malloc held to two arenas.
//!
//! glibc gives threads arenas of their own (up to eight per core) and keeps freed memory in
//! each, so an export's peak resident memory was a third more than its live heap; with two
//! arenas it is within a tenth, at the same speed (`cargo bench --bench scale`: 128 input files
//! 555–578 → 521–526 MiB, 8 files 333–366 → 292–305 MiB; one arena saved a little more and was
//! 3–5 % slower). mimalloc, used before, held two to three times the live heap.

/// Must run before the process starts other threads: arenas are made as threads first allocate.
pub fn limit_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets a malloc parameter; no other thread is allocating yet.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}
