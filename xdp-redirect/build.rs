//! Builds the XDP program (`ebpf/`, target `bpfel-unknown-none`) so that a plain
//! `cargo build` on a new machine needs no hand steps:
//!
//! 1. `rust-src` present (for `-Z build-std=core`), else `rustup component add rust-src`;
//! 2. `bpf-linker` on PATH or in `~/.cargo/bin`, else installed exactly as
//!    `scripts/setup.sh` does (linked against rustc's own LLVM);
//! 3. a nested `cargo build` of `ebpf/` with its own target dir under OUT_DIR
//!    (no fight over the outer build's lock) and the outer build's environment
//!    scrubbed (its RUSTFLAGS, wrappers and target settings are for the host).
//!
//! The object lands at `$OUT_DIR/weir-xdp.bpf.o`; `src/lib.rs` embeds it.

use std::{
    env,
    ffi::OsString,
    fs,
    path::{Path, PathBuf},
    process::Command,
};

const BPF_LINKER_VERSION: &str = "0.13.0";
const BPF_TARGET: &str = "bpfel-unknown-none";
const BPF_BIN: &str = "weir-xdp";

fn main() {
    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR"));
    let ebpf_dir = manifest_dir.join("ebpf");
    for p in ["src", "Cargo.toml", "Cargo.lock"] {
        println!("cargo:rerun-if-changed={}", ebpf_dir.join(p).display());
    }
    println!("cargo:rerun-if-changed=build.rs");

    let home = env::var_os("HOME").map(PathBuf::from);
    let cargo_bin = env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| home.as_ref().map(|h| h.join(".cargo")))
        .map(|c| c.join("bin"));
    // PATH for every tool we run: ~/.cargo/bin first (rustup, bpf-linker).
    let path = {
        let mut dirs: Vec<PathBuf> = cargo_bin.iter().cloned().collect();
        if let Some(p) = env::var_os("PATH") {
            dirs.extend(env::split_paths(&p));
        }
        env::join_paths(dirs).expect("PATH")
    };

    let sysroot = rustc_sysroot(&path);
    ensure_rust_src(&sysroot, &path);
    ensure_bpf_linker(&sysroot, &path);

    let target_dir = out_dir.join("ebpf-target");
    let ld_library_path = {
        let mut dirs = vec![sysroot.join("lib")];
        if let Some(p) = env::var_os("LD_LIBRARY_PATH") {
            dirs.extend(env::split_paths(&p));
        }
        env::join_paths(dirs).expect("LD_LIBRARY_PATH")
    };
    let mut cmd = scrubbed("cargo", &path);
    cmd.current_dir(&ebpf_dir)
        .env("RUSTC_BOOTSTRAP", "1")
        .env("LD_LIBRARY_PATH", ld_library_path)
        .args(["build", "--release", "--locked", "--target", BPF_TARGET])
        .args(["-Z", "build-std=core"])
        .arg("--target-dir")
        .arg(&target_dir)
        // Our stdout is parsed by cargo for `cargo:` lines; keep the nested
        // build's chatter out of it.
        .stdout(std::io::stderr());
    run(&mut cmd, "cargo build (XDP program, bpfel-unknown-none)");

    let built = target_dir.join(BPF_TARGET).join("release").join(BPF_BIN);
    let dest = out_dir.join("weir-xdp.bpf.o");
    fs::copy(&built, &dest)
        .unwrap_or_else(|e| panic!("copy {} -> {}: {e}", built.display(), dest.display()));
}

/// A command with the outer build's environment removed: everything cargo
/// sets for build scripts (CARGO_*, RUSTC*, RUSTFLAGS, TARGET, ...), except
/// what says where cargo's home and registries are.
fn scrubbed(program: &str, path: &OsString) -> Command {
    const KEEP_PREFIXES: [&str; 5] = [
        "CARGO_HOME",
        "CARGO_NET_",
        "CARGO_HTTP_",
        "CARGO_REGISTRIES_",
        "CARGO_REGISTRY_",
    ];
    const DROP: [&str; 14] = [
        "RUSTFLAGS",
        "RUSTDOCFLAGS",
        "RUSTC",
        "RUSTDOC",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTC_LINKER",
        "TARGET",
        "HOST",
        "OUT_DIR",
        "OPT_LEVEL",
        "PROFILE",
        "DEBUG",
        "NUM_JOBS",
    ];
    let mut cmd = Command::new(program);
    for (k, _) in env::vars_os() {
        let Some(k) = k.to_str() else { continue };
        let cargo_var = k.starts_with("CARGO") && !KEEP_PREFIXES.iter().any(|p| k.starts_with(p));
        if cargo_var || DROP.contains(&k) || k.starts_with("DEP_") {
            cmd.env_remove(k);
        }
    }
    cmd.env("PATH", path);
    cmd
}

fn run(cmd: &mut Command, what: &str) {
    let status = cmd
        .status()
        .unwrap_or_else(|e| panic!("{what}: cannot run {cmd:?}: {e}"));
    assert!(status.success(), "{what}: {cmd:?} failed: {status}");
}

fn rustc_sysroot(path: &OsString) -> PathBuf {
    let out = scrubbed("rustc", path)
        .args(["--print", "sysroot"])
        .output()
        .expect("rustc --print sysroot");
    assert!(out.status.success(), "rustc --print sysroot failed");
    PathBuf::from(String::from_utf8(out.stdout).expect("utf-8 sysroot").trim())
}

fn ensure_rust_src(sysroot: &Path, path: &OsString) {
    let core = sysroot.join("lib/rustlib/src/rust/library/core/Cargo.toml");
    if core.exists() {
        return;
    }
    println!("cargo:warning=weir-xdp: installing rust-src (rustup component add rust-src)");
    run(
        scrubbed("rustup", path).args(["component", "add", "rust-src"]),
        "rustup component add rust-src",
    );
}

fn ensure_bpf_linker(sysroot: &Path, path: &OsString) {
    let found = env::split_paths(path).any(|d| d.join("bpf-linker").is_file());
    if found {
        return;
    }
    // As scripts/setup.sh: bpf-linker built against rustc's own LLVM.
    println!("cargo:warning=weir-xdp: installing bpf-linker {BPF_LINKER_VERSION} (about a minute)");
    let llvm = fs::read_dir(sysroot.join("lib"))
        .expect("read rustc sysroot lib")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libLLVM.so."))
        })
        .expect("rustc's libLLVM.so.* in the sysroot (rustup's llvm-tools not needed, it ships with rustc)");
    let major = llvm
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("libLLVM.so."))
        .and_then(|v| v.split(['.', '-']).next())
        .expect("LLVM major version")
        .to_owned();
    let link_dir = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR")).join("llvm-link");
    let _ = fs::remove_dir_all(&link_dir);
    fs::create_dir_all(&link_dir).expect("create llvm-link dir");
    std::os::unix::fs::symlink(&llvm, link_dir.join("libLLVM.so")).expect("symlink libLLVM.so");
    run(
        scrubbed("cargo", path)
            .env("LIBRARY_PATH", &link_dir)
            .args([
                "install",
                "bpf-linker",
                "--version",
                BPF_LINKER_VERSION,
                "--locked",
            ])
            .args(["--no-default-features", "--features"])
            .arg(format!("llvm-{major}")),
        "cargo install bpf-linker",
    );
}
