"""C++ and Python compute the same bits.

For the same weights, input, Philox seed and step, the LibTorch layers of <zipml/nn.h> (ZipConv2d,
ZipLinear, the XNOR-Net baselines) and the ResNet-20 of <zipml/models.h> give the outputs, gradients
and states of torch_zipml.nn, .xnor and .models, bit for bit; a ResNet built under the same
torch.manual_seed has the same initial weights; and zipml_train runs the very same training as
python -m torch_zipml.train (metrics, checkpointed weights, Philox state).

The C++ side runs as a subprocess (the programs zipml_nn_parity and zipml_train of the CMake build):
libzipml.so and torch_zipml._C register the same operators and cannot share one process. Cases go
there with torch.save and come back with torch::pickle_save. One thread on both sides (the CPU
convolutions' bits may depend on the thread count).
"""

import gzip
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import torch_zipml
from torch_zipml.convert import QuantConfig, convert, layer_schemes
from torch_zipml.models import resnet20
from torch_zipml.nn import ZipConv2d, ZipLinear, rng_state, set_rng_state
from torch_zipml.xnor import BWNConv2d, BWNLinear, XNORConv2d, XNORLinear

ROOT = Path(__file__).resolve().parents[2]
BUILD = Path(os.environ.get("ZIPML_CMAKE_BUILD_DIR", ROOT / "build-cmake"))
PARITY = BUILD / "tests" / "cpp" / "zipml_nn_parity"
TRAIN = BUILD / "zipml_train"

pytestmark = pytest.mark.skipif(
    not (PARITY.is_file() and TRAIN.is_file()),
    reason=f"the CMake tree is not built ({PARITY} or {TRAIN} missing): build it with cmake -S . -B build-cmake "
           f"-G Ninja -DCMAKE_PREFIX_PATH=\"$(python3 -c 'import torch; print(torch.utils.cmake_prefix_path)')\" "
           f"&& cmake --build build-cmake (or set ZIPML_CMAKE_BUILD_DIR)")

ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def int64(seed: int) -> int:
    """The int64 with the bits of a uint64 seed (what the operators and the C++ side take)."""
    return seed - 2**64 if seed >= 2**63 else seed


def run_cpp(cases, tmp_path):
    src, dst = tmp_path / "cases.pt", tmp_path / "results.pt"
    torch.save({"threads": 1, "cases": cases}, src)
    r = subprocess.run([str(PARITY), str(src), str(dst)], capture_output=True, text=True, env=ONE_THREAD, timeout=600)
    assert r.returncode == 0, r.stderr
    # Our own file: torch::pickle_save tags typed containers with torch.jit._pickle globals.
    return torch.load(dst, weights_only=False)


def assert_same(cpp, py, what):
    assert (cpp.dtype, cpp.shape) == (py.dtype, py.shape), \
        f"{what}: {cpp.dtype}{tuple(cpp.shape)} vs {py.dtype}{tuple(py.shape)}"
    assert torch.equal(cpp, py), f"{what}: max |C++ - Python| = {(cpp.double() - py.double()).abs().max().item():.3g}"


def assert_same_dicts(cpp, py, what):
    assert list(cpp) == list(py), f"{what}: keys differ"
    for k in py:
        assert_same(cpp[k], py[k], f"{what}[{k}]")


def python_run(module, case):
    """Forward (and backward) as zipml_nn_parity runs it; returns what it returns."""
    module.train(case["train"])
    x = case["input"].clone().requires_grad_(True)
    y = module(x)
    y.backward(case["grad_output"])
    return {"output": y.detach(), "grad_input": x.grad,
            "grads": {n: p.grad for n, p in module.named_parameters() if p.grad is not None}}


# ---- layers ----------------------------------------------------------------------------------------

CONV = dict(in_channels=4, out_channels=8, kernel_size=3, stride=1, padding=1, dilation=1, groups=1, bias=True,
            padding_mode="zeros")

LAYER_CASES = [
    # (kind, scheme, layer arguments, quantization, step, train)
    ("conv2d", "zipml", {}, dict(weight_bits=2, seed=11), 0, True),
    ("conv2d", "zipml", {}, dict(weight_bits=1, granularity="channel", seed=12), 7, True),
    ("conv2d", "zipml", {}, dict(weight_bits=4, weight_levels="optimal", granularity="channel", grad_bits=8,
                                 act_bits=4, seed=13), 3, True),
    ("conv2d", "zipml", dict(stride=2, padding=2, dilation=2), dict(weight_bits=3, rounding="nearest", seed=14), 1,
     True),
    ("conv2d", "zipml", dict(groups=2, bias=False),
     dict(weight_bits=2, weight_levels=torch.tensor([-1.0, -0.2, 0.3, 1.0]), seed=15), 2, True),
    ("conv2d", "zipml", {}, dict(weight_bits=2, grad_bits=4, seed=16), 5, False),                  # eval: fixed draw
    ("conv2d", "zipml", {}, dict(weight_bits=2, eval_rounding="nearest", seed=17), 5, False),      # eval: nearest
    ("conv2d", "zipml", dict(padding="same", padding_mode="reflect"), dict(weight_bits=3, seed=2**64 - 5), 2, True),
    ("linear", "zipml", {}, dict(weight_bits=2, granularity="channel", grad_bits=4, seed=21), 4, True),
    ("linear", "zipml", {}, dict(weight_bits=4, act_bits=8, seed=22), 0, True),                    # 3-D input
    ("linear", "zipml", dict(bias=False), dict(weight_bits=3, weight_levels="optimal", seed=23), 9, True),
    ("conv2d", "bwn", {}, {}, 0, True),
    ("conv2d", "xnor", dict(stride=2), dict(clip=0.5), 0, True),
    ("linear", "bwn", {}, {}, 0, True),
    ("linear", "xnor", {}, dict(clip=0.5), 0, True),
]


def build_layer(kind, scheme, args, quant):
    if kind == "conv2d":
        kw = {**CONV, **args}
        cls = {"zipml": ZipConv2d, "bwn": BWNConv2d, "xnor": XNORConv2d}[scheme]
        spec = {"conv": kw}
    else:
        kw = {"in_features": 16, "out_features": 6, "bias": True, **args}
        cls = {"zipml": ZipLinear, "bwn": BWNLinear, "xnor": XNORLinear}[scheme]
        spec = {"linear": kw}
    layer = cls(**kw, **quant)
    if scheme == "zipml":
        spec["quant"] = {k: int64(v) if k == "seed" else v for k, v in quant.items()}
    else:
        spec["clip"] = float(quant.get("clip", 1.0))
    return layer, spec


def test_layers_compute_the_same_bits_in_cpp_and_python(tmp_path):
    cases, expected = [], []
    for i, (kind, scheme, args, quant, step, train) in enumerate(LAYER_CASES):
        torch.manual_seed(100 + i)
        layer, spec = build_layer(kind, scheme, args, quant)
        shape = (2, 4, 9, 9) if kind == "conv2d" else ((2, 5, 16) if quant.get("act_bits") == 8 else (7, 16))
        x = torch.randn(shape)
        with torch.no_grad():
            grad_output = torch.randn_like(layer(x))
        case = {"kind": kind, "scheme": scheme, **spec, "state": dict(layer.state_dict()), "step": step,
                "train": train, "input": x, "grad_output": grad_output}
        if scheme == "zipml":
            layer.step = step
        result = python_run(layer, case)
        if scheme == "zipml":
            result["step"] = layer.step
        cases.append(case)
        expected.append(result)
    for (kind, scheme, args, quant, step, train), cpp, py in zip(LAYER_CASES, run_cpp(cases, tmp_path), expected):
        what = f"{kind} {scheme} {args} {quant} step {step} {'train' if train else 'eval'}"
        assert_same(cpp["output"], py["output"], what + ": output")
        assert_same(cpp["grad_input"], py["grad_input"], what + ": grad_input")
        assert_same_dicts(cpp["grads"], py["grads"], what + ": grads")
        if scheme == "zipml":
            assert cpp["step"] == py["step"] == step + train, what


# ---- ResNet-20 -------------------------------------------------------------------------------------

RESNET_CASES = [
    # (config, in_channels, num_classes, train, steps taken before)
    (dict(scheme="zipml", weight_bits=2, weight_levels="optimal", granularity="channel", grad_bits=8, seed=3), 3, 10,
     True, 0),
    (dict(scheme="zipml", weight_bits=2, weight_levels="uniform", granularity="tensor", act_bits=8, seed=2**63 + 9), 1,
     10, False, 6),
    (dict(scheme="bwn"), 3, 100, True, 0),
    (dict(scheme="xnor", skip_first_last=False), 1, 10, True, 0),
]


def test_resnet20_initialisation_forward_and_backward_match(tmp_path):
    cases, expected = [], []
    for i, (config, in_channels, num_classes, train, steps) in enumerate(RESNET_CASES):
        torch.manual_seed(i)
        model = resnet20(num_classes=num_classes, in_channels=in_channels)
        convert(model, QuantConfig(**config))
        init_state = {k: v.clone() for k, v in model.state_dict().items()}
        # A model some steps into training, with running statistics of its own.
        set_rng_state(model, {k: {"seed": v["seed"], "step": steps} for k, v in rng_state(model).items()})
        x = torch.randn(4, in_channels, 32, 32)
        with torch.no_grad():
            model.train()
            model(torch.randn(4, in_channels, 32, 32))
        state, rng = {k: v.clone() for k, v in model.state_dict().items()}, rng_state(model)
        case = {"kind": "resnet", "depth": 20, "num_classes": num_classes, "in_channels": in_channels,
                "config": {k: int64(v) if k == "seed" else v for k, v in config.items()}, "init_seed": i,
                "state": state, "rng": {k: {"seed": int64(v["seed"]), "step": v["step"]} for k, v in rng.items()},
                "train": train, "input": x, "grad_output": torch.randn(4, num_classes)}
        result = python_run(model, case)
        result.update(init_state=init_state, state=model.state_dict(), layers=layer_schemes(model),
                      rng={k: {"seed": int64(v["seed"]), "step": v["step"]} for k, v in rng_state(model).items()})
        cases.append(case)
        expected.append(result)
    for (config, *_), cpp, py in zip(RESNET_CASES, run_cpp(cases, tmp_path), expected):
        what = f"resnet20 {config}"
        assert cpp["layers"] == py["layers"], what
        assert_same_dicts(cpp["init_state"], py["init_state"], what + ": initial weights under the same seed")
        assert_same(cpp["output"], py["output"], what + ": output")
        assert_same(cpp["grad_input"], py["grad_input"], what + ": grad_input")
        assert_same_dicts(cpp["grads"], py["grads"], what + ": grads")
        assert_same_dicts(cpp["state"], py["state"], what + ": state after the forward")
        assert cpp["rng"] == py["rng"], what


# ---- the trainers ----------------------------------------------------------------------------------

def write_fashion(directory: Path, n: int, prefix: str, seed: int) -> None:
    """Fashion-MNIST's IDX files (gzip), n random 28x28 images and labels 0..9."""
    g = torch.Generator().manual_seed(seed)
    images, labels = torch.randint(0, 256, (n, 28, 28), generator=g), torch.arange(n) % 10
    for kind, t in (("images-idx3", images), ("labels-idx1", labels)):
        header = struct.pack(">HBB", 0, 0x08, t.dim()) + struct.pack(f">{t.dim()}I", *t.shape)
        payload = header + t.to(torch.uint8).numpy().tobytes()
        (directory / f"{prefix}-{kind}-ubyte.gz").write_bytes(gzip.compress(payload))


def write_cifar10(directory: Path, n: int, name: str, seed: int) -> None:
    """A CIFAR-10 binary file: n records of 1 label byte and 3072 pixel bytes."""
    g = torch.Generator().manual_seed(seed)
    records = torch.cat([torch.randint(0, 10, (n, 1), generator=g), torch.randint(0, 256, (n, 3072), generator=g)], 1)
    (directory / name).write_bytes(records.to(torch.uint8).numpy().tobytes())


TIMINGS = {"epoch_seconds", "elapsed_seconds", "seconds"}


def untimed(row):
    return {k: v for k, v in row.items() if k not in TIMINGS}


@pytest.mark.parametrize("dataset, flags", [
    ("fashion-mnist", ["--scheme", "zipml", "--weight-bits", "2", "--levels", "optimal", "--grad-bits", "8"]),
    ("cifar10", ["--scheme", "xnor", "--eval-rounding", "nearest"]),
])
def test_zipml_train_runs_the_same_training_as_the_python_trainer(tmp_path, dataset, flags):
    data = tmp_path / "data"
    data.mkdir()
    if dataset == "fashion-mnist":
        write_fashion(data, 48, "train", seed=1)
        write_fashion(data, 20, "t10k", seed=2)
    else:
        for name, seed in [(f"data_batch_{i}.bin", i) for i in range(1, 6)] + [("test_batch.bin", 9)]:
            write_cifar10(data, 8, name, seed)
    common = ["--dataset", dataset, "--data-dir", str(data), "--batch-size", "16", "--epochs", "2", "--max-steps", "5",
              "--eval-batch-size", "8", "--bn-calibration", "2", "--threads", "1", "--seed", "4", "--quiet",
              "--progress", "off", *flags]
    cpp_out, py_out = tmp_path / "cpp", tmp_path / "py"
    r = subprocess.run([str(TRAIN), *common, "--out", str(cpp_out)], capture_output=True, text=True, env=ONE_THREAD,
                       timeout=600)
    assert r.returncode == 0, r.stderr
    package_root = str(Path(torch_zipml.__file__).resolve().parents[1])  # the torch_zipml under test
    env = {**ONE_THREAD, "PYTHONPATH": os.pathsep.join([package_root, os.environ.get("PYTHONPATH", "")])}
    r = subprocess.run([sys.executable, "-m", "torch_zipml.train", *common, "--out", str(py_out), "--no-plot"],
                       capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr

    cpp, py = (json.loads((out / "metrics.json").read_text()) for out in (cpp_out, py_out))
    assert cpp["settings"] == py["settings"]
    assert cpp["layers"] == py["layers"]
    assert len(cpp["epochs"]) == len(py["epochs"]) == 2
    for row_cpp, row_py in zip(cpp["epochs"], py["epochs"]):
        assert untimed(row_cpp) == untimed(row_py)
    assert untimed(cpp["final"]) == untimed(py["final"])

    a = torch.load(cpp_out / "checkpoint.pt", weights_only=False)
    b = torch.load(py_out / "checkpoint.pt", weights_only=False)
    assert a["step"] == b["step"] == 5 and a["data"] == b["data"]
    assert_same_dicts(a["model"], b["model"], "trained weights")
    assert a["zipml_rng"] == {k: {"seed": int64(v["seed"]), "step": v["step"]} for k, v in b["zipml_rng"].items()}
    for i, buf in enumerate(b["optimizer"]["state"][j]["momentum_buffer"] for j in sorted(b["optimizer"]["state"])):
        assert_same(a["optimizer"]["momentum_buffer"][i], buf, f"momentum buffer {i}")
    # A C++ checkpoint loads into the Python model as it is.
    model = resnet20(num_classes=10, in_channels=1 if dataset == "fashion-mnist" else 3)
    model.load_state_dict(a["model"], strict=True)
