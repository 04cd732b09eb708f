"""Loading: layers, gene columns, dense -> sparse, and one clear error per kind of bad input."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp

from bioformer.data.load import check_cell_count, load_anndata, min_cells_for_split
from bioformer.errors import BioformerError
from tests.conftest import H5AD


def _write(tmp_path, X, **kw):
    a = ad.AnnData(X=X, **kw)
    a.var_names = [f"G{i}" for i in range(a.n_vars)]
    p = tmp_path / "x.h5ad"
    a.write_h5ad(p)
    return p


def test_fixture_loads_as_csr_counts():
    a = load_anndata(H5AD, quiet=True)
    assert sp.isspmatrix_csr(a.X) and a.X.dtype == np.float32
    assert a.shape == (300, 1000)
    assert np.all(np.mod(a.X.data, 1) == 0)


def test_layer_and_gene_column(tmp_path):
    base = ad.read_h5ad(H5AD)[:50, :100].copy()
    counts = base.X.copy()
    base.layers["raw_count"] = counts
    base.X = sp.csr_matrix(np.log1p(counts.toarray()))
    base.var["symbol"] = [f"SYM{i}" for i in range(base.n_vars)]
    p = tmp_path / "layered.h5ad"
    base.write_h5ad(p)
    a = load_anndata(p, layer="raw_count", gene_column="symbol", quiet=True)
    assert np.array_equal(a.X.toarray(), counts.toarray())
    assert a.var_names[0] == "SYM0"


def test_dense_input_becomes_sparse(tmp_path):
    X = np.array([[1, 0, 2], [0, 3, 0]], dtype=np.float32)
    a = load_anndata(_write(tmp_path, X), quiet=True)
    assert sp.isspmatrix_csr(a.X) and a.X.nnz == 3


@pytest.mark.parametrize(
    ("make", "kwargs", "message"),
    [
        (lambda t: t / "missing.h5ad", {}, "file not found"),
        (lambda t: (t / "bad.h5ad").write_text("not hdf5") and t / "bad.h5ad", {}, "not a readable .h5ad"),
        (lambda t: _write(t, np.ones((2, 2), np.float32)), {"layer": "raw_count"}, "layer 'raw_count' not found"),
        (lambda t: _write(t, np.ones((2, 2), np.float32)), {"gene_column": "symbol"}, "gene column 'symbol' not in var"),
        (lambda t: _write(t, np.array([[1, -1], [2, 2]], np.float32)), {}, "negative values"),
        (lambda t: _write(t, np.array([[1, np.nan], [2, 2]], np.float32)), {}, "NaN"),
        (lambda t: _write(t, np.array([[1, np.inf], [2, 2]], np.float32)), {}, "infinite values"),
        (lambda t: _write(t, np.array([[1, -np.inf], [2, 2]], np.float32)), {}, "infinite values"),
        (lambda t: _write(t, np.zeros((0, 3), np.float32)), {}, "has no cells"),
        (lambda t: _write(t, np.zeros((3, 0), np.float32)), {}, "has no genes"),
        (lambda t: _write(t, np.array([[0, 0], [2, 2]], np.float32)), {}, "all-zero expression"),
    ],
)
def test_bad_input_gives_one_clear_error(tmp_path, make, kwargs, message):
    with pytest.raises(BioformerError, match=message) as e:
        load_anndata(make(tmp_path), quiet=True, **kwargs)
    assert "\n" not in str(e.value)


def test_max_cells_is_seeded():
    a = load_anndata(H5AD, max_cells=40, seed=3, quiet=True)
    b = load_anndata(H5AD, max_cells=40, seed=3, quiet=True)
    c = load_anndata(H5AD, max_cells=40, seed=4, quiet=True)
    assert list(a.obs_names) == list(b.obs_names) != list(c.obs_names)


def test_duplicate_gene_names_are_summed_and_reported(tmp_path, caplog):
    X = np.array([[1, 2, 3, 4], [0, 5, 0, 6], [7, 0, 8, 0]], np.float32)
    a = ad.AnnData(X=X)
    a.var_names = ["A", "B", "A", "C"]
    p = tmp_path / "dup.h5ad"
    a.write_h5ad(p)
    with caplog.at_level("WARNING", logger="bioformer"):
        out = load_anndata(p, quiet=True)
    assert list(out.var_names) == ["A", "B", "C"]
    assert np.array_equal(out.X.toarray(), [[4, 2, 4], [0, 5, 6], [15, 0, 0]])
    assert "1 gene name(s) occur more than once (A)" in caplog.text


def test_too_few_cells_threshold_and_advice():
    need = min_cells_for_split(0.1, 0.1)
    assert need == 50  # MIN_CELLS dominates at the default fractions
    assert round(0.1 * need) >= 2
    assert min_cells_for_split(0.02, 0.1) == 75  # 0.02 * 75 rounds to 2 validation cells
    check_cell_count(need, need, "x")
    with pytest.raises(BioformerError, match="raise --max-cells to at least 50 \\(the file has 300 cells\\)"):
        check_cell_count(10, need, "x", max_cells=10, n_file=300)
    with pytest.raises(BioformerError, match="use a data set with more cells") as e:
        check_cell_count(20, need, "x", max_cells=40, n_file=20)
    assert "--max-cells" not in str(e.value)  # raising it cannot help: the file has 20 cells
