"""CLI: python -m wordcount [--host H] [--port P] [--version | --check]."""

import argparse
import json
import sys

from . import __version__

CHECK_TEXT = "The quick brown fox jumps over the lazy dog; the dog sleeps."


def main(argv: "list[str] | None" = None) -> int:
    parser = argparse.ArgumentParser(prog="wordcount-api", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--version", action="store_true", help="print version and exit")
    mode.add_argument("--check", action="store_true", help="count a fixed text and exit")
    args = parser.parse_args(argv)
    if args.version:
        print(f"wordcount-api {__version__}")
        return 0
    if args.check:
        from .counting import count

        print(json.dumps(count(CHECK_TEXT)))
        return 0
    import uvicorn

    from .server import create_app

    uvicorn.run(create_app(), host=args.host, port=args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
