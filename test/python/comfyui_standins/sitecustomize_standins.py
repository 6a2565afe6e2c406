"""Import-only stand-ins for ComfyUI dependencies a CPU-only package mirror may lack (torchvision,
torchsde, kornia, spandrel). Only packages that are really missing are replaced: importing them
succeeds so ComfyUI's modules load; calling anything from them raises. The svdquant tests never use
these packages; ComfyUI imports them at module level for unrelated models and nodes."""
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import types

_CANDIDATES = ("torchvision", "torchsde", "kornia", "spandrel")
_ROOTS = {r for r in _CANDIDATES if importlib.util.find_spec(r) is None}


class _Missing:
    def __init__(self, name):
        self._name = name

    def __call__(self, *a, **k):
        raise RuntimeError(f"stand-in: {self._name} is not installed")

    def __getattr__(self, n):
        return _Missing(f"{self._name}.{n}")

    def __mro_entries__(self, bases):
        return (object,)


class _StubModule(types.ModuleType):
    def __getattr__(self, n):
        if n.startswith("__"):
            raise AttributeError(n)
        return _Missing(f"{self.__name__}.{n}")


class _Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path, target=None):
        if fullname.split(".")[0] in _ROOTS:
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec):
        m = _StubModule(spec.name)
        m.__path__ = []
        return m

    def exec_module(self, module):
        pass


if _ROOTS and not any(isinstance(f, _Finder) for f in sys.meta_path):
    sys.meta_path.insert(0, _Finder())
