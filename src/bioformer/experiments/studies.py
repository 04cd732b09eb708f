"""The studies: each a list of arms (named model configurations, optionally with their own z
prior) and the pairs of arms whose paired differences answer its question.

Arms are computed from the study's reference model, its prior, the vocabulary size of the
prepared data (same-params sizes one model against the other) and the profile (depth's N).
With vocab None only the arm names and structure are wanted (no sizing).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bioformer.config import ModelConfig, prior_enabled
from bioformer.data.simulate import is_synthetic
from bioformer.errors import BioformerError
from bioformer.experiments import sizing
from bioformer.experiments.profiles import Profile
from bioformer.models import BioFormer, ScGPT, count_config_parameters

# the two families the studies compare, by their registered names
BIOFORMER, SCGPT = BioFormer.name, ScGPT.name


@dataclass(frozen=True)
class Arm:
    """One model of a study. `prior` is the z prior for BioFormer ("none" = z starts at zero);
    None = the study's prior. The gene set is the study's in every case."""

    name: str
    model: ModelConfig
    prior: str | None = None
    description: str = ""
    seeds: int | None = None  # run on the plan's first `seeds` seeds only (None: all of them)


@dataclass(frozen=True)
class Study:
    name: str
    question: str
    arms: Callable[[ModelConfig, str, int | None, Profile], list[Arm]]  # (reference model, study prior, vocab size or None, profile)
    pairs: Callable[[list[str]], list[tuple[str, str]]]


def _model(base: ModelConfig, **changes) -> ModelConfig:
    return base.replace(**changes)


def _same_params(base: ModelConfig, prior: str, vocab: int | None, profile: Profile) -> list[Arm]:
    ref = _model(base, model=SCGPT)
    bio = _model(base, model=BIOFORMER)
    if vocab is not None:  # None: only the arm names are wanted
        bio = sizing.match_total_params(ref, bio, vocab, tol=0.02, use_prior=prior_enabled(prior))
    return [
        Arm(SCGPT, ref, description=f"scGPT, d_model {ref.d_model}"),
        Arm(BIOFORMER, bio, description="BioFormer sized to scGPT's total parameters (±2%; d_model and c_opm in the table)"),
    ]


def _same_attention(base: ModelConfig, prior: str, vocab: int | None, profile: Profile) -> list[Arm]:
    ref = _model(base, model=SCGPT)
    bio = sizing.same_attention(ref, _model(base, model=BIOFORMER))
    plain = _model(bio, pair_bias=False, opm=False)
    return [
        Arm(SCGPT, ref, description="scGPT (post-LN nn.TransformerEncoderLayer)"),
        Arm(BIOFORMER, bio, description="same attention + transition as scGPT, gate off; extra = pair path"),
        Arm(f"{BIOFORMER}-no-pair-path", plain, description="the same BioFormer without pair bias and OPM: a pre-LN transformer with scGPT's parameters (separates pre-LN from the pair path)"),
    ]


def _ablation(base: ModelConfig, prior: str, vocab: int | None, profile: Profile) -> list[Arm]:
    full = _model(base, model=BIOFORMER)
    return [
        Arm("full", full, description="BioFormer: pair bias + OPM + gate, transition x4"),
        Arm("no-opm", _model(full, opm=False), description="z = prior embedding, never updated"),
        Arm("no-pair-bias", _model(full, pair_bias=False), description="no pair bias; nothing reads z then, so this is also 'neither' (no OPM, no pair bias)"),
        Arm("no-gating", _model(full, gating=False), description="no sigmoid gate on the attention output"),
        Arm("transition-1", _model(full, ff_factor=1), description="transition factor 1 (scGPT paper) instead of 4"),
        Arm("linear", _model(full, pair_mode="linear"), description="linear pair mode: no LayerNorm on z before the bias (a per-channel scale), z never materialised"),
    ]


def _depth(base: ModelConfig, prior: str, vocab: int | None, profile: Profile) -> list[Arm]:
    depths = profile.depths
    arms = []
    for family in (SCGPT, BIOFORMER):
        for n in depths:
            arms.append(Arm(f"{family}-N{n}", _model(base, model=family, nlayers=n), description=f"{family}, N {n}, d_model {base.d_model}"))
    for n in (depths[0], depths[-1]):  # separates the pair path from pre-LN in the depth effect
        arms.append(Arm(f"{BIOFORMER}-no-pair-path-N{n}", _model(base, model=BIOFORMER, nlayers=n, pair_bias=False, opm=False),
                        description=f"the same BioFormer without pair bias and OPM (a gated pre-LN transformer), N {n}"))
    small = max(base.nhead, base.d_model // 2 // base.nhead * base.nhead)
    arms.append(Arm(f"{BIOFORMER}-small-N{depths[-1]}", _model(base, model=BIOFORMER, d_model=small, nlayers=depths[-1]), description=f"BioFormer d_model {small}, N {depths[-1]}"))
    arms.append(Arm(f"{SCGPT}-large-N{depths[0]}", _model(base, model=SCGPT, d_model=2 * base.d_model, nlayers=depths[0]), description=f"scGPT d_model {2 * base.d_model}, N {depths[0]}"))
    return arms


def _depth_pairs(names: list[str]) -> list[tuple[str, str]]:
    b, s = BIOFORMER, SCGPT
    ns = sorted({int(n.rsplit("-N", 1)[1]) for n in names if n.startswith((f"{s}-N", f"{b}-N"))})
    pairs = [(f"{b}-N{n}", f"{s}-N{n}") for n in ns]
    pairs += [(f"{b}-N{ns[-1]}", f"{b}-N{ns[0]}"), (f"{s}-N{ns[-1]}", f"{s}-N{ns[0]}")]
    pairs += [(f"{b}-small-N{ns[-1]}", f"{s}-large-N{ns[0]}")]
    pairs += [(f"{b}-N{ns[-1]}", f"{b}-no-pair-path-N{ns[-1]}"), (f"{b}-no-pair-path-N{ns[-1]}", f"{b}-no-pair-path-N{ns[0]}")]
    return [(a, b) for a, b in pairs if a in names and b in names]


def _prior_name(prior: str) -> str:
    if is_synthetic(prior):  # a planted data set's given prior
        return "planted"
    return Path(prior).stem if ("/" in prior or "." in prior) else prior


def _prior(base: ModelConfig, prior: str, vocab: int | None, profile: Profile) -> list[Arm]:
    """Real prior with both directions in z (and with the first version's one direction), zero z,
    two controls without knowledge, and an scGPT of the same d_model. Every arm of a seed starts
    from the same weights in the modules it shares (see BioFormer), so the pairs are init-paired.
    The first four arms run on 10 seeds where the profile gives the study 10, the others on 5."""
    full = _model(base, model=BIOFORMER, prior_direction="both")
    p = _prior_name(prior)
    return [
        Arm(f"{p}-both-directions", full, prior=prior, seeds=10, description=f"z from the {p} prior, each pair coded in both directions (a target's row sees its regulators)"),
        Arm(f"{p}-one-direction", _model(full, prior_direction="outgoing"), prior=prior, seeds=10, description=f"z from the {p} prior, i -> j code only (the first version)"),
        Arm("zero-z", full, prior="none", seeds=10, description="z starts at zero (the prior embedding is built, from the same weights, and unused)"),
        Arm(f"{p}-rewired", full, prior=f"{prior}-rewired", seeds=10, description=f"{p} edges among the study's genes rewired: out-degrees and signs kept, in-degrees where the graph allows, no real edge kept"),
        Arm(f"{p}-random", full, prior=f"{prior}-random", seeds=5, description=f"Erdos-Renyi graph with {p}'s number of edges and sign mix among the study's genes"),
        Arm(SCGPT, _model(base, model=SCGPT), seeds=5, description=f"scGPT, d_model {base.d_model}, init-matched (same gene/value encoders and decoder at start)"),
    ]


def _prior_pairs(names: list[str]) -> list[tuple[str, str]]:
    both = next(n for n in names if n.endswith("-both-directions"))
    p = both[: -len("-both-directions")]
    one = f"{p}-one-direction"
    pairs = [(both, "zero-z"), (both, f"{p}-rewired"), (both, f"{p}-random"), (both, one), (one, "zero-z"),
             (f"{p}-rewired", "zero-z"), (both, SCGPT)]
    return [(a, b) for a, b in pairs if a in names and b in names]


def _prior_transfer(base: ModelConfig, prior: str, vocab: int | None, profile: Profile) -> list[Arm]:
    """Train on control cells, test on IFN-beta stimulated ones (the profile's transfer split):
    does TF knowledge help where the response runs through known TFs (STAT1/STAT2/IRF9)?"""
    keep = lambda a: not a.name.endswith(("-one-direction", "-random"))  # noqa: E731
    return [dataclasses.replace(a, seeds=None) for a in _prior(base, prior, vocab, profile) if keep(a)]


def _planted(base: ModelConfig, prior: str, vocab: int | None, profile: Profile) -> list[Arm]:
    """On a simulated data set with a known network (`synthetic:...` as data and prior): the
    given prior, its rewiring (no true edge), zero z and scGPT, all on every seed. Run once per
    alpha (`--data/--prior synthetic:alpha=A,...`); `scripts/planted_curve.py` draws the curve."""
    if not is_synthetic(prior):
        raise BioformerError(f"the planted study needs a synthetic data set as --data and --prior (synthetic:alpha=0.8,...), got --prior {prior}")
    keep = lambda a: not a.name.endswith(("-one-direction", "-random"))  # noqa: E731
    return [dataclasses.replace(a, seeds=None) for a in _prior(base, prior, vocab, profile) if keep(a)]


def _depth_recheck(base: ModelConfig, prior: str, vocab: int | None, profile: Profile) -> list[Arm]:
    """BioFormer at N = 8 against the same model without its pair path, once at the same d_model
    and once at the d_model (a multiple of nhead) whose total parameters are closest to BioFormer's."""
    n = 8
    bio = _model(base, model=BIOFORMER, nlayers=n)
    plain = _model(bio, pair_bias=False, opm=False)
    if vocab is None:  # only the names are wanted
        matched = plain
    else:  # the closest d_model (a multiple of nhead): within 5% on the standard profile
        target = count_config_parameters(bio, vocab, prior_enabled(prior))
        matched = _model(plain, d_model=sizing.nearest_d_model(plain, target, vocab, False, 4 * base.d_model)[0])
    return [
        Arm(f"{BIOFORMER}-N{n}", bio, description=f"BioFormer, N {n}, d_model {bio.d_model}"),
        Arm(f"{BIOFORMER}-no-pair-path-N{n}-matched", matched, description=f"no pair bias and OPM, d_model {matched.d_model}: the closest to BioFormer's total parameters"),
        Arm(f"{BIOFORMER}-no-pair-path-N{n}", plain, description=f"no pair bias and OPM, d_model {plain.d_model} (as in the depth study)"),
    ]


STUDIES: dict[str, Study] = {
    "same-params": Study("same-params", "scGPT vs BioFormer at equal total parameters (±2%)", _same_params, lambda n: [(BIOFORMER, SCGPT)]),
    "same-attention": Study(
        "same-attention", "equal attention + transition; BioFormer adds only the pair path", _same_attention,
        lambda n: [(BIOFORMER, SCGPT), (BIOFORMER, f"{BIOFORMER}-no-pair-path"), (f"{BIOFORMER}-no-pair-path", SCGPT)],
    ),
    "ablation": Study("ablation", "which BioFormer part matters", _ablation, lambda n: [("full", a) for a in n[1:]]),
    "depth": Study("depth", "N in {2, 4, 8} for both; small-c BioFormer at large N vs large-c scGPT at small N", _depth, _depth_pairs),
    "prior": Study("prior", "does TF knowledge in z help, beyond the structure of a graph?", _prior, _prior_pairs),
    "prior-transfer": Study(
        "prior-transfer", "trained on control cells, tested on IFN-beta stimulated cells: does the prior help transfer?",
        _prior_transfer, _prior_pairs,
    ),
    "planted": Study(
        "planted", "on planted truth (a known network, strength alpha): does the given prior beat zero z and its rewiring?",
        _planted, _prior_pairs,
    ),
    "depth-recheck": Study(
        "depth-recheck", "at N = 8, does the pair path beat a no-pair-path model with the same total parameters?", _depth_recheck,
        lambda n: [(n[0], n[1]), (n[0], n[2]), (n[1], n[2])],
    ),
}
