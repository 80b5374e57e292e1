"""``embed-assets run``: materialize the whole pipeline in-process and print base vs fine-tuned.

Runs are recorded in the Dagster instance at ``$DAGSTER_HOME`` (default
``.dagster_home``), so ``dagster dev -w workspace.yaml`` afterwards shows every
materialization, its metadata and its lineage.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import yaml


def _deep_set(d: dict, path: list[str], value) -> None:
    for p in path[:-1]:
        d = d.setdefault(p, {})
    d[path[-1]] = value


def build_run_config(args: argparse.Namespace) -> dict:
    run_config: dict = yaml.safe_load(Path(args.config).read_text()) if args.config else {}
    run_config = run_config or {}
    # Command-line flags override the YAML: (flag value, asset, config field).
    flags = [
        (args.corpus_dir, "source_documents", "corpus_dir"),
        (args.corpus_jsonl, "source_documents", "corpus_jsonl"),
        (args.labelled_queries, "retrieval_eval", "labelled_queries_dir"),
        (args.labelled_split, "retrieval_eval", "labelled_queries_split"),
        (args.max_steps, "finetuned_model", "max_steps"),
    ]
    for value, asset, field in flags:
        if value is not None and value != "":
            _deep_set(run_config, ["ops", asset, "config", field], value)
    return run_config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="embed-assets", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="materialize every asset and print the evaluation table")
    run.add_argument("--corpus-dir", help="folder of .txt/.md/.html documents (default data/corpus)")
    run.add_argument("--corpus-jsonl", help="JSON Lines file of documents ({_id, title, text} per line)")
    run.add_argument(
        "--labelled-queries",
        help="folder of queries written by people (queries.jsonl, qrels/<split>.tsv naming documents): "
        "scored and gated on besides the synthetic test split",
    )
    run.add_argument("--labelled-split", help="qrels split of --labelled-queries (default test)")
    run.add_argument("--config", help="YAML run config ({ops: {<asset>: {config: {...}}}})")
    run.add_argument(
        "--home", default=os.environ.get("EMBED_ASSETS_HOME", ".embed_assets"), help="artifact folder"
    )
    run.add_argument(
        "--base-model", default=None, help="sentence-transformers folder or the embedded all-MiniLM-L6-v2"
    )
    run.add_argument("--generator", choices=["template", "structure", "litellm", "embedded"], default=None)
    run.add_argument("--llm-model", default=None, help="litellm model string, e.g. openai/gpt-4o-mini")
    run.add_argument(
        "--api-base", default=None, help="OpenAI-compatible endpoint, e.g. http://localhost:8000/v1"
    )
    run.add_argument("--max-steps", type=int, default=None, help="cap training steps")
    run.add_argument(
        "--select",
        default=None,
        help="materialize only these assets, in Dagster's selection syntax (e.g. 'training_examples*': "
        "training and everything after it); the rest are read from --home as the last run left them",
    )
    args = parser.parse_args(argv)

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    os.environ.setdefault("DAGSTER_HOME", str(Path(".dagster_home").resolve()))
    Path(os.environ["DAGSTER_HOME"]).mkdir(parents=True, exist_ok=True)

    import dagster as dg

    from embed_assets.defs.configs import RunConfigError, validate_run_config
    from embed_assets.defs.definitions import all_assets, build_resources
    from embed_assets.defs.resources import QuestionGeneratorResource

    run_config = build_run_config(args)
    try:
        validate_run_config(run_config)
    except RunConfigError as e:
        print(e, file=sys.stderr)
        return 2
    if args.select:
        # A run config may only configure the assets the run materializes.
        try:
            selected = {
                k.to_user_string() for k in dg.AssetSelection.from_string(args.select).resolve(all_assets)
            }
        except Exception as e:  # Dagster raises several types for an unknown key or bad syntax
            print(f"--select {args.select!r}: {e}", file=sys.stderr)
            return 2
        run_config["ops"] = {k: v for k, v in run_config.get("ops", {}).items() if k in selected}
    gen_fields = {
        k: v
        for k, v in {"backend": args.generator, "model": args.llm_model, "api_base": args.api_base}.items()
        if v
    }
    resources = build_resources(args.home, args.base_model, QuestionGeneratorResource(**gen_fields))
    # Fail fast on an unknown model path, before any asset runs.
    try:
        resources["base_model"].path()
    except ValueError as e:
        print(e, file=sys.stderr)
        return 2

    start = time.perf_counter()
    result = dg.materialize(
        all_assets,
        selection=args.select,
        run_config=run_config,
        resources=resources,
        instance=dg.DagsterInstance.get(),
        raise_on_error=False,
    )
    wall = time.perf_counter() - start
    print(f"\nDagster run {result.run_id}: {'success' if result.success else 'FAILED'} in {wall:.0f} s")
    stages = {}
    for event in result.get_asset_materialization_events():
        mat = event.event_specific_data.materialization
        stages[mat.asset_key.to_user_string()] = {
            k: mat.metadata[k].value for k in ("wall_seconds", "peak_rss_mb") if k in mat.metadata
        }
        s = stages[mat.asset_key.to_user_string()]
        print(
            f"  {mat.asset_key.to_user_string():<20} {s.get('wall_seconds', ''):>8} s  peak RSS {s.get('peak_rss_mb', '')} MB"
        )
    for event in result.get_asset_check_evaluations():
        print(f"  check {event.asset_check_key.name:<28} {'passed' if event.passed else 'FAILED'}")
    try:
        evaluation = result.output_for_node("retrieval_eval")
    except Exception:
        evaluation = None
    if evaluation:
        print(f"\nBase vs fine-tuned on {evaluation['test_queries']} held-out test queries:\n")
        print(evaluation["markdown"])
        if labelled := evaluation.get("labelled"):
            print(f"\nBase vs fine-tuned on {labelled['queries']} labelled queries ({labelled['source']}):\n")
            print(labelled["markdown"])
        summary = Path(args.home) / "last_run.json"
        summary.write_text(
            json.dumps(
                {"run_id": result.run_id, "wall_seconds": round(wall, 1), "stages": stages, **evaluation},
                indent=2,
            )
        )
    else:
        for event in result.all_events:
            if event.is_step_failure:
                print(
                    f"step {event.step_key} failed: {event.event_specific_data.error.message.strip()}",
                    file=sys.stderr,
                )
    return 0 if result.success else 1


if __name__ == "__main__":
    sys.exit(main())
