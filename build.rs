//! Builds the filter's `.wasm` for the tests, so that `cargo test` always exercises the module
//! built from the current source. The path is exported to tests as `REDIS_IDLE_GUARD_WASM`.
//!
//! The nested cargo uses its own target dir (the outer cargo holds a lock on `target/`) and is
//! guarded against recursion: it targets wasm32, where this script does nothing.

use std::env;
use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=src");
    println!("cargo:rerun-if-changed=Cargo.toml");
    println!("cargo:rerun-if-changed=Cargo.lock");
    println!("cargo:rerun-if-env-changed=REDIS_IDLE_GUARD_SKIP_WASM");

    let target = env::var("TARGET").unwrap_or_default();
    if target.starts_with("wasm32") || env::var_os("REDIS_IDLE_GUARD_SKIP_WASM").is_some() {
        println!("cargo:rustc-env=REDIS_IDLE_GUARD_WASM=");
        return;
    }

    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| ".".into()));
    let target_dir = manifest_dir.join("target").join("wasm-for-tests");
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&manifest_dir)
        .args([
            "build",
            "--release",
            "--lib",
            "--target",
            "wasm32-unknown-unknown",
            "--target-dir",
        ])
        .arg(&target_dir)
        .env("REDIS_IDLE_GUARD_SKIP_WASM", "1");
    // Flags meant for the outer (native) build must not leak into the wasm build.
    for var in [
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "CARGO_MAKEFLAGS",
        "MAKEFLAGS",
        "MFLAGS",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_LLVM_COV",
    ] {
        cmd.env_remove(var);
    }
    let wasm = target_dir.join("wasm32-unknown-unknown/release/redis_idle_guard.wasm");
    match cmd.status() {
        Ok(status) if status.success() && wasm.exists() => {
            println!("cargo:rustc-env=REDIS_IDLE_GUARD_WASM={}", wasm.display());
        }
        Ok(status) => {
            println!("cargo:warning=building the .wasm for tests failed ({status}); is the wasm32-unknown-unknown target installed? (make setup-rust)");
            println!("cargo:rustc-env=REDIS_IDLE_GUARD_WASM=");
        }
        Err(e) => {
            println!("cargo:warning=could not run cargo to build the .wasm for tests: {e}");
            println!("cargo:rustc-env=REDIS_IDLE_GUARD_WASM=");
        }
    }
}
