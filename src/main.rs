fn main() -> std::process::ExitCode {
    return_freed_memory();
    sonicgw::cli::main()
}

/// glibc's malloc raises its mmap threshold whenever a large block is freed, after which blocks of that
/// size (a password hash's 19 MiB of Argon2 memory, a decoded photo) come from the heap arenas and are
/// kept by the process after use: a server that handled a burst of sign-ins held over 1 GB it no longer
/// used. A fixed threshold keeps large blocks in their own mappings, returned to the system when freed
/// (measured with scripts/load.sh: 1.27 GB resident after 200 clients for a minute, 80 MB with this).
fn return_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator tuning; it is called first thing in main, before any
    // other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
    }
}
