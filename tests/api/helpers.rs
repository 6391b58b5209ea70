//! Test harness: the simulator and the exporter on port 0, an exposition-text parser, and
//! ground-truth helpers that read the simulator's world.

use std::collections::BTreeMap;
use std::time::Duration;

use actix_web::dev::ServerHandle;
use balena_exporter::config::{self, SharedConfig};
use balena_exporter::startup::{Application, Settings};
use balena_simulator::{FleetSpec, OrgSpec, Simulator, UserSpec, WorldSpec};

/// The token of the test user `ops` (member of org `acme`).
pub const TOKEN: &str = "test-token-acme-7f3a9c";

/// A world with one org (`acme`) and fleets of the given sizes, plus a user `ops`.
pub fn world(fleets: &[(&str, usize)]) -> WorldSpec {
    WorldSpec {
        seed: 7,
        orgs: vec![OrgSpec {
            handle: "acme".into(),
            fleets: fleets.iter().map(|(n, d)| FleetSpec::new(n, *d)).collect(),
        }],
        users: vec![UserSpec {
            username: "ops".into(),
            token: TOKEN.into(),
            orgs: vec!["acme".into()],
        }],
    }
}

/// A running simulator + exporter.
pub struct TestApp {
    /// `http://127.0.0.1:PORT`
    pub address: String,
    /// The simulator the exporter talks to.
    pub sim: Simulator,
    /// The exporter's shared state.
    pub state: actix_web::web::Data<balena_exporter::routes::AppState>,
    handle: ServerHandle,
    client: awc::Client,
}

/// The default config for a world: one auth `acme`, one target per fleet named after it.
pub fn default_config(sim_url: &str, fleets: &[&str]) -> String {
    let mut yaml = format!(
        "api:\n  url: {sim_url}\n  timeout: 5s\nauths:\n  acme:\n    token: {TOKEN}\ntargets:\n"
    );
    for f in fleets {
        yaml.push_str(&format!("  {f}:\n    fleet: acme/{f}\n    auth: acme\n"));
    }
    yaml
}

/// Starts a simulator with `spec`, then the exporter with the YAML `make_config(sim_url)`.
pub async fn spawn_with(spec: WorldSpec, make_config: impl FnOnce(&str) -> String) -> TestApp {
    let sim = Simulator::start(&spec, "127.0.0.1:0").expect("simulator starts");
    let yaml = make_config(&sim.url());
    let config = config::from_yaml_str(&yaml, "test.yml").expect("test config is valid");
    spawn_config(sim, SharedConfig::new(config, None)).await
}

/// Starts the exporter with a ready config handle.
pub async fn spawn_config(sim: Simulator, config: SharedConfig) -> TestApp {
    spawn_settings(sim, Settings::new(config, "127.0.0.1:0")).await
}

/// Starts the exporter with full settings (route prefix, web config...).
pub async fn spawn_settings(sim: Simulator, settings: Settings) -> TestApp {
    let app = Application::build(settings).expect("app builds");
    let address = format!("http://127.0.0.1:{}", app.port());
    let handle = app.handle();
    let state = app.state();
    actix_rt::spawn(app.run_until_stopped());
    TestApp {
        address,
        sim,
        state,
        handle,
        client: awc::Client::builder()
            .timeout(Duration::from_secs(30))
            .finish(),
    }
}

/// Starts one fleet per `(name, devices)` and a target per fleet.
pub async fn spawn_app(fleets: &[(&str, usize)]) -> TestApp {
    let names: Vec<&str> = fleets.iter().map(|(n, _)| *n).collect();
    spawn_with(world(fleets), |url| default_config(url, &names)).await
}

/// An HTTP answer.
pub struct Answer {
    /// Status code.
    pub status: u16,
    /// Content-Type header.
    pub content_type: String,
    /// Content-Encoding header (empty when none).
    pub content_encoding: String,
    /// Body text (decoded: the client inflates gzip, zstd is decoded here).
    pub body: String,
}

impl TestApp {
    /// GET `path` with optional extra headers.
    pub async fn get_with(&self, path: &str, headers: &[(&str, &str)]) -> Answer {
        let mut req = self.client.get(format!("{}{path}", self.address));
        for (k, v) in headers {
            req = req.insert_header((*k, *v));
        }
        let mut resp = req.send().await.expect("exporter answers");
        let body = resp.body().limit(512 << 20).await.expect("body");
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string()
        };
        let content_encoding = header("content-encoding");
        let body = match content_encoding.as_str() {
            // awc reads gzip itself; this build of it has no zstd.
            "zstd" => zstd::stream::decode_all(&body[..]).expect("a zstd answer decodes"),
            _ => body.to_vec(),
        };
        Answer {
            status: resp.status().as_u16(),
            content_type: header("content-type"),
            content_encoding,
            body: String::from_utf8(body).expect("utf-8 body"),
        }
    }

    /// GET `path`.
    pub async fn get(&self, path: &str) -> Answer {
        self.get_with(path, &[]).await
    }

    /// POST `path`.
    #[allow(dead_code)] // tests/reload.rs
    pub async fn post(&self, path: &str) -> Answer {
        let mut resp = self
            .client
            .post(format!("{}{path}", self.address))
            .send()
            .await
            .expect("exporter answers");
        let body = resp.body().await.expect("body");
        Answer {
            status: resp.status().as_u16(),
            content_type: String::new(),
            content_encoding: String::new(),
            body: String::from_utf8_lossy(&body).into_owned(),
        }
    }

    /// Probes a target and parses the answer (asserting HTTP 200 and the text format).
    pub async fn probe(&self, query: &str) -> Samples {
        let a = self.get(&format!("/probe?{query}")).await;
        assert_eq!(a.status, 200, "probe {query}: {}", a.body);
        assert_eq!(a.content_type, "text/plain; version=0.0.4; charset=utf-8");
        parse(&a.body)
    }

    /// Like [`TestApp::probe`] with an owned query (for futures that outlive a loop).
    pub async fn probe_owned(&self, query: String) -> Samples {
        self.probe(&query).await
    }

    /// `balena_exporter_probes_total{target,result}` from `/metrics` (0 when absent).
    pub async fn probes_total(&self, target: &str, result: &str) -> f64 {
        let m = parse(&self.get("/metrics").await.body);
        m.find(
            "balena_exporter_probes_total",
            &[("target", target), ("result", result)],
        )
        .iter()
        .map(|s| s.value)
        .sum()
    }

    /// Probes by full path (e.g. under a route prefix) and parses the answer.
    pub async fn probe_path(&self, path: &str) -> Samples {
        let a = self.get(path).await;
        assert_eq!(a.status, 200, "{path}: {}", a.body);
        parse(&a.body)
    }

    /// GET without following redirects: (status, Location).
    pub async fn get_no_redirect(&self, path: &str) -> (u16, String) {
        let client = awc::Client::builder().disable_redirects().finish();
        let resp = client
            .get(format!("{}{path}", self.address))
            .send()
            .await
            .expect("answer");
        let location = resp
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        (resp.status().as_u16(), location)
    }

    /// Stops both servers.
    pub async fn stop(self) {
        self.handle.stop(false).await;
        self.sim.stop().await;
    }
}

/// One parsed sample.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Metric name.
    pub name: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Value.
    pub value: f64,
}

/// Parsed exposition text.
#[derive(Debug, Clone, Default)]
pub struct Samples(pub Vec<Sample>);

impl Samples {
    /// Samples of a metric whose labels include every `(k, v)` given.
    pub fn find(&self, name: &str, labels: &[(&str, &str)]) -> Vec<&Sample> {
        self.0
            .iter()
            .filter(|s| {
                s.name == name
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .collect()
    }

    /// The single value of a metric with these labels; panics when absent or ambiguous.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let found = self.find(name, labels);
        assert_eq!(
            found.len(),
            1,
            "expected one {name}{labels:?}, found {found:?}"
        );
        found[0].value
    }

    /// Whether any sample of `name` exists.
    pub fn has(&self, name: &str) -> bool {
        self.0.iter().any(|s| s.name == name)
    }

    /// Distinct metric names.
    #[allow(dead_code)] // used by the docs test
    pub fn names(&self) -> std::collections::BTreeSet<String> {
        self.0.iter().map(|s| s.name.clone()).collect()
    }
}

/// Parses text format 0.0.4 strictly enough for tests: HELP/TYPE once per family and before
/// samples, families contiguous, label values unescaped.
pub fn parse(text: &str) -> Samples {
    let mut out = Vec::new();
    let mut typed = std::collections::BTreeSet::new();
    let mut finished = std::collections::BTreeSet::new();
    let mut current = String::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let name = rest.split(' ').next().unwrap().to_string();
            assert!(typed.insert(name.clone()), "TYPE twice for {name}");
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (name, labels, value) = parse_line(line);
        let family = if typed.contains(&name) {
            name.clone()
        } else {
            let f = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .unwrap_or(&name);
            assert!(typed.contains(f), "sample before TYPE: {line}");
            f.to_string()
        };
        if family != current {
            assert!(
                !finished.contains(&family),
                "family {family} is not contiguous"
            );
            if !current.is_empty() {
                finished.insert(current.clone());
            }
            current = family;
        }
        out.push(Sample {
            name,
            labels,
            value,
        });
    }
    Samples(out)
}

fn parse_line(line: &str) -> (String, BTreeMap<String, String>, f64) {
    let mut labels = BTreeMap::new();
    let (name, rest) = match line.find('{') {
        Some(i) => {
            let name = &line[..i];
            let mut chars = line[i + 1..].char_indices().peekable();
            let body = &line[i + 1..];
            let end;
            loop {
                // label name
                let start = chars.peek().map(|(p, _)| *p).unwrap();
                let mut key_end = start;
                for (p, c) in chars.by_ref() {
                    if c == '=' {
                        key_end = p;
                        break;
                    }
                }
                let key = body[start..key_end].to_string();
                assert!(
                    key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                    "bad label name {key:?} in {line}"
                );
                assert_eq!(chars.next().map(|(_, c)| c), Some('"'), "{line}");
                let mut value = String::new();
                loop {
                    let (_, c) = chars.next().expect("unterminated label value");
                    match c {
                        '\\' => match chars.next().unwrap().1 {
                            'n' => value.push('\n'),
                            '\\' => value.push('\\'),
                            '"' => value.push('"'),
                            other => panic!("bad escape \\{other} in {line}"),
                        },
                        '"' => break,
                        '\n' => panic!("raw newline in {line}"),
                        c => value.push(c),
                    }
                }
                labels.insert(key, value);
                match chars.next() {
                    Some((_, ',')) => continue,
                    Some((p, '}')) => {
                        end = p;
                        break;
                    }
                    other => panic!("unexpected {other:?} in {line}"),
                }
            }
            (name.to_string(), &body[end + 1..])
        }
        None => {
            let (n, r) = line.split_once(' ').expect("name value");
            (n.to_string(), r)
        }
    };
    let value = rest.trim();
    let value: f64 = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        v => v
            .parse()
            .unwrap_or_else(|_| panic!("bad value {v:?} in {line}")),
    };
    (name, labels, value)
}
