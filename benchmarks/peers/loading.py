"""Loading a peer that is not installed: a wheel carried in <repo>/.whl is unpacked once into a folder under the
temp dir, and its package imported from there without putting that folder on sys.path (its own absolute imports of
`package.x` resolve through the package's __path__)."""
from __future__ import annotations

import glob
import importlib.util
import os
import shutil
import sys
import tempfile
import zipfile


REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def carried_wheel(pattern: str, env_var: str) -> str | None:
    """The wheel named by env_var, else the newest <repo>/.whl/<pattern>, else None."""
    explicit = os.environ.get(env_var)
    if explicit:
        return explicit
    wheels = sorted(glob.glob(os.path.join(REPO_ROOT, ".whl", pattern)))
    return wheels[-1] if wheels else None


def unpack_once(target: str, fill) -> str:
    """Makes folder `target` once with fill(folder), atomically: fill runs on a temp folder that is then renamed
    into place, so concurrent processes never see half a package. Returns target."""
    if os.path.exists(os.path.join(target, ".complete")):
        return target
    root = os.path.dirname(target)
    os.makedirs(root, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".unpack-", dir=root)
    fill(staging)
    open(os.path.join(staging, ".complete"), "w").close()
    try:
        os.rename(staging, target)
    except OSError:  # another process got there first
        shutil.rmtree(staging, ignore_errors=True)
    return target


def unpack_wheel(wheel: str, root: str) -> str:
    """Unpacks `wheel` (a zip of the site-packages layout) once into root/<wheel name>-<size>; returns that folder."""
    def fill(folder):
        with zipfile.ZipFile(wheel) as archive:
            archive.extractall(folder)
    return unpack_once(os.path.join(root, f"{os.path.basename(wheel)[:-len('.whl')]}-{os.path.getsize(wheel)}"),
                       fill)


def import_package(name: str, folder: str):
    """Imports package `name` from folder/name and registers it in sys.modules (an installed one is not replaced)."""
    if name in sys.modules:
        return sys.modules[name]
    package_dir = os.path.join(folder, name)
    spec = importlib.util.spec_from_file_location(name, os.path.join(package_dir, "__init__.py"),
                                                  submodule_search_locations=[package_dir])
    if spec is None:
        raise ImportError(f"no package {name!r} in {folder}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module
