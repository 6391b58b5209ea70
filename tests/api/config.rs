//! The binary's start-up: a bad config exits 1 with one line naming the file and key;
//! `--config.check` validates.

use std::process::Command;

fn run_with_config(yaml: &str, extra: &[&str]) -> (i32, String, String) {
    let dir = std::env::temp_dir().join(format!(
        "balena-exporter-test-{}-{}",
        std::process::id(),
        fastrand_suffix()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("config.yml");
    std::fs::write(&file, yaml).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_balena-exporter"))
        .arg(format!("--config.file={}", file.display()))
        .arg("--web.listen-address=127.0.0.1:0")
        .args(extra)
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn fastrand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// A config error stops start-up with exit 1 and a message naming file, key and expectation.
#[test]
fn a_bad_config_exits_1_naming_the_key() {
    let (code, _, err) = run_with_config(
        "auths:\n  a:\n    token: s3cr3t-value\ntargets:\n  t:\n    fleet: org/app\n    auth: b\n",
        &[],
    );
    assert_eq!(code, 1);
    let line = err
        .lines()
        .find(|l| l.starts_with("balena-exporter: "))
        .expect(&err);
    assert!(
        line.contains("config.yml: targets.t.auth: no auth named \"b\""),
        "{line}"
    );
    assert!(!err.contains("s3cr3t-value"));
}

/// `--config.check` exits 0 on a valid file and 1 on an invalid one.
#[test]
fn config_check_validates_and_exits() {
    let good = "auths:\n  a:\n    token: x\ntargets:\n  t:\n    fleet: org/app\n    auth: a\n";
    let (code, out, _) = run_with_config(good, &["--config.check"]);
    assert_eq!(code, 0);
    assert!(out.contains("config file is ok"), "{out}");
    let (code, _, err) = run_with_config("api:\n  timeout: forever\n", &["--config.check"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("api.timeout: invalid duration \"forever\""),
        "{err}"
    );
}

/// `BALENA_EXPORTER_`-prefixed variables override the file, and their errors say so.
#[test]
fn environment_overrides_apply_and_are_validated() {
    let good = "auths:\n  a:\n    token: x\ntargets:\n  t:\n    fleet: org/app\n    auth: a\n";
    let dir = std::env::temp_dir().join(format!("balena-exporter-env-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("config.yml");
    std::fs::write(&file, good).unwrap();
    let run = |key: &str, value: &str| {
        Command::new(env!("CARGO_BIN_EXE_balena-exporter"))
            .arg(format!("--config.file={}", file.display()))
            .arg("--config.check")
            .env(key, value)
            .output()
            .unwrap()
    };
    let ok = run("BALENA_EXPORTER_API__TIMEOUT", "3s");
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let bad = run("BALENA_EXPORTER_API__TIMEOUT", "whenever");
    assert_eq!(bad.status.code(), Some(1));
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        err.contains("environment BALENA_EXPORTER_*")
            && err.contains("api.timeout: invalid duration \"whenever\""),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// `--config.expand-environment-variables` fills `${VAR}` in tokens; a missing variable is an
/// error naming the key and the variable, and never the rest of the value.
#[test]
fn token_variables_expand_only_when_asked() {
    let yaml = "auths:\n  a:\n    token: ${BEX_TEST_TOKEN_42}\ntargets:\n  t:\n    fleet: org/app\n    auth: a\n";
    let dir = std::env::temp_dir().join(format!("balena-exporter-expand-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("config.yml");
    std::fs::write(&file, yaml).unwrap();
    let run = |var: Option<&str>| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_balena-exporter"));
        cmd.arg(format!("--config.file={}", file.display()))
            .args(["--config.check", "--config.expand-environment-variables"])
            .env_remove("BEX_TEST_TOKEN_42");
        if let Some(v) = var {
            cmd.env("BEX_TEST_TOKEN_42", v);
        }
        cmd.output().unwrap()
    };
    assert!(run(Some("from-the-environment")).status.success());
    let missing = run(None);
    assert_eq!(missing.status.code(), Some(1));
    let err = String::from_utf8_lossy(&missing.stderr);
    assert!(
        err.contains("auths.a.token: environment variable BEX_TEST_TOKEN_42 is not set"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Variables with the prefix that are not config keys (Kubernetes service links set
/// `BALENA_EXPORTER_SERVICE_HOST` and `BALENA_EXPORTER_PORT`) do not stop the exporter.
#[test]
fn unrelated_prefixed_variables_are_not_config() {
    let good = "auths:\n  a:\n    token: x\ntargets:\n  t:\n    fleet: org/app\n    auth: a\n";
    let dir = std::env::temp_dir().join(format!("balena-exporter-links-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("config.yml");
    std::fs::write(&file, good).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_balena-exporter"))
        .arg(format!("--config.file={}", file.display()))
        .arg("--config.check")
        .env("BALENA_EXPORTER_SERVICE_HOST", "10.0.0.1")
        .env("BALENA_EXPORTER_PORT", "tcp://10.0.0.1:9759")
        .env("BALENA_EXPORTER_PORT_9759_TCP_PROTO", "tcp")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = std::fs::remove_dir_all(&dir);
}
