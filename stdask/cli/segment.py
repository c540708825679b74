"""``stdask segment STORE [MORE ...]``: SpaSEG spatial domains of one store or several consecutive slices,
written back into them."""
from __future__ import annotations

import argparse
import json

from .common import seed_option


def add_parser(sub, parents: list[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    """Add ``segment`` to the sub-commands."""
    ps = sub.add_parser("segment", parents=[*parents, seed_option(1029)],
                        help="SpaSEG spatial domains (unsupervised CNN), written to the store")
    ps.add_argument("store")
    ps.add_argument("more", nargs="*", help="more stores: consecutive slices segmented jointly (aligned "
                    "coordinates)")
    ps.add_argument("--n-domains", type=int, default=7,
                    help="SpaSEG's min_label stopping rule: stop once at most this many labels remain (default 7)")
    ps.add_argument("--key", default="spaseg", help="result key (obs, obsm, uns)")
    ps.add_argument("--n-pcs", type=int, default=None, help="PCs (default 15; 30 for several slices)")
    ps.add_argument("--use-rep", default=None, help="use obsm[USE_REP] instead of computing PCs")
    ps.add_argument("--pitch", type=float, default=None,
                    help="pixel pitch in store units (default: bin size / median neighbour distance; Visium: "
                         "array positions)")
    ps.add_argument("--iterations", type=int, default=2100)
    ps.add_argument("--pretrain-epochs", type=int, default=400)
    ps.add_argument("--alpha", type=float, default=None, help="cross-entropy weight (0.4; 0.2 for several slices)")
    ps.add_argument("--beta", type=float, default=None, help="continuity weight (0.7; 0.4 for several slices)")
    ps.add_argument("--mode", default="auto", choices=["auto", "full", "tiled", "minibatch"])
    ps.add_argument("--tile", type=int, default=128, help="tile side in pixels for large images")
    ps.add_argument("--device", default=None, help="cpu | cuda (default: CUDA when available)")
    ps.add_argument("--threads", type=int, default=None,
                    help="torch threads (default: torch's setting, capped at one per ~100k pixels of an iteration)")
    ps.add_argument("--truth", default=None, help="obs column of known domains: print ARI and NMI")
    ps.add_argument("--no-raster", action="store_true", help="do not store the input raster in images/")
    ps.add_argument("--json", default=None, help="also write the run summary to this JSON file")
    ps.set_defaults(func=run)
    return ps


def run(args: argparse.Namespace) -> int:
    from ..dataset import read
    from ..tl.metrics import ari, nmi
    from ..tl.spaseg import spaseg

    stores = [args.store] + list(args.more or [])
    datasets = [read(s) for s in stores]
    res = spaseg(datasets if len(datasets) > 1 else datasets[0], n_domains=args.n_domains, key_added=args.key,
                 seed=args.seed, n_pcs=args.n_pcs, pitch=args.pitch, iterations=args.iterations,
                 pretrain_epochs=args.pretrain_epochs, alpha=args.alpha, beta=args.beta, mode=args.mode,
                 tile=args.tile, device=args.device, threads=args.threads, use_rep=args.use_rep,
                 raster_key=None if args.no_raster else f"{args.key}_input")
    info = res.info
    print(f"[segment] {info['n_domains_found']} domains (stop rule n_labels <= {info['n_domains_arg']}; "
          f"stopped at iteration {info['stop_iteration']}, {'rule fired' if info['stopped'] else 'iteration limit'}); "
          f"mode {info['mode']} on {info['device']}, training {info['seconds_train']:.1f} s")
    print(f"[segment] grid {info['grid']['height']} x {info['grid']['width']} ({info['grid']['mode']}); "
          f"collisions: {info['collisions']['n_colliding_obs']} observations on "
          f"{info['collisions']['n_shared_pixels']} shared pixels (averaged)")
    labels = res.labels if isinstance(res.labels, list) else [res.labels]
    for path, ds, lab in zip(stores, datasets, labels):
        counts = lab.value_counts().sort_index()
        line = ", ".join(f"{k}: {v}" for k, v in counts.items())
        print(f"[segment] {path}: obs['{args.key}'] sizes {line}")
        if args.truth:
            if args.truth not in ds.obs:
                print(f"[segment] {path}: no obs column {args.truth!r}; skipping ARI/NMI")
            else:
                t = ds.obs[args.truth]
                print(f"[segment] {path}: ARI {ari(t, lab):.3f}, NMI {nmi(t, lab):.3f} against obs['{args.truth}']")
        ds.write()
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({k: v for k, v in info.items() if isinstance(v, (int, float, str, bool, dict))}, fh,
                      indent=2, default=str)
    print(f"[segment] wrote obs['{args.key}'], obsm['{args.key}_embedding'], uns['{args.key}']"
          + ("" if args.no_raster else f" and images/{args.key}_input") + " into " + ", ".join(stores))
    return 0
