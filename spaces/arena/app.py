"""Hugging Face Space: the spanpref arena (blind pairwise judging of eval outputs, and an Elo leaderboard).

Configured by Space variables; see README.md. Locally, run `spanpref arena FOLDER --port N` instead.
"""

from spanpref.ui.arena import build_space_app

demo = build_space_app()

if __name__ == "__main__":
    demo.launch(ssr_mode=False)
