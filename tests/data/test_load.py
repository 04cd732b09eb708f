"""Loading: layers, gene columns, dense -> sparse, and one clear error per kind of bad input."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp

from bioformer.data.load import load_anndata
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
