//! Builds both builds of the filter for the tests, so that `cargo test` always exercises the
//! modules built from the current source: the `.wasm` (path exported to tests as
//! `REDIS_IDLE_GUARD_WASM`) and the native `.so` (`REDIS_IDLE_GUARD_NATIVE`).
//!
//! Each nested cargo uses its own target dir (the outer cargo holds a lock on `target/`) and is
//! guarded against recursion by `REDIS_IDLE_GUARD_SKIP_WASM`, which it sets.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=src");
    println!("cargo:rerun-if-changed=Cargo.toml");
    println!("cargo:rerun-if-changed=Cargo.lock");
    println!("cargo:rerun-if-env-changed=REDIS_IDLE_GUARD_SKIP_WASM");

    let target = env::var("TARGET").unwrap_or_default();
    if target.starts_with("wasm32") || env::var_os("REDIS_IDLE_GUARD_SKIP_WASM").is_some() {
        println!("cargo:rustc-env=REDIS_IDLE_GUARD_WASM=");
        println!("cargo:rustc-env=REDIS_IDLE_GUARD_NATIVE=");
        return;
    }

    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| ".".into()));
    let wasm_dir = manifest_dir.join("target").join("wasm-for-tests");
    let wasm = wasm_dir.join("wasm32-unknown-unknown/release/redis_idle_guard.wasm");
    build(
        &manifest_dir,
        &["--target", "wasm32-unknown-unknown"],
        &wasm_dir,
        &wasm,
        "REDIS_IDLE_GUARD_WASM",
        "is the wasm32-unknown-unknown target installed? (make setup-rust)",
    );
    // The native module as `make build-native` builds it (unwinding, so its guards catch).
    let native_dir = manifest_dir.join("target").join("native-for-tests");
    build(
        &manifest_dir,
        &[
            "--features",
            "native",
            "--config",
            "profile.release.panic=\"unwind\"",
        ],
        &native_dir,
        &native_dir.join("release/libredis_idle_guard.so"),
        "REDIS_IDLE_GUARD_NATIVE",
        "see the cargo output above",
    );
}

/// One nested `cargo build --release --lib` with `args` into `target_dir`; exports the path of
/// `artifact` to the tests as `var` (empty if the build failed).
fn build(
    manifest_dir: &Path,
    args: &[&str],
    target_dir: &Path,
    artifact: &Path,
    var: &str,
    hint: &str,
) {
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(manifest_dir)
        .args(["build", "--release", "--lib"])
        .args(args)
        .arg("--target-dir")
        .arg(target_dir)
        .env("REDIS_IDLE_GUARD_SKIP_WASM", "1");
    // Flags meant for the outer build must not leak into the nested one.
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
    match cmd.status() {
        Ok(status) if status.success() && artifact.exists() => {
            println!("cargo:rustc-env={var}={}", artifact.display());
        }
        Ok(status) => {
            println!(
                "cargo:warning=building {} for tests failed ({status}); {hint}",
                artifact.display()
            );
            println!("cargo:rustc-env={var}=");
        }
        Err(e) => {
            println!(
                "cargo:warning=could not run cargo to build {} for tests: {e}",
                artifact.display()
            );
            println!("cargo:rustc-env={var}=");
        }
    }
}
