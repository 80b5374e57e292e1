"""The default run on one process, local SQLite and a local home, against the same run with a process
per step on PostgreSQL with its artifact home in S3: every data version and metric must match; reports
the wall-time ratio.

1. ``embed-assets run`` (the default corpus and settings) with a local Dagster home: the in-process run.
2. The same run config through ``dagster job execute`` with ``EMBED_ASSETS_EXECUTOR=multiprocess``, on
   a throw-away PostgreSQL server holding the instance of ``deploy/dagster.yaml``, with
   ``EMBED_ASSETS_HOME=s3://...`` on a throw-away S3-compatible server (moto, the ``dev`` extra).

Both runs' data versions (per asset) and ``retrieval_eval`` metrics are compared; the report goes to
``benchmarks/results/platform-multiprocess.json``.

    python benchmarks/bench_platform.py [--out FILE] [--work-dir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import dagster as dg
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from embed_assets_tests.postgres_server import postgres_server  # noqa: E402
from embed_assets_tests.s3_server import s3_server  # noqa: E402

LOCATION = "embed_assets.defs.definitions"
JOB = "embed_assets_pipeline"


def run_summary(instance: dg.DagsterInstance, run_id: str) -> dict:
    """The run's data version per asset and the numeric metadata of retrieval_eval."""
    records = instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION).records
    versions, metrics = {}, {}
    for record in records:
        m = record.event_log_entry.dagster_event.step_materialization_data.materialization
        versions[m.asset_key.to_user_string()] = m.tags.get("dagster/data_version")
        if m.asset_key.to_user_string() == "retrieval_eval":
            metrics = {
                k: v.value for k, v in m.metadata.items() if k.startswith(("ndcg", "recall", "map", "mrr"))
            }
    return {"data_versions": versions, "metrics": metrics}


def timed(command: list[str], env: dict) -> float:
    start = time.perf_counter()
    subprocess.run(command, env=env, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "platform-multiprocess.json"))
    parser.add_argument("--work-dir", help="keep both runs' homes here (default: a temporary folder)")
    parser.add_argument(
        "extra", nargs="*", help="extra `embed-assets run` arguments (smoke tests: a tiny corpus)"
    )
    args = parser.parse_args(argv)
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="bench-platform-"))
    base_env = {**os.environ, "HF_HUB_OFFLINE": "1", "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    bin_dir = Path(sys.executable).parent

    local_home = work / "dagster_local"
    local_home.mkdir(parents=True, exist_ok=True)
    local_env = {**base_env, "DAGSTER_HOME": str(local_home)}
    in_process_s = timed(
        [str(bin_dir / "embed-assets"), "run", "--home", str(work / "home_local"), *args.extra], local_env
    )
    local = dg.DagsterInstance.from_config(str(local_home))
    local_run = local.get_runs(limit=1)[0]
    config = work / "run_config.yaml"
    config.write_text(yaml.safe_dump(local_run.run_config), encoding="utf-8")

    with postgres_server() as server, s3_server() as s3:
        pg_home = work / "dagster_postgres"
        pg_home.mkdir(exist_ok=True)
        shutil.copy(ROOT / "deploy" / "dagster.yaml", pg_home / "dagster.yaml")
        s3.create_bucket("bench")
        env = {**base_env, **server.dagster_env(), **s3.env(), "DAGSTER_HOME": str(pg_home)}
        env |= {
            "EMBED_ASSETS_EXECUTOR": "multiprocess",
            "EMBED_ASSETS_HOME": "s3://bench/home",
            "EMBED_ASSETS_STAGING": str(work / "staging"),
        }
        command = [str(bin_dir / "dagster"), "job", "execute", "-m", LOCATION, "-j", JOB, "-c", str(config)]
        multiprocess_s = timed(command, env)
        os.environ.update(server.dagster_env())  # this process opens the same instance
        remote = dg.DagsterInstance.from_config(str(pg_home))
        remote_run = remote.get_runs(limit=1)[0]
        one, many = run_summary(local, local_run.run_id), run_summary(remote, remote_run.run_id)
        remote.dispose()

    differ = sorted(
        k for k in one["data_versions"] if one["data_versions"][k] != many["data_versions"].get(k)
    )
    report = {
        "command": " ".join(["python benchmarks/bench_platform.py", *args.extra]),
        "in_process_sqlite_s": round(in_process_s, 1),
        "multiprocess_postgres_s3_s": round(multiprocess_s, 1),
        "wall_time_ratio": round(multiprocess_s / in_process_s, 2),
        "assets": len(one["data_versions"]),
        "data_versions_differ": differ,
        "metrics_equal": one["metrics"] == many["metrics"],
        "in_process": one,
        "multiprocess": many,
    }
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(json.dumps({k: v for k, v in report.items() if k not in ("in_process", "multiprocess")}, indent=2))
    return 0 if not differ and report["metrics_equal"] else 1


if __name__ == "__main__":
    sys.exit(main())
