//! The bad-config matrix: every file in tests/fixtures/bad-configs/ is refused with the message
//! listed in its EXPECTED.tsv line — at start (`--config.check`, exit 1, one line naming the
//! file, the key path and the expectation) and on reload (error returned, old config kept).

use std::path::PathBuf;
use std::process::Command;

use balena_exporter::config::{self, LoadOptions, SharedConfig};

fn fixtures() -> Vec<(PathBuf, String)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/bad-configs");
    let index = std::fs::read_to_string(dir.join("EXPECTED.tsv")).unwrap();
    let list: Vec<(PathBuf, String)> = index
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (file, msg) = l.split_once('\t').unwrap();
            (dir.join(file), msg.to_string())
        })
        .collect();
    let on_disk = std::fs::read_dir(&dir)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "yml")
        })
        .count();
    assert_eq!(
        list.len(),
        on_disk,
        "every fixture is listed in EXPECTED.tsv"
    );
    assert!(list.len() >= 30);
    list
}

/// Start-up refuses each bad config with exit 1 and its one-line message.
#[test]
fn every_bad_config_stops_start_up_with_its_message() {
    for (file, msg) in fixtures() {
        let out = Command::new(env!("CARGO_BIN_EXE_balena-exporter"))
            .arg(format!("--config.file={}", file.display()))
            .arg("--config.check")
            .env_remove("RUST_LOG")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{}: {err}", file.display());
        let lines: Vec<&str> = err
            .lines()
            .filter(|l| l.starts_with("balena-exporter: "))
            .collect();
        assert_eq!(lines.len(), 1, "{err}");
        assert_eq!(err.trim_end().lines().count(), 1, "one line in all: {err}");
        assert!(
            lines[0].contains(&file.display().to_string()),
            "names the file: {}",
            lines[0]
        );
        assert!(
            lines[0].contains(&msg),
            "{}: expected {msg:?} in {}",
            file.display(),
            lines[0]
        );
        assert!(
            !err.contains("secret-value-1"),
            "a token value was repeated: {err}"
        );
    }
}

/// A reload to each bad config is refused and the config in force stays.
#[test]
fn every_bad_config_is_refused_on_reload_and_the_old_one_stays() {
    let dir =
        std::env::temp_dir().join(format!("balena-exporter-badreload-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("config.yml");
    let good = "auths:\n  keep:\n    token: good-token\ntargets:\n  kept:\n    fleet: org/kept\n    auth: keep\n";
    std::fs::write(&file, good).unwrap();
    let opts = LoadOptions::file(&file);
    let shared = SharedConfig::new(config::load(&opts).unwrap(), Some(opts));
    for (fixture, msg) in fixtures() {
        std::fs::write(&file, std::fs::read_to_string(&fixture).unwrap()).unwrap();
        let e = shared
            .reload()
            .expect_err(&fixture.display().to_string())
            .to_string();
        assert!(e.contains(&msg), "{}: {e}", fixture.display());
        assert!(
            !e.contains("secret-value-1"),
            "a token value was repeated: {e}"
        );
        let now = shared.snapshot();
        assert_eq!(
            now.targets.keys().collect::<Vec<_>>(),
            ["kept"],
            "{}",
            fixture.display()
        );
        assert_eq!(now.generation, 0);
    }
    let _ = std::fs::remove_dir_all(&dir);
}
