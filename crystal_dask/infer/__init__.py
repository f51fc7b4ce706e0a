"""Whole-slide inference: every window of a slide with enough tissue predicted by a trained model.

settings.py  InferSettings, the inference window (from the model's dataset) and the model's context
windows.py   a block of windows as the model's input rows (pixels or feature families)
tasks.py     the Dask tasks per slide (tissue, one per block of windows, export) and the slide's zarr grid
scoring.py   window labels from annotations (NEDC's frame rule) and the scores of a slide and of a run
run.py       planning slides and running the tasks on a cluster (`infer_slides`)
The stage plug-in (job-file section and steps) is crystal_dask/stages/infer.py; the pictures and geometry a
slide's grid becomes are in crystal_dask/exports/.
"""
