"""`spanpref reproduce`: the paper's Table-2 protocol on a dataset repo (see `spanpref.reproduce`)."""

from __future__ import annotations

from dataclasses import dataclass

from spanpref.commands.base import command, option
from spanpref.reproduce import ReproduceConfig


@dataclass(kw_only=True)
class ReproduceOptions:
    plan: bool = option("list the training runs the settings ask for, and stop", default=False)


@command(
    "reproduce",
    "the paper's Table 2 on a dataset repo: base, a*-SFT and five pair constructions x four losses x a learning-rate "
    "grid, selected on validation, judged, Elo with intervals (profiles: --config recipes/reproduce/{cpu,gpu,tiny}.yaml)",
    ReproduceConfig,
    ReproduceOptions,
)
def reproduce(config: ReproduceConfig, options: ReproduceOptions) -> None:
    from spanpref.reproduce import STAGES, Reproduction

    run = Reproduction(config)
    if options.plan:
        runs = run.plan()
        print(f"{len(runs)} preference runs (and one a*-SFT run) into {run.models}:")
        for r in runs:
            print(f"  {r.run_id:36s} from {r.start}  ({r.recipe})")
        print(f"judges: {', '.join(run.judges())}")
        return
    state = run.run_all()
    print((run.report / "table2.md").read_text(encoding="utf-8"))
    total = sum(state.done.values())
    lines = ["Time per stage:"] + [f"  {s:10s} {state.done[s]:8.0f} s" for s in STAGES if s in state.done]
    lines += [
        f"  {'total':10s} {total:8.0f} s",
        "",
        "Where things are:",
        f"  dataset repo (every config)   {run.data}",
        f"  models                        {run.models}/{{sft,<construction>/<loss>-lr<rate>}}",
        f"  selection on validation       {run.selection_path}",
        f"  Table 2, its JSON and a plot  {run.report}/table2.md, table2.json, ratings.png",
    ]
    print("\n".join(lines))


COMMANDS = [reproduce]
