"""python -m torch_zipml.train: train a CIFAR-style ResNet with quantized weights (ZipML, arXiv
1611.05402, Section 7) or an XNOR-Net baseline, on Fashion-MNIST (the default, Debian's
dataset-fashion-mnist), CIFAR-10 or CIFAR-100.

    python -m torch_zipml.train --scheme zipml --weight-bits 2 --levels optimal --epochs 10
    python -m torch_zipml.train --scheme bwn --dataset cifar10 --data-dir ~/data/cifar-10-batches-bin
    python -m torch_zipml.train --out runs/x --resume          # continue runs/x/checkpoint.pt

Recipe: SGD with momentum 0.9 and weight decay on every parameter, learning rate `--lr` annealed
to 0 by a cosine over all the run's steps (epochs x batches, or --max-steps), updated every step;
cross-entropy loss; the model is built from --seed (torch.manual_seed) and converted with
torch_zipml.convert (ZipML layer i gets Philox seed --seed + i); the data order and augmentation of
epoch e come from (--seed, e) (torch_zipml.data).

Evaluation (after every epoch, on the test split): the network eval mode runs (for stochastic ZipML
layers one fixed draw of the quantized weights, see torch_zipml.nn), with batch-norm statistics
re-estimated for it on the first --bn-calibration training batches (torch_zipml.nn.calibrate_batchnorm,
on a copy: training is unaffected), for every scheme alike. The final result of a model with
stochastic ZipML layers also reports the accuracy with nearest rounding in eval.

Outputs in --out: metrics.csv and metrics.json (one row per epoch; the JSON also holds the run's
settings, the machine and the final result), checkpoint.pt after every epoch, curves.png. Every file
is written to a temporary name and renamed (os.replace), so an interrupted run never leaves a torn
file. --resume restores the model, the optimizer, the schedule, the quantizers' Philox steps, the
RNG and the epoch, and continues to exactly (bit for bit, on the same machine and thread count) the
result of an uninterrupted run; its settings come from the checkpoint, and a flag given with a
different value is an error.

Data-parallel training: launched by torchrun (which sets RANK and WORLD_SIZE), every process trains a
replica under DistributedDataParallel (gloo on the CPU, NCCL with --device cuda: process r takes
cuda:LOCAL_RANK), and the ranks exchange gradients as fp32 (DDP's all-reduce) or, with
--comm-bits, as stochastically quantized codes (torch_zipml.distributed):

    torchrun --nproc-per-node 2 -m torch_zipml.train --comm-bits 4 --epochs 10
    torchrun --nnodes 2 --node-rank 0 --master-addr HOST --nproc-per-node 8 -m torch_zipml.train --device cuda ...

--batch-size is the global batch: each rank takes its shard of each batch (torch_zipml.data), so the
steps, the schedule and the samples per step are those of one process. Rank 0 evaluates and writes
every file (metrics, checkpoints, the plot) and prints; the others train. --resume continues a
distributed run with the same number of processes (rank 0 reads the checkpoint and sends it to the
others), exactly as far as the arithmetic allows: bit for bit with --comm-bits (per-tensor or block
scales) or with 2 processes. The number of processes and the --comm-* flags are settings of the run
(recorded in metrics.json), present only for a distributed run; a bad setting or missing data on any
rank stops every rank with the same error.
"""

from __future__ import annotations

import argparse
import csv
import io
import itertools
import json
import math
import os
import platform
import sys
import time
from typing import Callable, Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from . import data as zdata
from . import distributed as zdist
from .convert import QuantConfig, convert, layer_schemes
from .models import MODELS
from .nn import _ZipQuantized, calibrate_batchnorm, rng_state, set_rng_state

__all__ = ["build_parser", "main", "train", "evaluate", "write_atomic", "save_atomic", "CHECKPOINT_FORMAT"]

CHECKPOINT_FORMAT = "torch_zipml.train/1"
CHECKPOINT = "checkpoint.pt"

# Flags that do not change what is computed: not part of a run's settings, free to differ on --resume.
_RUN_ONLY = {"out", "resume", "device", "threads", "progress", "stop_after_epochs", "plot", "quiet"}
# Settings a --resume restores unless given again (the data may have moved).
_OVERRIDABLE = {"data_dir"}
# Settings of a distributed run only (absent from a single-process run's settings), with their defaults.
_DISTRIBUTED_DEFAULTS = {"world_size": 1, "comm_bits": None, "comm_levels": "uniform", "comm_granularity": "tensor",
                         "comm_error_feedback": False}


# ---- atomic files -------------------------------------------------------------------------------

def write_atomic(path: str, write: Callable[[io.BufferedWriter], None]) -> None:
    """Writes a file through write(f) under a temporary name in the same directory, then renames it
    over `path` (os.replace is atomic on POSIX): readers see the old file or the new one."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f".{os.path.basename(path)}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def save_atomic(obj, path: str) -> None:
    write_atomic(path, lambda f: torch.save(obj, f))


def write_json(obj, path: str) -> None:
    write_atomic(path, lambda f: f.write((json.dumps(obj, indent=2) + "\n").encode()))


def write_csv(rows: Sequence[Dict], path: str) -> None:
    def write(f):
        text = io.StringIO()
        if rows:
            w = csv.DictWriter(text, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
        f.write(text.getvalue().encode())
    write_atomic(path, write)


# ---- command line -------------------------------------------------------------------------------

def build_parser(suppress_defaults: bool = False) -> argparse.ArgumentParser:
    """The trainer's flags; with suppress_defaults, only flags given on the command line appear in
    the parsed namespace (to tell which flags a --resume overrides)."""
    def d(value):
        return argparse.SUPPRESS if suppress_defaults else value

    p = argparse.ArgumentParser(prog="python -m torch_zipml.train", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = p.add_argument_group("model and data")
    g.add_argument("--model", choices=sorted(MODELS), default=d("resnet20"))
    g.add_argument("--dataset", choices=zdata.DATASETS, default=d("fashion-mnist"))
    g.add_argument("--data-dir", default=d(None),
                   help="directory with the data set's files (default for fashion-mnist: "
                        f"{zdata.DEFAULT_DATA_DIRS['fashion-mnist']})")
    g.add_argument("--train-subset", type=int, default=d(None), help="train on this many samples (seeded draw)")
    g.add_argument("--test-subset", type=int, default=d(None), help="evaluate on this many test samples")
    g.add_argument("--hflip", choices=("auto", "on", "off"), default=d("auto"),
                   help="random horizontal flips; auto: on for CIFAR, off for Fashion-MNIST")
    q = p.add_argument_group("quantization")
    q.add_argument("--scheme", choices=("fp32", "bwn", "xnor", "zipml"), default=d("zipml"))
    q.add_argument("--weight-bits", type=int, default=d(2), help="zipml: bits per weight (1 to 8)")
    q.add_argument("--levels", choices=("uniform", "optimal"), default=d("optimal"), help="zipml: weight levels")
    q.add_argument("--rounding", choices=("stochastic", "nearest"), default=d("stochastic"))
    q.add_argument("--granularity", choices=("tensor", "channel"), default=d("channel"),
                   help="zipml: one weight scale per tensor or per output channel")
    q.add_argument("--grad-bits", type=int, default=d(None), help="zipml: quantize weight gradients to these bits")
    q.add_argument("--act-bits", type=int, default=d(None), help="zipml: quantize layer inputs to these bits")
    q.add_argument("--eval-rounding", choices=("sample", "nearest"), default=d("sample"),
                   help="zipml eval mode: a fixed stochastic draw of the weights, or nearest rounding")
    q.add_argument("--quantize-first-last", action="store_true", default=d(False),
                   help="also quantize the first convolution and the classifier (kept FP32 by default)")
    o = p.add_argument_group("optimisation")
    o.add_argument("--epochs", type=int, default=d(10))
    o.add_argument("--max-steps", type=int, default=d(None), help="stop after this many steps in all (the "
                   "schedule is fitted to min(epochs x batches, max-steps))")
    o.add_argument("--batch-size", type=int, default=d(128))
    o.add_argument("--lr", type=float, default=d(0.1))
    o.add_argument("--momentum", type=float, default=d(0.9))
    o.add_argument("--weight-decay", type=float, default=d(5e-4))
    o.add_argument("--seed", type=int, default=d(0))
    r = p.add_argument_group("run")
    r.add_argument("--out", default=d(None), help="output directory (default runs/<model>-<dataset>-<scheme>-s<seed>)")
    r.add_argument("--resume", nargs="?", const="", default=d(None), metavar="CHECKPOINT",
                   help="continue from CHECKPOINT (default: <out>/checkpoint.pt)")
    r.add_argument("--stop-after-epochs", type=int, default=d(None),
                   help="end this invocation after so many epochs (checkpointed; continue with --resume)")
    r.add_argument("--device", default=d("cpu"), help="cpu, cuda, cuda:N")
    r.add_argument("--threads", type=int, default=d(None), help="torch CPU threads (default: torch's choice)")
    r.add_argument("--eval-batch-size", type=int, default=d(500))
    r.add_argument("--bn-calibration", type=int, default=d(20), metavar="BATCHES",
                   help="before each evaluation, re-estimate batch-norm statistics for the evaluated network on "
                        "this many training batches (unaugmented, in order); 0: use those gathered in training")
    r.add_argument("--progress", choices=("auto", "on", "off"), default=d("auto"),
                   help="progress bar on stderr; auto: when stderr is a terminal")
    r.add_argument("--no-plot", dest="plot", action="store_false", default=d(True), help="skip curves.png")
    r.add_argument("--quiet", action="store_true", default=d(False), help="no per-epoch lines on stdout")
    c = p.add_argument_group("data-parallel (under torchrun)")
    c.add_argument("--comm-bits", type=int, default=d(None),
                   help="exchange gradients as stochastic codes of these bits (1 to 8); default: fp32 all-reduce")
    c.add_argument("--comm-levels", choices=zdist.LEVELS, default=d("uniform"), help="levels of the gradient codes")
    c.add_argument("--comm-granularity", type=_comm_granularity, default=d("tensor"), metavar="{tensor,bucket,N}",
                   help="one gradient scale per parameter tensor, per DDP bucket, or per block of N elements")
    c.add_argument("--comm-error-feedback", action="store_true", default=d(False),
                   help="carry each rank's rounding residual to its next step (biased; see torch_zipml.distributed)")
    return p


def _comm_granularity(text: str):
    if text in zdist.GRANULARITIES:
        return text
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 'tensor', 'bucket' or a positive block size, got {text!r}")
    return value


def _check_args(a: argparse.Namespace) -> None:
    def positive(name, value, allow_none=False):
        if value is None and allow_none:
            return
        if value is None or value < 1:
            raise SystemExit(f"error: --{name.replace('_', '-')} must be a positive integer, got {value}")

    for name in ("epochs", "batch_size", "eval_batch_size"):
        positive(name, getattr(a, name))
    for name in ("train_subset", "test_subset", "max_steps", "stop_after_epochs", "threads"):
        positive(name, getattr(a, name), allow_none=True)
    if a.bn_calibration < 0:
        raise SystemExit(f"error: --bn-calibration must be >= 0, got {a.bn_calibration}")
    for name in ("weight_bits", "grad_bits", "act_bits", "comm_bits"):
        v = getattr(a, name)
        if v is not None and not 1 <= v <= 8:
            raise SystemExit(f"error: --{name.replace('_', '-')} must be from 1 to 8, got {v}")
    if a.lr <= 0:
        raise SystemExit(f"error: --lr must be positive, got {a.lr}")


def default_out(a: argparse.Namespace) -> str:
    tag = a.scheme if a.scheme != "zipml" else f"zipml{a.weight_bits}{a.levels[0]}"
    return os.path.join("runs", f"{a.model}-{a.dataset}-{tag}-s{a.seed}")


def quant_config(a: argparse.Namespace) -> QuantConfig:
    return QuantConfig(scheme=a.scheme, weight_bits=a.weight_bits, weight_levels=a.levels, rounding=a.rounding,
                       granularity=a.granularity, grad_bits=a.grad_bits, act_bits=a.act_bits,
                       eval_rounding=a.eval_rounding, seed=a.seed, skip_first_last=not a.quantize_first_last)


# ---- progress bar -------------------------------------------------------------------------------

class Progress:
    """A one-line progress bar on stderr (no dependency): redrawn at most 10 times a second."""

    def __init__(self, total: int, desc: str, enabled: bool) -> None:
        self.total, self.desc, self.enabled = total, desc, enabled
        self.start = self.last = time.perf_counter()
        self.count = 0

    def update(self, count: int, info: Callable[[], Dict[str, float]] = dict) -> None:
        """Counts `count` items done; info() gives the figures to show (called only on a redraw)."""
        self.count = count
        now = time.perf_counter()
        if self.enabled and (now - self.last >= 0.1 or count == self.total):
            self.last = now
            width = 24
            done = int(width * count / max(self.total, 1))
            rate = count / max(now - self.start, 1e-9)
            eta = (self.total - count) / rate if rate > 0 else 0.0
            extra = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in info().items())
            sys.stderr.write(f"\r{self.desc} [{'#' * done}{'.' * (width - done)}] {count}/{self.total} "
                             f"{rate:.2f} it/s eta {eta:.0f}s {extra}\033[K")
            sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            sys.stderr.write("\n")
            sys.stderr.flush()


# ---- training -----------------------------------------------------------------------------------

class CosineSchedule:
    """Learning-rate factor 0.5 * (1 + cos(pi * step / total_steps)) (a picklable LambdaLR lambda)."""

    def __init__(self, total_steps: int) -> None:
        self.total_steps = total_steps

    def __call__(self, step: int) -> float:
        return 0.5 * (1.0 + math.cos(math.pi * min(step, self.total_steps) / self.total_steps))


@torch.no_grad()
def evaluate(model: nn.Module, loader: zdata.BatchLoader) -> Dict[str, float]:
    """Mean cross-entropy and accuracy (%) over the loader, in eval mode."""
    was_training = model.training
    model.eval()
    loss = correct = count = 0.0
    for x, y in loader.epoch(0):
        logits = model(x)
        loss += float(F.cross_entropy(logits, y, reduction="sum"))
        correct += float((logits.argmax(1) == y).sum())
        count += y.shape[0]
    model.train(was_training)
    return {"loss": loss / count, "acc": 100.0 * correct / count}


def _environment(device: torch.device) -> Dict:
    from .ops import cpu_isa
    env = {"torch": torch.__version__, "python": platform.python_version(), "machine": platform.node(),
           "platform": platform.platform(), "threads": torch.get_num_threads(), "device": str(device),
           "cpu_isa": cpu_isa()}
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    return env


def _plot(history: List[Dict], path: str, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    for key, label in (("train", "train"), ("test", "test")):
        ax_loss.plot(epochs, [h[f"{key}_loss"] for h in history], marker="o", label=label)
        ax_acc.plot(epochs, [h[f"{key}_acc"] for h in history], marker="o", label=label)
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", title="loss")
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    write_atomic(path, lambda f: fig.savefig(f, format="png", dpi=100))
    plt.close(fig)


def _settings(a: argparse.Namespace, world_size: Optional[int]) -> Dict:
    """The run's settings; those of data-parallel training (world_size, comm_*) only when distributed
    (world_size given), so a single-process run's settings stay those of the C++ trainer."""
    settings = {k: v for k, v in vars(a).items() if k not in _RUN_ONLY and k not in _DISTRIBUTED_DEFAULTS}
    if world_size is not None:
        settings.update({k: getattr(a, k) for k in _DISTRIBUTED_DEFAULTS if k != "world_size"}, world_size=world_size)
    return dict(sorted(settings.items()))


def _load_resume(a: argparse.Namespace) -> Optional[Dict]:
    """The checkpoint a --resume names (None without --resume), with its path under "_path"."""
    if a.resume is None:
        return None
    path = a.resume or os.path.join(a.out or default_out(a), CHECKPOINT)
    if os.path.isdir(path):
        path = os.path.join(path, CHECKPOINT)
    if not os.path.isfile(path):
        raise SystemExit(f"error: --resume: no checkpoint at {path}")
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    if ckpt.get("format") != CHECKPOINT_FORMAT:
        raise SystemExit(f"error: --resume: {path} is not a torch_zipml.train checkpoint")
    ckpt["_path"] = path
    return ckpt


def _apply_resume(a: argparse.Namespace, explicit: Dict, ckpt: Optional[Dict]) -> None:
    """Takes a resumed run's settings from its checkpoint (in place); a flag given with another value
    than the run's is an error."""
    if ckpt is None:
        return
    saved = {**_DISTRIBUTED_DEFAULTS, **ckpt["settings"]}  # a single-process run: no comm_* settings
    conflicts = [f"--{k.replace('_', '-')} {explicit[k]} (the run used {saved[k]})"
                 for k in sorted(explicit) if k in saved and k not in _OVERRIDABLE and explicit[k] != saved[k]]
    if conflicts:
        raise SystemExit("error: --resume continues a run with its own settings; these flags differ: "
                         + "; ".join(conflicts))
    for k, v in saved.items():
        if not (k in _OVERRIDABLE and k in explicit) and k != "world_size":
            setattr(a, k, v)
    if a.out is None:
        a.out = os.path.dirname(os.path.abspath(ckpt["_path"]))


def _check_same_settings(a: argparse.Namespace, procs: "Processes") -> None:
    """Every rank must run the same settings (--data-dir may differ: each machine has its own copy)."""
    mine = {k: v for k, v in _settings(a, procs.world_size).items() if k not in _OVERRIDABLE}
    first = procs.gather(mine)[0]
    differ = [f"--{k.replace('_', '-')} {mine[k]} (rank 0 has {first[k]})" for k in sorted(mine) if mine[k] != first[k]]
    if differ:
        raise SystemExit(f"error: every process must be given the same flags; rank {procs.rank} differs: "
                         + "; ".join(differ))


class Processes:
    """The processes of a torchrun launch (this one's rank, the world size, the process group), or
    the one process of a plain launch (rank 0 of 1, no group)."""

    def __init__(self, device: torch.device) -> None:
        self.distributed = launched_by_torchrun()
        self.rank, self.world_size = 0, 1
        if not self.distributed:
            return
        import torch.distributed as dist
        if device.type == "cuda":
            torch.cuda.set_device(device)
        self.owned = not dist.is_initialized()  # a program may have set the group up itself
        if self.owned:
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()

    def from_rank0(self, fn: Callable):
        """fn() run on rank 0 only; its result, or the SystemExit it raised, on every rank."""
        if not self.distributed:
            return fn()
        import torch.distributed as dist
        message = result = failure = None
        if self.rank == 0:
            try:
                result = fn()
            except SystemExit as e:
                message = str(e)
            except Exception as e:  # a bug: tell the others, then raise it here with its traceback
                message, failure = f"error: rank 0 failed: {type(e).__name__}: {e}", e
        box = [(message, result)]
        dist.broadcast_object_list(box, src=0)
        if failure is not None:
            raise failure
        message, result = box[0]
        if message is not None:
            raise SystemExit(message)
        return result

    def agree(self, fn: Callable):
        """fn() run on every rank; if it raises SystemExit on any rank, every rank raises one that
        names the ranks and their messages (instead of the others waiting in a collective)."""
        if not self.distributed:
            return fn()
        import torch.distributed as dist
        message = result = None
        try:
            result = fn()
        except SystemExit as e:
            message = str(e)
        messages: List = [None] * self.world_size
        dist.all_gather_object(messages, message)
        failed = [(r, m.removeprefix("error: ")) for r, m in enumerate(messages) if m is not None]
        if failed:
            raise SystemExit("error: " + "; ".join(f"rank {r}: {m}" for r, m in failed))
        return result

    def sum(self, values: Sequence[float], device: torch.device) -> List[float]:
        """Elementwise sums over the ranks (float64)."""
        if not self.distributed:
            return list(values)
        import torch.distributed as dist
        t = torch.tensor(values, dtype=torch.float64, device=device)
        dist.all_reduce(t)
        return t.tolist()

    def gather(self, obj) -> List:
        if not self.distributed:
            return [obj]
        import torch.distributed as dist
        out: List = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def close(self) -> None:
        if self.distributed and self.owned:
            import torch.distributed as dist
            dist.destroy_process_group()


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def _device(a: argparse.Namespace) -> torch.device:
    device = torch.device(a.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda, but torch sees no CUDA device")
    if device.type == "cuda" and device.index is None and launched_by_torchrun():
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def _check_distributed(a: argparse.Namespace, procs: Processes, ckpt: Optional[Dict]) -> None:
    if ckpt is not None:
        saved = ckpt["settings"].get("world_size", 1)
        if saved != procs.world_size:
            raise SystemExit(f"error: --resume: the run used {saved} process(es), this launch has "
                             f"{procs.world_size}; resume it with as many (torchrun --nproc-per-node ...)")
    if not procs.distributed:
        given = [f"--{k.replace('_', '-')}" for k, v in _DISTRIBUTED_DEFAULTS.items()
                 if k != "world_size" and getattr(a, k) != v]
        if given:
            raise SystemExit(f"error: {', '.join(given)} set how data-parallel processes exchange gradients; launch "
                             f"with torchrun (e.g. torchrun --nproc-per-node 2 -m torch_zipml.train ...)")
    elif a.batch_size % procs.world_size:
        raise SystemExit(f"error: --batch-size {a.batch_size} (the global batch) must be a multiple of the "
                         f"{procs.world_size} processes")


def train(a: argparse.Namespace, explicit: Optional[Dict] = None,
          on_epoch: Optional[Callable[[Dict], None]] = None) -> Dict:
    """Runs the training the namespace describes (see build_parser); returns metrics.json's content.
    `explicit`: the flags given on the command line (checked against a resumed run's settings).
    Under torchrun, trains data-parallel (see the module docstring); every rank returns the result."""
    device = _device(a)
    procs = Processes(device)
    try:
        return _train(a, explicit if explicit is not None else {}, on_epoch, device, procs)
    finally:
        procs.close()


def _train(a: argparse.Namespace, explicit: Dict, on_epoch: Optional[Callable[[Dict], None]],
           device: torch.device, procs: Processes) -> Dict:
    ckpt = procs.from_rank0(lambda: _load_resume(a))  # rank 0 reads the checkpoint, the others get it

    def check():  # local checks only: no collective in here
        _apply_resume(a, explicit, ckpt)
        _check_args(a)
        _check_distributed(a, procs, ckpt)

    procs.agree(check)
    if procs.distributed:
        procs.agree(lambda: _check_same_settings(a, procs))
    if a.out is None:
        a.out = default_out(a)
    if a.threads:
        torch.set_num_threads(a.threads)
    lead = procs.rank == 0
    quiet = a.quiet or not lead

    def load_data():
        try:
            train_set = zdata.load_dataset(a.dataset, a.data_dir, "train")
            test_set = zdata.load_dataset(a.dataset, a.data_dir, "test")
        except zdata.DataNotFoundError as e:
            raise SystemExit(f"error: {e}") from None
        mean, std = zdata.channel_stats(train_set.images)  # of the whole split, subset or not
        train_set = train_set.subset(a.train_subset, seed=a.seed)
        test_set = test_set.subset(a.test_subset, seed=a.seed)
        fingerprint = {split: {"samples": len(ds), "pixel_sum": int(ds.images.sum(dtype=torch.int64)),
                               "label_sum": int(ds.labels.sum())}
                       for split, ds in (("train", train_set), ("test", test_set))}
        if ckpt is not None and ckpt["data"] != fingerprint:
            raise SystemExit(f"error: --resume: the data differ from the run's ({ckpt['data']} then, {fingerprint} "
                             f"now); pass --data-dir pointing at the run's data")
        return train_set, test_set, mean, std, fingerprint

    train_set, test_set, mean, std, fingerprint = procs.agree(load_data)  # every rank has the same data
    hflip = None if a.hflip == "auto" else a.hflip == "on"
    train_loader = zdata.BatchLoader(train_set, a.batch_size, train=True, seed=a.seed, mean=mean, std=std,
                                     hflip=hflip, device=device, rank=procs.rank, world_size=procs.world_size)
    test_loader = zdata.BatchLoader(test_set, a.eval_batch_size, train=False, mean=mean, std=std, device=device)
    calibration_loader = zdata.BatchLoader(train_set, a.batch_size, train=False, mean=mean, std=std, device=device)

    def test(model: nn.Module) -> Dict[str, float]:
        if a.bn_calibration:
            inputs = itertools.islice((x for x, _ in calibration_loader.epoch(0)), a.bn_calibration)
            model = calibrate_batchnorm(model, inputs)
        return evaluate(model, test_loader)

    torch.manual_seed(a.seed)
    model = MODELS[a.model](num_classes=train_set.num_classes, in_channels=train_set.channels)
    convert(model, quant_config(a))
    model.to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=a.lr, momentum=a.momentum, weight_decay=a.weight_decay)
    steps_per_epoch = len(train_loader)
    total_steps = a.epochs * steps_per_epoch if a.max_steps is None else min(a.max_steps, a.epochs * steps_per_epoch)
    epochs = -(-total_steps // steps_per_epoch)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, CosineSchedule(total_steps))

    history: List[Dict] = []
    epoch = step = 0
    elapsed = 0.0
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        set_rng_state(model, ckpt["zipml_rng"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        torch.set_rng_state(ckpt["torch_rng"])
        epoch, step, history, elapsed = ckpt["epoch"], ckpt["step"], ckpt["history"], ckpt["elapsed_seconds"]

    forward, comm = model, None
    if procs.distributed:
        from torch.nn.parallel import DistributedDataParallel
        forward = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
        if a.comm_bits is not None:
            comm = zdist.register(forward, bits=a.comm_bits, levels=a.comm_levels, granularity=a.comm_granularity,
                                  error_feedback=a.comm_error_feedback, seed=a.seed % 2**64)
            if ckpt is not None:
                comm.load_state_dict(ckpt["comm"][procs.rank])

    settings = _settings(a, procs.world_size if procs.distributed else None)
    title = f"{a.model} on {a.dataset}, {a.scheme}" + (
        f" {a.weight_bits}-bit {a.levels} {a.rounding}" if a.scheme == "zipml" else "")
    if procs.distributed:
        title += f", {procs.world_size} processes" + (f", {a.comm_bits}-bit gradients" if comm else "")
    show = lead and (a.progress == "on" or (a.progress == "auto" and sys.stderr.isatty()))
    if not quiet:
        print(f"{title}: {len(train_set)} training / {len(test_set)} test samples, {epochs} epochs of "
              f"{steps_per_epoch} steps ({total_steps} in all), out={a.out}" +
              (f", resuming after epoch {epoch}" if ckpt is not None else ""), flush=True)

    def record() -> Dict:
        result = {"settings": settings, "layers": layer_schemes(model), "environment": _environment(device),
                  "epochs": history}
        if procs.distributed:
            result["environment"]["processes"] = procs.world_size
        if comm is not None:
            result["communication"] = {"bytes_sent_per_rank": comm.bytes_sent, "fp32_bytes_per_rank": comm.bytes_fp32,
                                       "compression": comm.compression, "steps": comm.step}
        if step >= total_steps and history:
            result["final"] = final
        return result

    final: Dict = {}
    run_epochs = 0
    model.train()
    while step < total_steps:
        if a.stop_after_epochs is not None and run_epochs >= a.stop_after_epochs:
            break
        start = time.perf_counter()
        bar = Progress(min(steps_per_epoch, total_steps - step), f"epoch {epoch + 1}/{epochs}", show)
        # Running sums stay on the device (no synchronisation per step); read when displayed.
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        correct = torch.zeros((), dtype=torch.int64, device=device)
        seen = 0
        for i, (x, y) in enumerate(train_loader.epoch(epoch)):
            if step >= total_steps:
                break
            logits = forward(x)
            loss = F.cross_entropy(logits, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            step += 1
            loss_sum += loss.detach().double() * y.shape[0]
            correct += (logits.argmax(1) == y).sum()
            seen += y.shape[0]
            bar.update(i + 1, lambda: {"loss": float(loss_sum) / seen, "acc": 100.0 * int(correct) / seen})
        bar.close()
        loss_sum, correct, seen = procs.sum([float(loss_sum), float(correct), float(seen)], device)
        epoch += 1
        run_epochs += 1
        comm_states = procs.gather(comm.state_dict()) if comm is not None else None

        def evaluate_and_save():  # rank 0: the evaluation, the files
            test_result = test(model)
            seconds = time.perf_counter() - start
            row = {"epoch": epoch, "step": step, "lr": optimizer.param_groups[0]["lr"],
                   "train_loss": loss_sum / seen, "train_acc": 100.0 * correct / seen,
                   "test_loss": test_result["loss"], "test_acc": test_result["acc"], "epoch_seconds": seconds,
                   "elapsed_seconds": elapsed + seconds}
            done = {}
            if step >= total_steps:
                done = {"test_acc": test_result["acc"], "test_loss": test_result["loss"], "steps": step,
                        "epochs": epoch, "seconds": elapsed + seconds}
                done.update(_nearest_eval(model, test))
            if not quiet:
                print(f"epoch {epoch}/{epochs} step {step}: train loss {row['train_loss']:.4f} acc "
                      f"{row['train_acc']:.2f}% | test loss {test_result['loss']:.4f} acc {test_result['acc']:.2f}% | "
                      f"{seconds:.1f}s", flush=True)
            checkpoint = {"format": CHECKPOINT_FORMAT, "settings": settings, "data": fingerprint, "epoch": epoch,
                          "step": step, "model": model.state_dict(), "zipml_rng": rng_state(model),
                          "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                          "torch_rng": torch.get_rng_state(), "history": history + [row],
                          "elapsed_seconds": elapsed + seconds}
            if comm_states is not None:
                checkpoint["comm"] = comm_states  # per rank: the Philox step and error-feedback residuals
            save_atomic(checkpoint, os.path.join(a.out, CHECKPOINT))
            write_csv(history + [row], os.path.join(a.out, "metrics.csv"))
            return row, done

        row, done = procs.from_rank0(evaluate_and_save)
        history.append(row)
        elapsed = row["elapsed_seconds"]
        if done:
            final = done
        if lead:
            write_json(record(), os.path.join(a.out, "metrics.json"))
            if a.plot:
                _plot(history, os.path.join(a.out, "curves.png"), title)
        if on_epoch is not None:
            on_epoch(row)
    if step >= total_steps and not final and history:  # resumed a finished run
        final = procs.from_rank0(lambda: json.load(open(os.path.join(a.out, "metrics.json"))).get("final", {}))
    result = record()
    if final and not quiet:
        print(f"final test accuracy: {final['test_acc']:.2f}% ({a.out})", flush=True)
    result["model"] = model
    return result


def _nearest_eval(model: nn.Module, test: Callable[[nn.Module], Dict[str, float]]) -> Dict[str, float]:
    """For models with stochastic ZipML layers evaluated on a fixed draw: the accuracy with nearest
    rounding in eval too (what a deterministic deployment would see)."""
    layers = [m for m in model.modules() if isinstance(m, _ZipQuantized)
              and m.rounding == "stochastic" and m.eval_rounding == "sample"]
    if not layers:
        return {}
    for m in layers:
        m.eval_rounding = "nearest"
    try:
        r = test(model)
    finally:
        for m in layers:
            m.eval_rounding = "sample"
    return {"test_acc_nearest_eval": r["acc"], "test_loss_nearest_eval": r["loss"]}


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    explicit = vars(build_parser(suppress_defaults=True).parse_args(argv))
    result = train(args, explicit)
    return 0 if result.get("final") or args.stop_after_epochs else 1


if __name__ == "__main__":
    sys.exit(main())
