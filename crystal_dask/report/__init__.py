"""The experiment report (report.json, report.md, PNG figures) from a results dict: write.write_report.

results.py   the results dict's shape and check          paired.py       per-patch data from predictions tables
markdown.py  the Markdown tables and sections            figures.py      the matplotlib figures (only importer)
importances.py  a saved forest's top features            gallery.py      example patches read from zarr
"""
