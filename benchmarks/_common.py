"""Shared by the benchmarks: fresh-process peak memory, timing, tables, result files.

Peak memory on CPU is the peak resident set (VmHWM from /proc/self/status) of a fresh
subprocess that runs one measured configuration, minus the VmHWM of an idle fresh process that
has imported torch and bioformer and run one tiny (r = 8) training step, so that library code,
kernels and thread pools are resident in both (the baseline). On CUDA it is torch.cuda.max_memory_allocated
in that subprocess. Run a worker directly: `python -m benchmarks._common '{"task": ...}'`.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results"


def vm_hwm() -> int:
    """Peak resident set of this process in bytes (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def device_name(device: str) -> str:
    import torch

    if device == "cuda":
        return torch.cuda.get_device_name(0)
    return f"CPU {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads"


def run_worker(spec: dict, timeout: float = 900) -> dict:
    """Run one measured configuration in a fresh process; returns its JSON result (or {"error"}).
    spec["src"]: import bioformer from that source tree instead (e.g. an older checkout's src/)."""
    env = None
    if spec.get("src"):
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([spec["src"], os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-m", "benchmarks._common", json.dumps(spec)], capture_output=True, text=True, timeout=timeout, env=env)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["killed"]
        return {"error": f"rc {proc.returncode}: {tail[0][:200]}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


_BASELINE: dict[str, int] = {}


def baseline_rss(threads: int | None = None) -> int:
    """VmHWM of the idle baseline process, with the same torch thread count as the measured runs."""
    key = f"cpu-{threads}"
    if key not in _BASELINE:
        _BASELINE[key] = run_worker({"task": "idle", "threads": threads})["peak_bytes"]
    return _BASELINE[key]


def write_results(name: str, payload: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    suffix = "" if payload.get("device", "cpu") == "cpu" else f"_{payload['device']}"
    path = RESULTS / f"{name}{suffix}.json"
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path


def table(rows: list[dict], cols: list[tuple[str, str]]) -> str:
    """Markdown table of `rows` with (key, header) columns."""
    def fmt(v):
        if v is None:
            return "-"
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 1000 else f"{v:,.0f}"
        return str(v)

    out = ["| " + " | ".join(h for _, h in cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    out += ["| " + " | ".join(fmt(r.get(k)) for k, _ in cols) + " |" for r in rows]
    return "\n".join(out)


def mib(n: float | None) -> float | None:
    return None if n is None else n / 2**20


# ---------------------------------------------------------------- worker side

def _sync(device):
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def _random_batch(B: int, r: int, vocab: int, device, seed: int = 0, prior_rows_frac: float | None = None):
    """Random tokens; prior codes uniform over all pairs, or (prior_rows_frac) only on that share
    of rows, as for real cells where only the TFs among a cell's genes carry edges."""
    import torch

    g = torch.Generator().manual_seed(seed)
    gene_ids = torch.randint(3, vocab, (B, r), generator=g)
    values = torch.randint(0, 51, (B, r), generator=g).float()
    padding_mask = torch.zeros(B, r, dtype=torch.bool)
    padding_mask[0, r - r // 8:] = True  # some padding
    prior = torch.randint(0, 4, (B, r, r), generator=g, dtype=torch.int8)
    if prior_rows_frac is not None:
        prior *= (torch.rand(B, r, 1, generator=g) < prior_rows_frac).to(torch.int8)
    return gene_ids.to(device), values.to(device), padding_mask.to(device), prior.to(device)


def _model_step(spec: dict) -> dict:
    """One training step (forward, backward, AdamW) or one inference forward of a model."""
    import torch

    from bioformer.config import ModelConfig
    from bioformer.models import build_model, count_parameters

    device = spec.get("device", "cpu")
    cfg = ModelConfig.of(**spec["model"])
    B, r = spec["batch_size"], spec["n_genes"]
    vocab = spec.get("vocab_size", r + 3)
    torch.manual_seed(0)
    model = build_model(cfg, vocab, use_prior=spec.get("use_prior", True)).to(device)
    gene_ids, values, pm, prior = _random_batch(B, r, vocab, device, prior_rows_frac=spec.get("prior_rows_frac"))
    prior = prior if model.needs_prior else None
    del_prior = None
    amp = torch.autocast(device, dtype=torch.bfloat16) if spec.get("amp") else None
    steps = spec.get("steps", 1)
    times, cpu_times = [], []
    if spec.get("training", True):
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        for _ in range(steps):
            _sync(device)
            t0, c0 = time.perf_counter(), time.process_time()
            if amp is not None:
                with amp:
                    out = model(gene_ids, values, pm, prior=prior)
            else:
                out = model(gene_ids, values, pm, prior=prior)
            loss = out["pred"].float()[~pm].pow(2).mean()
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            _sync(device)
            times.append(time.perf_counter() - t0)
            cpu_times.append(time.process_time() - c0)  # this process's CPU: immune to waiting for a core
            del out, loss
    else:
        model.eval()
        with torch.no_grad():
            for _ in range(steps):
                t0 = time.perf_counter()
                model(gene_ids, values, pm, prior=prior)
                _sync(device)
                times.append(time.perf_counter() - t0)
    del del_prior
    result = {"times": times, "cpu_times": cpu_times, "n_params": count_parameters(model)}
    if spec.get("count_flops"):  # matmul/attention FLOPs of forward + backward (not timed)
        from torch.utils.flop_counter import FlopCounterMode

        _register_cpu_attention_flops()
        with FlopCounterMode(display=False) as counter:
            model(gene_ids, values, pm, prior=prior)["pred"][~pm].pow(2).mean().backward()
        result["flops"] = counter.get_total_flops()
    return result


def _register_cpu_attention_flops() -> None:
    """torch's FLOP counter knows the GPU attention kernels only: count CPU's fused kernel (and
    its backward) like them, so fused and math-path attention count the same FLOPs."""
    import torch
    from torch.utils import flop_counter as fc

    aten = torch.ops.aten
    fwd = getattr(aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    bwd = getattr(aten, "_scaled_dot_product_flash_attention_for_cpu_backward", None)
    if fwd is None or fwd in fc.flop_registry:
        return

    @fc.register_flop_formula(fwd)
    def _fwd(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
        return fc.sdpa_flop_count(query_shape, key_shape, value_shape)

    @fc.register_flop_formula(bwd)
    def _bwd(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
        return fc.sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


def _matmul_roofline(spec: dict) -> dict:
    """GFLOP/s of a large fp32 matmul (best of a few): the machine's practical compute ceiling."""
    import torch

    device = spec.get("device", "cpu")
    n = spec.get("n", 2048)
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    best = float("inf")
    for _ in range(spec.get("steps", 5)):
        _sync(device)
        t0 = time.perf_counter()
        a @ b
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return {"gflops": 2 * n**3 / best / 1e9}


def _pair_op(spec: dict) -> dict:
    """Forward + backward of the OPM or the pair-bias attention, naive or efficient."""
    import torch

    from bioformer.models.pair import OuterProductMean, PairBiasAttention
    from tests.reference_impl import naive_outer_product_mean, naive_pair_bias_attention

    device = spec.get("device", "cpu")
    B, r, c, cz, co, H = spec["B"], spec["r"], spec["d_model"], spec["d_z"], spec["d_opm"], spec["nhead"]
    torch.manual_seed(0)
    pm = torch.zeros(B, r, dtype=torch.bool, device=device)
    pm[0, r - r // 8:] = True
    m = torch.randn(B, r, c, device=device, requires_grad=True)
    times = []
    if spec["op"] == "opm":
        mod = OuterProductMean(c, co, cz).to(device)
        fn = (lambda: naive_outer_product_mean(mod, m, pm)) if spec["impl"] == "naive" else (lambda: mod(m, pm))
    else:
        mod = PairBiasAttention(c, nhead=H, d_z=cz, dropout=0.0).to(device)
        z = torch.randn(B, r, r, cz, device=device, requires_grad=True)
        fn = (lambda: naive_pair_bias_attention(mod, m, z, pm)) if spec["impl"] == "naive" else (lambda: mod(m, z, pm))
    # a fixed random cotangent, allocated once: what is measured is the module's own memory,
    # not the temporaries of a loss
    cotangent = torch.randn(B, r, r, cz, device=device) if spec["op"] == "opm" else torch.randn(B, r, c, device=device)
    for _ in range(spec.get("steps", 3)):
        _sync(device)
        t0 = time.perf_counter()
        out = fn()
        out.backward(cotangent)
        _sync(device)
        times.append(time.perf_counter() - t0)
        del out
    return {"times": times}


def _worker(spec: dict) -> dict:
    import torch

    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    import bioformer.models  # noqa: F401  (the baseline imports it too)

    device = spec.get("device", "cpu")
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    if spec["task"] == "idle":  # the baseline: torch imported and warm (library code resident)
        _model_step({"model": {"model": "bioformer", "d_model": 16, "nhead": 2, "nlayers": 2, "d_z": 4, "d_opm": 4}, "batch_size": 1, "n_genes": 8, "device": device})
        _pair_op({"op": "opm", "impl": "efficient", "B": 1, "r": 8, "d_model": 16, "d_z": 4, "d_opm": 4, "nhead": 2, "device": device})
        result = {}
    elif spec["task"] == "model_step":
        result = _model_step(spec)
    elif spec["task"] == "matmul":
        result = _matmul_roofline(spec)
    elif spec["task"] == "pair_op":
        result = _pair_op(spec)
    else:
        raise ValueError(spec["task"])
    result["peak_bytes"] = torch.cuda.max_memory_allocated() if device == "cuda" else vm_hwm()
    return result


if __name__ == "__main__":
    print(json.dumps(_worker(json.loads(sys.argv[1]))))
