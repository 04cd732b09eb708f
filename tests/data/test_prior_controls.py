"""Prior controls and pair codes: rewiring keeps degrees and leaves the real edges, the random
graph keeps density and sign mix, and the pair code carries both directions."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from bioformer.config import DataConfig
from bioformer.data.pipeline import drop_edges, edges_for_genes, prepare_data
from bioformer.data.prior import (
    ACTIVATES,
    N_PRIOR_CODES,
    NO_EDGE,
    REPRESSES,
    edge_overlap,
    pair_codes,
    random_edges,
    read_edge_file,
    rewire_edges,
    shuffle_edges,
)
from bioformer.errors import BioformerError
from tests.conftest import H5AD, PRIOR_CSV


def _pairs(e: pd.DataFrame) -> set[tuple[str, str]]:
    return set(zip(e["source"], e["target"], strict=True))


def _degrees(e: pd.DataFrame, col: str) -> dict[str, int]:
    return e[col].value_counts().sort_index().to_dict()


def test_rewired_keeps_degrees_and_avoids_the_real_edges():
    e = read_edge_file(PRIOR_CSV)
    genes = sorted(set(e.source) | set(e.target))
    r = rewire_edges(e, seed=3, genes=genes)
    assert len(r) == len(e) == len(_pairs(r)) and (r.source != r.target).all()  # none lost, no duplicate
    assert _degrees(r, "source") == _degrees(e, "source")  # every TF keeps its out-degree ...
    assert r.groupby("source")["sign"].sum().to_dict() == e.groupby("source")["sign"].sum().to_dict()  # ... and its signs
    density = len(e) / (len(genes) * (len(genes) - 1))
    assert edge_overlap(r, e) == 0.0 < density  # less than a random graph of the same density shares
    assert edge_overlap(shuffle_edges(e, seed=3), e) > 0.3  # what a target permutation keeps (hub TFs)
    # in-degrees: kept for all edges but the few that the hub TFs force elsewhere
    moved = (e.target.value_counts().reindex(genes, fill_value=0) - r.target.value_counts().reindex(genes, fill_value=0)).abs().sum() / 2
    assert 0 < moved <= 0.15 * len(e)
    assert _pairs(rewire_edges(e, seed=4, genes=genes)) != _pairs(r)  # seeded, and seeds differ
    assert _pairs(rewire_edges(e, seed=3, genes=genes)) == _pairs(r)


def test_rewired_keeps_in_degrees_exactly_when_the_graph_allows():
    ring = pd.DataFrame({"source": list("ABCDEF"), "target": list("BCDEFA"), "sign": [1, -1, 1, 1, 0, 1]})
    r = rewire_edges(ring, seed=0)
    assert _degrees(r, "source") == _degrees(ring, "source") and _degrees(r, "target") == _degrees(ring, "target")
    assert edge_overlap(r, ring) == 0.0 and (r.source != r.target).all()


def test_random_graph_has_same_density_and_sign_mix():
    e = read_edge_file(PRIOR_CSV)
    genes = sorted(set(e.source) | set(e.target)) + ["EXTRA1", "EXTRA2"]
    r = random_edges(e, genes, seed=0)
    assert len(r) == len(e) == len(_pairs(r)) and (r.source != r.target).all()
    assert set(r.source) | set(r.target) <= set(genes)
    assert sorted(r.sign.tolist()) == sorted(e.sign.tolist())
    assert r.source.nunique() > e.source.nunique()  # sources are any gene, not only TFs
    assert random_edges(e, genes, seed=0).equals(r) and not random_edges(e, genes, seed=1).equals(r)
    with pytest.raises(BioformerError, match="cannot draw"):
        random_edges(e, ["A", "B"], seed=0)


def test_controls_inside_the_selected_genes():
    base = DataConfig(data=str(H5AD), n_hvg=100, genes="hvg+prior", max_prior_genes=60, prior=str(PRIOR_CSV))
    real = prepare_data(base, seed=0, quiet=True)
    genes = set(real.adata.var_names)
    inside = read_edge_file(PRIOR_CSV)
    inside = inside[inside.source.isin(genes) & inside.target.isin(genes)]
    given = drop_edges(inside, real.heldout_edges)  # the held-out 20% are GRN truth, never in z
    assert len(given) == len(inside) - len(real.heldout_edges) > 0
    for suffix in ("-rewired", "-random"):
        ctrl = prepare_data(DataConfig(**{**base.__dict__, "prior": str(PRIOR_CSV) + suffix}), seed=0, quiet=True)
        assert list(ctrl.adata.var_names) == list(real.adata.var_names)  # genes chosen with the real prior
        assert ctrl.prior.n_edges == real.prior.n_edges == len(given)
        e = edges_for_genes(str(PRIOR_CSV) + suffix, real.vocab.token_to_id, seed=0)
        assert set(e.source) | set(e.target) <= genes  # special tokens never become genes
        assert edge_overlap(e, inside) < 0.2
        assert not _pairs(e) & _pairs(real.heldout_edges)  # rewired / random ∩ held-out = ∅
        assert ctrl.coverage["heldout_edges_in_prior"] == 0  # what the study output prints
    assert real.coverage["heldout_edges_in_prior"] == 0


def test_controls_never_hold_an_excluded_edge():
    """Held-out truth the visible prior no longer shows would otherwise be free targets for the
    rewiring (it avoids only the visible edges): on this hub-heavy graph the unconstrained
    rewiring puts many of them back; with `exclude` none."""
    e = read_edge_file(PRIOR_CSV)
    genes = sorted(set(e.source) | set(e.target))
    held = e.sample(frac=0.3, random_state=0)
    visible = drop_edges(e, held)
    assert _pairs(rewire_edges(visible, seed=0, genes=genes)) & _pairs(held)  # the old contamination
    for seed in range(3):
        r = rewire_edges(visible, seed=seed, genes=genes, exclude=held)
        assert not _pairs(r) & _pairs(held) and not _pairs(r) & _pairs(visible)
        assert _degrees(r, "source") == _degrees(visible, "source")
        q = random_edges(visible, genes, seed=seed, exclude=e)  # planted data: exclude every true edge
        assert len(q) == len(visible) and not _pairs(q) & _pairs(e)


def test_pair_codes_both_directions():
    codes = torch.zeros(1, 3, 3, dtype=torch.int8)
    codes[0, 0, 1] = ACTIVATES  # gene 0 activates gene 1
    codes[0, 2, 1] = REPRESSES  # gene 2 represses gene 1
    codes[0, 1, 2] = ACTIVATES  # and gene 1 activates gene 2 (a loop)
    both = pair_codes(codes, "both")
    assert both[0, 0, 1] == ACTIVATES and both[0, 1, 0] == N_PRIOR_CODES * ACTIVATES
    assert both[0, 1, 2] == ACTIVATES + N_PRIOR_CODES * REPRESSES and both[0, 2, 1] == REPRESSES + N_PRIOR_CODES * ACTIVATES
    assert both[0, 0, 2] == NO_EDGE and both[0, 2, 0] == NO_EDGE
    assert torch.equal(pair_codes(codes, "outgoing"), codes)
    with pytest.raises(BioformerError, match="prior_direction"):
        pair_codes(codes, "sideways")
    assert len(set(pair_codes(torch.arange(4).view(1, 2, 2).to(torch.int8), "both").flatten().tolist())) == 4


def test_transfer_split_through_prepare_data():
    cfg = DataConfig(data=str(H5AD), n_hvg=64, genes="hvg", prior="none", split_by="celltype", test_groups="B, NK")
    data = prepare_data(cfg, seed=0, quiet=True)
    kinds = data.adata.obs["celltype"].astype(str).to_numpy()
    assert set(kinds[data.split["test"]]) == {"B", "NK"}
    assert np.array_equal(np.sort(data.split["test"]), np.flatnonzero(np.isin(kinds, ["B", "NK"])))
    assert not set(kinds[data.split["train"]]) & {"B", "NK"}
    with pytest.raises(BioformerError, match="not an obs column"):
        prepare_data(DataConfig(**{**cfg.__dict__, "split_by": "condition"}), seed=0, quiet=True)
    with pytest.raises(BioformerError, match="needs both"):
        prepare_data(DataConfig(**{**cfg.__dict__, "test_groups": None}), seed=0, quiet=True)
    with pytest.raises(BioformerError, match="needs a prior"):
        prepare_data(DataConfig(**{**cfg.__dict__, "mask_strategy": "prior-targets"}), seed=0, quiet=True)


def test_rewired_hub_that_regulates_most_genes_keeps_only_the_forced_overlap():
    genes = [f"G{i}" for i in range(10)]
    hub = pd.DataFrame({"source": "G0", "target": genes[1:8], "sign": 1})  # 7 of the 9 possible targets
    other = pd.DataFrame({"source": ["G8", "G9"], "target": ["G9", "G1"], "sign": [-1, 1]})
    e = pd.concat([hub, other], ignore_index=True)
    r = rewire_edges(e, seed=0, genes=genes)
    assert len(r) == len(e) and _degrees(r, "source") == _degrees(e, "source") and (r.source != r.target).all()
    hub_overlap = len(_pairs(r[r.source == "G0"]) & _pairs(e))
    assert hub_overlap == 7 - 2  # only 2 non-targets exist: 5 real targets are forced, no more


def test_backed_mode_refuses_the_transfer_split_and_prior_target_masks():
    for extra in ({"split_by": "celltype", "test_groups": "B"}, {"mask_strategy": "prior-targets"}):
        cfg = DataConfig(data=str(H5AD), n_hvg=64, genes="hvg", prior=str(PRIOR_CSV), backed=True, **extra)
        with pytest.raises(BioformerError, match="not available in backed mode"):
            prepare_data(cfg, seed=0, quiet=True)
