"""Concrete pipelines wired from vidseg parts and a model."""
