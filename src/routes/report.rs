//! What a finished probe leaves behind, in words a person reads: the self-metrics, one log
//! line, the debug text (`debug=true`, `/logs`) and the history record the landing page shows.
//! One place says how a result, its data's origin and the advice read, so the log, the debug
//! page and the landing page never disagree.

use std::fmt::Write as _;
use std::time::Duration;

use super::AppState;
use crate::balena::BalenaError;
use crate::history::ProbeRecord;
use crate::probe::cache::Source;
use crate::probe::prober::{Outcome, ProbeRequest};

/// Records the probe (self-metrics, one log line, the history) and returns its debug text.
pub fn record(state: &AppState, probe: &ProbeRequest, f: &Outcome, duration: Duration) -> String {
    let (target, module) = (probe.target_name.as_str(), probe.module_name.as_str());
    let outcome = match &f.result {
        Ok(_) => "success",
        Err(e) => e.reason(),
    };
    let m = &state.metrics;
    m.probes.with_label_values(&[target, module, outcome]).inc();
    m.probe_duration
        .with_label_values(&[module])
        .observe(duration.as_secs_f64());
    log_outcome(probe, f, duration);
    let log = probe_log(probe, f);
    state.history.add(ProbeRecord {
        id: 0,
        time: std::time::SystemTime::now(),
        target: target.to_string(),
        module: module.to_string(),
        auth: probe.auth_name.clone(),
        result: outcome,
        summary: result_words(&f.result),
        advice: f
            .result
            .as_ref()
            .err()
            .and_then(|e| e.advice(&probe.auth_name)),
        attention: f
            .result
            .as_ref()
            .map(|d| d.attention.clone())
            .unwrap_or_default(),
        data_from: f.source,
        data_age: f.age,
        duration,
        log: log.clone(),
    });
    log
}

/// `n` and the noun, plural when it is not 1: "1 fleet", "3 fleets".
pub fn count(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

/// The result in words: "success: 1 fleet, 12 devices", or "failure (unauthorized): the API
/// token was rejected (HTTP 401)".
pub fn result_words<T: std::ops::Deref<Target = crate::probe::ProbeData>>(
    result: &Result<T, BalenaError>,
) -> String {
    match result {
        Ok(d) if d.online_only => format!(
            "success: {}, {} online",
            count(d.fleets, "fleet"),
            count(d.devices, "device")
        ),
        Ok(d) => format!(
            "success: {}, {}",
            count(d.fleets, "fleet"),
            count(d.devices, "device")
        ),
        Err(e) => format!("failure ({}): {e}", e.reason()),
    }
}

/// A duration for people: "0.4 ms", "115.0 ms", "1.23 s".
pub fn took(d: Duration) -> String {
    let secs = d.as_secs_f64();
    if secs < 1.0 {
        format!("{:.1} ms", secs * 1000.0)
    } else {
        format!("{secs:.2} s")
    }
}

/// Where the data came from, in words.
pub fn data_words(source: Source, age: Duration) -> String {
    match source {
        Source::Fetched => "fetched for this probe".to_string(),
        Source::Cache => format!(
            "from the cache, {:.1}s old (api.cache_ttl): no request to the API",
            age.as_secs_f64()
        ),
        Source::Shared => "shared with an identical probe's fetch in flight".to_string(),
    }
}

/// One log line per probe, its keys named as the metrics say them: target, `result` (`success`
/// or the failure's reason, as `balena_exporter_probes_total`), duration, `api_requests` (as
/// `balena_probe_api_requests`); the endpoint and status when it failed. Seconds to the
/// millisecond.
fn log_outcome(probe: &ProbeRequest, f: &Outcome, duration: Duration) {
    let (target, module) = (&probe.target_name, probe.module_name.as_str());
    let calls = &f.calls;
    let ms = |d: Duration| (d.as_secs_f64() * 1000.0).round() / 1000.0;
    match &f.result {
        Ok(data) if data.online_only => tracing::info!(
            target: "balena_exporter::probe",
            target_name = %target, module, result = "success",
            duration_seconds = ms(duration), api_requests = calls.len(),
            data_from = f.source.as_str(), data_age_seconds = ms(f.age),
            fleets = data.fleets, devices_online = data.devices, "probe succeeded"
        ),
        Ok(data) => tracing::info!(
            target: "balena_exporter::probe",
            target_name = %target, module, result = "success",
            duration_seconds = ms(duration), api_requests = calls.len(),
            data_from = f.source.as_str(), data_age_seconds = ms(f.age),
            fleets = data.fleets, devices = data.devices, "probe succeeded"
        ),
        Err(e) => {
            let last = calls.last();
            tracing::error!(
                target: "balena_exporter::probe",
                target_name = %target, module, auth = probe.auth_name.as_str(),
                result = e.reason(), error = %e,
                endpoint = last.map(|c| c.endpoint).unwrap_or("-"),
                status = last.and_then(|c| c.status).unwrap_or(0),
                duration_seconds = ms(duration), api_requests = calls.len(),
                "probe failed"
            )
        }
    }
}

/// The probe's log as `debug=true` and `/logs` show it: result, what to do, the auth, where
/// the data came from, upstream requests and log lines (never the Authorization header), and
/// the module.
fn probe_log(probe: &ProbeRequest, f: &Outcome) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Probe of target {:?} with module {:?}, auth {:?}",
        probe.target_name, probe.module_name, probe.auth_name
    );
    let _ = writeln!(out, "Result: {}", result_words(&f.result));
    if let Some(advice) = f
        .result
        .as_ref()
        .err()
        .and_then(|e| e.advice(&probe.auth_name))
    {
        let _ = writeln!(out, "What to do: {advice}");
    }
    if let Ok(d) = &f.result {
        for line in &d.attention {
            let _ = writeln!(out, "Needs attention: {line}");
        }
    }
    let _ = writeln!(out, "Data: {}", data_words(f.source, f.age));
    if let Ok(d) = &f.result {
        let _ = writeln!(
            out,
            "Series kept: {} bytes of text in {} bytes of {} pieces (compressed as the fetching \
             probe's client asked){}",
            d.series.len(),
            d.series.compressed_len(),
            d.series.codec().name(),
            if d.compact.is_some() {
                ", and per-device values (compact_cache)"
            } else {
                ""
            }
        );
    }
    let _ = writeln!(out, "\nLog (upstream requests and decisions, in order):");
    for n in &f.notes {
        let _ = writeln!(out, "{n}");
    }
    if f.notes.is_empty() {
        let _ = writeln!(out, "(no upstream request by this probe)");
    }
    let _ = writeln!(
        out,
        "\nModule configuration (as it takes effect):\n{}",
        serde_yaml::to_string(&probe.module().effective()).unwrap_or_default()
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_read_as_words() {
        assert_eq!(count(1, "fleet"), "1 fleet");
        assert_eq!(count(0, "device"), "0 devices");
        assert_eq!(count(12, "device"), "12 devices");
        assert_eq!(took(Duration::from_micros(400)), "0.4 ms");
        assert_eq!(took(Duration::from_millis(1234)), "1.23 s");
    }
}
