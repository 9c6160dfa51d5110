//! Links the worker so that whisper.cpp's CPU backend can be aborted between
//! graph nodes (see `src/abort.rs`): on Linux (GNU ld and lld), calls from
//! whisper.cpp to `ggml_backend_init_by_type` go through our wrapper, which
//! installs the abort callback on every CPU backend whisper.cpp creates.
fn main() {
    println!("cargo::rustc-check-cfg=cfg(ggml_abort_wrap)");
    println!("cargo:rerun-if-changed=build.rs");
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux") {
        println!("cargo:rustc-cfg=ggml_abort_wrap");
        println!("cargo:rustc-link-arg=-Wl,--wrap=ggml_backend_init_by_type");
    }
}
