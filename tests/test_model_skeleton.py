"""Model skeletons: built on the meta device without running their random initialisation."""

from __future__ import annotations

import subprocess
import sys

import torch

from pipeline.models.skeleton import skeleton


def test_a_skeleton_has_meta_tensors_and_real_tensors_still_initialise() -> None:
    with skeleton():
        layer = torch.nn.Linear(8, 4)
        embedding = torch.nn.Embedding(10, 4)
        real = torch.nn.init.normal_(torch.zeros(64, device="cpu"))
    assert layer.weight.is_meta and embedding.weight.is_meta
    assert layer.weight.shape == (4, 8) and embedding.weight.shape == (10, 4)
    assert real.std() > 0.5  # a tensor with storage is initialised as asked
    after = torch.nn.init.normal_(torch.zeros(64))  # the mode ends with the block
    assert after.std() > 0.5


def test_loading_a_model_does_not_import_torch_dynamo() -> None:
    # initialising meta tensors went through a reference implementation that imports
    # torch._dynamo on first use: seconds of every worker's and scan's start-up
    code = (
        "import sys\n"
        "from pipeline.models import load_clip\n"
        "model = load_clip('clipguard-demo')\n"
        "assert next(model.parameters()).device.type == 'cpu'\n"
        "print('torch._dynamo' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stdout.strip() == "False", out.stderr[-2000:]
