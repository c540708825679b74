"""``stdask impute STORE --reference REF``: genes the panel did not measure, imputed from an scRNA-seq reference
with stImpute into a second table of the store (``tables/<key>``); with ``--cv``, the paper's gene
cross-validation against a kNN baseline instead (nothing written to the store)."""
from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

from ..models.stimpute.config import BLENDS, LARGE_DEFAULTS, SMALL_DEFAULTS, StImputeConfig
from ..models.stimpute.gene_graph import WEIGHTINGS
from ..models.stimpute.reliability import FEATURES
from ..tl.impute.prepare import TRAIN_CELLS
from ..tl.impute.run import MAX_GENES
from .common import seed_option
from .common import at_least as _at_least

__all__ = ["add_parser", "cv_lines", "run", "summary_lines"]

#: stImpute settings offered as options: (flag, StImputeConfig field, type, what it is). Left out, a setting
#: keeps the size rule's value (small data: < 10,000 cells and < 500 shared genes) or the dataclass default.
_SETTINGS = (
    ("--k", "k", _at_least(1), "reference neighbours per spatial cell (at most the reference's cells)"),
    ("--e-epochs", "e_epochs", _at_least(1), "Trans (E-step) steps per EM round"),
    ("--hidden", "hidden", _at_least(1), "width h of the Trans and reliability MLPs"),
    ("--alpha", "alpha", float, "blend weight of the GNN prediction, in [0, 1]"),
    ("--reliability-epochs", "reliability_epochs", _at_least(1), "steps of the reliability MLP"),
    ("--ae-epochs", "ae_epochs", _at_least(1), "autoencoder pre-training epochs"),
    ("--m-epochs", "m_epochs", _at_least(0), "autoencoder (M-step) steps per EM round"),
    ("--em-rounds", "em_rounds", _at_least(1), "EM rounds"),
    ("--topk", "topk", _at_least(1), "gene-graph neighbours per gene (similarity_topk weighting)"),
)
#: the defaults each setting has without the option: the size rule's two branches, else StImputeConfig's
_DEFAULTS = {**{f.name: str(f.default) for f in dataclasses.fields(StImputeConfig)},
             **{name: f"{SMALL_DEFAULTS[name]} on small data, else {LARGE_DEFAULTS[name]}" for name in SMALL_DEFAULTS}}
#: genes listed as the best predicted in the summary
N_TOP = 5


def add_parser(sub, parents: list[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    """Add ``impute`` to the sub-commands."""
    ps = sub.add_parser("impute", parents=[*parents, seed_option(42)],
                        help="stImpute: impute unmeasured genes from an scRNA-seq reference into a second table")
    ps.add_argument("store")
    ps.add_argument("--reference", required=True,
                    help="scRNA-seq reference with raw counts: an .h5ad file or a stdask store")
    ps.add_argument("--gene-embedding", default=None,
                    help="gene -> vector file (csv/tsv/parquet/npz) for the gene graph (default: expression cosine)")
    which = ps.add_mutually_exclusive_group()
    which.add_argument("--genes", default=None, help="comma-separated genes to impute")
    which.add_argument("--genes-file", default=None, help="file of genes to impute, one a line")
    which.add_argument("--all-genes", action="store_true", help="every reference gene outside the panel")
    ps.add_argument("--max-genes", type=_at_least(1), default=None,
                    help=f"without --genes: the most variable reference genes outside the panel (default {MAX_GENES})")
    ps.add_argument("--key-added", default=None, help="table written: tables/KEY_ADDED (default imputed)")
    ps.add_argument("--train-cells", type=_at_least(1), default=None,
                    help=f"spatial cells the model trains on (default {TRAIN_CELLS}, fewer for many genes x K)")
    ps.add_argument("--reference-layer", default=None, help="reference layer with the raw counts (default X)")
    ps.add_argument("--case-insensitive", action=argparse.BooleanOptionalAction, default=None,
                    help="match gene names by upper-cased symbol (default: refuse names that differ only in case; "
                    "--no-case-insensitive: exact names whatever the case)")
    ps.add_argument("--reliability", default="quantiles", choices=list(FEATURES),
                    help="reliability model input (default quantiles)")
    ps.add_argument("--blend", default=None, choices=list(BLENDS), help=f"final blend (default {_DEFAULTS['blend']})")
    ps.add_argument("--weighting", default=None, choices=list(WEIGHTINGS),
                    help=f"gene-graph weighting (default {_DEFAULTS['weighting']})")
    for flag, name, typ, what in _SETTINGS:
        ps.add_argument(flag, dest=name, type=typ, default=None, help=f"{what} (default {_DEFAULTS[name]})")
    ps.add_argument("--cv", action="store_true",
                    help="cross-validate over the panel's genes with a kNN baseline instead of imputing")
    ps.add_argument("--folds", type=_at_least(2), default=None, help="with --cv: gene folds (default 5)")
    ps.add_argument("--fold-seed", type=_at_least(0), default=None,
                    help="with --cv: KFold random_state of the gene split (default 0; --seed seeds the models)")
    ps.add_argument("--cv-out", default=None, help="with --cv: write genes.csv, cells.csv.gz, summary.csv here")
    ps.add_argument("--device", default=None, help="cpu | cuda (default: CUDA when available)")
    ps.add_argument("--threads", type=_at_least(1), default=None, help="torch threads (default: torch's setting)")
    ps.set_defaults(func=run)
    return ps


def _params(args: argparse.Namespace) -> dict:
    """The StImputeConfig settings given on the command line (the others keep the size rule's)."""
    names = [name for _, name, _, _ in _SETTINGS] + ["blend", "weighting"]
    return {name: getattr(args, name) for name in names if getattr(args, name) is not None}


def _genes(args: argparse.Namespace) -> list[str] | str | None:
    """The genes to impute: named, read from ``--genes-file``, ``"all"`` or None (the most variable)."""
    if args.all_genes:
        return "all"
    if args.genes is not None:
        genes = [g.strip() for g in args.genes.split(",") if g.strip()]
        source = "--genes"
    elif args.genes_file is not None:
        path = Path(args.genes_file)
        if not path.is_file():
            raise FileNotFoundError(f"--genes-file {str(path)!r} does not exist")
        genes = [line.strip() for line in path.read_text().splitlines() if line.strip()]
        source = f"--genes-file {str(path)!r}"
    else:
        return None
    if not genes:
        raise ValueError(f"{source} names no gene")
    return genes


def _check_mode(args: argparse.Namespace) -> None:
    """Refuse options of the other mode (imputation vs ``--cv``) rather than ignore them."""
    impute_only = {"--genes": args.genes, "--genes-file": args.genes_file, "--all-genes": args.all_genes or None,
                   "--max-genes": args.max_genes, "--key-added": args.key_added}
    cv_only = {"--folds": args.folds, "--fold-seed": args.fold_seed, "--cv-out": args.cv_out}
    wrong = [flag for flag, value in (impute_only if args.cv else cv_only).items() if value is not None]
    if wrong:
        raise ValueError(f"{', '.join(wrong)} {'do' if len(wrong) > 1 else 'does'} not apply "
                         f"{'with --cv (the cross-validation covers the panel genes)' if args.cv else 'without --cv'}")


def summary_lines(table, seconds: float) -> list[str]:
    """The lines ``stdask impute`` prints about the imputed table (a :class:`~stdask.SpatialDataset`)."""
    info = table.get_result("uns", "stimpute")
    rel = table.var["reliability"].sort_values(ascending=False, kind="stable")
    config = info["config"]
    top = ", ".join(f"{g} {v:.3f}" for g, v in rel.head(N_TOP).items())
    return [f"[impute] table '{table.table}': {table.n_obs:,} obs x {table.n_vars:,} imputed genes "
            f"(trained on {info['inputs']['shared_genes']:,} shared genes x {info['n_train_cells']:,} cells of a "
            f"{info['inputs']['reference_cells']:,}-cell reference); K {config['k']}, blend {config['blend']}, "
            f"weighting {config['weighting']}",
            f"[impute] reliability (predicted cosine): median {rel.median():.3f}; "
            f"{int(table.var['reliable'].sum()):,} genes marked reliable; top {min(N_TOP, len(rel))}: {top}",
            f"[impute] training {info['seconds']['train']:.1f} s, prediction {info['seconds']['predict']:.1f} s, "
            f"total {seconds:.1f} s"]


def cv_lines(cv, seconds: float) -> list[str]:
    """The lines ``stdask impute --cv`` prints about an :class:`~stdask.tl.impute.ImputeCV`."""
    genes = cv.genes
    better = int((genes["cosine"] > genes["knn_cosine"]).sum())
    gain = (genes["cosine"] - genes["knn_cosine"]).sort_values(ascending=False, kind="stable")
    top = ", ".join(f"{g} {v:+.3f}" for g, v in gain.head(N_TOP).items())
    lines = [f"[impute] {cv.info['folds']}-fold cross-validation over {len(genes):,} panel genes, "
             f"{len(cv.cells):,} cells; stImpute vs kNN average (knn_*):"]
    lines += cv.summary.to_string(float_format=lambda v: f"{v:.4f}").splitlines()
    lines += [f"[impute] stImpute's gene cosine above the kNN baseline's for {better:,} of {len(genes):,} genes; "
              f"largest gains: {top}",
              f"[impute] total {seconds:.1f} s"]
    return lines


def _write_cv(cv, folder: Path) -> list[Path]:
    """``genes.csv``, ``cells.csv.gz`` and ``summary.csv`` of the cross-validation in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    out = [folder / "genes.csv", folder / "cells.csv.gz", folder / "summary.csv"]
    for frame, path in zip((cv.genes, cv.cells, cv.summary), out):
        frame.to_csv(path)
    return out


def run(args: argparse.Namespace) -> int:
    """Impute (or cross-validate) on the store and print the summary."""
    from ..dataset import read
    from ..settings import settings
    from ..tl.impute import impute, impute_cv

    _check_mode(args)
    ds = read(args.store)
    t0 = time.perf_counter()
    common = dict(gene_embedding=args.gene_embedding, train_cells=args.train_cells,
                  reference_layer=args.reference_layer, case_insensitive=args.case_insensitive,
                  reliability=args.reliability, device=args.device, threads=args.threads,
                  progress=settings.progress, **_params(args))
    if args.cv:
        cv = impute_cv(ds, args.reference, folds=args.folds or 5, seed=args.fold_seed or 0, model_seed=args.seed,
                       **common)
        for line in cv_lines(cv, time.perf_counter() - t0):
            print(line)
        if args.cv_out is not None:
            print(f"[impute] wrote {', '.join(map(str, _write_cv(cv, Path(args.cv_out))))}")
        return 0
    key = args.key_added or "imputed"
    table = impute(ds, args.reference, _genes(args), key_added=key,
                   max_genes=MAX_GENES if args.max_genes is None else args.max_genes, seed=args.seed, **common)
    for line in summary_lines(table, time.perf_counter() - t0):
        print(line)
    print(f"[impute] wrote tables/{key} into {args.store}; open it with stdask.read(store, table={key!r})")
    return 0

