"""sst-search: trait segmentation by tracking (SST) and trait-level image search."""

__version__ = "0.1.0"
