"""python -m torch_zipml.train end to end on a tiny data set written in the real IDX format:
outputs, --resume equivalence (bit for bit), bounded runs, errors."""

import json
import os
import subprocess
import sys

import pytest
import torch

from test_data import cifar_records, write_fashion
from torch_zipml import train as ztrain


@pytest.fixture(scope="module")
def fashion_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("fashion")
    write_fashion(directory, n=48, split="train")
    write_fashion(directory, n=20, split="test")
    return str(directory)


@pytest.fixture(autouse=True)
def restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def run(*argv):
    return ztrain.main([*map(str, argv)])


def base_args(data_dir, out, *extra):
    return ["--data-dir", data_dir, "--out", out, "--batch-size", 16, "--epochs", 3, "--progress", "off",
            "--quiet", "--seed", 4, "--eval-batch-size", 8, "--threads", 1, *extra]


def load(out):
    return torch.load(os.path.join(out, "checkpoint.pt"), weights_only=False)


def test_resume_continues_to_exactly_the_uninterrupted_result(fashion_dir, tmp_path):
    quant = ["--scheme", "zipml", "--weight-bits", 2, "--levels", "optimal", "--grad-bits", 8]
    full, parts = str(tmp_path / "full"), str(tmp_path / "parts")
    assert run(*base_args(fashion_dir, full, *quant)) == 0
    assert run(*base_args(fashion_dir, parts, *quant, "--stop-after-epochs", 1)) == 0
    interrupted = json.load(open(os.path.join(parts, "metrics.json")))
    assert len(interrupted["epochs"]) == 1 and "final" not in interrupted
    assert run("--resume", "--out", parts, "--progress", "off", "--quiet", "--threads", 1) == 0

    a, b = load(full), load(parts)
    assert a["epoch"] == b["epoch"] == 3 and a["step"] == b["step"] == 9
    assert a["model"].keys() == b["model"].keys()
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert a["zipml_rng"] == b["zipml_rng"] and a["zipml_rng"]["layer1.0.conv1"]["step"] == 9
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert torch.equal(sa["momentum_buffer"], sb["momentum_buffer"])
    assert a["scheduler"] == b["scheduler"]
    timing = {"epoch_seconds", "elapsed_seconds"}
    strip = [{k: v for k, v in row.items() if k not in timing} for row in a["history"]]
    assert strip == [{k: v for k, v in row.items() if k not in timing} for row in b["history"]]
    ma, mb = (json.load(open(os.path.join(d, "metrics.json"))) for d in (full, parts))
    assert ma["final"]["test_acc"] == mb["final"]["test_acc"]
    assert "test_acc_nearest_eval" in ma["final"]


def test_outputs_csv_json_plot_and_bounded_run(fashion_dir, tmp_path):
    out = str(tmp_path / "bwn")
    assert run(*base_args(fashion_dir, out, "--scheme", "bwn", "--max-steps", 4)) == 0
    files = sorted(os.listdir(out))
    assert files == ["checkpoint.pt", "curves.png", "metrics.csv", "metrics.json"]  # no temporaries left
    rows = open(os.path.join(out, "metrics.csv")).read().splitlines()
    assert rows[0] == ("epoch,step,lr,train_loss,train_acc,test_loss,test_acc,epoch_seconds,elapsed_seconds")
    assert len(rows) == 3  # 3 steps per epoch: epochs of 3 and 1 steps
    metrics = json.load(open(os.path.join(out, "metrics.json")))
    assert [e["step"] for e in metrics["epochs"]] == [3, 4]
    assert metrics["epochs"][-1]["lr"] == 0.0  # the cosine is fitted to the bounded run
    assert metrics["final"]["steps"] == 4 and 0 <= metrics["final"]["test_acc"] <= 100
    assert metrics["layers"]["layer1.0.conv1"] == "bwn" and metrics["layers"]["conv1"] == "fp32"
    assert metrics["settings"]["scheme"] == "bwn" and "torch" in metrics["environment"]
    assert open(os.path.join(out, "curves.png"), "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_cifar100_run_uses_three_channels_and_fine_labels(tmp_path):
    for name, n in (("train.bin", 40), ("test.bin", 10)):
        (tmp_path / name).write_bytes(cifar_records(n, 2)[2])
    out = str(tmp_path / "c100")
    assert run("--dataset", "cifar100", "--data-dir", tmp_path, "--out", out, "--max-steps", 1, "--batch-size", 8,
               "--scheme", "xnor", "--progress", "off", "--quiet", "--threads", 1, "--no-plot") == 0
    ckpt = load(out)
    assert ckpt["model"]["conv1.weight"].shape == (16, 3, 3, 3) and ckpt["model"]["fc.weight"].shape == (100, 64)
    assert ckpt["data"]["train"]["samples"] == 40


def test_resume_rejects_changed_settings(fashion_dir, tmp_path):
    out = str(tmp_path / "r")
    assert run(*base_args(fashion_dir, out, "--scheme", "fp32", "--max-steps", 1)) == 0
    with pytest.raises(SystemExit, match="--lr 0.5 \\(the run used 0.1\\)"):
        run("--resume", "--out", out, "--lr", 0.5)
    with pytest.raises(SystemExit, match="no checkpoint at"):
        run("--resume", str(tmp_path / "nowhere"))
    other = tmp_path / "other-data"
    other.mkdir()
    write_fashion(other, n=30, split="train")
    write_fashion(other, n=20, split="test")
    with pytest.raises(SystemExit, match="the data differ from the run's"):
        run("--resume", "--out", out, "--data-dir", other)


def test_bad_flags_are_rejected(fashion_dir, tmp_path):
    with pytest.raises(SystemExit, match="--weight-bits must be from 1 to 8"):
        run(*base_args(fashion_dir, str(tmp_path / "x"), "--weight-bits", 9))
    with pytest.raises(SystemExit, match="--train-subset must be a positive integer"):
        run(*base_args(fashion_dir, str(tmp_path / "x"), "--train-subset", 0))


def test_cli_missing_data_says_how_to_install(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "torch_zipml.train", "--data-dir", str(tmp_path), "--out",
                           str(tmp_path / "o")], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert proc.returncode != 0
    assert "apt-get install dataset-fashion-mnist" in proc.stderr and "--data-dir" in proc.stderr


def test_write_atomic_keeps_the_old_file_when_writing_fails(tmp_path):
    path = str(tmp_path / "f.json")
    ztrain.write_json({"a": 1}, path)

    def broken(f):
        f.write(b"partial")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        ztrain.write_atomic(path, broken)
    assert json.load(open(path)) == {"a": 1} and os.listdir(tmp_path) == ["f.json"]
