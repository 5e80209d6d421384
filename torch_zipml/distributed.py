"""Data-parallel training with low-precision gradient exchange: a communication hook for PyTorch's
DistributedDataParallel (gloo or NCCL, launched with torchrun) that sends each rank's gradient as
`bits`-bit stochastic codes. ZipML (Zhang et al., ICML 2017, arXiv 1611.05402) quantizes all three
data channels of training (Section 1, Figure 2: samples, model, gradients); this is the gradient
channel between machines, with the unbiased stochastic rounding of Section 2 and optionally the
variance-optimal levels of Section 5.

    ddp = torch.nn.parallel.DistributedDataParallel(model)
    state = torch_zipml.distributed.register(ddp, bits=4)    # on every rank: checks the ranks agree
    ...                                                      # train as usual
    state.step, state.bytes_sent, state.compression          # counters (see QuantizedCommState)

What the hook does with one gradient bucket g (rank r of W, DDP step t):

1. Segments: with granularity "tensor" (the default) each parameter's gradient in the bucket is one
   segment with one scale; with an integer B, each parameter's gradient is cut into blocks of B
   elements, one scale per block; with "bucket", the whole bucket is one segment. Segment k has the
   Philox stream (seed_r, offset = t * 2**20 + id_k), where id_k is the parameter's index in
   model.parameters() ("bucket": the bucket's index) and seed_r = splitmix64(seed + r * golden
   ratio): every random choice follows from (seed, rank, step, parameter), so runs are reproducible,
   and with "tensor" or block granularity the result does not depend on how DDP groups parameters
   into buckets (it regroups them after the first step).
2. Quantization with the core operator (torch_zipml.quantize, the same kernels on CPU and CUDA):
   scale = max |g| per segment or block, stochastic rounding onto the uniform grid of 2**bits levels
   in [-1, 1] or onto the variance-optimal levels of the segment; E[levels[code] * scale] = g.
3. Exchange: one all-gather of a byte payload per bucket, the same size on every rank:
       packed codes  ceil(numel * bits / 8) bytes  (torch_zipml.pack, all segments in one stream)
       scales        4 bytes per segment or block (float32)
       levels        4 * 2**bits bytes per segment, only for levels="optimal"
   The fp32 gradient would be 4 * numel bytes: state.compression is the ratio of the two.
4. Decoding: every rank unpacks and dequantizes every rank's codes, adds them in rank order
   0, 1, ..., W-1 and divides by W. The average is unbiased (a mean of unbiased estimates) with
   variance (1/W**2) * sum_r Var[Q(g_r)], and bitwise identical on all ranks (the same elementwise
   float operations in the same order), so the replicas stay in sync.

Traffic. Each rank contributes one payload P per bucket; a ring all-gather (gloo's, NCCL's) makes
each rank send and receive (W - 1) * P bytes, where the ring all-reduce of DDP's default hook sends
2 (W - 1) / W * 4 * numel. The low-precision exchange therefore sends fewer bytes while
W < 64 / bits (for 4 bits: up to 15 ranks); bench/comm.py measures both.

Error feedback (error_feedback=True) is a different estimator and is BIASED: each rank adds its
residual e (what rounding lost last step) to the gradient before quantizing, v = g + e, sends Q(v)
and keeps e' = v - Q(v). Each step's update is then off by the residuals, E[Q(v)] = g + e, but the
errors do not accumulate: over T steps the sum of the exchanged averages equals the sum of the true
averages minus the ranks' mean current residual, which is at most one rounding step (the level gap
times the scale) per element, where without feedback the accumulated error grows like sqrt(T).
Residuals are kept per parameter (state.residuals), float32; a non-finite one (after an overflowing
step, e.g. one that torch.amp's GradScaler skips) restarts from zero. rounding="nearest" is biased
too; it is meant for use with error feedback.

Non-finite gradients are not an error: a segment holding NaN or Inf is sent with its non-finite
scale and decodes to NaN on every rank (as the fp32 all-reduce would spread them), so a GradScaler
sees the overflow on every rank and no rank is left waiting.

Bad configuration fails on every rank with the same error, instead of leaving ranks waiting for a
collective the others never join: register() all-gathers every rank's settings (before validating
any of them), and names the rank and the setting that is out of range or differs.

CUDA: the same code runs on NCCL with CUDA tensors (the operators have CUDA kernels). quantize,
dequantize, pack and unpack read an error flag back from the device, so each bucket synchronises a
few times; decoding runs in the all-gather future's callback, as PowerSGD's hook does.
"""

import weakref
from dataclasses import asdict, dataclass
from typing import Dict, List, Optional, Sequence, Union

import torch
import torch.distributed as dist

from .ops import dequantize, pack, quantize, unpack

__all__ = ["CommConfig", "QuantizedCommState", "quantized_allgather_hook", "register", "check_ranks_agree"]

LEVELS = ("uniform", "optimal")
ROUNDINGS = ("stochastic", "nearest")
GRANULARITIES = ("tensor", "bucket")  # or a positive int: the block size
STREAM_BITS = 20                      # Philox offset = step * 2**20 + stream id (parameter or bucket index)
_GOLDEN = 0x9E3779B97F4A7C15
_MASK64 = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    x = (x + _GOLDEN) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def rank_seed(seed: int, rank: int) -> int:
    """The Philox seed of rank `rank`: splitmix64(seed + rank * golden ratio), a distinct key per rank."""
    return _splitmix64((seed + rank * _GOLDEN) & _MASK64)


Granularity = Union[str, int]


@dataclass(frozen=True)
class CommConfig:
    """The hook's settings, which every rank must share (see the module docstring).

    bits: 1 to 8 bits per gradient element.
    levels: "uniform" (2**bits points from -1 to 1) or "optimal" (variance-optimal per segment,
        Section 5; their 2**bits float32 values travel with the codes).
    granularity: "tensor" (one scale per parameter gradient), "bucket" (one per DDP bucket) or an
        integer B (one per block of B elements of each parameter gradient).
    rounding: "stochastic" (unbiased) or "nearest" (biased).
    error_feedback: carry each rank's rounding residual to its next step (biased; see above).
    seed: base of the per-rank Philox seeds, an integer in [0, 2**64).
    candidates: candidate points of the optimal-levels dynamic program.
    """

    bits: int = 4
    levels: str = "uniform"
    granularity: Granularity = "tensor"
    rounding: str = "stochastic"
    error_feedback: bool = False
    seed: int = 0
    candidates: int = 1024

    def __post_init__(self) -> None:
        problem = config_problem(asdict(self))
        if problem:
            raise ValueError(f"torch_zipml.distributed: {problem}")

    @property
    def unbiased(self) -> bool:
        return self.rounding == "stochastic" and not self.error_feedback


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def config_problem(config: Dict) -> Optional[str]:
    """What is wrong with a CommConfig's fields given as a dict (None if nothing), naming the
    setting and the accepted values."""
    expected = {f for f in CommConfig.__dataclass_fields__}
    if set(config) != expected:
        unknown, missing = sorted(set(config) - expected), sorted(expected - set(config))
        return f"unknown settings {unknown}" if unknown else f"missing settings {missing}"
    c = config
    if not _is_int(c["bits"]) or not 1 <= c["bits"] <= 8:
        return f"bits must be an integer from 1 to 8, got {c['bits']!r}"
    if c["levels"] not in LEVELS:
        return f"levels must be one of {', '.join(map(repr, LEVELS))}, got {c['levels']!r}"
    g = c["granularity"]
    if not (g in GRANULARITIES or (_is_int(g) and g >= 1)):
        return f"granularity must be 'tensor', 'bucket' or a positive integer block size, got {g!r}"
    if c["rounding"] not in ROUNDINGS:
        return f"rounding must be one of {', '.join(map(repr, ROUNDINGS))}, got {c['rounding']!r}"
    if not isinstance(c["error_feedback"], bool):
        return f"error_feedback must be True or False, got {c['error_feedback']!r}"
    if not _is_int(c["seed"]) or not 0 <= c["seed"] <= _MASK64:
        return f"seed must be an integer in [0, 2**64), got {c['seed']!r}"
    if not _is_int(c["candidates"]) or c["candidates"] < 2:
        return f"candidates must be an integer >= 2, got {c['candidates']!r}"
    return None


def check_ranks_agree(config: Dict, group: Optional[dist.ProcessGroup] = None) -> None:
    """Collective: all-gathers every rank's settings (a dict, checked or not) and raises the same
    ValueError on every rank if any rank's settings are invalid or differ from rank 0's, so that a
    misconfigured rank cannot leave the others waiting in a collective it never joins."""
    world = dist.get_world_size(group)
    mine = {"config": dict(config), "world_size": world}
    everyone: List = [None] * world
    dist.all_gather_object(everyone, mine, group=group)
    problems = []
    for r, theirs in enumerate(everyone):
        problem = config_problem(theirs["config"])
        if problem:
            problems.append(f"rank {r}: {problem}")
    if not problems:
        first = everyone[0]
        for r, theirs in enumerate(everyone[1:], start=1):
            if theirs["world_size"] != first["world_size"]:
                problems.append(f"rank {r} sees a world of {theirs['world_size']} ranks, rank 0 of "
                                f"{first['world_size']}")
            for key in sorted(first["config"]):
                if theirs["config"][key] != first["config"][key]:
                    problems.append(f"rank {r} has {key}={theirs['config'][key]!r} but rank 0 has "
                                    f"{key}={first['config'][key]!r}")
    if problems:
        raise ValueError("torch_zipml.distributed: the ranks' gradient-exchange settings are invalid or differ "
                         "(all ranks must pass the same valid settings): " + "; ".join(problems))


class QuantizedCommState:
    """The state of quantized_allgather_hook: settings, counters and error-feedback residuals.

    Counters (this rank): `step` (DDP iterations exchanged), `buckets` (hook calls), `bytes_sent`
    (payload bytes this rank contributed to the all-gathers: codes, scales, levels), `bytes_fp32`
    (4 bytes per gradient element: the same gradients in float32); `compression` is their ratio.
    `residuals`: {parameter index: float32 tensor}, with error feedback only.

    Picklable (the process group and the parameter map are left out; attach() restores them), and
    state_dict() / load_state_dict() checkpoint what a resumed run needs.
    """

    def __init__(self, config: Optional[CommConfig] = None, process_group: Optional[dist.ProcessGroup] = None,
                 **settings) -> None:
        if config is None:
            config = CommConfig(**settings)
        elif settings:
            raise TypeError("pass either a CommConfig or its settings as keywords, not both")
        self.config = config
        self.process_group = process_group
        self.step = 0
        self.buckets = 0
        self.bytes_sent = 0
        self.bytes_fp32 = 0
        self.residuals: Dict[int, torch.Tensor] = {}
        self._param_index: Optional[Dict[int, int]] = None  # id(parameter) -> index in model.parameters()

    # ---- setup ------------------------------------------------------------------------------

    def attach(self, model: torch.nn.Module, check: bool = True) -> "QuantizedCommState":
        """Binds the state to a DistributedDataParallel model: its process group and the indices of
        its parameters (the Philox streams and residuals are keyed by them). With check (the
        default), a collective: verifies that every rank has the same settings."""
        if not isinstance(model, torch.nn.parallel.DistributedDataParallel):
            raise TypeError(f"attach needs a DistributedDataParallel model, got {type(model).__name__}")
        self.process_group = model.process_group
        params = list(model.module.parameters())
        if len(params) >= 1 << STREAM_BITS:
            raise ValueError(f"torch_zipml.distributed: at most {1 << STREAM_BITS} parameters, got {len(params)}")
        self._param_index = {id(p): i for i, p in enumerate(params)}
        if check:
            check_ranks_agree(asdict(self.config), self.process_group)
        return self

    @property
    def rank(self) -> int:
        return dist.get_rank(self.process_group)

    @property
    def world_size(self) -> int:
        return dist.get_world_size(self.process_group)

    @property
    def compression(self) -> float:
        """float32 bytes / sent bytes (0 before the first exchange)."""
        return self.bytes_fp32 / self.bytes_sent if self.bytes_sent else 0.0

    # ---- checkpoints and pickling -----------------------------------------------------------

    def state_dict(self) -> Dict:
        """This rank's state: settings, counters and residuals (on the CPU)."""
        return {"config": asdict(self.config), "step": self.step, "buckets": self.buckets,
                "bytes_sent": self.bytes_sent, "bytes_fp32": self.bytes_fp32,
                "residuals": {i: r.cpu() for i, r in self.residuals.items()}}

    def load_state_dict(self, state: Dict) -> None:
        if state["config"] != asdict(self.config):
            raise ValueError(f"torch_zipml.distributed: the saved state has settings {state['config']}, "
                             f"this one {asdict(self.config)}")
        self.step, self.buckets = int(state["step"]), int(state["buckets"])
        self.bytes_sent, self.bytes_fp32 = int(state["bytes_sent"]), int(state["bytes_fp32"])
        self.residuals = {int(i): r.clone() for i, r in state["residuals"].items()}

    def __getstate__(self) -> Dict:
        state = dict(self.__dict__)
        state["process_group"] = None
        state["_param_index"] = None
        return state

    def __repr__(self) -> str:
        return (f"QuantizedCommState({self.config}, step={self.step}, bytes_sent={self.bytes_sent}, "
                f"compression={self.compression:.2f})")


def register(model: torch.nn.Module, bits: int = 4, **settings) -> QuantizedCommState:
    """Registers quantized_allgather_hook on a DistributedDataParallel model and returns its state.

    Collective: call it on every rank with the same settings (those of CommConfig). The settings are
    gathered and compared before any rank validates its own, so a bad or differing setting raises
    the same ValueError on every rank."""
    config = {**asdict(CommConfig()), "bits": bits, **settings}
    group = getattr(model, "process_group", None)
    if not isinstance(model, torch.nn.parallel.DistributedDataParallel):
        raise TypeError(f"register needs a DistributedDataParallel model, got {type(model).__name__}")
    check_ranks_agree(config, group)
    state = QuantizedCommState(CommConfig(**config)).attach(model, check=False)
    model.register_comm_hook(state, quantized_allgather_hook)
    return state


# ---- the hook -----------------------------------------------------------------------------------

@dataclass
class _Segment:
    start: int    # element offset in the bucket
    numel: int
    rows: int     # scale groups: blocks of `cols` elements, the last one zero-padded
    cols: int
    stream: int   # Philox stream id: parameter index, or bucket index
    param: int    # parameter index (-1 for a whole bucket)


def _segments(state: QuantizedCommState, bucket: dist.GradBucket) -> List[_Segment]:
    params = bucket.parameters()
    index = state._param_index
    numels = [p.numel() for p in params]
    total = bucket.buffer().numel()
    if sum(numels) != total:
        raise RuntimeError(f"torch_zipml.distributed: bucket {bucket.index()} holds {total} elements but its "
                           f"parameters {sum(numels)}; this DDP layout is not supported")
    try:
        ids = [index[id(p)] for p in params]
    except KeyError:
        raise RuntimeError("torch_zipml.distributed: a bucket parameter is not among the attached model's "
                           "parameters; attach the state to the model it hooks") from None
    gran = state.config.granularity
    if gran == "bucket":
        return [_Segment(0, total, 1 if total else 0, total, bucket.index(), -1)]
    segments, start = [], 0
    for n, i in zip(numels, ids):
        cols = n if gran == "tensor" else min(gran, n)
        if n:
            segments.append(_Segment(start, n, -(-n // cols), cols, i, i))
        start += n
    return segments


def _blocks(flat: torch.Tensor, seg: _Segment) -> torch.Tensor:
    """The segment as (rows, cols), zero-padded at the end."""
    x = flat[seg.start:seg.start + seg.numel]
    pad = seg.rows * seg.cols - seg.numel
    if pad:
        x = torch.cat([x, x.new_zeros(pad)])
    return x.view(seg.rows, seg.cols)


def _residual_of(state: QuantizedCommState, segments: Sequence[_Segment], bucket: dist.GradBucket,
                 like: torch.Tensor) -> torch.Tensor:
    """The bucket's residuals in bucket order (zeros where none is kept yet)."""
    parts = []
    for p in bucket.parameters():
        r = state.residuals.get(state._param_index[id(p)])
        parts.append(r.to(like.device) if r is not None else like.new_zeros(p.numel()))
    return torch.cat(parts) if parts else like.new_zeros(0)


def _keep_residual(state: QuantizedCommState, bucket: dist.GradBucket, residual: torch.Tensor) -> None:
    residual = torch.where(torch.isfinite(residual), residual, torch.zeros_like(residual))
    start = 0
    for p in bucket.parameters():
        n = p.numel()
        state.residuals[state._param_index[id(p)]] = residual[start:start + n].clone()
        start += n


def _encode(state: QuantizedCommState, values: torch.Tensor, segments: Sequence[_Segment]):
    """The payload (uint8) of one bucket's values, its code byte count, and the uniform levels (the
    quantizer's own table, for decoding; None with optimal levels, which travel in the payload)."""
    cfg = state.config
    seed = rank_seed(cfg.seed, state.rank)
    blocks = [_blocks(values, s) for s in segments]
    scales = [b.abs().amax(dim=1, keepdim=True).float() for b in blocks]
    scale_all = torch.cat([s.view(-1) for s in scales]) if scales else values.new_zeros(0, dtype=torch.float32)
    finite = bool(torch.isfinite(scale_all).all())  # one host read per bucket (quantize syncs on CUDA anyway)
    codes, tables, grid = [], [], None
    for seg, x, s in zip(segments, blocks, scales):
        if not finite:  # send the non-finite scale (decodes to NaN everywhere); quantize zeros in its place
            bad = ~torch.isfinite(s)
            x = torch.where(bad, torch.zeros_like(x), x)
            s = torch.where(bad, torch.zeros_like(s), s)
        q = quantize(x, cfg.bits, rounding=cfg.rounding, levels=cfg.levels, granularity=s, seed=seed,
                     offset=(state.step << STREAM_BITS) + seg.stream, candidates=cfg.candidates)
        codes.append(q.codes.view(-1)[:seg.numel])
        if cfg.levels == "optimal":
            tables.append(q.levels)
        else:
            grid = q.levels
    packed = pack(torch.cat(codes), cfg.bits) if codes else values.new_zeros(0, dtype=torch.uint8)
    parts = [packed, scale_all.contiguous().view(torch.uint8)]
    if tables:
        parts.append(torch.cat(tables).view(torch.uint8))
    return torch.cat(parts), packed.numel(), grid


def _decode(state: QuantizedCommState, gathered: torch.Tensor, segments: Sequence[_Segment], numel: int,
            code_bytes: int, grid: Optional[torch.Tensor]) -> torch.Tensor:
    """Every rank's values from the gathered payloads: float32 (W, numel)."""
    cfg = state.config
    world = gathered.shape[0]
    num_scales = sum(s.rows for s in segments)
    codes = torch.stack([unpack(gathered[r, :code_bytes], cfg.bits, numel) for r in range(world)])
    scale_end = code_bytes + 4 * num_scales
    # Fresh copies: one rank's row is "contiguous" already, but its offset and stride are not 4-byte multiples.
    def floats(part: torch.Tensor) -> torch.Tensor:
        return part.clone(memory_format=torch.contiguous_format).view(torch.float32)

    scales = floats(gathered[:, code_bytes:scale_end])                                  # (W, num_scales)
    tables = floats(gathered[:, scale_end:]).view(world, len(segments), -1) if cfg.levels == "optimal" else None
    decoded = torch.empty(world, numel, dtype=torch.float32, device=gathered.device)
    first = 0
    for k, seg in enumerate(segments):
        c = codes[:, seg.start:seg.start + seg.numel]
        pad = seg.rows * seg.cols - seg.numel
        if pad:
            c = torch.cat([c, c.new_zeros(world, pad)], dim=1)
        c = c.reshape(world, seg.rows, seg.cols)
        s = scales[:, first:first + seg.rows].reshape(world, seg.rows, 1)
        first += seg.rows
        if tables is None:
            d = dequantize(c, s, grid)
        else:
            d = torch.stack([dequantize(c[r], s[r], tables[r, k]) for r in range(world)])
        decoded[:, seg.start:seg.start + seg.numel] = d.view(world, -1)[:, :seg.numel]
    return decoded


# (No `from __future__ import annotations` in this module: DDP checks these annotations as objects.)
def quantized_allgather_hook(state: QuantizedCommState,
                             bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    """The DDP communication hook (see the module docstring): quantize, all-gather, decode, average.
    Register it with register(), or attach() a QuantizedCommState and call
    model.register_comm_hook(state, quantized_allgather_hook)."""
    if state._param_index is None:
        raise RuntimeError("torch_zipml.distributed: the hook's state is not attached to a model; use "
                           "torch_zipml.distributed.register(ddp_model, ...) or state.attach(ddp_model)")
    group = state.process_group
    world, rank = dist.get_world_size(group), dist.get_rank(group)
    buffer = bucket.buffer()
    segments = _segments(state, bucket)
    values = buffer
    if state.config.error_feedback:
        values = buffer.float() + _residual_of(state, segments, bucket, buffer.float())
    payload, code_bytes, grid = _encode(state, values, segments)
    gathered = torch.empty(world * payload.numel(), dtype=torch.uint8, device=payload.device)
    work = dist.all_gather_into_tensor(gathered, payload, group=group, async_op=True)
    state.buckets += 1
    state.bytes_sent += payload.numel()
    state.bytes_fp32 += 4 * buffer.numel()
    if bucket.is_last():
        state.step += 1

    # torch runs this callback on the process group's worker thread and frees it there, maybe after
    # DDP and the caller have let go of the state. Holding the last reference to the state (and so
    # to the process group), it would destroy the group on the group's own worker thread, which
    # cannot join itself: the process aborts. So it holds the state weakly; DDP keeps the state alive
    # until this bucket's future completes.
    state_ref = weakref.ref(state)

    def finish(fut: torch.futures.Future) -> torch.Tensor:
        fut.wait()
        live = state_ref()
        if live is None:
            raise RuntimeError("torch_zipml.distributed: the hook's state was freed before its all-gather completed")
        decoded = _decode(live, gathered.view(world, -1), segments, buffer.numel(), code_bytes, grid)
        if live.config.error_feedback:
            _keep_residual(live, bucket, values.float() - decoded[rank])
        total = decoded[0].clone()
        for r in range(1, world):  # rank order: the same bits on every rank
            total.add_(decoded[r])
        buffer.copy_(total.div_(world))
        return buffer

    return work.get_future().then(finish)
