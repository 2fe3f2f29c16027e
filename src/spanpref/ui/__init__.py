"""Gradio apps (the annotation Space, the arena Space) and the plumbing they share (`spanpref.ui.common`).

Importing this package does not import gradio; each builder imports it when called.
"""
