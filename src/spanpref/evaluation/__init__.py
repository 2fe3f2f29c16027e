"""Evaluation: held-out generation, pairwise judges, Elo ratings with bootstrap intervals, reports.

`elo` is plain numpy over a table of battles and imports nothing heavy; the arena Space uses it too.
"""
