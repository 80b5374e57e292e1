"""Run the embeddings server: ``python -m embed_assets.serving --model-dir DIR [--port 8080] [--int8]``."""

from __future__ import annotations

import argparse
from pathlib import Path

from embed_assets.serving.server import DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_INPUTS


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
        "--model-name",
        default=None,
        help="model id reported to clients and required of them (default: folder name)",
    )
    parser.add_argument(
        "--max-inputs",
        type=int,
        default=DEFAULT_MAX_INPUTS,
        help=f"most inputs per request (default {DEFAULT_MAX_INPUTS}, OpenAI's limit)",
    )
    parser.add_argument(
        "--max-body-bytes",
        type=int,
        default=DEFAULT_MAX_BODY_BYTES,
        help=f"largest request body; larger is 413 (default {DEFAULT_MAX_BODY_BYTES})",
    )
    parser.add_argument(
        "--batch-size", type=int, default=32, help="most inputs per model call, across requests (default 32)"
    )
    parser.add_argument(
        "--max-wait-ms",
        type=float,
        default=0.0,
        help="wait this long for a batch to fill (default 0: run what is queued as soon as the model is free)",
    )
    parser.add_argument(
        "--max-queued-inputs",
        type=int,
        default=4096,
        help="inputs allowed to wait for the model; beyond it requests get 503 (default 4096)",
    )
    parser.add_argument("--threads", type=int, default=None, help="onnxruntime threads (default: its own)")
    parser.add_argument(
        "--spin",
        action="store_true",
        help="let onnxruntime threads busy-wait between calls (default: they sleep, leaving the CPU to HTTP)",
    )
    parser.add_argument("--log-level", default="info", help="uvicorn log level (default info)")
    args = parser.parse_args(argv)

    import uvicorn

    from embed_assets.serving.server import create_app

    app = create_app(
        args.model_dir,
        model_name=args.model_name,
        max_inputs=args.max_inputs,
        max_body_bytes=args.max_body_bytes,
        int8=args.int8,
        batch_size=args.batch_size,
        max_wait_ms=args.max_wait_ms,
        max_queued_inputs=args.max_queued_inputs,
        intra_op_num_threads=args.threads,
        spin=args.spin,
    )
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)


if __name__ == "__main__":
    main()
