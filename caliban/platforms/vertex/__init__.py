"""Vertex AI custom jobs."""
