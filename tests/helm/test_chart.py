"""Tests of the Helm chart in deploy/helm/balena-exporter, offline.

Renders the chart with the Helm SDK (helm-python-sdk: Helm's Go code as a library, no helm
binary), lints it, checks its values schema, validates the rendered core objects against the
Kubernetes schemas (kubernetes-validate) and checks the rendered exporter config with the
exporter itself (`--config.check`).

Run: python tests/helm/test_chart.py   (EXPORTER_BIN=path/to/balena-exporter)
"""

import hashlib
import json
import os
import re
import shlex
import subprocess
import tempfile
import unittest

import helm_python as helm
import kubernetes_validate
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CHART = os.path.join(ROOT, "deploy", "helm", "balena-exporter")
BIN = os.environ.get("EXPORTER_BIN", os.path.join(ROOT, "target", "debug", "balena-exporter"))
KUBE_VERSION = "1.30.0"
try:  # Prometheus Operator CRD models (pydantic), to validate Probe/ServiceMonitor/PrometheusRule
    from cloudcoil.models.prometheus_operator import v1 as promop
except ImportError:  # pragma: no cover - installed by tests/helm/requirements.txt
    promop = None
TOKEN = "chart-test-token-9f1c"

FULL = {
    "auths": {"acme": {"token": TOKEN}, "partner": {"token": "other-token-77"}},
    "config": {
        "targets": {
            "shop": {"fleet": "acme/shop-screens", "auth": "acme"},
            "partner-all": {"org": "partner_org", "auth": "partner", "module": "summary"},
            "everything": {"all": True, "auth": "acme"},
        }
    },
    "serviceMonitor": {"enabled": True},
    "probe": {"enabled": True},
    "prometheusRule": {"enabled": True},
    "podDisruptionBudget": {"enabled": True},
    "networkPolicy": {"enabled": True, "allowedNamespaceLabels": {"kubernetes.io/metadata.name": "monitoring"}},
}


def render(values, namespace="monitoring"):
    chart = helm.Chart.load(CHART)
    out = chart.render(values, name="rel", namespace=namespace, is_install=True)
    objects = {}
    for path, text in out.items():
        if not path.endswith(".yaml"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                objects[doc["kind"]] = doc
    return objects, out


def render_all(values, namespace="monitoring", name="rel"):
    """Every rendered object, in order (several of one kind allowed)."""
    chart = helm.Chart.load(CHART)
    out = chart.render(values, name=name, namespace=namespace, is_install=True)
    return [doc for path, text in sorted(out.items()) if path.endswith(".yaml")
            for doc in yaml.safe_load_all(text) if doc]


# ---- Prometheus semantics, as small emulations (the sharding agreement is checked with them) --

def hashmod(value, modulus):
    """Prometheus' hashmod: the last 8 bytes of md5(value), big-endian, modulo `modulus`."""
    return int.from_bytes(hashlib.md5(value.encode()).digest()[8:], "big") % modulus


def relabel(labels, rules):
    """Apply Prometheus relabel rules (snake_case or the operator's camelCase keys); None when
    the target is dropped."""
    labels = dict(labels)
    for rule in rules:
        get = lambda snake, camel, default=None: rule.get(snake, rule.get(camel, default))
        sources = get("source_labels", "sourceLabels", [])
        value = get("separator", "separator", ";").join(labels.get(l, "") for l in sources)
        action = get("action", "action", "replace").lower()
        regex = re.compile("^(?:" + get("regex", "regex", "(.*)") + ")$")
        target = get("target_label", "targetLabel")
        if action == "hashmod":
            labels[target] = str(hashmod(value, int(rule["modulus"])))
        elif action in ("keep", "drop"):
            if bool(regex.match(value)) != (action == "keep"):
                return None
        elif action == "replace":
            m = regex.match(value)
            if m:
                repl = str(get("replacement", "replacement", "$1"))
                out = re.sub(r"\$\{(\w+)\}|\$(\d+)", lambda g: m.group(int(g.group(1) or g.group(2))) or "", repl)
                if out:
                    labels[target] = out
                else:
                    labels.pop(target, None)
        else:
            raise AssertionError(f"relabel action {action} not emulated")
    return labels


def probe_address(probe, target):
    """The address Prometheus scrapes for `target` of an operator Probe: the operator's own
    relabelling (target -> __param_target -> instance, __address__ = prober.url), then the
    Probe's relabelingConfigs (prometheus-operator pkg/prometheus/promcfg.go, static targets)."""
    spec = probe["spec"]
    rules = [
        {"source_labels": ["__address__"], "target_label": "__param_target"},
        {"source_labels": ["__param_target"], "target_label": "instance"},
        {"target_label": "__address__", "replacement": spec["prober"]["url"]},
    ] + spec["targets"]["staticConfig"].get("relabelingConfigs", [])
    out = relabel({"__address__": target}, rules)
    return out and out["__address__"]


def selects(selector, labels):
    """Whether a Kubernetes label selector (matchLabels + matchExpressions) selects `labels`."""
    if not selector.get("matchLabels", {}).items() <= labels.items():
        return False
    for e in selector.get("matchExpressions", []):
        op, key, values = e["operator"], e["key"], e.get("values", [])
        ok = {"In": labels.get(key) in values, "NotIn": labels.get(key) not in values,
              "Exists": key in labels, "DoesNotExist": key not in labels}[op]
        if not ok:
            return False
    return True


def validate_crd(obj):
    """A Prometheus Operator object against the operator's schema (pydantic models generated
    from its CRDs); unknown keys, which the API server would prune silently, are refused too."""
    from cloudcoil.models.prometheus_operator import v1alpha1 as promop_alpha
    model = {"Probe": promop.Probe, "ServiceMonitor": promop.ServiceMonitor,
             "PrometheusRule": promop.PrometheusRule,
             "ScrapeConfig": promop_alpha.ScrapeConfig}[obj["kind"]]
    parsed = model.model_validate(obj)
    back = parsed.model_dump(by_alias=True, exclude_unset=True, mode="json")

    def unknown(a, b, path):
        if isinstance(a, dict):
            for k, v in a.items():
                if k not in b:
                    yield f"{path}.{k}"
                else:
                    yield from unknown(v, b[k], f"{path}.{k}")
        elif isinstance(a, list):
            for i, (x, y) in enumerate(zip(a, b)):
                yield from unknown(x, y, f"{path}[{i}]")
    dropped = list(unknown(obj, back, obj["kind"]))
    assert not dropped, f"keys the operator's schema does not know: {dropped}"


def helm_install_commands(path):
    """Every `helm install` command in a Markdown file's sh blocks, joined across `\\` lines."""
    with open(os.path.join(ROOT, path)) as f:
        text = f.read()
    cmds = []
    for block in re.findall(r"```sh\n(.*?)```", text, re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        cmds += [l.strip() for l in joined.splitlines() if l.strip().startswith("helm install")]
    return cmds


def deep_merge(a, b):
    for k, v in b.items():
        if isinstance(v, dict) and isinstance(a.get(k), dict):
            deep_merge(a[k], v)
        else:
            a[k] = v
    return a


def sh_lines(path, start):
    """Every command of a Markdown file's sh blocks that starts with `start`, joined across
    `\\` lines."""
    with open(os.path.join(ROOT, path)) as f:
        text = f.read()
    out = []
    for block in re.findall(r"```sh\n(.*?)```", text, re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        out += [l.strip() for l in joined.splitlines() if l.strip().startswith(start)]
    return out


def values_of_helm_install(cmd, env):
    """(release, chart, namespace, values) of a `helm install` (or `helm upgrade`) line, its
    --set flags applied in order with Helm's own parser, shell variables taken from `env`."""
    words = shlex.split(re.sub(r"\$(\w+)|\$\{(\w+)\}", lambda m: env[m.group(1) or m.group(2)], cmd))
    assert words[:2] in (["helm", "install"], ["helm", "upgrade"]), cmd
    positional, values, namespace, i = [], {}, "default", 2
    while i < len(words):
        w = words[i]
        flag, _, inline = w.partition("=")
        takes = {"--set": helm.parse_set_string, "--set-string": helm.parse_set_string_values}
        if flag in takes:
            arg = inline if inline else words[i + 1]
            i += 0 if inline else 1
            deep_merge(values, takes[flag](arg))
        elif flag in ("-n", "--namespace"):
            namespace = inline or words[i + 1]
            i += 0 if inline else 1
        elif flag == "--version":
            i += 0 if inline else 1
        elif w in ("--create-namespace", "--wait", "--atomic", "--reuse-values"):
            pass
        elif w.startswith("-"):
            raise AssertionError(f"flag {w} of {cmd!r} is not understood by this test")
        else:
            positional.append(w)
        i += 1
    release, chart = positional
    return release, chart, namespace, values


def release_workflow():
    with open(os.path.join(ROOT, ".github", "workflows", "release.yml")) as f:
        return yaml.safe_load(f)


def chart_metadata():
    with open(os.path.join(CHART, "Chart.yaml")) as f:
        return yaml.safe_load(f)


def cargo_field(name):
    with open(os.path.join(ROOT, "Cargo.toml")) as f:
        return re.search(rf'^{name} = "(.*)"$', f.read(), re.M).group(1)


SHARDED = dict(
    FULL,
    replicaCount=3,
    sharding={"enabled": True},
    config={"targets": {f"fleet-{i:02}": {"fleet": f"acme/app-{i}", "auth": "acme"} for i in range(12)}},
)


class ChartTest(unittest.TestCase):
    def test_lint_is_clean(self):
        report = helm.lint(CHART, FULL, strict=True)
        self.assertEqual(report["errors"], [])
        worse = [m for m in report["messages"] if m["severity"] >= 2]
        self.assertEqual(worse, [], worse)

    def test_tokens_are_mounted_as_files_never_put_in_env_or_configmap(self):
        objs, raw = render(FULL)
        self.assertEqual(objs["Secret"]["stringData"], {"acme": TOKEN, "partner": "other-token-77"})
        pod = objs["Deployment"]["spec"]["template"]["spec"]
        container = pod["containers"][0]
        self.assertNotIn("env", container)
        self.assertNotIn("envFrom", container)
        vols = {v["name"]: v for v in pod["volumes"]}
        self.assertEqual(vols["tokens"]["secret"]["secretName"], objs["Secret"]["metadata"]["name"])
        mounts = {m["name"]: m for m in container["volumeMounts"]}
        self.assertEqual(mounts["tokens"]["mountPath"], "/etc/balena-exporter/secrets")
        self.assertTrue(mounts["tokens"]["readOnly"])
        for path, text in raw.items():
            if not path.endswith("secret.yaml"):
                self.assertNotIn(TOKEN, text, path)
        config = yaml.safe_load(objs["ConfigMap"]["data"]["balena-exporter.yml"])
        self.assertEqual(config["auths"], {
            "acme": {"token_file": "/etc/balena-exporter/secrets/acme"},
            "partner": {"token_file": "/etc/balena-exporter/secrets/partner"},
        })

    def test_rendered_config_passes_the_exporters_own_check(self):
        objs, _ = render(FULL)
        text = objs["ConfigMap"]["data"]["balena-exporter.yml"]
        with tempfile.TemporaryDirectory() as tmp:
            for name in FULL["auths"]:
                with open(os.path.join(tmp, name), "w") as f:
                    f.write(FULL["auths"][name]["token"])
            text = text.replace("/etc/balena-exporter/secrets", tmp)
            path = os.path.join(tmp, "config.yml")
            with open(path, "w") as f:
                f.write(text)
            result = subprocess.run([BIN, f"--config.file={path}", "--config.check"], capture_output=True, text=True)
            self.assertEqual(result.returncode, 0, result.stderr)
            self.assertIn("config file is ok (3 targets, 2 auths", result.stdout)

    def test_chart_schema_and_exporter_take_the_same_durations(self):
        # The schema's duration and the exporter's (config keys and flags) agree on every text:
        # what the chart accepts starts, what it refuses the exporter refuses too.
        samples = ["0", "0s", "500ms", "10s", "1m30s", "1h30m", "2d", "1w", "1d2h3m4s5ms", "30d",
                   30, "30", "", "1m 30s", "30s1m", "1s1s", "1.5s", "10 seconds", "1hour", "-1s", "5ms1s"]
        chart = helm.Chart.load(CHART)
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "config.yml")
            for sample in samples:
                try:
                    chart.validate_schema(dict(FULL, config=dict(FULL["config"], api={"cache_ttl": sample})))
                    schema_ok = True
                except Exception:
                    schema_ok = False
                with open(path, "w") as f:
                    yaml.safe_dump({"auths": {"a": {"token": "t"}}, "api": {"cache_ttl": sample},
                                    "targets": {"t": {"fleet": "o/a", "auth": "a"}}}, f)
                r = subprocess.run([BIN, f"--config.file={path}", "--config.check"], capture_output=True, text=True)
                self.assertEqual(schema_ok, r.returncode == 0, f"{sample!r}: schema {schema_ok}, exporter {r.stderr.strip()}")
                if isinstance(sample, str) and sample:
                    flag = subprocess.run([BIN, f"--config.file={path}", "--config.check",
                                           f"--web.timeout-offset={sample}"], capture_output=True, text=True)
                    if r.returncode == 0:
                        self.assertEqual(flag.returncode, 0, f"flag {sample!r}: {flag.stderr}")
                    else:
                        self.assertNotEqual(flag.returncode, 0, f"flag {sample!r} accepted")

    def test_existing_secret_is_used_instead_of_a_chart_secret(self):
        values = dict(FULL, auths={"acme": {}, "partner": {}}, existingSecret="sealed-balena-tokens")
        objs, _ = render(values)
        self.assertNotIn("Secret", objs)
        vols = {v["name"]: v for v in objs["Deployment"]["spec"]["template"]["spec"]["volumes"]}
        self.assertEqual(vols["tokens"]["secret"]["secretName"], "sealed-balena-tokens")

    def test_a_missing_token_without_existing_secret_fails_to_render(self):
        with self.assertRaises(helm.HelmError) as e:
            render(dict(FULL, auths={"acme": {}}))
        self.assertIn("auths.acme.token is empty", str(e.exception))

    def test_probe_lists_every_target_through_the_service(self):
        objs, _ = render(FULL)
        probe = objs["Probe"]["spec"]
        self.assertEqual(sorted(probe["targets"]["staticConfig"]["static"]), sorted(FULL["config"]["targets"]))
        self.assertEqual(probe["prober"]["url"], "rel-balena-exporter.monitoring.svc:9759")
        self.assertEqual(probe["prober"]["path"], "/probe")
        monitor = objs["ServiceMonitor"]["spec"]
        self.assertEqual(monitor["endpoints"][0]["path"], "/metrics")
        self.assertEqual(monitor["selector"]["matchLabels"], objs["Service"]["spec"]["selector"])

    def test_pod_is_hardened_and_probed(self):
        objs, _ = render(FULL)
        pod = objs["Deployment"]["spec"]["template"]["spec"]
        self.assertTrue(pod["securityContext"]["runAsNonRoot"])
        self.assertFalse(pod["automountServiceAccountToken"])
        self.assertFalse(pod["enableServiceLinks"], "service links would put BALENA_EXPORTER_* variables in the pod")
        c = pod["containers"][0]
        self.assertTrue(c["securityContext"]["readOnlyRootFilesystem"])
        self.assertFalse(c["securityContext"]["allowPrivilegeEscalation"])
        self.assertEqual(c["securityContext"]["capabilities"]["drop"], ["ALL"])
        self.assertEqual(c["livenessProbe"]["httpGet"]["path"], "/-/healthy")
        self.assertEqual(c["readinessProbe"]["httpGet"]["path"], "/-/ready")
        self.assertIn("--config.file=/etc/balena-exporter/config/balena-exporter.yml", c["args"])

    def test_config_changes_roll_the_pods(self):
        a, _ = render(FULL)
        changed = dict(FULL, config=dict(FULL["config"], api={"timeout": "5s"}))
        b, _ = render(changed)
        key = "checksum/config"
        ann = lambda o: o["Deployment"]["spec"]["template"]["metadata"]["annotations"][key]
        self.assertNotEqual(ann(a), ann(b))

    def test_prometheus_rule_ships_the_same_rules_as_deploy_prometheus(self):
        objs, _ = render(FULL)
        with open(os.path.join(ROOT, "deploy", "prometheus", "rules", "balena-alerts.yml")) as f:
            shipped = yaml.safe_load(f)
        # The same rules, the exporter's own selectors narrowed to the release's namespace.
        for g in shipped["groups"]:
            for r in g["rules"]:
                r["expr"] = r["expr"].replace('job="balena-exporter"', 'job="balena-exporter", namespace="monitoring"')
        self.assertEqual(objs["PrometheusRule"]["spec"], shipped)

    def test_every_rule_selects_its_job_and_keeps_the_routing_labels(self):
        with open(os.path.join(ROOT, "deploy", "prometheus", "rules", "balena-alerts.yml")) as f:
            rules = [r for g in yaml.safe_load(f)["groups"] for r in g["rules"] if "alert" in r]
        for r in rules:
            names = set(re.findall(r"\b(balena_[a-z_]+|probe_success|up)\b(\{[^}]*\})?", r["expr"]))
            if "balena:" in r["expr"]:
                continue  # an SLO alert: it reads the recording rules, which select the job
            self.assertTrue(names, r["alert"])
            for name, selector in names:
                self.assertRegex(selector, r'job="balena(-exporter)?"', f"{r['alert']}: {name} without a job")
            for by in re.findall(r"by \(([^)]*)\)", r["expr"]):
                self.assertTrue({"namespace", "cluster", "job"} <= {x.strip() for x in by.split(",")},
                                f"{r['alert']}: by ({by}) drops routing labels")

    def test_descriptions_name_their_own_for(self):
        # A description that says how long says exactly its rule's `for`, so that the chart's
        # rewrite of an overridden `for` reaches it.
        with open(os.path.join(ROOT, "deploy", "prometheus", "rules", "balena-alerts.yml")) as f:
            rules = [r for g in yaml.safe_load(f)["groups"] for r in g["rules"] if "alert" in r]
        for r in rules:
            text = r["annotations"]["description"]
            self.assertIn(f"for {r['for']}", text, r["alert"])
            self.assertNotRegex(text, r"\b(minutes|hours)\b", r["alert"])
            said = set(re.findall(r"for (\d+[smhd])\b", text))
            self.assertEqual(said, {r["for"]}, r["alert"])

    def test_job_names_and_for_overrides_reach_every_rule(self):
        values = dict(FULL,
                      probe={"enabled": True, "jobName": "balena-fleets"},
                      serviceMonitor={"enabled": True, "jobName": "balena-exp"},
                      prometheusRule={"enabled": True, "rules": {
                          "BalenaFleetDevicesUndervolted": {"for": "2h"},
                          "BalenaDevicesNotOnTargetRelease": {"for": "1d"}}})
        objs, _ = render(values)
        validate_crd(objs["PrometheusRule"])
        self.assertEqual(objs["Probe"]["spec"]["jobName"], "balena-fleets")
        ep = objs["ServiceMonitor"]["spec"]["endpoints"][0]
        self.assertEqual(relabel({"job": "serviceMonitor/monitoring/rel/0"}, ep["relabelings"])["job"], "balena-exp")
        rules = {r["alert"]: r for g in objs["PrometheusRule"]["spec"]["groups"] for r in g["rules"] if "alert" in r}
        records = [r for g in objs["PrometheusRule"]["spec"]["groups"] for r in g["rules"] if "record" in r]
        for r in list(rules.values()) + records:
            jobs = set(re.findall(r'job="([^"]*)"', r["expr"]))
            reads_records = "balena:" in r["expr"] or r["expr"].startswith("vector(")
            self.assertTrue((jobs or reads_records) and jobs <= {"balena-fleets", "balena-exp"},
                            (r.get("alert") or r["record"], jobs))
        self.assertIn('up{job="balena-exp", namespace="monitoring"}', rules["BalenaExporterDown"]["expr"])
        self.assertIn('absent(up{job="balena-exp", namespace="monitoring"})', rules["BalenaExporterDown"]["expr"])
        under = rules["BalenaFleetDevicesUndervolted"]
        self.assertEqual(under["for"], "2h")
        self.assertIn("some for 2h:", under["annotations"]["description"])
        self.assertNotIn("30m", under["annotations"]["description"])
        self.assertIn("for 1d (offline", rules["BalenaDevicesNotOnTargetRelease"]["annotations"]["description"])
        # Not overridden: the shipped text.
        self.assertIn("for 15m", rules["BalenaFleetDevicesOffline"]["annotations"]["description"])
        with self.assertRaises(helm.HelmError):
            render(dict(FULL, probe={"enabled": True, "jobName": 'x"y'}))

    def test_documented_scrape_jobs_are_the_jobs_the_rules_select(self):
        # Every scrape job shown in the README, docs and deploy/prometheus: /probe jobs are
        # job="balena", the exporter's own /metrics job="balena-exporter" (what the rules select).
        with open(os.path.join(ROOT, "deploy", "prometheus", "rules", "balena-alerts.yml")) as f:
            exprs = [r["expr"] for g in yaml.safe_load(f)["groups"] for r in g["rules"]]
        self.assertEqual({j for e in exprs for j in re.findall(r'job="([^"]*)"', e)}, {"balena", "balena-exporter"})
        texts = []
        for d in ("README.md", "deploy/README.md", *[f"docs/{n}" for n in os.listdir(os.path.join(ROOT, "docs"))]):
            with open(os.path.join(ROOT, d)) as f:
                texts += [(d, b) for b in re.findall(r"```yaml\n(.*?)```", f.read(), re.S)]
        for n in os.listdir(os.path.join(ROOT, "deploy", "prometheus")):
            if n.endswith(".yml"):
                with open(os.path.join(ROOT, "deploy", "prometheus", n)) as f:
                    texts.append((n, f.read()))
        seen = 0
        for where, text in texts:
            for job, body in re.findall(r"- job_name: (\S+)(.*?)(?=\n\s*- job_name:|\Z)", text, re.S):
                probe = "metrics_path: /probe" in body
                self.assertEqual(job, "balena" if probe else "balena-exporter", f"{where}: job {job}")
                seen += 1
        self.assertGreaterEqual(seen, 8)

    def test_exporter_down_is_left_out_when_nothing_scrapes_the_exporter(self):
        objs, _ = render(dict(FULL, serviceMonitor={"enabled": False}))
        names = {r["alert"] for g in objs["PrometheusRule"]["spec"]["groups"] for r in g["rules"] if "alert" in r}
        self.assertNotIn("BalenaExporterDown", names)
        self.assertIn("BalenaProbeFailing", names)

    def test_schema_rejects_wrong_types_and_unknown_keys(self):
        chart = helm.Chart.load(CHART)
        chart.validate_schema(FULL)
        bad = [
            ({"replicaCount": "two"}, "/replicaCount"),
            ({"bogus": 1}, "bogus"),
            ({"config": {"targets": {"t": {"fleet": "no-slash", "auth": "a"}}}}, "/config/targets/t/fleet"),
            ({"config": {"targets": {"t": {"fleet": "a/b"}}}}, "auth"),
            ({"config": {"api": {"timeout": "soon"}}}, "/config/api/timeout"),
            ({"auths": {"a": {"tokn": "x"}}}, "tokn"),
            ({"logFormat": "xml"}, "/logFormat"),
        ]
        for values, where in bad:
            with self.assertRaises(helm.HelmValuesError, msg=str(values)) as e:
                chart.validate_schema(values)
            self.assertIn(where, str(e.exception))

    def test_core_objects_validate_against_kubernetes_schemas(self):
        objs, _ = render(FULL)
        crds = {"ServiceMonitor", "Probe", "PrometheusRule"}
        checked = 0
        for kind, obj in objs.items():
            if kind in crds:
                continue
            kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)
            checked += 1
        self.assertGreaterEqual(checked, 7)

    def test_sharding_gives_each_target_to_one_replica_by_its_own_address(self):
        objs = render_all(SHARDED)
        kinds = [o["kind"] for o in objs]
        self.assertNotIn("Deployment", kinds)
        sts = next(o for o in objs if o["kind"] == "StatefulSet")
        self.assertEqual(sts["spec"]["replicas"], 3)
        headless = next(o for o in objs if o["kind"] == "Service" and o["spec"].get("clusterIP") == "None")
        self.assertEqual(sts["spec"]["serviceName"], headless["metadata"]["name"])
        self.assertEqual(headless["metadata"]["name"], "rel-balena-exporter-headless")
        pod_labels = sts["spec"]["template"]["metadata"]["labels"]
        self.assertTrue(headless["spec"]["selector"].items() <= pod_labels.items())
        for obj in objs:
            if obj["kind"] in ("StatefulSet", "Service"):
                kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)
        # One Probe for all targets; the operator's relabelling plus the chart's sends each
        # target to the replica md5-hashmod names, at that replica's own DNS name.
        probes = [o for o in objs if o["kind"] == "Probe"]
        self.assertEqual(len(probes), 1)
        owner = {t: probe_address(probes[0], t) for t in SHARDED["config"]["targets"]}
        for target, address in owner.items():
            replica = hashmod(target, 3)
            self.assertEqual(address, f"rel-balena-exporter-{replica}.rel-balena-exporter-headless.monitoring.svc:9759")
        self.assertEqual(len(set(owner.values())), 3, "12 targets should reach all 3 replicas")
        report = helm.lint(CHART, SHARDED, strict=True)
        self.assertEqual(report["errors"], [])
        with self.assertRaises(helm.HelmError) as e:
            render(dict(SHARDED, replicaCount=0))
        self.assertIn("sharding.enabled needs replicaCount >= 1", str(e.exception))

    def test_scrape_config_reads_sd_and_probes_each_fleet_once(self):
        # The ScrapeConfig (Prometheus Operator): /sd of this release's Service, the relabelling
        # of deploy/prometheus/prometheus-sd.yml, valid against the operator's schema; instead
        # of the Probe, never beside it; the rules select its job.
        values = dict(FULL, probe={"enabled": False},
                      scrapeConfig={"enabled": True, "jobName": "fleets"},
                      prometheusSelectorLabels={"release": "kube-prometheus-stack"})
        objs = render_all(values)
        sc = next(o for o in objs if o["kind"] == "ScrapeConfig")
        validate_crd(sc)
        self.assertEqual(sc["metadata"]["labels"]["release"], "kube-prometheus-stack")
        spec = sc["spec"]
        self.assertEqual(spec["metricsPath"], "/probe")
        self.assertEqual(spec["httpSDConfigs"][0]["url"],
                         "http://rel-balena-exporter.monitoring.svc:9759/sd")
        with open(os.path.join(ROOT, "deploy", "prometheus", "prometheus-sd.yml")) as f:
            doc = yaml.safe_load(f)
        job = next(j for j in doc["scrape_configs"] if j.get("http_sd_configs"))
        for target in ("shop", "everything/acme/shop-screens"):
            ours = relabel({"__address__": target}, spec["relabelings"])
            theirs = relabel({"__address__": target}, job["relabel_configs"])
            self.assertEqual(ours["__param_target"], theirs["__param_target"])
            self.assertEqual(ours["instance"], target)
            self.assertEqual(ours["__address__"], "rel-balena-exporter.monitoring.svc:9759")
        rule = next(o for o in objs if o["kind"] == "PrometheusRule")
        exprs = [r["expr"] for g in rule["spec"]["groups"] for r in g["rules"]]
        self.assertTrue(any('job="fleets"' in e for e in exprs))
        self.assertFalse(any('job="balena"' in e for e in exprs), "no rule selects the Probe's job")
        # Sharded: a fleet goes to the replica the Probe's rule names.
        sharded = dict(SHARDED, probe={"enabled": False}, scrapeConfig={"enabled": True})
        sc = next(o for o in render_all(sharded) if o["kind"] == "ScrapeConfig")
        validate_crd(sc)
        for target in ("fleet-01", "all/acme/app-7"):
            address = relabel({"__address__": target}, sc["spec"]["relabelings"])["__address__"]
            self.assertEqual(address, f"rel-balena-exporter-{hashmod(target, 3)}.rel-balena-exporter-headless.monitoring.svc:9759")
        with self.assertRaises(helm.HelmError) as e:
            render(dict(FULL, scrapeConfig={"enabled": True}))
        self.assertIn("scrapeConfig.enabled and probe.enabled both probe", str(e.exception))

    def test_slo_objectives_come_from_the_values_and_records_keep_their_job(self):
        # The mixin's recording rules ride along; an objective set in the values replaces the
        # mixin's default; the rules' job selectors follow the chart's jobs, records included.
        values = dict(FULL, probe={"enabled": True, "jobName": "fleets"},
                      prometheusRule={"enabled": True, "slos": {"device_availability": 0.9}})
        objs, _ = render(values)
        rule = objs["PrometheusRule"]
        validate_crd(rule)
        records = {(r["record"], r.get("labels", {}).get("slo")): r["expr"]
                   for g in rule["spec"]["groups"] for r in g["rules"] if "record" in r}
        self.assertEqual(records[("balena:slo_objective", "device_availability")], "vector(0.9)")
        self.assertEqual(records[("balena:slo_objective", "probe_availability")], "vector(0.99)")
        self.assertIn('job="fleets"', records[("balena:fleet_devices_online:ratio", None)])
        alerts = [r["alert"] for g in rule["spec"]["groups"] for r in g["rules"] if "alert" in r]
        self.assertIn("BalenaFleetDeviceAvailabilityBurnFast", alerts)
        with self.assertRaises(helm.HelmError) as e:
            render(dict(FULL, prometheusRule={"enabled": True, "slos": {"uptime": 0.9}}))
        self.assertIn("'uptime' not allowed", str(e.exception))

    def test_default_resources_and_notes_name_a_real_target(self):
        objs, raw = render(FULL)
        container = objs["Deployment"]["spec"]["template"]["spec"]["containers"][0]
        self.assertEqual(container["resources"]["requests"]["memory"], "64Mi")
        self.assertEqual(container["resources"]["limits"]["memory"], "320Mi")
        notes = next(t for p, t in raw.items() if p.endswith("NOTES.txt"))
        self.assertIn("/probe?target=everything&debug=true", notes)
        self.assertNotIn("<name>", notes)

    def test_defaults_render_and_lint(self):
        objs, _ = render({})
        self.assertIn("Deployment", objs)
        self.assertNotIn("Probe", objs)
        self.assertEqual(helm.lint(CHART, strict=True)["errors"], [])


class InstallPathTest(unittest.TestCase):
    """The README's install paths, verbatim: the image the chart pulls is the one the release
    workflow publishes, and each `helm install` line renders manifests that validate."""

    def test_default_image_is_what_the_release_workflow_publishes(self):
        wf = release_workflow()
        image = wf["env"]["IMAGE"]
        meta = chart_metadata()
        objs, _ = render({})
        container = objs["Deployment"]["spec"]["template"]["spec"]["containers"][0]
        self.assertEqual(container["image"], f"{image}:{meta['appVersion']}")
        # The workflow tags a release v<version> as <version> (metadata-action semver) and
        # refuses a tag whose version is not Cargo's and the chart's.
        steps = wf["jobs"]["image"]["steps"]
        meta_step = next(st for st in steps if st.get("id") == "meta")
        self.assertEqual(meta_step["with"]["images"], "${{ env.IMAGE }}")
        self.assertIn("type=semver,pattern={{version}}", meta_step["with"]["tags"])
        self.assertEqual(meta["appVersion"], cargo_field("version"))
        self.assertEqual(meta["version"], meta["appVersion"])
        self.assertIn("versions", wf["jobs"]["image"]["needs"])
        # The chart is published as OCI with that same version, where the README says.
        chart_job = wf["jobs"]["chart"]
        run = "\n".join(st.get("run", "") for st in chart_job["steps"])
        self.assertIn('helm push dist/balena-exporter-*.tgz "$CHART_REPO"', run)
        oci = f"{wf['env']['CHART_REPO']}/{meta['name']}"
        with open(os.path.join(ROOT, "README.md")) as f:
            readme = f.read()
        self.assertIn(oci, readme)
        self.assertIn(image, readme)
        # One repository name everywhere: Cargo.toml, Chart.yaml, the image namespace.
        repo = cargo_field("repository")
        self.assertEqual(meta["home"], repo)
        self.assertEqual(image, "ghcr.io/" + repo.removeprefix("https://github.com/"))
        self.assertEqual(wf["env"]["CANONICAL"], repo.removeprefix("https://github.com/"))

    def test_readme_helm_install_lines_render_valid_manifests(self):
        env = {"ACME_TOKEN": "readme-token-3c1e"}
        cmds = helm_install_commands("README.md") + helm_install_commands("deploy/README.md")
        self.assertGreaterEqual(len(cmds), 3, cmds)
        meta = chart_metadata()
        for cmd in cmds:
            release, chart, namespace, values = values_of_helm_install(cmd, env)
            # The OCI line installs the published copy of this very chart (same version).
            if chart.startswith("oci://"):
                self.assertIn(f"--version {meta['version']}", cmd)
                self.assertTrue(chart.endswith("/" + meta["name"]), chart)
            else:
                self.assertEqual(os.path.normpath(os.path.join(ROOT, chart)), CHART)
            helm.Chart.load(CHART).validate_schema(values)
            out = helm.Chart.load(CHART).render(values, name=release, namespace=namespace, is_install=True)
            docs = [d for path, text in out.items() if path.endswith(".yaml") for d in yaml.safe_load_all(text) if d]
            kinds = {d["kind"] for d in docs}
            self.assertTrue({"Deployment", "Service", "ConfigMap", "Secret", "Probe"} <= kinds, (cmd, kinds))
            for d in docs:
                if d["kind"] in ("Probe", "ServiceMonitor", "PrometheusRule"):
                    validate_crd(d)
                else:
                    kubernetes_validate.validate(d, KUBE_VERSION, strict=True)
                self.assertEqual(d["metadata"]["namespace"], namespace)
            secret = next(d for d in docs if d["kind"] == "Secret")
            self.assertEqual(secret["stringData"], {"acme": env["ACME_TOKEN"]})
            self.assertIn("NOTES.txt", " ".join(out))
            config = yaml.safe_load(next(d for d in docs if d["kind"] == "ConfigMap")["data"]["balena-exporter.yml"])
            self.assertEqual(config["targets"]["shop-screens"], {"fleet": "acme/shop-screens", "auth": "acme"})
            check_config(self, config, {"acme": env["ACME_TOKEN"]})

    def test_readme_install_from_a_clone_runs_the_image_built_and_loaded_there(self):
        """Before a release is published, the README's clone install runs the image its own
        `docker build` made and its kind/k3d/minikube line loaded: the same name everywhere, and
        never pulled. The lines that need a published release say so."""
        [build] = [c for c in sh_lines("README.md", "docker build") if "localhost/" in c]
        tag = re.search(r"-t (\S+)", build).group(1)
        loads = sh_lines("README.md", "kind load") + sh_lines("README.md", "k3d image import") + \
            sh_lines("README.md", "minikube image load")
        self.assertEqual(len(loads), 3, loads)
        for load in loads:
            self.assertEqual(load.split()[-1], tag, load)
        env = {"ACME_TOKEN": "readme-token-3c1e"}
        local = helm_install_commands("README.md")[0]
        release, _, ns, values = values_of_helm_install(local, env)
        objs = render_all(values, namespace=ns, name=release)
        [container] = [c for c in workload(objs)["spec"]["template"]["spec"]["containers"] if c["name"] == "balena-exporter"]
        self.assertEqual(container["image"], tag)
        self.assertEqual(container["imagePullPolicy"], "Never")
        with open(os.path.join(ROOT, "README.md")) as f:
            readme = f.read()
        for line in readme.splitlines():
            if "ghcr.io/balena-exporter/balena-exporter:0.1.0" in line and line.startswith("docker run"):
                self.assertIn("needs a published release", line)
        self.assertIn("until a maintainer pushes the tag `v0.1.0`", " ".join(re.sub(r"^> ?", "", readme, flags=re.M).split()))
        self.assertIn(f"v{chart_metadata()['version']}", readme)

    def test_readme_installs_are_selected_by_kube_prometheus_stack(self):
        """kube-prometheus-stack's Prometheus (default values) selects Probe, ServiceMonitor and
        PrometheusRule objects by `release: <its release name>`; the README's lines, for a
        stack installed as `kube-prometheus-stack`, render all three with it."""
        kps = {"matchLabels": {"release": "kube-prometheus-stack"}}
        env = {"ACME_TOKEN": "readme-token-3c1e"}
        for cmd in helm_install_commands("README.md") + helm_install_commands("deploy/README.md"):
            release, _, namespace, values = values_of_helm_install(cmd, env)
            out = helm.Chart.load(CHART).render(values, name=release, namespace=namespace, is_install=True)
            docs = [d for path, text in out.items() if path.endswith(".yaml") for d in yaml.safe_load_all(text) if d]
            selected = {d["kind"] for d in docs if d["kind"] in ("Probe", "ServiceMonitor", "PrometheusRule")
                        and selects(kps, d["metadata"].get("labels", {}))}
            self.assertEqual(selected, {"Probe", "ServiceMonitor", "PrometheusRule"}, cmd)
            notes = next(t for p, t in out.items() if p.endswith("NOTES.txt"))
            self.assertNotIn("carry no selection labels", notes)
        _, raw = render(FULL)
        self.assertIn("--set prometheusSelectorLabels.release=kube-prometheus-stack",
                      next(t for p, t in raw.items() if p.endswith("NOTES.txt")))

    def test_values_that_could_never_run_fail_at_render_time(self):
        cases = [
            (dict(FULL, auths={}, existingSecret="tokens"),
             'config.targets.everything: auth "acme" is not under auths; with existingSecret, list every auth as an empty map'),
            (dict(FULL, config={"targets": {"t": {"fleet": "o/f", "auth": "nobody"}}}),
             'config.targets.t: auth "nobody" is not configured; set auths.nobody.token'),
            (dict(FULL, config={"targets": {"t": {"fleet": "o/f", "auth": "acme", "allowed_auths": ["ghost"]}}}),
             'config.targets.t: auth "ghost" is not configured'),
            (dict(FULL, probe={"enabled": True, "interval": "30s", "scrapeTimeout": "1m"}),
             "probe.scrapeTimeout (1m) is longer than probe.interval (30s): Prometheus refuses such a scrape config"),
            (dict(FULL, serviceMonitor={"enabled": True, "interval": "15s", "scrapeTimeout": "20s"}),
             "serviceMonitor.scrapeTimeout (20s) is longer than serviceMonitor.interval (15s)"),
        ]
        for values, want in cases:
            with self.assertRaises(helm.HelmError, msg=want) as e:
                render(values)
            self.assertIn(want, str(e.exception))
        render(dict(FULL, probe={"enabled": True, "interval": "30s", "scrapeTimeout": "30s"}))

    def test_scaling_doc_names_what_the_readme_install_renders_when_sharded(self):
        env = {"ACME_TOKEN": "readme-token-3c1e"}
        release, _, ns, values = values_of_helm_install(helm_install_commands("README.md")[0], env)
        values = deep_merge(values, {"sharding": {"enabled": True}, "replicaCount": 3})
        objs = render_all(values, namespace=ns, name=release)
        sts = next(o for o in objs if o["kind"] == "StatefulSet")["metadata"]["name"]
        headless = next(o["metadata"]["name"] for o in objs if o["kind"] == "Service" and o["spec"].get("clusterIP") == "None")
        port = next(o for o in objs if o["kind"] == "Service")["spec"]["ports"][0]["port"]
        with open(os.path.join(ROOT, "docs", "scaling.md")) as f:
            doc = " ".join(f.read().split())
        self.assertIn(f"pods `{sts}-0 … {sts}-<R-1>`", doc)
        self.assertIn(f"headless Service `{headless}`", doc)
        self.assertIn(f"`{sts}-<i>.{headless}.{ns}.svc:{port}`", doc)

    def test_rotation_and_runbook_commands_match_the_chart(self):
        """docs/operations.md's rotation commands and docs/runbook.md's kubectl line name what the
        chart renders for the README's install."""
        env = {"ACME_TOKEN": "readme-token-3c1e", "NEW_ACME_TOKEN": "rotated-token-77aa"}
        release, _, ns, base = values_of_helm_install(helm_install_commands("README.md")[0], env)
        objs = {o["kind"]: o for o in render_all(base, namespace=ns)}
        # helm upgrade --reuse-values: the README's values, then the new token.
        [upgrade] = sh_lines("docs/operations.md", "helm upgrade")
        r2, _, ns2, extra = values_of_helm_install(upgrade, env)
        self.assertEqual((r2, ns2), (release, ns))
        after = {o["kind"]: o for o in render_all(deep_merge(json.loads(json.dumps(base)), extra), namespace=ns)}
        self.assertEqual(after["Secret"]["stringData"]["acme"], env["NEW_ACME_TOKEN"])
        ann = lambda o: o["Deployment"]["spec"]["template"]["metadata"]["annotations"]["checksum/auths"]
        self.assertNotEqual(ann(after), ann(objs), "the chart-made Secret's change rolls the pods")
        with open(os.path.join(ROOT, "deploy", "README.md")) as f:
            self.assertIn("it changes `checksum/auths` and rolls the pods", " ".join(f.read().split()),
                          "deploy/README says what the chart does")
        # kubectl ... | kubectl apply: the existingSecret the chart mounts, one key per auth.
        [kubectl] = sh_lines("docs/operations.md", "kubectl")
        m = re.search(r"-n (\S+) create secret generic (\S+) (.*?)--dry-run", kubectl)
        kns, secret, rest = m.groups()
        keys = re.findall(r"--from-literal=(\w+)=", rest)
        values = dict(base, existingSecret=secret, auths={k: {} for k in keys})
        own = {o["kind"]: o for o in render_all(values, namespace=kns)}
        self.assertEqual(kns, ns)
        vols = {v["name"]: v for v in own["Deployment"]["spec"]["template"]["spec"]["volumes"]}
        self.assertEqual(vols["tokens"]["secret"]["secretName"], secret)
        config = yaml.safe_load(own["ConfigMap"]["data"]["balena-exporter.yml"])
        self.assertEqual(set(config["auths"]), set(keys))
        self.assertEqual(config["targets"]["shop-screens"]["auth"], "acme")
        # The runbook's pod selector selects the pods of that install, in its namespace.
        with open(os.path.join(ROOT, "docs", "runbook.md")) as f:
            line = re.search(r"`kubectl -n (\S+) get pods -l (\S+)=(\S+)`", f.read())
        self.assertEqual(line.group(1), ns)
        pod_labels = objs["Deployment"]["spec"]["template"]["metadata"]["labels"]
        self.assertEqual(pod_labels[line.group(2)], line.group(3))

    def test_license_file_matches_the_manifest(self):
        with open(os.path.join(ROOT, "LICENSE")) as f:
            text = f.read()
        self.assertIn("Apache License", text)
        self.assertIn("Version 2.0, January 2004", text)
        self.assertEqual(cargo_field("license"), "Apache-2.0")
        self.assertEqual(chart_metadata()["annotations"]["artifacthub.io/license"], "Apache-2.0")
        with open(os.path.join(ROOT, "Dockerfile")) as f:
            self.assertIn('org.opencontainers.image.licenses="Apache-2.0"', f.read())


def check_config(test, config, tokens):
    """The rendered exporter config passes the exporter's own --config.check."""
    with tempfile.TemporaryDirectory() as tmp:
        for name, token in tokens.items():
            with open(os.path.join(tmp, name), "w") as f:
                f.write(token)
        text = yaml.safe_dump(config).replace("/etc/balena-exporter/secrets", tmp)
        path = os.path.join(tmp, "config.yml")
        with open(path, "w") as f:
            f.write(text)
        result = subprocess.run([BIN, f"--config.file={path}", "--config.check"], capture_output=True, text=True)
        test.assertEqual(result.returncode, 0, result.stderr)


def workload(objs):
    return next(o for o in objs if o["kind"] in ("Deployment", "StatefulSet"))


class RealClusterTest(unittest.TestCase):
    """What an operator of the prometheus-community charts expects, and each bug found when
    the chart was tried as one (every test here failed on the chart before it was fixed)."""

    def test_usable_as_a_subchart(self):
        values = dict(FULL, **{"global": {"imageRegistry": "mirror.example.com"}, "enabled": True})
        helm.Chart.load(CHART).validate_schema(values)
        objs = render_all(values)
        image = workload(objs)["spec"]["template"]["spec"]["containers"][0]["image"]
        self.assertTrue(image.startswith("mirror.example.com/balena-exporter/balena-exporter:"), image)
        self.assertEqual(helm.lint(CHART, values, strict=True)["errors"], [])

    def test_name_and_namespace_overrides_and_common_labels(self):
        values = dict(FULL, nameOverride="bx", namespaceOverride="observability",
                      commonLabels={"team": "iot"}, grafanaDashboard={"enabled": True})
        objs = render_all(values, namespace="default")
        for o in objs:
            self.assertEqual(o["metadata"]["namespace"], "observability", o["kind"])
            self.assertEqual(o["metadata"]["labels"]["team"], "iot", o["kind"])
            self.assertEqual(o["metadata"]["labels"]["app.kubernetes.io/name"], "bx", o["kind"])
        self.assertEqual(workload(objs)["metadata"]["name"], "rel-bx")
        probe = next(o for o in objs if o["kind"] == "Probe")
        self.assertEqual(probe["spec"]["prober"]["url"], "rel-bx.observability.svc:9759")
        objs = render_all(dict(FULL, fullnameOverride="balena"))
        self.assertEqual(workload(objs)["metadata"]["name"], "balena")

    def test_image_digest_wins_over_tag(self):
        digest = "sha256:" + "ab" * 32
        objs = render_all({"image": {"digest": digest, "tag": "9.9.9"}})
        image = workload(objs)["spec"]["template"]["spec"]["containers"][0]["image"]
        self.assertEqual(image, f"ghcr.io/balena-exporter/balena-exporter@{digest}")

    def test_extra_args_env_and_volumes_mount_a_web_config(self):
        values = dict(FULL,
                      extraArgs=["--web.config.file=/etc/balena-exporter/web/web-config.yml"],
                      extraEnv=[{"name": "TZ", "value": "UTC"}],
                      extraEnvFrom=[{"configMapRef": {"name": "proxy-settings"}}],
                      extraVolumes=[{"name": "web", "secret": {"secretName": "exporter-web-config"}}],
                      extraVolumeMounts=[{"name": "web", "mountPath": "/etc/balena-exporter/web", "readOnly": True}],
                      annotations={"secret.reloader.stakater.com/reload": "x"})
        objs = render_all(values)
        w = workload(objs)
        pod = w["spec"]["template"]["spec"]
        c = pod["containers"][0]
        self.assertIn("--web.config.file=/etc/balena-exporter/web/web-config.yml", c["args"])
        self.assertEqual(c["env"], values["extraEnv"])
        self.assertEqual(c["envFrom"], values["extraEnvFrom"])
        self.assertIn(values["extraVolumes"][0], pod["volumes"])
        self.assertIn(values["extraVolumeMounts"][0], c["volumeMounts"])
        self.assertEqual(w["metadata"]["annotations"], values["annotations"])
        kubernetes_validate.validate(w, KUBE_VERSION, strict=True)

    def test_tls_and_basic_auth_the_probes_and_prometheus_get_through(self):
        """webConfig with TLS and basic auth: the rendered pod runs the exporter with the
        Secret's web config; the kubelet's probes (HTTPS, no credentials, no certificate check)
        pass; the Probe and the ServiceMonitor scrape over https with their basicAuth; without
        credentials a scrape gets 401."""
        import base64, bcrypt, socket, ssl, time, urllib.request
        creds = {"name": "prom-auth", "key": "password"}
        values = dict(FULL,
                      config=dict(FULL["config"], api={"url": "http://127.0.0.1:9", "timeout": "2s"}),
                      webConfig={"existingSecret": "exporter-web", "tls": True, "basicAuth": True},
                      probe={"enabled": True, "basicAuth": {"username": {"name": "prom-auth", "key": "user"}, "password": creds},
                             "tlsConfig": {"insecureSkipVerify": True}},
                      serviceMonitor={"enabled": True, "basicAuth": {"username": {"name": "prom-auth", "key": "user"}, "password": creds},
                                      "tlsConfig": {"insecureSkipVerify": True}})
        objs = render_all(values)
        pod = workload(objs)["spec"]["template"]["spec"]
        kubernetes_validate.validate(workload(objs), KUBE_VERSION, strict=True)
        c = pod["containers"][0]
        probe = next(o for o in objs if o["kind"] == "Probe")
        monitor = next(o for o in objs if o["kind"] == "ServiceMonitor")
        for o in (probe, monitor):
            validate_crd(o)
        self.assertEqual(probe["spec"]["prober"]["scheme"], "https")
        self.assertEqual(probe["spec"]["basicAuth"]["password"], creds)
        endpoint = monitor["spec"]["endpoints"][0]
        self.assertEqual((endpoint["scheme"], endpoint["basicAuth"]["password"]), ("https", creds))
        self.assertEqual(c["livenessProbe"]["httpGet"]["scheme"], "HTTPS")
        web_volume = next(v for v in pod["volumes"] if v["name"] == "web")
        self.assertEqual(web_volume["secret"]["secretName"], "exporter-web")
        with self.assertRaises(helm.HelmError) as e:
            render(dict(values, configReloader={"enabled": True}))
        self.assertIn("configReloader posts to http://127.0.0.1/-/reload without credentials", str(e.exception))
        # deploy/README's commands for it: the Secrets it makes are those the chart names.
        env = {"ACME_TOKEN": "readme-token-3c1e", "PROM_PASSWORD": "p"}
        _, _, ns, base = values_of_helm_install(helm_install_commands("README.md")[0], env)
        [upgrade] = sh_lines("deploy/README.md", "helm upgrade")
        extra = values_of_helm_install(upgrade, env)[3]
        made = {m.group(1): m.group(2) for m in (re.search(r"create secret generic (\S+) (.*)", k)
                                                   for k in sh_lines("deploy/README.md", "kubectl")) if m}
        after = render_all(deep_merge(json.loads(json.dumps(base)), extra), namespace=ns)
        pod_after = workload(after)["spec"]["template"]["spec"]
        web_secret = next(v for v in pod_after["volumes"] if v["name"] == "web")["secret"]["secretName"]
        self.assertIn("--from-file=web-config.yml", made[web_secret])
        for o in after:
            if o["kind"] in ("Probe", "ServiceMonitor"):
                auth = o["spec"]["basicAuth"] if o["kind"] == "Probe" else o["spec"]["endpoints"][0]["basicAuth"]
                for ref in auth.values():
                    self.assertIn(f"--from-literal={ref['key']}=", made[ref["name"]], o["kind"])

        # Run the container's command, /etc/balena-exporter moved under a temporary directory.
        with tempfile.TemporaryDirectory() as root:
            etc = os.path.join(root, "etc")
            for sub in ("config", "secrets", "web"):
                os.makedirs(os.path.join(etc, sub))
            config_map = next(o for o in objs if o["kind"] == "ConfigMap")["data"]["balena-exporter.yml"]
            with open(os.path.join(etc, "config", "balena-exporter.yml"), "w") as f:
                f.write(config_map.replace("/etc/balena-exporter", etc))
            for name, token in {"acme": TOKEN, "partner": "other-token-77"}.items():
                with open(os.path.join(etc, "secrets", name), "w") as f:
                    f.write(token)
            web = os.path.join(etc, "web")
            subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                            "-subj", "/CN=balena-exporter", "-keyout", os.path.join(web, "tls.key"),
                            "-out", os.path.join(web, "tls.crt")], check=True, capture_output=True)
            password = "chart-web-pass"
            hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()
            with open(os.path.join(web, "web-config.yml"), "w") as f:
                f.write(f"tls_server_config:\n  cert_file: {web}/tls.crt\n  key_file: {web}/tls.key\n"
                        f"basic_auth_users:\n  prom: '{hashed}'\n")
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", 0))
                port = sock.getsockname()[1]
            args = [a.replace("/etc/balena-exporter", etc) for a in c["args"]]
            args = [f"--web.listen-address=127.0.0.1:{port}" if a.startswith("--web.listen-address") else a for a in args]
            proc = subprocess.Popen([BIN] + args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            try:
                unverified = ssl.create_default_context()
                unverified.check_hostname = False
                unverified.verify_mode = ssl.CERT_NONE

                def get(path, scheme, auth=None):
                    req = urllib.request.Request(f"{scheme.lower()}://127.0.0.1:{port}{path}")
                    if auth:
                        req.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
                    try:
                        with urllib.request.urlopen(req, context=unverified, timeout=10) as r:
                            return r.status, r.read().decode()
                    except urllib.error.HTTPError as err:
                        return err.code, ""

                deadline = time.time() + 20
                while True:
                    try:
                        get("/-/healthy", "https")
                        break
                    except OSError:
                        self.assertIsNone(proc.poll(), proc.stderr.read().decode() if proc.poll() is not None else "")
                        self.assertLess(time.time(), deadline, "the exporter did not start")
                        time.sleep(0.1)
                for kubelet in (c["livenessProbe"]["httpGet"], c["readinessProbe"]["httpGet"]):
                    self.assertEqual(get(kubelet["path"], kubelet["scheme"])[0], 200, kubelet)
                scheme = probe["spec"]["prober"]["scheme"]
                status, body = get(f"{probe['spec']['prober']['path']}?target=shop", scheme, f"prom:{password}")
                self.assertEqual(status, 200)
                self.assertIn("probe_success 0", body)  # the API is unreachable here: an answer, not an error
                self.assertEqual(get("/metrics", endpoint["scheme"], f"prom:{password}")[0], 200)
                self.assertEqual(get("/metrics", endpoint["scheme"])[0], 401)
                self.assertEqual(get("/metrics", endpoint["scheme"], "prom:wrong")[0], 401)
            finally:
                proc.kill()
                proc.wait()

    def test_service_port_is_not_the_container_port(self):
        objs = render_all(dict(FULL, service={"port": 80}))
        c = workload(objs)["spec"]["template"]["spec"]["containers"][0]
        self.assertIn("--web.listen-address=:9759", c["args"], "a non-root container cannot listen on :80")
        self.assertEqual(c["ports"][0]["containerPort"], 9759)
        svc = next(o for o in objs if o["kind"] == "Service")
        self.assertEqual(svc["spec"]["ports"][0], {"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"})
        probe = next(o for o in objs if o["kind"] == "Probe")
        self.assertEqual(probe["spec"]["prober"]["url"], "rel-balena-exporter.monitoring.svc:80")
        with self.assertRaises(helm.HelmValuesError):
            helm.Chart.load(CHART).validate_schema({"containerPort": 80})

    def test_probes_of_the_pod_are_configurable(self):
        objs = render_all({"livenessProbe": {"httpGet": {"path": "/-/healthy", "port": "http"}, "periodSeconds": 30},
                           "readinessProbe": None})
        c = workload(objs)["spec"]["template"]["spec"]["containers"][0]
        self.assertEqual(c["livenessProbe"]["periodSeconds"], 30)
        self.assertNotIn("readinessProbe", c)

    def test_sharded_statefulset_is_spread_and_its_name_fits(self):
        long = "a-very-long-release-name-for-the-balena-exporter-in-prod"
        chart = helm.Chart.load(CHART)
        objs = [d for p, t in chart.render(SHARDED, name=long, namespace="monitoring", is_install=True).items()
                if p.endswith(".yaml") for d in yaml.safe_load_all(t) if d]
        sts = workload(objs)
        self.assertLessEqual(len(sts["metadata"]["name"]), 52, sts["metadata"]["name"])
        spread = sts["spec"]["template"]["spec"]["topologySpreadConstraints"]
        self.assertEqual(spread[0]["topologyKey"], "kubernetes.io/hostname")
        self.assertTrue(selects(spread[0]["labelSelector"], sts["spec"]["template"]["metadata"]["labels"]))
        # The Probe still addresses the pods by the StatefulSet's real name.
        probe = next(o for o in objs if o["kind"] == "Probe")
        name = sts["metadata"]["name"]
        for t in SHARDED["config"]["targets"]:
            self.assertTrue(probe_address(probe, t).startswith(f"{name}-{hashmod(t, 3)}.{sts['spec']['serviceName']}."))
        kubernetes_validate.validate(sts, KUBE_VERSION, strict=True)
        custom = render_all(dict(SHARDED, topologySpreadConstraints=[{"maxSkew": 2, "topologyKey": "zone", "whenUnsatisfiable": "DoNotSchedule"}]))
        self.assertEqual(workload(custom)["spec"]["template"]["spec"]["topologySpreadConstraints"][0]["maxSkew"], 2)

    def test_service_monitor_scrapes_each_pod_once_even_when_sharded(self):
        for values in (FULL, SHARDED):
            objs = render_all(values)
            monitor = next(o for o in objs if o["kind"] == "ServiceMonitor")
            services = [o for o in objs if o["kind"] == "Service"]
            chosen = [s["metadata"]["name"] for s in services if selects(monitor["spec"]["selector"], s["metadata"]["labels"])]
            self.assertEqual(chosen, ["rel-balena-exporter"], "the headless Service would scrape every pod twice")
            validate_crd(monitor)
        # The shipped alerts select the exporter by job="balena-exporter": the ServiceMonitor
        # gives its targets that job.
        ep = monitor["spec"]["endpoints"][0]
        self.assertEqual(relabel({"job": "serviceMonitor/monitoring/rel/0"}, ep["relabelings"])["job"], "balena-exporter")

    def test_monitor_and_probe_options(self):
        relabel_rule = {"targetLabel": "cluster", "replacement": "eu-1"}
        drop = {"sourceLabels": ["__name__"], "regex": "go_.*", "action": "drop"}
        values = dict(FULL,
                      serviceMonitor={"enabled": True, "scrapeTimeout": "20s", "labels": {"release": "kps"},
                                      "relabelings": [relabel_rule], "metricRelabelings": [drop]},
                      probe={"enabled": True, "scrapeTimeout": "25s", "labels": {"release": "kps"},
                             "relabelings": [relabel_rule], "metricRelabelings": [drop]})
        objs = render_all(values)
        monitor = next(o for o in objs if o["kind"] == "ServiceMonitor")
        ep = monitor["spec"]["endpoints"][0]
        self.assertEqual(ep["scrapeTimeout"], "20s")
        self.assertEqual(ep["relabelings"][-1], relabel_rule)
        self.assertEqual(ep["metricRelabelings"], [drop])
        self.assertEqual(monitor["metadata"]["labels"]["release"], "kps")
        probe = next(o for o in objs if o["kind"] == "Probe")
        self.assertEqual(probe["spec"]["scrapeTimeout"], "25s")
        self.assertEqual(probe["spec"]["targets"]["staticConfig"]["relabelingConfigs"], [relabel_rule])
        self.assertEqual(probe["spec"]["metricRelabelings"], [drop])
        for o in (monitor, probe):
            validate_crd(o)

    def test_prometheus_rule_overrides_per_alert(self):
        values = dict(FULL, prometheusRule={
            "enabled": True, "additionalRuleLabels": {"team": "iot"},
            "rules": {"BalenaFleetDevicesUndervolted": {"disabled": True},
                      "BalenaFleetDevicesOffline": {"for": "30m", "severity": "critical", "labels": {"page": "yes"}}}})
        objs, _ = render(values)
        validate_crd(objs["PrometheusRule"])
        rules = {r["alert"]: r for g in objs["PrometheusRule"]["spec"]["groups"] for r in g["rules"] if "alert" in r}
        self.assertNotIn("BalenaFleetDevicesUndervolted", rules)
        offline = rules["BalenaFleetDevicesOffline"]
        self.assertEqual(offline["for"], "30m")
        self.assertEqual(offline["labels"], {"severity": "critical", "team": "iot", "page": "yes"})
        self.assertEqual(rules["BalenaProbeFailing"]["labels"], {"severity": "warning", "team": "iot"})
        with self.assertRaises(helm.HelmError) as e:
            render(dict(FULL, prometheusRule={"enabled": True, "rules": {"BalenaTypo": {"disabled": True}}}))
        self.assertIn("prometheusRule.rules.BalenaTypo: no such alert", str(e.exception))

    def test_every_alert_has_a_runbook_section_that_exists(self):
        with open(os.path.join(ROOT, "deploy", "prometheus", "rules", "balena-alerts.yml")) as f:
            rules = [r for g in yaml.safe_load(f)["groups"] for r in g["rules"] if "alert" in r]
        with open(os.path.join(ROOT, "docs", "runbook.md")) as f:
            runbook = f.read()
        # GitHub's anchors: the heading lowercased, spaces to '-', punctuation dropped.
        anchors = {re.sub(r"[^a-z0-9 _-]", "", h.strip().lower()).replace(" ", "-")
                   for h in re.findall(r"^#+ (.*)$", runbook, re.M)}
        base = cargo_field("repository") + "/blob/main/docs/runbook.md#"
        for r in rules:
            url = r["annotations"]["runbook_url"]
            self.assertTrue(url.startswith(base), url)
            self.assertIn(url[len(base):], anchors, r["alert"])
        names = {r["alert"] for r in rules}
        self.assertTrue({"BalenaExporterDown", "BalenaUpstreamRateLimited", "BalenaUpstreamErrors"} <= names)

    def test_pod_disruption_budget_never_blocks_a_drain_by_default(self):
        objs, _ = render(dict(FULL, podDisruptionBudget={"enabled": True}))
        self.assertEqual(objs["PodDisruptionBudget"]["spec"]["maxUnavailable"], 1)
        self.assertNotIn("minAvailable", objs["PodDisruptionBudget"]["spec"])
        objs, _ = render(dict(FULL, podDisruptionBudget={"enabled": True, "maxUnavailable": "50%"}))
        self.assertEqual(objs["PodDisruptionBudget"]["spec"]["maxUnavailable"], "50%")
        objs, _ = render(dict(FULL, replicaCount=3, podDisruptionBudget={"enabled": True, "minAvailable": 2}))
        self.assertEqual(objs["PodDisruptionBudget"]["spec"], {"minAvailable": 2, "selector": objs["PodDisruptionBudget"]["spec"]["selector"]})
        kubernetes_validate.validate(objs["PodDisruptionBudget"], KUBE_VERSION, strict=True)
        with self.assertRaises((helm.HelmError, helm.HelmValuesError)):
            render(dict(FULL, podDisruptionBudget={"enabled": True, "minAvailable": 1, "maxUnavailable": 1}))

    def test_cache_ttl_follows_the_probe_interval(self):
        cases = {"60s": "55s", "30s": "27s", "2m": "115s", "15s": "13500ms", "1h": "3595s"}
        for interval, ttl in cases.items():
            objs, _ = render(dict(FULL, probe={"enabled": True, "interval": interval, "scrapeTimeout": "10s"}))
            config = yaml.safe_load(objs["ConfigMap"]["data"]["balena-exporter.yml"])
            self.assertEqual(config["api"]["cache_ttl"], ttl, interval)
        check_config(self, config, {n: a["token"] for n, a in FULL["auths"].items()})
        explicit = dict(FULL, config=dict(FULL["config"], api={"cache_ttl": "10s"}))
        objs, _ = render(explicit)
        self.assertEqual(yaml.safe_load(objs["ConfigMap"]["data"]["balena-exporter.yml"])["api"]["cache_ttl"], "10s")

    def test_notes_warn_about_replicas_without_sharding_and_unwatched_secrets(self):
        _, raw = render(dict(FULL, replicaCount=3))
        notes = next(t for p, t in raw.items() if p.endswith("NOTES.txt"))
        self.assertIn("WARNING: replicaCount is 3 without sharding.enabled", notes)
        _, raw = render(FULL)
        self.assertNotIn("WARNING", next(t for p, t in raw.items() if p.endswith("NOTES.txt")))
        _, raw = render(dict(FULL, auths={"acme": {}, "partner": {}}, existingSecret="sealed"))
        notes = next(t for p, t in raw.items() if p.endswith("NOTES.txt"))
        self.assertIn("the exporter uses the new token at its next probe, with no restart or reload", notes)
        with open(os.path.join(ROOT, "docs", "operations.md")) as f:
            self.assertIn("## Token rotation", f.read(), "NOTES points at this section")

    def test_rotation_of_an_existing_secret_is_offered_not_promised(self):
        values = dict(FULL, auths={"acme": {}, "partner": {}}, existingSecret="sealed")
        objs = render_all(values)
        annotations = workload(objs)["spec"]["template"]["metadata"]["annotations"]
        self.assertNotIn("checksum/auths", annotations, "a checksum of empty maps cannot roll the pods")
        objs = render_all(dict(values, configReloader={"enabled": True}))
        pod = workload(objs)["spec"]["template"]["spec"]
        exporter, reloader = pod["containers"]
        self.assertEqual(reloader["name"], "config-reloader")
        mounts = {m["mountPath"] for m in exporter["volumeMounts"] if m["name"] in ("config", "tokens")}
        watched = {a.split("=", 1)[1] for a in reloader["args"] if a.startswith("--watched-dir=")}
        self.assertEqual(watched, mounts)
        self.assertIn(f"--reload-url=http://127.0.0.1:{exporter['ports'][0]['containerPort']}/-/reload", reloader["args"])
        self.assertTrue(reloader["securityContext"]["readOnlyRootFilesystem"])
        kubernetes_validate.validate(workload(objs), KUBE_VERSION, strict=True)

    def test_grafana_dashboard_configmap_is_the_shipped_dashboard(self):
        objs, _ = render(dict(FULL, grafanaDashboard={"enabled": True}))
        cm = objs["ConfigMap"] if "balena-fleets.json" in objs["ConfigMap"]["data"] else None
        cms = [o for o in render_all(dict(FULL, grafanaDashboard={"enabled": True})) if o["kind"] == "ConfigMap"]
        cm = next(o for o in cms if "balena-fleets.json" in o["data"])
        self.assertEqual(cm["metadata"]["labels"]["grafana_dashboard"], "1")
        with open(os.path.join(ROOT, "deploy", "grafana", "balena-fleets.json")) as f:
            self.assertEqual(json.loads(cm["data"]["balena-fleets.json"]), json.load(f))
        kubernetes_validate.validate(cm, KUBE_VERSION, strict=True)
        self.assertFalse([o for o in render_all(FULL) if o["kind"] == "ConfigMap" and "balena-fleets.json" in o["data"]])


class ShardingAgreementTest(unittest.TestCase):
    """One assignment rule everywhere: the chart's Probe, NOTES and
    deploy/prometheus/prometheus-sharded.yml send every target to the same replica."""

    def test_chart_notes_and_prometheus_file_agree_for_every_target(self):
        with open(os.path.join(ROOT, "deploy", "prometheus", "prometheus-sharded.yml")) as f:
            prom = yaml.safe_load(f)
        job = next(j for j in prom["scrape_configs"] if j.get("metrics_path") == "/probe")
        rules = job["relabel_configs"]
        modulus = next(r["modulus"] for r in rules if r.get("action") == "hashmod")
        file_targets = [t for sc in job["static_configs"] for t in sc["targets"]]
        targets = file_targets + [f"fleet-{i:02}" for i in range(40)] + ["acme/shop-screens", "o'neil", "ünïcode"]
        values = dict(FULL, replicaCount=modulus, sharding={"enabled": True}, fullnameOverride="balena-exporter",
                      config={"targets": {t: {"fleet": "acme/x", "auth": "acme"} for t in targets}})
        objs = render_all(values, namespace="monitoring")
        probe = next(o for o in objs if o["kind"] == "Probe")
        validate_crd(probe)
        _, raw = render(values, namespace="monitoring")
        notes = next(t for p, t in raw.items() if p.endswith("NOTES.txt"))
        snippet = yaml.safe_load("\n".join(l for l in notes.splitlines() if l.startswith("  ")
                                          and not l.startswith("  kubectl") and not l.startswith("  curl")
                                          and not l.startswith("  balena-exporter-<i>")))
        sts = workload(objs)
        replicas_seen = set()
        for t in targets:
            by_file = relabel({"__address__": t}, rules)["__address__"]
            by_chart = probe_address(probe, t)
            by_notes = relabel({"__address__": "x", "__param_target": t}, snippet)["__address__"]
            self.assertEqual(by_chart, by_file, t)
            self.assertEqual(by_notes, by_file, t)
            replica = hashmod(t, modulus)
            replicas_seen.add(replica)
            self.assertEqual(by_file, f"{sts['metadata']['name']}-{replica}.{sts['spec']['serviceName']}.monitoring.svc:9759")
        self.assertEqual(replicas_seen, set(range(modulus)))


if __name__ == "__main__":
    unittest.main(verbosity=2)
