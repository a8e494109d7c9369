//! Embeds the recipes under `images/` so the binary carries its own recipes,
//! and adding a template is adding a file (no code change).
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

fn collect(dir: &Path, base: &Path, out: &mut Vec<(String, PathBuf)>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir).expect("read recipe dir").flatten().collect();
    entries.sort_by_key(|e| e.path());
    for e in entries {
        let p = e.path();
        if p.is_dir() {
            // A file added anywhere below changes its directory's mtime.
            println!("cargo:rerun-if-changed={}", p.display());
            collect(&p, base, out);
        } else {
            let rel = p.strip_prefix(base).expect("prefix").to_string_lossy().into_owned();
            out.push((rel, p));
        }
    }
}

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("manifest dir"));
    let images = manifest.join("../../images").canonicalize().expect("images dir");
    println!("cargo:rerun-if-changed={}", images.display());
    let mut files = Vec::new();
    collect(&images, &images, &mut files);
    let mut code = String::from("/// Every file under `images/`, as (path relative to `images/`, contents).\npub static RECIPE_FILES: &[(&str, &str)] = &[\n");
    for (rel, path) in &files {
        println!("cargo:rerun-if-changed={}", path.display());
        writeln!(code, "    ({rel:?}, include_str!({:?})),", path.display().to_string()).expect("write");
    }
    code.push_str("];\n");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("out dir")).join("recipes.rs");
    std::fs::write(out, code).expect("write recipes.rs");
}
