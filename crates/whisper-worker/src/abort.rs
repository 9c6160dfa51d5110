//! Aborting a running decode: one process-wide flag that whisper.cpp polls.
//!
//! whisper.cpp 1.8.3 checks `whisper_full_params.abort_callback` only after
//! the whole encoder (conv + encoder + cross graphs) and after each decoder
//! step, and the encoder is most of a decode. So the same callback is also
//! installed on every ggml CPU backend whisper.cpp creates
//! (`ggml_backend_cpu_set_abort_callback`), where ggml's graph executor
//! polls it after **every graph node**: a cancelled encoder stops within one
//! node (a few ms). whisper.cpp creates its backends privately, so the
//! worker is linked with `--wrap=ggml_backend_init_by_type` (build.rs, Linux
//! only): whisper.cpp's calls reach [`__wrap_ggml_backend_init_by_type`],
//! which calls the real function and installs the callback. Elsewhere only
//! the coarse checks apply.
//!
//! # Invariants
//! 1. [`poll`] is what every abort check calls; it counts the checks
//!    ([`checks`]), so "work done after a cancel" is a number of graph nodes
//!    or decoder steps, not a wall-clock guess.
//! 2. The flag is only raised for the request in progress ([`raise`]) and
//!    cleared before the next one starts ([`clear`]).

use std::ffi::c_void;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

static ABORT: AtomicBool = AtomicBool::new(false);
static CHECKS: AtomicU64 = AtomicU64::new(0);
static CHECKS_AT_RAISE: AtomicU64 = AtomicU64::new(0);

/// The abort callback (holds invariant 1). Called by ggml's thread 0 after
/// each graph node, and by whisper.cpp after the encoder and each decoder step.
pub unsafe extern "C" fn poll(_user: *mut c_void) -> bool {
    CHECKS.fetch_add(1, Ordering::Relaxed);
    ABORT.load(Ordering::Acquire)
}

/// Abort checks so far (graph nodes + whisper.cpp's own checks).
pub fn checks() -> u64 {
    CHECKS.load(Ordering::Relaxed)
}

/// Asks the decode in progress to stop at its next check.
pub fn raise() {
    CHECKS_AT_RAISE.store(CHECKS.load(Ordering::Relaxed), Ordering::Relaxed);
    ABORT.store(true, Ordering::Release);
}

/// Whether the flag is up.
pub fn raised() -> bool {
    ABORT.load(Ordering::Acquire)
}

/// Checks made since [`raise`] (1 = stopped at the first one).
pub fn checks_since_raise() -> u64 {
    checks().saturating_sub(CHECKS_AT_RAISE.load(Ordering::Relaxed))
}

/// Lowers the flag before the next request (holds invariant 2).
pub fn clear() {
    ABORT.store(false, Ordering::Release);
}

/// Whether graph-node checks are installed (the link-time wrapper ran).
pub fn per_node() -> bool {
    PER_NODE.load(Ordering::Relaxed)
}

static PER_NODE: AtomicBool = AtomicBool::new(false);

#[cfg(ggml_abort_wrap)]
mod wrap {
    use whisper_rs_sys::{ggml_backend_dev_type, ggml_backend_t};

    extern "C" {
        fn __real_ggml_backend_init_by_type(
            type_: ggml_backend_dev_type,
            params: *const std::os::raw::c_char,
        ) -> ggml_backend_t;
    }

    /// whisper.cpp's calls to `ggml_backend_init_by_type` land here (the
    /// linker's `--wrap`): the backend is created as usual, and a CPU
    /// backend gets [`super::poll`] as its abort callback.
    ///
    /// # Safety
    /// Called by C with the arguments of `ggml_backend_init_by_type`.
    #[no_mangle]
    pub unsafe extern "C" fn __wrap_ggml_backend_init_by_type(
        type_: ggml_backend_dev_type,
        params: *const std::os::raw::c_char,
    ) -> ggml_backend_t {
        // SAFETY: the same arguments the caller gave, to the real function.
        let backend = unsafe { __real_ggml_backend_init_by_type(type_, params) };
        // SAFETY: `backend` is a live backend (checked non-null); the
        // callback is a plain function with no user data.
        unsafe {
            if !backend.is_null() && whisper_rs_sys::ggml_backend_is_cpu(backend) {
                whisper_rs_sys::ggml_backend_cpu_set_abort_callback(
                    backend,
                    Some(super::poll),
                    std::ptr::null_mut(),
                );
                super::PER_NODE.store(true, std::sync::atomic::Ordering::Relaxed);
            }
        }
        backend
    }
}
