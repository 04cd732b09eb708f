"""The TF prior: parsing and signs, the batch gather against brute force, coverage counts."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from bioformer.config import DataConfig
from bioformer.data.pipeline import prepare_data, prior_coverage
from bioformer.data.prior import (
    ACTIVATES,
    NO_EDGE,
    REGULATES,
    REPRESSES,
    PriorMatrix,
    load_edges,
    omnipath_edges,
    read_edge_file,
    shuffle_edges,
)
from bioformer.errors import BioformerError
from tests.conftest import H5AD, PRIOR_CSV


def test_omnipath_parsing_signs_complexes_and_uniprot(tmp_path):
    rows = [
        # source, target, type, sources, stim, inhib
        ("STAT1", "IRF1", "transcriptional", "CollecTRI;DoRothEA", True, False),
        ("REST", "SYP", "transcriptional", "CollecTRI", False, True),
        ("MYC", "CDK4", "transcriptional", "CollecTRI", True, True),  # both -> 0
        ("COMPLEX:NFKB1_RELA", "TNF", "transcriptional", "CollecTRI", True, False),
        ("STAT1", "P12345", "transcriptional", "CollecTRI", True, False),  # UniProt target: dropped
        ("FOXP3", "IL2", "transcriptional", "DoRothEA", False, False),  # dorothea only, unsigned
        ("EGFR", "GRB2", "post_translational", "SIGNOR", True, False),  # not transcriptional
    ]
    df = pd.DataFrame(rows, columns=["source", "target", "type", "sources", "is_stimulation", "is_inhibition"])
    p = tmp_path / "omni.parquet"
    df.to_parquet(p)
    col = omnipath_edges("collectri", table=p)
    signs = {(s, t): g for s, t, g in col.itertuples(index=False)}
    assert signs == {("STAT1", "IRF1"): 1, ("REST", "SYP"): -1, ("MYC", "CDK4"): 0, ("NFKB1", "TNF"): 1, ("RELA", "TNF"): 1}
    dor = omnipath_edges("dorothea", table=p)
    assert set(zip(dor.source, dor.target, strict=True)) == {("STAT1", "IRF1"), ("FOXP3", "IL2")}
    assert len(omnipath_edges("all", table=p)) == 6
    with pytest.raises(BioformerError, match="unknown prior"):
        omnipath_edges("nonsense", table=p)


def test_user_file_and_conflicting_signs(tmp_path):
    p = tmp_path / "edges.tsv"
    p.write_text("source\ttarget\tsign\nA\tB\t1\nA\tB\t-1\nB\tC\t-3\nC\tC\t1\n")
    e = read_edge_file(p)
    assert {(s, t): g for s, t, g in e.itertuples(index=False)} == {("A", "B"): 0, ("B", "C"): -1}
    bad = tmp_path / "bad.csv"
    bad.write_text("from,to\nA,B\n")
    with pytest.raises(BioformerError, match="lacks column"):
        read_edge_file(bad)
    with pytest.raises(BioformerError, match="prior file not found"):
        load_edges(str(tmp_path / "nope.csv"))


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".parquet"])
def test_omnipath_layout_file_keeps_signs(tmp_path, suffix):
    """A prior exported from OmniPath / decoupler (is_stimulation / is_inhibition, no sign column)."""
    df = pd.DataFrame({
        "source": ["STAT1", "REST", "MYC", "FOXP3"],
        "target": ["IRF1", "SYP", "CDK4", "IL2"],
        "is_directed": [True] * 4,
        "is_stimulation": [True, False, True, False],
        "is_inhibition": [False, True, True, False],
    })
    p = tmp_path / f"omni{suffix}"
    if suffix == ".parquet":
        df.to_parquet(p)
    else:
        df.to_csv(p, sep="\t" if suffix == ".tsv" else ",", index=False)
    e = read_edge_file(p)
    assert {(s, t): g for s, t, g in e.itertuples(index=False)} == {
        ("STAT1", "IRF1"): 1, ("REST", "SYP"): -1, ("MYC", "CDK4"): 0, ("FOXP3", "IL2"): 0,
    }


def test_decoupler_weight_column_gives_the_sign(tmp_path):
    p = tmp_path / "collectri.csv"
    p.write_text("source,target,weight\nSTAT1,IRF1,1\nREST,SYP,-1\n")
    e = read_edge_file(p)
    assert {(s, t): g for s, t, g in e.itertuples(index=False)} == {("STAT1", "IRF1"): 1, ("REST", "SYP"): -1}


@pytest.mark.parametrize("dense", [True, False])
def test_gather_matches_brute_force(dense, monkeypatch):
    if not dense:  # the searchsorted path of large vocabularies
        monkeypatch.setattr(PriorMatrix, "DENSE_MAX", 0)
    tokens = ["<pad>", "<cls>", "<mask>", "A", "B", "C", "D"]
    t2i = {t: i for i, t in enumerate(tokens)}
    edges = pd.DataFrame({"source": ["A", "A", "C", "D", "X"], "target": ["B", "C", "A", "D2", "A"], "sign": [1, -1, 0, 1, 1]})
    pm = PriorMatrix.from_edges(edges, t2i)
    assert pm.n_edges == 3  # edges with an end outside the vocabulary are dropped
    gene_ids = torch.tensor([[1, 3, 4, 5, 0], [5, 3, 6, 4, 0]])
    got = pm.prior_for(gene_ids)
    code = {("A", "B"): ACTIVATES, ("A", "C"): REPRESSES, ("C", "A"): REGULATES}
    for b in range(2):
        for i in range(5):
            for j in range(5):
                key = (tokens[gene_ids[b, i]], tokens[gene_ids[b, j]])
                assert got[b, i, j] == code.get(key, NO_EDGE)
    signed = pm.signed_for(gene_ids)
    assert signed[0, 1, 2] == 1 and signed[0, 1, 3] == -1 and signed[0, 3, 1] == 0
    assert not torch.equal(got, got.transpose(1, 2))  # directed


def test_shuffle_preserves_degrees():
    e = read_edge_file(PRIOR_CSV)
    s = shuffle_edges(e, seed=1)
    assert len(s) == len(e)  # collisions are repaired, not dropped
    assert s["source"].value_counts().sum() == len(s)
    out_deg = e["source"].value_counts()
    s_out = s["source"].value_counts().reindex(out_deg.index).fillna(0)
    assert (s_out == out_deg).all()
    assert s["target"].value_counts().sort_index().to_dict() == e["target"].value_counts().sort_index().to_dict()
    assert len(set(zip(e.source, e.target, strict=True)) & set(zip(s.source, s.target, strict=True))) < 0.6 * len(e)  # hub-heavy small graph: some overlap is expected


def test_coverage_matches_brute_force():
    cfg = DataConfig(data=str(H5AD), n_hvg=100, genes="hvg+prior", max_prior_genes=60, prior=str(PRIOR_CSV), max_len=4096)
    data = prepare_data(cfg, seed=0, quiet=True)
    cov = data.coverage
    edges = read_edge_file(PRIOR_CSV)
    genes = set(data.adata.var_names)
    inside = edges[edges.source.isin(genes) & edges.target.isin(genes)]
    # 20% of the edges among the genes are held out of the prior (GRN truth), seeded and disjoint
    held = data.heldout_edges
    assert len(held) == round(0.2 * len(inside))
    held_pairs = set(zip(held.source, held.target, strict=True))
    assert held_pairs < set(zip(inside.source, inside.target, strict=True))
    assert held.equals(prepare_data(cfg, seed=0, quiet=True).heldout_edges)
    inside = inside[[(s, t) not in held_pairs for s, t in zip(inside.source, inside.target, strict=True)]]
    assert cov["edges"] == len(inside) and cov["tfs"] == inside.source.nunique()
    assert cov["edges_activating"] == (inside.sign > 0).sum()
    X = data.adata.X.tocsr()
    names = np.asarray(data.adata.var_names)
    pairs = set(zip(inside.source, inside.target, strict=True))
    per_cell = []
    for c in data.split["train"]:
        expressed = set(names[X[c].indices])
        per_cell.append(sum((s in expressed and t in expressed) for s, t in pairs))
    assert cov["edges_per_cell_median"] == pytest.approx(np.median(per_cell))
    assert cov["edges_per_cell_mean"] == pytest.approx(np.mean(per_cell))
    assert cov["cells_without_edges_frac"] == pytest.approx(np.mean(np.array(per_cell) == 0))
    # include-zero: every cell holds every gene, so every cell sees every edge
    cfg.include_zero_genes = True
    z = prepare_data(cfg, seed=0, quiet=True).coverage
    assert z["edges_per_cell_median"] == z["edges"] == len(inside)


def test_coverage_without_dataset_counts_expressed_genes():
    data = prepare_data(DataConfig(data=str(H5AD), n_hvg=100, genes="hvg", prior=str(PRIOR_CSV)), seed=0, quiet=True)
    cov = prior_coverage(data.adata.X, data.gene_token_ids, data.prior)
    assert cov["cells"] == data.adata.n_obs


def test_no_overlap_with_prior_is_a_clear_error(tmp_path):
    p = tmp_path / "elsewhere.csv"
    p.write_text("source,target,sign\nNOTAGENE1,NOTAGENE2,1\n")
    with pytest.raises(BioformerError, match="no prior edges between the selected genes"):
        prepare_data(DataConfig(data=str(H5AD), n_hvg=50, genes="hvg", prior=str(p)), seed=0, quiet=True)


def test_shuffled_prior_keeps_degrees_inside_the_selected_genes():
    base = DataConfig(data=str(H5AD), n_hvg=100, genes="hvg+prior", max_prior_genes=60, prior=str(PRIOR_CSV))
    real = prepare_data(base, seed=0, quiet=True)
    shuf = prepare_data(DataConfig(**{**base.__dict__, "prior": str(PRIOR_CSV) + "-shuffled"}), seed=0, quiet=True)
    assert list(real.adata.var_names) == list(shuf.adata.var_names)  # genes chosen with the real prior
    rs, rt, _ = real.prior.edge_index()
    ss, st, _ = shuf.prior.edge_index()
    assert len(ss) == len(rs)
    assert sorted(np.bincount(rs, minlength=real.prior.vocab_size)) == sorted(np.bincount(ss, minlength=real.prior.vocab_size))
    assert np.array_equal(np.bincount(rs, minlength=real.prior.vocab_size), np.bincount(ss, minlength=real.prior.vocab_size))
    assert np.array_equal(np.bincount(rt, minlength=real.prior.vocab_size), np.bincount(st, minlength=real.prior.vocab_size))
    assert set(zip(rs, rt, strict=True)) != set(zip(ss, st, strict=True))


def test_zero_z_with_prior_selected_genes():
    cfg = DataConfig(data=str(H5AD), n_hvg=100, genes="hvg+prior", max_prior_genes=60, prior="none", gene_prior=str(PRIOR_CSV))
    data = prepare_data(cfg, seed=0, need_prior=False, quiet=True)
    assert data.prior is None and (data.adata.var["source"] == "prior").any()
    with pytest.raises(BioformerError, match="needs a prior"):
        prepare_data(DataConfig(data=str(H5AD), genes="hvg+prior", prior="none"), seed=0, quiet=True)


def test_hold_out_edges_is_seeded_inside_the_genes_and_checks_its_fraction():
    from bioformer.data.pipeline import drop_edges, hold_out_edges

    edges = pd.DataFrame({"source": ["A", "A", "B", "B", "C", "X"], "target": ["B", "C", "C", "D", "D", "A"], "sign": [1, 1, -1, 0, 1, 1]})
    held = hold_out_edges(edges, ["A", "B", "C", "D"], 0.4, seed=3)
    assert len(held) == 2 and "X" not in set(held["source"])  # 40% of the 5 edges inside the genes
    assert held.equals(hold_out_edges(edges, ["A", "B", "C", "D"], 0.4, seed=3))
    kept = drop_edges(edges, held)
    assert len(kept) == 4 and not set(zip(kept.source, kept.target, strict=True)) & set(zip(held.source, held.target, strict=True))
    assert hold_out_edges(edges, ["A", "B"], 0.0, seed=0) is None
    with pytest.raises(BioformerError, match="heldout_edge_frac"):
        hold_out_edges(edges, ["A", "B"], 1.0, seed=0)
