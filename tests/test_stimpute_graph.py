"""stImpute's gene-graph foundation: the gene-embedding file reader (``stdask.io.gene_embedding``) and the
aggregation matrix (``stdask.models.stimpute.gene_graph``), spec ``stimpute.md`` §4 and §15. Small random
inputs; brute-force references written independently of the implementation."""
from __future__ import annotations

import gzip
import importlib
import math
import warnings

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from stdask.io.base import InputError
from stdask.io.gene_embedding import GeneEmbedding, read_gene_embedding
from stdask.models.stimpute import expression_similarity, gene_graph, rank_positive

#: the module (the package's name ``gene_graph`` is the function)
gg_module = importlib.import_module("stdask.models.stimpute.gene_graph")
GENES = np.array([f"Gene{i}" for i in range(9)])


def _frame(genes, vectors, gene_name="gene"):
    df = pd.DataFrame(vectors, columns=[f"v{j}" for j in range(vectors.shape[1])])
    df.insert(0, gene_name, genes)
    return df


def _write(path, genes, vectors):
    """Write ``genes``/``vectors`` in the format named by the suffix."""
    name = path.name
    if name.endswith(".npz"):
        np.savez(path, genes=np.asarray(genes, dtype=str), vectors=vectors)
    elif name.endswith(".parquet"):
        _frame(genes, vectors).to_parquet(path)
    else:
        _frame(genes, vectors).to_csv(path, sep="\t" if ".tsv" in name else ",", index=False)
    return path


def _cos(a, b):
    na, nb = math.sqrt(float(a @ a)), math.sqrt(float(b @ b))
    return 0.0 if na == 0 or nb == 0 else float(a @ b) / (na * nb)


def _brute_cos(vectors):
    """Pairwise cosine by explicit loops (rows are items)."""
    n = len(vectors)
    return np.array([[_cos(vectors[i], vectors[j]) for j in range(n)] for i in range(n)])


# ---------------------------------------------------------------- reading the file

@pytest.mark.parametrize("name", ["emb.csv", "emb.tsv", "emb.parquet", "emb.npz"])
def test_formats_round_trip(tmp_path, name):
    vectors = np.random.default_rng(1).normal(size=(len(GENES), 7)).astype(np.float32)
    emb = read_gene_embedding(_write(tmp_path / name, GENES, vectors))
    assert emb.genes.tolist() == GENES.tolist()
    assert emb.vectors.dtype == np.float32 and emb.vectors.shape == (len(GENES), 7)
    np.testing.assert_array_equal(emb.vectors, vectors)
    assert emb.source == str(tmp_path / name)


def test_gene_column_by_name_index_and_gzip(tmp_path):
    vectors = np.random.default_rng(2).normal(size=(len(GENES), 3)).astype(np.float32)
    # the gene column found by its name although it is not first; symbols such as 'NA' stay names
    genes = GENES.copy()
    genes[0] = "NA"
    df = pd.DataFrame(vectors, columns=["a", "b", "c"])
    df["Symbol"] = genes
    df.to_csv(tmp_path / "named.csv", index=False)
    emb = read_gene_embedding(tmp_path / "named.csv")
    assert emb.genes.tolist() == genes.tolist()
    np.testing.assert_array_equal(emb.vectors, vectors)
    # pandas' own layouts: genes as the index (Parquet), DataFrame(...).to_csv with the index, gzipped TSV
    pd.DataFrame(vectors, index=pd.Index(GENES, name="g")).to_parquet(tmp_path / "index.parquet")
    assert read_gene_embedding(tmp_path / "index.parquet").genes.tolist() == GENES.tolist()
    pd.DataFrame(vectors, index=GENES).to_csv(tmp_path / "index.csv")
    np.testing.assert_array_equal(read_gene_embedding(tmp_path / "index.csv").vectors, vectors)
    with gzip.open(tmp_path / "emb.tsv.gz", "wt") as fh:
        _frame(GENES, vectors).to_csv(fh, sep="\t", index=False)
    np.testing.assert_array_equal(read_gene_embedding(tmp_path / "emb.tsv.gz").vectors, vectors)


def test_duplicate_genes_listed(tmp_path):
    genes = np.array(["A", "B", "A", "C", "C", "D"])
    with pytest.raises(InputError, match=r"emb\.csv.*unique.*'A', 'C'"):
        read_gene_embedding(_write(tmp_path / "emb.csv", genes, np.ones((6, 2))))


def test_non_finite_counted_with_first_gene(tmp_path):
    vectors = np.ones((len(GENES), 3))
    vectors[4, 1] = np.nan
    vectors[6, 0] = np.inf
    with pytest.raises(InputError, match=r"emb\.parquet: 2 values are not finite.*'Gene4'"):
        read_gene_embedding(_write(tmp_path / "emb.parquet", GENES, vectors))
    (tmp_path / "gap.csv").write_text("gene,v0,v1\nA,1,2\nB,,3\n")
    with pytest.raises(InputError, match=r"1 values are not finite.*'B'"):
        read_gene_embedding(tmp_path / "gap.csv")
    # beyond float32's range is refused, not stored as inf
    (tmp_path / "big.csv").write_text("gene,v0\nA,1e300\n")
    with pytest.raises(InputError, match="not finite.*'A'"):
        read_gene_embedding(tmp_path / "big.csv")


def test_ragged_rows_and_shapes(tmp_path):
    (tmp_path / "ragged.csv").write_text("gene,v0,v1\nA,1,2\nB,1,2,3\n")
    with pytest.raises(InputError, match=r"ragged\.csv: cannot read.*same d"):
        read_gene_embedding(tmp_path / "ragged.csv")
    np.savez(tmp_path / "flat.npz", genes=np.array(["A", "B"]), vectors=np.ones(2))
    with pytest.raises(InputError, match=r"flat\.npz: vectors must be 2-D"):
        read_gene_embedding(tmp_path / "flat.npz")
    np.savez(tmp_path / "count.npz", genes=np.array(["A", "B", "C"]), vectors=np.ones((2, 4)))
    with pytest.raises(InputError, match="3 gene names but 2 vectors"):
        read_gene_embedding(tmp_path / "count.npz")
    (tmp_path / "nocol.csv").write_text("gene\nA\nB\n")
    with pytest.raises(InputError, match="d = 0"):
        read_gene_embedding(tmp_path / "nocol.csv")


def test_no_genes(tmp_path):
    (tmp_path / "empty.csv").write_text("gene,v0,v1\n")
    with pytest.raises(InputError, match=r"empty\.csv: contains no genes"):
        read_gene_embedding(tmp_path / "empty.csv")
    np.savez(tmp_path / "empty.npz", genes=np.array([], dtype=str), vectors=np.ones((0, 3)))
    with pytest.raises(InputError, match="contains no genes"):
        read_gene_embedding(tmp_path / "empty.npz")


def test_non_numeric_column_named(tmp_path):
    (tmp_path / "text.tsv").write_text("gene\tv0\tv1\nA\t1\t0.5\nB\t2\tabc\n")
    with pytest.raises(InputError, match=r"text\.tsv: column 'v1' is not numeric \(gene 'B' has 'abc'\)"):
        read_gene_embedding(tmp_path / "text.tsv")


def test_npz_and_format_errors(tmp_path):
    np.savez(tmp_path / "keys.npz", names=np.array(["A"]), vectors=np.ones((1, 2)))
    with pytest.raises(InputError, match=r"no array 'genes'.*np\.savez"):
        read_gene_embedding(tmp_path / "keys.npz")
    np.savez(tmp_path / "obj.npz", genes=np.array(["A", "B"], dtype=object), vectors=np.ones((2, 2)))
    with pytest.raises(InputError, match=r"dtype=str"):
        read_gene_embedding(tmp_path / "obj.npz")
    (tmp_path / "emb.pkl").write_bytes(b"x")
    with pytest.raises(InputError, match=r"emb\.pkl: cannot tell the gene-embedding format"):
        read_gene_embedding(tmp_path / "emb.pkl")
    with pytest.raises(InputError, match="no such"):
        read_gene_embedding(tmp_path / "missing.csv")


def test_empty_gene_name(tmp_path):
    with pytest.raises(InputError, match="1 gene names are empty.*row 1"):
        GeneEmbedding(np.array(["A", "", "C"]), np.ones((3, 2)), "mem")


# ---------------------------------------------------------------- matching

def test_exact_and_case_insensitive_match():
    emb = GeneEmbedding(np.array(["Gapdh", "Actb", "Sox2"]), np.arange(6.0).reshape(3, 2), "mem")
    m = emb.match(["ACTB", "Sox2", "Xist"])
    assert m.covered.tolist() == [False, True, False] and m.coverage == pytest.approx(1 / 3)
    assert np.isnan(m.vectors[0]).all() and m.index.tolist() == [-1, 2, -1]
    np.testing.assert_array_equal(m.vectors[1], [4.0, 5.0])
    m = emb.match(["ACTB", "Sox2", "Xist"], case_insensitive=True)
    assert m.covered.tolist() == [True, True, False] and m.coverage == pytest.approx(2 / 3)
    np.testing.assert_array_equal(m.vectors[0], [2.0, 3.0])
    assert m.missing == ["Xist"]


def test_case_insensitive_refuses_ambiguity():
    emb = GeneEmbedding(np.array(["Gapdh", "GAPDH", "Actb"]), np.arange(6.0).reshape(3, 2), "mem")
    # an exact match needs no folding, so it is not ambiguous
    assert emb.match(["GAPDH"], case_insensitive=True).index.tolist() == [1]
    with pytest.raises(InputError, match=r"mem: gene 'gapdh' matches 'Gapdh', 'GAPDH'"):
        emb.match(["gapdh"], case_insensitive=True)
    with pytest.raises(InputError, match=r"query genes 'Actb', 'ACTB' all take the vector of 'Actb'"):
        emb.match(["Actb", "ACTB"], case_insensitive=True)
    # a repeated exact query is not a case-folding ambiguity
    assert emb.match(["Actb", "Actb"], case_insensitive=True).index.tolist() == [2, 2]


# ---------------------------------------------------------------- the graph

def test_distance_code_hand_computed():
    # v0=(1,0), v1=(0,1), v2=(1,1), v3=(-1,0); s = 1/sqrt(2)
    vectors = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-1.0, 0.0]])
    s = 1 / math.sqrt(2)
    d = np.array([[0, 1, 1 - s, 2],
                  [1, 0, 1 - s, 1],
                  [1 - s, 1 - s, 0, 1 + s],
                  [2, 1, 1 + s, 0]])
    r = d.sum(axis=1) - 1  # the diagonal is 0
    np.testing.assert_allclose(r, [3 - s, 2 - s, 2 - s, 3 + s])
    expected = d / (r[:, None] + 1e-12)
    np.fill_diagonal(expected, -1 / (r + 1e-12))
    mat, info = gene_graph(["a", "b", "c", "d"], None, vectors, weighting="distance_code")
    assert isinstance(mat, np.ndarray) and mat.dtype == np.float32
    np.testing.assert_allclose(mat, expected, rtol=1e-6, atol=1e-7)
    assert (np.diag(mat) < 0).all()
    assert info["source"] == "embedding" and info["weighting"] == "distance_code" and info["k"] is None


def _random_expr(seed, cells=60, genes=len(GENES)):
    rng = np.random.default_rng(seed)
    x = rng.poisson(rng.gamma(1.0, 1.0, size=(cells, genes))).astype(np.float64)
    return np.log1p(x)


def test_topk_rows_against_brute_force():
    vectors = np.random.default_rng(3).normal(size=(len(GENES), 4))
    vectors[5] = vectors[2]  # an exact tie with another gene
    k = 3
    mat, info = gene_graph(GENES, _random_expr(0), vectors, k=k)
    assert sp.isspmatrix_csr(mat) and mat.dtype == np.float32 and info["k"] == k
    dense = mat.toarray()
    cos = _brute_cos(vectors)
    assert (dense >= 0).all() and (np.diag(dense) == 0).all()
    for g in range(len(GENES)):
        ranked = sorted((j for j in range(len(GENES)) if j != g), key=lambda j: (-round(cos[g, j], 12), j))
        chosen = [j for j in ranked[:k] if cos[g, j] > 0]
        assert np.flatnonzero(dense[g]).tolist() == sorted(chosen)
        if chosen:
            w = np.array([cos[g, j] for j in sorted(chosen)])
            np.testing.assert_allclose(dense[g, sorted(chosen)], w / w.sum(), rtol=1e-6)
            assert dense[g].sum() == pytest.approx(1.0, abs=1e-6)
    # k is capped at G - 1
    mat, info = gene_graph(GENES, _random_expr(0), k=100)
    assert info["k"] == len(GENES) - 1 and info["k_requested"] == 100
    assert np.diff(mat.indptr).max() == len(GENES) - 1


def test_ties_go_to_the_lower_gene_index():
    vectors = np.array([[1.0, 0.0], [1.0, 1.0], [1.0, -1.0], [1.0, 1.0], [0.0, 1.0]])
    mat, _ = gene_graph(list("abcde"), None, vectors, k=1)
    # gene 0 is equally similar to 1, 2 and 3: the lowest index wins
    assert mat[0].indices.tolist() == [1]


def test_row_without_positive_similarity_is_zero():
    vectors = np.array([[1.0, 0.0], [-1.0, 0.5], [0.0, 1.0], [-1.0, -1.0], [0.0, -1.0]])
    mat, _ = gene_graph(list("abcde"), None, vectors, k=4)
    assert mat[0].nnz == 0
    sums = np.asarray(mat.sum(axis=1)).ravel()
    np.testing.assert_allclose(sums[1:], 1.0, rtol=1e-6)


def test_expression_similarity_sparse_dense_chunked(monkeypatch):
    x = _random_expr(4, cells=50)
    x[:, 3] = 0.0  # a gene never expressed: similarity 0 to every gene
    ref = _brute_cos(x.T)
    np.testing.assert_allclose(expression_similarity(x), ref, atol=1e-12)
    monkeypatch.setattr(gg_module, "_CHUNK_VALUES", 2 * x.shape[1])  # two cells per chunk
    np.testing.assert_allclose(expression_similarity(sp.csr_matrix(x)), ref, atol=1e-12)
    assert (expression_similarity(x)[3] == 0).all()
    x[7, 2] = np.nan
    with pytest.raises(ValueError, match=r"NaN or inf \(first at cell 7, gene column 2\)"):
        expression_similarity(x)


def test_hybrid_uses_embedding_exactly_where_both_genes_have_vectors(tmp_path):
    rng = np.random.default_rng(5)
    expr = _random_expr(6)
    covered = np.zeros(len(GENES), dtype=bool)
    covered[[0, 2, 3, 6, 7]] = True
    vectors = rng.normal(size=(covered.sum(), 5))
    path = _write(tmp_path / "part.npz", np.append(GENES[covered], "NotInData"), np.vstack([vectors, np.ones(5)]))
    mat, info = gene_graph(GENES, sp.csr_matrix(expr), path, k=len(GENES) - 1)  # no top-k cut: all weights
    assert info["source"] == "hybrid" and info["coverage"] == pytest.approx(5 / 9) and info["n_covered"] == 5
    expected = _brute_cos(expr.T)
    idx = np.flatnonzero(covered)
    expected[np.ix_(idx, idx)] = _brute_cos(vectors)
    w = np.maximum(expected, 0.0)
    np.fill_diagonal(w, 0.0)
    w /= w.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(mat.toarray(), w, rtol=1e-5, atol=1e-7)
    # the embedding has negative cosines, expression of counts none: the sources really differ
    assert (expected[np.ix_(idx, idx)] < 0).any()


def test_zero_coverage_file_equals_expression_graph(tmp_path):
    expr = _random_expr(7)
    path = _write(tmp_path / "other.csv", np.array(["X1", "X2"]), np.ones((2, 3)))
    with pytest.warns(UserWarning, match="covers none of the 9 genes.*expression cosine"):
        mat, info = gene_graph(GENES, expr, path, k=4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ref, ref_info = gene_graph(GENES, expr, k=4)
    assert info["source"] == ref_info["source"] == "expression" and info["coverage"] == 0.0
    assert (mat != ref).nnz == 0 and np.array_equal(mat.indptr, ref.indptr)


def test_full_coverage_needs_no_reference_and_case_insensitive_file(tmp_path):
    vectors = np.random.default_rng(8).normal(size=(len(GENES), 6)).astype(np.float32)  # as the file holds
    path = _write(tmp_path / "upper.parquet", np.char.upper(GENES), vectors)
    with pytest.warns(UserWarning, match="covers none"):  # the exact match finds nothing
        _, info = gene_graph(GENES, _random_expr(0), path, k=3)
    assert info["source"] == "expression"
    mat, info = gene_graph(GENES, None, path, k=3, case_insensitive=True)
    assert info["source"] == "embedding" and info["coverage"] == 1.0 and info["case_insensitive"]
    ref, _ = gene_graph(GENES, None, vectors, k=3)
    np.testing.assert_array_equal(mat.toarray(), ref.toarray())


def test_rank_transform_per_source():
    values = np.array([-0.5, 0.2, 0.9, 0.0, 0.2, 0.5])
    np.testing.assert_allclose(rank_positive(values), [0, 1.5 / 4, 1.0, 0, 1.5 / 4, 3 / 4])
    vectors = np.random.default_rng(9).normal(size=(len(GENES), 3))
    plain, _ = gene_graph(GENES, None, vectors, k=2)
    ranked, info = gene_graph(GENES, None, vectors, k=2, rank_transform=True)
    # a monotone transform within one source keeps the neighbours and changes the weights
    assert info["rank_transform"] and np.array_equal(plain.indices, ranked.indices)
    assert not np.allclose(plain.data, ranked.data)


def test_graph_argument_errors():
    expr = _random_expr(0)
    with pytest.raises(ValueError, match="weighting must be one of"):
        gene_graph(GENES, expr, weighting="distance")
    with pytest.raises(ValueError, match="k must be an integer >= 1"):
        gene_graph(GENES, expr, k=0)
    with pytest.raises(ValueError, match="rank_transform is for"):
        gene_graph(GENES, expr, weighting="distance_code", rank_transform=True)
    with pytest.raises(ValueError, match="ref_expr .* is needed"):
        gene_graph(GENES, None, np.vstack([np.ones((8, 2)), np.full((1, 2), np.nan)]))
    with pytest.raises(ValueError, match=r"ref_expr must be \(cells, G=9\)"):
        gene_graph(GENES, expr[:, :5])
