"""`spanpref annotate | arena`: serve the annotation app or the arena for a dataset repo on 127.0.0.1."""

from __future__ import annotations

from spanpref.commands.base import command
from spanpref.ui.annotate import AnnotateConfig
from spanpref.ui.arena import ArenaConfig


@command("annotate", "serve the span annotation app for a dataset repo on 127.0.0.1", AnnotateConfig)
def annotate(config: AnnotateConfig) -> None:
    from spanpref.ui.annotate import run_annotate

    report = run_annotate(config)
    if config.export_only:
        print(report.summary() if report else "nothing to export yet")


@command("arena", "serve the arena (blind pairwise judging, leaderboard) on 127.0.0.1", ArenaConfig)
def arena(config: ArenaConfig) -> None:
    from spanpref.ui.arena import run_arena

    exported = run_arena(config)
    if config.export_only:
        print(f"exported {exported} judgments to {config.folder}")


COMMANDS = [annotate, arena]
