"""Model skeletons: modules built without storage or initialisation, for weights to fill.

Loading a checkpoint builds the architecture on PyTorch's ``meta`` device (shapes only, no
memory) and then assigns the checkpoint's tensors (``load_state_dict(assign=True)``), so the
random initialisation each module's constructor runs is thrown away. On meta tensors that
initialisation does nothing useful, yet it is not free: ``normal_`` on a meta tensor goes
through a Python reference implementation whose first call imports ``torch._dynamo`` (2-3 s
of a process's start-up, paid by every worker, scan and studio that loads a model).

:func:`skeleton` builds under a :class:`~torch.overrides.TorchFunctionMode` that returns the
tensor unchanged for the in-place initialisers (``torch.nn.init`` and the tensor methods they
call) when that tensor is on the meta device; every other call goes through as usual. A meta
tensor holds no values, so skipping them changes nothing but the time taken.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

__all__ = ["skeleton"]

_INITIALISERS = frozenset(
    {
        "normal_",
        "uniform_",
        "trunc_normal_",
        "constant_",
        "ones_",
        "zeros_",
        "eye_",
        "dirac_",
        "xavier_uniform_",
        "xavier_normal_",
        "kaiming_uniform_",
        "kaiming_normal_",
        "orthogonal_",
        "sparse_",
        "fill_",
        "zero_",
        "exponential_",
        "random_",
        "bernoulli_",
    }
)


class _NoInitOnMeta(TorchFunctionMode):
    def __torch_function__(
        self,
        func: Callable[..., Any],
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        target = args[0] if args else kwargs.get("tensor")  # torch.nn.init passes it by name
        if (
            getattr(func, "__name__", "") in _INITIALISERS
            and isinstance(target, torch.Tensor)
            and target.is_meta
        ):
            return target
        return func(*args, **kwargs)


@contextmanager
def skeleton() -> Iterator[None]:
    """Modules built inside have meta tensors and skip their random initialisation."""
    with torch.device("meta"), _NoInitOnMeta():
        yield
