"""What the user sees: each stage's start and end, notes on long steps, where artifacts went."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.markup import escape


class Progress:
    """Prints stage banners and notes; keeps each stage's wall time for the summary."""

    def __init__(self, console: Console | None = None):
        self.console = console or Console(highlight=False)
        self.timings: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        self.console.print(f"[bold cyan]▶ {name}[/]")
        start = time.perf_counter()
        try:
            yield
        except BaseException:
            self.console.print(
                f"[bold red]✗ {name} failed after {time.perf_counter() - start:.1f} s[/]"
            )
            raise
        self.timings[name] = time.perf_counter() - start
        self.console.print(f"[bold green]✓ {name}[/] ({self.timings[name]:.1f} s)")

    def note(self, message: str) -> None:
        """One line of plain text (brackets in it are text, not markup)."""
        self.console.print(f"  {escape(message)}", soft_wrap=True)

    def artifact(self, what: str, where: str) -> None:
        self.console.print(f"  {what}: [underline]{where}[/]", soft_wrap=True)
