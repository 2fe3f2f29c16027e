"""`spanpref space deploy {annotate,arena} ORG/SPACE --data ORG/DATASET`: one command from checkout to Space."""

from __future__ import annotations

from spanpref.commands.base import command
from spanpref.ui.deploy import SpaceDeployConfig


@command(
    "space deploy",
    "build a self-contained Space (app, README, a spanpref wheel; no torch) and create it on the Hub",
    SpaceDeployConfig,
)
def deploy(args: SpaceDeployConfig) -> None:
    from spanpref.ui.deploy import deploy_space

    result = deploy_space(args)
    if args.dry_run:
        files = sorted(p.relative_to(result.folder).as_posix() for p in result.folder.rglob("*") if p.is_file())
        print(f"wrote the Space folder {result.folder}: {', '.join(files)}")
        print("a deploy would make these calls:")
    else:
        print(f"deployed {args.app} to {result.url} with these calls:")
    for call in result.calls:
        print(f"  {call}")
    for note in result.notes:
        print(f"note: {note}")


COMMANDS = [deploy]
