"""The package's structure rules (README "Design"): layers, light imports, module and function
sizes, documented errors.

Layers, lowest first: ``_version, errors, units, interrupts, progress`` < ``model`` < ``bids`` < ``plan`` <
``write`` < ``publish``, ``readback`` < ``report``, ``testing``, ``scale`` < ``api`` < ``cli``. A module
imports bids2hf modules of its own layer or below, never above (at any depth: lazy imports too).
"""

from __future__ import annotations

import ast
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import bids2hf
from bids2hf.model.format import MANIFEST_PATH
from bids2hf.testing.spec import GeneratedDataset
from helpers import with_sitecustomize

PACKAGE = Path(bids2hf.__file__).parent
LAYERS = {
    "bids2hf._version": 0,
    "bids2hf.errors": 0,
    "bids2hf.units": 0,
    "bids2hf.progress": 0,
    "bids2hf.interrupts": 0,
    "bids2hf.model": 1,
    "bids2hf.bids": 2,
    "bids2hf.plan": 3,
    "bids2hf.write": 4,
    "bids2hf.publish": 5,
    "bids2hf.readback": 5,
    "bids2hf.report": 6,
    "bids2hf.testing": 6,
    "bids2hf.scale": 6,  # [issue 14] the Dask engine: drives write/ and publish/targets/
    "bids2hf.conversion": 7,  # one conversion once planned: the steps api.convert runs
    "bids2hf.api": 7,
    "bids2hf.cli": 8,
    "bids2hf.__main__": 9,
    "bids2hf": 9,
}
#: same-layer packages that stay apart
SEPARATE = [("bids2hf.publish", "bids2hf.readback"), ("bids2hf.report", "bids2hf.testing")]
#: the way back reads the format (model/) and shares scan's walk, nothing else of bids/ --
#: but for bids.source [issue 15]: verify reads the BIDS side as scan does, local or from a URL
#: (bids/source obeys bids/walk's limits: the standard library, errors and model/; fsspec lazily)
READBACK_MAY_IMPORT = ("bids2hf.model", "bids2hf.errors", "bids2hf.units", "bids2hf.progress",
                       "bids2hf._version", "bids2hf.readback", "bids2hf.bids.walk",
                       "bids2hf.bids.source")  # fmt: skip
#: modules over 400 lines, each with the reason it is not split yet (none left)
LONG_MODULES: dict[str, str] = {}
#: functions over 60 lines with no ``# long because:`` comment, each with the reason it stays
LONG_FUNCTIONS: dict[str, str] = {}
#: public functions that raise with no "Raises" in their docstring, each with its reason
UNDOCUMENTED_RAISES: dict[str, str] = {}
#: what a function raises to say "cannot happen" or "subclass must implement", not an error
#: of its own to document
NOT_DOCUMENTED = {"AssertionError", "NotImplementedError"}
#: classes implementing a third-party interface: their methods raise what that interface says
#: (fsspec's AbstractFileSystem: FileNotFoundError, OSError for a read-only filesystem)
#: (io.RawIOBase: OSError) [issue 15]
INTERFACES = {"bids2hf.readback.bids_fs.BidsHfFileSystem", "bids2hf.bids.remote_files.RangeFile"}
MAX_FUNCTION_LINES = 60
HEAVY = ("datasets", "pandas", "pyarrow", "nibabel", "numpy", "huggingface_hub", "fsspec",
         "bidsschematools")  # fmt: skip


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


MODULES = _modules()


def _imports(path: Path) -> list[tuple[str, int, bool]]:
    """(module, line, top_level) for every import in the file, relative ones resolved."""
    tree = ast.parse(path.read_text())
    top = {id(n) for n in tree.body}  # run on import (TYPE_CHECKING blocks do not)
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno, id(node) in top) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}:{node.lineno}: relative import (use bids2hf.…)"
            mod = node.module or ""
            names = [f"{mod}.{a.name}" for a in node.names]
            # `from bids2hf.model import format` imports a module; `from x import name` a name
            out += [(n if n in MODULES else mod, node.lineno, id(node) in top) for n in names]
    return out


def _layer(name: str) -> int:
    best = max((p for p in LAYERS if name == p or name.startswith(p + ".")), key=len)
    return LAYERS[best]


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def test_layers_point_down() -> None:
    wrong = []
    for name, path in MODULES.items():
        for imported, line, _top in _imports(path):
            if not _within(imported, "bids2hf") or imported == "bids2hf":
                continue
            if _layer(imported) > _layer(name):
                wrong.append(
                    f"{name}:{line} imports {imported} (layer {_layer(imported)} > {_layer(name)})"
                )
            for a, b in SEPARATE:
                if (_within(name, a) and _within(imported, b)) or (
                    _within(name, b) and _within(imported, a)
                ):
                    wrong.append(f"{name}:{line} imports {imported}: {a} and {b} stay apart")
    assert not wrong, "\n".join(wrong)


def test_the_way_back_reads_the_format_only() -> None:
    wrong = [
        f"{name}:{line} imports {imported}"
        for name, path in MODULES.items()
        if _within(name, "bids2hf.readback")
        for imported, line, _ in _imports(path)
        if _within(imported, "bids2hf")
        and not any(_within(imported, p) for p in READBACK_MAY_IMPORT)
    ]
    walk = MODULES["bids2hf.bids.walk"]
    wrong += [
        f"bids2hf.bids.walk:{line} imports {imported}"
        for imported, line, _ in _imports(walk)
        if imported.split(".")[0] in HEAVY
        or (
            _within(imported, "bids2hf")
            and not _within(imported, "bids2hf.model")
            and imported != "bids2hf.errors"
        )
    ]
    # [issue 15] bids/source, which verify imports too: bids/walk's limits, plus bids/walk, and
    # the fsspec implementation only when a URL is opened (not at the top of the module)
    wrong += [
        f"bids2hf.bids.source:{line} imports {imported}"
        for imported, line, top in _imports(MODULES["bids2hf.bids.source"])
        if imported.split(".")[0] in HEAVY
        or (
            _within(imported, "bids2hf")
            and not _within(imported, "bids2hf.model")
            and imported not in ("bids2hf.errors", "bids2hf.bids.walk")
            and (top or imported != "bids2hf.bids.source_fsspec")
        )
    ]
    assert not wrong, "\n".join(wrong)


def test_heavy_libraries_stay_where_they_belong() -> None:
    """datasets only in reports (the previews; plan/features.py describes the columns without
    it); pandas nowhere; write/ and model/ (what every spawned shard writer imports) never
    import datasets, nibabel, huggingface_hub or the schema at the top of a module; scale/
    (what Dask workers unpickle) never imports nibabel, at any depth [issue 14]."""
    wrong = []
    for name, path in MODULES.items():
        for imported, line, top in _imports(path):
            root = imported.split(".")[0]
            if root == "pandas":
                wrong.append(f"{name}:{line} imports pandas")
            if root == "datasets" and not _within(name, "bids2hf.report"):
                wrong.append(f"{name}:{line} imports datasets")
            if (
                top
                and root in ("datasets", "nibabel", "huggingface_hub", "bidsschematools")
                and (_within(name, "bids2hf.write") or _within(name, "bids2hf.model"))
            ):
                wrong.append(f"{name}:{line} imports {root}")
            if root == "nibabel" and _within(name, "bids2hf.scale"):
                wrong.append(f"{name}:{line} imports {root}")
    assert not wrong, "\n".join(wrong)


def _loaded_after(statement: str) -> list[str]:
    code = f"import sys\n{statement}\nprint(' '.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return out.stdout.split()


@pytest.mark.parametrize(
    ("statement", "forbidden"),
    [
        ("import bids2hf.cli", HEAVY),  # `bids2hf --help` stays quick
        (
            "import bids2hf.write.workers",
            ("datasets", "pandas", "nibabel", "huggingface_hub", "bidsschematools"),
        ),
        ("import bids2hf", HEAVY),
        # [issue 14] what a Dask worker loads to unpickle a task
        ("import bids2hf.scale.dask_tasks", ("datasets", "pandas", "nibabel")),
        ("import bids2hf.scale.dask_engine", ("datasets", "pandas", "nibabel", "distributed")),
    ],
)
def test_light_imports(statement: str, forbidden: tuple[str, ...]) -> None:
    loaded = {m.split(".")[0] for m in _loaded_after(statement)}
    assert not loaded & set(forbidden), f"{statement} loads {sorted(loaded & set(forbidden))}"


#: runs the command line in this process, then prints which of `datasets` and pandas it loaded
_RUN_AND_REPORT = """
import runpy, sys
sys.argv = ["bids2hf", *sys.argv[1:]]
try:
    runpy.run_module("bids2hf", run_name="__main__")
finally:
    print("LOADED", *sorted({m.split(".")[0] for m in sys.modules} & {"datasets", "pandas"}))
"""


@pytest.mark.parametrize(
    ("command", "forbidden"),
    [
        # pyarrow imports pandas at its first pa.array/pa.scalar or write of an empty table: the
        # writer builds its arrays from buffers instead (write/arrays.py)
        (["convert", "{bids}", "{new}", "-q"], {"datasets", "pandas"}),
        (["convert", "{bids}", "{new}", "-q", "-j", "2"], {"datasets", "pandas"}),
        (["inspect", "{bids}"], {"datasets", "pandas"}),
        (["verify", "{bids}", "{out}", "-q"], {"datasets", "pandas"}),
        (["export", "{out}", "{new}", "-q"], {"datasets", "pandas"}),
        (["push", "{out}", "file://{new}", "--dry-run", "-q"], {"datasets", "pandas"}),
        # README "Start-up": every command, not only those above
        (["push", "{copy}", "file://{new}", "-q"], {"datasets", "pandas"}),
        (["report", "{copy}", "-q"], {"datasets", "pandas"}),
        (["report", "{copy}", "--bids", "{bids}", "-q"], {"datasets", "pandas"}),
        (["demo", "{new}", "-q"], {"datasets", "pandas"}),
        (["mount", "--help"], {"datasets", "pandas"}),
    ],
    ids=lambda v: v[0] if isinstance(v, list) else "+".join(sorted(v)),
)
def test_commands_do_not_load_datasets_or_pandas(
    command: list[str],
    forbidden: set[str],
    synthetic: GeneratedDataset,
    converted_raw: Path,
    tmp_path: Path,
) -> None:
    """Issue 11 (5): importing `datasets` and pandas took 0.55 s of every command; writing the
    Hub's feature metadata needs neither (plan/features.py)."""
    bids, out = synthetic.root, converted_raw
    copy = tmp_path / "copy"  # for the commands that write into the output (report, push)
    if any("{copy}" in a for a in command):
        shutil.copytree(out, copy)
    args = [a.format(bids=bids, out=out, new=tmp_path / "new", copy=copy) for a in command]
    run = subprocess.run(
        [sys.executable, "-c", _RUN_AND_REPORT, *args], capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr
    loaded = set(run.stdout.splitlines()[-1].split()[1:])
    assert not loaded & forbidden, f"bids2hf {command[0]} loads {sorted(loaded & forbidden)}"
    if command[0] in ("push", "demo") and "--dry-run" not in command:
        assert (tmp_path / "new" / MANIFEST_PATH).is_file() or (
            tmp_path / "new" / "hf" / MANIFEST_PATH
        ).is_file(), "the command did not run to the end"
    if command[0] == "report":
        assert (copy / "report" / "index.html").is_file()


def test_mount_does_not_load_datasets_or_pandas(converted_ranges: Path, tmp_path: Path) -> None:
    """README "Start-up" for ``mount``: a real mount that serves a file, then SIGTERM (skips
    where FUSE cannot work here; ``mount --help`` is covered above)."""
    from test_mount import T1W, _fuse_usable

    if _fuse_usable() is not None:
        pytest.skip(str(_fuse_usable()))
    point = tmp_path / "mnt"
    point.mkdir()
    proc = subprocess.Popen(
        [sys.executable, "-c", _RUN_AND_REPORT, "mount", str(converted_ranges), str(point)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not os.path.ismount(point):
            assert proc.poll() is None, proc.communicate()[1]
            assert time.monotonic() < deadline, "not mounted after 60 s"
            time.sleep(0.05)
        assert (point / T1W).read_bytes()[:2] == b"\x1f\x8b"
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        if os.path.ismount(point):  # never leave a mount behind, even when failing
            subprocess.run(["fusermount3", "-u", "-z", str(point)], check=False)
    assert proc.returncode == 0, stderr
    loaded = set(stdout.splitlines()[-1].split()[1:])
    assert not loaded & {"datasets", "pandas"}, f"bids2hf mount loads {sorted(loaded)}"


def test_every_folder_is_a_package_with_a_docstring_only() -> None:
    for folder in sorted(p for p in PACKAGE.rglob("*") if p.is_dir() and p.name != "__pycache__"):
        if folder.name == "examples":
            continue
        init = folder / "__init__.py"
        assert init.is_file(), f"{folder}: no __init__.py (setuptools would leave it out)"
        if folder.name == "cli":
            continue  # exports main for the entry point
        body = ast.parse(init.read_text()).body
        assert len(body) == 1 and isinstance(body[0], ast.Expr), f"{init}: a docstring only"


def test_public_modules_declare_all() -> None:
    missing = []
    for name, path in MODULES.items():
        if name.rsplit(".", 1)[-1].startswith("_") or path.name == "__init__.py":
            continue
        tree = ast.parse(path.read_text())
        public = [
            n.name
            for n in tree.body
            if isinstance(n, (ast.FunctionDef, ast.ClassDef)) and not n.name.startswith("_")
        ]
        has_all = any(
            isinstance(n, (ast.Assign, ast.AnnAssign))
            and "__all__" in ast.unparse(n.targets[0] if isinstance(n, ast.Assign) else n.target)
            for n in tree.body
        )
        if public and not has_all:
            missing.append(name)
        assert ast.get_docstring(tree), f"{name}: no module docstring"
    assert not missing, f"no __all__ in {missing}"


def test_module_sizes() -> None:
    long = {
        name: len(path.read_text().splitlines())
        for name, path in MODULES.items()
        if len(path.read_text().splitlines()) > 400
    }
    assert set(long) <= set(LONG_MODULES), f"modules over 400 lines: {long}"


def _functions(
    tree: ast.AST, prefix: str = ""
) -> Iterator[tuple[str, ast.FunctionDef | ast.AsyncFunctionDef]]:
    """(qualified name, node) of every function and method, nested ones too."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield prefix + node.name, node
            yield from _functions(node, f"{prefix}{node.name}.")
        elif isinstance(node, ast.ClassDef):
            yield from _functions(node, f"{prefix}{node.name}.")


def _says_why_long(lines: list[str], node: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    """A ``# long because:`` comment on the line before the def (or its decorators), or in the
    def's first lines: its signature, its docstring and the two lines after."""
    start = min([node.lineno] + [d.lineno for d in node.decorator_list])
    first = node.body[0]
    is_doc = isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant)
    end = (first.end_lineno or first.lineno) + 2 if is_doc else first.lineno + 1
    return any("# long because:" in line for line in lines[max(start - 2, 0) : end])


def _long_functions() -> dict[str, int]:
    out = {}
    for name, path in MODULES.items():
        text = path.read_text()
        lines = text.splitlines()
        for qualname, node in _functions(ast.parse(text)):
            length = (node.end_lineno or node.lineno) - node.lineno + 1
            if length > MAX_FUNCTION_LINES and not _says_why_long(lines, node):
                out[f"{name}.{qualname}"] = length
    return out


def test_long_functions_say_why() -> None:
    long = _long_functions()
    new = {k: v for k, v in long.items() if k not in LONG_FUNCTIONS}
    assert not new, (
        f"functions over {MAX_FUNCTION_LINES} lines: {new}; split them into named steps, or put a "
        "`# long because: ...` comment on the line before the def"
    )
    gone = set(LONG_FUNCTIONS) - set(long)
    assert not gone, f"no longer long (or now say why): remove {sorted(gone)} from LONG_FUNCTIONS"


def _raised(node: ast.FunctionDef | ast.AsyncFunctionDef) -> set[str]:
    """Names of the exceptions the function's own body raises (not nested functions'; a bare
    ``raise`` re-raises what a caller already knows about)."""
    out = set()
    todo: list[ast.AST] = list(node.body)
    while todo:
        n = todo.pop()
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
            continue
        if isinstance(n, ast.Raise) and n.exc is not None:
            out.add(ast.unparse(n.exc.func if isinstance(n.exc, ast.Call) else n.exc))
        todo.extend(ast.iter_child_nodes(n))
    return out - NOT_DOCUMENTED


def _public_functions(
    tree: ast.Module,
) -> Iterator[tuple[str, ast.FunctionDef | ast.AsyncFunctionDef]]:
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and not node.name.startswith(
            "_"
        ):
            yield node.name, node
        elif isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
            for m in node.body:
                if isinstance(m, (ast.FunctionDef, ast.AsyncFunctionDef)) and not m.name.startswith(
                    "_"
                ):
                    yield f"{node.name}.{m.name}", m


def _undocumented_raises() -> dict[str, list[str]]:
    out = {}
    for name, path in MODULES.items():
        if any(part.startswith("_") for part in name.split(".")):
            continue  # private module
        for qualname, node in _public_functions(ast.parse(path.read_text())):
            if f"{name}.{qualname}".rsplit(".", 1)[0] in INTERFACES:
                continue
            raised = _raised(node)
            if raised and "Raises" not in (ast.get_docstring(node) or ""):
                out[f"{name}.{qualname}"] = sorted(raised)
    return out


def test_public_functions_document_what_they_raise() -> None:
    undocumented = _undocumented_raises()
    new = {k: v for k, v in undocumented.items() if k not in UNDOCUMENTED_RAISES}
    assert not new, f"public functions that raise with no `Raises:` in their docstring: {new}"
    gone = set(UNDOCUMENTED_RAISES) - set(undocumented)
    assert not gone, f"documented now: remove {sorted(gone)} from UNDOCUMENTED_RAISES"


def test_the_checks_see_what_they_look_for() -> None:
    """The two checks above on made-up code: they must be able to fail."""
    src = (
        'def f(x):\n    """Doc."""\n    if x:\n        raise ValueError(x)\n' + "    x += 1\n" * 60
    )
    tree = ast.parse(src)
    node = next(n for _, n in _functions(tree))
    assert _raised(node) == {"ValueError"}
    assert not _says_why_long(src.splitlines(), node)
    why = "# long because: a table\n" + src
    assert _says_why_long(why.splitlines(), next(n for _, n in _functions(ast.parse(why))))
    assert dict(_public_functions(tree)).keys() == {"f"}


#: in a process started by multiprocessing (a shard-writing worker), writes at exit the top-level
#: modules it loaded to $BIDS2HF_TEST_MODULES/<pid>.txt
_REPORT_WORKER_MODULES = """
import atexit, os, sys

def _report():
    import multiprocessing
    if multiprocessing.parent_process() is None:
        return
    path = os.path.join(os.environ["BIDS2HF_TEST_MODULES"], f"{os.getpid()}.txt")
    with open(path, "w") as f:
        f.write(" ".join(sorted({m.split(".")[0] for m in sys.modules})))

atexit.register(_report)
"""


@pytest.mark.parametrize(
    ("previews", "forbidden", "somewhere"),
    [
        (["--previews", "0"], {"datasets", "pandas", "nibabel", "PIL"}, set()),
        # a worker that makes a thumbnail loads nibabel and Pillow
        ([], {"datasets", "pandas"}, {"nibabel", "PIL"}),
    ],
    ids=["previews-0", "default"],
)
def test_workers_load_neither_datasets_nor_pandas(
    previews: list[str],
    forbidden: set[str],
    somewhere: set[str],
    synthetic: GeneratedDataset,
    tmp_path: Path,
) -> None:
    """What the README says of `-j 2`, checked inside the spawned workers themselves."""
    report = tmp_path / "modules"
    report.mkdir()
    env = dict(
        with_sitecustomize(tmp_path, _REPORT_WORKER_MODULES), BIDS2HF_TEST_MODULES=str(report)
    )
    args = ["convert", str(synthetic.root), str(tmp_path / "out"), "-q", "-j", "2"]
    run = subprocess.run(
        [sys.executable, "-m", "bids2hf", *args, "--max-shard-size", "200kB", *previews],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    workers = {p.stem: set(p.read_text().split()) for p in report.glob("*.txt")}
    assert len(workers) == 2, f"expected two workers to report, got {sorted(workers)}"
    for pid, loaded in workers.items():
        assert {"pyarrow", "numpy"} <= loaded
        assert not loaded & forbidden, f"worker {pid} loads {sorted(loaded & forbidden)}"
    assert somewhere <= set().union(*workers.values())
