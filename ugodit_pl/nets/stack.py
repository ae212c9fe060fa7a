"""``num`` independent copies of a module, held as stacked tensors and run in one vmapped pass.

UGoDIT fits M decoders, one per measurement. :class:`ModuleStack` stores their parameters and
buffers with a leading dimension M and evaluates all of them with ``torch.func.vmap`` over one
architecture-only copy of the module whose tensors are bound to the stacked ones for the call (no
Python loop over the copies). Copy i receives sample i of every tensor input, as a batch of one,
which is how each decoder sees its measurement in the authors' code. A single selected copy runs
without vmap, on views of the stacked tensors.

>>> import torch
>>> from ugodit_pl.nets import ModuleStack, UNet
>>> net = UNet(channels=(4, 8, 8))
>>> decoders = ModuleStack(net.decoder, 3, reinit=0)
>>> deepest, skips = net.encoder(torch.randn(3, 2, 16, 16))
>>> decoders(deepest, skips).shape
torch.Size([3, 2, 16, 16])
>>> decoders(deepest[1:], [s[1:] for s in skips], indices=torch.tensor([0, 2])).shape
torch.Size([2, 2, 16, 16])
"""

from __future__ import annotations

import copy
import weakref
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import vmap
from torch.utils._pytree import tree_flatten, tree_unflatten

from ugodit_pl.arguments import whole

from .init import reinit_decoder_

__all__ = ["ModuleStack", "StackableConv2d"]

#: On CPU, run the convolutions of stacked copies (``StackableConv2d`` under ``vmap``) whose input
#: channels are not a multiple of 16 as one grouped convolution in channels-last memory format.
#: PyTorch's own vmap rule runs a grouped convolution in NCHW, which oneDNN executes up to 3x slower
#: than M separate convolutions at such channel counts (e.g. the 4 + 128 = 132 channels after each
#: SkipNet concatenation); at multiples of 16 it is as fast as the loop, and there the layout
#: conversions would cost more than they save, so PyTorch's rule is kept. Other devices always use
#: PyTorch's rule. Set to False to use it on CPU too.
STACKED_CONV_CHANNELS_LAST_ON_CPU = True

Reinit = Union[int, Callable[[nn.Module, int], Any], None]
_TENSOR = object()  # marks the positions of tensor outputs among an output pytree's leaves


def _attr_name(name: str) -> str:
    """Map a dotted state name ``a.b.weight`` to the attribute name ``a__b__weight``."""
    return name.replace(".", "__")


def _signature(module: nn.Module) -> List[Tuple[str, str, Tuple[int, ...], torch.dtype]]:
    entries = [("param", n, tuple(p.shape), p.dtype) for n, p in module.named_parameters()]
    entries += [("buffer", n, tuple(b.shape), b.dtype) for n, b in module.named_buffers()]
    return entries


class ModuleStack(nn.Module):
    """``num`` copies of ``module`` with stacked parameters/buffers, evaluated in one vmapped pass.

    Args:
        module: the template (e.g. a decoder). Its weights are copied; the module itself is not kept
            (an architecture-only copy on the ``meta`` device runs with the stacked tensors bound), so
            ``parameters()`` are exactly the stacked tensors.
        num: number of copies.
        reinit: ``None`` (every copy starts with ``module``'s weights), an int ``seed`` (copy i is
            ``reinit_decoder_(copy, seed + i)``) or a callable ``fn(copy, i)`` that re-initialises
            copy i in place.

    ``forward(*inputs, indices=None)``: every tensor in ``inputs`` (nested lists/tuples/dicts allowed,
    non-tensor leaves such as ``None`` are passed as they are) has leading dimension
    ``len(indices)`` (default: ``num``); copy ``indices[j]`` receives sample j as a batch of one
    (shape ``(1, ...)``), and the outputs are stacked back to leading dimension ``len(indices)``.
    Gradients reach the stacked parameters (only the selected rows are non-zero); in-place buffer
    updates of the selected copies (BatchNorm running statistics) are written back. Use ``indices``
    to run a subset, e.g. the measurements of one DDP rank. Random operations inside the module are
    not supported under vmap (``randomness="error"``).

    State-dict keys are the template's keys with dots replaced by ``__`` (``up1__conv__conv1__weight``),
    each tensor with a leading dimension ``num``.

    >>> from torch import nn
    >>> stack = ModuleStack(nn.Linear(3, 2), 4, reinit=0)
    >>> stack.weight.shape, stack.num
    (torch.Size([4, 2, 3]), 4)
    >>> x = torch.randn(4, 5, 3)
    >>> torch.allclose(stack(x)[2], stack.module_at(2)(x[2:3])[0])
    True
    """

    def __init__(self, module: nn.Module, num: int, *, reinit: Reinit = None):
        super().__init__()
        if not isinstance(module, nn.Module):
            raise TypeError(f"ModuleStack: module must be an nn.Module, got {type(module).__name__}")
        num = whole("ModuleStack: num", num, minimum=1)
        if reinit is None:
            copies: List[nn.Module] = [module] * num
        else:
            if not callable(reinit) and (isinstance(reinit, bool) or not isinstance(reinit, int)):
                raise TypeError(f"ModuleStack: reinit must be None, an int seed or a callable(module, i), got {reinit!r}")
            copies = []
            for i in range(num):
                copy_i = copy.deepcopy(module)
                if callable(reinit):
                    reinit(copy_i, i)
                else:
                    reinit_decoder_(copy_i, int(reinit) + i)
                copies.append(copy_i)
        self._setup(copies, module.training)

    @classmethod
    def from_modules(cls, modules: Sequence[nn.Module]) -> "ModuleStack":
        """Stack existing modules of one architecture (same parameter/buffer names, shapes, dtypes).

        >>> from torch import nn
        >>> ModuleStack.from_modules([nn.Linear(2, 2), nn.Linear(2, 2)]).num
        2
        """
        modules = list(modules)
        if not modules or not all(isinstance(m, nn.Module) for m in modules):
            raise ValueError("ModuleStack.from_modules: expected a non-empty sequence of nn.Modules")
        stack = cls.__new__(cls)
        nn.Module.__init__(stack)
        stack._setup(modules, modules[0].training)
        return stack

    def _setup(self, modules: List[nn.Module], training: bool) -> None:
        template = modules[0]
        signature = _signature(template)
        for i, m in enumerate(modules[1:], start=1):
            if _signature(m) != signature:
                raise ValueError(f"ModuleStack: module {i} differs from module 0 in parameter/buffer names, shapes or dtypes")
        persistent = set(template.state_dict().keys())
        self._param_names: Dict[str, str] = {}
        self._buffer_names: Dict[str, str] = {}
        used = set()
        for kind, name, _, _ in signature:
            attr = _attr_name(name)
            if attr in used or hasattr(self, attr):
                raise ValueError(f"ModuleStack: the state name {name!r} maps to the attribute {attr!r}, which is taken")
            used.add(attr)
            if kind == "param":
                first = template.get_parameter(name)
                data = torch.stack([m.get_parameter(name).detach() for m in modules]).clone()
                self.register_parameter(attr, nn.Parameter(data, requires_grad=first.requires_grad))
                self._param_names[name] = attr
            else:
                data = torch.stack([m.get_buffer(name).detach() for m in modules]).clone()
                self.register_buffer(attr, data, persistent=name in persistent)
                self._buffer_names[name] = attr
        # The architecture only: kept in a tuple so that nn.Module does not register it.
        self._template: Tuple[nn.Module, ...] = (copy.deepcopy(template).to("meta"),)
        self._slots = _slots(self._template[0], self._param_names, self._buffer_names)
        self._num = len(modules)
        self.train(training)

    @property
    def num(self) -> int:
        """The number of copies."""
        return self._num

    @property
    def template(self) -> nn.Module:
        """The architecture (on the ``meta`` device; it holds no weights)."""
        return self._template[0]

    def train(self, mode: bool = True) -> "ModuleStack":
        super().train(mode)
        self._template[0].train(mode)
        return self

    def extra_repr(self) -> str:
        return f"num={self._num}, module={type(self.template).__name__}"

    def _stacked(self) -> Tuple[Dict[str, Tensor], Dict[str, Tensor]]:
        params = {name: self._parameters[attr] for name, attr in self._param_names.items()}
        buffers = {name: self._buffers[attr] for name, attr in self._buffer_names.items()}
        return params, buffers

    def _check_indices(self, indices: Any) -> Tensor:
        """``indices`` as a long tensor on the stack's device, checked (once per tensor: a fit passes the same
        rows at every step, and each check synchronises with the device)."""
        checked = self.__dict__.get("_checked_indices")
        if checked is not None and checked[0]() is indices and checked[1] == indices._version:
            return checked[2]
        idx = self._checked_copy(indices)
        if isinstance(indices, Tensor) and not torch.compiler.is_compiling():
            self.__dict__["_checked_indices"] = (weakref.ref(indices), indices._version, idx)
        return idx

    def __getstate__(self) -> Dict[str, Any]:
        state = dict(self.__dict__)
        state.pop("_checked_indices", None)  # a weak reference: not picklable, and only a shortcut
        return state

    def _checked_copy(self, indices: Any) -> Tensor:
        device = next(iter(self._stacked()[0].values()), torch.empty(0)).device
        idx = torch.as_tensor(indices, device=device)
        if idx.dim() != 1 or idx.numel() == 0 or idx.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"ModuleStack: indices must be a non-empty 1-D integer tensor, got {indices!r}")
        idx = idx.long()
        if torch.compiler.is_compiling():
            return idx  # no host synchronisation inside a compiled graph (the eager calls check)
        if int(idx.min()) < 0 or int(idx.max()) >= self._num:
            raise IndexError(f"ModuleStack: indices must lie in [0, {self._num}), got {idx.tolist()}")
        if idx.unique().numel() != idx.numel():
            raise ValueError(f"ModuleStack: indices must be distinct, got {idx.tolist()}")
        return idx

    def forward(self, *inputs: Any, indices: Optional[Any] = None) -> Any:
        params, buffers = self._stacked()
        idx = None if indices is None else self._check_indices(indices)
        count = self._num if idx is None else idx.numel()
        leaves, spec = tree_flatten(inputs)
        is_tensor = [isinstance(leaf, Tensor) for leaf in leaves]
        tensors = [leaf for leaf, t in zip(leaves, is_tensor) if t]
        for position, t in enumerate(tensors):
            if t.dim() == 0 or t.shape[0] != count:
                raise ValueError(
                    f"ModuleStack: every tensor input needs leading dimension {count} (one sample per selected copy); "
                    f"tensor input #{position} has shape {tuple(t.shape)}"
                )
        template = self.template
        out_spec: List[Any] = []

        def run_one(p: Dict[str, Tensor], b: Dict[str, Tensor], *sample: Tensor) -> Tuple[Tensor, ...]:
            it = iter(sample)
            args = tree_unflatten([next(it).unsqueeze(0) if t else leaf for leaf, t in zip(leaves, is_tensor)], spec)
            out_leaves, o_spec = tree_flatten(_call_bound(template, self._slots, p, b, tuple(args)))
            out_spec[:] = [o_spec, [_TENSOR if isinstance(o, Tensor) else o for o in out_leaves]]
            return tuple(o.squeeze(0) for o in out_leaves if isinstance(o, Tensor))

        if count == 1:
            # views of the one selected copy: its gradient and in-place buffer updates reach the stack
            # (with one copy ``squeeze``, whose backward is a reshape; ``v[i]`` would allocate the stack's shape)
            if self._num == 1:
                views = {k: v.squeeze(0) for k, v in params.items()}, {k: v.squeeze(0) for k, v in buffers.items()}
            else:
                i = int(idx[0])
                views = {k: v[i] for k, v in params.items()}, {k: v[i] for k, v in buffers.items()}
            results = tuple(r.unsqueeze(0) for r in run_one(*views, *(t[0] for t in tensors)))
        elif idx is None:
            results = vmap(run_one, in_dims=(0, 0) + (0,) * len(tensors))(params, buffers, *tensors)
        else:
            params = {k: v.index_select(0, idx) for k, v in params.items()}
            selected = {k: v.index_select(0, idx) for k, v in buffers.items()}
            results = vmap(run_one, in_dims=(0, 0) + (0,) * len(tensors))(params, selected, *tensors)
            with torch.no_grad():  # the selected copies' in-place buffer updates, written back
                for k, v in buffers.items():
                    v.index_copy_(0, idx, selected[k])
        o_spec, others = out_spec
        it = iter(results)
        return tree_unflatten([next(it) if o is _TENSOR else o for o in others], o_spec)

    def module_at(self, i: int) -> nn.Module:
        """A standalone module (same device/dtypes, same train/eval mode) with copy ``i``'s weights.

        >>> from torch import nn
        >>> stack = ModuleStack(nn.Linear(3, 2), 2, reinit=0)
        >>> torch.equal(stack.module_at(1).weight, stack.weight[1])
        True
        """
        i = self._check_position(i)
        module = copy.deepcopy(self.template)
        params, buffers = self._stacked()
        for name, value in params.items():
            owner, _, leaf = name.rpartition(".")
            sub = module.get_submodule(owner)
            sub._parameters[leaf] = nn.Parameter(value[i].detach().clone(), requires_grad=value.requires_grad)
        for name, value in buffers.items():
            owner, _, leaf = name.rpartition(".")
            module.get_submodule(owner)._buffers[leaf] = value[i].detach().clone()
        return module.train(self.training)

    def load_module_at(self, i: int, state_dict: Union[Mapping[str, Tensor], nn.Module]) -> None:
        """Copy a state dict (or a module's weights) of the template's architecture into copy ``i``.

        >>> from torch import nn
        >>> stack = ModuleStack(nn.Linear(3, 2), 2)
        >>> stack.load_module_at(0, nn.Linear(3, 2))
        """
        i = self._check_position(i)
        if isinstance(state_dict, nn.Module):
            state_dict = state_dict.state_dict()
        params, buffers = self._stacked()
        targets = dict(params)
        targets.update({k: v for k, v in buffers.items() if self._is_persistent(k)})
        missing = sorted(set(targets) - set(state_dict))
        unexpected = sorted(set(state_dict) - set(targets))
        if missing or unexpected:
            raise KeyError(f"ModuleStack.load_module_at: missing keys {missing}, unexpected keys {unexpected}")
        with torch.no_grad():
            for name, target in targets.items():
                value = state_dict[name]
                if tuple(value.shape) != tuple(target.shape[1:]):
                    raise ValueError(
                        f"ModuleStack.load_module_at: {name!r} has shape {tuple(value.shape)}, expected {tuple(target.shape[1:])}"
                    )
                target[i].copy_(value)

    def _is_persistent(self, name: str) -> bool:
        return self._buffer_names[name] not in self._non_persistent_buffers_set

    def _check_position(self, i: int) -> int:
        if isinstance(i, Tensor):
            i = int(i)
        if isinstance(i, bool) or not isinstance(i, int) or not -self._num <= i < self._num:
            raise IndexError(f"ModuleStack: copy index must be an int in [0, {self._num}), got {i!r}")
        return i % self._num


# ----------------------------------------------------------------------------- running the template

_Slot = Tuple[nn.Module, str, str, Tensor]  # (submodule of the template, leaf name, dotted name, its meta tensor)


def _slots(template: nn.Module, params: Mapping[str, str], buffers: Mapping[str, str]) -> Tuple[List[_Slot], List[_Slot]]:
    """Where each stacked tensor goes in the template: its submodule and leaf name, and the meta tensor there."""

    def slot(name: str, table: str) -> _Slot:
        owner, _, leaf = name.rpartition(".")
        module = template.get_submodule(owner)
        return module, leaf, name, getattr(module, table)[leaf]

    return [slot(n, "_parameters") for n in params], [slot(n, "_buffers") for n in buffers]


def _call_bound(template: nn.Module, slots: Tuple[List[_Slot], List[_Slot]], params: Mapping[str, Tensor],
                buffers: Mapping[str, Tensor], args: Tuple[Any, ...]) -> Any:
    """``template(*args)`` with its parameters and buffers bound to ``params`` / ``buffers`` for the call.

    What ``torch.func.functional_call`` does, without its per-call bookkeeping (about 2 ms per call of
    a U-Net on CPU, a few % of a fit step): the template is the stack's own architecture-only copy,
    with no tied or parametrised tensors, so binding is a dictionary assignment per tensor.
    """
    param_slots, buffer_slots = slots
    try:
        for module, leaf, name, _ in param_slots:
            module._parameters[leaf] = params[name]
        for module, leaf, name, _ in buffer_slots:
            module._buffers[leaf] = buffers[name]
        return template(*args)
    finally:
        for module, leaf, _, meta in param_slots:
            module._parameters[leaf] = meta
        for module, leaf, _, meta in buffer_slots:
            module._buffers[leaf] = meta


# ----------------------------------------------------------------------------- convolution of stacked copies


def is_batched(t: Tensor) -> bool:
    """Whether ``t`` is a tensor under ``vmap`` (one slice of a batched tensor), e.g. in a stacked copy."""
    check = getattr(getattr(torch._C, "_functorch", None), "is_batchedtensor", None)
    return bool(check is not None and check(t))


def _grouped_conv_rule(info: Any, in_dims: Tuple[Optional[int], ...], x: Tensor, weight: Tensor,
                       stride: List[int], padding: List[int], dilation: List[int]) -> Tuple[Tensor, int]:
    """vmap rule: copies m = 1..M of (x_m, w_m) as one channels-last grouped convolution."""
    x_dim, w_dim = in_dims[0], in_dims[1]
    count = info.batch_size
    if w_dim is None:  # shared weights: fold the copies into the batch
        x = x.movedim(x_dim, 0)
        out = F.conv2d(x.flatten(0, 1), weight, None, stride, padding, dilation)
        return out.unflatten(0, (count, x.shape[1])), 0
    weight = weight.movedim(w_dim, 0)
    x = x.movedim(x_dim, 0) if x_dim is not None else x.expand(count, *x.shape)
    batch, channels, height, width = x.shape[1:]
    out_channels = weight.shape[1]
    x = x.movedim(0, 1).reshape(batch, count * channels, height, width).contiguous(memory_format=torch.channels_last)
    weight = weight.reshape(count * out_channels, *weight.shape[2:]).contiguous(memory_format=torch.channels_last)
    out = F.conv2d(x, weight, None, stride, padding, dilation, groups=count)
    return out.unflatten(1, (count, out_channels)).movedim(1, 0).contiguous(), 0


_stacked_conv2d = None
if hasattr(torch.library, "custom_op") and hasattr(torch.library, "register_vmap"):

    @torch.library.custom_op("ugodit_pl::stacked_conv2d", mutates_args=())
    def _stacked_conv2d(x: Tensor, weight: Tensor, stride: List[int], padding: List[int], dilation: List[int]) -> Tensor:
        # Only ever called under vmap, where the rule below runs instead; this is the unbatched meaning.
        return F.conv2d(x, weight, None, stride, padding, dilation)

    @_stacked_conv2d.register_fake
    def _(x: Tensor, weight: Tensor, stride: List[int], padding: List[int], dilation: List[int]) -> Tensor:
        size = [
            (x.shape[2 + k] + 2 * padding[k] - dilation[k] * (weight.shape[2 + k] - 1) - 1) // stride[k] + 1
            for k in range(2)
        ]
        return x.new_empty(x.shape[0], weight.shape[0], *size)

    def _setup_context(ctx: Any, inputs: Tuple[Any, ...], output: Tensor) -> None:
        x, weight, stride, padding, dilation = inputs
        ctx.save_for_backward(x, weight)
        ctx.settings = (stride, padding, dilation)

    def _backward(ctx: Any, grad: Tensor) -> Tuple[Optional[Tensor], ...]:
        # Used only where autograd sees the op itself (not the batched path of ModuleStack, whose
        # autograd records the grouped convolution that the vmap rule runs).
        x, weight = ctx.saved_tensors
        stride, padding, dilation = ctx.settings
        grad_x, grad_w, _ = torch.ops.aten.convolution_backward(
            grad, x, weight, None, stride, padding, dilation, False, [0, 0], 1,
            [ctx.needs_input_grad[0], ctx.needs_input_grad[1], False],
        )
        return grad_x, grad_w, None, None, None

    _stacked_conv2d.register_autograd(_backward, setup_context=_setup_context)
    _stacked_conv2d.register_vmap(_grouped_conv_rule)


class StackableConv2d(nn.Conv2d):
    """``nn.Conv2d`` (same parameters and state dict) that runs fast when copies are stacked on CPU.

    Outside ``vmap`` it is ``nn.Conv2d``. Under ``vmap`` with batched weights on CPU (as in
    :class:`ModuleStack`) and input channels not a multiple of 16, the M copies run as one grouped
    convolution in channels-last format (see ``STACKED_CONV_CHANNELS_LAST_ON_CPU``); autograd records
    that convolution, so the gradients are those of M separate convolutions.

    >>> conv = StackableConv2d(3, 4, 3, padding=1)
    >>> conv(torch.randn(1, 3, 8, 8)).shape
    torch.Size([1, 4, 8, 8])
    """

    def _conv_forward(self, input: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
        if (
            _stacked_conv2d is not None
            and STACKED_CONV_CHANNELS_LAST_ON_CPU
            and input.device.type == "cpu"
            and self.groups == 1
            and self.in_channels % 16 != 0
            and self.padding_mode == "zeros"
            and not isinstance(self.padding, str)
            and is_batched(weight)
        ):
            out = _stacked_conv2d(input, weight, list(self.stride), list(self.padding), list(self.dilation))
            return out if bias is None else out + bias.view(1, -1, 1, 1)
        return super()._conv_forward(input, weight, bias)
