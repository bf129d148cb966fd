"""One module per study; `python -m lintheory.studies NAME --profile default` runs one.

Each writes results/NAME.csv (tidy) and results/NAME.json (results/PROFILE/ for a profile other than
default: engine.results_dir); `python -m lintheory.plots` draws every figure from those files and
`python -m lintheory.report` writes docs/report.md from them.
"""

# In the order the report presents them.
STUDIES = ("one_layer", "implicit_gd", "pruning", "prune_bound", "paper_protocol", "positive_control", "mismatch",
           "in_weights", "deep_recipes")
