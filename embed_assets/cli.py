"""``embed-assets run``: materialize the whole pipeline in-process and print base vs fine-tuned.
``embed-assets clean-runs``: mark failed the runs that were killed and still show as STARTED.
``embed-assets audit [RUN_ID]``: the chain behind an evaluation, every file re-hashed.
``embed-assets gc``: delete the artifacts that no recorded evaluation uses.

Bad input (a config file, a field, a model path, a busy home) is one message on stderr and
exit code 2; a failed step prints why it failed and exits 1.

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

from embed_assets.cli_args import build_parser
from embed_assets.object_home import ObjectHomeError, check_access, local_root, push


class UsageError(ValueError):
    """Bad command-line input: printed as one message, exit code 2."""


def _deep_set(d: dict, path: list[str], value) -> None:
    for p in path[:-1]:
        d = d.setdefault(p, {})
        if not isinstance(d, dict):  # e.g. `ops: 5`; validate_run_config names it
            return
    d[path[-1]] = value


def load_config_file(path: str) -> dict:
    """A YAML run config file as a mapping; :class:`UsageError` naming the file otherwise."""
    file = Path(path)
    if not file.is_file():
        raise UsageError(f"--config {path}: no such file")
    try:
        data = yaml.safe_load(file.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise UsageError(f"--config {path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise UsageError(f"--config {path}: not valid YAML{where}: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        kind = {list: "a list", str: "a string"}.get(type(data), type(data).__name__)
        raise UsageError(
            f"--config {path}: must be a mapping like 'ops: {{<asset>: {{config: ...}}}}', got {kind}"
        )
    return data


def build_run_config(args: argparse.Namespace) -> dict:
    from embed_assets.recipe.settings import fill_selection_folder, upgrade_run_config

    run_config = load_config_file(args.config) if args.config else {}
    run_config, notes = upgrade_run_config(run_config)
    for note in notes:
        print(f"note: --config {args.config}: {note} (the old layout still works)", file=sys.stderr)
    training = ["ops", "training_recipe", "config"]
    # Command-line flags override the YAML: (flag value, where it goes in the run config).
    flags = [
        (args.corpus_dir, ["ops", "source_documents", "config", "corpus_dir"]),
        (args.corpus_jsonl, ["ops", "source_documents", "config", "corpus_jsonl"]),
        (args.labelled_queries, ["ops", "retrieval_eval", "config", "labelled_queries_dir"]),
        (args.labelled_split, ["ops", "retrieval_eval", "config", "labelled_queries_split"]),
        (args.selection_split, [*training, "finetuned_model", "selection_queries_split"]),
        (args.max_steps, [*training, "finetuned_model", "max_steps"]),
        (args.recipe, ["resources", "recipe", "config", "preset"]),
    ]
    for value, path in flags:
        if value is not None and value != "":
            _deep_set(run_config, path, value)
    if args.selection_split:  # a split of the labelled queries' folder (--labelled-queries or the YAML's)
        fill_selection_folder(run_config["ops"], replace=bool(args.labelled_queries))
    return run_config


def failure_reason(error) -> str:
    """The innermost cause of a Dagster error (what the asset's code raised), as
    ``ExceptionType: message``: the outer layers only say which op failed."""
    while getattr(error, "cause", None) is not None:
        error = error.cause
    cls = (error.cls_name or "Error").rsplit(".", 1)[-1]
    message = error.message.strip()
    # SerializableErrorInfo.message already starts with the qualified class name.
    message = (
        message.split(": ", 1)[1] if message.split(": ", 1)[0].endswith(cls) and ": " in message else message
    )
    return f"{cls}: {message}"


def _print_failures(result) -> None:
    """One line per failed step (or the failed run, when it failed before any step), with why."""
    failures = [(f"step {e.step_key}", e) for e in result.all_events if e.is_step_failure]
    if not failures:
        failures = [("run", e) for e in result.all_events if e.is_run_failure]
    for what, event in failures:
        error = getattr(event.event_specific_data, "error", None)
        print(f"{what} failed: {failure_reason(error) if error else event.message}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """The ``embed-assets`` entry point: parse ``argv``, run the subcommand, return its exit code."""
    args = build_parser(__doc__).parse_args(argv)
    _set_environment_defaults()
    return _dispatch(args)


def _set_environment_defaults() -> None:
    """Offline defaults and the Dagster home, unless the caller's environment already chose them."""
    # The pipeline runs offline unless told otherwise; litellm must not fetch its cost map.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    os.environ.setdefault("DAGSTER_HOME", str(Path(".dagster_home").resolve()))
    Path(os.environ["DAGSTER_HOME"]).mkdir(parents=True, exist_ok=True)


def _dispatch(args: argparse.Namespace) -> int:
    """Run the subcommand ``args.command`` names; a :class:`UsageError` becomes exit code 2."""
    try:
        if args.command == "clean-runs":
            return clean_runs(args.dry_run)
        if args.command == "audit":
            return audit_run(args.run_id, args.json)
        if args.command == "gc":
            return garbage_collect(args.home, args.dry_run)
        return run_pipeline(args)
    except (UsageError, ObjectHomeError) as e:
        print(e, file=sys.stderr)
        return 2


def open_instance():
    """The Dagster instance of ``$DAGSTER_HOME``; a :class:`UsageError` naming the settings when its
    PostgreSQL database (deploy/dagster.yaml) cannot be reached."""
    import dagster as dg

    try:
        return dg.DagsterInstance.get()
    except Exception as e:
        # dagster-postgres retries, then raises its own error with the driver's as the cause.
        cause = e.__cause__ or e
        if "postgres" not in f"{type(e).__module__} {type(cause).__module__}".lower():
            raise
        reason = str(cause).strip().splitlines()[0]
        if password := os.environ.get("DAGSTER_PG_PASSWORD"):
            reason = reason.replace(password, "***")
        host, port = (
            os.environ.get("DAGSTER_PG_HOST", "(unset)"),
            os.environ.get("DAGSTER_PG_PORT", "(unset)"),
        )
        raise UsageError(
            f"the Dagster instance ({os.environ.get('DAGSTER_HOME')}/dagster.yaml) cannot reach its PostgreSQL "
            f"database at DAGSTER_PG_HOST={host} DAGSTER_PG_PORT={port}: {reason}"
        ) from None


def clean_runs(dry_run: bool) -> int:

    from embed_assets.defs.runs import describe, mark_failed, orphaned_runs

    instance = open_instance()
    runs = orphaned_runs(instance)
    for run in runs:
        print(f"{'would mark' if dry_run else 'marked'} failed: {describe(run)}")
    if not dry_run:
        mark_failed(instance, runs)
    print(f"{len(runs)} killed run(s) {'found' if dry_run else 'marked failed'}")
    return 0


def audit_run(run_id: str, as_json: bool) -> int:

    from embed_assets.defs import audit

    try:
        chain = audit.audit_chain(open_instance(), None if run_id == "latest" else run_id)
    except audit.AuditError as e:
        print(e, file=sys.stderr)
        return 2
    print(audit.as_json(chain) if as_json else audit.render_tree(chain))
    return 0 if chain.ok else 1


def garbage_collect(home: str, dry_run: bool) -> int:

    from embed_assets.defs.garbage import collect_garbage
    from embed_assets.home_lock import HomeBusyError, HomeLock

    try:
        with HomeLock(local_root(home), "embed-assets gc"):  # never under a running pipeline
            report = collect_garbage(open_instance(), home, dry_run)
    except HomeBusyError as e:
        print(e, file=sys.stderr)
        return 2
    for path in report.deleted:
        print(f"{'would delete' if dry_run else 'deleted'} {path}")
    print(
        f"{len(report.deleted)} artifacts ({report.bytes_freed / 1e6:.1f} MB) "
        f"{'to delete' if dry_run else 'deleted'}; kept what {report.kept_evaluations} evaluations use"
    )
    return 0


def run_pipeline(args: argparse.Namespace) -> int:
    """``embed-assets run``: check the input, materialize, print timings and the evaluation.

    Every input check comes before any asset runs; returns 0 on success, 1 when a step failed.
    """
    import dagster as dg

    from embed_assets.defs.definitions import all_assets

    run_config = build_run_config(args)
    resources, base_path = _resources_for(args)
    _validate_run_config(run_config, base_path)
    if args.select:
        run_config["ops"] = _ops_of_selection(run_config, args.select, all_assets)
    _refuse_busy_home(args.home, args.wait)
    if (home := resources["store"].object_home()) is not None:
        check_access(home)  # an unreachable or read-only store: one message, before any asset runs
    resources["store"] = resources["store"].model_copy(update={"lock_timeout_s": float(args.wait)})
    instance = open_instance()
    _warn_orphaned_runs(instance)

    start = time.perf_counter()
    result = dg.materialize(
        all_assets,
        selection=args.select,
        run_config=run_config,
        resources=resources,
        instance=instance,
        raise_on_error=False,
    )
    wall = time.perf_counter() - start
    print(f"\nDagster run {result.run_id}: {'success' if result.success else 'FAILED'} in {wall:.0f} s")
    stages = _print_stages(result)
    for event in result.get_asset_check_evaluations():
        print(f"  check {event.asset_check_key.name:<28} {'passed' if event.passed else 'FAILED'}")
    if evaluation := _evaluation_of(result):
        _print_evaluation(evaluation)
        summary = {"run_id": result.run_id, "wall_seconds": round(wall, 1), "stages": stages, **evaluation}
        (local_root(args.home) / "last_run.json").write_text(json.dumps(summary, indent=2))
        if (home := resources["store"].object_home()) is not None:
            push(home)
    if not result.success:
        _print_failures(result)
    return 0 if result.success else 1


def _resources_for(args: argparse.Namespace) -> tuple[dict, Path]:
    """The run's Dagster resources and the base model's folder; :class:`UsageError` on a bad model path."""
    from embed_assets.defs.definitions import build_resources
    from embed_assets.defs.resources import QuestionGeneratorResource

    gen_fields = {
        k: v
        for k, v in {"backend": args.generator, "model": args.llm_model, "api_base": args.api_base}.items()
        if v
    }
    resources = build_resources(
        args.home, args.base_model, QuestionGeneratorResource(**gen_fields), teacher=args.teacher
    )
    # Fail fast on an unknown model path, before any asset runs.
    try:
        base_path = resources["base_model"].path()
        if resources["teacher"].enabled:
            from embed_assets.teacher.scorer import resolve_teacher_path

            resolve_teacher_path(resources["teacher"].name_or_path)
    except ValueError as e:
        raise UsageError(str(e)) from None
    return resources, base_path


def _validate_run_config(run_config: dict, base_path: Path) -> None:
    """Check every field of the run config (against the base model's embedding size); :class:`UsageError`."""
    from embed_assets.defs.configs import RunConfigError, validate_run_config
    from embed_assets.models import embedding_dim_of_folder

    try:
        validate_run_config(run_config, embedding_dim=embedding_dim_of_folder(base_path))
    except RunConfigError as e:
        raise UsageError(str(e)) from None


def _ops_of_selection(run_config: dict, select: str, all_assets: list) -> dict:
    """The ``ops`` of the run config that ``--select`` materializes; a note names the ones it drops."""
    import dagster as dg

    # A run config may only configure the assets the run materializes.
    try:
        selected = {k.to_user_string() for k in dg.AssetSelection.from_string(select).resolve(all_assets)}
    except Exception as e:  # Dagster raises several types for an unknown key or bad syntax
        raise UsageError(f"--select {select!r}: {e}") from None
    ops = run_config.get("ops", {})
    if unrun := sorted(k for k in ops if k not in selected):
        # Their stored values, made with the settings of the run that materialized them, are the inputs.
        print(
            f"note: --select {select!r} leaves out {', '.join(unrun)}: their config here is not "
            "applied; the selected assets read the values their last materialization stored",
            file=sys.stderr,
        )
    return {k: v for k, v in ops.items() if k in selected}


def _refuse_busy_home(home: str, wait: float) -> None:
    """:class:`UsageError` when another run holds ``home`` and ``--wait`` does not allow waiting for it."""
    from embed_assets.home_lock import busy_holder

    if wait <= 0 and (holder := busy_holder(local_root(home))):
        raise UsageError(
            f"artifact home {local_root(home).resolve()} is in use by {holder.describe()}; one run at a time "
            "per home: wait for it (--wait SECONDS), or use another --home"
        )


def _warn_orphaned_runs(instance) -> None:
    """A warning on stderr for each run still marked STARTED whose process was killed."""
    from embed_assets.defs.runs import describe, orphaned_runs

    for run in orphaned_runs(instance):
        print(
            f"warning: {describe(run)} is still marked STARTED but its process is gone (killed); "
            "`embed-assets clean-runs` marks it failed",
            file=sys.stderr,
        )


def _print_stages(result) -> dict[str, dict]:
    """One line per materialized asset with its wall time and peak RSS; returns them by asset key."""
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
    return stages


def _evaluation_of(result) -> dict | None:
    """The ``retrieval_eval`` output of the run, or None when that step did not run or failed."""
    try:
        return result.output_for_node("retrieval_eval")
    except Exception:  # not selected, or failed: the failures are printed afterwards
        return None


def _print_evaluation(evaluation: dict) -> None:
    """The base vs fine-tuned tables, per-generator scores, teacher scores and how the model was chosen."""
    print(f"\nBase vs fine-tuned on {evaluation['test_queries']} held-out test queries:\n")
    print(evaluation["markdown"])
    if len(by_generator := evaluation.get("synthetic_by_generator") or {}) > 1:
        print("\nnDCG@10 by question generator:")
        for name, m in by_generator.items():
            print(
                f"  {name:<16} {m['queries']:>5} questions  {m['base']:.4f} -> {m['fine_tuned']:.4f} "
                f"({m['delta_points']:+.2f})"
            )
    if labelled := evaluation.get("labelled"):
        print(f"\nBase vs fine-tuned on {labelled['queries']} labelled queries ({labelled['source']}):\n")
        print(labelled["markdown"])
    if teacher := evaluation.get("teacher"):
        print(f"\nThe teacher {teacher['name']} ({teacher['kind']}) zero-shot, nDCG@10:")
        for query_set in ("synthetic test split", "labelled queries"):
            if query_set in teacher:
                print(f"  {query_set:<22} {teacher[query_set]['NDCG@10']:.4f}")
    if evaluation.get("labelled_queries_used_for_selection"):
        print(f"\nThe model was chosen on {evaluation['model_selected_on']}.")


if __name__ == "__main__":
    sys.exit(main())
