"""The entry point: :func:`fit` trains STAGUE full-batch on arrays (spec §7) and predicts (spec §8)."""
from __future__ import annotations

import time

import numpy as np

from ..spaseg.runtime import deterministic, resolve_device
from .config import STAGUEConfig, STAGUEFit, _torch
from .graph import anchor_edges, candidate_pairs, cutoff_distance
from .learner import graph_learner, spatial_prior
from .losses import nt_xent, triplet_loss
from .net import cell_encoder, graph_encoder
from .sparse import bootstrap, dropout_edge
from .views import column_mask, permutation


def _inputs(X, coords, config, anchor, candidates, d_cut):
    """Validate the arrays and build any spatial input not given."""
    X = np.asarray(X, dtype=np.float32)
    coords = np.asarray(coords, dtype=np.float64)
    if X.ndim != 2 or coords.ndim != 2 or coords.shape[0] != X.shape[0]:
        raise ValueError(f"X must be (N, G) and coords (N, 2) with the same N, got {X.shape} and {coords.shape}")
    if X.shape[0] < 3:
        raise ValueError(f"STAGUE needs at least 3 cells, got {X.shape[0]}")
    if max(config.k, config.a_k) >= X.shape[0]:
        raise ValueError(f"k={config.k} and a_k={config.a_k} must be below the number of cells ({X.shape[0]})")
    if anchor is None:
        anchor = anchor_edges(coords, config.a_k)
    if d_cut is None:
        d_cut = cutoff_distance(coords, config.k)
    if not d_cut > 0:
        raise ValueError(f"d_cut must be > 0, got {d_cut!r} (are many cells at identical coordinates?)")
    if candidates is None:
        cand, dist = candidate_pairs(coords, d_cut, config.n_candidates)
    else:
        cand = np.asarray(candidates, dtype=np.int64)
        dist = np.linalg.norm(coords[cand[0]] - coords[cand[1]], axis=1)
        ok = (dist > 0) & (dist <= d_cut) & (cand[0] != cand[1])
        cand, dist = cand[:, ok], dist[ok]
    return X, coords, anchor, cand, dist, float(d_cut)


def contrastive_loss(enc, f, anchor, learn, n: int, config: STAGUEConfig, gen, identity, own=None):
    """Spec §5.3 and §6: the anchor, learner and negative views of ``f`` through the encoder and
    ``L = NT-Xent(p1, p2) + w * triplet(p1, p2, p1-)``, over the cells ``own`` (default all).

    ``anchor``: (index, value) adjacency of the n cells; ``learn()``: runs the graph learner, called
    between the anchor and the learner view as in the reference (the order of the forward pass sets the
    order in which autograd sums gradients, so it is kept); ``identity``: the identity graph. Draws (in the
    reference's order): anchor columns, anchor edge dropout, learner columns, learner edge dropout,
    permutation, negative columns. Returns (loss, nt_xent, triplet, learn()'s value)."""
    fa = column_mask(f, config.maskfeat_rate_anchor, gen)
    a_idx, a_val = dropout_edge(*anchor, config.dropedge_rate, gen)
    _, p1 = enc(fa, (a_idx, a_val, n))
    out = learn()
    learned = out[0]
    fl = column_mask(f, config.maskfeat_rate_learner, gen)
    l_idx, l_val = dropout_edge(*learned, config.dropedge_rate, gen)
    _, p2 = enc(fl, (l_idx, l_val, n))
    perm = permutation(n, gen, f.device)
    _, pn = enc(column_mask(f[perm], config.maskfeat_rate_anchor, gen), identity)
    if own is not None:
        p1, p2, pn = p1[own], p2[own], pn[own]
    l_nt = nt_xent(p1, p2, config.temperature, config.sim_batch_size)
    l_tri = triplet_loss(p1, p2, pn, config.margin)
    return l_nt + config.margin_weight * l_tri, l_nt, l_tri, out


def _epoch(mods, opt, state, config, gen):
    """One training epoch (spec §7 steps 1-7); returns (losses, F, A_learned) and updates the anchor."""
    torch = _torch()
    cenc, enc, learner = mods
    n = state["n"]
    opt.zero_grad()
    f = cenc(state["X"])
    loss, l_nt, l_tri, (learned, raw) = contrastive_loss(enc, f, state["anchor"], lambda: learner(f), n, config,
                                                         gen, state["identity"])
    loss.backward()
    opt.step()
    with torch.no_grad():
        state["anchor"] = bootstrap(state["anchor"], learned, config.tau, n)
    return (float(loss.detach()), float(l_nt.detach()), float(l_tri.detach())), f.detach(), learned, raw


def identity_graph(n: int, dev):
    """The identity adjacency ``(index, value, n)`` of the negative view."""
    torch = _torch()
    return torch.arange(n, device=dev).repeat(2, 1), torch.ones(n, device=dev), n


def build_modules(n_genes: int, config: STAGUEConfig, dev, graph=None):
    """Cell encoder, graph learner and graph encoder (created in this order, so the weights drawn from the
    seeded torch RNG are the same for full-batch and mini-batch training), Adam over all their parameters
    and the seeded ``torch.Generator`` of the view draws.

    ``graph``: ``((index, value, N) anchor0, candidates, prior)`` the learner keeps (full batch), or
    ``None`` when every call passes its subgraph (mini-batch)."""
    torch = _torch()
    g = graph if graph is not None else (None, None, None)
    cenc = cell_encoder(n_genes, config).to(dev)
    learner = graph_learner(config.exp_out, config, *g).to(dev)
    enc = graph_encoder(config.exp_out, config).to(dev)
    params = [*cenc.parameters(), *learner.parameters(), *enc.parameters()]
    opt = torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    gen = torch.Generator(device=dev)
    gen.manual_seed(int(config.seed))
    return (cenc, learner, enc), opt, gen


def to_csr(index, value, n: int):
    """(n, n) ``scipy.sparse.csr_matrix`` float32 of torch COO triples."""
    import scipy.sparse as sp

    idx, val = index.cpu().numpy(), value.detach().cpu().numpy().astype(np.float32)
    return sp.csr_matrix((val, (idx[0], idx[1])), shape=(n, n))


def _train(X, anchor, cand, prior, config, dev, progress):
    """Build the modules under the forked, seeded RNG and run the loop; returns the fit pieces."""
    torch = _torch()
    from ...progress import progress_bar

    n = X.shape[0]
    t = lambda a, dt=None: torch.as_tensor(a, dtype=dt, device=dev)  # noqa: E731
    anchor0 = (t(anchor[0]), t(anchor[1], torch.float32))
    (cenc, learner, enc), opt, gen = build_modules(X.shape[1], config, dev, ((*anchor0, n), t(cand), t(prior)))
    state = {"n": n, "X": t(X), "anchor": anchor0, "identity": identity_graph(n, dev)}
    hist = {"loss": [], "nt_xent": [], "triplet": [], "anchor_nnz": []}
    for m in (cenc, learner, enc):
        m.train()
    f = learned = raw = None
    for _ in progress_bar(range(config.epochs), desc="stague", unit="epoch", disable=not progress):
        losses, f, learned, raw = _epoch((cenc, enc, learner), opt, state, config, gen)
        for key, v in zip(("loss", "nt_xent", "triplet"), losses):
            hist[key].append(v)
        hist["anchor_nnz"].append(int(state["anchor"][1].numel()))
    for m in (cenc, learner, enc):
        m.eval()
    with torch.no_grad():
        if config.predict == "recompute":
            f = cenc(state["X"])
            learned, raw = learner(f)
        z, _ = enc(f, (learned[0], learned[1].detach(), n))
    return z, learned, raw, hist


def fit(X: np.ndarray, coords: np.ndarray, config: STAGUEConfig | None = None, *, seed: int | None = None,
        anchor: tuple | None = None, candidates: np.ndarray | None = None, d_cut: float | None = None,
        device: str | None = None, threads: int | None = None, progress: bool = False) -> STAGUEFit:
    """Train STAGUE on one slice, full batch.

    Parameters
    ----------
    X
        (N, G) float32 log-normalised expression (dense; no PCA).
    coords
        (N, 2) float coordinates.
    config
        :class:`STAGUEConfig` (defaults: the reference's ``main.py``).
    seed
        Overrides ``config.seed``.
    anchor
        ``(index (2, E) int64, value (E,) float32)`` normalised anchor; default :func:`anchor_edges`.
    candidates
        (2, C) int64 candidate pairs; those with ``d_ij = 0``, ``d_ij > d_cut`` or ``i == j`` are dropped.
        Default :func:`candidate_pairs` (each cell's ``n_candidates`` nearest cells within ``d_cut``).
    d_cut
        Cutoff distance; default :func:`cutoff_distance` with ``config.k``.
    device
        ``None``: CUDA when available, else CPU.
    threads
        ``torch.set_num_threads`` for the run (default: unchanged).
    progress
        Show a progress bar.

    Returns
    -------
    STAGUEFit
        Deterministic for a seed on the CPU; the caller's global RNG is left untouched.
    """
    config = config or STAGUEConfig()
    if seed is not None:
        config = STAGUEConfig(**{**config.__dict__, "seed": int(seed)})
    config.validate()
    X, coords, anchor, cand, dist, d_cut = _inputs(X, coords, config, anchor, candidates, d_cut)
    prior = spatial_prior(dist, d_cut, config.gamma)
    dev = resolve_device(device)
    torch = _torch()
    t0 = time.perf_counter()
    devices = [torch.device(dev)] if dev.startswith("cuda") else []
    with deterministic(threads), torch.random.fork_rng(devices=devices):
        torch.manual_seed(int(config.seed))
        z, learned, raw, hist = _train(X, anchor, cand, prior, config, dev, progress)
    n = X.shape[0]
    return STAGUEFit(embedding=z.cpu().numpy().astype(np.float32), adj_raw=to_csr(*raw, n),
                     adj_normalized=to_csr(*learned, n), d_cut=d_cut, history=hist, device=dev,
                     seconds=time.perf_counter() - t0)
