"""One module per command; each has HELP, add_arguments(parser) and run(args) -> exit status."""

from reviveformer.commands import audit, compare, recipes, report, strip, sweep, train

COMMANDS = {
    "train": train,
    "audit": audit,
    "strip": strip,
    "compare": compare,
    "sweep": sweep,
    "report": report,
    "recipes": recipes,
}
