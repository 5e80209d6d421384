import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))

import torch_zipml  # noqa: E402,F401  (registers torch.ops.zipml)

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


def devices():
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(params=devices())
def device(request):
    return request.param
