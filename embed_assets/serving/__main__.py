"""Run the embeddings server: ``python -m embed_assets.serving --model-dir DIR [--port 8080] [--int8]``."""

from __future__ import annotations

import argparse
from pathlib import Path


def main(argv: list[str] | None = None) -> None:
    """Parse arguments and serve until interrupted.

    Args:
        argv: command-line arguments; None reads ``sys.argv``.
    """
    parser = argparse.ArgumentParser(
        prog="python -m embed_assets.serving",
        description="OpenAI-compatible embeddings server over an ONNX export.",
    )
    parser.add_argument("--model-dir", type=Path, required=True, help="folder written by export_onnx")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8080, help="port to bind (default 8080)")
    parser.add_argument("--int8", action="store_true", help="serve model_int8.onnx instead of model.onnx")
    parser.add_argument(
        "--model-name", default=None, help="model id reported to clients (default: folder name)"
    )
    parser.add_argument("--max-batch", type=int, default=256, help="most texts per request (default 256)")
    parser.add_argument("--log-level", default="info", help="uvicorn log level (default info)")
    args = parser.parse_args(argv)

    import uvicorn

    from embed_assets.serving.server import create_app

    app = create_app(args.model_dir, model_name=args.model_name, max_batch=args.max_batch, int8=args.int8)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)


if __name__ == "__main__":
    main()
