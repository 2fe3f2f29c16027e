"""`spanpref space ...`: deploy the annotation app or the arena as a Hugging Face Space. Imported at the end of
`spanpref.cli` and registering itself there, like `spanpref eval`; nothing heavy is imported until it runs."""

from __future__ import annotations

from spanpref import cli
from spanpref.cli import Command
from spanpref.ui.deploy import SpaceDeployConfig


def run_space_deploy(args: SpaceDeployConfig) -> None:
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


cli.register(
    ("space", "deploy"),
    Command(
        "deploy",
        "build a self-contained Space (app, README, a spanpref wheel; no torch) and create it on the Hub",
        SpaceDeployConfig,
        run_space_deploy,
    ),
)
