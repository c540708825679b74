from .grid import grid
