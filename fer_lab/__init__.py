"""fer-lab: a notebook research workbench for facial expression recognition."""

__version__ = "0.1.0"
