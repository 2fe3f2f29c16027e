"""Hugging Face Space: the spanpref annotation app (span highlighting with reasons, A/B choice).

Configured by Space variables; see README.md. Locally, run `spanpref annotate FOLDER --port N` instead.
"""

from spanpref.ui.annotate import build_space_app

demo = build_space_app()

if __name__ == "__main__":
    demo.launch(ssr_mode=False)
