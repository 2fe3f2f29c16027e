"""Hugging Face Space: the spanpref annotation app (span highlighting with reasons, A/B choice).

Configured by Space variables; see README.md. Locally, run `spanpref annotate FOLDER --port N` instead.
"""

from spanpref.ui.annotate import build_space_app

app = build_space_app()
demo = app.blocks  # the name `gradio app.py` looks for; `app.service` is what serves the page

if __name__ == "__main__":
    demo.launch(ssr_mode=False)
