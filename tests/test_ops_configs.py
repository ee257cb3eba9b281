"""The operations configs (cluster/, infra/) are valid and cannot drift from the code.

- Every YAML and JSON file parses; the AWS launcher config passes Ray's own schema and config preparation; the
  KubeRay manifests have the right kinds and hang together (Secret, ConfigMap, volume, ports, images, versions).
- Prometheus: ``promtool check config``, ``promtool check rules`` and the rule unit tests pass — and the unit tests
  fail when a rule is broken.
- Drift: every metric name in the alert rules and the Grafana dashboard is one ``mer.tagging.metrics.JobMetrics`` exports;
  every ``--flag`` given to ``jobs/train.py`` / ``jobs/tag.py`` is in that job's ``--help``; every ``MER_*``
  environment variable the configs set is read somewhere in ``mer/`` or ``jobs/``; the versions of torch and Ray
  the nodes install are the ones pyproject.toml pins.
"""
from __future__ import annotations

import ast
import copy
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "cluster"
INFRA = REPO / "infra"
KUBERAY = CLUSTER / "kuberay"
PROMETHEUS = INFRA / "prometheus"
GRAFANA = INFRA / "grafana"
DASHBOARD = GRAFANA / "mer-dashboard.json"  # the tagging job's metrics (and a row of the catalog)
CATALOG_DASHBOARD = GRAFANA / "mer-catalog-dashboard.json"  # the catalog itself
# What each dashboard queries: PromQL (Prometheus) and/or SQL (the catalog's PostgreSQL).
DASHBOARD_KINDS = {DASHBOARD: {"sql", "promql"}, CATALOG_DASHBOARD: {"sql"}}
JOBS = ("train", "tag")


# --- helpers ----------------------------------------------------------------------------------------------------------


def config_files(*suffixes: str) -> list[Path]:
    return sorted(p for root in (CLUSTER, INFRA) for p in root.rglob("*") if p.is_file() and p.suffix in suffixes)


def load_yaml_documents(path: Path) -> list[Any]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


@cache
def pyproject_pins() -> dict[str, str]:
    """``{"torch": "2.13.0", "ray": "2.60.0", "mer": <version>}`` from pyproject.toml."""
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    pins = {"mer": project["version"]}
    for requirement in project["dependencies"]:
        match = re.fullmatch(r"([A-Za-z0-9_.-]+)(?:\[[^\]]*\])?==([\w.]+)", requirement.replace(" ", ""))
        if match:
            pins[match.group(1).lower()] = match.group(2)
    return pins


def kuberay_documents() -> list[tuple[Path, dict[str, Any]]]:
    """Every manifest under cluster/kuberay, plus the RayJobs embedded as YAML text in ConfigMaps."""
    docs = []
    for path in config_files(".yaml", ".yml"):
        if KUBERAY not in path.parents:
            continue
        for doc in load_yaml_documents(path):
            docs.append((path, doc))
            if doc.get("kind") == "ConfigMap":
                for key, text in (doc.get("data") or {}).items():
                    if key.endswith((".yaml", ".yml")):
                        docs.extend((path, inner) for inner in yaml.safe_load_all(text) if inner is not None)
    return docs


def ray_cluster_specs() -> list[tuple[str, dict[str, Any]]]:
    """``(where, RayCluster spec)`` of the RayCluster, each RayJob and the RayCronJob's job template."""
    specs = []
    for path, doc in kuberay_documents():
        where = f"{path.name}:{doc['kind']}"
        if doc["kind"] == "RayCluster":
            specs.append((where, doc["spec"]))
        elif doc["kind"] == "RayJob":
            specs.append((where, doc["spec"]["rayClusterSpec"]))
        elif doc["kind"] == "RayCronJob":
            specs.append((where, doc["spec"]["jobTemplate"]["rayClusterSpec"]))
    return specs


def pod_templates(spec: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    yield "head", spec["headGroupSpec"]["template"]
    for group in spec.get("workerGroupSpecs", []):
        yield group["groupName"], group["template"]


def job_commands() -> list[tuple[str, str, list[str]]]:
    """``(where, job, argv)`` for every command in cluster/ that runs jobs/train.py or jobs/tag.py."""
    commands = []
    for path, doc in kuberay_documents():
        entrypoints = []
        if doc["kind"] == "RayJob":
            entrypoints.append(doc["spec"]["entrypoint"])
        elif doc["kind"] == "RayCronJob":
            entrypoints.append(doc["spec"]["jobTemplate"]["entrypoint"])
        for entrypoint in entrypoints:
            argv = shlex.split(entrypoint)
            for i, word in enumerate(argv):
                match = re.search(r"(?:^|/)jobs/(\w+)\.py$", word)
                if match:
                    commands.append((f"{path.name}:{doc['kind']}", match.group(1), argv[i + 1 :]))
    return commands


# --- every file parses ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", config_files(".yaml", ".yml", ".json"), ids=lambda p: str(p.relative_to(REPO)))
def test_config_file_parses(path: Path) -> None:
    if path.suffix == ".json":
        assert isinstance(json.loads(path.read_text()), dict)
    else:
        docs = load_yaml_documents(path)
        assert docs and all(isinstance(doc, dict) for doc in docs), f"{path}: expected YAML mappings"


def test_the_configs_are_all_there() -> None:
    names = {str(p.relative_to(REPO)) for p in config_files(".yaml", ".yml", ".json")}
    assert {
        "cluster/aws.yaml", "cluster/kuberay/raycluster.yaml", "cluster/kuberay/rayjob-train.yaml",
        "cluster/kuberay/tag-nightly.yaml", "infra/prometheus/prometheus.yml", "infra/prometheus/rules.yml",
        "infra/prometheus/rules_test.yml", "infra/grafana/mer-dashboard.json", "infra/grafana/mer-catalog-dashboard.json",
        "infra/grafana/provisioning/datasources/mer.yaml", "infra/grafana/provisioning/dashboards/mer.yaml",
    } <= names


# --- AWS cluster launcher ---------------------------------------------------------------------------------------------


def ray_launcher_schema() -> dict[str, Any]:
    import ray.autoscaler

    return json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())


def test_aws_config_passes_rays_schema_and_preparation() -> None:
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = yaml.safe_load((CLUSTER / "aws.yaml").read_text())
    jsonschema.validate(raw, ray_launcher_schema())
    # What `ray up` does before launching anything: merge AWS defaults, then validate the merged config.
    validate_config(prepare_config(copy.deepcopy(raw)))


def test_rays_schema_rejects_a_misspelt_field() -> None:
    # The validation above has teeth: a typo in a node type is an error, not silently ignored.
    raw = yaml.safe_load((CLUSTER / "aws.yaml").read_text())
    raw["available_node_types"]["gpu_worker"]["min_worker"] = 1
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(raw, ray_launcher_schema())


def test_aws_node_types_cover_head_gpu_and_cpu_work() -> None:
    config = yaml.safe_load((CLUSTER / "aws.yaml").read_text())
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["resources"].get("CPU") == 0, "the head should schedule no tasks"
    workers = {name: t for name, t in types.items() if name != config["head_node_type"]}
    gpu = [n for n, t in workers.items() if t["resources"].get("GPU", 0) >= 1]
    cpu = [n for n, t in workers.items() if t["resources"].get("GPU", 0) == 0 and t["resources"].get("CPU", 0) > 0]
    assert gpu and cpu, f"need a GPU and a CPU worker type, got {sorted(workers)}"
    for name, node_type in workers.items():
        assert 0 <= node_type["min_workers"] <= node_type["max_workers"], name
    assert sum(t["max_workers"] for t in workers.values()) <= config["max_workers"]


def test_aws_nodes_install_mer_with_the_right_torch() -> None:
    config = yaml.safe_load((CLUSTER / "aws.yaml").read_text())
    mount = next(remote for remote, local in config["file_mounts"].items() if local in (".", "./"))
    install = f"bash {mount}/cluster/setup-node.sh"
    for name, node_type in config["available_node_types"].items():
        if name == config["head_node_type"]:
            commands = config["setup_commands"] + config["head_setup_commands"]
        elif "worker_setup_commands" in node_type:  # replaces the global lists for this type
            commands = node_type["worker_setup_commands"]
        else:
            commands = config["setup_commands"] + config["worker_setup_commands"]
        variant = "gpu" if node_type["resources"].get("GPU", 0) else "cpu"
        assert any(c.startswith(f"{install} {variant}") for c in commands), f"{name}: {commands}"
        image = node_type.get("docker", {}).get("worker_image") or config["docker"]["image"]
        assert image.endswith(f"-{variant}"), f"{name} runs {image}"


def test_setup_script_is_valid_bash() -> None:
    result = subprocess.run(["bash", "-n", str(CLUSTER / "setup-node.sh")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_nodes_install_the_pinned_torch_and_ray() -> None:
    pins = pyproject_pins()
    script = (CLUSTER / "setup-node.sh").read_text()
    assert re.search(rf"^TORCH_VERSION={re.escape(pins['torch'])}$", script, re.M), "setup-node.sh torch pin"
    images = set(re.findall(r"rayproject/ray:([\w.]+)-py(\d+)", (CLUSTER / "aws.yaml").read_text()))
    images |= set(re.findall(r"rayproject/ray:([\w.]+)-py(\d+)", (CLUSTER / "docker" / "Dockerfile").read_text()))
    assert images == {(pins["ray"], "311")}, f"Ray images {images} vs ray=={pins['ray']} on Python 3.11"


# --- KubeRay ------------------------------------------------------------------------------------------------------------

KNOWN_KINDS = {
    ("ray.io/v1", "RayCluster"), ("ray.io/v1", "RayJob"), ("ray.io/v1", "RayCronJob"),
    ("batch/v1", "CronJob"), ("v1", "ConfigMap"), ("v1", "Secret"), ("v1", "PersistentVolumeClaim"),
    ("v1", "ServiceAccount"), ("rbac.authorization.k8s.io/v1", "Role"), ("rbac.authorization.k8s.io/v1", "RoleBinding"),
    ("monitoring.coreos.com/v1", "PodMonitor"),
}
DNS_1123 = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")


def test_kuberay_manifests_have_known_kinds_and_valid_names() -> None:
    docs = kuberay_documents()
    kinds = {(doc.get("apiVersion"), doc.get("kind")) for _, doc in docs}
    assert kinds <= KNOWN_KINDS, f"unexpected kinds {kinds - KNOWN_KINDS}"
    assert {("ray.io/v1", "RayCluster"), ("ray.io/v1", "RayJob"), ("batch/v1", "CronJob")} <= kinds
    for path, doc in docs:
        meta = doc["metadata"]
        name = meta.get("name") or meta.get("generateName", "").rstrip("-")
        assert DNS_1123.fullmatch(name) and len(name) <= 63, f"{path.name}: bad name {name!r}"


def test_ray_clusters_run_the_pinned_ray_and_the_mer_images() -> None:
    pins = pyproject_pins()
    specs = ray_cluster_specs()
    assert len(specs) >= 3  # the RayCluster, the training RayJob, the nightly RayJob
    for where, spec in specs:
        assert spec["rayVersion"] == pins["ray"], where
        for group, template in pod_templates(spec):
            for container in template["spec"]["containers"]:
                limits = container.get("resources", {}).get("limits", {})
                variant = "gpu" if "nvidia.com/gpu" in limits else "cpu"
                assert container["image"].endswith(f"/mer:{pins['mer']}-{variant}"), f"{where} {group}"


def test_ray_pods_get_settings_volume_and_sane_scaling() -> None:
    docs = kuberay_documents()
    secrets = {d["metadata"]["name"] for _, d in docs if d["kind"] == "Secret"}
    config_maps = {d["metadata"]["name"] for _, d in docs if d["kind"] == "ConfigMap"}
    claims = {d["metadata"]["name"] for _, d in docs if d["kind"] == "PersistentVolumeClaim"}
    for where, spec in ray_cluster_specs():
        groups = [g["groupName"] for g in spec.get("workerGroupSpecs", [])]
        assert len(groups) == len(set(groups)) and {"cpu", "gpu"} <= set(groups), where
        for group in spec["workerGroupSpecs"]:
            assert 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"], f"{where} {group['groupName']}"
        for name, template in pod_templates(spec):
            pod = template["spec"]
            volumes = {v["name"]: v for v in pod.get("volumes", [])}
            for container in pod["containers"]:
                sources = container.get("envFrom", [])
                assert {s["secretRef"]["name"] for s in sources if "secretRef" in s} <= secrets
                assert {s["secretRef"]["name"] for s in sources if "secretRef" in s}, f"{where} {name}: no Secret"
                assert {s["configMapRef"]["name"] for s in sources if "configMapRef" in s} <= config_maps
                for mount in container.get("volumeMounts", []):
                    claim = volumes[mount["name"]]["persistentVolumeClaim"]["claimName"]
                    assert claim in claims, f"{where} {name}: unknown claim {claim}"
                for port in container.get("ports", []):
                    assert len(port["name"]) <= 15, port


def test_metrics_port_agrees_everywhere() -> None:
    docs = kuberay_documents()
    settings = next(d for _, d in docs if d["kind"] == "ConfigMap" and "MER_METRICS_PORT" in d.get("data", {}))
    port = int(settings["data"]["MER_METRICS_PORT"])
    monitor_ports = {e["port"] for _, d in docs if d["kind"] == "PodMonitor" for e in d["spec"]["podMetricsEndpoints"]}
    for where, spec in ray_cluster_specs():
        head = spec["headGroupSpec"]["template"]
        annotations = head.get("metadata", {}).get("annotations", {})
        if "prometheus.io/port" in annotations:
            assert int(annotations["prometheus.io/port"]) == port, where
        named = {p["name"]: p["containerPort"] for c in head["spec"]["containers"] for p in c.get("ports", [])}
        if "mer-metrics" in named:
            assert named["mer-metrics"] == port, where
        assert "mer-metrics" in monitor_ports
    prometheus = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    live = next(job for job in prometheus["scrape_configs"] if job["job_name"] == "mer_tag_live")
    assert all(t.endswith(f":{port}") for c in live["static_configs"] for t in c["targets"])


def test_training_rayjob_has_one_gpu_pod_per_train_worker() -> None:
    rayjob = next(d for p, d in kuberay_documents() if d["kind"] == "RayJob" and "jobs/train.py" in d["spec"]["entrypoint"])
    argv = shlex.split(rayjob["spec"]["entrypoint"])
    workers = int(argv[argv.index("--workers") + 1])
    gpu = next(g for g in rayjob["spec"]["rayClusterSpec"]["workerGroupSpecs"] if g["groupName"] == "gpu")
    assert gpu["minReplicas"] == gpu["replicas"] == workers
    assert "--gpu" in argv


def test_nightly_schedule_submits_the_same_rayjob_both_ways() -> None:
    docs = [d for _, d in kuberay_documents()]
    cron = next(d for d in docs if d["kind"] == "CronJob")
    assert len(cron["spec"]["schedule"].split()) == 5
    pod = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    # The submitter may create RayJobs: its service account is bound to a Role that allows it.
    account = pod["serviceAccountName"]
    assert any(d["kind"] == "ServiceAccount" and d["metadata"]["name"] == account for d in docs)
    binding = next(d for d in docs if d["kind"] == "RoleBinding" and any(s["name"] == account for s in d["subjects"]))
    role = next(d for d in docs if d["kind"] == "Role" and d["metadata"]["name"] == binding["roleRef"]["name"])
    assert any("rayjobs" in r["resources"] and "create" in r["verbs"] and "ray.io" in r["apiGroups"] for r in role["rules"])
    # It creates the RayJob from the ConfigMap it mounts, at the path it passes to kubectl.
    container = pod["containers"][0]
    path = container["args"][container["args"].index("-f") + 1]
    mount = next(m for m in container["volumeMounts"] if path.startswith(m["mountPath"] + "/"))
    config_map_name = next(v for v in pod["volumes"] if v["name"] == mount["name"])["configMap"]["name"]
    config_map = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == config_map_name)
    rayjob = yaml.safe_load(config_map["data"][path[len(mount["mountPath"]) + 1 :]])
    assert rayjob["kind"] == "RayJob" and "generateName" in rayjob["metadata"]
    assert re.search(r"jobs/tag\.py", rayjob["spec"]["entrypoint"])
    # KubeRay's own scheduling (raycronjob-tag.yaml) runs exactly the same RayJob.
    raycron = next(d for d in docs if d["kind"] == "RayCronJob")
    assert raycron["spec"]["jobTemplate"] == rayjob["spec"]
    assert raycron["spec"]["schedule"] == cron["spec"]["schedule"]


# --- Prometheus ---------------------------------------------------------------------------------------------------------


def promtool(*args: str, cwd: Path = PROMETHEUS) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("promtool")
    if exe is None:
        pytest.fail("promtool not found: install Debian's prometheus package (infra/dev-setup.sh does)")
    return subprocess.run([exe, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_promtool_check_config() -> None:
    result = promtool("check", "config", "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_check_rules() -> None:
    result = promtool("check", "rules", "rules.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_rule_unit_tests() -> None:
    result = promtool("test", "rules", "rules_test.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_rule_unit_tests_catch_a_broken_threshold(tmp_path: Path) -> None:
    # The unit tests pin the rules' behaviour: a failure-ratio threshold of 50 % instead of 5 % makes them fail.
    rules = (PROMETHEUS / "rules.yml").read_text()
    assert rules.count(") > 0.05") == 1
    (tmp_path / "rules.yml").write_text(rules.replace(") > 0.05", ") > 0.5"))
    shutil.copy(PROMETHEUS / "rules_test.yml", tmp_path / "rules_test.yml")
    result = promtool("test", "rules", "rules_test.yml", cwd=tmp_path)
    assert result.returncode != 0 and "MerItemFailureRatioHigh" in result.stdout + result.stderr


def test_every_alert_the_issue_asks_for_exists() -> None:
    rules = [r for g in yaml.safe_load((PROMETHEUS / "rules.yml").read_text())["groups"] for r in g["rules"]]
    alerts = {r["alert"]: r["expr"] for r in rules if "alert" in r}
    assert "mer_run_failed" in alerts["MerNightlyRunFailed"]
    assert "26 * 3600" in alerts["MerNightlyRunMissing"]
    assert "mer_run_last_success_timestamp_seconds" in alerts["MerNightlyRunMissing"]
    assert "mer_items_failed_total" in alerts["MerItemFailureRatioHigh"]
    records = {r["record"]: r["expr"] for r in rules if "record" in r}
    collapse = alerts["MerThroughputCollapsed"]
    assert "mer_items_per_second" in collapse or any(name in collapse and "mer_items_per_second" in expr
                                                     for name, expr in records.items())


# --- drift: metric names ------------------------------------------------------------------------------------------------

METRIC_TOKEN = re.compile(r"(?<![\w:])mer_[a-z0-9_]+")
RECORDED_TOKEN = re.compile(r"(?<![\w:])mer:[a-zA-Z0-9_:]+")


@cache
def exported_series_names() -> frozenset[str]:
    """Every series name a tagging job exports: the samples of a finished, successful JobMetrics registry."""
    from mer.tagging.metrics import JobMetrics

    metrics = JobMetrics()
    metrics.finish(success=True, now=0.0)  # the last-success gauge is registered on success only
    return frozenset(s.name for family in metrics.registry.collect() for s in family.samples)


def unknown_metrics(expr: str) -> set[str]:
    return set(METRIC_TOKEN.findall(expr)) - exported_series_names()


def promql_expressions() -> list[tuple[str, str]]:
    """``(where, PromQL)`` of every rule and every Prometheus query of the dashboard."""
    exprs = []
    for group in yaml.safe_load((PROMETHEUS / "rules.yml").read_text())["groups"]:
        for rule in group["rules"]:
            exprs.append((f"rules.yml:{rule.get('alert') or rule.get('record')}", rule["expr"]))
    dashboard = json.loads(DASHBOARD.read_text())
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            if "expr" in target:
                exprs.append((f"dashboard:{panel['title']}", target["expr"]))
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            exprs.append((f"dashboard:${variable['name']}", variable["definition"]))
    return exprs


def test_the_metric_checker_catches_a_misspelt_name() -> None:
    assert unknown_metrics("sum(rate(mer_items_taged_total[5m])) / mer_items_listed_total") == {"mer_items_taged_total"}
    assert unknown_metrics("histogram_quantile(0.9, rate(mer_stage_seconds_bucket[5m]))") == set()


def test_every_metric_in_rules_and_dashboard_is_exported_by_mer() -> None:
    exprs = promql_expressions()
    used = {name for _, expr in exprs for name in METRIC_TOKEN.findall(expr)}
    assert len(used) >= 8, f"suspiciously few metric names found: {used}"
    unknown = {where: sorted(unknown_metrics(expr)) for where, expr in exprs if unknown_metrics(expr)}
    assert not unknown, f"metric names not exported by mer.tagging.metrics.JobMetrics: {unknown}"


def test_recorded_series_are_defined() -> None:
    groups = yaml.safe_load((PROMETHEUS / "rules.yml").read_text())["groups"]
    recorded = {r["record"] for g in groups for r in g["rules"] if "record" in r}
    used = {name for _, expr in promql_expressions() for name in RECORDED_TOKEN.findall(expr)}
    assert used <= recorded, f"recording rules missing for {used - recorded}"


def test_dashboard_and_rule_tests_use_the_job_name_mer_pushes_under() -> None:
    import inspect

    from mer.tagging.metrics import JobMetrics

    pushed = inspect.signature(JobMetrics.push).parameters["job"].default
    job = next(v for v in json.loads(DASHBOARD.read_text())["templating"]["list"] if v["name"] == "job")
    assert job["current"]["value"] == pushed
    assert f'job="{pushed}"' in (PROMETHEUS / "rules_test.yml").read_text()


# --- the dashboard counts each run once ----------------------------------------------------------------------------------
# A run's metrics reach Prometheus twice: pushed to the Pushgateway when it ends (job="mer_tag", no instance label:
# honor_labels keeps the pushed labels) and scraped live from its own /metrics while it runs (scrape job mer_tag_live,
# or the PodMonitor's, with an instance label). A query that adds up both counts the run twice. So every dashboard
# query reads exactly one of them, named by its matchers:
SOURCES = {
    "pushgateway": {("job", "=", "$job"), ("instance", "=", "")},
    "live": {("job", "=~", "$live_job"), ("instance", "!=", "")},
}
SELECTOR = re.compile(r"(?<![\w:])(mer_[a-z0-9_]+|mer:[a-zA-Z0-9_:]+)\s*(\{[^}]*\})?")
MATCHER = re.compile(r'([a-zA-Z_]\w*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"')


def series_sources(expr: str) -> list[str]:
    """For each mer series an expression selects, the source its matchers pin it to ("?" when they pin none)."""
    found = []
    for _, braces in SELECTOR.findall(expr):
        matchers = set(MATCHER.findall(braces or ""))
        found.append(next((name for name, required in SOURCES.items() if required <= matchers), "?"))
    return found


def test_the_source_check_catches_a_query_over_both_sources() -> None:
    pushed = 'sum(mer_items_listed_total{job="$job", instance=""})'
    live = 'sum(rate(mer_items_tagged_total{instance!="", job=~"$live_job"}[5m]))'
    assert series_sources(pushed) == ["pushgateway"] and series_sources(live) == ["live"]
    assert series_sources('sum(mer_items_listed_total{job=~"$job"})') == ["?"]  # an "All" job adds both
    assert series_sources("sum(mer_items_listed_total)") == ["?"]
    assert set(series_sources(f"{pushed} + {live.replace('rate', 'max_over_time')}")) == {"pushgateway", "live"}


def test_no_dashboard_query_counts_a_run_twice() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    mixed = {}
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            if "expr" in target:
                sources = set(series_sources(target["expr"]))
                if len(sources) != 1 or "?" in sources:
                    mixed[f"{panel['title']} {target['refId']}"] = sorted(sources)
    assert not mixed, f"dashboard queries not pinned to exactly one source (Pushgateway or live): {mixed}"
    # ... and the variables cannot make one source's selector take in the other's series.
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    job, live = variables["job"], variables["live_job"]
    assert not job.get("multi") and not job.get("includeAll"), "one pushed job at a time"
    assert 'instance=""' in job["definition"] and 'instance!=""' in live["definition"]
    assert live.get("allValue") in (None, ""), "'All' live jobs must stay the list of live jobs, not '.*'"


@pytest.mark.parametrize("path", sorted(DASHBOARD_KINDS), ids=lambda p: p.name)
def test_dashboard_panels_use_its_datasource_variables(path: Path) -> None:
    dashboard = json.loads(path.read_text())
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    kinds = set()
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        for target in panel.get("targets", []):
            uid = target["datasource"]["uid"]
            assert uid.startswith("${") and variables[uid[2:-1]]["type"] == "datasource", panel["title"]
            assert variables[uid[2:-1]]["query"] == target["datasource"]["type"], panel["title"]
            kinds.add("sql" if "rawSql" in target else "promql")
            if "rawSql" in target:  # Grafana runs it as written: code mode, one result frame
                assert target["rawQuery"] and target["editorMode"] == "code", panel["title"]
                assert target["format"] in ("table", "time_series"), panel["title"]
                if target["format"] == "time_series":
                    assert re.search(r"\bAS time\b", target["rawSql"]), f"{panel['title']}: no time column"
    assert kinds == DASHBOARD_KINDS[path]


def test_the_dashboards_are_all_provisioned_with_the_data_sources_they_need() -> None:
    provisioning = GRAFANA / "provisioning"
    [provider] = yaml.safe_load((provisioning / "dashboards" / "mer.yaml").read_text())["providers"]
    assert provider["type"] == "file" and provider["options"]["path"]
    # The provider loads every *.json under the folder infra/grafana is mounted at (the comments say where).
    mount = provider["options"]["path"]
    assert f"infra/grafana:{mount}" in (provisioning / "datasources" / "mer.yaml").read_text()
    dashboards = sorted(GRAFANA.rglob("*.json"))
    assert set(dashboards) == set(DASHBOARD_KINDS)
    uids = [json.loads(p.read_text())["uid"] for p in dashboards]
    assert len(uids) == len(set(uids))
    sources = yaml.safe_load((provisioning / "datasources" / "mer.yaml").read_text())["datasources"]
    types = {s["type"]: s for s in sources}
    needed = {v["query"] for p in dashboards for v in json.loads(p.read_text())["templating"]["list"]
              if v["type"] == "datasource"}
    assert needed <= set(types), f"dashboards need data sources of types {needed}, provisioned: {sorted(types)}"
    catalog = types["grafana-postgresql-datasource"]
    # Read-only: a login of the analyst role, never the owner; the password comes from Grafana's environment.
    assert catalog["user"] not in ("postgres", "mer_writer", "mer_analyst")
    assert re.fullmatch(r"\$\{[A-Z_]+\}", catalog["secureJsonData"]["password"])
    roles = (INFRA / "catalog" / "roles.sql").read_text()
    assert "mer_analyst" in roles and f"CREATE ROLE {catalog['user']} LOGIN" in (
        provisioning / "datasources" / "mer.yaml").read_text()


# --- drift: job flags ---------------------------------------------------------------------------------------------------


@cache
def job_flags(job: str) -> frozenset[str]:
    """The ``--flags`` that ``python jobs/<job>.py --help`` lists."""
    path = REPO / "jobs" / f"{job}.py"
    if not path.exists():
        pytest.fail(f"cluster configs run jobs/{job}.py, which does not exist")
    result = subprocess.run(
        [sys.executable, str(path), "--help"], cwd=REPO, capture_output=True, text=True, timeout=120,
        env={**os.environ, "RAY_ADDRESS": ""},
    )
    assert result.returncode == 0, f"jobs/{job}.py --help failed:\n{result.stderr[-2000:]}"
    return frozenset(re.findall(r"(?<![\w-])--[a-z0-9][a-z0-9-]*", result.stdout))


def test_cluster_configs_run_both_jobs() -> None:
    assert {job for _, job, _ in job_commands()} == set(JOBS)


@pytest.mark.parametrize("job", JOBS)
def test_every_flag_given_to_a_job_exists(job: str) -> None:
    given = {
        (where, word.split("=", 1)[0])
        for where, name, argv in job_commands() if name == job
        for word in argv if word.startswith("--")
    }
    unknown = sorted((where, flag) for where, flag in given if flag not in job_flags(job))
    assert not unknown, f"flags not in jobs/{job}.py --help: {unknown}"


# --- drift: environment variables ---------------------------------------------------------------------------------------


@cache
def string_constants_in_code(*folders: str) -> frozenset[str]:
    """Every string literal in mer/ and jobs/, plus the given folders (an env var is read where its name is a literal:
    os.environ["X"], os.getenv("X"), X_ENV = "X")."""
    found: set[str] = set()
    for root in (REPO / "mer", REPO / "jobs", *(REPO / folder for folder in folders)):
        for path in root.rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
                if isinstance(node, ast.Constant) and isinstance(node.value, str):
                    found.add(node.value)
    return frozenset(found)


def test_every_mer_env_var_in_the_configs_is_read_by_the_code() -> None:
    used: dict[str, set[str]] = {}
    for path in config_files(".yaml", ".yml", ".json", ".sh", ".sql", ""):  # "": Dockerfile
        for name in re.findall(r"\bMER_[A-Z0-9_]+\b", path.read_text()):
            used.setdefault(name, set()).add(str(path.relative_to(REPO)))
    assert {"MER_STORE", "MER_CATALOG_URL", "MER_PUSHGATEWAY"} <= set(used), sorted(used)
    unread = {name: sorted(paths) for name, paths in used.items() if name not in string_constants_in_code()}
    assert not unread, f"MER_* variables set in configs but read nowhere in mer/ or jobs/: {unread}"


# --- drift: the README ----------------------------------------------------------------------------------------------------


def readme_job_commands() -> list[tuple[str, list[str]]]:
    """``(job, argv after the script)`` of every ``jobs/<job>.py`` command in the README's shell blocks
    (continuation lines joined)."""
    text = (REPO / "README.md").read_text()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #", 1)[0] if not line.lstrip().startswith("#") else ""
            for part in re.split(r"&&|;", line):
                argv = shlex.split(part)
                for i, word in enumerate(argv):
                    match = re.search(r"(?:^|/)jobs/(\w+)\.py$", word)
                    if match:
                        commands.append((match.group(1), argv[i + 1:]))
    return commands


def test_every_job_command_in_the_readme_uses_real_flags() -> None:
    commands = readme_job_commands()
    assert {job for job, _ in commands} >= {"train", "tag"}
    unknown = sorted({(job, word.split("=", 1)[0]) for job, argv in commands for word in argv
                      if word.startswith("--") and word.split("=", 1)[0] not in job_flags(job)})
    assert not unknown, f"README passes flags the jobs do not have: {unknown}"


def test_every_mer_env_var_in_the_readme_is_read_by_the_code() -> None:
    # The README also documents the test suite's own settings (MER_TEST_*), read by tests/.
    names = set(re.findall(r"\bMER_[A-Z0-9_]+\b", (REPO / "README.md").read_text()))
    assert {"MER_STORE", "MER_CATALOG_URL", "MER_STORAGE"} <= names
    assert not sorted(name for name in names - string_constants_in_code()
                      if not (name.startswith("MER_TEST_") and name in string_constants_in_code("tests")))


def test_the_readme_shows_the_analyst_queries_as_the_code_has_them() -> None:
    from mer.catalog import ANALYST_QUERIES

    readme = (REPO / "README.md").read_text()
    for name, sql in ANALYST_QUERIES.items():
        assert sql.strip() in readme, f"README's {name} query differs from mer.catalog.ANALYST_QUERIES"


# --- KubeRay fields ---------------------------------------------------------------------------------------------------

# JSON field names of KubeRay's ray.io/v1 spec types (KubeRay 1.7 API reference): a misspelt or invented key in
# our manifests would be silently dropped by the API server (or refused), so none may stand outside these.
KUBERAY_FIELDS = {
    "RayClusterSpec": {"authOptions", "autoscalerOptions", "enableInTreeAutoscaling", "gcsFaultToleranceOptions",
                       "headGroupSpec", "headServiceAnnotations", "historyServerOptions", "managedBy",
                       "networkPolicy", "rayVersion", "suspend", "tlsOptions", "upgradeStrategy", "workerGroupSpecs"},
    "HeadGroupSpec": {"enableIngress", "headService", "ingressOptions", "labels", "rayStartParams", "resources",
                      "serviceType", "template"},
    "WorkerGroupSpec": {"groupName", "idleTimeoutSeconds", "labels", "maxReplicas", "minReplicas", "numOfHosts",
                        "priority", "rayStartParams", "replicas", "resources", "scaleStrategy", "suspend", "template"},
    "AutoscalerOptions": {"args", "command", "env", "envFrom", "idleTimeoutSeconds", "image", "imagePullPolicy",
                          "resources", "securityContext", "upscalingMode", "version", "volumeMounts"},
    "RayJobSpec": {"activeDeadlineSeconds", "backoffLimit", "clusterSelector", "deletionStrategy", "entrypoint",
                   "entrypointNumCpus", "entrypointNumGpus", "entrypointResources", "jobId", "managedBy", "metadata",
                   "preRunningDeadlineSeconds", "rayClusterSpec", "runtimeEnvYAML", "shutdownAfterJobFinishes",
                   "submissionMode", "submitterConfig", "submitterPodTemplate", "suspend", "ttlSecondsAfterFinished"},
    "RayCronJobSpec": {"jobTemplate", "schedule", "suspend", "timeZone"},
    "DeletionStrategy": {"deletionRules", "onFailure", "onSuccess"},
    "DeletionRule": {"condition", "policy"},
    "DeletionCondition": {"jobDeploymentStatus", "jobStatus", "ttlSeconds"},
}
# Keys whose value is another of those spec types, and keys whose value is a list of one.
KUBERAY_NESTED_SPECS = {"rayClusterSpec": "RayClusterSpec", "jobTemplate": "RayJobSpec",
                        "headGroupSpec": "HeadGroupSpec", "autoscalerOptions": "AutoscalerOptions",
                        "deletionStrategy": "DeletionStrategy", "condition": "DeletionCondition"}
KUBERAY_NESTED_LISTS = {"workerGroupSpecs": "WorkerGroupSpec", "deletionRules": "DeletionRule"}


def unknown_kuberay_fields(kind: str, spec: dict[str, Any], where: str) -> list[str]:
    """Keys of a ray.io/v1 spec (and of its nested cluster, group, autoscaler and deletion specs) that KubeRay does
    not have."""
    def check(struct: str, value: dict[str, Any], path: str) -> list[str]:
        bad = [f"{path}.{key}" for key in value if key not in KUBERAY_FIELDS[struct]]
        for key, child in value.items():
            if key in KUBERAY_NESTED_SPECS and isinstance(child, dict):
                bad += check(KUBERAY_NESTED_SPECS[key], child, f"{path}.{key}")
            elif key in KUBERAY_NESTED_LISTS:
                for i, item in enumerate(child):
                    bad += check(KUBERAY_NESTED_LISTS[key], item, f"{path}.{key}[{i}]")
        return bad

    return check(f"{kind}Spec", spec, where)


def test_kuberay_manifests_use_only_fields_kuberay_has() -> None:
    checked, unknown = 0, []
    for path, doc in kuberay_documents():
        if doc.get("apiVersion") == "ray.io/v1":
            checked += 1
            unknown += unknown_kuberay_fields(doc["kind"], doc["spec"], f"{path.name}:{doc['kind']}")
    assert checked >= 3
    assert not unknown, f"fields KubeRay does not know: {unknown}"


def test_the_kuberay_field_check_catches_a_misspelt_key() -> None:
    spec = {"entrypoint": "python jobs/tag.py", "shutdownAfterJobFinish": True,
            "rayClusterSpec": {"rayVersion": "2.60.0", "workerGroupSpecs": [{"groupName": "cpu", "maxReplica": 4}]}}
    assert unknown_kuberay_fields("RayJob", spec, "x") == [
        "x.shutdownAfterJobFinish", "x.rayClusterSpec.workerGroupSpecs[0].maxReplica"]


def test_the_kuberay_field_check_walks_deletion_rules() -> None:
    spec = {"deletionStrategy": {"deletionRules": [{"policy": "DeleteSelf", "condition": {"jobstatus": "FAILED"}}]}}
    assert unknown_kuberay_fields("RayJob", spec, "x") == ["x.deletionStrategy.deletionRules[0].condition.jobstatus"]


# --- KubeRay: finished RayJobs are cleaned up --------------------------------------------------------------------------

# What KubeRay 1.7's RayJob validation (ray-operator/controllers/ray/utils/validation.go,
# validateDeletionConfiguration) and CRD enums refuse in spec.ttlSecondsAfterFinished / spec.deletionStrategy.
DELETION_POLICIES = ("DeleteWorkers", "DeleteCluster", "DeleteSelf", "DeleteNone")  # least to most impact
DELETION_JOB_STATUSES = {"SUCCEEDED", "FAILED"}
DELETION_DEPLOYMENT_STATUSES = {"Failed"}


def kuberay_deletion_errors(spec: dict[str, Any]) -> list[str]:
    """Why KubeRay would refuse this RayJob spec's clean-up settings ([] when it would take them)."""
    errors = []
    shutdown = spec.get("shutdownAfterJobFinishes", False)
    if not shutdown and spec.get("ttlSecondsAfterFinished", 0) > 0:
        errors.append("ttlSecondsAfterFinished without shutdownAfterJobFinishes")
    strategy = spec.get("deletionStrategy")
    if strategy is None:
        return errors
    rules = strategy.get("deletionRules") or []
    legacy = "onSuccess" in strategy or "onFailure" in strategy
    if rules and shutdown:
        errors.append("shutdownAfterJobFinishes and deletionRules are mutually exclusive")
    if rules and legacy:
        errors.append("onSuccess/onFailure and deletionRules together")
    if not rules and not ("onSuccess" in strategy and "onFailure" in strategy):
        errors.append("a deletionStrategy needs deletionRules, or both onSuccess and onFailure")
    ttls: dict[tuple[str, str], dict[str, int]] = {}
    for i, rule in enumerate(rules):
        condition = rule.get("condition", {})
        if rule.get("policy") not in DELETION_POLICIES:
            errors.append(f"deletionRules[{i}]: policy {rule.get('policy')!r}")
        if ("jobStatus" in condition) == ("jobDeploymentStatus" in condition):
            errors.append(f"deletionRules[{i}]: exactly one of jobStatus and jobDeploymentStatus")
            continue
        if condition.get("jobStatus", "SUCCEEDED") not in DELETION_JOB_STATUSES:
            errors.append(f"deletionRules[{i}]: jobStatus {condition['jobStatus']!r}")
        if condition.get("jobDeploymentStatus", "Failed") not in DELETION_DEPLOYMENT_STATUSES:
            errors.append(f"deletionRules[{i}]: jobDeploymentStatus {condition['jobDeploymentStatus']!r}")
        ttl = condition.get("ttlSeconds", 0)
        if not isinstance(ttl, int) or ttl < 0:
            errors.append(f"deletionRules[{i}]: ttlSeconds {ttl!r}")
            continue
        trigger = ("jobStatus", condition["jobStatus"]) if "jobStatus" in condition else (
            "jobDeploymentStatus", condition["jobDeploymentStatus"])
        if rule.get("policy") in ttls.setdefault(trigger, {}):
            errors.append(f"deletionRules[{i}]: a second {rule.get('policy')} rule for {trigger}")
        ttls[trigger][rule.get("policy")] = ttl
    for trigger, by_policy in ttls.items():  # workers, then cluster, then the RayJob: TTLs may not decrease
        ordered = [by_policy[p] for p in DELETION_POLICIES[:3] if p in by_policy]
        if ordered != sorted(ordered):
            errors.append(f"{trigger}: TTLs must grow DeleteWorkers <= DeleteCluster <= DeleteSelf, got {by_policy}")
    return errors


def nightly_rayjob_specs() -> list[tuple[str, dict[str, Any]]]:
    """The RayJob spec the nightly CronJob creates (from its ConfigMap) and the RayCronJob's job template."""
    docs = kuberay_documents()
    specs = [(f"{path.name}:RayJob", doc["spec"]) for path, doc in docs
             if doc["kind"] == "RayJob" and "jobs/tag.py" in doc["spec"]["entrypoint"]]
    specs += [(f"{path.name}:RayCronJob", doc["spec"]["jobTemplate"]) for path, doc in docs
              if doc["kind"] == "RayCronJob"]
    return specs


def test_every_rayjob_has_clean_up_settings_kuberay_accepts() -> None:
    specs = [(f"{p.name}:{d['kind']}", d["spec"]) for p, d in kuberay_documents() if d["kind"] == "RayJob"]
    specs += [(w, s) for w, s in nightly_rayjob_specs() if w.endswith("RayCronJob")]
    assert len(specs) >= 3  # the training RayJob, the nightly RayJob, the RayCronJob's template
    refused = {where: kuberay_deletion_errors(spec) for where, spec in specs if kuberay_deletion_errors(spec)}
    assert not refused, refused


def test_the_nightly_rayjobs_delete_themselves_after_they_finish() -> None:
    # However a night's run ends — the job succeeded, the job failed, or it never ran (deployment Failed:
    # submission failed, deadline passed) — a rule deletes the RayJob itself (and with it its cluster and submitter),
    # within a week: one RayJob a night must not pile up for ever.
    specs = nightly_rayjob_specs()
    assert {where.rsplit(":", 1)[1] for where, _ in specs} == {"RayJob", "RayCronJob"}
    endings = [("jobStatus", "SUCCEEDED"), ("jobStatus", "FAILED"), ("jobDeploymentStatus", "Failed")]
    for where, spec in specs:
        rules = spec.get("deletionStrategy", {}).get("deletionRules", [])
        for field, status in endings:
            self_ttls = [r["condition"].get("ttlSeconds", 0) for r in rules
                         if r["policy"] == "DeleteSelf" and r["condition"].get(field) == status]
            assert self_ttls and self_ttls[0] <= 7 * 24 * 3600, f"{where}: no DeleteSelf rule when {field}={status}"
            cluster_ttls = [r["condition"].get("ttlSeconds", 0) for r in rules
                            if r["policy"] == "DeleteCluster" and r["condition"].get(field) == status]
            # The GPUs go back soon after the run, not when the RayJob goes.
            assert cluster_ttls and cluster_ttls[0] <= 3600, f"{where}: the cluster outlives the run when {status}"


def test_the_deletion_check_refuses_what_kuberay_refuses() -> None:
    rules = [{"policy": "DeleteCluster", "condition": {"jobStatus": "SUCCEEDED", "ttlSeconds": 600}},
             {"policy": "DeleteSelf", "condition": {"jobStatus": "SUCCEEDED", "ttlSeconds": 60}}]
    assert kuberay_deletion_errors({"deletionStrategy": {"deletionRules": rules[:1]}}) == []
    assert any("TTLs must grow" in e for e in kuberay_deletion_errors({"deletionStrategy": {"deletionRules": rules}}))
    assert kuberay_deletion_errors({"shutdownAfterJobFinishes": True, "deletionStrategy": {"deletionRules": rules[:1]}})
    assert kuberay_deletion_errors({"ttlSecondsAfterFinished": 600})
    both = {"policy": "DeleteSelf", "condition": {"jobStatus": "FAILED", "jobDeploymentStatus": "Failed"}}
    assert kuberay_deletion_errors({"deletionStrategy": {"deletionRules": [both]}})
    stopped = {"policy": "DeleteSelf", "condition": {"jobStatus": "STOPPED"}}
    assert kuberay_deletion_errors({"deletionStrategy": {"deletionRules": [stopped]}})
