"""python -m torch_zipml.train data-parallel: under torchrun with --comm-bits (the CLI as users run
it), exact --resume of a distributed run with error feedback, errors on every rank, the loader's
shards. Processes bind to 127.0.0.1 only and every run is bounded in time."""

import json
import os
import signal
import subprocess
import sys

import pytest
import torch

from dist_harness import free_port, loopback_env, run_ranks
from test_data import write_fashion
from torch_zipml import data as zdata
from torch_zipml import train as ztrain

TIMEOUT_S = 240


@pytest.fixture(scope="module")
def fashion_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("fashion")
    write_fashion(directory, n=40, split="train")
    write_fashion(directory, n=12, split="test")
    return str(directory)


def base_args(data_dir, out, *extra):
    return ["--data-dir", data_dir, "--out", out, "--batch-size", 8, "--epochs", 3, "--progress", "off",
            "--seed", 3, "--eval-batch-size", 6, "--bn-calibration", 2, "--threads", 1, "--no-plot", *extra]


def torchrun(argv, nproc=2):
    """torchrun --nproc-per-node nproc -m torch_zipml.train argv; killed (the whole process group) on a hang."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc), "--master-addr",
           "127.0.0.1", "--master-port", str(free_port()), "-m", "torch_zipml.train", *map(str, argv)]
    env = {**os.environ, **loopback_env(), "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail(f"torchrun hung for {TIMEOUT_S} s: {' '.join(cmd)}")
    return proc.returncode, out, err


def test_torchrun_trains_with_4_bit_gradients_and_rank_0_writes(fashion_dir, tmp_path):
    out = str(tmp_path / "run")
    code, stdout, stderr = torchrun(base_args(fashion_dir, out, "--scheme", "fp32", "--comm-bits", 4))
    assert code == 0, stderr[-3000:]
    assert sorted(os.listdir(out)) == ["checkpoint.pt", "metrics.csv", "metrics.json"]  # no temporaries
    lines = stdout.splitlines()
    assert sum(line.startswith("final test accuracy") for line in lines) == 1, stdout  # rank 0 alone prints
    assert sum(line.startswith("epoch ") for line in lines) == 3, stdout
    assert "2 processes, 4-bit gradients" in lines[0]
    metrics = json.load(open(os.path.join(out, "metrics.json")))
    s = metrics["settings"]
    assert (s["world_size"], s["comm_bits"], s["comm_levels"], s["comm_granularity"]) == (2, 4, "uniform", "tensor")
    comm = metrics["communication"]
    assert comm["steps"] == 15 and comm["compression"] > 0.9 * 8  # 40 samples / global batch 8: 5 steps an epoch
    assert metrics["environment"]["processes"] == 2 and metrics["final"]["steps"] == 15
    # the single-process trainer refuses to resume it (the arithmetic would change)
    with pytest.raises(SystemExit, match=r"the run used 2 process\(es\), this launch has 1"):
        ztrain.main(["--resume", "--out", out])


def _resume_worker(rank, world, data_dir, root):
    os.environ.update({"RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank)})
    comm = ["--comm-bits", 2, "--comm-error-feedback", "--comm-granularity", 100, "--grad-bits", 8]
    run = lambda *argv: ztrain.main([str(v) for v in argv])  # noqa: E731
    codes = [run(*base_args(data_dir, f"{root}/full", *comm)),
             run(*base_args(data_dir, f"{root}/parts", *comm, "--stop-after-epochs", 1)),
             run("--resume", "--out", f"{root}/parts", "--progress", "off", "--threads", 1, "--no-plot")]
    errors = {}
    for name, argv in {"missing data on rank 1": base_args(data_dir if rank == 0 else f"{root}/nowhere",
                                                           f"{root}/bad", *comm),
                       "batch not a multiple": base_args(data_dir, f"{root}/bad", "--batch-size", 7),
                       "lr differs": base_args(data_dir, f"{root}/bad", "--lr", 0.1 if rank == 0 else 0.2)}.items():
        try:
            run(*argv)
            errors[name] = None
        except SystemExit as e:
            errors[name] = str(e)
    return {"codes": codes, "errors": errors}


@pytest.fixture(scope="module")
def two_rank_runs(fashion_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    return root, run_ranks(_resume_worker, 2, fashion_dir, str(root), timeout=TIMEOUT_S)


def test_distributed_resume_continues_exactly_with_error_feedback(two_rank_runs):
    root, ranks = two_rank_runs
    assert all(r["codes"] == [0, 0, 0] for r in ranks)
    a, b = (torch.load(root / d / "checkpoint.pt", weights_only=False) for d in ("full", "parts"))
    assert a["step"] == b["step"] == 15 and a["settings"] == b["settings"]
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert torch.equal(sa["momentum_buffer"], sb["momentum_buffer"])
    assert len(a["comm"]) == 2 and a["comm"][0]["step"] == 15
    for ra, rb in zip(a["comm"], b["comm"]):  # each rank's error-feedback residuals, bit for bit
        assert ra["residuals"].keys() == rb["residuals"].keys() and ra["residuals"]
        assert all(torch.equal(ra["residuals"][k], rb["residuals"][k]) for k in ra["residuals"])
    assert not torch.equal(a["comm"][0]["residuals"][0], a["comm"][1]["residuals"][0])  # per-rank streams
    timing = {"epoch_seconds", "elapsed_seconds"}
    strip = lambda h: [{k: v for k, v in row.items() if k not in timing} for row in h]  # noqa: E731
    assert strip(a["history"]) == strip(b["history"])


def test_a_bad_setting_on_one_rank_stops_every_rank(two_rank_runs):
    _, ranks = two_rank_runs
    for r in ranks:
        assert "rank 1: Fashion-MNIST not found" in r["errors"]["missing data on rank 1"]
        assert "--batch-size 7 (the global batch) must be a multiple of the 2 processes" in \
            r["errors"]["batch not a multiple"]
        assert "rank 1: every process must be given the same flags; rank 1 differs: --lr 0.2 (rank 0 has 0.1)" in \
            r["errors"]["lr differs"]


def test_comm_flags_need_torchrun(fashion_dir, tmp_path):
    run = lambda *argv: ztrain.main([str(v) for v in argv])  # noqa: E731
    with pytest.raises(SystemExit, match="--comm-bits, --comm-levels set how data-parallel processes exchange"):
        run(*base_args(fashion_dir, str(tmp_path / "x"), "--comm-bits", 4, "--comm-levels", "optimal"))
    with pytest.raises(SystemExit, match="--comm-bits must be from 1 to 8, got 9"):
        run(*base_args(fashion_dir, str(tmp_path / "x"), "--comm-bits", 9))
    with pytest.raises(SystemExit):
        ztrain.build_parser().parse_args(["--comm-granularity", "0"])


def test_shards_of_a_batch_are_the_single_process_batch():
    g = torch.Generator().manual_seed(0)
    ds = zdata.ImageDataset("fashion-mnist", "train", torch.randint(0, 256, (23, 1, 32, 32), generator=g,
                                                                    dtype=torch.uint8), torch.arange(23) % 10, 10)
    whole = zdata.BatchLoader(ds, 8, train=True, seed=5)
    shards = [zdata.BatchLoader(ds, 8, train=True, seed=5, rank=r, world_size=4) for r in range(4)]
    batches = list(zip(whole.epoch(2), *(s.epoch(2) for s in shards)))
    assert len(batches) == len(whole) == 3
    for (x, y), *parts in batches:
        assert [p[0].shape[0] for p in parts] == [2, 2, 2, 2]  # the last batch (7) padded to 8
        xs = torch.stack([p[0] for p in parts], 1).flatten(0, 1)  # positions r, r + 4, ...
        ys = torch.stack([p[1] for p in parts], 1).flatten()
        assert torch.equal(xs[:y.shape[0]], x) and torch.equal(ys[:y.shape[0]], y)
    with pytest.raises(ValueError, match="must be a multiple of world_size = 3"):
        zdata.BatchLoader(ds, 8, train=True, rank=0, world_size=3)
    with pytest.raises(ValueError, match="rank must be in"):
        zdata.BatchLoader(ds, 8, train=True, rank=2, world_size=2)
