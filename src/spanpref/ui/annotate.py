"""The annotation Space: annotators highlight liked and disliked spans of two responses, tick reasons from the
taxonomy, give response-level reasons and an A/B choice with a rationale (appendix C of CH-Wang et al., 2025).

How it is put together:

- `spanpref.ui.annotate_store.AnnotationStore` (SQLite, WAL, `synchronous=FULL`) is the source of truth. Every
  span is saved on its own the moment the annotator presses Save in the span popup; the page says "saved" only
  after the commit.
- `spanpref.ui.annotate_service.AnnotationService` is everything the page can ask for (queues, saves, submits,
  export); `spanpref.ui.annotate_export.BackgroundExporter` writes the repo's `annotations` and `comparisons`
  configs after changes, in a process of its own so that the server's event loop keeps the GIL.
- This module builds the page: one `gr.HTML` whose JavaScript draws the item from JSON with DOM text nodes (never
  `innerHTML` with data, so responses, documents and notes cannot inject markup) and calls the service's methods
  at `POST <root>/spanpref/call/<name>` (`spanpref.ui.common.PageCalls`), each call carrying the session token
  issued at login.
- `spanpref.ui.suggestions` offers the spans of the repo's AI annotators (`ai:*`) as suggestions the annotator
  accepts, edits or rejects, and exports where each accepted span came from.
- `spanpref.ui.hub_sync.HubSync` optionally pushes the repo folder to a Hub dataset.
"""

from __future__ import annotations

import logging
import os
from importlib import resources
from pathlib import Path
from typing import Any

from spanpref import schema
from spanpref.ui.annotate_export import BackgroundExporter, ExportProcess
from spanpref.ui.annotate_service import AnnotateConfig, AnnotationService, ExportReport, Item, StoreExport, load_items
from spanpref.ui.annotate_store import AnnotationStore, default_db_path
from spanpref.ui.common import App, UserError, lock_down, on_spaces, server_function, state_dir
from spanpref.ui.hub_sync import HubSync
from spanpref.ui.suggestions import attach as attach_suggestions

__all__ = [
    "AnnotateConfig",
    "AnnotationService",
    "AnnotationStore",
    "BackgroundExporter",
    "ExportProcess",
    "ExportReport",
    "Item",
    "StoreExport",
    "build_app",
    "build_space_app",
    "default_db_path",
    "load_items",
    "run_annotate",
    "serve",
    "start_hub_sync",
]

logger = logging.getLogger(__name__)


def _asset(name: str) -> str:
    return (resources.files("spanpref.ui") / "assets" / name).read_text(encoding="utf-8")


def guidelines_markdown() -> str:
    return _asset("annotate_guidelines.md")


def start_hub_sync(
    service: AnnotationService, repo_id: str, every_minutes: float, *, private: bool = True, api: Any = None
) -> HubSync:
    """Push the repo folder to a Hub dataset every few minutes (and at once), taking the service's export lock
    only while the folder is snapshotted."""
    return HubSync(
        service.repo.path,
        repo_id,
        every_minutes=every_minutes,
        lock=service.export_lock,
        delete_patterns=[f"data/{schema.ANNOTATIONS}/*", f"data/{schema.COMPARISONS}/*"],
        private=private,
        api=api,
        message="spanpref annotate: annotations and comparisons",
    ).start()


def build_app(config: AnnotateConfig, service: AnnotationService | None = None) -> App:
    """The annotation page and the `AnnotationService` behind it (`App.blocks` is the `gr.Blocks` to launch)."""
    import gradio as gr

    service = service or AnnotationService(config)
    suggestions = attach_suggestions(service)

    def fn(name: str, body: Any, *, blocking: bool = False) -> Any:
        return server_function(body, name=name, blocking=blocking)

    api = [
        fn("login", lambda a, req: service.login(*(a + [None] * 3)[:3]), blocking=True),  # a password hash
        fn("login_oauth", lambda a, req: service.login_oauth(req)),
        fn("resume", lambda a, req: service.resume(a[0] if a else None)),
        fn("logout", lambda a, req: service.logout(a[0] if a else None)),
        fn(
            "get_item",
            lambda a, req: suggestions.add_to_item(a[0] if a else None, service.get_item(*(a + [None] * 2)[:2])),
        ),
        fn("save_span", lambda a, req: service.save_span(*(a + [None] * 5)[:5])),
        fn("delete_span", lambda a, req: service.delete_span(*(a + [None] * 4)[:4])),
        fn("save_item", lambda a, req: service.save_item(*(a + [None] * 4)[:4])),
        fn("reject_suggestion", lambda a, req: suggestions.reject(*(a + [None] * 4)[:4])),
        fn("restore_suggestions", lambda a, req: suggestions.restore(*(a + [None] * 3)[:3])),
    ]
    with gr.Blocks(title=config.title) as blocks:
        gr.Markdown(f"## {config.title}")
        if service.oauth and on_spaces():  # outside a Space, gradio's mocked OAuth needs a saved HF token
            gr.LoginButton()
        with gr.Accordion("Guidelines (read these first)", open=False):
            gr.Markdown(guidelines_markdown())
        gr.HTML(
            value="",
            html_template='<div class="sp-root" data-oauth="${oauth}"></div>',
            css_template=_asset("annotate.css"),
            js_on_load=_asset("annotate.js"),
            elem_id="spanpref-annotate",
            oauth="1" if service.oauth else "0",
        )
    return App(lock_down(blocks, calls={f.__name__: f for f in api}), service)


def serve(config: AnnotateConfig, *, block: bool = True) -> App:
    """Build the app and serve it on 127.0.0.1:`config.port` with background export (and Hub push)."""
    from spanpref.ui.common import launch_local

    app = build_app(config)
    service: AnnotationService = app.service
    app.exporter = BackgroundExporter(service, config.export_every).start()
    if config.hub_repo:
        app.hub_sync = start_hub_sync(service, config.hub_repo, config.hub_every, private=config.hub_private)
    logger.info(
        "annotating %d items (%d overlap) from %s; store %s",
        len(service.items),
        len(service.overlap),
        service.repo.path,
        service.store.path,
    )
    try:
        launch_local(app.blocks, config.port, block=block, server_timing=config.server_timing)
    finally:
        if block:
            app.stop()
    return app


def build_space_app(environ: Any = None) -> App:
    """The app as a Hugging Face Space runs it, configured by Space variables (see spaces/annotate/README.md):
    `SPANPREF_ANNOTATE_DATA` (a Hub dataset id or a folder), `SPANPREF_ANNOTATE_PUSH` (dataset to push to;
    default: the data's id), `SPANPREF_ANNOTATORS` (comma-separated HF names; default: anyone signed in),
    `SPANPREF_OVERLAP`, `SPANPREF_ITEMS_PER_ANNOTATOR`, `SPANPREF_SESSION_HOURS` and `SPANPREF_SUGGESTIONS` (AI
    spans offered: all, an ai:<name>, or none). State (database, working
    copy of the dataset) lives where `spanpref.ui.common.state_dir` says."""
    env = os.environ if environ is None else environ
    data = env.get("SPANPREF_ANNOTATE_DATA")
    if not data:
        raise UserError("set the Space variable SPANPREF_ANNOTATE_DATA to the dataset to annotate (org/name)")
    state = state_dir("annotate", env)
    if Path(data).is_dir():
        folder, push = Path(data), env.get("SPANPREF_ANNOTATE_PUSH")
    else:
        folder, push = state / "repo", env.get("SPANPREF_ANNOTATE_PUSH") or data
        if not (folder / "README.md").is_file():  # on persistent storage the folder from last time is newer
            from huggingface_hub import snapshot_download

            snapshot_download(repo_id=data, repo_type="dataset", local_dir=folder)
    per = env.get("SPANPREF_ITEMS_PER_ANNOTATOR")
    config = AnnotateConfig(
        folder=str(folder),
        db=str(state / "annotate.sqlite"),
        oauth=True,
        hub_repo=push or None,
        overlap=int(env.get("SPANPREF_OVERLAP", "5")),
        items_per_annotator=int(per) if per else None,
        session_hours=float(env.get("SPANPREF_SESSION_HOURS") or 12.0),
        annotators=[a.strip() for a in env.get("SPANPREF_ANNOTATORS", "").split(",") if a.strip()] or None,
        suggestions=env.get("SPANPREF_SUGGESTIONS") or "all",
    )
    app = build_app(config)
    app.exporter = BackgroundExporter(app.service, config.export_every).start()
    if config.hub_repo:
        app.hub_sync = start_hub_sync(app.service, config.hub_repo, config.hub_every)
    return app


def run_annotate(args: AnnotateConfig) -> Any:
    """Serve the app; with `export_only`, export the store to the repo's configs and return the export's report
    (None when there is nothing to export yet)."""
    if args.export_only:
        service = AnnotationService(args)
        attach_suggestions(service)
        return service.export()
    serve(args)
    return None
