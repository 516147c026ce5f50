"""Deployment targets written from a verified export: Triton model repositories."""
