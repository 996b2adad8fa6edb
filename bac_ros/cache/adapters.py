"""Block declarations: which methods of a model are its cacheable blocks, as data.

An adapter names a model's blocks (residual branches) by module path, method, layer index and
kind, with stable names for schedule files; it holds none of the model's maths (the engine runs
every model through the model's own per-step interface, see ``engine.py``). The package's own
models are registered here by class name, so this module imports no model; a new model is
registered from its own code with :func:`register_adapter`, or its adapter passed to the engine.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import nn

from bac_ros.cache.blocks import Block, BlockBinding


class BlockAdapter:
    """Names a model's blocks: :meth:`declare` lists them as ``(module_path, method, layer,
    kind[, name])`` in execution order; :meth:`bind` finds them on a model instance."""

    def declare(self, model: nn.Module) -> list[tuple]:
        raise NotImplementedError

    def bind(self, model: nn.Module) -> list[BlockBinding]:
        modules = dict(model.named_modules())
        bindings = []
        for decl in self.declare(model):
            path, method, layer, kind = decl[:4]
            if path not in modules:
                raise KeyError(f"block module {path!r} is not in the model")
            module = modules[path]
            if not callable(getattr(module, method, None)):
                raise AttributeError(f"module {path!r} has no method {method!r}")
            name = decl[4] if len(decl) > 4 else f"{path}.{method}"
            bindings.append(BlockBinding(Block(name, int(layer), kind), module, method))
        return bindings


class GenericAdapter(BlockAdapter):
    """Blocks of any transformer, declared one by one: ``(module_path, method, layer, kind)``.

    ``module_path`` is the dotted name from ``model.named_modules()``; ``method`` returns the
    residual branch (``x + method(...)`` in the model's forward) — ``"forward"`` when the branch
    is a submodule of its own. Each declared method must run exactly once per denoising step
    (one method per layer, not one shared by all layers). The block is named
    ``<module_path>.<method>`` unless a fifth element gives a name.
    """

    def __init__(self, declarations: Sequence[tuple]):
        self.declarations = [tuple(d) for d in declarations]

    def declare(self, model: nn.Module) -> list[tuple]:
        return self.declarations


class LayerAdapter(BlockAdapter):
    """Blocks declared per layer, for models whose layers sit in one list.

    ``LAYERS`` pairs candidate paths of that list with each layer's branches ``(kind, method,
    label)`` in execution order; the first path the model has is used. Layer ``l``'s branch is
    ``<path>.<l>``'s ``method``, named ``<path>.<l>.<label>``.
    """

    LAYERS: tuple[tuple[str, tuple[tuple[str, str, str], ...]], ...] = ()

    def declare(self, model: nn.Module) -> list[tuple]:
        modules = dict(model.named_modules())
        for path, branches in self.LAYERS:
            if path in modules:
                return [(f"{path}.{l}", method, l, kind, f"{path}.{l}.{label}")
                        for l in range(len(modules[path])) for kind, method, label in branches]
        raise KeyError(f"{type(model).__name__} has none of the layer lists "
                       f"{[path for path, _ in self.LAYERS]}")


class DPTAdapter(LayerAdapter):
    """DP-T: per decoder layer ``sa``/``ca``/``ffn`` (encoder layers ``sa``/``ffn`` when the model
    is encoder-only). Names: ``decoder.layers.<l>.{self_attn,cross_attn,ffn}``."""

    SA, CA, FFN = (("sa", "sa_branch", "self_attn"), ("ca", "ca_branch", "cross_attn"),
                   ("ffn", "ffn_branch", "ffn"))
    LAYERS = (("decoder.layers", (SA, CA, FFN)), ("encoder.layers", (SA, FFN)))


class RDTAdapter(LayerAdapter):
    """RDT-style head: per block ``sa``/``ca``/``ffn``, named ``model.blocks.<l>.{attn,
    cross_attn,ffn}`` (the modules' own state-dict paths)."""

    KINDS = (("sa", "sa_branch", "attn"), ("ca", "ca_branch", "cross_attn"),
             ("ffn", "ffn_branch", "ffn"))
    LAYERS = (("model.blocks", KINDS),)


# Model class name -> adapter factory (by name: cache/ imports no model).
ADAPTERS: dict[str, Callable[[], BlockAdapter]] = {"TransformerForDiffusion": DPTAdapter,
                                                   "RDTHead": RDTAdapter}


def register_adapter(model_class: type | str, factory: Callable[[], BlockAdapter]) -> None:
    """Make :func:`adapter_for` return ``factory()`` for models of this class (or a subclass)."""
    if not callable(factory):
        raise TypeError(f"factory must be callable and return a BlockAdapter; got "
                        f"{type(factory).__name__}")
    ADAPTERS[model_class if isinstance(model_class, str) else model_class.__name__] = factory


def adapter_for(model: nn.Module) -> BlockAdapter:
    """The registered adapter of the model's class or, failing that, of its nearest base."""
    for cls in type(model).__mro__:
        factory = ADAPTERS.get(cls.__name__)
        if factory is not None:
            return factory()
    raise TypeError(
        f"no block adapter is registered for {type(model).__name__}; pass a GenericAdapter "
        "declaring its blocks, or register one with register_adapter"
    )
