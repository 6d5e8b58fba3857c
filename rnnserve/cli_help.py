"""How ``rnnserve`` help screens are laid out: the plain layout most command-line tools use.

typer's rich layout gives every parameter a type column, flags included, so options that take
no value read ``--force <bool>`` and ``--help <bool>``; it cuts long help text to fit its
columns and reads square brackets in help text (``hf:NAME[:CONFIG][@SPLIT]``) as markup. Its
usage line writes a required argument as ``{checkpoint}``. The ``rnnserve`` app therefore uses
typer's plain layout (``HELP_LAYOUT``), where a flag shows no value and help text wraps, and
its commands are ``Command``s, whose usage line names arguments the usual way.

Invariant: a ``Command``'s arguments have an upper-case metavar (``CHECKPOINT``), the same word
in the usage line and in the Arguments list; it is required there as ``CHECKPOINT`` and
optional as ``[CHECKPOINT]``.
"""

from __future__ import annotations

from typing import Any

import typer
import typer.core

#: Keyword arguments for ``typer.Typer`` that select the plain layout (no rich markup).
HELP_LAYOUT: dict[str, Any] = {
    "rich_markup_mode": None,
    "context_settings": {"help_option_names": ["-h", "--help"], "max_content_width": 100},
}


class Command(typer.core.TyperCommand):
    """A typer command whose arguments read ``NAME`` / ``[NAME]`` in the usage line."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for param in self.params:
            if isinstance(param, typer.core.TyperArgument) and param.metavar is None:
                param.metavar = param.name.upper()

    def collect_usage_pieces(self, ctx: typer.Context) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if isinstance(param, typer.core.TyperArgument):
                piece = param.metavar if param.required else f"[{param.metavar}]"
                pieces.append(piece if param.nargs == 1 else f"{piece}...")
        return pieces
