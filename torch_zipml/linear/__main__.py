"""zipml-linear: train, evaluate and report low-precision linear models from the shell.

    zipml-linear train DATA --model linear --bits 4 --sampling double --epochs 20 --out model.json
    zipml-linear evaluate model.json TEST_DATA
    zipml-linear report model.json

DATA is a LIBSVM text file or a CSV file (by extension, or --format). Also `python -m torch_zipml.linear`.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from ._estimators import ESTIMATORS, model_from_dict, model_to_dict
from .data import load

MODELS = {"linear": "LinearRegression", "lssvm": "LSSVM", "logistic": "LogisticRegression", "svm": "SVM"}


def _add_data_arguments(p):
    p.add_argument("--format", choices=["libsvm", "csv"], help="data format (default: by extension, .csv is CSV)")
    p.add_argument("--label-column", type=int, default=-1, help="CSV: the label's column (default: last)")
    p.add_argument("--n-features", type=int, default=0, help="LIBSVM: number of features (default: inferred)")


def _load(path, args):
    fmt = args.format or ("csv" if path.lower().endswith(".csv") else "libsvm")
    if fmt == "csv":
        return load(path, "csv", label_column=args.label_column)
    return load(path, "libsvm", n_features=args.n_features)


def _optional_bits(text):
    return None if text.lower() in ("none", "fp32", "0") else int(text)


def _parser():
    parser = argparse.ArgumentParser(prog="zipml-linear", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a model and save it as JSON")
    t.add_argument("data")
    _add_data_arguments(t)
    t.add_argument("--model", choices=sorted(MODELS), default="linear")
    t.add_argument("--loss", choices=["hinge", "squared_hinge"], default="hinge", help="svm only")
    t.add_argument("--bits", type=int, default=8)
    t.add_argument("--sampling", choices=["fp32", "nearest", "naive", "double"], default="double")
    t.add_argument("--levels", choices=["uniform", "optimal"], default="uniform")
    t.add_argument("--model-bits", type=_optional_bits, default=None)
    t.add_argument("--grad-bits", type=_optional_bits, default=None)
    t.add_argument("--epochs", type=int, default=10)
    t.add_argument("--step-size", type=float, default=0.1)
    t.add_argument("--batch-size", type=int, default=16)
    t.add_argument("--schedule", choices=["constant", "inverse", "inverse_sqrt", "exponential"], default="constant")
    t.add_argument("--decay", type=float, default=0.0)
    t.add_argument("--l2", type=float, default=0.0)
    t.add_argument("--copies", type=int, default=4)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--threads", type=int, default=1, help="-1: all cores")
    t.add_argument("--engine", choices=["auto", "float", "integer"], default="auto")
    t.add_argument("--degree", type=int, default=7, help="logistic: Chebyshev degree")
    t.add_argument("--chebyshev-range", type=float, default=6.0)
    t.add_argument("--average", type=float, default=None, help="average the iterates from this epoch on")
    t.add_argument("--device", choices=["cpu", "fpga-sim"], default="cpu",
                   help="fpga-sim: the FPGA accelerator of fpga/ in C simulation")
    t.add_argument("--no-scale", action="store_true", help="the data are already in [-1, 1]")
    t.add_argument("--test", help="also evaluate on this file")
    t.add_argument("--out", help="where to save the model (JSON)")

    e = sub.add_parser("evaluate", help="score a saved model on data")
    e.add_argument("model")
    e.add_argument("data")
    _add_data_arguments(e)

    r = sub.add_parser("report", help="summarise a saved model: parameters, loss and bytes per epoch")
    r.add_argument("model")
    return parser


def _score_line(model, X, y):
    kind = "R^2" if type(model).__name__ == "LinearRegression" else "accuracy"
    line = f"{kind} {model.score(X, y):.6f}"
    if kind == "R^2":
        line += f"  mse {float(np.mean((model.predict(X) - y) ** 2)):.6g}"
    return line


def _train(args):
    X, y = _load(args.data, args)
    cls = ESTIMATORS[MODELS[args.model]]
    params = dict(bits=args.bits, sampling=args.sampling, levels=args.levels, model_bits=args.model_bits,
                  grad_bits=args.grad_bits, epochs=args.epochs, step_size=args.step_size,
                  batch_size=args.batch_size, schedule=args.schedule, decay=args.decay, l2=args.l2,
                  copies=args.copies, seed=args.seed, n_jobs=args.threads, engine=args.engine,
                  scale=not args.no_scale, average=args.average, device=args.device)
    if args.model == "logistic":
        params.update(degree=args.degree, chebyshev_range=args.chebyshev_range)
    if args.model == "svm":
        params.update(loss=args.loss)
    model = cls(**params).fit(X, y)
    print(f"{cls.__name__} on {args.data}: {X.shape[0]} samples x {X.shape[1]} features, engine {model.engine_} "
          f"({model.isa_})")
    _print_history(model_to_dict(model))
    print("train " + _score_line(model, X, y))
    if args.test:
        Xt, yt = _load(args.test, args)
        print("test  " + _score_line(model, Xt, yt))
    if args.out:
        data = model_to_dict(model)
        data["train_data"] = args.data
        with open(args.out, "w") as f:
            json.dump(data, f, indent=1)
        print(f"saved {args.out}")


def _print_history(d):
    print(f"{'epoch':>5} {'loss':>14} {'bytes':>14} {'seconds':>9} {'refetched':>9}")
    hist = d["loss_history"]
    if hist:
        print(f"{0:>5} {hist[0]:>14.8g}")
    for e, (b, s) in enumerate(zip(d["bytes_read"], d["epoch_seconds"]), start=1):
        loss = f"{hist[e]:>14.8g}" if e < len(hist) else " " * 14
        refetch = d["refetch_fraction"][e - 1] if d["refetch_fraction"] else 0.0
        print(f"{e:>5} {loss} {b:>14d} {s:>9.4f} {refetch:>9.4f}")


def _read_model(path):
    with open(path) as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not a JSON model file ({e})") from None
    return data, model_from_dict(data)


def _evaluate(args):
    _, model = _read_model(args.model)
    X, y = _load(args.data, args)
    print(_score_line(model, X, y))


def _report(args):
    data, _ = _read_model(args.model)
    print(f"{data['estimator']} ({data['n_features']} features), trained on {data.get('train_data', '?')}, "
          f"engine {data.get('engine')} ({data.get('isa')})")
    print("parameters: " + ", ".join(f"{k}={v}" for k, v in data["params"].items()))
    _print_history(data)
    if data["bytes_read"]:
        print(f"mean bytes per epoch {np.mean(data['bytes_read']):.0f}, "
              f"mean epoch time {np.mean(data['epoch_seconds']):.4f} s")


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    try:
        {"train": _train, "evaluate": _evaluate, "report": _report}[args.command](args)
    except (ValueError, OSError, RuntimeError) as e:
        print(f"zipml-linear: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
