"""Hugging Face Space: the spanpref arena (blind pairwise judging of eval outputs, and an Elo leaderboard).

Configured by Space variables; see README.md. Locally, run `spanpref arena FOLDER --port N` instead.
"""

from spanpref.ui.arena import build_space_app

app = build_space_app()
demo = app.blocks  # the name `gradio app.py` looks for; `app.service` is what serves the page

if __name__ == "__main__":
    demo.launch(ssr_mode=False)
