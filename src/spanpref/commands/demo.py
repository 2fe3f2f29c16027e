"""`spanpref demo`: the main job, end to end on the bundled model and data (see `spanpref.demo`)."""

from __future__ import annotations

from spanpref.commands.base import command
from spanpref.demo import DemoConfig


@command(
    "demo",
    "end to end on the bundled model and data: feedback -> chains -> pairs -> SFT/APO/DPO -> Elo table",
    DemoConfig,
)
def demo(config: DemoConfig) -> None:
    from spanpref.demo import Demo

    demo = Demo(config)
    state = demo.run_all()
    report = demo.report / "report.md"
    if report.is_file():
        print(report.read_text(encoding="utf-8").split("## Agreement")[0].rstrip())
    print(demo.closing_text(state))


COMMANDS = [demo]
