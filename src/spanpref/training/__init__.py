"""Training: preference losses (incl. DPO-Positive), the trainer glue, recipes' entry points, sweeps, model cards.

Import the submodules directly; this package imports nothing heavy so that `spanpref.models` can use `tiny`.
"""
