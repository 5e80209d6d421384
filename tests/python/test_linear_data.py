"""Data loading for torch_zipml.linear: LIBSVM, CSV and IDX files, with errors naming file and line."""

import gzip
import os

import numpy as np
import pytest

from torch_zipml.linear import data, fashion_mnist_pair, load, load_csv, load_idx, load_libsvm


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_libsvm(tmp_path):
    path = write(tmp_path, "a.svm", "# comment\n+1 1:0.5 3:-2\n\n-1 2:1e-1 # trailing\n0.5 3:4\n")
    X, y = load_libsvm(path)
    np.testing.assert_array_equal(y, [1, -1, 0.5])
    np.testing.assert_array_equal(X, np.array([[0.5, 0, -2], [0, 0.1, 0], [0, 0, 4]], dtype=np.float32))
    X5, _ = load_libsvm(path, n_features=5)
    assert X5.shape == (3, 5)


@pytest.mark.parametrize("text,message", [
    ("1 1:2\n1 2 3\n", r"a.svm:2: expected index:value, got '2'"),
    ("1 1:2\nx 1:1\n", r"a.svm:2: label 'x' is not a number"),
    ("1 0:2\n", r"a.svm:1: feature index '0' is not a positive integer"),
    ("1 1.5:2\n", r"a.svm:1: feature index '1.5' is not a positive integer"),
    ("1 2:1 1:3\n", r"a.svm:1: feature indices must be ascending, got 1 after 2"),
    ("1 1:nan\n", r"a.svm:1: value 'nan' is not a finite float32"),
    ("1 1:1e40\n", r"a.svm:1: value '1e40' is not a finite float32"),
    ("1 1:abc\n", r"a.svm:1: value 'abc' is not a number"),
    ("", r"a.svm: no samples"),
    ("1\n-1\n", r"a.svm: no features"),
])
def test_libsvm_errors_name_file_and_line(tmp_path, text, message):
    path = write(tmp_path, "a.svm", text)
    with pytest.raises(ValueError, match=message):
        load_libsvm(path)


def test_libsvm_index_beyond_n_features(tmp_path):
    path = write(tmp_path, "a.svm", "1 1:1\n1 7:1\n")
    with pytest.raises(ValueError, match=r"a.svm:2: feature index 7 exceeds n_features=3"):
        load_libsvm(path, n_features=3)


def test_missing_file_is_an_os_error(tmp_path):
    with pytest.raises(OSError, match="cannot open"):
        load_libsvm(str(tmp_path / "absent.svm"))
    with pytest.raises(OSError, match="cannot open"):
        load_csv(str(tmp_path / "absent.csv"))


def test_csv(tmp_path):
    path = write(tmp_path, "a.csv", "f1,f2,label\n1,2,3\n4, 5 ,6\n\n7,8,9\n")
    X, y = load_csv(path)
    np.testing.assert_array_equal(X, [[1, 2], [4, 5], [7, 8]])
    np.testing.assert_array_equal(y, [3, 6, 9])
    X0, y0 = load_csv(path, label_column=0)
    np.testing.assert_array_equal(y0, [1, 4, 7])
    np.testing.assert_array_equal(X0, [[2, 3], [5, 6], [8, 9]])
    Xs, ys = load(write(tmp_path, "b.csv", "1;2\n3;4\n"), delimiter=";")
    np.testing.assert_array_equal(ys, [2, 4])


@pytest.mark.parametrize("text,message", [
    ("1,2,3\n4,5\n", r"a.csv:2: expected 3 fields, found 2"),
    ("1,2,3\n4,x,6\n", r"a.csv:2: value 'x' is not a number"),
    ("1,2,3\n4,5,\n", r"a.csv:2: label '' is not a number"),
    ("a,b\n1,inf\n", r"a.csv:2: label 'inf' is not a finite float32"),
    ("7\n", r"a.csv:1: a CSV line needs a label and at least one feature"),
    ("h1,h2\n", r"a.csv: no samples"),
])
def test_csv_errors_name_file_and_line(tmp_path, text, message):
    path = write(tmp_path, "a.csv", text)
    with pytest.raises(ValueError, match=message):
        load_csv(path)


def test_csv_label_column_out_of_range(tmp_path):
    path = write(tmp_path, "a.csv", "1,2\n")
    with pytest.raises(ValueError, match="label_column=5 is outside the 2 columns"):
        load_csv(path, label_column=5)


def test_idx_roundtrip_and_errors(tmp_path):
    arr = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    raw = bytes([0, 0, 8, 3]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape) + arr.tobytes()
    path = tmp_path / "x.idx.gz"
    with gzip.open(path, "wb") as f:
        f.write(raw)
    np.testing.assert_array_equal(load_idx(str(path)), arr)
    bad = tmp_path / "bad.idx"
    bad.write_bytes(b"\x01\x02\x03")
    with pytest.raises(ValueError, match="not an IDX file"):
        load_idx(str(bad))
    short = tmp_path / "short.idx"
    short.write_bytes(raw[:-1])
    with pytest.raises(ValueError, match="IDX payload has 23 bytes, the header announces 24"):
        load_idx(str(short))


@pytest.mark.skipif(not os.path.exists(data.HEART_SCALE), reason="liblinear-tools examples not installed")
def test_heart_scale():
    X, y = load_libsvm(data.HEART_SCALE)
    assert X.shape == (270, 13)
    assert set(np.unique(y)) == {-1.0, 1.0}


@pytest.mark.skipif(not os.path.exists(data.FASHION_MNIST), reason="Fashion-MNIST not installed")
def test_fashion_mnist_pair():
    X, y = fashion_mnist_pair((0, 6), split="test")
    assert X.shape == (2000, 784) and X.dtype == np.float32
    assert 0 <= X.min() and X.max() <= 1
    assert (y == 1).sum() == 1000 and (y == -1).sum() == 1000
    with pytest.raises(ValueError, match="classes must be two different labels"):
        fashion_mnist_pair((3, 3))
    with pytest.raises(ValueError, match="split must be 'train' or 'test'"):
        fashion_mnist_pair(split="valid")


def test_synthetic_regression_is_seeded():
    A, b, x = data.synthetic_regression(50, 10, seed=3)
    A2, b2, x2 = data.synthetic_regression(50, 10, seed=3)
    np.testing.assert_array_equal(A, A2)
    np.testing.assert_array_equal(b, b2)
    assert np.count_nonzero(x) >= 1
    As, _, _ = data.synthetic_regression(50, 10, seed=3, distribution="lognormal")
    assert (As > 0).all()
    with pytest.raises(ValueError, match="distribution must be one of"):
        data.synthetic_regression(5, 2, distribution="cauchy")
