"""``stdask.tl.impute``: impute genes the panel did not measure from an scRNA-seq reference with stImpute
(Zeng et al., Commun. Biol. 2024; spec ``stimpute.md``), tile by tile into a second table of the store.

1. The reference is read, checked and matched to the panel (:mod:`.prepare`); both are normalised (§1).
2. The model trains on a sample of spatial cells on all shared genes (:func:`~stdask.models.stimpute.fit.fit`).
3. The reliability model learns each training gene's in-sample cosine from its predicted profile over the
   training cells and scores the imputed genes (§9).
4. Every tile group of the slice is read, normalised and predicted (§8); the rows stream into
   ``tables/<key_added>`` of the store, committed atomically at the end (the main table is untouched).

Unlike the analyses that leave their results pending until ``ds.write()``, the imputed table is written as it
is computed: at 10^6 cells x 2,000 genes it is 8 GB of float32, more than a pending result may hold.
"""
from __future__ import annotations

import time
from typing import Any, Sequence

import numpy as np
import pandas as pd

from ...dataset import SpatialDataset, read
from ...models.stimpute.config import StImputeConfig
from ...models.stimpute.predict import Predictor
from ...models.stimpute.reliability import train_reliability
from ...progress import progress_bar
from ...store.tables import check_table_name, write_table
from .prepare import (ImputeInputs, build_graph, default_train_cells, panel_rows, panel_tiles, prepare,
                      train_model, training_sample)

__all__ = ["MAX_GENES", "REFERENCE", "impute"]

REFERENCE = "stImpute (cquzys/stImpute @ 5a096592; Zeng et al., Commun. Biol. 7:1271, 2024)"
#: genes imputed when ``genes=None`` and the reference has more genes outside the panel
MAX_GENES = 2000


def _target_genes(inputs: ImputeInputs, genes: Sequence[str] | str | None, max_genes: int) -> np.ndarray:
    """Reference columns of the genes to impute."""
    ref_names = np.asarray(inputs.reference.var_names).astype(str)
    if genes is None or (isinstance(genes, str) and genes == "all"):
        cols = np.asarray(inputs.match.reference_only_index, dtype=np.int64)
        if genes is None and cols.size > max_genes:
            # the most variable reference-only genes (variance of the normalised log values)
            x = inputs.reference_norm[:, cols]
            mean = np.asarray(x.mean(0)).ravel()
            var = np.asarray(x.multiply(x).mean(0)).ravel() - mean ** 2
            cols = np.sort(cols[np.argsort(-var, kind="stable")[:max_genes]])
        if cols.size == 0:
            raise ValueError("every reference gene is in the panel already: there is nothing to impute")
        return cols
    if isinstance(genes, str):
        genes = [genes]
    pos = {g.upper() if inputs.match.case_folded else g: i for i, g in enumerate(ref_names)}
    key = (lambda g: str(g).upper()) if inputs.match.case_folded else str
    missing = [g for g in genes if key(g) not in pos]
    if missing:
        raise ValueError(f"{len(missing)} of the requested genes are not in the reference: {missing[:5]}")
    if len(set(map(key, genes))) != len(genes):
        raise ValueError("genes holds duplicates")
    return np.array([pos[key(g)] for g in genes], dtype=np.int64)


def impute(ds: SpatialDataset, reference: Any, genes: Sequence[str] | str | None = None,
           gene_embedding: Any = None, *, key_added: str = "imputed", train_cells: int | None = None,
           max_genes: int = MAX_GENES, reference_layer: str | None = None, case_insensitive: bool | None = None,
           reliability: str = "quantiles", seed: int = 42, device: str | None = None, threads: int | None = None,
           progress: bool = True, lock_timeout: float | None = None, **params: Any) -> SpatialDataset:
    """Impute unmeasured genes of a slice from an scRNA-seq reference (stImpute), into a second table.

    Parameters
    ----------
    ds
        The slice: raw counts of the measured panel in ``X``.
    reference
        scRNA-seq reference with raw counts: an ``AnnData``, an ``.h5ad`` path or a stdask store.
    genes
        Genes to impute: ``None`` (reference genes outside the panel; the ``max_genes`` most variable when there
        are more), ``"all"`` (every reference gene outside the panel), or names.
    gene_embedding
        Optional gene -> vector file (csv/tsv/parquet/npz) or :class:`~stdask.io.gene_embedding.GeneEmbedding`
        (e.g. ESM-2 protein embeddings computed elsewhere); the gene graph uses it where both genes have a vector
        and expression cosine elsewhere (spec §4.4).
    key_added
        Name of the table written (``tables/<key_added>``).
    train_cells
        Spatial cells the model trains on (default :data:`~.prepare.TRAIN_CELLS`, fewer when genes x K is
        large); the prediction covers every cell.
    max_genes
        Cap for ``genes=None``.
    reference_layer
        Reference layer with the raw counts (default ``X``).
    case_insensitive
        Gene-name matching (see :func:`~.reference.match_genes`): ``None`` refuses tables whose names differ in
        case, ``True`` matches upper-cased symbols.
    reliability
        ``"quantiles"`` (fixed width, default) or ``"profile"`` (the reference's N-wide input, N = training cells).
    seed
        Seeds the model (``StImputeConfig.seed``) and the training sample.
    device, threads
        ``None``: CUDA when torch sees one, else CPU; torch threads.
    progress
        Progress bars.
    lock_timeout
        Seconds to wait for another writer of the store.
    **params
        :class:`~stdask.models.stimpute.config.StImputeConfig` settings overriding the size rule (``k``,
        ``e_epochs``, ``hidden``, ``alpha``, ``blend``, ``weighting``, ``topk`` ...).

    Returns
    -------
    SpatialDataset
        ``stdask.read(store, table=key_added)``: obs aligned with the slice, var = the imputed genes with
        ``var['reliability']`` (predicted cosine) and ``var['reliable']`` (top half), X float32 chunked by tile,
        ``uns['stimpute']`` the provenance.
    """
    check_table_name(key_added)  # before hours of training, not after
    t_start = time.perf_counter()
    inputs = prepare(ds, reference, reference_layer=reference_layer, case_insensitive=case_insensitive,
                     reliability=reliability, progress=progress)
    match = inputs.match
    shared_ref = match.reference_index
    config = StImputeConfig.for_size(ds.n_obs, len(match.shared), seed=seed, **params)
    target_cols = _target_genes(inputs, genes, max_genes)
    n_train = default_train_cells(len(match.shared), config) if train_cells is None else int(train_cells)
    rows = training_sample(ds, n_train, seed)
    x_train = panel_rows(ds, rows, inputs, match.spatial_index)
    model, graph_train = train_model(x_train, inputs, shared_ref, match.shared, config, gene_embedding,
                                     device=device, threads=threads, progress=progress)
    all_cols = np.concatenate([shared_ref, target_cols])
    names_all = np.concatenate([match.shared, np.asarray(inputs.reference.var_names)[target_cols]]).astype(str)
    graph_all = build_graph(names_all, all_cols, inputs, config, gene_embedding)
    ref_all = inputs.reference_norm[:, all_cols]
    n_shared = len(match.shared)
    # reliability: in-sample profiles of every gene over the training cells (their neighbours of the last round)
    profiles = Predictor(model, ref_all, graph_all.matrix, np.arange(n_shared), np.arange(all_cols.size),
                         len(rows)).gnn(x_train, model.neighbours_gnn)
    rel_model = train_reliability(profiles[:, :n_shared], x_train, config, features=reliability)
    scores = rel_model.score(profiles[:, n_shared:])
    del profiles
    predictor = Predictor(model, ref_all, graph_all.matrix, np.arange(n_shared), np.arange(n_shared, all_cols.size),
                          ds.n_obs)
    maxima = None
    if config.blend != "paper":
        maxima = predictor.maxima(x for _, x in panel_tiles(ds, inputs, match.spatial_index))
    counts = {"n_kept_0": 0, "n_kept_1": 0}
    provenance: dict[str, Any] = {}
    t_predict = time.perf_counter()

    def blocks():
        bar = progress_bar(total=ds.n_obs, desc="stimpute: predict", unit="cell", disable=not progress)
        with bar:
            for _, x in panel_tiles(ds, inputs, match.spatial_index):
                parts = predictor.parts(x)
                counts["n_kept_0"] += int((parts.n_kept == 0).sum())
                counts["n_kept_1"] += int((parts.n_kept == 1).sum())
                bar.update(x.shape[0])
                yield predictor.blend(parts, maxima)
        # written after X (write_table writes uns last), so the counts and timings are complete
        provenance.update(method=REFERENCE, config=config.to_dict(), inputs=inputs.info, reliability=reliability,
                          graph_train=_jsonable(graph_train.info), graph_all=_jsonable(graph_all.info),
                          n_train_cells=int(len(rows)), neighbour_method=predictor.neighbour_method,
                          knn_edge_cases=dict(counts), history=_jsonable(model.history),
                          seconds={"train": t_predict - t_start, "predict": time.perf_counter() - t_predict})

    order = np.argsort(-scores, kind="stable")
    reliable = np.zeros(scores.size, dtype=bool)
    reliable[order[: scores.size // 2]] = True
    var = pd.DataFrame({"reliability": scores.astype(np.float64), "reliable": reliable},
                       index=pd.Index(names_all[n_shared:], name="gene"))
    write_table(ds.path, key_added, obs_names=ds.obs_names, var=var, blocks=blocks(), uns={"stimpute": provenance},
                lock_timeout=lock_timeout)
    return read(ds.path, table=key_added)


def _jsonable(value: Any) -> Any:
    """``value`` with numpy scalars and arrays as Python numbers and lists (for ``uns``)."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value
