"""zipml_train data-parallel (csrc/train/distributed.h): two processes on localhost, launched by hand
(RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT) or by torchrun, on a tiny subset of Fashion-MNIST.

The reference is python -m torch_zipml.train on two gloo processes (DistributedDataParallel, and
torch_zipml.distributed's hook with --comm-bits): the C++ run must give the same weights bit for
bit. (A single-process run is no reference: batch norm normalises each rank's shard with the shard's
own statistics, in both trainers, so the gradients differ from those of the whole global batch.)
Every run is bounded in time; a hang fails the test instead of blocking it.
"""

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dist_harness import free_port
from test_data import write_fashion

ROOT = Path(__file__).resolve().parents[2]
BUILD = Path(os.environ.get("ZIPML_CMAKE_BUILD_DIR", ROOT / "build-cmake"))
TRAIN = BUILD / "zipml_train"

pytestmark = pytest.mark.skipif(
    not TRAIN.is_file(),
    reason=f"the CMake tree is not built ({TRAIN} missing): build it with cmake -S . -B build-cmake -G Ninja "
           f"-DCMAKE_PREFIX_PATH=\"$(python3 -c 'import torch; print(torch.utils.cmake_prefix_path)')\" "
           f"&& cmake --build build-cmake --target zipml_train (or set ZIPML_CMAKE_BUILD_DIR)")

TIMEOUT_S = 120
FASHION = Path("/usr/share/datasets/fashion-mnist")
CHECKSUM = re.compile(r"zipml_train: rank (\d+)/2: parameters after step (\d+): checksum (0x[0-9a-f]{16})")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """The real Fashion-MNIST where installed (the runs take a subset), else a small stand-in."""
    if (FASHION / "train-images-idx3-ubyte.gz").is_file():
        return str(FASHION)
    directory = tmp_path_factory.mktemp("fashion")
    write_fashion(directory, n=64, split="train")
    write_fashion(directory, n=32, split="test")
    return str(directory)


def args(data_dir, out, *extra):
    # 29 samples: batches of 16 and 13, the second padded with the epoch's first sample to 2 shards of 7;
    # 3 steps over 2 epochs.
    return ["--data-dir", data_dir, "--out", str(out), "--train-subset", "29", "--test-subset", "32",
            "--batch-size", "16", "--epochs", "2", "--max-steps", "3", "--eval-batch-size", "16",
            "--bn-calibration", "1", "--threads", "1", "--seed", "5", "--progress", "off", "--scheme", "fp32",
            *map(str, extra)]


def environment(**extra):
    package_root = str(ROOT)  # the torch_zipml of this tree, for the Python reference
    return {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo", "MASTER_ADDR": "127.0.0.1",
            "PYTHONPATH": os.pathsep.join([package_root, *sys.path]), **extra}


def communicate(procs, what):
    """(returncode, stdout, stderr) of each process; all killed and the test failed on a hang."""
    results = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=TIMEOUT_S)
            results.append((p.returncode, out, err))
    except subprocess.TimeoutExpired:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
            p.communicate()
        pytest.fail(f"{what} hung for {TIMEOUT_S} s")
    return results


def launch(commands):
    """One process per rank, by hand: RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT (a free port)."""
    port = str(free_port())
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                              env=environment(RANK=str(r), WORLD_SIZE=str(len(commands)), LOCAL_RANK=str(r),
                                              MASTER_PORT=port))
             for r, cmd in enumerate(commands)]
    return communicate(procs, " / ".join(" ".join(c[:3]) for c in commands))


def checksums(results):
    """{rank: checksum} from the ranks' final stderr lines."""
    found = {}
    for _, _, err in results:
        for rank, _, checksum in CHECKSUM.findall(err):
            found[int(rank)] = checksum
    return found


def untimed(row):
    return {k: v for k, v in row.items() if k not in {"epoch_seconds", "elapsed_seconds", "seconds"}}


@pytest.mark.parametrize("comm", [[], ["--comm-bits", "4"]], ids=["fp32", "comm4"])
def test_two_ranks_train_as_the_python_trainer_under_ddp(data_dir, tmp_path, comm):
    cpp_out, py_out = tmp_path / "cpp", tmp_path / "py"
    cpp = launch([[str(TRAIN), *args(data_dir, cpp_out, *comm)]] * 2)
    for r, (code, _, err) in enumerate(cpp):
        assert code == 0, f"rank {r}: {err[-3000:]}"
    sums = checksums(cpp)
    assert sorted(sums) == [0, 1] and sums[0] == sums[1], sums  # the replicas are identical
    assert "final test accuracy" in cpp[0][1] and cpp[1][1] == "", cpp[1][1]  # rank 0 alone prints
    assert sorted(os.listdir(cpp_out)) == ["checkpoint.pt", "metrics.csv", "metrics.json"]

    py = launch([[sys.executable, "-m", "torch_zipml.train", *args(data_dir, py_out, *comm), "--no-plot"]] * 2)
    for r, (code, _, err) in enumerate(py):
        assert code == 0, f"Python rank {r}: {err[-3000:]}"

    a = torch.load(cpp_out / "checkpoint.pt", weights_only=False)
    b = torch.load(py_out / "checkpoint.pt", weights_only=False)
    assert a["step"] == b["step"] == 3
    assert list(a["model"]) == list(b["model"])
    for k in b["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), \
            f"{k}: max |C++ - Python| = {(a['model'][k] - b['model'][k]).abs().max().item():.3g}"
    m_cpp, m_py = (json.loads((out / "metrics.json").read_text()) for out in (cpp_out, py_out))
    assert m_cpp["settings"] == m_py["settings"]  # world_size, comm_* included
    assert [untimed(r) for r in m_cpp["epochs"]] == [untimed(r) for r in m_py["epochs"]]
    if comm:
        sent = {k: v for k, v in m_cpp["communication"].items() if k not in ("transport", "seconds")}
        assert sent == m_py["communication"]
        # 4 bits a gradient element plus a float32 scale per parameter tensor, against 4 bytes.
        params = [t for k, t in a["model"].items() if "running" not in k and "num_batches" not in k]
        numel = sum(t.numel() for t in params)
        per_step = -(-numel * 4 // 8) + 4 * len(params)
        assert sent["bytes_sent_per_rank"] == 3 * per_step
        assert sent["compression"] == pytest.approx(4 * numel / per_step)
        assert abs(sent["compression"] / (32 / 4) - 1) < 0.10


def test_torchrun_launch_with_2_bit_gradients(data_dir, tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
           "--master-port", str(free_port()), "--no-python", str(TRAIN), *args(data_dir, out, "--comm-bits", "2")]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment(),
                            start_new_session=True)
    [(code, stdout, stderr)] = communicate([proc], "torchrun")
    assert code == 0, stderr[-3000:]
    sums = {int(r): c for r, _, c in CHECKSUM.findall(stderr)}
    assert sorted(sums) == [0, 1] and sums[0] == sums[1], stderr[-3000:]
    assert sum(line.startswith("final test accuracy") for line in stdout.splitlines()) == 1, stdout
    assert "2 processes, 2-bit gradients" in stdout
    comm = json.loads((out / "metrics.json").read_text())["communication"]
    assert abs(comm["compression"] / (32 / 2) - 1) < 0.10, comm


@pytest.mark.parametrize("rank1, message", [
    (["--lr", "0.2"], "every process must be given the same flags: rank 1 has --lr 0.2 but rank 0 has --lr 0.1"),
    (["--comm-bits", "9"], "rank 1: --comm-bits must be from 1 to 8, got 9"),
    (["--batch-size", "15"], "rank 1: --batch-size 15 (the global batch) must be a multiple of the 2 processes"),
])
def test_a_bad_or_differing_rank_stops_every_rank_with_the_same_error(data_dir, tmp_path, rank1, message):
    base = [str(TRAIN), *args(data_dir, tmp_path / "run"), "--comm-bits", "4"]
    results = launch([base, base + rank1])
    for r, (code, _, err) in enumerate(results):
        assert code == 2, f"rank {r}: {err[-3000:]}"
        assert f"zipml_train: error: {message}" in err, f"rank {r}: {err[-3000:]}"
    assert not (tmp_path / "run").exists()


def test_comm_bits_out_of_range_or_without_a_launch_is_an_error(data_dir, tmp_path):
    env = {k: v for k, v in environment().items() if k not in ("RANK", "WORLD_SIZE")}
    for bits in ("9", "0"):
        r = subprocess.run([str(TRAIN), *args(data_dir, tmp_path / "x"), "--comm-bits", bits], capture_output=True,
                           text=True, env=env, timeout=TIMEOUT_S)
        assert r.returncode == 2 and f"--comm-bits must be from 1 to 8, got {bits}" in r.stderr, r.stderr
    r = subprocess.run([str(TRAIN), *args(data_dir, tmp_path / "x"), "--comm-bits", "4"], capture_output=True,
                       text=True, env=env, timeout=TIMEOUT_S)
    assert r.returncode == 2 and "launch with torchrun" in r.stderr, r.stderr
    results = launch([[str(TRAIN), *args(data_dir, tmp_path / "y"), "--comm-bits", "9"]] * 2)
    for code, _, err in results:
        assert code == 2 and "rank 0: --comm-bits must be from 1 to 8, got 9; rank 1: --comm-bits must be" in err, err


def test_a_rank_failing_after_the_checks_stops_the_others(data_dir, tmp_path):
    """Rank 0 cannot create its --out (a run flag, free to differ): rank 1, waiting for rank 0's first
    gradients, stops with rank 0's reason instead of waiting out --dist-timeout."""
    (tmp_path / "a_file").write_text("")
    base = [str(TRAIN), *args(data_dir, tmp_path / "run"), "--comm-bits", "4"]
    results = launch([base + ["--out", str(tmp_path / "a_file" / "out")], base])
    for r, (code, _, err) in enumerate(results):
        assert code == 1, f"rank {r}: {err[-3000:]}"
    assert "cannot create directory" in results[0][2], results[0][2]
    assert "rank 0 failed: cannot create directory" in results[1][2], results[1][2]


def test_resume_of_a_two_rank_run_is_exact(data_dir, tmp_path):
    """Every rank reads the checkpoint (rank 0's); --comm-bits comes from it; a differing one is an error."""
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    for out, extra in ((whole, []), (parts, ["--stop-after-epochs", "1"])):
        for code, _, err in launch([[str(TRAIN), *args(data_dir, out, "--comm-bits", "4", *extra)]] * 2):
            assert code == 0, err[-3000:]
    resume = [str(TRAIN), "--resume", "--out", str(parts), "--threads", "1", "--progress", "off"]
    for code, _, err in launch([resume + ["--comm-bits", "2"]] * 2):
        assert code == 2 and "--comm-bits 2 (the run used 4)" in err, err[-3000:]
    results = launch([resume] * 2)
    for code, _, err in results:
        assert code == 0, err[-3000:]
    a = torch.load(whole / "checkpoint.pt", weights_only=False)
    b = torch.load(parts / "checkpoint.pt", weights_only=False)
    assert a["step"] == b["step"] == 3
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert len(set(checksums(results).values())) == 1
