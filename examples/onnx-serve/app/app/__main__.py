"""CLI: python -m app [--config PATH] [--version | --check].

Heavy imports (numpy, onnxruntime, fastapi, uvicorn) are deferred so that
`--version` stays fast and works even if the runtime deps are broken.
"""

import argparse
import json
import os
import sys

from . import __version__
from .config import Config, load_config

DEFAULT_CONFIG = "/opt/app/default.yaml"
CHECK_INPUT = [[1.0, 2.0, 3.0, 4.0]]


def _fail(msg: str, code: int) -> int:
    print(f"onnx-serve: error: {msg}", file=sys.stderr)
    return code


def run_check(cfg: Config) -> int:
    try:
        import numpy as np
        import onnxruntime as ort

        from .infer import ProviderError, load_session, predict

        session = load_session(cfg.model, cfg.provider)
        y = predict(session, CHECK_INPUT)
    except ProviderError as exc:
        return _fail(str(exc), 3)
    except Exception as exc:  # Smoke check: report any failure, don't trace.
        return _fail(f"check failed: {type(exc).__name__}: {exc}", 1)
    result = {
        "status": "ok",
        "onnxruntime": ort.__version__,
        "numpy": np.__version__,
        "provider": session.get_providers()[0],
        "y": y,
    }
    print(json.dumps(result))
    return 0


def run_server(cfg: Config) -> int:
    import uvicorn

    from .infer import ProviderError
    from .server import create_app

    try:
        api = create_app(cfg.model, cfg.provider)
    except ProviderError as exc:
        return _fail(str(exc), 3)
    uvicorn.run(api, host=cfg.host, port=cfg.port)
    return 0


def main(argv: "list[str] | None" = None) -> int:
    parser = argparse.ArgumentParser(prog="onnx-serve", description=__doc__)
    parser.add_argument("--config", default=DEFAULT_CONFIG, help="flat key: value YAML file")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--version", action="store_true", help="print version and exit")
    mode.add_argument("--check", action="store_true", help="run one prediction and exit")
    args = parser.parse_args(argv)

    if args.version:
        print(f"onnx-serve {__version__}")
        return 0
    try:
        cfg = load_config(args.config)
    except (OSError, ValueError) as exc:
        return _fail(f"bad config {args.config}: {exc}", 2)
    if not os.path.isfile(cfg.model):
        return _fail(
            f"model file not found: {cfg.model} (build it with: "
            f"python -m app.make_model {cfg.model})",
            2,
        )
    return run_check(cfg) if args.check else run_server(cfg)


if __name__ == "__main__":
    sys.exit(main())
