"""The arena: blind pairwise judging of eval outputs by logged-in judges, and a leaderboard.

A judge sees a query, its document and two anonymous outputs of different models in random order, and picks
A, B or a tie (a tie asks for confirmation). `spanpref.ui.arena_store.VoteStore` (SQLite) keeps the votes,
`spanpref.ui.arena_service.Arena` assigns battles, records votes behind the open arena's guards, exports them to
the repo's `judgments` config and rates them for the leaderboard by the same code as `spanpref eval elo`. This
module builds the page, and `spanpref.ui.hub_sync.HubSync` optionally pushes the folder to a Hub dataset.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

from spanpref import schema
from spanpref.ui.arena_service import (
    CHOICE_LEFT,
    CHOICE_RIGHT,
    CHOICE_TIE,
    JUDGMENT_PREFIX,
    Arena,
    ArenaConfig,
    ArenaData,
    Assignment,
    Battle,
    RateLimit,
    load_arena_data,
    pick_battle,
    vote_id,
    winner_of,
)
from spanpref.ui.arena_store import VoteStore
from spanpref.ui.common import (
    DEFAULT_BOUNDS,
    App,
    UserError,
    client_address,
    escape_html,
    launch_local,
    lock_down,
    on_spaces,
    state_dir,
)
from spanpref.ui.hub_sync import HubSync

__all__ = [
    "CHOICE_LEFT",
    "CHOICE_RIGHT",
    "CHOICE_TIE",
    "JUDGMENT_PREFIX",
    "Arena",
    "ArenaConfig",
    "ArenaData",
    "Assignment",
    "Battle",
    "RateLimit",
    "VoteStore",
    "build_app",
    "build_space_app",
    "load_arena_data",
    "pick_battle",
    "render_battle",
    "render_leaderboard",
    "run_arena",
    "schedule_hub_push",
    "serve",
    "space_config",
    "vote_id",
    "winner_of",
]

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------------
# Rendering (everything from the data is escaped: outputs may contain HTML and scripts)
# ---------------------------------------------------------------------------------------------------
def _box(text: str, *, elem: str, max_height: str = "") -> str:
    scroll = f"max-height:{max_height};overflow-y:auto;" if max_height else ""
    return (
        f'<div class="{elem}" style="white-space:pre-wrap;overflow-wrap:anywhere;{scroll}'
        f'padding:0.5em;border:1px solid #ccc;border-radius:6px">{escape_html(text)}</div>'
    )


def render_battle(data: ArenaData, assignment: Assignment) -> dict[str, str]:
    """HTML of the query, the document and the two outputs as shown (left = A), all escaped."""
    query = data.queries[assignment.battle.query_id]
    doc = data.documents[query.doc_id]
    outputs = data.outputs[assignment.battle.query_id]
    return {
        "query": _box(query.query, elem="arena-query"),
        "document": f"<h4>{escape_html(doc.title)}</h4>" + _box(doc.text, elem="arena-document", max_height="22em"),
        "left": _box(outputs[assignment.left_model].text, elem="arena-output-a"),
        "right": _box(outputs[assignment.right_model].text, elem="arena-output-b"),
    }


def render_leaderboard(ratings: list[schema.Rating]) -> str:
    """An escaped HTML table: rank, model, Elo, 95% interval of the difference from the best model, judgments."""
    head = "".join(f"<th>{h}</th>" for h in ("Rank", "Model", "Elo", "95% CI of difference from best", "Judgments"))
    rows = []
    for rank, r in enumerate(ratings, 1):
        ci = "" if r.ci_low is None else f"{r.ci_low:+.0f} … {r.ci_high:+.0f}"
        cells = (str(rank), escape_html(r.model), f"{r.rating:.0f}", ci, str(r.n_judgments))
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    return f'<table class="arena-leaderboard"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def schedule_hub_push(arena: Arena, *, hf_api: Any = None, token: str | None = None) -> HubSync:
    """Push the repo folder, with the votes exported first, to `config.hub_repo` every `config.hub_every` minutes
    (and at once); a push with no new vote since the last makes no commit."""
    return HubSync(
        arena.config.folder,
        arena.config.hub_repo,
        every_minutes=arena.config.hub_every,
        lock=arena.export_lock,
        before_push=arena.export_if_changed,
        # shards are named by content hash: drop the old ones of the configs an export rewrites
        delete_patterns=[f"data/{schema.JUDGMENTS}/*", f"data/{schema.JUDGE_STATS}/*"],
        api=hf_api,
        token=token,
        message="spanpref arena: judgments",
    ).start()


# ---------------------------------------------------------------------------------------------------
# The Gradio app
# ---------------------------------------------------------------------------------------------------
_INTRO = """# Arena
Read the question and the document, then the two answers. They come from two different models, in random order,
and you are not told which. Pick the better answer, or a tie if neither is better. A short reason helps."""


def build_app(config: ArenaConfig, arena: Arena | None = None) -> App:
    """The arena page (`App.blocks`) and the `Arena` behind it (`App.service`): a judging tab and a leaderboard tab. Per-user state (a session token, the
    battle on screen) lives in `gr.State`; who the user is comes from the token, never from the page."""
    import gradio as gr

    arena = arena or Arena(config)

    with gr.Blocks(title="spanpref arena") as blocks:
        session = gr.State(None)  # {"token", "battle": [query_id, model_a, model_b], "shown_at"}
        gr.Markdown(_INTRO)
        with gr.Tab("Judge"):
            with gr.Group(visible=True) as login_box:
                if arena.oauth:
                    if on_spaces():  # outside a Space, gradio's mocked OAuth needs a saved HF token
                        gr.LoginButton()
                else:
                    name_box = gr.Textbox(label="Name", elem_id="arena-login", max_length=DEFAULT_BOUNDS.name)
                    password_box = gr.Textbox(
                        label="Password (a new name is yours with the first password you give)",
                        type="password",
                        elem_id="arena-password",
                    )
                    code_box = gr.Textbox(
                        label="Access code",
                        type="password",
                        elem_id="arena-access-code",
                        visible=arena.auth.access_code is not None,
                    )
                    login_button = gr.Button("Log in", variant="primary", elem_id="arena-login-button")
            with gr.Row(visible=False) as user_row:
                whoami = gr.HTML(elem_id="arena-whoami")
                logout_button = gr.Button(
                    "Log out", size="sm", scale=0, visible=not arena.oauth, elem_id="arena-logout"
                )
            with gr.Column(visible=False) as battle_box:
                gr.Markdown("### Question")
                query_html = gr.HTML(elem_id="arena-query")
                with gr.Accordion("Document", open=True):
                    document_html = gr.HTML(elem_id="arena-document")
                with gr.Row():
                    with gr.Column():
                        gr.Markdown("### Answer A")
                        left_html = gr.HTML(elem_id="arena-output-a")
                    with gr.Column():
                        gr.Markdown("### Answer B")
                        right_html = gr.HTML(elem_id="arena-output-b")
                rationale = gr.Textbox(
                    label="Why? (optional)", lines=2, max_length=DEFAULT_BOUNDS.rationale, elem_id="arena-rationale"
                )
                with gr.Row(visible=True) as vote_row:
                    a_button = gr.Button("A is better", elem_id="arena-vote-a")
                    tie_button = gr.Button("Tie", elem_id="arena-vote-tie")
                    b_button = gr.Button("B is better", elem_id="arena-vote-b")
                with gr.Row(visible=False) as confirm_row:
                    gr.Markdown("**A tie?** Confirm only if neither answer is better than the other.")
                    confirm_button = gr.Button("Yes, a tie", variant="primary", elem_id="arena-confirm-tie")
                    cancel_button = gr.Button("Back", elem_id="arena-cancel-tie")
            message = gr.HTML(elem_id="arena-message")
        with gr.Tab("Leaderboard") as board_tab:
            with gr.Row():
                refresh_button = gr.Button("Refresh", elem_id="arena-refresh")
                export_button = gr.Button("Export judgments", elem_id="arena-export")
            board_html = gr.HTML(elem_id="arena-board")
            board_note = gr.HTML(elem_id="arena-board-note")

        view_outputs = [
            session,
            login_box,
            user_row,
            whoami,
            battle_box,
            query_html,
            document_html,
            left_html,
            right_html,
            rationale,
            vote_row,
            confirm_row,
            message,
        ]

        def note(text: str) -> str:
            return f"<p>{escape_html(text)}</p>" if text else ""

        def screen(state: dict | None, text: str = "", who: str = "", shown: dict[str, str] | None = None) -> dict:
            """The judging tab: the login form when `state` is None, else the judge and the battle `shown`."""
            shown = shown or {}
            return {
                session: state,
                login_box: gr.update(visible=state is None),
                user_row: gr.update(visible=state is not None),
                whoami: who,
                battle_box: gr.update(visible=bool(shown)),
                query_html: shown.get("query", ""),
                document_html: shown.get("document", ""),
                left_html: shown.get("left", ""),
                right_html: shown.get("right", ""),
                rationale: "",
                vote_row: gr.update(visible=True),
                confirm_row: gr.update(visible=False),
                message: note(text),
            }

        def view(state: dict | None, text: str = "") -> dict:
            """The judging tab for the session's judge and the battle they are on."""
            try:
                login = arena.auth.resolve((state or {}).get("token"))
            except UserError as e:
                return screen(None, text or (str(e) if state else ""))
            assignment = arena.assignment(login)
            done, total = arena.progress(login)
            who = f"<p>Logged in as <b>{escape_html(login)}</b> · {done} of {total} battles judged</p>"
            if assignment is None:
                return screen({"token": state["token"]}, text or "You have judged every battle. Thank you!", who)
            b = assignment.battle
            battle = [b.query_id, b.model_a, b.model_b]
            shown_at = state["shown_at"] if state.get("battle") == battle else time.time()
            new = {"token": state["token"], "battle": battle, "shown_at": shown_at}
            return screen(new, text, who, render_battle(arena.data, assignment))

        def voter(choice: str) -> Any:
            def handler(state: dict | None, why: str, request: gr.Request) -> dict:
                try:
                    login = arena.auth.resolve((state or {}).get("token"))
                    if not state.get("battle"):
                        raise UserError("no battle on screen")
                    # shown_at was set by the server when it sent the battle: the page cannot shorten it
                    seconds = round(time.time() - state["shown_at"], 2)
                    arena.vote(login, Battle(*state["battle"]), choice, why, seconds, address=client_address(request))
                except UserError as e:
                    return {**view(state, str(e)), rationale: gr.update()}  # keep the text, e.g. to shorten it
                return view(state, "Vote recorded; here is the next battle.")

            # gradio finds the request parameter by its annotation, which postponed annotations leave a string
            handler.__annotations__["request"] = gr.Request
            return handler

        a_button.click(voter(CHOICE_LEFT), [session, rationale], view_outputs, api_name="vote_a")
        b_button.click(voter(CHOICE_RIGHT), [session, rationale], view_outputs, api_name="vote_b")
        confirm_button.click(voter(CHOICE_TIE), [session, rationale], view_outputs, api_name="vote_tie")
        asking = [vote_row, confirm_row]
        tie_button.click(lambda: [gr.update(visible=False), gr.update(visible=True)], None, asking)
        cancel_button.click(lambda: [gr.update(visible=True), gr.update(visible=False)], None, asking)

        if arena.oauth:

            def on_load(request: gr.Request) -> dict:
                try:
                    token = arena.login_oauth(request)
                except UserError as e:
                    return screen(None, str(e))
                return view({"token": token})

            on_load.__annotations__["request"] = gr.Request  # (as for the vote handlers above)
            blocks.load(on_load, None, view_outputs)
        else:
            # The session token also lives in the browser (localStorage, encrypted by gradio), so that a reload
            # keeps the judge logged in; the server still decides who it belongs to, and logging out revokes it.
            remembered = gr.BrowserState(None, storage_key="spanpref-arena-session")

            def on_login(name: str, password: str, code: str) -> dict:
                try:
                    token, _ = arena.auth.login(name, password, code)
                except UserError as e:
                    return {**screen(None, str(e)), password_box: "", remembered: None}
                return {**view({"token": token}), password_box: "", remembered: token}

            def on_logout(state: dict | None) -> dict:
                arena.auth.logout((state or {}).get("token"))
                return {**screen(None, "Logged out."), remembered: None}

            def on_reload(token: str | None) -> dict:
                shown = view({"token": token}) if token else screen(None)
                return {**shown, remembered: token if shown[session] else None}  # forget a revoked token

            blocks.load(on_reload, [remembered], [*view_outputs, remembered])
            logout_button.click(on_logout, [session], [*view_outputs, remembered])
            login_inputs = [name_box, password_box, code_box]
            login_button.click(on_login, login_inputs, [*view_outputs, password_box, remembered])
            password_box.submit(on_login, login_inputs, [*view_outputs, password_box, remembered])

        def logged_in(state: dict | None) -> bool:
            try:
                arena.auth.resolve((state or {}).get("token"))
            except UserError:
                return False
            return True

        def leaderboard(state: dict | None) -> list[str]:
            if arena.restricted and not logged_in(state):
                return ["<p>Log in (Judge tab) to see the leaderboard.</p>", ""]
            # where the votes are kept stays on the server: file and folder names are nobody's business here
            where = f"{arena.store.count()} votes, exported to the {schema.JUDGMENTS} config (judge {config.judge!r})."
            ratings, caveat = arena.leaderboard()
            rule = arena.reading_rule()
            if not ratings:
                return ["<p>No votes counted yet.</p>", note(" ".join(filter(None, (rule, where))))]
            return [render_leaderboard(ratings), note(" ".join(filter(None, (caveat, rule, where))))]

        def export(state: dict | None) -> list[str]:
            if (arena.restricted or arena.oauth) and not logged_in(state):
                return ["<p>Log in (Judge tab) to export the judgments.</p>", ""]
            try:
                n = arena.export()
            except Exception:
                logger.exception("arena: export failed")
                board, info = leaderboard(state)
                return [board, note("The export failed (the reason is in the server's log).") + info]
            board, info = leaderboard(state)
            return [board, note(f"Exported {n} judgments.") + info]

        refresh_button.click(leaderboard, [session], [board_html, board_note])
        board_tab.select(leaderboard, [session], [board_html, board_note])
        export_button.click(export, [session], [board_html, board_note])
    return App(lock_down(blocks), arena)


def serve(config: ArenaConfig, *, block: bool = True) -> App:
    """Build the arena and serve it on 127.0.0.1:`config.port` (with the Hub push when configured)."""
    app = build_app(config)
    arena: Arena = app.service
    if config.hub_repo:
        app.hub_sync = schedule_hub_push(arena)
    logger.info(
        "arena: %d battles; votes in %s, exported to %s", len(arena.data.battles), arena.store.path, config.folder
    )
    try:
        launch_local(app.blocks, config.port, block=block)
    finally:
        if block:
            arena.export()
            app.stop()
    return app


def space_config(environ: Any = None) -> ArenaConfig:
    """The arena's config in a Hugging Face Space, from its variables:

    - SPANPREF_ARENA_DATA (required): a dataset repo folder, or a Hub dataset id (downloaded at start);
    - SPANPREF_ARENA_PUSH: Hub dataset id the folder, with the judgments, is pushed to (default: the dataset id
      the data came from; none for a local folder);
    - SPANPREF_JUDGES: comma-separated names allowed to judge (default: anyone who signs in);
    - SPANPREF_ACCESS_CODE: a code local logins must give;
    - SPANPREF_MIN_SECONDS, SPANPREF_VOTES_PER_MINUTE, SPANPREF_ADDRESS_VOTES_PER_MINUTE: the open arena's rules
      (see `ArenaConfig`; default 4 s, 10 and 30); SPANPREF_SESSION_HOURS: how long a login lasts (12).
    State (the SQLite file, the downloaded folder) goes where `spanpref.ui.common.state_dir` says.
    """
    env = os.environ if environ is None else environ
    source = env.get("SPANPREF_ARENA_DATA")
    if not source:
        raise ValueError("set the Space variable SPANPREF_ARENA_DATA to a dataset repo folder or a Hub dataset id")
    state = state_dir("arena", env)
    push = env.get("SPANPREF_ARENA_PUSH") or None
    folder = Path(source)
    if not folder.exists():
        from huggingface_hub import snapshot_download

        folder = Path(snapshot_download(source, repo_type="dataset", local_dir=state / "arena-data"))
        push = push or source
    judges = [j.strip() for j in env.get("SPANPREF_JUDGES", "").split(",") if j.strip()] or None
    rules = {
        name: kind(env[var])
        for name, var, kind in (
            ("min_seconds", "SPANPREF_MIN_SECONDS", float),
            ("votes_per_minute", "SPANPREF_VOTES_PER_MINUTE", int),
            ("address_votes_per_minute", "SPANPREF_ADDRESS_VOTES_PER_MINUTE", int),
            ("session_hours", "SPANPREF_SESSION_HOURS", float),
        )
        if env.get(var)
    }
    return ArenaConfig(folder=str(folder), db=str(state / "arena.sqlite"), judges=judges, hub_repo=push, **rules)


def build_space_app(environ: Any = None) -> App:
    """The arena of a Hugging Face Space (see `space_config`), with its Hub push started."""
    app = build_app(space_config(environ))
    if app.service.config.hub_repo:
        app.hub_sync = schedule_hub_push(app.service)
    return app


# ---------------------------------------------------------------------------------------------------
# The `spanpref arena` command
# ---------------------------------------------------------------------------------------------------
def run_arena(args: ArenaConfig) -> int | None:
    """Serve the arena; with `export_only`, write the votes to the judgments config and return how many."""
    if args.export_only:
        return Arena(args).export()
    serve(args)
    return None
