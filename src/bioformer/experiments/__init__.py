"""The studies: sizing models against each other, running arms over seeds, reporting with CIs.

profiles.py  the sizes and settings every arm of every study shares (quick / standard / full)
studies.py   the five studies: their arms and the pairs that answer each question
plan.py      a study + profile + overrides resolved to configs, seeds and a directory
suite.py     execution: one runner per (arm, seed), serial or in worker processes; resume
sizing.py    parameter breakdown, the equal-parameter d_model search, same-params and same-attention configurations
report.py    results.csv and summary.md (tables, floors, power) from the finished runs
stats.py     t intervals, paired tests, Holm adjustment
plots.py     comparison.png, curves.png

The `bioformer experiment` command lives in `bioformer.cli`.
"""
