"""Synthetic corpora in the real NEDC layout and formats: tissue painter, Aperio-style slide writer, generator."""
