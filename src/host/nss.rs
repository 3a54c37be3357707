//! Name lookups in the static binary.
//!
//! A glibc linked statically still loads the NSS modules that
//! `/etc/nsswitch.conf` names (`systemd`, `mdns4_minimal`, …) from the host's
//! shared glibc, which can crash the process (seen: a user lookup segfaults in
//! `libnss_systemd` on Debian 12). The built-in `files` and `dns` modules need
//! no loading, so the static build pins every database it may use to them.

/// Pins host, user and group lookups to glibc's built-in modules. A no-op in
/// dynamically linked builds, where the host's modules match the host's glibc.
pub fn use_builtin_lookups_only() {
    #[cfg(all(target_os = "linux", target_env = "gnu", target_feature = "crt-static"))]
    {
        use std::ffi::{c_char, c_int};
        unsafe extern "C" {
            fn __nss_configure_lookup(db: *const c_char, service_line: *const c_char) -> c_int;
        }
        // SAFETY: called once at start-up, before any thread or lookup; the
        // arguments are NUL-terminated static strings.
        unsafe {
            __nss_configure_lookup(c"hosts".as_ptr(), c"files dns".as_ptr());
            __nss_configure_lookup(c"passwd".as_ptr(), c"files".as_ptr());
            __nss_configure_lookup(c"group".as_ptr(), c"files".as_ptr());
        }
    }
}
