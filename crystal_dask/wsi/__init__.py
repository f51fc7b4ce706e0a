"""Whole-slide images and their annotations: slides, NEDC csv / ImageScope xml, layout, splits, patch geometry."""
