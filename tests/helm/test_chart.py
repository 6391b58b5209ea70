"""Tests of the Helm chart in deploy/helm/balena-exporter, offline.

Renders the chart with the Helm SDK (helm-python-sdk: Helm's Go code as a library, no helm
binary), lints it, checks its values schema, validates the rendered core objects against the
Kubernetes schemas (kubernetes-validate) and checks the rendered exporter config with the
exporter itself (`--config.check`).

Run: python tests/helm/test_chart.py   (EXPORTER_BIN=path/to/balena-exporter)
"""

import os
import subprocess
import tempfile
import unittest
import zlib

import helm_python as helm
import kubernetes_validate
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CHART = os.path.join(ROOT, "deploy", "helm", "balena-exporter")
BIN = os.environ.get("EXPORTER_BIN", os.path.join(ROOT, "target", "debug", "balena-exporter"))
KUBE_VERSION = "1.30.0"
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


def render_all(values, namespace="monitoring"):
    """Every rendered object, in order (several of one kind allowed)."""
    chart = helm.Chart.load(CHART)
    out = chart.render(values, name="rel", namespace=namespace, is_install=True)
    return [doc for path, text in sorted(out.items()) if path.endswith(".yaml")
            for doc in yaml.safe_load_all(text) if doc]


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
        self.assertEqual(objs["PrometheusRule"]["spec"], shipped)

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
        # One Probe per replica; each target in exactly one, the replica adler32(name) % 3 names,
        # probed at that replica's own DNS name (never the load-balanced Service).
        owner = {}
        for probe in (o for o in objs if o["kind"] == "Probe"):
            url = probe["spec"]["prober"]["url"]
            replica = int(probe["metadata"]["name"].rsplit("-", 1)[1])
            self.assertEqual(url, f"rel-balena-exporter-{replica}.rel-balena-exporter-headless.monitoring.svc:9759")
            for target in probe["spec"]["targets"]["staticConfig"]["static"]:
                self.assertNotIn(target, owner, "a target is listed by two replicas")
                owner[target] = replica
        self.assertEqual(sorted(owner), sorted(SHARDED["config"]["targets"]))
        for target, replica in owner.items():
            self.assertEqual(replica, zlib.adler32(target.encode()) % 3, target)
        self.assertEqual(len(set(owner.values())), 3, "12 targets should reach all 3 replicas")
        # Adding a target moves no other target (and so no other cache).
        more = dict(SHARDED, config={"targets": dict(SHARDED["config"]["targets"], extra={"fleet": "acme/x", "auth": "acme"})})
        owner_after = {t: int(p["metadata"]["name"].rsplit("-", 1)[1]) for p in render_all(more)
                       if p["kind"] == "Probe" for t in p["spec"]["targets"]["staticConfig"]["static"]}
        self.assertEqual({t: owner_after[t] for t in owner}, owner)
        report = helm.lint(CHART, SHARDED, strict=True)
        self.assertEqual(report["errors"], [])
        with self.assertRaises(helm.HelmError) as e:
            render(dict(SHARDED, replicaCount=0))
        self.assertIn("sharding.enabled needs replicaCount >= 1", str(e.exception))

    def test_defaults_render_and_lint(self):
        objs, _ = render({})
        self.assertIn("Deployment", objs)
        self.assertNotIn("Probe", objs)
        self.assertEqual(helm.lint(CHART, strict=True)["errors"], [])


if __name__ == "__main__":
    unittest.main(verbosity=2)
