"""The pipeline stages, one module each, in run order: synth, scan, extract, train, evaluate, report."""
