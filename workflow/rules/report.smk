# Reporting (normalise, IQM, stratified bootstrap, figures, tables, paper_figures) arrives
# with the reporting issue. Nothing here pretends to run yet.
