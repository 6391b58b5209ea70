//! Build facts for `balena_exporter_build_info`: the git revision and the compiler.
//!
//! The revision is `BALENA_EXPORTER_REVISION` when the build sets it (the Dockerfile's
//! `REVISION` build argument, which the release workflow passes: a container build has no
//! `.git`), else `git rev-parse --short=12 HEAD` with `-dirty` for uncommitted changes, else
//! `unknown` (a build outside git). The compiler is `$RUSTC --version`.

use std::process::Command;

fn output(cmd: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(cmd).args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn main() {
    println!("cargo:rerun-if-env-changed=BALENA_EXPORTER_REVISION");
    println!("cargo:rerun-if-changed=.git/HEAD");
    println!("cargo:rerun-if-changed=.git/index");
    let revision = std::env::var("BALENA_EXPORTER_REVISION")
        .ok()
        .filter(|r| !r.trim().is_empty())
        .or_else(|| {
            let rev = output("git", &["rev-parse", "--short=12", "HEAD"])?;
            let dirty = output("git", &["status", "--porcelain", "--untracked-files=no"])
                .is_some_and(|s| !s.is_empty());
            Some(if dirty { format!("{rev}-dirty") } else { rev })
        })
        .unwrap_or_else(|| "unknown".into());
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let version = output(&rustc, &["--version"])
        .and_then(|v| v.split_whitespace().nth(1).map(String::from))
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=BALENA_EXPORTER_REVISION={revision}");
    println!("cargo:rustc-env=BALENA_EXPORTER_RUSTC={version}");
}
