"""torch_zipml.distributed: the quantized DDP communication hook, on 2 to 4 gloo processes on
localhost (tests/python/dist_harness.py: loopback only, bounded in time).

Each spawn costs seconds (process start, imports), so one spawn per world size runs several
scenarios, and the tests below check their results. A scenario's exception is kept, not raised in
the worker, and re-raised by the test that reads it."""

import gc
import math
import pickle
import traceback
import weakref

import pytest
import torch

import torch_zipml
import torch_zipml.distributed as zd
from dist_harness import run_ranks
from stats import assert_unbiased

# ---- a model whose gradient is chosen: d/dP_k sum(P_k * X_k) = X_k ----------------------------

SHAPES = [(40,), (7, 9), (5,), (3, 4, 2)]


class Probe(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.params = torch.nn.ParameterList([torch.nn.Parameter(torch.zeros(s)) for s in SHAPES])

    def forward(self, xs):
        return sum((p * x).sum() for p, x in zip(self.params, xs))


def probe_gradient(rank: int, step: int = 0):
    """Rank r's gradient: per parameter a different magnitude (so per-tensor scales matter), and
    exact zeros and the extremes, which must come through without rounding noise."""
    g = torch.Generator().manual_seed(1000 * rank + step)
    out = []
    for k, shape in enumerate(SHAPES):
        x = torch.randn(shape, generator=g) * (10.0 ** (k - 2))
        x.view(-1)[0] = 0.0
        out.append(x)
    return out


def _ddp(model, bucket_cap_mb=25.0):
    from torch.nn.parallel import DistributedDataParallel as DDP
    return DDP(model, bucket_cap_mb=bucket_cap_mb)


def _grads(model):
    return torch.cat([p.grad.reshape(-1) for p in model.parameters()]).clone()


def _scenario(fn):
    """Runs fn, keeping its exception (as text) instead of raising it in the worker."""
    try:
        return {"ok": fn()}
    except Exception as e:
        return {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}


def _result(results, name):
    for rank, r in enumerate(results):
        if "error" in r[name]:
            pytest.fail(f"scenario {name}, rank {rank}: {r[name]['error']}\n{r[name]['traceback']}")
    return [r[name]["ok"] for r in results]


# ---- unbiasedness and synchrony, 3 ranks --------------------------------------------------------

DRAWS = 200
UNBIASED_CONFIGS = {
    "uniform-2bit-tensor": dict(bits=2),
    "optimal-3bit-block16": dict(bits=3, levels="optimal", granularity=16),
    "uniform-1bit-bucket": dict(bits=1, granularity="bucket"),
    "uniform-4bit-block5-smallbuckets": dict(bits=4, granularity=5),
    "nearest-2bit-biased": dict(bits=2, rounding="nearest"),
}


def _draws(rank, world, config, bucket_cap_mb):
    model = Probe()
    ddp = _ddp(model, bucket_cap_mb)
    state = zd.register(ddp, **config)
    xs = probe_gradient(rank)
    samples = []
    for _ in range(DRAWS):
        model.zero_grad(set_to_none=True)
        ddp(xs).backward()
        samples.append(_grads(model))
    return {"samples": torch.stack(samples), "state": state.state_dict(), "compression": state.compression}


def _unbiased_worker(rank, world):
    out = {}
    for name, config in UNBIASED_CONFIGS.items():
        cap = 0.0001 if "smallbuckets" in name else 25.0  # 0.0001 MB: ~26 floats per bucket
        out[name] = _scenario(lambda: _draws(rank, world, config, cap))
    return out


@pytest.fixture(scope="module")
def three_ranks():
    return run_ranks(_unbiased_worker, 3)


def _rounding_variance(x: torch.Tensor, config) -> torch.Tensor:
    """Per-element variance of the hook's stochastic rounding of one rank's gradient x (float64),
    from the definition: for u = x / s between levels L_j <= u <= L_j+1, s^2 (L_j+1 - u)(u - L_j)."""
    bits = config["bits"]
    gran = config.get("granularity", "tensor")
    k = 1 << bits
    segments = [x] if gran == "bucket" else list(_split(x))  # "bucket": the probe fits one bucket
    out = []
    for seg in segments:
        n = seg.numel()
        cols = n if gran in ("tensor", "bucket") else min(gran, n)
        rows = -(-n // cols)
        blocks = torch.cat([seg, seg.new_zeros(rows * cols - n)]).view(rows, cols)
        scale = blocks.abs().amax(dim=1, keepdim=True)
        if config.get("levels") == "optimal":
            levels = torch_zipml.optimal_levels(blocks, k, scale=scale).double()
        else:
            levels = torch.linspace(-1, 1, k, dtype=torch.float64)
        u = (blocks.double() / scale.double()).clamp(-1, 1)
        u = torch.where(scale > 0, u, torch.zeros_like(u))
        j = (torch.searchsorted(levels, u.contiguous(), right=True) - 1).clamp(0, k - 2)
        lo, hi = levels[j], levels[j + 1]
        var = scale.double() ** 2 * (hi - u).clamp_min(0) * (u - lo).clamp_min(0)
        out.append(var.reshape(-1)[:n])
    return torch.cat(out)


def _split(flat):
    start = 0
    for shape in SHAPES:
        n = math.prod(shape)
        yield flat[start:start + n]
        start += n


def _exact(world):
    per_rank = [torch.cat([g.reshape(-1) for g in probe_gradient(r)]) for r in range(world)]
    return per_rank, torch.stack(per_rank).double().mean(0)


@pytest.mark.parametrize("name", [n for n in UNBIASED_CONFIGS if "biased" not in n])
def test_average_is_unbiased_against_the_fp32_average(three_ranks, name):
    results = _result(three_ranks, name)
    world = len(results)
    per_rank, mean = _exact(world)
    config = UNBIASED_CONFIGS[name]
    variance = sum(_rounding_variance(g, config) for g in per_rank) / world**2
    samples = results[0]["samples"]
    assert samples.shape == (DRAWS, mean.numel())
    assert_unbiased(samples, mean, variance)
    # every element moves: the draws are not a constant (a broken stream would be)
    assert float(samples.double().var(0).sum()) > 0.25 * float(variance.sum())


@pytest.mark.parametrize("name", list(UNBIASED_CONFIGS))
def test_ranks_get_bitwise_identical_averages(three_ranks, name):
    results = _result(three_ranks, name)
    for r in results[1:]:
        assert torch.equal(r["samples"], results[0]["samples"])
    state = results[0]["state"]
    assert state["step"] == DRAWS and state["config"] == zd.CommConfig(**UNBIASED_CONFIGS[name]).__dict__


def test_deliberately_biased_rounding_fails_the_unbiasedness_check(three_ranks):
    results = _result(three_ranks, "nearest-2bit-biased")
    per_rank, mean = _exact(len(results))
    variance = sum(_rounding_variance(g, dict(bits=2)) for g in per_rank) / len(results) ** 2
    with pytest.raises(AssertionError, match="biased"):
        assert_unbiased(results[0]["samples"], mean, variance)


def test_payload_bytes_match_the_format(three_ranks):
    n = sum(math.prod(s) for s in SHAPES)
    for name, config in UNBIASED_CONFIGS.items():
        state = _result(three_ranks, name)[0]["state"]
        bits, gran = config["bits"], config.get("granularity", "tensor")
        assert state["bytes_fp32"] == 4 * n * DRAWS
        scales = {"tensor": len(SHAPES), "bucket": 1}.get(gran) or sum(-(-math.prod(s) // gran) for s in SHAPES)
        levels = 4 * (1 << bits) * len(SHAPES) if config.get("levels") == "optimal" else 0
        if "smallbuckets" in name:  # several buckets, each with its codes byte-aligned
            low = math.ceil(n * bits / 8) + 4 * scales
            assert low * DRAWS <= state["bytes_sent"] <= (low + len(SHAPES)) * DRAWS
        else:  # one bucket: packed codes, float32 scales, float32 levels (optimal only)
            assert state["bytes_sent"] == (math.ceil(n * bits / 8) + 4 * scales + levels) * DRAWS, name


# ---- two ranks: training, bad configuration, error feedback, non-finite gradients --------------

def _blobs(seed, n, dim=16, classes=5):
    """A Gaussian mixture with overlapping classes (accuracy well below 100%, so a band means something)."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(classes, dim, generator=torch.Generator().manual_seed(99)) * 0.4
    y = torch.randint(0, classes, (n,), generator=g)
    return centers[y] + torch.randn(n, dim, generator=g), y


def _train(rank, world, config, steps=150, batch=32):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.ReLU(), torch.nn.Linear(64, 5))
    ddp = _ddp(model)
    state = zd.register(ddp, **config) if config is not None else None
    x, y = _blobs(1, 4096)
    x, y = x[rank::world], y[rank::world]  # this rank's shard
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for step in range(steps):
        i = torch.arange(step * batch, (step + 1) * batch) % x.shape[0]
        opt.zero_grad()
        torch.nn.functional.cross_entropy(ddp(x[i]), y[i]).backward()
        opt.step()
    xt, yt = _blobs(2, 2000)
    with torch.no_grad():
        acc = float((model(xt).argmax(1) == yt).float().mean()) * 100
    params = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    return {"acc": acc, "params": params, "compression": state.compression if state else None,
            "numel": params.numel(), "tensors": len(list(model.parameters()))}


TRAIN_CONFIGS = {"fp32": None, "4bit": dict(bits=4), "2bit-optimal": dict(bits=2, levels="optimal")}


def _bad_configuration(rank, world):
    """Each case: what every rank raised (type, message), or None."""
    def attempt(fn):
        try:
            fn()
        except Exception as e:
            return type(e).__name__, str(e)
        return None

    cases = {
        "bits 9 on rank 1": lambda: zd.register(_ddp(Probe()), bits=9 if rank == 1 else 4),
        "bits differ": lambda: zd.register(_ddp(Probe()), bits=4 if rank == 0 else 2),
        "granularity differs": lambda: zd.register(_ddp(Probe()), granularity=8 if rank == 0 else "tensor"),
        "unknown setting on rank 0": lambda: zd.register(_ddp(Probe()), **({"bitz": 3} if rank == 0 else {})),
        "attach, levels differ": lambda: zd.QuantizedCommState(levels="optimal" if rank else "uniform")
        .attach(_ddp(Probe())),
    }
    out = {name: attempt(fn) for name, fn in cases.items()}

    def unattached():
        model = Probe()
        ddp = _ddp(model)
        ddp.register_comm_hook(zd.QuantizedCommState(bits=4), zd.quantized_allgather_hook)
        ddp(probe_gradient(rank)).backward()

    out["unattached"] = attempt(unattached)
    # the group still works after all that: a correct registration goes through
    model = Probe()
    ddp = _ddp(model)
    zd.register(ddp, bits=4)
    ddp(probe_gradient(rank)).backward()
    out["afterwards"] = _grads(model)
    return out


def _error_feedback(rank, world, config, steps=60):
    """Sum over steps of the exchanged average vs of the true average; the final residuals."""
    model = Probe()
    ddp = _ddp(model)
    state = zd.register(ddp, **config)
    exchanged = true = 0
    before_last = None
    for t in range(steps):
        if t == steps - 1 and state.residuals:
            before_last = torch.cat([state.residuals[i] for i in range(len(SHAPES))])
        model.zero_grad(set_to_none=True)
        xs = probe_gradient(rank, step=t + 1)
        ddp(xs).backward()
        exchanged = exchanged + _grads(model).double()
        true = true + torch.stack([torch.cat([g.reshape(-1) for g in probe_gradient(r, t + 1)])
                                   for r in range(world)]).double().mean(0)
    residual = torch.cat([state.residuals[i] for i in range(len(SHAPES))]) if state.residuals else None
    last = torch.cat([g.reshape(-1) for g in probe_gradient(rank, steps)])
    return {"exchanged": exchanged, "true": true, "residual": residual,
            "last_value": None if before_last is None else last + before_last}


def _nonfinite(rank, world):
    model = Probe()
    ddp = _ddp(model)
    zd.register(ddp, bits=4)
    xs = probe_gradient(rank)
    if rank == 1:
        xs[1] = xs[1].clone()
        xs[1][2, 3] = float("nan")
        xs[2] = xs[2].clone()
        xs[2][0] = float("inf")
    ddp(xs).backward()
    return [p.grad.clone() for p in model.parameters()]


def _two_rank_worker(rank, world):
    out = {f"train-{name}": _scenario(lambda: _train(rank, world, c)) for name, c in TRAIN_CONFIGS.items()}
    out["bad"] = _scenario(lambda: _bad_configuration(rank, world))
    for name, config in {"ef": dict(bits=2, error_feedback=True), "no-ef": dict(bits=2),
                         "ef-nearest": dict(bits=2, error_feedback=True, rounding="nearest")}.items():
        out[name] = _scenario(lambda: _error_feedback(rank, world, config))
    out["nonfinite"] = _scenario(lambda: _nonfinite(rank, world))
    return out


@pytest.fixture(scope="module")
def two_ranks():
    return run_ranks(_two_rank_worker, 2)


def test_small_model_trains_to_the_fp32_accuracy_band(two_ranks):
    fp32 = _result(two_ranks, "train-fp32")[0]["acc"]
    assert 65 < fp32 < 90, f"the fp32 baseline should learn, but not perfectly ({fp32:.1f}%)"
    for name in ("4bit", "2bit-optimal"):
        ranks = _result(two_ranks, f"train-{name}")
        acc = ranks[0]["acc"]
        assert abs(acc - fp32) <= 3.0, f"{name}: {acc:.1f}% vs fp32 {fp32:.1f}%"
        assert torch.equal(ranks[0]["params"], ranks[1]["params"]), f"{name}: the replicas drifted apart"


def test_compression_is_32_over_bits_up_to_the_scales(two_ranks):
    r = _result(two_ranks, "train-4bit")[0]
    goal = 4 * r["numel"] / (r["numel"] * 4 / 8 + 4 * r["tensors"])
    assert r["compression"] == pytest.approx(goal, rel=1e-3)
    assert r["compression"] >= 0.9 * 32 / 4


def test_bad_configuration_fails_on_every_rank_with_the_same_clear_error(two_ranks):
    ranks = _result(two_ranks, "bad")
    expected = {
        "bits 9 on rank 1": "rank 1: bits must be an integer from 1 to 8, got 9",
        "bits differ": "rank 1 has bits=2 but rank 0 has bits=4",
        "granularity differs": "rank 1 has granularity='tensor' but rank 0 has granularity=8",
        "unknown setting on rank 0": "rank 0: unknown settings ['bitz']",
        "attach, levels differ": "rank 1 has levels='optimal' but rank 0 has levels='uniform'",
    }
    for case, message in expected.items():
        for rank, r in enumerate(ranks):
            assert r[case] is not None, f"{case}: rank {rank} did not fail"
            kind, text = r[case]
            assert kind == "ValueError" and message in text, f"{case}, rank {rank}: {kind}: {text}"
        assert ranks[0][case] == ranks[1][case]
    for r in ranks:
        assert r["unattached"] is not None and "not attached" in r["unattached"][1]
    assert torch.equal(ranks[0]["afterwards"], ranks[1]["afterwards"])


def test_invalid_settings_are_rejected_locally_too():
    with pytest.raises(ValueError, match="bits must be an integer from 1 to 8, got 0"):
        zd.CommConfig(bits=0)
    with pytest.raises(ValueError, match="levels must be one of 'uniform', 'optimal', got 'best'"):
        zd.QuantizedCommState(levels="best")
    with pytest.raises(ValueError, match="granularity must be 'tensor', 'bucket' or a positive integer"):
        zd.CommConfig(granularity=0)
    with pytest.raises(ValueError, match="seed must be an integer in"):
        zd.CommConfig(seed=-1)
    with pytest.raises(TypeError, match="DistributedDataParallel"):
        zd.register(torch.nn.Linear(2, 2), bits=4)


def test_error_feedback_keeps_the_accumulated_error_at_one_rounding_step(two_ranks):
    ef, no_ef, ef_nearest = (_result(two_ranks, n) for n in ("ef", "no-ef", "ef-nearest"))
    gap = 2 / 3  # between the 4 uniform levels of 2 bits, in units of the scale
    for ranks, most in ((ef, gap), (ef_nearest, gap / 2)):
        r = ranks[0]
        mean_residual = (ranks[0]["residual"].double() + ranks[1]["residual"].double()) / 2
        # the documented identity: sum of exchanged = sum of true - mean residual (float32 sums)
        torch.testing.assert_close(r["exchanged"], r["true"] - mean_residual, rtol=1e-4, atol=1e-4)
        # and each residual is at most one rounding step of its last quantized value v = g + e
        for rank in ranks:
            for e, v in zip(_split(rank["residual"]), _split(rank["last_value"])):
                assert float(e.abs().max()) <= most * float(v.abs().max()) * (1 + 1e-6)
    error_ef = float((ef[0]["exchanged"] - ef[0]["true"]).norm())
    error_no_ef = float((no_ef[0]["exchanged"] - no_ef[0]["true"]).norm())
    # without feedback the error is a sum of 60 independent roundings: about sqrt(60) ~ 8x one step
    assert error_ef < error_no_ef / 3, f"error feedback {error_ef:.4g} vs none {error_no_ef:.4g}"
    assert no_ef[0]["residual"] is None


def test_non_finite_gradients_reach_every_rank_as_nan_without_a_hang(two_ranks):
    ranks = _result(two_ranks, "nonfinite")
    for grads in ranks:
        assert torch.isfinite(grads[0]).all() and torch.isfinite(grads[3]).all()
        assert torch.isnan(grads[1]).all() and torch.isnan(grads[2]).all()  # the whole segment's scale
    for a, b in zip(*ranks):
        assert torch.equal(a.nan_to_num(), b.nan_to_num())


# ---- four ranks ---------------------------------------------------------------------------------

def _four_rank_worker(rank, world):
    return _scenario(lambda: _train(rank, world, dict(bits=3, levels="optimal", granularity=64), steps=40))


def test_four_ranks_stay_in_sync():
    ranks = [r["ok"] if "ok" in r else pytest.fail(r["error"] + r["traceback"])
             for r in run_ranks(_four_rank_worker, 4)]
    for r in ranks[1:]:
        assert torch.equal(r["params"], ranks[0]["params"])
    assert ranks[0]["acc"] > 40


# ---- state ----------------------------------------------------------------------------------------

def test_state_pickles_and_checkpoints_without_the_process_group():
    state = zd.QuantizedCommState(bits=3, error_feedback=True, seed=7)
    state.step, state.bytes_sent, state.bytes_fp32 = 5, 100, 800
    state.residuals = {0: torch.ones(3)}
    state._param_index = {1: 0}
    copy = pickle.loads(pickle.dumps(state))
    assert copy.config == state.config and copy.step == 5 and copy.compression == 8.0
    assert copy._param_index is None and copy.process_group is None and torch.equal(copy.residuals[0], torch.ones(3))
    fresh = zd.QuantizedCommState(bits=3, error_feedback=True, seed=7)
    fresh.load_state_dict(state.state_dict())
    assert fresh.step == 5 and torch.equal(fresh.residuals[0], torch.ones(3))
    with pytest.raises(ValueError, match="saved state has settings"):
        zd.QuantizedCommState(bits=4).load_state_dict(state.state_dict())


def test_rank_seeds_are_distinct_and_reproducible():
    seeds = [zd.rank_seed(0, r) for r in range(64)]
    assert len(set(seeds)) == 64 and zd.rank_seed(0, 3) == seeds[3]
    assert all(0 <= s < 2**64 for s in seeds)


# ---- one rank, in this process (a HashStore group: no sockets) ----------------------------------

def test_a_world_of_one_rank_decodes_its_own_codes(device):
    """On the CPU with gloo, and where a GPU exists with NCCL: the hook's result is, bit for bit, the
    CPU operators' draw for rank 0's streams (CPU and CUDA kernels agree bit for bit)."""
    import torch.distributed as dist

    backend = "nccl" if device == "cuda" else "gloo"
    if device == "cuda":
        torch.cuda.set_device(0)
    dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
    try:
        for config in (dict(bits=3), dict(bits=5, levels="optimal", granularity=7), dict(bits=2, granularity="bucket")):
            model = Probe().to(device)
            ddp = _ddp(model)
            state = zd.register(ddp, **config)
            xs = probe_gradient(0)
            ddp([x.to(device) for x in xs]).backward()
            # the same draw the operators give for rank 0's stream (seed_0, step 0), segment by segment
            seed = zd.rank_seed(0, 0)
            gran = config.get("granularity", "tensor")
            expected = []
            for k, x in enumerate(xs):
                flat = x.reshape(-1)
                n = flat.numel()
                cols = n if gran in ("tensor", "bucket") else min(gran, n)
                blocks = torch.cat([flat, flat.new_zeros(-n % cols)]).view(-1, cols)
                if gran == "bucket":
                    break
                q = torch_zipml.quantize(blocks, config["bits"], levels=config.get("levels", "uniform"),
                                         granularity=blocks.abs().amax(1, keepdim=True), seed=seed, offset=k)
                expected.append(q.dequantize().reshape(-1)[:n])
            got = [p.grad.reshape(-1).cpu() for p in model.parameters()]
            if gran != "bucket":
                for e, g in zip(expected, got):
                    assert torch.equal(e, g)
            else:  # one scale for the whole bucket: each value moves by less than one uniform level gap
                scale = max(float(x.abs().max()) for x in xs)
                gap = 2 / ((1 << config["bits"]) - 1) * scale
                for g, x in zip(got, xs):
                    assert float((g - x.reshape(-1)).abs().max()) < gap
            assert state.step == 1 and state.bytes_sent > 0
    finally:
        dist.destroy_process_group()


def test_a_pending_callback_does_not_keep_the_state_or_its_process_group(monkeypatch):
    """torch frees the hook's all-gather callback on the process group's worker thread, maybe after
    the caller has let go of DDP and the state. Were that callback the last owner of the state, and
    so of the process group, the group would be destroyed on its own worker thread, which cannot
    join itself: CI once aborted that way ("Fatal Python error: Aborted" in a thread with no Python
    frame). Here every callback stays referenced, as on a worker thread that has not yet freed it;
    dropping DDP and the state must still free the state."""
    import torch.distributed as dist

    pending = []
    gather = dist.all_gather_into_tensor

    class KeepCallbacks:  # a future that also keeps each callback it is given
        def __init__(self, fut):
            self.fut = fut

        def then(self, callback):
            pending.append(callback)
            return self.fut.then(callback)

    class Work:
        def __init__(self, work):
            self.work = work

        def get_future(self):
            return KeepCallbacks(self.work.get_future())

    monkeypatch.setattr(dist, "all_gather_into_tensor", lambda *a, **k: Work(gather(*a, **k)))
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        ddp = _ddp(Probe())
        state = zd.register(ddp, bits=4, error_feedback=True)  # the callback writes the state's residuals
        ddp(probe_gradient(0)).backward()
        assert pending and len(state.residuals) == len(SHAPES)
        held = [c.cell_contents for cb in pending for c in cb.__closure__ or ()]
        assert not any(isinstance(h, (dist.ProcessGroup, zd.QuantizedCommState)) for h in held)
        freed = weakref.ref(state)
        del ddp, state
        gc.collect()
        assert freed() is None, "a pending all-gather callback keeps the hook's state (and its process group) alive"
    finally:
        dist.destroy_process_group()
