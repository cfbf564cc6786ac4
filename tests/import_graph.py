"""The import graph of the installed ``mtdp_hub`` package, read from its source files.

Every ``import`` statement counts, also those inside functions, so a cycle cannot hide in a
function body. Used by ``tests/test_layering.py`` and by CI's wheel check on the installed wheel.
"""

from __future__ import annotations

import ast
import importlib.util
import sys
from pathlib import Path

PACKAGE = 'mtdp_hub'
# Layer of each part: a module may import only modules of its own layer or a lower one.
TOP = (
    'mtdp_hub.cli',
    'mtdp_hub.transfer',
    'mtdp_hub.extract',
    'mtdp_hub.slides',
)  # command line, former names
LAYERS = {'core': 0, 'features': 1, 'evaluation': 2, 'top': 3}


def layer_of(module: str) -> str:
    if module.startswith(TOP) or module in TOP:
        return 'top'
    for part in ('features', 'evaluation'):
        if module == f'{PACKAGE}.{part}' or module.startswith(f'{PACKAGE}.{part}.'):
            return part
    return 'core'


def package_modules() -> dict[str, Path]:
    """``{module name: source file}`` of the importable package (wherever it is installed)."""
    spec = importlib.util.find_spec(PACKAGE)
    root = Path(next(iter(spec.submodule_search_locations)))
    modules = {}
    for path in sorted(root.rglob('*.py')):
        parts = list(path.relative_to(root).with_suffix('').parts)
        if parts[-1] == '__init__':
            parts = parts[:-1]
        modules['.'.join([PACKAGE, *parts])] = path
    return modules


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ''
    base = module.split('.')
    base = base[: len(base) - node.level + (1 if is_package else 0)]
    return '.'.join(base + ([node.module] if node.module else []))


def imports_of(module: str, path: Path, known: set[str], module_level: bool = False) -> set[str]:
    """Every module ``module`` imports (absolute names; ``from X import Y`` is ``X.Y`` when that is a module).

    ``module_level``: only the imports that run when the module is imported (not those in functions).
    """
    is_package = path.name == '__init__.py'
    found = set()
    tree = ast.parse(path.read_text(encoding='utf-8'))
    for node in tree.body if module_level else ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(module, is_package, node)
            for alias in node.names:
                found.add(f'{base}.{alias.name}' if f'{base}.{alias.name}' in known else base)
    return found


def graph() -> dict[str, set[str]]:
    """``{module: the modules it imports}`` for every module of the package (all imports, any package)."""
    modules = package_modules()
    return {name: imports_of(name, path, set(modules)) for name, path in modules.items()}


def internal(g: dict[str, set[str]]) -> dict[str, set[str]]:
    return {m: {i for i in deps if i in g} for m, deps in g.items()}


def upward_imports(g: dict[str, set[str]]) -> list[str]:
    """Imports that point up a layer (core -> features, features -> evaluation, ... -> cli)."""
    bad = []
    for module, deps in internal(g).items():
        for dep in deps:
            if LAYERS[layer_of(dep)] > LAYERS[layer_of(module)]:
                bad.append(f'{module} ({layer_of(module)}) imports {dep} ({layer_of(dep)})')
    return sorted(bad)


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Import cycles between the package's modules (each reported once, as found by a depth-first walk)."""
    g = internal(g)
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    stack: list[str] = []
    found = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for dep in sorted(g[m]):
            if state.get(dep) == 1:
                found.append(stack[stack.index(dep) :] + [dep])
            elif dep not in state:
                visit(dep)
        stack.pop()
        state[m] = 2

    for m in sorted(g):
        if m not in state:
            visit(m)
    return found


def foreign_imports(g: dict[str, set[str]], forbidden=('training', 'benchmarks', 'tests')) -> list[str]:
    """Imports of the repository's non-package code from inside the package."""
    return sorted(f'{m} imports {d}' for m, deps in g.items() for d in deps if d.split('.')[0] in forbidden)


# What ``pip install mtdp-hub`` brings (setup.cfg install_requires), by import name, and the
# optional packages of the extras, which the package may import only inside functions.
REQUIRED = {'torch', 'timm', 'torchvision', 'safetensors', 'huggingface_hub', 'numpy', 'PIL'}
OPTIONAL = {'datasets', 'pyarrow', 'sklearn', 'matplotlib', 'tqdm'}
# A sub-package that is an extra of its own may import that extra at import time; nothing outside
# it imports the sub-package at import time (the command line imports it when the command runs).
EXTRA_PACKAGES = {'mtdp_hub.features.slides': {'openslide', 'h5py', 'skimage', 'scipy'}}


def undeclared_imports() -> list[str]:
    """Third-party imports the installed package would fail on: unknown ones anywhere, optional ones at import time."""
    modules = package_modules()
    bad = []
    for name, path in modules.items():
        extra = next(
            (libs for pkg, libs in EXTRA_PACKAGES.items() if name == pkg or name.startswith(pkg + '.')), set()
        )
        for level_only, allowed in ((False, REQUIRED | OPTIONAL | extra), (True, REQUIRED | extra)):
            for dep in imports_of(name, path, set(modules), module_level=level_only):
                top = dep.split('.')[0]
                if top not in sys.stdlib_module_names and top != PACKAGE and top not in allowed:
                    bad.append(f'{name} imports {dep}' + (' at import time' if level_only else ''))
                inside = any(name == p or name.startswith(p + '.') for p in EXTRA_PACKAGES)
                if (
                    level_only
                    and not inside
                    and any(dep == p or dep.startswith(p + '.') for p in EXTRA_PACKAGES)
                ):
                    bad.append(f'{name} imports the extra sub-package {dep} at import time')
    return sorted(set(bad))


def problems() -> list[str]:
    g = graph()
    return upward_imports(g) + [' -> '.join(c) for c in cycles(g)] + foreign_imports(g) + undeclared_imports()


if __name__ == '__main__':
    found = problems()
    print('\n'.join(found) or f'{PACKAGE}: {len(graph())} modules, every import points down, no cycle')
    raise SystemExit(1 if found else 0)
