"""Artifact builds: container.py (Docker image); layers.py and image.py are its helpers."""
