"""How every jaxsae verb reads its arguments: tyro, from a dataclass.

Why tyro (over hand-written argparse, draccus or jsonargparse): the flags, their types (Literal choices,
`X | None`), nesting (`--sae.k`) and help come from the config dataclasses and their field docstrings, so a new
setting is one typed, documented field and nothing else; it reads a dict with known keys as nested flags (the
architecture's `--hparams.aux_coeff`), takes an instance as the defaults (a config file's settings, then flags
on top), needs nothing imported into the schema modules, and is actively kept (1.x). Config files stay ours
(`jaxsae.train.config_files`: TOML, YAML, JSON), so existing configs read as before.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from typing import Any

import tyro

from jaxsae.errors import ConfigError
from jaxsae.validation import checked, deferred_checks


def parse_flags(cls: type, argv: Sequence[str], prog: str, *, default: Any = None,
                registry: tyro.constructors.ConstructorRegistry | None = None) -> Any:
    """`cls` from `argv`: positionals, then flags named as the fields (`--batch_size`; `--batch-size` works
    too), nested ones dotted (`--sae.k`), booleans as `--x/--no_x`, `default` (an instance) for the defaults.

    Built inside `deferred_checks()`: the caller checks the result (`jaxsae.validation.checked`). `--help`
    prints and exits 0 as usual; a malformed or unknown flag raises ConfigError with tyro's message on one line.
    """
    stderr = io.StringIO()
    try:
        with deferred_checks(), registry or tyro.constructors.ConstructorRegistry(), \
                contextlib.redirect_stderr(stderr):
            return tyro.cli(cls, args=list(argv), prog=prog, default=default, use_underscores=True)
    except SystemExit as e:
        if not e.code:
            raise
        raise ConfigError(f"{one_line(stderr.getvalue())} (see {prog} --help)") from None


def parse(cls: type, argv: Sequence[str], prog: str,
          registry: tyro.constructors.ConstructorRegistry | None = None) -> Any:
    """A verb's arguments (`cls`) from `argv` (`parse_flags`), checked."""
    return checked(parse_flags(cls, argv, prog, registry=registry))


def one_line(message: str) -> str:
    """tyro's boxed error as one line: each section's first line and the flags it names, without help text."""
    sections: list[list[str]] = [[]]
    for raw in message.splitlines():
        line = raw.strip()
        if not line or line[0] in "╭╰+":  # the box's title and bottom lines (Unicode, or ASCII where the
            continue                     # stream's encoding is not UTF-8)
        line = line.strip("│|").strip()
        if line and set(line) <= {"─", "-"}:
            sections.append([])
        elif line:
            sections[-1].append(line)
    parts = []
    for lines in sections:
        if not lines or lines[0].startswith(("Argument helptext", "For full helptext")):
            continue
        flags = [line for line in lines[1:] if line.startswith("-")]
        parts.append(" ".join([lines[0], ", ".join(flags)]).strip())
    return "; ".join(parts) or message.strip()
