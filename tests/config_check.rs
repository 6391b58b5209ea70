//! The binary's start-up: a bad config exits 1 with one line naming the file and key;
//! `--config.check` validates.

use std::process::Command;

fn run_with_config(yaml: &str, extra: &[&str]) -> (i32, String, String) {
    run_with_config_env::<&str>(yaml, extra, &[])
}

/// Runs the binary on `yaml` with extra flags and environment changes (`None` removes a
/// variable); returns (exit code, stdout, stderr).
fn run_with_config_env<V: AsRef<std::ffi::OsStr>>(
    yaml: &str,
    extra: &[&str],
    env: &[(&str, Option<V>)],
) -> (i32, String, String) {
    let dir = std::env::temp_dir().join(format!(
        "balena-exporter-test-{}-{}",
        std::process::id(),
        fastrand_suffix()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("config.yml");
    std::fs::write(&file, yaml).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_balena-exporter"));
    cmd.arg(format!("--config.file={}", file.display()))
        .arg("--web.listen-address=127.0.0.1:0")
        .args(extra)
        .env_remove("RUST_LOG");
    for (key, value) in env {
        match value {
            Some(v) => cmd.env(key, v),
            None => cmd.env_remove(key),
        };
    }
    let out = cmd.output().unwrap();
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
    let (code, out, _) = run_with_config(GOOD, &["--config.check"]);
    assert_eq!(code, 0);
    assert!(out.contains("config file is ok"), "{out}");
    let (code, _, err) = run_with_config("api:\n  timeout: forever\n", &["--config.check"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("api.timeout: invalid duration \"forever\""),
        "{err}"
    );
}

const GOOD: &str = "auths:\n  a:\n    token: x\ntargets:\n  t:\n    fleet: org/app\n    auth: a\n";

/// `BALENA_EXPORTER_`-prefixed variables override the file, and their errors say so.
#[test]
fn environment_overrides_apply_and_are_validated() {
    let run = |value: &str| {
        run_with_config_env(
            GOOD,
            &["--config.check"],
            &[("BALENA_EXPORTER_API__TIMEOUT", Some(value))],
        )
    };
    let (code, _, err) = run("3s");
    assert!(code == 0, "{err}");
    let (code, _, err) = run("whenever");
    assert_eq!(code, 1);
    assert!(
        err.contains("environment BALENA_EXPORTER_*")
            && err.contains("api.timeout: invalid duration \"whenever\""),
        "{err}"
    );
}

/// An override that is not UTF-8 is refused by name, never skipped in silence (and its value
/// is not shown).
#[test]
fn an_override_that_is_not_text_is_refused() {
    use std::os::unix::ffi::OsStrExt as _;
    let value = std::ffi::OsStr::from_bytes(b"3s\xff");
    let (code, _, err) = run_with_config_env(
        GOOD,
        &["--config.check"],
        &[("BALENA_EXPORTER_API__TIMEOUT", Some(value))],
    );
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("BALENA_EXPORTER_API__TIMEOUT: not UTF-8 text (the value is not shown)"),
        "{err}"
    );
}

/// `--config.expand-environment-variables` fills `${VAR}` in tokens; a missing variable is an
/// error naming the key and the variable, and never the rest of the value.
#[test]
fn token_variables_expand_only_when_asked() {
    let yaml = GOOD.replace("token: x", "token: ${BEX_TEST_TOKEN_42}");
    let run = |var: Option<&str>| {
        run_with_config_env(
            &yaml,
            &["--config.check", "--config.expand-environment-variables"],
            &[("BEX_TEST_TOKEN_42", var)],
        )
    };
    assert_eq!(run(Some("from-the-environment")).0, 0);
    let (code, _, err) = run(None);
    assert_eq!(code, 1);
    assert!(
        err.contains("auths.a.token: environment variable BEX_TEST_TOKEN_42 is not set"),
        "{err}"
    );
}

/// Variables with the prefix that are not config keys (Kubernetes service links set
/// `BALENA_EXPORTER_SERVICE_HOST` and `BALENA_EXPORTER_PORT`) do not stop the exporter.
#[test]
fn unrelated_prefixed_variables_are_not_config() {
    let env = [
        ("BALENA_EXPORTER_SERVICE_HOST", Some("10.0.0.1")),
        ("BALENA_EXPORTER_PORT", Some("tcp://10.0.0.1:9759")),
        ("BALENA_EXPORTER_PORT_9759_TCP_PROTO", Some("tcp")),
    ];
    let (code, _, err) = run_with_config_env(GOOD, &["--config.check"], &env);
    assert!(code == 0, "{err}");
}

/// docs/configuration.md: `--config.file` repeats and the files merge; a name defined in two
/// files is refused naming both.
#[test]
fn several_config_files_merge_and_a_name_in_two_is_refused() {
    let dir = std::env::temp_dir().join(format!("balena-exporter-merge-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let auths = dir.join("auths.yml");
    let targets = dir.join("targets.yml");
    let again = dir.join("again.yml");
    std::fs::write(&auths, "auths:\n  a:\n    token: tok\n").unwrap();
    std::fs::write(
        &targets,
        "targets:\n  t:\n    fleet: org/app\n    auth: a\n",
    )
    .unwrap();
    std::fs::write(
        &again,
        "targets:\n  t:\n    fleet: org/other\n    auth: a\n",
    )
    .unwrap();
    let check = |files: &[&std::path::Path]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_balena-exporter"));
        for f in files {
            cmd.arg(format!("--config.file={}", f.display()));
        }
        let out = cmd.arg("--config.check").output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (code, out) = check(&[&auths, &targets]);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("config file is ok (1 target, 1 auth, "),
        "{out}"
    );
    let (code, out) = check(&[&auths, &targets, &again]);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("targets.t") && out.contains("again.yml"),
        "{out}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
