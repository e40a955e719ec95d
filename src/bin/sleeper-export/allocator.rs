//! The process's allocator: the system's, with glibc's malloc held to two arenas.
//!
//! glibc gives threads arenas of their own (up to eight per core) and keeps freed memory in
//! each, so an export's peak resident memory was a third more than its live heap; with two
//! arenas it is within a tenth, at the same speed (`cargo bench --bench scale`: 128 input files
//! 555–578 → 521–526 MiB, 8 files 333–366 → 292–305 MiB; one arena saved a little more and was
//! 3–5 % slower). mimalloc, used before, held two to three times the live heap.
//!
//! Freed memory still stays in the arenas, and a process's later leaves did not fit their
//! buffers into what its earlier ones left: at 128 input files the second and third leaves in
//! one process peaked at 500–535 MiB against the first's 400, with 310–450 MiB of free heap
//! held between them. So the binary hands that back after each leaf.

/// Must run before the process starts other threads: arenas are made as threads first allocate.
pub fn limit_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets a malloc parameter; no other thread is allocating yet.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

/// Returns the heap's free memory to the system; called as each leaf is written. With it, each leaf
/// of a process peaks as the first did (128 input files, S3 → S3, three in one process:
/// 401, 398, 413 MiB, against 402, 507, 528 without; `cargo bench --bench scale`). It took
/// 14–32 ms after each of those 10 M-row leaves, about 1 % of their time.
pub fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only gives free pages back; it takes the arenas' locks as malloc does.
    unsafe {
        libc::malloc_trim(0);
    }
}
