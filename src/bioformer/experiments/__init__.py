"""The studies: sizing models against each other, running arms over seeds, reporting with CIs.

sizing.py  parameter breakdown, same-params and same-attention configurations
suite.py   the five studies, the profiles table, `bioformer experiment STUDY`
report.py  results.csv, summary.md (t intervals, paired tests), comparison.png, curves.png
"""
