//! A balenaOS version as the API matches it to a release: balena-semver's reading of an
//! `os_version` (`balenaOS 2.80.3+rev1`, `Resin OS 2.12.7.rev2 (prod)`).

/// A balenaOS version as balena-semver reads it: `balenaOS 2.80.3+rev1` → 2.80.3, build
/// `rev1`, revision 1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OsVersion {
    /// major, minor, patch.
    pub core: (u64, u64, u64),
    /// Prerelease, `""` when none.
    pub prerelease: String,
    /// Build metadata, `""` when none.
    pub build: String,
    /// The `revN` of the build metadata.
    pub revision: Option<u64>,
}

impl OsVersion {
    /// The text as balena-semver trims it: no `balenaOS `/`Resin OS ` prefix, no trailing
    /// ` (prod)`, no leading `v`.
    pub fn trimmed(text: &str) -> String {
        let mut t = text.trim().to_string();
        let lower = t.to_ascii_lowercase();
        for prefix in ["balenaos", "balena os", "resinos", "resin os"] {
            if lower.starts_with(prefix) {
                t = t[prefix.len()..].trim_start().to_string();
                break;
            }
        }
        if let Some(open) = t.rfind(" (") {
            if t.ends_with(')') {
                t.truncate(open);
            }
        }
        t.strip_prefix('v').map(str::to_string).unwrap_or(t)
    }

    /// Parses an `os_version`; `None` when it is not a version balena-semver can read.
    pub fn parse(text: &str) -> Option<Self> {
        let t = Self::trimmed(text);
        let (main, build) = match t.split_once('+') {
            Some((m, b)) => (m.to_string(), b.to_string()),
            None => (t.clone(), String::new()),
        };
        let (core, prerelease) = match main.split_once('-') {
            Some((c, p)) => (c, p.to_string()),
            None => (main.as_str(), String::new()),
        };
        let mut parts = core.split('.');
        let mut num = || parts.next()?.parse::<u64>().ok();
        let core = (num()?, num()?, num()?);
        // `2.80.3.rev1` and `2.80.3.prod` are read as build metadata, as balena-semver does.
        let build = match (parts.next(), build.is_empty()) {
            (Some(extra), true) => extra.to_string(),
            (None, _) => build,
            (Some(_), false) => return None,
        };
        let revision = build
            .split('.')
            .find_map(|p| p.strip_prefix("rev")?.parse().ok());
        Some(Self {
            core,
            prerelease,
            build,
            revision,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn os_versions_read_as_balena_semver_reads_them() {
        let v = OsVersion::parse("balenaOS 2.80.3+rev1").unwrap();
        assert_eq!(v.core, (2, 80, 3));
        assert_eq!((v.build.as_str(), v.revision), ("rev1", Some(1)));
        let v = OsVersion::parse("Resin OS 2.12.7.rev2 (prod)").unwrap();
        assert_eq!((v.core, v.revision), ((2, 12, 7), Some(2)));
        let v = OsVersion::parse("balenaOS 6.0.0-beta.1").unwrap();
        assert_eq!(v.prerelease, "beta.1");
        assert_eq!(OsVersion::parse("v17.0.3").unwrap().core, (17, 0, 3));
        assert!(OsVersion::parse("balenaOS 2020.07").is_none());
        assert_eq!(OsVersion::trimmed("balenaOS 2020.07.0"), "2020.07.0");
    }
}
