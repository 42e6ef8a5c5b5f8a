"""Compute for the MIWV pipeline: embedders, nearest neighbours, the causal LM and its losses.

Jobs here read and write through the catalog's public API; the SQL stays in catalog/.
"""
