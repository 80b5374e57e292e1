"""Kubernetes without a cluster: deploy/helm/values.yaml (Dagster's official Helm chart) and the
image, checked as far as a machine without Kubernetes or helm can.

Validated here:
- every key the values set is one the chart defines (``CHART_KEYS``, copied from the chart's values.yaml
  and values.schema.json at ``CHART_COMMIT``; the schema itself is not vendored, nor checked at test time);
- the dagster.yaml the chart renders from them passes dagster's own instance validation, and its run
  launcher, run queue and storages pass their classes' config schemas; it keeps deploy/dagster.yaml's
  concurrency, run queue, storage scheme and telemetry. The rendering is a translation of the chart's
  instance templates for the blocks these values set (``chart_instance_yaml``), not the templates;
- a step pod as dagster-k8s builds it from the code location's container context (what the chart passes
  on, from these values) and the execution config docs/platform.md recommends: the config through
  dagster-k8s's schemas, the Kubernetes Job through dagster-k8s's own code and the Kubernetes models;
- the image, its module and the versions agree with pyproject.toml and the installed packages;
- ``EMBED_ASSETS_EXECUTOR=k8s`` loads the Definitions with dagster-k8s's executor.
Not validated: the chart's templates themselves, and anything on a cluster (nothing was deployed)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import dagster
import dagster_k8s
import yaml
from dagster._config import process_config, validate_config
from dagster._core.instance.config import dagster_instance_config
from dagster._serdes.config_class import ConfigurableClassData, class_from_code_pointer
from dagster_k8s import k8s_job_executor
from dagster_k8s.container_context import K8sContainerContext
from dagster_k8s.job import DagsterK8sJobConfig, UserDefinedDagsterK8sConfig, construct_dagster_k8s_job
from kubernetes.utils import parse_quantity

from embed_assets_tests.process_groups import ENTRYPOINT

REPO = Path(__file__).resolve().parents[1]
VALUES = REPO / "deploy" / "helm" / "values.yaml"
DOCKERFILE = REPO / "Dockerfile"

DEPLOY_YAML = REPO / "deploy" / "dagster.yaml"
PLATFORM_DOC = REPO / "docs" / "platform.md"

# dagster-io/dagster, helm/dagster: values.yaml, values.schema.json and the instance templates were read here.
CHART_COMMIT = "437f92d953812a3efdf5a464ba196eb3fcd9a777"
# The chart's keys these values may set ("[]": an item of a list): those set now, and a few more that the
# translations below render. Kubernetes objects and argument lists are leaves: dagster-k8s checks them.
CHART_KEYS = {
    "global.postgresqlSecretName",
    "generatePostgresqlPasswordSecret",
    "runLauncher.type",
    "telemetry.enabled",
    *(
        f"postgresql.{key}"
        for key in "enabled postgresqlHost postgresqlUsername postgresqlPassword postgresqlDatabase "
        "postgresqlScheme postgresqlParams service.port".split()
    ),
    *(
        f"dagster-user-deployments.deployments[].{key}"
        for key in "name image.repository image.tag image.pullPolicy port dagsterApiGrpcArgs "
        "includeConfigInLaunchedRuns.enabled env volumes volumeMounts resources".split()
    ),
    *(
        f"dagsterDaemon.{key}"
        for key in "runCoordinator.enabled runCoordinator.type "
        "runCoordinator.config.queuedRunCoordinator.maxConcurrentRuns runMonitoring.enabled "
        "runMonitoring.startTimeoutSeconds runMonitoring.cancelTimeoutSeconds "
        "runMonitoring.pollIntervalSeconds".split()
    ),
    *(
        f"concurrency.{key}"
        for key in "enabled pools.granularity pools.defaultLimit runs.maxConcurrentRuns".split()
    ),
}
LEAVES = {"env", "volumes", "volumeMounts", "resources", "dagsterApiGrpcArgs", "postgresqlParams"}
# The chart's defaults (values.yaml at CHART_COMMIT) for the keys its instance templates read below.
CHART_DEFAULTS = {
    "global": {"dagsterHome": "/opt/dagster/dagster_home"},
    "runLauncher": {
        "config": {
            "k8sRunLauncher": {"imagePullPolicy": "Always", "loadInclusterConfig": True, "jobNamespace": None}
        }
    },
    "dagsterDaemon": {
        "runCoordinator": {
            "config": {
                "queuedRunCoordinator": {
                    "maxConcurrentRuns": None,
                    "dequeueUseThreads": True,
                    "dequeueNumWorkers": 4,
                }
            }
        },
        "runMonitoring": {
            "pollIntervalSeconds": 120,
            "maxResumeRunAttempts": 0,
            "freeSlotsAfterRunEndSeconds": 0,
        },
    },
}
RELEASE, NAMESPACE = "embed-assets", "default"  # as the values file's header installs it
FULLNAME = f"{RELEASE}-dagster"  # the chart's dagster.fullname for that release


def values() -> dict:
    return yaml.safe_load(VALUES.read_text(encoding="utf-8"))


def merged_values() -> dict:
    """The values as Helm merges them onto the chart's defaults (maps merge, the rest replaces)."""

    def merge(onto: dict, over: dict) -> dict:
        out = dict(onto)
        for key, value in over.items():
            both_maps = isinstance(value, dict) and isinstance(out.get(key), dict)
            out[key] = merge(out[key], value) if both_maps else value
        return out

    return merge(CHART_DEFAULTS, values())


def user_deployment() -> dict:
    (deployment,) = values()["dagster-user-deployments"]["deployments"]
    return deployment


def leaves(node, prefix: str = ""):
    """``(key path, value)`` for every leaf of the values (``LEAVES`` count as leaves)."""
    if isinstance(node, list):
        for item in node:
            yield from leaves(item, f"{prefix}[]")
        return
    for key, value in node.items():
        path = f"{prefix}.{key}" if prefix else key
        if key in LEAVES or not isinstance(value, dict | list):
            yield path, value
        else:
            yield from leaves(value, path)


def chart_instance_yaml(v: dict) -> dict:
    """dagster.yaml as the chart's configmap-instance.yaml renders it from merged values ``v``, for the
    blocks they set (_postgresql.tpl, _run-launcher.tpl, _run-coordinator.tpl, _concurrency.tpl)."""
    pg = v["postgresql"]
    postgres_db = {
        "username": pg["postgresqlUsername"],
        "password": {"env": "DAGSTER_PG_PASSWORD"},  # from global.postgresqlSecretName, in every pod
        "hostname": pg["postgresqlHost"],
        "db_name": pg["postgresqlDatabase"],
        "port": pg["service"]["port"],
        "params": pg.get("postgresqlParams", {}),
        **({"scheme": pg["postgresqlScheme"]} if pg.get("postgresqlScheme") else {}),
    }
    storages = {
        f"{kind}_storage": {
            "module": f"dagster_postgres.{module}",
            "class": cls,
            "config": {"postgres_db": postgres_db},
        }
        for kind, module, cls in [
            ("run", "run_storage", "PostgresRunStorage"),
            ("event_log", "event_log", "PostgresEventLogStorage"),
            ("schedule", "schedule_storage", "PostgresScheduleStorage"),
        ]
    }
    launcher = v["runLauncher"]["config"]["k8sRunLauncher"]
    daemon, concurrency = v["dagsterDaemon"], v["concurrency"]
    queue = daemon["runCoordinator"]["config"]["queuedRunCoordinator"]
    queue_config = {
        "dequeue_use_threads": queue["dequeueUseThreads"],
        "dequeue_num_workers": queue["dequeueNumWorkers"],
    }
    if not concurrency["enabled"] or queue["maxConcurrentRuns"] is not None:
        queue_config["max_concurrent_runs"] = (
            -1 if queue["maxConcurrentRuns"] is None else queue["maxConcurrentRuns"]
        )
    monitoring = daemon["runMonitoring"]
    instance = {
        **storages,
        "run_launcher": {
            "module": "dagster_k8s",
            "class": "K8sRunLauncher",
            "config": {
                "load_incluster_config": launcher["loadInclusterConfig"],
                "job_namespace": launcher["jobNamespace"] or NAMESPACE,
                "image_pull_policy": launcher["imagePullPolicy"],
                "service_account_name": FULLNAME,
                "dagster_home": v["global"]["dagsterHome"],
                "instance_config_map": f"{FULLNAME}-instance",
                "postgres_password_secret": v["global"]["postgresqlSecretName"],
            },
        },
        "run_coordinator": {
            "module": "dagster.core.run_coordinator",
            "class": "QueuedRunCoordinator",
            "config": queue_config,
        },
        "run_monitoring": {
            "enabled": monitoring["enabled"],
            "start_timeout_seconds": monitoring["startTimeoutSeconds"],
            "cancel_timeout_seconds": monitoring["cancelTimeoutSeconds"],
            "max_resume_run_attempts": monitoring["maxResumeRunAttempts"],
            "poll_interval_seconds": monitoring["pollIntervalSeconds"],
            "free_slots_after_run_end_seconds": monitoring["freeSlotsAfterRunEndSeconds"],
        },
        "telemetry": {"enabled": v["telemetry"]["enabled"]},
    }
    if concurrency["enabled"]:
        pools, runs = concurrency["pools"], concurrency["runs"]
        instance["concurrency"] = {
            "pools": {"default_limit": pools["defaultLimit"], "granularity": pools["granularity"]},
            "runs": {"max_concurrent_runs": runs["maxConcurrentRuns"]},
        }
    return instance


def chart_container_context(deployment: dict) -> dict:
    """The container context the chart hands the code server, and so every run and step pod, for one
    user deployment (the subchart's k8sContainerContext helper; names are placeholders)."""
    k8s = {
        "image_pull_policy": deployment["image"]["pullPolicy"],
        "env_config_maps": [f"{RELEASE}-{deployment['name']}-user-env"],
        "namespace": NAMESPACE,
        "service_account_name": f"{RELEASE}-user-deployments",
        "run_k8s_config": {"pod_spec_config": {"automount_service_account_token": True}},
    }
    for key, field in [("volumeMounts", "volume_mounts"), ("volumes", "volumes"), ("resources", "resources")]:
        if deployment.get(key):
            k8s[field] = deployment[key]
    if isinstance(deployment.get("env"), list):
        k8s["env"] = deployment["env"]
    return {"k8s": k8s}


def recommended_execution_config() -> dict:
    """The ``execution:`` run config docs/platform.md's Kubernetes paragraph recommends."""
    text = PLATFORM_DOC.read_text(encoding="utf-8")
    paragraph = text[text.index("**Kubernetes.**") :].split("\n\n", 1)[0]
    (snippet,) = re.findall(r"`(execution: [^`]+)`", paragraph.replace("\n", " "))
    return yaml.safe_load(snippet)["execution"]


def test_values_set_only_keys_the_chart_defines():
    unknown = sorted({path for path, _ in leaves(values())} - CHART_KEYS)
    assert not unknown, f"keys the chart (at {CHART_COMMIT[:8]}) does not define: {unknown}"


def test_the_postgres_password_comes_from_a_secret_only():
    v = values()
    assert v["global"]["postgresqlSecretName"], "the Secret the chart reads DAGSTER_PG_PASSWORD from"
    assert v["generatePostgresqlPasswordSecret"] is False, "the chart would make the Secret from values"
    assert v["postgresql"]["enabled"] is False, "the bundled PostgreSQL takes its password from values"
    passwords = {
        path: value for path, value in leaves(v) if "password" in path.lower() and isinstance(value, str)
    }
    assert passwords == {"postgresql.postgresqlPassword": ""}, "no password is written in the values"


def test_instance_the_chart_renders_is_valid_and_keeps_deploy_yaml(tmp_path):
    instance = chart_instance_yaml(merged_values())
    (tmp_path / "dagster.yaml").write_text(yaml.safe_dump(instance), encoding="utf-8")
    dagster_instance_config(str(tmp_path))  # the schema, and its checks (run queue vs. concurrency)
    for block in ["run_storage", "event_log_storage", "schedule_storage", "run_launcher", "run_coordinator"]:
        # As the instance loads it (ConfigurableClassData maps dagster.core to dagster._core).
        data = ConfigurableClassData(instance[block]["module"], instance[block]["class"], "{}")
        klass = class_from_code_pointer(data.module_name, data.class_name)
        result = validate_config(klass.config_type(), instance[block]["config"])
        assert result.success, f"{block}: {[e.message for e in result.errors]}"

    deploy = yaml.safe_load(DEPLOY_YAML.read_text(encoding="utf-8"))
    assert instance["concurrency"] == deploy["concurrency"]
    assert instance["run_coordinator"]["class"] == deploy["run_coordinator"]["class"]
    assert "max_concurrent_runs" not in instance["run_coordinator"]["config"]  # set once, in concurrency
    scheme = instance["run_storage"]["config"]["postgres_db"]["scheme"]
    assert scheme == deploy["storage"]["postgres"]["postgres_db"]["scheme"]
    assert instance["run_monitoring"]["enabled"] and deploy["run_monitoring"]["enabled"]
    assert instance["telemetry"] == deploy["telemetry"]


def test_step_pod_from_the_values_and_the_recommended_execution_config():
    execution = recommended_execution_config()
    result = process_config(k8s_job_executor.config_schema.config_type, execution["config"])
    assert result.success, [e.message for e in result.errors]
    step_k8s_config = result.value.get("step_k8s_config", {})

    deployment = user_deployment()
    launcher = chart_instance_yaml(merged_values())["run_launcher"]["config"]
    # What the step handler merges: the run launcher's, the code location's and the executor's config.
    context = (
        K8sContainerContext(
            image_pull_policy=launcher["image_pull_policy"],
            service_account_name=launcher["service_account_name"],
            namespace=launcher["job_namespace"],
        )
        .merge(K8sContainerContext.create_from_config(chart_container_context(deployment)))
        .merge(K8sContainerContext(run_k8s_config=UserDefinedDagsterK8sConfig.from_dict(step_k8s_config)))
    )
    image = f"{deployment['image']['repository']}:{deployment['image']['tag']}"
    job_config = DagsterK8sJobConfig(
        job_image=image,
        **{key: launcher[key] for key in ["dagster_home", "instance_config_map", "postgres_password_secret"]},
    )
    job = construct_dagster_k8s_job(
        job_config,
        args=["dagster", "api", "execute_step"],
        job_name="dagster-step-test",
        user_defined_k8s_config=context.run_k8s_config,
        component="step_worker",
    )

    pod = job.spec.template.spec
    (container,) = pod.containers
    env = {e.name: e for e in container.env}
    assert env["EMBED_ASSETS_EXECUTOR"].value == "k8s"
    assert env["HF_HUB_OFFLINE"].value == "1"
    assert (
        env["DAGSTER_PG_PASSWORD"].value_from.secret_key_ref.name
        == values()["global"]["postgresqlSecretName"]
    )
    home = env["EMBED_ASSETS_HOME"].value
    (mount,) = [m for m in container.volume_mounts if m.mount_path == home]
    (volume,) = [v for v in pod.volumes if v.name == mount.name]
    assert volume.persistent_volume_claim.claim_name, "every step pod needs the same home"
    wanted = step_k8s_config["container_config"]["resources"]["requests"]
    assert container.resources.requests == wanted, "the execution config sizes the step pods"
    for resource, limit in (container.resources.limits or {}).items():
        assert parse_quantity(container.resources.requests[resource]) <= parse_quantity(limit), resource
    # No command: the image's entrypoint gets these arguments and runs them (test below).
    assert container.command is None and container.image == image


def test_user_code_image_module_and_versions_agree_with_the_project():
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    module = pyproject["tool"]["dagster"]["module_name"]
    deployment = user_deployment()
    args = deployment["dagsterApiGrpcArgs"]
    assert args[args.index("--module-name") + 1] == module

    dockerfile = DOCKERFILE.read_text(encoding="utf-8")
    assert re.search(r'pip install -c requirements/lock.txt "\.\[[^\]]*\bk8s\b[^\]]*\]"', dockerfile)
    assert deployment["image"]["repository"] == "embed-assets"  # the image the Dockerfile builds

    assert pyproject["project"]["optional-dependencies"]["k8s"] == [f"dagster-k8s=={dagster_k8s.__version__}"]
    chart = dagster.__version__  # the chart is released with dagster, at the same version
    for text in [VALUES.read_text(encoding="utf-8"), PLATFORM_DOC.read_text(encoding="utf-8")]:
        assert f"helm upgrade --install {RELEASE} dagster/dagster --version {chart}" in text
    assert f"kubectl exec deploy/{FULLNAME}-daemon -- dagster instance concurrency set" in VALUES.read_text()


DEFINITIONS_SCRIPT = """
import os, sys
from embed_assets.defs import definitions
print("executor:", definitions.defs.executor.name)
os.environ["EMBED_ASSETS_EXECUTOR"] = "kubernetes"
try:
    definitions.executor_from_env()
except ValueError as error:
    print("bad value:", error)
os.environ["EMBED_ASSETS_EXECUTOR"] = "k8s"
sys.modules["dagster_k8s"] = None  # as if the k8s extra were not installed
try:
    definitions.executor_from_env()
except ImportError as error:
    print("no extra:", error)
"""


def test_the_environment_selects_the_k8s_executor():
    """One fresh process (the Definitions read the variable when they load): the k8s executor, then the
    errors for a bad value and for a missing extra."""
    env = {**os.environ, "EMBED_ASSETS_EXECUTOR": "k8s"}
    done = subprocess.run(
        [sys.executable, "-c", DEFINITIONS_SCRIPT],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = dict(line.split(": ", 1) for line in done.stdout.splitlines() if ": " in line)
    assert lines["executor"] == k8s_job_executor.name == "k8s"
    assert "EMBED_ASSETS_EXECUTOR" in lines["bad value"] and "'kubernetes'" in lines["bad value"]
    assert "k8s" in lines["bad value"]  # the choices are listed
    assert "embed_assets[k8s]" in lines["no extra"]


def test_the_entrypoint_runs_the_arguments_the_charts_pods_give(tmp_path):
    """The chart and dagster-k8s start this image's pods with arguments only: the entrypoint must run
    them (here a stand-in for ``dagster api ...``), not start a webserver and a daemon."""
    marker = tmp_path / "ran"
    done = subprocess.run(
        ["sh", str(ENTRYPOINT), "sh", "-c", f'echo "$0 $1" > {marker}', "dagster", "api"],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin"},  # no dagster on PATH: reaching the webserver would fail
    )
    assert done.returncode == 0, done.stderr
    assert marker.read_text().strip() == "dagster api"
