"""``videoconv.fuse(model)``: run a model's Conv3d -> BatchNorm3d -> activation chains on fused ops.

How chains are found
--------------------
Each submodule is symbolically traced with ``torch.fx`` (torch.nn leaf modules — convs, norms,
activations, pools — stay leaves; Sequentials and custom blocks are traced through). In the graph
a chain is::

    Conv3d -> [BatchNorm3d] -> [ + residual ] -> [ReLU | SiLU]       (Identity modules skipped)

with every intermediate value used once. Two chains ``conv(1,k,k)->bn->act`` and
``conv(k,1,1)->bn->[+res]->act`` (or temporal first) with the same activation form a (2+1)D unit.
A Conv3d with neither BatchNorm nor activation after it (X3D's stem ``conv_t``, a 1x1x1
projection) still runs through the fused op, as kind ``conv`` (scale 1, shift = its bias,
identity): eager PyTorch returns NCDHW from some of these even for channels_last_3d inputs
(3-channel stems, depthwise convs on CPU), which silently turns the rest of the network
NCDHW; the fused op keeps the input's layout.

How they are replaced
---------------------
* Chains without a residual add, whose every step is a module call, are replaced *in place*
  (the block's ``forward`` is untouched): the conv's slot gets the fused module, the BN/act
  slots get ``nn.Identity``. When the chain is a whole ``nn.Sequential`` (torchvision's
  ``Sequential(Conv3d, BN, ReLU)``, ``Conv2Plus1D`` + BN + ReLU), the Sequential itself is
  replaced by a fused module whose children keep the Sequential's names (``0``, ``1``,
  ``0.0`` ...), so the ``state_dict`` keys do not change at all.
* Chains with a residual add (or a functional activation) are rewritten in the graph of the
  innermost block that contains the add; that block becomes an ``fx.GraphModule`` (same
  submodule paths; Python attributes of the block that are not modules are not kept).
* Modules that cannot be traced are searched structurally: ``nn.Sequential`` runs of
  Conv3d, BatchNorm3d, activation; and their children are visited in turn.
* Modules with hooks of their own (forward, forward pre-, backward) are not fused away: a fused
  module calls the fused op, not them, so their hooks would silently stop running. A Conv3d or
  BatchNorm3d with hooks is left alone (``fuse_report`` gives the reason), an activation with
  hooks stays after a chain fused with identity activation, and a Squeeze-and-Excitation block
  with a hooked module is not rewritten (``videoconv.nn._common.hooks_reason``). Global
  module hooks still run.

state_dict
----------
A fused model's ``state_dict`` has exactly the original model's keys, in the original order.
Where the fused module sits at the conv's old path (``conv_a`` holding ``conv_a.conv`` and
``conv_a.bn`` for pytorchvideo-style blocks), a state_dict post-hook and a load pre-hook on the
model returned by ``fuse`` map ``<conv path>.conv.*`` <-> ``<conv path>.*`` and
``<conv path>.bn.*`` <-> ``<bn path>.*`` (see :func:`state_dict_key_map`): the original
checkpoints load into the fused model and the fused model's checkpoints load into the original
one, ``strict=True``. (``named_parameters()`` shows the fused layout.)
"""

from __future__ import annotations

import copy
import operator
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from .nn import Conv2Plus1dBNAct, Conv3dBNAct, FusedModuleBase
from .nn.conv2plus1d_bn_act import split_2plus1d_convs
from .nn._common import hooks_reason as _hook_reason
from .nn.conv3d_bn_act import check_conv3d_for_fusion
from .ops.squeeze_excitation import fused_channel_mean, fused_scale_act

__all__ = ["fuse", "fuse_report", "FuseReport", "FusedChain", "LeftAlone", "state_dict_key_map"]


# ----------------------------------------------------------------------------------------------
# report


@dataclass
class FusedChain:
    """One fused chain: where the fused module is, its kind, and the original module paths."""

    path: str
    # "conv-bn-act", "conv-bn-add-act", "conv-act", "conv", "(2+1)d", "(2+1)d-add", or
    # "se-scale-act" (a Squeeze-and-Excitation block's pool and rescaling + activation)
    kind: str
    modules: Tuple[str, ...]
    activation: str
    note: str = ""

    def __str__(self) -> str:
        note = f"  ({self.note})" if self.note else ""
        return f"fused  {self.path or '<root>'}: {self.kind} [{self.activation}] <- {', '.join(self.modules)}{note}"


@dataclass
class LeftAlone:
    """A Conv3d or BatchNorm3d that still runs unfused, and why."""

    path: str
    module_type: str
    reason: str

    def __str__(self) -> str:
        return f"left   {self.path}: {self.module_type}: {self.reason}"


class FuseReport(list):
    """The entries of :func:`fuse_report`: :class:`FusedChain` then :class:`LeftAlone` items."""

    @property
    def fused(self) -> List[FusedChain]:
        return [e for e in self if isinstance(e, FusedChain)]

    @property
    def left(self) -> List[LeftAlone]:
        return [e for e in self if isinstance(e, LeftAlone)]

    def counts(self) -> Dict[str, int]:
        out: Dict[str, int] = {}
        for e in self.fused:
            out[e.kind] = out.get(e.kind, 0) + 1
        for e in self.left:
            key = f"left {e.module_type}"
            out[key] = out.get(key, 0) + 1
        return out

    def __str__(self) -> str:
        lines = [str(e) for e in self]
        summary = ", ".join(f"{k}: {v}" for k, v in self.counts().items())
        return "\n".join(lines + [f"summary: {summary or 'nothing to fuse'}"])


# ----------------------------------------------------------------------------------------------
# helpers


def _join(*parts: str) -> str:
    return ".".join(p for p in parts if p)


_CONTAINERS = (nn.Module, nn.Sequential, nn.ModuleList, nn.ModuleDict)


def _is_atomic(m: nn.Module) -> bool:
    """A leaf for tracing: fused modules, and torch.nn modules (and subclasses) that are not
    containers."""
    if isinstance(m, FusedModuleBase):
        return True
    if isinstance(m, (nn.Sequential, nn.ModuleList, nn.ModuleDict, fx.GraphModule)):
        return False
    return any(c.__module__.startswith(("torch.nn", "torch.ao.nn")) and c not in _CONTAINERS
               for c in type(m).__mro__)


def _is_sequential_forward(m: nn.Module) -> bool:
    return isinstance(m, nn.Sequential) and type(m).forward is nn.Sequential.forward


class _Tracer(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return _is_atomic(m)


def _set_submodule(root: nn.Module, path: str, new: nn.Module) -> None:
    parent_path, _, name = path.rpartition(".")
    parent = root.get_submodule(parent_path) if parent_path else root
    parent._modules[name] = new


_ACT_FUNCTIONS = {torch.relu: "relu", torch.relu_: "relu", F.relu: "relu", F.silu: "silu",
                  torch.nn.functional.relu_: "relu"}
_ADD_FUNCTIONS = (operator.add, operator.iadd, torch.add)


def _act_of(node: fx.Node, modules: Dict[str, nn.Module]) -> Optional[str]:
    if node.op == "call_module":
        m = modules.get(node.target)
        if isinstance(m, nn.ReLU):
            return "relu"
        if isinstance(m, nn.SiLU):
            return "silu"
    elif node.op == "call_function" and node.target in _ACT_FUNCTIONS:
        return _ACT_FUNCTIONS[node.target]
    elif node.op == "call_method" and node.target in ("relu", "relu_"):
        return "relu"
    return None


def _is_add(node: fx.Node) -> bool:
    if node.kwargs:
        return False
    if node.op == "call_function" and node.target in _ADD_FUNCTIONS:
        return len(node.args) == 2
    return node.op == "call_method" and node.target in ("add", "add_") and len(node.args) == 2


def _inplace_add(node: fx.Node) -> bool:
    return node.target is operator.iadd or node.target == "add_"


def _caller(node: fx.Node) -> str:
    """Path of the module whose forward contains ``node`` ("" for the traced module)."""
    stack = node.meta.get("nn_module_stack") or {}
    paths = [v[0] if isinstance(v, tuple) else k for k, v in stack.items()]
    if node.op == "call_module":
        paths = paths[:-1] if paths and paths[-1] == node.target else paths
    return paths[-1] if paths else ""


def _lca(paths: List[str]) -> str:
    split = [p.split(".") if p else [] for p in paths]
    out = []
    for parts in zip(*split):
        if all(p == parts[0] for p in parts):
            out.append(parts[0])
        else:
            break
    return ".".join(out)


def _reorder_like(new: nn.Module, old: nn.Module) -> None:
    """Give ``new``'s children (and the plain containers fx created) ``old``'s order, so the
    state_dict keys come in the original order."""
    order = {name: i for i, name in enumerate(old._modules)}
    items = sorted(new._modules.items(), key=lambda kv: order.get(kv[0], len(order)))
    new._modules.clear()
    new._modules.update(items)
    for name, child in new._modules.items():
        if type(child) is nn.Module and isinstance(old._modules.get(name), nn.Module):
            _reorder_like(child, old._modules[name])


@dataclass
class _Chain:
    nodes: List[fx.Node]  # in graph order, including skipped Identity nodes; last = output
    input: fx.Node
    convs: List[str]
    bns: List[Optional[str]]
    acts: List[Optional[str]]  # act module paths (None for functional/absent)
    activation: str
    residual: Optional[fx.Node] = None
    kind: str = ""
    note: str = ""
    functional: bool = False  # some step is not a module call

    @property
    def needs_graph(self) -> bool:
        return self.residual is not None or self.functional

    def members(self) -> List[str]:
        return [p for p in self.convs + self.bns + self.acts if p]


# -- Squeeze-and-Excitation ------------------------------------------------------------------

_SIGMOID_FUNCTIONS = (torch.sigmoid, torch.special.expit)
_MUL_FUNCTIONS = (operator.mul, torch.mul)


def _is_sigmoid(node: fx.Node, modules: Dict[str, nn.Module]) -> bool:
    if node.op == "call_module":
        return isinstance(modules.get(node.target), nn.Sigmoid)
    if node.op == "call_function":
        return node.target in _SIGMOID_FUNCTIONS
    return node.op == "call_method" and node.target == "sigmoid"


def _is_one(size) -> bool:
    return size == 1 or (isinstance(size, (tuple, list)) and list(size) == [1, 1, 1])


def _global_pool_input(node: fx.Node, modules: Dict[str, nn.Module]) -> Optional[fx.Node]:
    """The pooled tensor if ``node`` is a global average pool (``AdaptiveAvgPool3d(1)``)."""
    if node.op == "call_module":
        m = modules.get(node.target)
        ok = isinstance(m, nn.AdaptiveAvgPool3d) and _is_one(m.output_size) and len(node.args) == 1
    elif node.op == "call_function" and node.target is F.adaptive_avg_pool3d:
        size = node.args[1] if len(node.args) > 1 else node.kwargs.get("output_size")
        ok = _is_one(size)
    else:
        ok = False
    return node.args[0] if ok and isinstance(node.args[0], fx.Node) else None


def _se_channels(m: nn.Module) -> Optional[Tuple[Optional[int], Optional[int]]]:
    """(in, out) channels of a module an SE block applies to its pooled (N, C, 1, 1, 1) map
    (None for those that keep the channels), or None if it is not one of those."""
    conv = m.conv if isinstance(m, Conv3dBNAct) else m
    if isinstance(conv, nn.Conv3d):
        if (tuple(conv.kernel_size) != (1, 1, 1) or tuple(conv.stride) != (1, 1, 1)
                or conv.padding not in ((0, 0, 0), "valid")):
            return None
        return conv.in_channels, conv.out_channels
    if isinstance(m, (nn.ReLU, nn.SiLU, nn.Identity, nn.BatchNorm3d)):
        return None, None
    return None


def _se_pool(scale: fx.Node, x: fx.Node, modules: Dict[str, nn.Module]) -> Optional[fx.Node]:
    """The global pool of ``x`` that ``scale`` is computed from, if ``scale`` is an SE block's
    ``sigmoid(f(pool(x)))`` with ``f`` a chain of 1x1x1 convolutions, ReLU/SiLU, BatchNorm or
    Identity modules whose output has as many channels as ``x``: then ``scale`` has size
    (N, C, 1, 1, 1) for any input, which is what ``videoconv.scale_act`` takes."""
    if not _is_sigmoid(scale, modules) or len(scale.args) != 1:
        return None
    node, first_in, last_out = scale.args[0], None, None
    for _ in range(16):
        if not isinstance(node, fx.Node):
            return None
        if _global_pool_input(node, modules) is not None:
            if _global_pool_input(node, modules) is not x:
                return None
            if first_in is not None and last_out is not None and first_in != last_out:
                return None
            return node
        if node.op != "call_module" or len(node.args) != 1 or node.kwargs:
            return None
        channels = _se_channels(modules[node.target])
        if channels is None:
            return None
        if channels[1] is not None and last_out is None:
            last_out = channels[1]
        if channels[0] is not None:
            first_in = channels[0]
        node = node.args[0]
    return None


# ----------------------------------------------------------------------------------------------
# the fuser


class _Fuser:
    def __init__(self, backend: Optional[str]):
        self.backend = backend
        self.fused: List[FusedChain] = []
        self.reasons: Dict[str, str] = {}

    # -- chain finding -------------------------------------------------------------------

    def find_chains(self, module: nn.Module, graph: fx.Graph, prefix: str) -> List[_Chain]:
        modules = dict(module.named_modules(remove_duplicate=False))
        calls: Dict[str, int] = {}
        for n in graph.nodes:
            if n.op == "call_module":
                calls[n.target] = calls.get(n.target, 0) + 1

        def mod(n):
            return modules.get(n.target) if n.op == "call_module" else None

        def follow(n, skipped):
            """The sole user of n (skipping Identity modules), or None."""
            while True:
                users = list(n.users)
                if len(users) != 1:
                    return None
                u = users[0]
                if isinstance(mod(u), nn.Identity) and len(u.args) == 1 and not u.kwargs:
                    skipped.append(u)
                    n = u
                    continue
                return u

        def why(path, reason):
            self.reasons.setdefault(_join(prefix, path), reason)

        consumed = set()
        chains: List[_Chain] = []
        for n in graph.nodes:
            conv = mod(n)
            if not isinstance(conv, nn.Conv3d):
                continue
            path = n.target
            try:
                check_conv3d_for_fusion(conv)
            except ValueError as exc:
                why(path, str(exc).replace("videoconv.nn: conv ", ""))
                continue
            if calls[path] > 1:
                why(path, "module called more than once")
                continue
            if len(n.args) != 1 or n.kwargs:
                why(path, "unexpected call signature")
                continue
            nodes, skipped = [n], []
            nxt = follow(n, skipped)
            if nxt is None and len(n.users) > 1:
                why(path, "conv output used more than once")
                continue
            bn_path = None
            bn = mod(nxt) if nxt is not None else None
            if isinstance(bn, nn.BatchNorm3d) and calls[nxt.target] == 1:
                if bn.num_features != conv.out_channels or not bn.track_running_stats:
                    why(path, "BatchNorm does not match the conv or has no running statistics")
                    continue
                hooked = _hook_reason(bn)
                if hooked is not None:
                    why(nxt.target, hooked)
                    why(path, f"its BatchNorm {nxt.target} {hooked}")
                    continue
                nodes += skipped + [nxt]
                skipped = []
                bn_path = nxt.target
                last = nxt
                nxt = follow(nxt, skipped)
            else:
                last = n
            chain = _Chain(nodes=nodes, input=n.args[0], convs=[path], bns=[bn_path], acts=[None],
                           activation="identity")
            # optional residual add
            if nxt is not None and _is_add(nxt):
                a, b = nxt.args
                other = b if a is last else a
                ok = isinstance(other, fx.Node) and other is not last and (a is last or b is last)
                if ok and _inplace_add(nxt) and a is not last and len(other.users) > 1:
                    ok = False  # `residual += out`: other users see the mutated residual
                if ok and bn_path is not None:
                    chain.nodes += skipped + [nxt]
                    skipped = []
                    chain.residual = other
                    chain.functional = True
                    last = nxt
                    nxt = follow(nxt, skipped)
            act = _act_of(nxt, modules) if nxt is not None else None
            hooked = (_hook_reason(modules[nxt.target])
                      if act is not None and nxt.op == "call_module" else None)
            if hooked is not None:
                act = None  # left to run as it is, with its hooks
                chain.note = f"activation {nxt.target} {hooked}: fused with identity activation"
            if act is not None and (nxt.op != "call_module" or calls[nxt.target] == 1):
                chain.nodes += skipped + [nxt]
                chain.activation = act
                if nxt.op == "call_module":
                    chain.acts = [nxt.target]
                else:
                    chain.functional = True
            elif bn_path is None:
                chain.note = _LONE_CONV_NOTE
            elif nxt is None and len(last.users) > 1:
                chain.note = ("BN output used more than once (e.g. by Squeeze-and-Excitation "
                              "before the activation): fused with identity activation")
            elif nxt is not None and nxt.op == "call_module" and any(
                    True for _ in modules[nxt.target].parameters()):
                chain.note = (f"BN followed by {type(modules[nxt.target]).__name__} before the "
                              "activation: fused with identity activation")
            if bn_path is None:
                chain.kind = "conv-act" if chain.activation != "identity" else "conv"
            else:
                chain.kind = "conv-bn-add-act" if chain.residual is not None else "conv-bn-act"
            chains.append(chain)
            consumed.update(chain.members())

        chains = self._resolve_shared_adds(chains, modules)
        chains = self._merge_2plus1d(chains, modules)
        for n in graph.nodes:
            bn = mod(n)
            if isinstance(bn, nn.BatchNorm3d) and n.target not in consumed:
                src = n.args[0] if n.args else None
                srcm = mod(src) if isinstance(src, fx.Node) else None
                if isinstance(srcm, nn.Conv3d):
                    why(n.target, f"its conv {src.target} could not be fused: "
                        + self.reasons.get(_join(prefix, src.target), "see the conv"))
                elif calls.get(n.target, 0) > 1:
                    why(n.target, "module called more than once")
                else:
                    what = (type(srcm).__name__ if srcm is not None else
                            getattr(src, "op", "input") if src is not None else "input")
                    why(n.target, f"BatchNorm not after a Conv3d (its input is a {what})")
        return chains

    def _resolve_shared_adds(self, chains: List[_Chain], modules) -> List[_Chain]:
        """Two branches ending in BN can both reach the same ``a + b``: give the add (and the
        activation) to the branch with the larger conv kernel (the main branch, not the 1x1x1
        shortcut), the later one on a tie; the other keeps conv -> BN."""
        order = {}
        by_add: Dict[fx.Node, List[_Chain]] = {}
        for i, c in enumerate(chains):
            order[id(c)] = i
            if c.residual is not None:
                add = next(n for n in c.nodes if _is_add(n))
                by_add.setdefault(add, []).append(c)
        for add, rivals in by_add.items():
            if len(rivals) < 2:
                continue
            def rank(c):
                k = modules[c.convs[0]].kernel_size
                return (k[0] * k[1] * k[2], order[id(c)])
            rivals.sort(key=rank)
            for c in rivals[:-1]:
                cut = c.nodes.index(c.nodes[[n.target for n in c.nodes].index(c.bns[0])]) + 1
                c.nodes = c.nodes[:cut]
                c.residual, c.activation, c.acts, c.functional = None, "identity", [None], False
                c.kind = "conv-bn-act"
        return chains

    def _merge_2plus1d(self, chains: List[_Chain], modules) -> List[_Chain]:
        by_conv = {c.nodes[0]: c for c in chains}
        out, used = [], set()
        for a in chains:
            if id(a) in used:
                continue
            b = None
            if (a.residual is None and a.activation != "identity" and a.bns[0] is not None
                    and len(a.nodes[-1].users) == 1):
                b = by_conv.get(next(iter(a.nodes[-1].users)))
            if b is not None and id(b) not in used and b.activation == a.activation and b.bns[0]:
                try:
                    c1, c2 = modules[a.convs[0]], modules[b.convs[0]]
                    temporal_first, _, _ = split_2plus1d_convs(c1, c2)
                    t, s = (c1, c2) if temporal_first else (c2, c1)
                    if t.kernel_size[0] == 1 or s.kernel_size[1] * s.kernel_size[2] == 1:
                        b = None  # a 1x1x1 conv next to a spatial/temporal one: no (2+1)D unit
                except ValueError:
                    b = None
            else:
                b = None
            if b is None:
                out.append(a)
                continue
            used.update((id(a), id(b)))
            out.append(_Chain(nodes=a.nodes + b.nodes, input=a.input, convs=a.convs + b.convs,
                              bns=a.bns + b.bns, acts=a.acts + b.acts, activation=a.activation,
                              residual=b.residual, kind="(2+1)d-add" if b.residual is not None else "(2+1)d",
                              note=b.note, functional=a.functional or b.functional))
        return [c for c in out if id(c) not in used or c.kind.startswith("(2+1)d")]

    # -- building and placing ------------------------------------------------------------

    def _anchor(self, module: nn.Module, chain: _Chain) -> Optional[str]:
        """A Sequential whose leaves are exactly (a prefix-closed part of) the chain's modules,
        to be replaced as a whole (keeps the state_dict keys)."""
        members = chain.members()
        # the last activation may sit outside the Sequential (BasicBlock: relu after the add)
        inner = [p for p in members if p != chain.acts[-1]]
        anchor = _lca(inner)
        if anchor in members:
            return None
        m = module.get_submodule(anchor) if anchor else module
        if not _is_sequential_forward(m):
            return None
        for name, sub in m.named_modules():
            if not name or sub is m:
                continue
            if _is_atomic(sub):
                if _join(anchor, name) not in members:
                    return None
            elif not _is_sequential_forward(sub):
                return None
        # the Sequential's modules must be consecutive in the chain (in order), first = conv
        if not members or members[0] != chain.convs[0]:
            return None
        return anchor

    def _build(self, module: nn.Module, chain: _Chain, anchor: Optional[str]) -> FusedModuleBase:
        get = lambda p: None if p is None else module.get_submodule(p)  # noqa: E731

        def rel(p):
            return p[len(anchor) + 1:] if anchor else p

        if len(chain.convs) == 1:
            names = None
            if anchor is not None:
                names = {"conv": rel(chain.convs[0])}
                if chain.bns[0]:
                    names["bn"] = rel(chain.bns[0])
            fused = Conv3dBNAct.from_modules(get(chain.convs[0]), get(chain.bns[0]),
                                             chain.activation, names=names, backend=self.backend)
        else:
            names = None
            if anchor is not None:
                names = {"conv1": rel(chain.convs[0]), "bn1": rel(chain.bns[0]),
                         "conv2": rel(chain.convs[1]), "bn2": rel(chain.bns[1])}
            c1, c2 = get(chain.convs[0]), get(chain.convs[1])
            fused = Conv2Plus1dBNAct.from_modules(c1, get(chain.bns[0]), chain.activation, c2,
                                                  get(chain.bns[1]), chain.activation, names=names,
                                                  backend=self.backend)
        fused.fusion_kind = chain.kind
        fused.fusion_note = chain.note
        return fused

    def _place(self, module: nn.Module, chain: _Chain, prefix: str, with_identities: bool) -> str:
        anchor = self._anchor(module, chain)
        if anchor == "" and not with_identities:
            anchor = None  # graph mode: the traced module becomes a GraphModule anyway
        fused = self._build(module, chain, anchor)
        where = chain.convs[0] if anchor is None else anchor
        if where == "":
            self.replacement = fused  # the whole Sequential becomes the fused module
        else:
            _set_submodule(module, where, fused)
        if with_identities and where != "":
            for p in chain.members():
                if p != where and not (anchor and p.startswith(anchor + ".")):
                    _set_submodule(module, p, nn.Identity())
        origin = tuple(_join(prefix, p) for p in chain.convs + chain.bns if p)
        self.fused.append(FusedChain(_join(prefix, where), chain.kind, origin, chain.activation,
                                     chain.note))
        return where

    def _rewrite(self, module: nn.Module, graph: fx.Graph, chains: List[_Chain], prefix: str):
        for chain in chains:
            where = self._place(module, chain, prefix, with_identities=False)
            out = chain.nodes[-1]
            # The input and residual as the graph has them *now*: an earlier rewrite may have
            # replaced the node the chain was found with (a chain feeding this one).
            members = set(chain.nodes)
            inp = chain.nodes[0].args[0]
            args = (inp,)
            if chain.residual is not None:
                add = next(n for n in chain.nodes if _is_add(n))
                args = (inp, next(a for a in add.args if isinstance(a, fx.Node) and a not in members))
            with graph.inserting_before(out):
                new = graph.call_module(where, args)
            out.replace_all_uses_with(new)
            for n in reversed(chain.nodes):
                graph.erase_node(n)
        self._rewrite_squeeze_excitation(module, graph, prefix)
        # The traced forward's annotations (``x: torch.Tensor``) become a string global in the
        # code this torch's fx generates, which GraphModule's pickling cannot import: dropped,
        # so that a fused model can be saved whole with torch.save (they change nothing else).
        for n in graph.nodes:
            n.type = None
        graph.lint()
        name = type(module).__name__
        gm = fx.GraphModule(module, graph, class_name=name if name.endswith("Fused") else name + "Fused")
        gm.train(module.training)
        _reorder_like(gm, module)
        return gm

    def _rewrite_squeeze_excitation(self, module: nn.Module, graph: fx.Graph, prefix: str) -> None:
        """Squeeze-and-Excitation blocks, ``act(x * sigmoid(f(pool(x))))``: the global pool
        becomes ``videoconv.channel_mean`` and the rescaling with the ReLU/SiLU after it (if its
        only user) one ``videoconv.scale_act``, called through ``fused_channel_mean`` /
        ``fused_scale_act`` (see videoconv/ops/squeeze_excitation.py). Only in
        a graph being rewritten anyway (X3D's blocks: their residual add), and not with the
        ``reference`` backend forced, whose job is to run eager PyTorch's ops."""
        if self.backend == "reference":
            return
        modules = dict(module.named_modules(remove_duplicate=False))
        for mul in list(graph.nodes):
            if mul.op != "call_function" or mul.target not in _MUL_FUNCTIONS or mul.kwargs:
                continue
            if len(mul.args) != 2 or not all(isinstance(a, fx.Node) for a in mul.args):
                continue
            found = None
            for x, scale in (mul.args, mul.args[::-1]):
                pool = _se_pool(scale, x, modules)
                if pool is not None:
                    found = x, scale, pool
                    break
            if found is None:
                continue
            x, scale, pool = found
            users = list(mul.users)
            act_node = users[0] if len(users) == 1 else None
            activation = _act_of(act_node, modules) if act_node is not None else None
            if activation is None or act_node.args[:1] != (mul,) or len(act_node.args) != 1 or (
                    set(act_node.kwargs) - {"inplace"}):
                act_node, activation = None, "identity"
            parts = [n.target for n in (pool, scale, act_node)
                     if n is not None and n.op == "call_module"]
            hooked = [p for p in parts if _hook_reason(modules[p]) is not None]
            if hooked:  # left as it is: its modules' hooks keep running
                self.reasons.setdefault(_join(prefix, hooked[0]), _hook_reason(modules[hooked[0]]))
                continue
            with graph.inserting_before(pool):
                mean = graph.call_function(fused_channel_mean, (x,))
            pool.replace_all_uses_with(mean)
            graph.erase_node(pool)
            out = act_node if act_node is not None else mul
            with graph.inserting_before(out):
                new = graph.call_function(fused_scale_act, (x, scale, activation))
            out.replace_all_uses_with(new)
            if act_node is not None:
                graph.erase_node(act_node)
            graph.erase_node(mul)
            path = _lca(parts) if parts else ""
            self.fused.append(FusedChain(
                _join(prefix, path), "se-scale-act", tuple(_join(prefix, p) for p in parts),
                activation, "pool -> videoconv.channel_mean, x * scale -> videoconv.scale_act"))

    # -- walking -------------------------------------------------------------------------

    def process(self, module: nn.Module, prefix: str) -> nn.Module:
        """Fuse inside ``module`` (at ``prefix``); returns the module to put at that path."""
        if _is_atomic(module):
            return module
        self.replacement = None
        graph = None
        try:
            graph = _Tracer().trace(module)
        except Exception as exc:  # noqa: BLE001 - any tracing failure means "walk the children"
            self.untraceable = getattr(self, "untraceable", {})
            self.untraceable[prefix] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
        if graph is not None:
            chains = self.find_chains(module, graph, prefix)
            owned = [c for c in chains if c.needs_graph and
                     _lca([_caller(n) for n in c.nodes if n.op != "call_module"] + c.members()) == ""]
            if owned:
                return self._rewrite(module, graph, chains, prefix)
            for c in chains:
                if not c.needs_graph:
                    self._place(module, c, prefix, with_identities=True)
        elif _is_sequential_forward(module):
            self._sequential_runs(module, prefix)
        if self.replacement is not None:
            new, self.replacement = self.replacement, None
            return new
        for name, child in list(module.named_children()):
            new = self.process(child, _join(prefix, name))
            if new is not child:
                module._modules[name] = new
        return module

    def _sequential_runs(self, seq: nn.Sequential, prefix: str) -> None:
        """Structural fallback: Conv3d, [BatchNorm3d], [ReLU|SiLU] runs among a Sequential's children."""
        names = list(seq._modules)
        i = 0
        while i < len(names):
            conv = seq._modules[names[i]]
            if not isinstance(conv, nn.Conv3d):
                i += 1
                continue
            j = i + 1
            bn = None
            if j < len(names) and isinstance(seq._modules[names[j]], nn.BatchNorm3d):
                bn = names[j]
                j += 1
            act_name, act = None, "identity"
            if j < len(names):
                m = seq._modules[names[j]]
                act = "relu" if isinstance(m, nn.ReLU) else "silu" if isinstance(m, nn.SiLU) else None
                if act is not None and _hook_reason(m) is not None:
                    act = None  # left to run as it is, with its hooks
                if act is not None:
                    act_name = names[j]
                    j += 1
                else:
                    act = "identity"
            try:
                check_conv3d_for_fusion(conv)
                if bn is not None and (seq._modules[bn].num_features != conv.out_channels
                                       or not seq._modules[bn].track_running_stats):
                    raise ValueError("BatchNorm does not match the conv or has no running statistics")
                hooked = None if bn is None else _hook_reason(seq._modules[bn])
                if hooked is not None:
                    self.reasons.setdefault(_join(prefix, bn), hooked)
                    raise ValueError(f"its BatchNorm {bn} {hooked}")
            except ValueError as exc:
                self.reasons.setdefault(_join(prefix, names[i]), str(exc))
                i = j
                continue
            kind = "conv-bn-act" if bn is not None else "conv-act" if act_name else "conv"
            chain = _Chain(nodes=[], input=None, convs=[names[i]], bns=[bn], acts=[act_name],
                           activation=act, kind=kind,
                           note=_LONE_CONV_NOTE if kind == "conv" else "")
            self._place(seq, chain, prefix, with_identities=True)
            i = j


_LONE_CONV_NOTE = ("no BatchNorm3d or activation after it: run through the fused op as a plain "
                   "conv (keeps the input's memory format)")


# ----------------------------------------------------------------------------------------------
# state_dict key mapping


class _SaveHook:
    """state_dict post-hook: fused keys -> original keys, original order."""

    _from_public_api = True

    def __init__(self, fused_to_orig: Dict[str, str], order: List[str]):
        self.fused_to_orig = dict(fused_to_orig)
        self.order = {k: i for i, k in enumerate(order)}

    def __call__(self, module, state_dict, prefix, local_metadata):
        mine = [k for k in state_dict if k.startswith(prefix)]
        items = [(k, state_dict.pop(k)) for k in mine]
        renamed = []
        for k, v in items:
            local = k[len(prefix):]
            renamed.append((prefix + self.fused_to_orig.get(local, local), v))
        n = len(self.order)
        renamed.sort(key=lambda kv: self.order.get(kv[0][len(prefix):], n))
        for k, v in renamed:
            state_dict[k] = v


class _LoadHook:
    """load_state_dict pre-hook: original keys -> fused keys."""

    def __init__(self, fused_to_orig: Dict[str, str]):
        self.orig_to_fused = {o: f for f, o in fused_to_orig.items()}

    def __call__(self, state_dict, prefix, local_metadata, strict, missing_keys,
                 unexpected_keys, error_msgs):
        for orig, fused in self.orig_to_fused.items():
            key = prefix + orig
            if key in state_dict and prefix + fused not in state_dict:
                state_dict[prefix + fused] = state_dict.pop(key)


def _raw_state(root: nn.Module) -> List[Tuple[str, torch.Tensor]]:
    out = []
    for name, m in root.named_modules(remove_duplicate=False):
        for k, p in m._parameters.items():
            if p is not None:
                out.append((_join(name, k), p))
        for k, b in m._buffers.items():
            if b is not None and k not in m._non_persistent_buffers_set:
                out.append((_join(name, k), b))
    return out


def _remove_key_hooks(root: nn.Module) -> None:
    for hooks in (root._state_dict_hooks, root._load_state_dict_pre_hooks):
        for k in [k for k, h in hooks.items()
                  if isinstance(getattr(h, "hook", h), (_SaveHook, _LoadHook))]:
            del hooks[k]


def state_dict_key_map(model: nn.Module) -> Dict[str, str]:
    """Fused-layout key -> original key, for the keys a fused model renames in its
    ``state_dict`` (empty when its layout already has the original keys)."""
    for h in model._state_dict_hooks.values():
        if isinstance(h, _SaveHook):
            return dict(h.fused_to_orig)
    return {}


# ----------------------------------------------------------------------------------------------
# public API


def _run(model: nn.Module, backend: Optional[str], inplace: bool):
    if not isinstance(model, nn.Module):
        raise TypeError(f"videoconv.fuse expects an nn.Module, got {type(model).__name__}")
    if backend is not None:
        from . import backends

        backends.get_backend(backend)  # unknown names fail now, not at the first forward
    if inplace:
        return _fuse_root(model, backend)
    # The copy is made, and fused, outside inference_mode: called inside it (or given a model
    # built inside it), deepcopy would make every parameter and buffer an inference tensor,
    # which has no version counter. The fused modules could then never prepare a call, nor the
    # cpu backend cache a packed weight: both would be redone on every forward (x3d_s bfloat16
    # on the 2-core Zen 5: 84 against 24 ms a forward). Outside it, the copies are ordinary
    # tensors whatever the originals were, and the model runs under inference_mode as fast.
    with torch.inference_mode(False):
        return _fuse_root(_copy_model(model), backend)


def _copy_model(model: nn.Module) -> nn.Module:
    """``copy.deepcopy(model)``, also for models holding computed tensors as plain attributes.

    ``torch.nn.utils.prune`` and the older ``torch.nn.utils.weight_norm`` keep a module's
    ``weight`` as a tensor computed from its parameters (``weight_orig * weight_mask``), which
    autograd made and which a forward pre-hook recomputes on every call. Tensor's deepcopy
    refuses such non-leaf tensors, so the copy of a pruned model failed with torch's error. The
    copy gets a detached clone of each instead: the same values, and its own pre-hook recomputes
    it (with its graph) at its first forward."""
    memo: Dict[int, Any] = {}
    for module in model.modules():
        for value in vars(module).values():
            if isinstance(value, torch.Tensor) and not value.is_leaf and id(value) not in memo:
                memo[id(value)] = value.detach().clone()
    return copy.deepcopy(model, memo)


def _fuse_root(root: nn.Module, backend: Optional[str]):
    original = root.state_dict(keep_vars=True)  # original keys (through earlier hooks)
    order = list(original)
    key_of = {id(t): k for k, t in original.items()}
    _remove_key_hooks(root)
    fuser = _Fuser(backend)
    if isinstance(root, nn.Conv3d):
        result = root
    else:
        result = fuser.process(root, "")
    if result is not root:
        _remove_key_hooks(result)
    if backend is not None:
        for m in result.modules():
            if isinstance(m, FusedModuleBase):
                m.backend = backend
    mapping = {}
    for k, t in _raw_state(result):
        orig = key_of.get(id(t))
        if orig is not None and orig != k:
            mapping[k] = orig
    if mapping:
        result.register_state_dict_post_hook(_SaveHook(mapping, order))
        result._register_load_state_dict_pre_hook(_LoadHook(mapping))
    return result, fuser


def fuse(model: nn.Module, backend: Optional[str] = None, inplace: bool = False) -> nn.Module:
    """A model whose Conv3d -> BatchNorm3d -> (ReLU | SiLU | nothing) chains — with the
    residual add before the activation where a block has one — and (2+1)D units run on
    :mod:`videoconv.nn` fused modules (and so on :mod:`videoconv.ops`).

    Args:
        model: any ``nn.Module`` (videoconv's zoo, torchvision's video ResNets, pytorchvideo-style
            blocks ...).
        backend: a backend name; the fused modules then run under
            ``videoconv.backends.use(backend)``. Default: automatic selection.
        inplace: modify ``model`` itself. Default False: ``model`` is deep-copied and left as it
            was. The copy's parameters and buffers are ordinary tensors even when ``fuse`` is
            called under ``torch.inference_mode`` or ``model`` was built under it (inference
            tensors have no version counter, so the fused modules could not cache their
            prepared calls and packed weights). With ``inplace=True`` the parameters stay what
            they are.

    Returns:
        The fused model (``model`` itself with ``inplace=True``, unless the model's own forward
        had to be rewritten, in which case an ``fx.GraphModule``). Eval mode runs the fused
        kernels with folded BatchNorms; train mode keeps BatchNorm training semantics. Its
        ``state_dict`` has the original keys (see the module docstring). Fusing a fused model
        changes nothing. :func:`fuse_report` says what was fused and what was not, and why.
    """
    return _run(model, backend, inplace)[0]


def fuse_report(model: nn.Module, print_report: bool = False) -> FuseReport:
    """What :func:`fuse` does (or did) to ``model``: every chain fused, and every Conv3d and
    BatchNorm3d left alone with the reason. ``model`` is not changed.

    Works on an unfused model (what fusing would do) and on a fused one (its fused modules, and
    what is still unfused). Returns a :class:`FuseReport` (a list; ``str()`` is a table);
    ``print_report=True`` also prints it.
    """
    result, fuser = _run(model, None, inplace=False)
    report = FuseReport()
    new = {e.path for e in fuser.fused}
    for name, m in result.named_modules():
        if isinstance(m, FusedModuleBase) and name not in new:
            kind = getattr(m, "fusion_kind", None) or (
                "(2+1)d" if isinstance(m, Conv2Plus1dBNAct) else "conv-bn-act")
            subs = tuple(_join(name, v) for v in m.submodule_names().values() if v)
            report.append(FusedChain(name, kind, subs, m.activation,
                                     (getattr(m, "fusion_note", "") + " (already fused)").strip()))
    report.extend(sorted(fuser.fused, key=lambda e: e.path))
    untraceable = getattr(fuser, "untraceable", {})
    for name, m in result.named_modules(remove_duplicate=False):
        if isinstance(m, FusedModuleBase):
            continue
        if not isinstance(m, (nn.Conv3d, nn.BatchNorm3d)):
            continue
        inside = [p for p in untraceable if name.startswith(p + ".") or not p]
        reason = fuser.reasons.get(name)
        if reason is None:
            where = max(inside, key=len) if inside else None
            reason = (f"not traced ({untraceable[where]}) and not in a Conv3d/BN/act run of a "
                      "Sequential" if where is not None else "not reached by the fusion pass")
        report.append(LeftAlone(name, type(m).__name__, reason))
    # modules inside fused modules are fused, not left alone: drop those
    fused_paths = [n for n, m in result.named_modules() if isinstance(m, FusedModuleBase)]
    # (a fused root, a model that is one chain, has path "": everything is inside it)
    report[:] = [e for e in report if not (isinstance(e, LeftAlone) and any(
        not p or e.path.startswith(p + ".") for p in fused_paths))]
    if print_report:
        print(report)
    return report
