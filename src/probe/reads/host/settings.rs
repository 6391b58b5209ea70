//! Supervisor settings as configuration variables: which names set which [`Setting`], which
//! name wins at one level, and how the supervisor reads a boolean.

/// A supervisor setting whose state matters to an operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Setting {
    /// `SUPERVISOR_HARDWARE_METRICS` false: the device reports no CPU, memory or temperature.
    HardwareMetricsDisabled,
    /// `SUPERVISOR_LOCAL_MODE` true: the device ignores its fleet's releases.
    LocalMode,
    /// `SUPERVISOR_OVERRIDE_LOCK` (or the older `OVERRIDE_LOCK`) true: updates kill services
    /// that hold an update lock.
    LockOverride,
}

impl Setting {
    /// Every setting, in label order.
    pub const ALL: [Setting; 3] = [
        Setting::HardwareMetricsDisabled,
        Setting::LocalMode,
        Setting::LockOverride,
    ];

    /// The `setting` label value.
    pub fn label(self) -> &'static str {
        match self {
            Setting::HardwareMetricsDisabled => "hardware_metrics_disabled",
            Setting::LocalMode => "local_mode",
            Setting::LockOverride => "lock_override",
        }
    }

    /// Whether the setting is in the state that matters when its variable says `on`.
    pub(super) fn matters_when(self, on: bool) -> bool {
        match self {
            Setting::HardwareMetricsDisabled => !on,
            Setting::LocalMode | Setting::LockOverride => on,
        }
    }

    /// The setting a variable name sets, with its rank among that setting's names (lower
    /// wins when one level has several: the `BALENA_` name over the older `RESIN_` one, and
    /// `SUPERVISOR_OVERRIDE_LOCK` over the older `OVERRIDE_LOCK`).
    fn of_name(name: &str) -> Option<(Setting, u8)> {
        let (legacy_prefix, rest) = if let Some(rest) = name.strip_prefix("BALENA_") {
            (0, rest)
        } else if let Some(rest) = name.strip_prefix("RESIN_") {
            (1, rest)
        } else {
            return None;
        };
        let (setting, rank) = match rest {
            "SUPERVISOR_HARDWARE_METRICS" => (Setting::HardwareMetricsDisabled, 0),
            "SUPERVISOR_LOCAL_MODE" => (Setting::LocalMode, 0),
            "SUPERVISOR_OVERRIDE_LOCK" => (Setting::LockOverride, 0),
            "OVERRIDE_LOCK" => (Setting::LockOverride, 2),
            _ => return None,
        };
        Some((setting, rank + legacy_prefix))
    }
}

/// A variable's value as the supervisor reads a boolean (`true`/`1`/`on`, `false`/`0`/`off`,
/// any case); `None` for anything else, which the supervisor ignores for its default.
fn parse_bool(value: &str) -> Option<bool> {
    match value.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "on" => Some(true),
        "false" | "0" | "off" => Some(false),
        _ => None,
    }
}

/// The settings one fleet or one device sets: per [`Setting`], the value of its
/// highest-ranked name, if any.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Settings([Option<(u8, bool)>; 3]);

impl Settings {
    pub(super) fn set(&mut self, name: &str, value: Option<&str>) {
        let Some((setting, rank)) = Setting::of_name(name) else {
            return;
        };
        let Some(on) = value.and_then(parse_bool) else {
            return;
        };
        let slot = &mut self.0[setting as usize];
        if slot.is_none_or(|(r, _)| rank < r) {
            *slot = Some((rank, on));
        }
    }

    /// The value this level sets for `setting`, if it sets one.
    pub fn get(&self, setting: Setting) -> Option<bool> {
        self.0[setting as usize].map(|(_, on)| on)
    }
}

#[cfg(test)]
mod tests {
    use super::super::Snapshot;
    use super::*;

    #[test]
    fn the_devices_variables_override_the_fleets_and_balena_names_the_older_ones() {
        let mut fleet = Settings::default();
        fleet.set("RESIN_SUPERVISOR_HARDWARE_METRICS", Some("false"));
        fleet.set("BALENA_SUPERVISOR_LOCAL_MODE", Some("1"));
        fleet.set("RESIN_SUPERVISOR_LOCAL_MODE", Some("0"));
        let mut device = Settings::default();
        device.set("BALENA_SUPERVISOR_HARDWARE_METRICS", Some("true"));
        device.set("RESIN_OVERRIDE_LOCK", Some("1"));
        device.set("BALENA_SUPERVISOR_OVERRIDE_LOCK", Some("false"));
        device.set("BALENA_SUPERVISOR_POLL_INTERVAL", Some("1"));
        let m = |s| Snapshot::matters(s, device, fleet);
        assert!(!m(Setting::HardwareMetricsDisabled), "device says true");
        assert!(Snapshot::matters(
            Setting::HardwareMetricsDisabled,
            Settings::default(),
            fleet
        ));
        assert!(m(Setting::LocalMode), "BALENA_ over RESIN_");
        assert!(
            !m(Setting::LockOverride),
            "SUPERVISOR_OVERRIDE_LOCK over OVERRIDE_LOCK"
        );
        let mut junk = Settings::default();
        junk.set("BALENA_SUPERVISOR_LOCAL_MODE", Some("maybe"));
        assert_eq!(junk.get(Setting::LocalMode), None);
    }
}
