"""The `spanpref` entry point: parse, run one command, and turn a `SpanprefError` into one line (exit code 2).

The commands themselves are in `spanpref.commands`; anything that is not a `SpanprefError` is a bug or an
environment problem and keeps its traceback.
"""

from __future__ import annotations

import logging
import sys

from spanpref.errors import SpanprefError


def main(argv: list[str] | None = None) -> int:
    from spanpref.commands import parse
    from spanpref.commands.base import build_configs

    argv = list(sys.argv[1:] if argv is None else argv)
    verbose = "-v" in argv or "--verbose" in argv
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "httpx2", "httpcore", "openai", "urllib3", "filelock"):  # no line per HTTP request
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        ns = parse(argv)
        command = ns._command
        code = command.run(ns.argv) if command.passthrough else command.run(*build_configs(command, ns))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and closed early
        sys.stderr.close()
        return 0
    except SpanprefError as e:
        if verbose:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
