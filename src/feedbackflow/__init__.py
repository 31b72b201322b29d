"""feedbackflow: reproduce research on learning from human feedback as one cached Snakemake workflow."""

__version__ = "0.1.0"
