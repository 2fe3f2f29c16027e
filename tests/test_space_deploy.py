"""`spanpref space deploy`: the self-contained Space folder, the Hub calls of a deploy (recorded at the HfApi
boundary: no local server accepts uploads), the error without a token, a core install without torch, and (slow)
the folder installed from its own requirements.txt in a fresh venv and serving the page to a real Chromium."""

from __future__ import annotations

import configparser
import os
import subprocess
import sys
import threading
import time
import urllib.request
import zipfile
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from spanpref.cli import main
from spanpref.repo import HubAuthError
from spanpref.ui.deploy import SpaceDeployConfig, deploy_space
from tests._browser import chromium, free_port, needs_chromium
from tests.conftest import RecordingHfApi
from tests.test_annotate import make_repo

ROOT = Path(__file__).parents[1]
HEAVY = ("torch", "trl", "peft", "accelerate")  # gigabytes; transformers without torch (the CLI parser) is not


class RecordingSpaceApi(RecordingHfApi):
    """The Hub's write API for Spaces, recorded. `upload_folder` also keeps what the folder held at that moment
    (the deploy's folder is temporary)."""

    def upload_folder(self, **kwargs):
        folder = Path(kwargs["folder_path"])
        self.uploaded = {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
        return super().upload_folder(**kwargs)

    def __getattr__(self, method):
        if method.startswith("_") or method not in {
            "add_space_variable",
            "add_space_secret",
            "create_bucket",
            "set_space_volumes",
            "request_space_hardware",
        }:
            raise AttributeError(method)
        return lambda *args, **kwargs: self.calls.append((method, args, kwargs))


def _header(readme: Path) -> dict:
    return yaml.safe_load(readme.read_text(encoding="utf-8").split("---")[1])


def _requires(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        return [
            line.split(":", 1)[1].strip()
            for line in z.read(meta).decode().splitlines()
            if line.startswith("Requires-Dist:")
        ]


def _core_and_ui(requires: list[str]) -> list[str]:
    return [r for r in requires if "extra ==" not in r or 'extra == "ui"' in r]


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory) -> tuple[Path, str]:
    folder = tmp_path_factory.mktemp("space") / "annotate-space"
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "from spanpref.cli import main; raise SystemExit(main())",
            "space",
            "deploy",
            "annotate",
            "org/feedback-space",
            "--data",
            "org/feedback",
            "--allowed",
            "alice",
            "bob",
            "--storage",
            "small",
            "--dry-run",
            str(folder),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        check=True,
    )
    return folder, out.stdout


def test_the_dry_run_folder_is_a_self_contained_space(dry_run):
    import gradio

    folder, printed = dry_run
    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    (wheel_name,) = [f.split("/")[1] for f in files if f.startswith("wheels/")]
    assert files == ["README.md", "app.py", "requirements.txt", f"wheels/{wheel_name}"]
    assert wheel_name.startswith("spanpref-") and wheel_name.endswith("-py3-none-any.whl")
    assert (folder / "app.py").read_text() == (ROOT / "spaces" / "annotate" / "app.py").read_text()
    header = _header(folder / "README.md")
    assert header["sdk"] == "gradio" and header["sdk_version"] == gradio.__version__ and header["hf_oauth"] is True
    assert header["app_file"] == "app.py" and header["suggested_storage"] == "small"
    lines = [ln for ln in (folder / "requirements.txt").read_text().splitlines() if ln and not ln.startswith("#")]
    url = f"https://huggingface.co/spaces/org/feedback-space/resolve/main/wheels/{wheel_name}"
    assert lines == [f"spanpref[ui] @ {url}", f"gradio[oauth]=={gradio.__version__}"]
    # the wheel holds the apps (their page assets too) and needs nothing heavy with the ui extra
    with zipfile.ZipFile(folder / "wheels" / wheel_name) as z:
        names = set(z.namelist())
    assert {"spanpref/ui/annotate.py", "spanpref/ui/arena.py", "spanpref/ui/assets/annotate.js"} <= names
    needed = _core_and_ui(_requires(folder / "wheels" / wheel_name))
    assert any(r.startswith("gradio") for r in needed)
    assert not [r for r in needed if r.split()[0].split("[")[0].split("=")[0].split("<")[0] in HEAVY]
    # the calls a deploy would make, printed, in order
    calls = [ln.strip() for ln in printed.splitlines() if ln.startswith("  HfApi.")]
    assert [c.split("(")[0] for c in calls] == [
        "HfApi.create_repo",
        "HfApi.add_space_variable",
        "HfApi.add_space_variable",
        "HfApi.add_space_variable",
        "HfApi.create_bucket",
        "HfApi.set_space_volumes",
        "HfApi.upload_folder",
    ]
    assert calls[0] == (
        "HfApi.create_repo('org/feedback-space', repo_type='space', space_sdk='gradio', private=False, exist_ok=True)"
    )
    assert "HfApi.add_space_variable('org/feedback-space', 'SPANPREF_ANNOTATORS', 'alice,bob')" in calls
    assert "no HF_TOKEN secret" in printed


def test_a_deploy_makes_exactly_these_hub_calls(tmp_path, monkeypatch, dry_run):
    from huggingface_hub import SpaceHardware, Volume

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    api = RecordingSpaceApi()
    folder, _ = dry_run
    (wheel,) = (folder / "wheels").glob("*.whl")
    cfg = SpaceDeployConfig(
        app="arena",
        space_id="org/arena-space",
        data="org/evals",
        push="org/votes",
        private=True,
        hardware="cpu-upgrade",
        storage="medium",
        allowed=["ann"],
        token="hf_deploy",
        space_token="hf_space_secret",
        wheel=str(wheel),
    )
    result = deploy_space(cfg, api=api)
    upload = api.calls[-1]
    assert api.calls[:-1] == [
        (
            "create_repo",
            "org/arena-space",
            {"repo_type": "space", "space_sdk": "gradio", "private": True, "exist_ok": True},
        ),
        ("add_space_variable", ("org/arena-space", "SPANPREF_ARENA_DATA", "org/evals"), {}),
        ("add_space_variable", ("org/arena-space", "SPANPREF_ARENA_PUSH", "org/votes"), {}),
        ("add_space_variable", ("org/arena-space", "SPANPREF_JUDGES", "ann"), {}),
        ("add_space_secret", ("org/arena-space", "HF_TOKEN", "hf_space_secret"), {}),
        ("create_bucket", ("org/arena-space-state",), {"private": True, "exist_ok": True}),
        (
            "set_space_volumes",
            ("org/arena-space",),
            {"volumes": [Volume(type="bucket", source="org/arena-space-state", mount_path="/data")]},
        ),
        ("request_space_hardware", ("org/arena-space", SpaceHardware.CPU_UPGRADE), {}),
    ]
    assert upload[0] == "upload_folder" and upload[1] == "org/arena-space"
    kw = upload[2]
    assert (kw["repo_type"], kw["delete_patterns"]) == ("space", ["wheels/*.whl"])
    assert sorted(api.uploaded) == ["README.md", "app.py", "requirements.txt", f"wheels/{wheel.name}"]
    assert api.uploaded["app.py"] == (ROOT / "spaces" / "arena" / "app.py").read_bytes()
    assert api.uploaded[f"wheels/{wheel.name}"] == wheel.read_bytes()
    assert b"org/arena-space/resolve/main/wheels/" in api.uploaded["requirements.txt"]
    assert _header_bytes(api.uploaded["README.md"])["suggested_hardware"] == "cpu-upgrade"
    assert result.url.endswith("/spaces/org/arena-space")
    assert any("private" in n for n in result.notes)
    # the secret is never printed
    assert "hf_space_secret" not in "\n".join(map(str, result.calls)) and "'***'" in str(result.calls[4])


def _header_bytes(data: bytes) -> dict:
    return yaml.safe_load(data.decode().split("---")[1])


def test_without_a_token_the_deploy_says_what_to_do_and_calls_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))  # no saved token either
    api = RecordingSpaceApi()
    cfg = SpaceDeployConfig(app="annotate", space_id="org/s", data="org/d")
    with pytest.raises(HubAuthError, match="hf auth login"):
        deploy_space(cfg, api=api)
    assert api.calls == []
    assert main(["space", "deploy", "annotate", "org/s", "--data", "org/d"]) == 2
    err = capsys.readouterr().err
    assert "no Hugging Face token" in err and "--dry-run" in err


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"app": "chat"}, "unknown app 'chat'; choose from"),
        ({"storage": "huge"}, "unknown storage 'huge'"),
        ({"hardware": "tpu-9000"}, "unknown hardware"),
        ({"space_id": "no-org"}, "ORG/NAME"),
    ],
)
def test_bad_choices_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SpaceDeployConfig(**{"app": "annotate", "space_id": "org/s", "data": "org/d", **kwargs})


def test_the_core_and_ui_requirements_bring_no_torch():
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    core = cfg["options"]["install_requires"].split()
    extras = {k: v.split() for k, v in cfg["options.extras_require"].items()}
    name = lambda r: r.split("[")[0].split("=")[0].split("<")[0].split(">")[0]  # noqa: E731
    assert not [r for r in core + extras["ui"] if name(r) in HEAVY]
    assert "torch==2.13.0" in extras["train"] and any(name(r) == "trl" for r in extras["train"])
    # and the apps really import none of it (a fresh interpreter: this one has torch loaded by other tests)
    code = (
        "import sys, spanpref.ui.annotate, spanpref.ui.arena, spanpref.evaluation.elo; "
        f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({list(HEAVY)!r})))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


class _SpaceFiles(SimpleHTTPRequestHandler):
    """Serves a Space folder at the Hub's resolve URLs (/spaces/ORG/NAME/resolve/main/<path>), as the Space's build
    downloads the wheel from the Hub."""

    def translate_path(self, path: str) -> str:
        parts = path.split("?")[0].split("/")
        return super().translate_path("/" + "/".join(parts[6:]))

    def log_message(self, *args) -> None:
        pass


@pytest.mark.slow
@pytest.mark.browser
@needs_chromium
def test_the_space_installs_from_its_requirements_in_a_fresh_venv_and_serves_the_page(tmp_path):
    """The Space folder, built for a Hub on 127.0.0.1 (HF_ENDPOINT), installed from its own requirements.txt into
    a new venv (the wheel from the 'Space', the rest from the package index), with no torch; then `python app.py`
    serves the annotation page on a local dataset folder, and Chromium shows it."""
    hub = ThreadingHTTPServer(("127.0.0.1", 0), partial(_SpaceFiles, directory=str(tmp_path / "space")))
    threading.Thread(target=hub.serve_forever, daemon=True).start()
    endpoint = f"http://127.0.0.1:{hub.server_address[1]}"
    env = {**os.environ, "HF_ENDPOINT": endpoint, "HF_HUB_OFFLINE": "1"}
    subprocess.run(
        [
            sys.executable,
            "-c",
            "from spanpref.cli import main; raise SystemExit(main())",
            "space",
            "deploy",
            "annotate",
            "org/feedback-space",
            "--data",
            "org/feedback",
            "--dry-run",
            str(tmp_path / "space"),
        ],
        env=env,
        check=True,
        capture_output=True,
    )
    assert endpoint in (tmp_path / "space" / "requirements.txt").read_text()
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    started = time.monotonic()
    install = subprocess.run(
        [str(py), "-m", "pip", "install", "-q", "-r", "requirements.txt"],
        cwd=tmp_path / "space",
        capture_output=True,
        text=True,
        timeout=900,
    )
    hub.shutdown()
    assert install.returncode == 0, install.stdout + install.stderr
    print(f"fresh venv install: {time.monotonic() - started:.0f} s")
    probe = f"import importlib.util as u; print([m for m in {HEAVY!r} if u.find_spec(m)])"
    assert subprocess.run([str(py), "-c", probe], capture_output=True, text=True, check=True).stdout.strip() == "[]"

    make_repo(tmp_path / "data")
    port = free_port()
    app_env = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "GRADIO_ANALYTICS_ENABLED": "False",
        "GRADIO_SERVER_NAME": "127.0.0.1",
        "GRADIO_SERVER_PORT": str(port),
        "SPANPREF_ANNOTATE_DATA": str(tmp_path / "data"),
        "SPANPREF_STATE_DIR": str(tmp_path / "state"),
        "OMP_NUM_THREADS": "1",
    }
    log = (tmp_path / "app.log").open("w")
    app = subprocess.Popen(
        [str(py), "app.py"], cwd=tmp_path / "space", env=app_env, stdout=log, stderr=subprocess.STDOUT
    )
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert app.poll() is None, (tmp_path / "app.log").read_text()
            try:
                with urllib.request.urlopen(url, timeout=2):
                    break
            except OSError:
                assert time.monotonic() < deadline, (tmp_path / "app.log").read_text()
                time.sleep(0.5)
        with chromium() as browser:
            page = browser.new_page()
            page.goto(url)
            page.locator("#spanpref-annotate .sp-root").wait_for(state="attached", timeout=30_000)
            assert page.get_by_text("Guidelines (read these first)").is_visible()
            assert page.locator("#spanpref-annotate .sp-root").get_attribute("data-oauth") == "1"
        r = _post_upload(url)
        assert r == 403  # the Space's own launch refuses uploads too
    finally:
        app.terminate()
        app.wait(timeout=30)
        log.close()


def _post_upload(url: str) -> int:
    import requests

    return requests.post(url + "gradio_api/upload", files={"files": ("x.txt", b"x")}, timeout=10).status_code


def test_both_apps_keep_their_state_by_one_rule(tmp_path, monkeypatch):
    """$SPANPREF_STATE_DIR, else the persistent storage the deploy mounts when it is writable, else ./<app>-state;
    the arena and the annotation app both follow it."""
    from spanpref.ui.arena import space_config
    from spanpref.ui.common import STORAGE_MOUNT, state_dir
    from tests.test_arena import build_arena_repo

    mount = tmp_path / "mount"
    assert state_dir("arena", {}, mount=mount) == Path("arena-state")  # no storage
    mount.mkdir()
    assert state_dir("arena", {}, mount=mount) == mount
    mount.chmod(0o500)
    try:
        if not os.access(mount, os.W_OK):  # (root may write anyway)
            assert state_dir("annotate", {}, mount=mount) == Path("annotate-state")
    finally:
        mount.chmod(0o700)
    assert state_dir("annotate", {"SPANPREF_STATE_DIR": str(tmp_path / "s")}, mount=mount) == tmp_path / "s"
    assert STORAGE_MOUNT == "/data"

    build_arena_repo(tmp_path / "evalrepo")
    env = {"SPANPREF_ARENA_DATA": str(tmp_path / "evalrepo"), "SPANPREF_STATE_DIR": str(tmp_path / "s")}
    assert Path(space_config(env).db) == tmp_path / "s" / "arena.sqlite"


def test_the_deploy_mounts_storage_where_the_apps_look(tmp_path):
    from spanpref.ui.common import STORAGE_MOUNT
    from spanpref.ui.deploy import plan_calls

    cfg = SpaceDeployConfig(app="arena", space_id="org/s", data="org/d", storage="small")
    calls, _ = plan_calls(cfg, tmp_path)
    [volumes] = [c for c in calls if c.method == "set_space_volumes"]
    assert [v.mount_path for v in volumes.kwargs["volumes"]] == [STORAGE_MOUNT]
