"""What the studies show: one view module per study, lintheory.studies.views.NAME, beside the study.

A study computes (Settings, PROFILES, run, and claims: its verdicts on the paper); its view only reads the
table the study wrote (engine.Table) and its metadata, and never trains:
  plot(table, meta, figures: Path) -> list[Path]   its figures (common.save: PNG and PDF, the same bytes on a redraw)
  report(table, meta) -> str                       its Markdown section; every number comes from the table
  summary(table) -> str                            one line: the main number with its CI and seed/task counts
engine.view_module(name) finds a study's view; lintheory.plots, lintheory.report and the engine's summary line
call it. Imports point one way: a view imports its study (and another study's view), never the reverse, so
that no view is code the rows depend on (freshness.code_of) and a change of wording leaves results fresh.
Helpers every view shares live in views.common.
"""
