"""`spanpref space deploy`: turn one of the two apps into a Hugging Face Space in one command.

The Space folder is self-contained: the app's `app.py` and `README.md` (the Spaces YAML header) from this checkout's
`spaces/<app>/`, a spanpref wheel built from this checkout under `wheels/`, and a `requirements.txt` that installs
that wheel with the `ui` extra only (gradio, datasets, huggingface_hub; no torch). The wheel is referenced by its
URL inside the Space itself: a Space's build installs `requirements.txt` before the rest of the repository is in
place, so a relative path would not resolve there.

The Hub side is a list of `HubCall`s, made through `huggingface_hub.HfApi` in this order: create the Space, set its
variables and secrets and (optionally) its hardware and persistent storage, so the first build starts configured,
then upload the folder. `--dry-run FOLDER` writes the folder and returns the calls without making any.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from spanpref.repo import HubAuthError
from spanpref.ui.common import STORAGE_MOUNT

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SpaceApp:
    """What differs between the two Spaces: their folder in `spaces/` and the names of their variables."""

    folder: str
    data_variable: str
    push_variable: str
    allowed_variable: str


SPACE_APPS = {
    "annotate": SpaceApp("annotate", "SPANPREF_ANNOTATE_DATA", "SPANPREF_ANNOTATE_PUSH", "SPANPREF_ANNOTATORS"),
    "arena": SpaceApp("arena", "SPANPREF_ARENA_DATA", "SPANPREF_ARENA_PUSH", "SPANPREF_JUDGES"),
}


@dataclass(kw_only=True)
class SpaceDeployConfig:
    app: str = field(metadata={"help": f"which app: {' or '.join(SPACE_APPS)}", "positional": True})
    space_id: str = field(
        metadata={"help": "the Space to create or update, e.g. my-org/feedback-space", "positional": True}
    )
    data: str = field(metadata={"help": "Hub dataset id the app reads (and, by default, pushes its results to)"})
    push: str | None = field(default=None, metadata={"help": "Hub dataset id to push results to (default: --data)"})
    private: bool = field(default=False, metadata={"help": "create the Space as private"})
    hardware: str | None = field(
        default=None, metadata={"help": "Space hardware to request, e.g. cpu-upgrade (default: the free cpu-basic)"}
    )
    storage: str | None = field(
        default=None,
        metadata={
            "help": "persistent storage for the app's database: small, "
            "medium or large (default: none; a restart then keeps only "
            "what was pushed to the dataset)"
        },
    )
    allowed: list[str] | None = field(
        default=None, metadata={"help": "Hugging Face names allowed to annotate or judge (default: anyone signed in)"}
    )
    space_token: str | None = field(
        default=None,
        metadata={
            "help": "token stored as the Space's HF_TOKEN secret, "
            "with write access to the dataset (default: "
            "$SPANPREF_SPACE_TOKEN; without one the Space cannot "
            "push and the deploy says so)"
        },
    )
    token: str | None = field(
        default=None,
        metadata={"help": "Hub token for the deploy itself (default: the one saved by `hf auth login`, or HF_TOKEN)"},
    )
    wheel: str | None = field(
        default=None, metadata={"help": "a spanpref wheel to ship instead of building one from this checkout"}
    )
    dry_run: str | None = field(
        default=None,
        metadata={
            "help": "write the Space folder here and print the Hub calls a deploy would make, without making them"
        },
    )

    def __post_init__(self) -> None:
        from huggingface_hub import SpaceHardware, SpaceStorage

        if self.app not in SPACE_APPS:
            raise ValueError(f"unknown app {self.app!r}; choose from {sorted(SPACE_APPS)}")
        if self.space_id.count("/") != 1 or not all(self.space_id.split("/")):
            raise ValueError(f"the Space id should look like ORG/NAME, got {self.space_id!r}")
        if not self.data or self.data.count("/") != 1:
            raise ValueError(f"--data should be a Hub dataset id like ORG/NAME, got {self.data!r}")
        storages = [s.value for s in SpaceStorage]
        if self.storage is not None and self.storage not in storages:
            raise ValueError(f"unknown storage {self.storage!r}; choose from {storages}")
        hardware = [h.value for h in SpaceHardware]
        if self.hardware is not None and self.hardware not in hardware:
            raise ValueError(f"unknown hardware {self.hardware!r}; choose from {hardware}")


@dataclass(frozen=True)
class HubCall:
    """One `HfApi` method call of a deploy. `secret` names a keyword or positional value printed as '***'."""

    method: str
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    secret: bool = False

    def __str__(self) -> str:
        args = [repr(a) for a in self.args]
        if self.secret:
            args[-1] = "'***'"
        return f"HfApi.{self.method}({', '.join(args + [f'{k}={v!r}' for k, v in self.kwargs.items()])})"

    def run(self, api: Any) -> Any:
        return getattr(api, self.method)(*self.args, **self.kwargs)


@dataclass
class DeployResult:
    folder: Path
    calls: list[HubCall]
    url: str
    notes: list[str]


def checkout_root() -> Path:
    """The source checkout spanpref is running from (setup.cfg beside src/)."""
    root = Path(__file__).resolve().parents[3]
    if not (root / "setup.cfg").is_file() or not (root / "spaces").is_dir():
        raise FileNotFoundError(
            f"`spanpref space deploy` builds the Space from a source checkout of spanpref (with "
            f"setup.cfg and spaces/), but spanpref runs from {root}; run it from a clone"
        )
    return root


def build_wheel(out_dir: Path, root: Path | None = None) -> Path:
    """A spanpref wheel built from the checkout, without touching it: the sources are copied to a temporary folder
    first, since an in-tree build leaves build/ and egg-info behind."""
    root = root or checkout_root()
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="spanpref-wheel-") as tmp:
        src = Path(tmp) / "spanpref"
        shutil.copytree(root / "src", src / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        for name in ("setup.cfg", "pyproject.toml", "README.md"):
            shutil.copy2(root / name, src / name)
        built = Path(tmp) / "dist"
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(built),
            str(src),
        ]
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"building the spanpref wheel failed:\n{done.stdout}{done.stderr}")
        (wheel,) = built.glob("spanpref-*.whl")
        return Path(shutil.copy2(wheel, out_dir / wheel.name))


def wheel_url(space_id: str, wheel_name: str) -> str:
    """Where the Space's build downloads the wheel from: the file in the Space repo (HF_ENDPOINT respected)."""
    from huggingface_hub import constants

    return f"{constants.ENDPOINT}/spaces/{space_id}/resolve/main/wheels/{wheel_name}"


def gradio_requirement() -> str:
    """The `gradio[oauth]` pin, from the ui extra of the installed spanpref (one source of the version)."""
    import gradio

    return f"gradio[oauth]=={gradio.__version__}"


def build_space_folder(config: SpaceDeployConfig, folder: str | os.PathLike) -> Path:
    """Write the self-contained Space folder (app.py, README.md, requirements.txt, wheels/) into `folder`, which
    must be missing or empty."""
    from huggingface_hub import SpaceCard

    root = checkout_root()
    app = SPACE_APPS[config.app]
    folder = Path(folder)
    if folder.exists() and any(folder.iterdir()):
        raise FileExistsError(f"{folder} is not empty; give a new or empty folder for the Space")
    folder.mkdir(parents=True, exist_ok=True)
    source = root / "spaces" / app.folder
    shutil.copy2(source / "app.py", folder / "app.py")
    card = SpaceCard.load(source / "README.md")
    if config.hardware:
        card.data.suggested_hardware = config.hardware
    if config.storage:
        card.data.suggested_storage = config.storage
    card.save(folder / "README.md")
    wheels = folder / "wheels"
    if config.wheel:
        wheels.mkdir()
        wheel = Path(shutil.copy2(config.wheel, wheels / Path(config.wheel).name))
    else:
        wheel = build_wheel(wheels, root)
    (folder / "requirements.txt").write_text(
        "# Written by `spanpref space deploy`. spanpref comes from the wheel built from its checkout and uploaded\n"
        "# with this Space (wheels/), with the ui extra only: no torch. gradio's version is also `sdk_version` in\n"
        "# README.md; [oauth] adds what 'Sign in with Hugging Face' needs.\n"
        f"spanpref[ui] @ {wheel_url(config.space_id, wheel.name)}\n"
        f"{gradio_requirement()}\n",
        encoding="utf-8",
    )
    logger.info("wrote the %s Space folder to %s", config.app, folder)
    return folder


def plan_calls(config: SpaceDeployConfig, folder: Path) -> tuple[list[HubCall], list[str]]:
    """The `HfApi` calls of a deploy, and notes for the user (what the deploy leaves for them to do)."""
    from huggingface_hub import SpaceHardware, Volume

    app = SPACE_APPS[config.app]
    sid = config.space_id
    calls = [
        HubCall(
            "create_repo",
            (sid,),
            {"repo_type": "space", "space_sdk": "gradio", "private": config.private, "exist_ok": True},
        )
    ]
    variables = {app.data_variable: config.data, app.push_variable: config.push or config.data}
    if config.allowed:
        variables[app.allowed_variable] = ",".join(config.allowed)
    calls += [HubCall("add_space_variable", (sid, k, v)) for k, v in variables.items()]
    notes = []
    space_token = config.space_token or os.environ.get("SPANPREF_SPACE_TOKEN")
    if space_token:
        calls.append(HubCall("add_space_secret", (sid, "HF_TOKEN", space_token), secret=True))
    else:
        notes.append(
            f"the Space has no HF_TOKEN secret, so it cannot push to {config.push or config.data}: add a "
            f"token with write access to that dataset as the secret HF_TOKEN in the Space's settings, or "
            f"deploy again with --space-token"
        )
    if config.storage:
        # huggingface_hub 2.x mounts storage buckets as volumes (the fixed storage tiers went with 1.x); the bucket
        # holds the app's database (password hashes, unpushed work), so it is private whatever the Space is
        bucket = f"{sid}-state"
        calls.append(HubCall("create_bucket", (bucket,), {"private": True, "exist_ok": True}))
        calls.append(
            HubCall(
                "set_space_volumes",
                (sid,),
                {"volumes": [Volume(type="bucket", source=bucket, mount_path=STORAGE_MOUNT)]},
            )
        )
    if config.hardware:
        calls.append(HubCall("request_space_hardware", (sid, SpaceHardware(config.hardware))))
    if config.private:
        notes.append(
            "the Space is private: its build downloads the spanpref wheel from the Space itself, which "
            "needs the build to read the private repo; if the build log shows a 401/404 for the wheel, "
            "make the Space public or host the wheel where the build can read it"
        )
    calls.append(
        HubCall(
            "upload_folder",
            (),
            {
                "repo_id": sid,
                "repo_type": "space",
                "folder_path": str(folder),
                "commit_message": f"spanpref space deploy {config.app}",
                "ignore_patterns": [".*", "**/.*"],
                # a new wheel replaces the old one (names carry the version)
                "delete_patterns": ["wheels/*.whl"],
            },
        )
    )
    return calls, notes


def deploy_space(config: SpaceDeployConfig, *, api: Any = None) -> DeployResult:
    """Build the Space folder and, unless `config.dry_run`, make the Hub calls. Without a token (and not a dry
    run) nothing is built or called: `HubAuthError` says what to do."""
    from huggingface_hub import constants, get_token

    url = f"{constants.ENDPOINT}/spaces/{config.space_id}"
    if config.dry_run:
        folder = build_space_folder(config, config.dry_run)
        calls, notes = plan_calls(config, folder)
        return DeployResult(folder, calls, url, notes)
    token = config.token or get_token()
    if not token:
        raise HubAuthError(
            "no Hugging Face token: run `hf auth login` (or set HF_TOKEN) with a token that can "
            "create Spaces (https://huggingface.co/settings/tokens), then deploy again; "
            "`--dry-run FOLDER` shows the Space and the calls without one"
        )
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi(token=token)
    with tempfile.TemporaryDirectory(prefix="spanpref-space-") as tmp:
        folder = build_space_folder(config, Path(tmp) / config.app)
        calls, notes = plan_calls(config, folder)
        for call in calls:
            logger.info("%s", call)
            call.run(api)
    return DeployResult(folder, calls, url, notes)
