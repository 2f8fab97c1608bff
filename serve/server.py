"""Run the app under uvicorn: ``lowbit serve``. SIGTERM / Ctrl-C stop accepting connections,
let in-flight requests finish, then stop the engine."""

from __future__ import annotations

from pathlib import Path

from lowbit.errors import LowbitError
from lowbit.serve.app import ServeArgs, create_app


def _check(args: ServeArgs) -> None:
    """One-line errors before the port opens, for what is quick to check."""
    from lowbit.artifact import read_chat_config, read_tensor_cache_index

    if not Path(args.model_lib).is_file():
        raise LowbitError(f"model library {args.model_lib} does not exist")
    read_chat_config(Path(args.model_dir))
    read_tensor_cache_index(Path(args.model_dir))
    for name, value in (("--max-batch", args.max_batch), ("--max-total-tokens", args.max_total_tokens),
                        ("--prefill-chunk", args.prefill_chunk), ("--max-queue", args.max_queue)):
        if value < 1:
            raise LowbitError(f"{name} must be at least 1, got {value}")


def serve(args: ServeArgs) -> None:
    """Serve until SIGTERM / Ctrl-C; a model that fails to load ends it with a one-line error."""
    import uvicorn

    _check(args)
    failure: list[str] = []

    def load_failed(message: str) -> None:
        failure.append(message)
        server.should_exit = True

    config = uvicorn.Config(create_app(args, load_failed), host=args.host, port=args.port,
                            log_level="info", timeout_graceful_shutdown=None)
    server = uvicorn.Server(config)
    server.run()
    if failure:
        raise LowbitError(failure[0])
