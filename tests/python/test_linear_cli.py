"""The zipml-linear command line (python -m torch_zipml.linear)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from torch_zipml.linear.__main__ import main

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture
def libsvm_file(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((200, 5))
    y = np.where(X @ np.array([1.0, -2.0, 0.5, 0.0, 1.0]) > 0, 1, -1)
    path = tmp_path / "train.svm"
    with open(path, "w") as f:
        for xi, yi in zip(X, y):
            f.write(f"{yi:+d} " + " ".join(f"{j + 1}:{v:.5f}" for j, v in enumerate(xi)) + "\n")
    return str(path)


def test_train_evaluate_report(libsvm_file, tmp_path, capsys):
    out = str(tmp_path / "model.json")
    assert main(["train", libsvm_file, "--model", "svm", "--bits", "8", "--epochs", "20", "--step-size", "0.2",
                 "--l2", "0.001", "--test", libsvm_file, "--out", out]) == 0
    text = capsys.readouterr().out
    assert "SVM on" in text and "train accuracy" in text and "test  accuracy" in text
    model = json.load(open(out))
    assert model["estimator"] == "SVM" and len(model["coef"]) == 5 and len(model["loss_history"]) == 21
    assert main(["evaluate", out, libsvm_file]) == 0
    accuracy = float(capsys.readouterr().out.split()[1])
    assert accuracy > 0.9
    assert main(["report", out]) == 0
    report = capsys.readouterr().out
    assert "parameters:" in report and "mean bytes per epoch" in report


def test_csv_regression(tmp_path, capsys):
    path = tmp_path / "d.csv"
    rng = np.random.default_rng(1)
    X = rng.standard_normal((100, 3))
    y = X @ np.array([1.0, 2.0, -1.0]) + 3
    np.savetxt(path, np.hstack([X, y[:, None]]), delimiter=",", header="a,b,c,y", comments="")
    assert main(["train", str(path), "--model", "linear", "--sampling", "fp32", "--epochs", "60", "--step-size", "0.5",
                 "--schedule", "inverse", "--decay", "0.3"]) == 0
    assert "train R^2 0.99" in capsys.readouterr().out


def test_errors_are_reported_with_file_and_line(tmp_path, capsys):
    bad = tmp_path / "bad.svm"
    bad.write_text("1 1:0.5\n-1 2:x\n")
    assert main(["train", str(bad)]) == 2
    assert "bad.svm:2: value 'x' is not a number" in capsys.readouterr().err
    assert main(["train", str(tmp_path / "missing.svm")]) == 2
    assert "cannot open" in capsys.readouterr().err
    good = tmp_path / "g.svm"
    good.write_text("1 1:0.5\n-1 2:1\n")
    assert main(["train", str(good), "--bits", "12"]) == 2
    assert "bits must be one of 1, 2" in capsys.readouterr().err
    notjson = tmp_path / "m.json"
    notjson.write_text("{")
    assert main(["report", str(notjson)]) == 2
    assert "not a JSON model file" in capsys.readouterr().err


def test_module_entry_point():
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    done = subprocess.run([sys.executable, "-m", "torch_zipml.linear", "--help"], capture_output=True, text=True,
                          env=env, cwd=ROOT)
    assert done.returncode == 0 and "train" in done.stdout and "evaluate" in done.stdout
