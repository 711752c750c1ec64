//! Linking this crate needs the `bpf-linker` binary, a dependency cargo cannot express. Rerun
//! (and relink) when the one on PATH changes. (The host build of the empty library target,
//! which `sensor`'s build script depends on, needs no linker.)
fn main() {
    if let Ok(path) = which::which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", path.display());
    }
}
