"""The ``segzoo`` command: list models, segment images, try them in a browser, evaluate, manage weights and datasets.

One module per group of commands, as users see them: ``models`` (list, info),
``predict``, ``evaluate`` (eval, prepare), ``weights`` (download, pin,
verify, convert, inspect), ``export`` and ``demo``. Other packages add commands through the
``segzoo.commands`` entry-point group (``segzoo.training`` adds ``train``): each names a
``register(commands)`` function, as the modules here have. A user error ends with one ``segzoo: error:``
line and exit status 1, never a traceback (``--verbose`` adds it, for reports). Weights that cannot be fetched
(offline, a share page) get the command's own way around it: the ``weights_hint(args)`` a command sets as a
parser default, so that a hint names only options of the command that printed it.
"""

from __future__ import annotations

import argparse
import logging
import sys
from importlib.metadata import entry_points
from typing import NoReturn

from segzoo.cli import demo, evaluate, export, models, predict, weights
from segzoo.cli.options import available_device
from segzoo.cli.predict import DEFAULT_MODEL, sample_image_path

__all__ = ["DEFAULT_MODEL", "build_parser", "main", "sample_image_path"]

log = logging.getLogger("segzoo")

# The entry-point group of commands that other installed packages add to ``segzoo``.
COMMAND_PLUGINS = "segzoo.commands"


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors end as every other user error does: one line, exit status 1."""

    def error(self, message: str) -> NoReturn:
        self.exit(1, f"segzoo: error: {message} (see '{self.prog} --help')\n")


VERBOSE_HELP = "log what happens (downloads, cache hits) and show tracebacks of errors"


def build_parser() -> argparse.ArgumentParser:
    """The ``segzoo`` parser; ``-v`` works before or after the command, and every ``--device`` is checked."""
    parser = _Parser(prog="segzoo", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help=VERBOSE_HELP)
    commands = parser.add_subparsers(dest="command", required=True)
    for group in (models, predict, evaluate, weights, export, demo):
        group.register(commands)
    for plugin in entry_points(group=COMMAND_PLUGINS):
        plugin.load()(commands)
    for command in commands.choices.values():
        options = command._option_string_actions
        if "-v" not in options and "--verbose" not in options:
            # SUPPRESS: without the flag after the command, the value given before it stands
            command.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help=VERBOSE_HELP)
        if "--device" in options and options["--device"].type is None:
            options["--device"].type = available_device  # plugin commands' too: one check, one message
    return parser


# The user errors segzoo defines, by module: (module, class name)
_SEGZOO_USER_ERRORS = (
    ("segzoo.zoo.catalog", "UnknownModelError"),
    ("segzoo.weights.errors", "WeightsError"),
    ("segzoo.datasets.folders", "DatasetError"),
)


def _loaded_class(module: str, name: str) -> type[BaseException] | None:
    """The class ``module.name`` if the module is loaded: an error of a module never imported was never raised,
    so a command that fails early (an unknown model name) imports nothing more to report it."""
    loaded = sys.modules.get(module)
    return None if loaded is None else getattr(loaded, name)


def _user_errors() -> tuple[type[BaseException], ...]:
    """The exceptions that mean the input or the environment is wrong (an optional extra missing included)."""
    defined = (_loaded_class(module, name) for module, name in _SEGZOO_USER_ERRORS)
    return (*(cls for cls in defined if cls is not None), OSError, ValueError, ImportError)


def _message(err: BaseException, args: argparse.Namespace) -> str:
    """The error's message, and for weights that could not be fetched, the command's hint."""
    unavailable = _loaded_class("segzoo.weights.errors", "WeightsUnavailableError")
    hint = getattr(args, "weights_hint", None)
    if hint is not None and unavailable is not None and isinstance(err, unavailable):
        return f"{err}\n{hint(args)}"
    return str(err)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if hasattr(args, "models") and getattr(args, "all", False) == bool(args.models):
        parser.error(f"{args.command}: name models or pass --all (not both)")
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    try:
        return args.run(args)
    except _user_errors() as err:
        if args.verbose:
            log.exception("traceback:")
        print(f"segzoo: error: {_message(err, args)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("segzoo: interrupted", file=sys.stderr)
        return 130
