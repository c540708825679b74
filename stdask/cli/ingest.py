"""``stdask ingest INPUT STORE``: convert an input file or folder into a tiled store."""
from __future__ import annotations

import argparse

from ..io import source_formats


def add_parser(sub, parents: list[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    """Add ``ingest`` to the sub-commands."""
    pi = sub.add_parser("ingest", parents=parents,
                        help="convert an input (GEM, GEF, MTX, Visium, Visium HD, Xenium, CosMx, MERSCOPE, h5ad, "
                             "SpatialData zarr) into a tiled store")
    pi.add_argument("input")
    pi.add_argument("store")
    pi.add_argument("--format", choices=source_formats(), help="input format (default: from the file name)")
    g = pi.add_mutually_exclusive_group()
    g.add_argument("--bin", "--bin-size", dest="bin", type=int, metavar="N",
                   help="square bins of N x N DNB (GEM/GEF, 1..200; N x pitch um for --format xenium_transcripts); "
                        "for Visium HD the bin size to read in um (2, 8 or 16; default 8)")
    g.add_argument("--cellbin", action="store_true", help="group DNB records by CellID (GEM/GEF)")
    pi.add_argument("--tile-size", type=float, help="tile side in store units (default: ~16-20k obs per tile)")
    pi.add_argument("--chunk-size", type=int, default=2_000_000, help="records per streamed chunk")
    pi.add_argument("--pixel-size", type=float, help="um per pixel for cell_locations.tsv (MTX input)")
    pi.add_argument("--spot-diameter", type=float, help="spot/cell diameter in store units")
    sd = pi.add_argument_group("SpatialData zarr input")
    sd.add_argument("--table", help="which table (default: the only one, or 'table')")
    sd.add_argument("--region", help="the element to take when the table annotates several")
    sd.add_argument("--coordinate-system", help="coordinate system of the positions (default: 'global')")
    sd.add_argument("--layer", help="matrix of raw counts (default: X if whole counts, else layers['counts'])")
    pi.add_argument("--shapes", choices=("polygons",),
                    help="the cells' segmentation polygons (Xenium cell_boundaries.parquet) as the shapes element, "
                         "instead of circles")
    pi.add_argument("--points", action="store_true",
                    help="keep the transcripts (Xenium, CosMx, MERSCOPE) as the store's points element, by tile")
    pi.add_argument("--overwrite", action="store_true", help="replace an existing store (only a stdask store, never the input)")
    pi.set_defaults(func=run)
    return pi


def run(args: argparse.Namespace) -> int:
    from ..io.ingest import ingest

    options = {}
    if args.pixel_size is not None:
        options["pixel_size"] = args.pixel_size
    if args.spot_diameter is not None:
        options["spot_diameter"] = args.spot_diameter
    for name in ("table", "region", "coordinate_system", "layer"):  # SpatialData zarr options, when given
        if getattr(args, name) is not None:
            options[name] = getattr(args, name)
    path = ingest(args.input, args.store, format=args.format, bin_size=args.bin, cellbin=args.cellbin,
                  tile_size=args.tile_size, overwrite=args.overwrite, chunk_size=args.chunk_size,
                  points=args.points, shapes=args.shapes, **options)
    print(f"wrote {path}")
    return 0
