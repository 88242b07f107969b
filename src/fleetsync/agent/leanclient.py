"""Import kubernetes_asyncio without its ~1,500 generated API and model modules, until someone needs them.

``import kubernetes_asyncio`` runs ``kubernetes_asyncio/client/__init__.py``, which imports
every generated API class and every model class: about 30 MiB of the agent's resident
memory (measured: 70 MiB for the agent's imports with them, 38 MiB without), paid in
every cluster of the fleet for code the agent never runs. The agent reads the API as
raw JSON (``ApiClient.call_api(..., _preload_content=False)``, see ``agent/kube.py``); it
needs the library's configuration, kubeconfig and auth handling, its HTTP session,
``ApiException`` and the dynamic client, none of which use the generated classes.

:func:`install` registers the packages ``kubernetes_asyncio``, ``kubernetes_asyncio.client``
and ``kubernetes_asyncio.client.models`` as lean modules: their submodules import as
usual (``from kubernetes_asyncio.client import rest``), and the first access to any other
name (``client.CoreV1Api``, ``client.V1Pod``, a typed answer the ApiClient deserializes)
runs the package's real ``__init__`` into the module, so such code still works, only no
longer for free. Nothing changes if the library was imported before :func:`install`.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from pathlib import Path
from typing import Any

PACKAGE = "kubernetes_asyncio"


class LeanPackage(types.ModuleType):
    """A package whose ``__init__`` runs only when a name it would define is asked for."""

    _loaded = False

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        folder = Path(self.__path__[0])
        if (folder / f"{name}.py").is_file() or (folder / name / "__init__.py").is_file():
            return importlib.import_module(f"{self.__name__}.{name}")
        if not self._loaded:
            self._loaded = True
            self.__spec__.loader.exec_module(self)  # type: ignore[union-attr]  # the real __init__, into this module
        try:
            return self.__dict__[name]
        except KeyError:
            raise AttributeError(f"module {self.__name__!r} has no attribute {name!r}") from None


def _lean(name: str, folder: Path) -> LeanPackage:
    spec = importlib.util.spec_from_file_location(name, folder / "__init__.py", submodule_search_locations=[str(folder)])
    assert spec is not None and spec.loader is not None, f"{folder} is not a package"
    module = LeanPackage(name)
    module.__spec__ = spec
    module.__file__ = spec.origin
    module.__path__ = [str(folder)]
    module.__package__ = name
    module.__loader__ = spec.loader
    sys.modules[name] = module
    return module


def install() -> bool:
    """Make later imports of kubernetes_asyncio lean; False if it was imported already (or is not installed)."""
    if PACKAGE in sys.modules:
        return False
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return False
    root = Path(next(iter(spec.submodule_search_locations)))
    top = _lean(PACKAGE, root)
    from importlib.metadata import version

    vars(top)["__version__"] = version(PACKAGE)  # (the dynamic client's discovery cache is keyed by it)
    client = _lean(f"{PACKAGE}.client", root / "client")
    _lean(f"{PACKAGE}.client.models", root / "client" / "models")
    # What ``from kubernetes_asyncio import client`` users of the lean client reach for.
    from kubernetes_asyncio.client.api_client import ApiClient
    from kubernetes_asyncio.client.configuration import Configuration
    from kubernetes_asyncio.client.exceptions import ApiException

    vars(client).update(ApiClient=ApiClient, Configuration=Configuration, ApiException=ApiException)
    return True
