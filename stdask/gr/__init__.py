"""Spatial graphs: neighbours by radius, kNN, Delaunay or lattice rings, built per tile with a halo."""
from .neighbors import NeighbourSummary, SpatialGraph, neighbour_summary, resolve_distance, spatial_neighbors

__all__ = ["spatial_neighbors", "neighbour_summary", "resolve_distance", "NeighbourSummary", "SpatialGraph"]
