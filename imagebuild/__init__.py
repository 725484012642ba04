"""imagebuild: one spec, two artifacts (Docker image and Packer VM images), one proof of parity."""

__version__ = "0.1.0"
