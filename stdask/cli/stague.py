"""``stdask stague STORE --n-clusters K``: STAGUE spatial domains, cell embedding and learned cell-cell graph,
written back into the store."""
from __future__ import annotations

import argparse
import dataclasses

from ..models.stague.config import PREDICT_MODES, STAGUEConfig
from .common import at_least as _at_least
from .common import seed_option

#: STAGUE settings offered as options: (flag, STAGUEConfig field, type, what it is); the default shown is
#: the dataclass's (the reference's ``main.py``), and an option left out keeps it
_SETTINGS = (
    ("--k", "k", int, "neighbour rank whose median distance is the cutoff d_cut"),
    ("--a-k", "a_k", int, "neighbours of the spatial kNN anchor graph"),
    ("--adj-weight", "adj_weight", float, "omega in S = omega * cos + (1 - omega) * spatial prior"),
    ("--gamma", "gamma", float, "spatial decay exp(-gamma (d / d_cut)^2)"),
    ("--n-candidates", "n_candidates", int, "candidate pairs per cell (its nearest cells within d_cut)"),
    ("--tau", "tau", float, "bootstrapping: A <- tau A + (1 - tau) A_learned"),
    ("--lr", "lr", float, "Adam learning rate"),
    ("--weight-decay", "weight_decay", float, "Adam weight decay"),
    ("--temperature", "temperature", float, "NT-Xent temperature"),
    ("--margin", "margin", float, "triplet-loss margin"),
    ("--margin-weight", "margin_weight", float, "triplet-loss weight"),
    ("--rep-dim", "rep_dim", int, "embedding width (obsm[KEY_embedding] columns)"),
    ("--sim-batch-size", "sim_batch_size", int, "NT-Xent over chunks of this many cells (0: all at once)"),
)
_DEFAULTS = {f.name: f.default for f in dataclasses.fields(STAGUEConfig)}


def add_parser(sub, parents: list[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    """Add ``stague`` to the sub-commands."""
    ps = sub.add_parser("stague", parents=[*parents, seed_option(0)],
                        help="STAGUE spatial domains, embedding and learned cell graph, written to the store")
    ps.add_argument("store")
    ps.add_argument("--n-clusters", type=_at_least(1), required=True, help="number of domains")
    ps.add_argument("--cluster", default="kmeans", choices=["kmeans", "leiden", "louvain", "gmm"],
                    help="clustering of the embedding (leiden/louvain: resolution searched for N_CLUSTERS)")
    ps.add_argument("--refine", type=_at_least(0), default=0,
                    help="> 0: majority label of each cell's REFINE nearest spatial neighbours (default 0)")
    ps.add_argument("--epochs", type=_at_least(1), default=None,
                    help=f"training epochs (default {_DEFAULTS['epochs']})")
    ps.add_argument("--key-added", default="stague",
                    help="result key: obs[KEY], obsm[KEY_embedding], obsp[KEY_adj_raw|KEY_adj_normalized], uns[KEY]")
    ps.add_argument("--layer", default=None, help="input layer (default log1p when stored, else counts "
                    "normalised here)")
    ps.add_argument("--all-genes", action="store_true", help="use every gene even when HVGs are marked")
    mode = ps.add_mutually_exclusive_group()
    mode.add_argument("--minibatch", dest="minibatch", action="store_const", const=True, default=None,
                      help="force mini-batch training (default: above --max-full-batch observations)")
    mode.add_argument("--full-batch", dest="minibatch", action="store_const", const=False,
                      help="force full-batch training")
    ps.add_argument("--max-full-batch", type=_at_least(0), default=10_000,
                    help="full batch up to this many observations (default 10000)")
    ps.add_argument("--batch-cells", type=_at_least(2), default=4096, help="own cells per mini-batch (default 4096)")
    for flag, name, typ, what in _SETTINGS:
        ps.add_argument(flag, dest=name, type=typ, default=None, help=f"{what} (default {_DEFAULTS[name]})")
    ps.add_argument("--predict", dest="predict", default=None, choices=list(PREDICT_MODES),
                    help=f"full-batch prediction (default {_DEFAULTS['predict']})")
    ps.add_argument("--device", default=None, help="cpu | cuda (default: CUDA when available)")
    ps.add_argument("--threads", type=_at_least(1), default=None, help="torch threads (default: torch's setting)")
    ps.add_argument("--truth", default=None, help="obs column of known domains: print the ARI")
    ps.set_defaults(func=run)
    return ps


def _params(args: argparse.Namespace) -> dict:
    """The STAGUE settings given on the command line (the others keep STAGUEConfig's defaults)."""
    names = [name for _, name, _, _ in _SETTINGS] + ["predict"]
    return {name: getattr(args, name) for name in names if getattr(args, name) is not None}


def summary_lines(res, key: str) -> list[str]:
    """The lines ``stdask stague`` prints about a :class:`~stdask.tl.stague.STAGUEResult`."""
    info = res.info
    loss = info["history"].get("loss") or [float("nan")]
    lines = [f"[stague] mode {info['mode']} on {info['device']}: {info['n_obs']:,} observations, "
             f"{info['input']['n_genes']} genes ({info['input']['layer']}"
             f"{', normalised here' if info['input'].get('normalized_here') else ''}); d_cut {info['d_cut']:.4g}, "
             f"{info['n_learned_edges']:,} learned edges",
             f"[stague] {len(loss)} epochs, loss at the last epoch {loss[-1]:.4f}; training "
             f"{info['seconds_training']:.1f} s, total {info['seconds_total']:.1f} s"]
    if res.labels is not None:
        counts = res.labels.value_counts().sort_index()
        lines.append(f"[stague] obs['{key}'] ({info['params']['cluster']}) sizes "
                     + ", ".join(f"{k}: {v}" for k, v in counts.items()))
    return lines


def run(args: argparse.Namespace) -> int:
    """Train STAGUE on the store, print the summary and write the results into the store."""
    from ..dataset import read
    from ..tl.metrics import ari
    from ..tl.stague import stague

    ds = read(args.store)
    if args.truth is not None and args.truth not in ds.obs:
        raise ValueError(f"{args.store}: no obs column {args.truth!r} for --truth; columns: {list(ds.obs.columns)}")
    res = stague(ds, args.n_clusters, cluster=args.cluster, refine=args.refine, layer=args.layer,
                 use_highly_variable=False if args.all_genes else None, epochs=args.epochs, seed=args.seed,
                 minibatch=args.minibatch, max_full_batch=args.max_full_batch, batch_cells=args.batch_cells,
                 key_added=args.key_added, device=args.device, threads=args.threads, **_params(args))
    for line in summary_lines(res, args.key_added):
        print(line)
    if args.truth is not None:
        print(f"[stague] ARI {ari(ds.obs[args.truth], res.labels):.3f} against obs['{args.truth}']")
    ds.write()
    k = args.key_added
    print(f"[stague] wrote obs['{k}'], obsm['{k}_embedding'], obsp['{k}_adj_raw'], obsp['{k}_adj_normalized'], "
          f"uns['{k}'] into {args.store}")
    return 0
