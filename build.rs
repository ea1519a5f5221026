//! Compiles the preload library for haproxy 1.5 – 1.7 (src/preload/shim.c) with the system C
//! compiler; the library embeds it (`preload::SHIM`). No `cc` crate: one compiler call, and rustc
//! already needs `cc` as its linker on linux-gnu. `CC` overrides the compiler.

use std::env;
use std::path::PathBuf;
use std::process::Command;

fn main() {
    let source = "src/preload/shim.c";
    println!("cargo:rerun-if-changed={source}");
    println!("cargo:rerun-if-env-changed=CC");
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"))
        .join("hapmaster-preload.so");
    let cc = env::var("CC").unwrap_or_else(|_| "cc".to_string());
    let status = Command::new(&cc)
        .args([
            "-shared",
            "-fPIC",
            "-O2",
            "-std=gnu11",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-Wl,--no-undefined",
            "-o",
        ])
        .arg(&out)
        .arg(source)
        .arg("-ldl")
        .status()
        .unwrap_or_else(|e| panic!("cannot run the C compiler `{cc}` for {source}: {e}"));
    assert!(
        status.success(),
        "`{cc}` failed to compile {source} ({status}); install a C compiler or set CC"
    );
}
