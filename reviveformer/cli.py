"""The `reviveformer` command line: one entry point, one module per command under reviveformer/commands.

Every user error (bad config, missing file, incompatible checkpoint) ends as one paragraph on stderr and
exit status 2, with no traceback; `TrainingHalted` (a non-finite loss, for example) exits 3, a run ended by an
alert's `stop` action 4, a run whose disk is full 74, a preempted one (SIGTERM/SIGINT, a checkpoint saved, or
SIGTERM during set-up) 75, and one interrupted at once (a second Ctrl-C, or Ctrl-C during set-up) 130.

The contract: docs/design.md, "Interfaces" (the command line) and "Where it must not break" (exit statuses).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings

from reviveformer.errors import (
    EXIT_BROKEN_PIPE,
    EXIT_HALTED,
    EXIT_INTERRUPTED,
    EXIT_NO_SPACE,
    EXIT_PREEMPTED,
    EXIT_STOPPED,  # noqa: F401  (commands/train.py returns it; named here with the others)
    EXIT_USER_ERROR,
    NoSpace,
    Preempted,
    StoppedInSetup,
    TrainingHalted,
    UserError,
)


def _setup_logging() -> None:
    main = os.environ.get("RANK", "0") in ("0", "")
    logging.basicConfig(
        level=logging.INFO if main else logging.ERROR, format="%(message)s", stream=sys.stderr
    )
    for noisy in ("accelerate", "transformers", "datasets", "httpx", "urllib3", "wandb", "torch"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module="torch")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("WANDB_SILENT", "true")
    # transformers' and the hub's bars (`Loading weights`, `Writing model shards`, downloads) say nothing the
    # user needs; read when those libraries are imported, so set before any command imports them
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")


def build_parser() -> argparse.ArgumentParser:
    from reviveformer.commands import COMMANDS

    parser = argparse.ArgumentParser(prog="reviveformer", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module in COMMANDS.items():
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        p.set_defaults(run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    _setup_logging()
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # overrides may come after options (`strip CKPT --out D key=value`): argparse leaves those over
    if extra:
        if not hasattr(args, "overrides") or any("=" not in e or e.startswith("-") for e in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = [*args.overrides, *extra]
    try:
        return int(args.run(args) or 0)
    except UserError as e:
        print(f"reviveformer {args.command}: error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    except TrainingHalted as e:
        print(f"reviveformer {args.command}: stopped: {e}", file=sys.stderr)
        return EXIT_HALTED
    except Preempted as e:
        print(f"reviveformer {args.command}: preempted: {e}", file=sys.stderr)
        return EXIT_PREEMPTED
    except NoSpace as e:
        print(f"reviveformer {args.command}: error: {e}", file=sys.stderr)
        return EXIT_NO_SPACE
    except StoppedInSetup as e:
        print(f"reviveformer {args.command}: stopped: {e}", file=sys.stderr)
        return e.exit_status
    except KeyboardInterrupt:
        print(f"reviveformer {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # the reader of our output went away (`reviveformer recipes | head`): it has what it wanted. Python
        # would fail again flushing stdout at exit, so stdout points at nothing from here on; the status is a
        # shell's for a writer ended by SIGPIPE
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE


if __name__ == "__main__":
    raise SystemExit(main())
