"""Datasets: the HDF5 schema, its readers and writers, the procedural dataset and renderers."""
