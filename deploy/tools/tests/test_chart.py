"""Render cases of the chart: values in, assertions on the rendered objects out, with Helm 4 and
Helm 3 (HELM4 / HELM3). Every render that must succeed is also validated against the Kubernetes
schemas (kubernetes-validate, strict); every refusal is a case that must fail with its message.
Run by `make chart-check`."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[3]
CHART = ROOT / "helm/shipshape"
RELEASE = "orders"
FULLNAME = "orders-shipshape"
HELMS = [h for h in (os.environ.get("HELM4"), os.environ.get("HELM3")) if h]
KUBERNETES = os.environ.get("CHART_TEST_KUBERNETES", "1.33")
# One entry per dependency: the chart needs a URL (or an existing Secret) for each.
INLINE = {
    "database": {"url": "postgres://app:pw@db:5432/orders"},
    "rabbitmq": {"url": "amqp://app:pw@mq:5672/%2f"},  # @rabbitmq
}
EXISTING = {
    "database": {"existingSecret": "orders-db", "existingSecretKey": "url"},
    "rabbitmq": {"existingSecret": "orders-mq"},  # @rabbitmq
}
# Health checks the app has (APP__HEALTH__<CHECK>__*).
CHECKS = [
    "postgres",
    "rabbitmq",  # @rabbitmq
]
# Egress ports of the dependencies: PostgreSQL.
EGRESS_PORTS = {5432}
# @rabbitmq-begin
# And RabbitMQ, plain and over TLS.
EGRESS_PORTS |= {5672, 5671}
# @rabbitmq-end

VALUES = yaml.safe_load((CHART / "values.yaml").read_text())
# The default repository without its registry host (what global.imageRegistry goes in front of).
REPOSITORY_PATH = VALUES["image"]["repository"].split("/", 1)[1]

if not HELMS:
    pytest.skip("HELM4/HELM3 not set (run through make chart-check)", allow_module_level=True)


def merge(*layers: dict) -> dict:
    out: dict = {}
    for layer in layers:
        for key, value in layer.items():
            if isinstance(value, dict) and isinstance(out.get(key), dict):
                out[key] = merge(out[key], value)
            else:
                out[key] = value
    return out


def helm(binary: str, values: dict, tmp_path: Path, *extra: str) -> subprocess.CompletedProcess:
    values_file = tmp_path / "values.json"
    values_file.write_text(json.dumps(values))
    return subprocess.run(
        [binary, "template", RELEASE, str(CHART), "-n", "prod", "-f", str(values_file), *extra],
        capture_output=True, text=True,
    )


class Rendered:
    def __init__(self, text: str):
        self.docs = [d for d in yaml.safe_load_all(text) if d]

    def all(self, kind: str) -> list[dict]:
        return [d for d in self.docs if d["kind"] == kind]

    def one(self, kind: str, name: str | None = None) -> dict:
        found = [d for d in self.all(kind) if name is None or d["metadata"]["name"] == name]
        assert len(found) == 1, f"{len(found)} {kind} named {name}: {[d['metadata']['name'] for d in self.all(kind)]}"
        return found[0]

    @property
    def pod(self) -> dict:
        return self.one("Deployment")["spec"]["template"]

    @property
    def container(self) -> dict:
        return self.pod["spec"]["containers"][0]

    def env(self, name: str) -> dict:
        return next(e for e in self.container["env"] if e["name"] == name)


@pytest.fixture(params=HELMS, ids=lambda h: Path(h).parent.name)
def render(request, tmp_path):
    binary = request.param

    def run(*layers: dict, extra: tuple[str, ...] = ()) -> Rendered:
        result = helm(binary, merge(*layers), tmp_path, *extra)
        assert result.returncode == 0, result.stderr
        rendered = Rendered(result.stdout)
        if binary == HELMS[0]:
            for doc in rendered.docs:
                if "monitoring.coreos.com" in doc["apiVersion"] or "gateway.networking.k8s.io" in doc["apiVersion"]:
                    continue  # CRDs: no schema in kubernetes-validate
                kubernetes_validate.validate(doc, KUBERNETES, strict=True)
        return rendered

    return run


@pytest.fixture(params=HELMS, ids=lambda h: Path(h).parent.name)
def refused(request, tmp_path):
    def run(*layers: dict, extra: tuple[str, ...] = ()) -> str:
        result = helm(request.param, merge(*layers), tmp_path, *extra)
        assert result.returncode != 0, "rendered, but must be refused"
        return result.stderr

    return run


# Secrets ------------------------------------------------------------------------------------

def test_inline_urls_go_into_a_secret_the_pods_reference(render):
    out = render(INLINE)
    secret = out.one("Secret", f"{FULLNAME}-urls")
    assert secret["stringData"] == {f"{name}-url": values["url"] for name, values in INLINE.items()}
    assert [e["name"] for e in out.container["env"]] == [f"APP__{name.upper()}__URL" for name in INLINE]
    for name in INLINE:
        assert out.env(f"APP__{name.upper()}__URL")["valueFrom"]["secretKeyRef"] == {"name": f"{FULLNAME}-urls", "key": f"{name}-url"}
    config = out.one("ConfigMap")["data"]
    assert not any("pw@" in str(v) for v in config.values()), "a password reached the ConfigMap"


def test_the_config_map_sets_only_settings_the_app_has(render):
    # The app refuses an APP__ variable it does not know (exit 2): the chart sets nothing else.
    settings = {"APP_ENV", "RUST_LOG", "APP__SERVICE__NAME", "APP__SERVER__PORT", "APP__MANAGEMENT__PORT",
                "APP__MANAGEMENT__WORKERS", "APP__SERVER__WORKERS", "APP__SERVER__BODY_TIMEOUT",
                "APP__SERVER__MAX_CONNECTIONS", "APP__SERVER__MAX_IN_FLIGHT", "APP__SERVER__TRUSTED_PROXIES", "APP__DATABASE__MAX_CONNECTIONS", "APP__DATABASE__QUERY_TIMEOUT",
                "APP__MIGRATIONS__AT_STARTUP", "APP__MIGRATIONS__LOCK_TIMEOUT", "APP__MIGRATIONS__STATEMENT_TIMEOUT",
                "APP__STARTUP__DEADLINE",
                "APP__SHUTDOWN__DRAIN_DELAY", "APP__SHUTDOWN__TIMEOUT"}
    settings |= {"APP__OUTBOX__PUBLISHERS", "APP__RABBITMQ__CONSUMERS"}  # @rabbitmq
    settings |= {f"APP__HEALTH__{check.upper()}__{knob}" for check in CHECKS
                 for knob in ("INTERVAL", "TIMEOUT", "FAILURE_THRESHOLD", "SUCCESS_THRESHOLD", "CRITICAL")}
    assert set(render(INLINE).one("ConfigMap")["data"]) == settings
    ca = {name: {"tls": {"caBundle": {"secretName": f"{name}-ca"}}} for name in INLINE}
    data = render(TLS_URLS, ca).one("ConfigMap")["data"]
    assert set(data) == settings | {f"APP__{name.upper()}__CA_FILE" for name in INLINE}


def test_every_check_threshold_reaches_the_app(render, refused):
    data = render(INLINE, {"app": {"health": {"postgres": {"successThreshold": 3}}}}).one("ConfigMap")["data"]
    assert data["APP__HEALTH__POSTGRES__SUCCESS_THRESHOLD"] == "3"
    assert render(INLINE).one("ConfigMap")["data"]["APP__HEALTH__POSTGRES__SUCCESS_THRESHOLD"] == "1"
    assert "successThreshold" in refused(INLINE, {"app": {"health": {"postgres": {"successThreshold": 0}}}})


def test_trusted_proxies_reach_the_app_as_one_list(render, refused):
    assert render(INLINE).one("ConfigMap")["data"]["APP__SERVER__TRUSTED_PROXIES"] == ""
    proxies = {"app": {"server": {"trustedProxies": ["10.0.0.0/8", "fd00::/8", "192.168.1.10"]}}}
    data = render(INLINE, proxies).one("ConfigMap")["data"]
    assert data["APP__SERVER__TRUSTED_PROXIES"] == "10.0.0.0/8,fd00::/8,192.168.1.10"
    assert "trustedProxies" in refused(INLINE, {"app": {"server": {"trustedProxies": ["ingress-nginx"]}}})


def test_a_changed_url_rolls_the_pods(render):
    before = render(INLINE).pod["metadata"]["annotations"]["checksum/secret"]
    after = render(INLINE, {"database": {"url": "postgres://app:new@db:5432/orders"}}).pod["metadata"]["annotations"]["checksum/secret"]
    assert before != after


def test_existing_secrets_are_referenced_as_they_are(render):
    out = render(EXISTING)
    assert out.all("Secret") == []
    assert out.env("APP__DATABASE__URL")["valueFrom"]["secretKeyRef"] == {"name": "orders-db", "key": "url"}
    assert out.env("APP__RABBITMQ__URL")["valueFrom"]["secretKeyRef"] == {"name": "orders-mq", "key": "rabbitmq-url"}  # @rabbitmq
    assert "checksum/secret" not in out.pod["metadata"]["annotations"]


# @rabbitmq-begin
def test_one_existing_and_one_inline(render):
    out = render({"database": EXISTING["database"], "rabbitmq": INLINE["rabbitmq"]})
    assert out.one("Secret")["stringData"] == {"rabbitmq-url": INLINE["rabbitmq"]["url"]}
    assert out.env("APP__DATABASE__URL")["valueFrom"]["secretKeyRef"]["name"] == "orders-db"


# @rabbitmq-end
@pytest.mark.parametrize("missing", list(INLINE))
def test_no_url_and_no_secret_is_refused_naming_the_values(refused, missing):
    values = {k: v for k, v in INLINE.items() if k != missing}
    message = refused(values)
    assert f"set {missing}.url" in message and f"{missing}.existingSecret" in message, message


# TLS to the dependencies: CA bundles --------------------------------------------------------

TLS_URLS = {
    "database": {"url": "postgres://app:pw@db.example.com:5432/orders?sslmode=verify-full"},
    "rabbitmq": {"url": "amqps://app:pw@mq.example.com:5671/%2f"},  # @rabbitmq
}


def ca_files(out: Rendered) -> dict[str, str]:
    """Dependency -> the file its APP__<DEP>__CA_FILE names, checked against the pod: the mount of
    the volume <dep>-ca holds exactly that file, read-only."""
    data = out.one("ConfigMap")["data"]
    volumes = {v["name"]: v for v in out.pod["spec"]["volumes"]}
    mounts = {m["name"]: m for m in out.container["volumeMounts"]}
    found = {}
    for dependency in TLS_URLS:
        path = data.get(f"APP__{dependency.upper()}__CA_FILE")
        name = f"{dependency}-ca"
        if path is None:
            assert name not in volumes and name not in mounts, f"{name} mounted without its variable"
            continue
        mount, volume = mounts[name], volumes[name]
        source = volume.get("secret") or volume["configMap"]
        assert mount["readOnly"] is True
        assert path == f"{mount['mountPath']}/{source['items'][0]['path']}", (path, mount, source)
        assert source["defaultMode"] == 0o444
        found[dependency] = path
    return found


def test_ca_bundles_from_secrets_are_mounted_where_the_app_settings_point(render):
    out = render(TLS_URLS, {
        "database": {"tls": {"caBundle": {"secretName": "rds-ca"}}},
        "rabbitmq": {"tls": {"caBundle": {"secretName": "mq-ca", "key": "bundle.pem"}}},  # @rabbitmq
    })
    assert ca_files(out) == {name: f"/etc/shipshape/tls/{name}/ca.crt" for name in TLS_URLS}
    volumes = {v["name"]: v for v in out.pod["spec"]["volumes"]}
    assert volumes["database-ca"]["secret"] == {"secretName": "rds-ca", "items": [{"key": "ca.crt", "path": "ca.crt"}], "defaultMode": 0o444}
    assert volumes["rabbitmq-ca"]["secret"]["secretName"] == "mq-ca"  # @rabbitmq
    assert volumes["rabbitmq-ca"]["secret"]["items"] == [{"key": "bundle.pem", "path": "ca.crt"}]  # @rabbitmq
    # The variables are settings like the others (ConfigMap), not container env entries.
    assert not any(e["name"].endswith("__CA_FILE") for e in out.container["env"])


def test_a_ca_bundle_from_a_config_map(render):
    dependency = list(TLS_URLS)[-1]
    out = render(TLS_URLS, {dependency: {"tls": {"caBundle": {"configMapName": "ca-bundle", "key": "ca.pem"}}}})
    assert ca_files(out) == {dependency: f"/etc/shipshape/tls/{dependency}/ca.crt"}
    volume = next(v for v in out.pod["spec"]["volumes"] if v["name"] == f"{dependency}-ca")
    assert volume["configMap"] == {"name": "ca-bundle", "items": [{"key": "ca.pem", "path": "ca.crt"}], "defaultMode": 0o444}
    assert "secret" not in volume


def test_without_a_ca_bundle_there_is_no_volume_and_no_variable(render):
    for values in (INLINE, TLS_URLS):
        out = render(values)
        assert ca_files(out) == {}
        assert [v["name"] for v in out.pod["spec"]["volumes"]] == ["tmp"]
        assert [m["name"] for m in out.container["volumeMounts"]] == ["tmp"]
        assert not any(k.endswith("__CA_FILE") for k in out.one("ConfigMap")["data"])


def notes(values: dict, tmp_path: Path) -> str:
    """NOTES.txt as `helm install` prints it (Helm 4; `helm template` leaves it out)."""
    values_file = tmp_path / "values.json"
    values_file.write_text(json.dumps(values))
    result = subprocess.run(
        [HELMS[0], "install", RELEASE, str(CHART), "-n", "prod", "--dry-run=client", "-f", str(values_file)],
        capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.split("NOTES:", 1)[1]


def test_an_unverified_database_connection_is_called_out_after_install(tmp_path):
    warning = "WARNING: PostgreSQL's certificate is not verified"
    # libpq's default (prefer) and require: encrypted at best, anyone in between accepted.
    for url in ("postgres://app:pw@db:5432/orders", "postgres://app:pw@db:5432/orders?sslmode=require"):
        text = notes(merge(INLINE, {"database": {"url": url}}), tmp_path)
        assert warning in text and "database.tls.caBundle" in text and "verify-full" in text, text
    # A URL in a Secret cannot be read at render time: the warning says what to check.
    assert warning in notes(EXISTING, tmp_path)
    # Verified: a CA bundle (it makes any mode verify fully), or verify-full against the system roots.
    assert warning not in notes(merge(INLINE, {"database": {"tls": {"caBundle": {"secretName": "rds-ca"}}}}), tmp_path)
    assert warning not in notes(merge(INLINE, {"database": {"url": "postgres://app:pw@db/orders?sslmode=verify-full"}}), tmp_path)


@pytest.mark.parametrize("dependency", list(TLS_URLS))
def test_a_ca_bundle_from_a_secret_and_a_config_map_is_refused(refused, dependency):
    message = refused(TLS_URLS, {dependency: {"tls": {"caBundle": {"secretName": "a", "configMapName": "b"}}}})
    assert f"{dependency}.tls.caBundle: set secretName" in message and "configMapName" in message and "not both" in message, message


# @rabbitmq-begin
def test_a_broker_ca_bundle_with_an_amqp_url_is_refused(refused, render):
    ca = {"rabbitmq": {"tls": {"caBundle": {"secretName": "mq-ca"}}}}
    message = refused(TLS_URLS, {"rabbitmq": INLINE["rabbitmq"]}, ca)
    assert "rabbitmq.tls.caBundle is set but rabbitmq.url is amqp://" in message and "amqps://" in message, message
    # A URL in an existing Secret cannot be read at render time: the app checks it (exit 2).
    assert ca_files(render(TLS_URLS, {"rabbitmq": EXISTING["rabbitmq"]}, ca)) == {"rabbitmq": "/etc/shipshape/tls/rabbitmq/ca.crt"}


# @rabbitmq-end
@pytest.mark.parametrize("url", ["postgres://app:pw@db:5432/orders?sslmode=disable",
                                 "postgres://app:pw@db:5432/orders?connect_timeout=3&sslmode=disable"])
def test_a_database_ca_bundle_with_sslmode_disable_is_refused(refused, url):
    message = refused(TLS_URLS, {"database": {"url": url, "tls": {"caBundle": {"configMapName": "db-ca"}}}})
    assert "database.tls.caBundle is set but database.url has sslmode=disable" in message, message


# Parent charts, registry, image --------------------------------------------------------------

def test_enabled_and_global_are_accepted_and_used(render):
    out = render(INLINE, {"enabled": True, "global": {"imageRegistry": "mirror.corp:5000", "imagePullSecrets": ["corp-pull"]}})
    assert out.container["image"] == f"mirror.corp:5000/{REPOSITORY_PATH}:0.1.0"
    assert {"name": "corp-pull"} in out.pod["spec"]["imagePullSecrets"]
    test_pod = out.one("Pod")
    assert test_pod["spec"]["containers"][0]["image"] == "mirror.corp:5000/library/busybox:1.37"


def test_global_registry_prefixes_a_repository_without_a_host(render):
    out = render(INLINE, {"image": {"repository": "acme/orders"}, "global": {"imageRegistry": "mirror.corp"}})
    assert out.container["image"] == "mirror.corp/acme/orders:0.1.0"


def test_the_release_digest_pins_the_app_version_and_an_explicit_tag_wins(render):
    digest = "sha256:" + "a" * 64
    repository = VALUES["image"]["repository"]
    assert render(INLINE, {"image": {"digest": digest}}).container["image"] == f"{repository}:0.1.0@{digest}"
    assert render(INLINE, {"image": {"digest": digest, "tag": "1.5.0"}}).container["image"] == f"{repository}:1.5.0"


# Autoscaling, connections, disruptions ---------------------------------------------------------

def test_hpa_has_a_scale_down_window_and_the_deployment_keeps_a_replica_count(render):
    # (4 replicas + 1 surge + 1 draining) x 16 + 2 = 98 connections: more than the default 97.
    out = render(INLINE, {"autoscaling": {"enabled": True, "maxReplicas": 4}, "database": {"maxConnections": 150}})
    hpa = out.one("HorizontalPodAutoscaler")
    assert hpa["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] == 300
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 4)


def test_inverted_autoscaling_bounds_are_refused(refused):
    assert "minReplicas (12) is above autoscaling.maxReplicas (10)" in refused(
        INLINE, {"autoscaling": {"enabled": True, "minReplicas": 12, "maxReplicas": 10, }, "database": {"maxConnections": 1000}})


def test_the_connection_guard_counts_every_pod_of_a_rollout(refused, render):
    # The peak of a rollout: the replicas, the surge pod and the old pod that still drains, each
    # holding app.database.maxConnections, plus what runs outside the pods (a migration, a psql).
    # Defaults: (3 + 1 + 1) x 16 + 2 = 82, within the default 97 (a stock server).
    render(INLINE, {"database": {"maxConnections": 82}})
    message = refused(INLINE, {"database": {"maxConnections": 81}})
    assert ("(replicaCount 3 + strategy.maxSurge 1 + 1 draining: an old pod drains for app.shutdown.drainDelaySeconds 5 s"
            " + 1 s, the next one stops after minReadySeconds 10 s) = 5 pods x app.database.maxConnections 16"
            " + database.reservedConnections 2 = 82 exceeds database.maxConnections (81)") in message, message
    assert "Lower app.database.maxConnections" in message and "max_connections" in message, message
    # Each term counts: the surge, the connections of a pod, the reserved ones.
    render(INLINE, {"strategy": {"maxSurge": 2}, "database": {"maxConnections": 98}})
    assert "= 98 exceeds database.maxConnections (97)" in refused(INLINE, {"strategy": {"maxSurge": 2}})
    render(INLINE, {"app": {"database": {"maxConnections": 19}}})  # 5 x 19 + 2 = 97
    assert "= 102 exceeds" in refused(INLINE, {"app": {"database": {"maxConnections": 20}}})
    render(INLINE, {"database": {"maxConnections": 80, "reservedConnections": 0}})
    assert "= 81 exceeds database.maxConnections (80)" in refused(INLINE, {"database": {"maxConnections": 80, "reservedConnections": 1}})
    # @rabbitmq-begin
    # The relay's loops and the consumers share the background pool: no connection more.
    render(INLINE, {"database": {"maxConnections": 82}, "app": {"outbox": {"publishers": 16}, "rabbitmq": {"consumers": 16}}})
    # @rabbitmq-end


def test_with_the_hpa_the_guard_counts_max_replicas(refused, render):
    # (5 + 1 + 1) x 16 + 2 = 114; replicaCount no longer counts.
    hpa = {"autoscaling": {"enabled": True, "maxReplicas": 5}, "replicaCount": 10}
    render(INLINE, hpa, {"database": {"maxConnections": 114}})
    message = refused(INLINE, hpa, {"database": {"maxConnections": 113}})
    assert ("(autoscaling.maxReplicas 5 + strategy.maxSurge 1 + 1 draining:") in message, message
    assert ("= 7 pods x app.database.maxConnections 16"
            " + database.reservedConnections 2 = 114 exceeds database.maxConnections (113)") in message, message
    # 10 replicas do not fit a stock server: (10 + 1 + 1) x 16 + 2 = 194.
    assert "= 194 exceeds database.maxConnections (97)" in refused(INLINE, {"autoscaling": {"enabled": True, "maxReplicas": 10}})


def test_the_guard_counts_the_migration_job(refused, render):
    # (3 + 1 + 1) x 16 + 2 + 1 = 83: the Job's connection on top of the default 82.
    job = {"migrations": {"mode": "job"}}
    render(INLINE, job, {"database": {"maxConnections": 83}})
    message = refused(INLINE, job, {"database": {"maxConnections": 82}})
    assert "+ database.reservedConnections 2 + 1 migration Job = 83 exceeds database.maxConnections (82)" in message, message
    render(INLINE, {"database": {"maxConnections": 82}})  # startup mode: no Job


# Migrations ---------------------------------------------------------------------------------

HOOK = {"helm.sh/hook": "pre-install,pre-upgrade", "helm.sh/hook-delete-policy": "before-hook-creation,hook-succeeded"}


def test_startup_mode_has_no_job_and_the_pods_migrate(render):
    out = render(INLINE)
    assert out.all("Job") == []
    assert out.one("ConfigMap")["data"]["APP__MIGRATIONS__AT_STARTUP"] == "true"


def test_job_mode_migrates_in_a_hook_job_as_the_pods_would_run(render):
    out = render(INLINE, {"migrations": {"mode": "job", "deadlineSeconds": 600}})
    assert out.one("ConfigMap")["data"]["APP__MIGRATIONS__AT_STARTUP"] == "false"
    job = out.one("Job", f"{FULLNAME}-migrate")
    assert {k: job["metadata"]["annotations"][k] for k in HOOK} == HOOK
    assert job["spec"]["activeDeadlineSeconds"] == 660
    pod = job["spec"]["template"]
    container = pod["spec"]["containers"][0]
    deployment = out.pod
    assert container["args"] == ["migrate"]
    assert container["image"] == out.container["image"]
    assert container["securityContext"] == out.container["securityContext"]
    assert pod["spec"]["securityContext"] == deployment["spec"]["securityContext"]
    assert pod["spec"]["restartPolicy"] == "Never"
    env = {e["name"]: e for e in container["env"]}
    # Every setting of the pods, inline (their ConfigMap does not exist yet on install).
    for key, value in out.one("ConfigMap")["data"].items():
        assert env[key]["value"] == value, key
    assert env["APP__MIGRATIONS__DEADLINE"]["value"] == "600s"
    # The URL from a hook Secret of its own, created before it (weight -10 < 0).
    assert env["APP__DATABASE__URL"]["valueFrom"]["secretKeyRef"] == {"name": f"{FULLNAME}-migrate", "key": "database-url"}
    secret = out.one("Secret", f"{FULLNAME}-migrate")
    assert secret["stringData"] == {"database-url": INLINE["database"]["url"]}
    assert int(secret["metadata"]["annotations"]["helm.sh/hook-weight"]) < int(job["metadata"]["annotations"]["helm.sh/hook-weight"])
    assert pod["spec"]["serviceAccountName"] == f"{FULLNAME}-migrate"
    out.one("ServiceAccount", f"{FULLNAME}-migrate")
    # No Service, PodDisruptionBudget or NetworkPolicy of the pods selects the Job's pod.
    selector = out.one("Service", FULLNAME)["spec"]["selector"]
    assert not all(pod["metadata"]["labels"].get(k) == v for k, v in selector.items())


def test_job_mode_with_existing_secrets_tls_and_a_network_policy(render):
    ca = {"database": {"tls": {"caBundle": {"secretName": "db-ca"}}}}
    out = render(EXISTING, ca, {"migrations": {"mode": "job"}, "serviceAccount": {"create": False, "name": "orders"},
                                "networkPolicy": {"enabled": True, "egress": {"enabled": True, "to": [{"ipBlock": {"cidr": "10.0.0.0/8"}}]}}})
    job = out.one("Job")
    spec = job["spec"]["template"]["spec"]
    container = spec["containers"][0]
    env = {e["name"]: e for e in container["env"]}
    assert env["APP__DATABASE__URL"]["valueFrom"]["secretKeyRef"] == {"name": "orders-db", "key": "url"}
    assert [s["metadata"]["name"] for s in out.all("Secret")] == []
    assert spec["serviceAccountName"] == "orders"
    assert out.all("ServiceAccount") == []
    assert env["APP__DATABASE__CA_FILE"]["value"] == "/etc/shipshape/tls/database/ca.crt"
    assert {"name": "database-ca", "mountPath": "/etc/shipshape/tls/database", "readOnly": True} in container["volumeMounts"]
    assert any(v["name"] == "database-ca" and v["secret"]["secretName"] == "db-ca" for v in spec["volumes"])
    policy = out.one("NetworkPolicy", f"{FULLNAME}-migrate")
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= job["spec"]["template"]["metadata"]["labels"].items()
    assert "ingress" not in policy["spec"] and policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
    assert policy["spec"]["egress"] == out.one("NetworkPolicy", FULLNAME)["spec"]["egress"]
    assert {k: policy["metadata"]["annotations"][k] for k in HOOK} == HOOK


def test_an_unknown_migration_mode_is_refused(refused):
    assert "mode" in refused(INLINE, {"migrations": {"mode": "manual"}})


def test_connections_and_workers_are_values(render):
    data = render(INLINE).one("ConfigMap")["data"]
    assert (data["APP__DATABASE__MAX_CONNECTIONS"], data["APP__SERVER__WORKERS"], data["APP__MANAGEMENT__WORKERS"]) == ("16", "2", "1")
    # Gone from the app: it would refuse the variable (exit 2).
    assert "APP__DATABASE__POOL_MAX_SIZE" not in data
    data = render(INLINE, {"app": {"database": {"maxConnections": 8}, "server": {"workers": 4}, "managementWorkers": 2}}).one("ConfigMap")["data"]
    assert (data["APP__DATABASE__MAX_CONNECTIONS"], data["APP__SERVER__WORKERS"], data["APP__MANAGEMENT__WORKERS"]) == ("8", "4", "2")
    # @rabbitmq-begin
    data = render(INLINE, {"app": {"outbox": {"publishers": 2}, "rabbitmq": {"consumers": 3}}}).one("ConfigMap")["data"]
    assert (data["APP__OUTBOX__PUBLISHERS"], data["APP__RABBITMQ__CONSUMERS"]) == ("2", "3")
    # @rabbitmq-end


def test_body_timeout_and_connection_cap_are_values(render):
    data = render(INLINE).one("ConfigMap")["data"]
    assert (data["APP__SERVER__BODY_TIMEOUT"], data["APP__SERVER__MAX_CONNECTIONS"], data["APP__SERVER__MAX_IN_FLIGHT"]) == ("10s", "0", "0")
    data = render(INLINE, {"app": {"server": {"bodyTimeoutSeconds": 30, "maxConnections": 2048, "maxInFlight": 96}}}).one("ConfigMap")["data"]
    assert (data["APP__SERVER__BODY_TIMEOUT"], data["APP__SERVER__MAX_CONNECTIONS"], data["APP__SERVER__MAX_IN_FLIGHT"]) == ("30s", "2048", "96")


def test_pdb_lets_unhealthy_pods_be_evicted(render):
    pdb = render(INLINE).one("PodDisruptionBudget")["spec"]
    assert pdb["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
    assert pdb["maxUnavailable"] == 1 and "minAvailable" not in pdb
    pdb = render(INLINE, {"podDisruptionBudget": {"minAvailable": 2, "maxUnavailable": None}}).one("PodDisruptionBudget")["spec"]
    assert pdb["minAvailable"] == 2 and "maxUnavailable" not in pdb


def test_pdb_with_both_bounds_is_refused(refused):
    assert "not both" in refused(INLINE, {"podDisruptionBudget": {"minAvailable": 2}})


# Services, ingress, network policy -------------------------------------------------------------

def test_the_api_service_carries_only_the_api_port(render):
    out = render(INLINE, {"service": {"type": "LoadBalancer", "annotations": {"lb.example.com/internal": "true"}}})
    api = out.one("Service", FULLNAME)
    assert api["spec"]["type"] == "LoadBalancer"
    assert [p["targetPort"] for p in api["spec"]["ports"]] == ["http"]
    assert api["metadata"]["annotations"] == {"lb.example.com/internal": "true"}
    management = out.one("Service", f"{FULLNAME}-management")
    assert management["spec"]["type"] == "ClusterIP"
    assert [p["targetPort"] for p in management["spec"]["ports"]] == ["management"]


def test_helm_test_and_service_monitor_use_the_management_service(render):
    out = render(INLINE, {"serviceMonitor": {"enabled": True, "scrapeTimeout": "5s",
                                             "relabelings": [{"action": "labeldrop", "regex": "endpoint"}]}})
    command = out.one("Pod")["spec"]["containers"][0]["command"]
    assert command[-1] == f"http://{FULLNAME}-management:9090/readyz"
    monitor = out.one("ServiceMonitor")
    management_labels = out.one("Service", f"{FULLNAME}-management")["metadata"]["labels"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= management_labels.items()
    assert not monitor["spec"]["selector"]["matchLabels"].items() <= out.one("Service", FULLNAME)["metadata"]["labels"].items()
    endpoint = monitor["spec"]["endpoints"][0]
    assert endpoint["scrapeTimeout"] == "5s" and endpoint["relabelings"][0]["action"] == "labeldrop"


def test_network_policy_admits_the_test_pod_and_monitoring_and_has_an_optional_egress(render):
    out = render(INLINE, {"networkPolicy": {"enabled": True}})
    policy = out.one("NetworkPolicy")["spec"]
    assert policy["policyTypes"] == ["Ingress"] and "egress" not in policy
    management_rule = next(r for r in policy["ingress"] if r["ports"][0]["port"] == "management")
    test_labels = out.one("Pod")["metadata"]["labels"]
    selectors = [p["podSelector"]["matchLabels"] for p in management_rule["from"] if "podSelector" in p]
    assert any(s.items() <= test_labels.items() for s in selectors), "helm test could not reach the management port"
    assert any("namespaceSelector" in p for p in management_rule["from"])
    # The test pod is not one of the service's pods: no Service, PDB or policy selects it.
    pod_selector = policy["podSelector"]["matchLabels"]
    assert not pod_selector.items() <= test_labels.items(), "the policy's egress rules would bind the test pod"
    for service in out.all("Service"):
        assert not service["spec"]["selector"].items() <= test_labels.items(), service["metadata"]["name"]
    policy = render(INLINE, {"networkPolicy": {"enabled": True, "egress": {"enabled": True, "to": [{"ipBlock": {"cidr": "10.0.0.0/8"}}]}}}).one("NetworkPolicy")["spec"]
    assert policy["policyTypes"] == ["Ingress", "Egress"]
    assert {p["port"] for p in policy["egress"][0]["ports"]} == {53}
    assert {p["port"] for p in policy["egress"][1]["ports"]} == EGRESS_PORTS
    assert policy["egress"][1]["to"] == [{"ipBlock": {"cidr": "10.0.0.0/8"}}]


def test_ingress_routes_to_the_api_port_only(render):
    out = render(INLINE, {"ingress": {"enabled": True, "className": "nginx",
                                      "hosts": [{"host": "orders.example.com", "paths": [{"path": "/v1", "pathType": "Prefix"}]}],
                                      "tls": [{"secretName": "orders-tls", "hosts": ["orders.example.com"]}]}})
    ingress = out.one("Ingress")["spec"]
    assert ingress["ingressClassName"] == "nginx"
    assert ingress["tls"] == [{"hosts": ["orders.example.com"], "secretName": "orders-tls"}]
    path = ingress["rules"][0]["http"]["paths"][0]
    assert path["path"] == "/v1" and path["backend"]["service"] == {"name": FULLNAME, "port": {"name": "http"}}


def test_http_route_points_at_the_api_service(render):
    route = render(INLINE, {"httpRoute": {"enabled": True}}).one("HTTPRoute")["spec"]
    assert route["rules"][0]["backendRefs"] == [{"name": FULLNAME, "port": 80}]


# Extension points ------------------------------------------------------------------------------

def test_extension_points(render):
    out = render(INLINE, {
        "extraEnvVars": [{"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "t", "key": "k"}}}],
        "extraEnvVarsSecret": "orders-env", "extraEnvVarsCM": "orders-cm",
        "extraVolumes": [{"name": "ca", "secret": {"secretName": "ca"}}],
        "extraVolumeMounts": [{"name": "ca", "mountPath": "/etc/ca", "readOnly": True}],
        "initContainers": [{"name": "init", "image": "busybox", "command": ["true"]}],
        "sidecars": [{"name": "proxy", "image": "envoy"}],
        "podAnnotations": {"a": "1"}, "podLabels": {"team": "orders"}, "priorityClassName": "high",
    })
    spec = out.pod["spec"]
    assert out.env("TOKEN")["valueFrom"]["secretKeyRef"] == {"name": "t", "key": "k"}
    assert {"secretRef": {"name": "orders-env"}} in out.container["envFrom"]
    assert {"configMapRef": {"name": "orders-cm"}} in out.container["envFrom"]
    assert {"name": "ca", "secret": {"secretName": "ca"}} in spec["volumes"]
    assert {"name": "ca", "mountPath": "/etc/ca", "readOnly": True} in out.container["volumeMounts"]
    assert [c["name"] for c in spec["initContainers"]] == ["init"]
    assert [c["name"] for c in spec["containers"]] == ["shipshape", "proxy"]
    assert out.pod["metadata"]["annotations"]["a"] == "1" and out.pod["metadata"]["labels"]["team"] == "orders"
    assert spec["priorityClassName"] == "high"


def test_common_labels_and_annotations_reach_every_object(render):
    out = render(INLINE, {"commonLabels": {"team": "orders"}, "commonAnnotations": {"owner": "orders@example.com"},
                          "ingress": {"enabled": True}, "autoscaling": {"enabled": True, "maxReplicas": 4},
                          "database": {"maxConnections": 150},
                          "networkPolicy": {"enabled": True}, "serviceMonitor": {"enabled": True}, "prometheusRule": {"enabled": True}})
    assert len(out.docs) >= 12
    for doc in out.docs:
        assert doc["metadata"]["labels"]["team"] == "orders", doc["kind"]
        assert doc["metadata"]["annotations"]["owner"] == "orders@example.com", doc["kind"]


def test_topology_spread_keeps_each_replica_set_apart(render):
    constraints = render(INLINE).pod["spec"]["topologySpreadConstraints"]
    assert {c["topologyKey"] for c in constraints} == {"topology.kubernetes.io/zone", "kubernetes.io/hostname"}
    for c in constraints:
        assert c["matchLabelKeys"] == ["pod-template-hash"]
        assert c["labelSelector"]["matchLabels"] == {"app.kubernetes.io/name": "shipshape", "app.kubernetes.io/instance": RELEASE}


@pytest.mark.parametrize("how", ["force", "detected"])
def test_openshift_restricted_scc_assigns_the_uid(render, how):
    if how == "force":
        out = render(INLINE, {"global": {"compatibility": {"openshift": {"adaptSecurityContext": "force"}}}})
    else:
        out = render(INLINE, extra=("--api-versions", "security.openshift.io/v1"))
    for context in (out.pod["spec"]["securityContext"], out.container["securityContext"]):
        assert not {"runAsUser", "runAsGroup", "fsGroup"} & context.keys(), context
        assert context["runAsNonRoot"] is True
    pinned = render(INLINE, {"global": {"compatibility": {"openshift": {"adaptSecurityContext": "disabled"}}}},
                    extra=("--api-versions", "security.openshift.io/v1"))
    assert pinned.pod["spec"]["securityContext"]["runAsUser"] == 65532


def test_alert_rules_are_scoped_to_the_release(render):
    rules = render(INLINE, {"prometheusRule": {"enabled": True}}).one("PrometheusRule")["spec"]["groups"][0]["rules"]
    text = json.dumps(rules)
    assert "__" not in text.replace("__name__", "")
    assert f'deployment=\\"{FULLNAME}\\"' in text and f'job=\\"{FULLNAME}-management\\"' in text and 'namespace=\\"prod\\"' in text
    assert {r["alert"] for r in rules} >= {"ShipshapeNoReadyReplicas", "ShipshapeRestarting", "ShipshapeHighErrorRatio"}


def test_alerts_take_extra_labels_thresholds_and_link_their_runbook(render):
    def rules(*layers):
        return render(INLINE, {"prometheusRule": {"enabled": True}}, *layers).one("PrometheusRule")["spec"]["groups"][0]["rules"]
    # By default every alert links its section of the runbook beside the chart's home.
    home = yaml.safe_load((CHART / "Chart.yaml").read_text())["home"]
    for rule in rules():
        assert rule["annotations"]["runbook_url"] == f"{home}/blob/main/docs/runbook.md#{rule['alert'].lower()}", rule
    tuned = rules({"prometheusRule": {"additionalLabels": {"team": "orders", "severity": "page"},
                                      "runbookUrl": "https://runbooks.example/orders",
                                      "thresholds": {"errorRatio": 0.02}}})
    for rule in tuned:
        # Extra labels route the alerts; an alert's own severity is kept.
        assert rule["labels"]["team"] == "orders" and rule["labels"]["severity"] in ("warning", "critical"), rule
        assert rule["annotations"]["runbook_url"] == f"https://runbooks.example/orders#{rule['alert'].lower()}"
    errors = next(r for r in tuned if r["alert"] == "ShipshapeHighErrorRatio")
    assert "> 0.02" in errors["expr"] and "2 %" in errors["annotations"]["summary"], errors


def test_the_runbook_has_a_section_per_alert():
    runbook = (ROOT / "docs/runbook.md").read_text()
    alerts = [r["alert"] for g in yaml.safe_load((CHART / "files/alerts.yaml").read_text())["groups"] for r in g["rules"]]
    missing = [a for a in alerts if f"\n## {a}\n" not in runbook]
    assert not missing, missing


def test_monitoring_without_selector_labels_is_called_out_after_install(tmp_path):
    note = "kube-prometheus-stack selects"
    on = {"serviceMonitor": {"enabled": True}, "prometheusRule": {"enabled": True}}
    text = notes(merge(INLINE, on), tmp_path)
    assert note in text and "serviceMonitor.labels" in text and "prometheusRule.labels" in text, text
    labelled = {"serviceMonitor": {"labels": {"release": "kps"}}, "prometheusRule": {"labels": {"release": "kps"}}}
    assert note not in notes(merge(INLINE, on, labelled), tmp_path)
    assert note not in notes(INLINE, tmp_path)


# Parent charts, GitOps and rollout arithmetic ------------------------------------------------

def test_secret_names_are_templates_a_parent_chart_can_fill(render):
    named = {"database": {"existingSecret": "{{ .Release.Name }}-db", "existingSecretKey": "url",
                          "tls": {"caBundle": {"secretName": "{{ .Release.Name }}-db-ca"}}}}
    out = render(EXISTING, named)
    assert out.env("APP__DATABASE__URL")["valueFrom"]["secretKeyRef"]["name"] == f"{RELEASE}-db"
    volume = next(v for v in out.pod["spec"]["volumes"] if v["name"] == "database-ca")
    assert volume["secret"]["secretName"] == f"{RELEASE}-db-ca"


def test_with_the_hpa_on_the_replica_count_is_left_to_it(render):
    # `helm template` (Argo CD, Flux's post-renderers) has no live object to look up: a count
    # here would reset the HPA's on every sync.
    deployment = render(INLINE, {"autoscaling": {"enabled": True}}).one("Deployment")
    assert "replicas" not in deployment["spec"], deployment["spec"]
    assert render(INLINE).one("Deployment")["spec"]["replicas"] == VALUES["replicaCount"]


def test_the_hpa_with_its_default_range_fits_the_connection_guard(render):
    hpa = render(INLINE, {"autoscaling": {"enabled": True}}).one("HorizontalPodAutoscaler")
    assert hpa["spec"]["minReplicas"] >= 2 and hpa["spec"]["maxReplicas"] > hpa["spec"]["minReplicas"], hpa["spec"]


def test_a_rollout_that_could_never_progress_is_refused(refused):
    message = refused(INLINE, {"strategy": {"maxSurge": 0, "maxUnavailable": 0}})
    assert "strategy: maxSurge and maxUnavailable are both 0" in message, message
    message = refused(INLINE, {"strategy": {"maxSurge": "0%", "maxUnavailable": "10%"}})
    assert "strategy: maxSurge and maxUnavailable are both 0" in message, message


def test_percentages_are_accepted_and_counted_as_kubernetes_rounds_them(render, refused):
    out = render(INLINE, {"strategy": {"maxSurge": "25%", "maxUnavailable": 0}})
    assert out.one("Deployment")["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": "25%", "maxUnavailable": 0}
    # 34 % of 3 replicas rounds up to 2 surge pods: (3 + 2 + 1) x 16 + 2 = 98 > 97.
    message = refused(INLINE, {"strategy": {"maxSurge": "34%", "maxUnavailable": 0}})
    assert "strategy.maxSurge 34% = 2" in message, message
    assert "strategy" in refused(INLINE, {"strategy": {"maxSurge": "a quarter", "maxUnavailable": 0}})


def test_the_documented_minimum_of_the_hpa_is_enforced(refused):
    assert "minReplicas" in refused(INLINE, {"autoscaling": {"enabled": True, "minReplicas": 1}})


def test_a_drain_longer_than_min_ready_counts_every_pod_that_may_drain_at_once(render, refused):
    # A cloud load balancer's drain (30 s) outlasts minReadySeconds: old pods drain side by side.
    long_drain = {"app": {"shutdown": {"drainDelaySeconds": 30}}}
    message = refused(INLINE, long_drain)
    assert "draining" in message and "minReadySeconds" in message, message
    # The documented values for such load balancers fit again.
    render(INLINE, long_drain, {"minReadySeconds": 32})


# Refusals kept from before ---------------------------------------------------------------------

@pytest.mark.parametrize("values, messages", [
    ({"terminationGracePeriodSeconds": 10}, ["below the shutdown budget"]),
    ({"probes": {"startup": {"failureThreshold": 5}}}, ["shorter than app.startup.deadlineSeconds"]),
    ({"replicaCount": "abc"}, ["replicaCount"]),
    # The documented minimum: one pod cannot roll or be drained without downtime.
    ({"replicaCount": 1}, ["replicaCount"]),
    ({"databse": {"url": "postgres://x"}}, ["databse"]),
    # A check the app does not tune (it would exit 2 on the unknown variable).
    ({"app": {"health": {"redis": {"intervalSeconds": 2, "timeoutSeconds": 1, "failureThreshold": 2, "critical": False}}}}, ["redis"]),
    ({"app": {"health": {"outbox": {"intervalSeconds": 2, "timeoutSeconds": 1, "failureThreshold": 2, "critical": False}}}}, ["outbox"]),  # @rabbitmq
    ({"app": {"health": {"postgres": {"intervalSeconds": 1, "timeoutSeconds": 2}}}}, ["must not exceed intervalSeconds"]),
    # Helm 3 and Helm 4 word schema errors differently.
    ({"database": {"url": "mysql://x"}}, ["database.url", "/database/url"]),
    ({"app": {"server": {"bodyTimeoutSeconds": 0}}}, ["bodyTimeoutSeconds"]),
    # The old pool setting: the app has one connection total now (and would exit 2 on the variable).
    ({"app": {"database": {"poolMaxSize": 12}}}, ["poolMaxSize"]),
    ({"app": {"database": {"maxConnections": 0}}}, ["maxConnections"]),
    ({"app": {"server": {"workers": 0}}}, ["workers"]),
    ({"database": {"reservedConnections": -1}}, ["reservedConnections"]),
    ({"database": {"tls": {"caBundle": {"secretName": "ca", "key": ""}}}}, ["key"]),
])
def test_refusals(refused, values, messages):
    message = refused(INLINE, values)
    assert any(m in message for m in messages), message
