"""notebook.ipynb: it runs top to bottom, and the committed copy holds the outputs of one real run.

The run uses the notebook's tiny setting (NANORGRA_NB_SMALL=1: a tiny model, a temporary
directory), so it takes seconds to a minute on a CPU. The kernel is started with the interpreter
that runs pytest, so the notebook sees the same packages as the tests, whatever other "python3"
kernelspecs the machine has.
"""

import json
import sys
from pathlib import Path

import nbformat
from jupyter_client.kernelspec import KernelSpecManager
from nbclient import NotebookClient

REPO = Path(__file__).resolve().parent.parent
NOTEBOOK = REPO / "notebook.ipynb"
KERNEL = "python3"
CELL_TIMEOUT = 600  # seconds per cell: generous for a slow, shared CPU; the test measures no time


def code_cells(nb):
    return [c for c in nb.cells if c.cell_type == "code"]


def this_interpreter_kernel(tmp_path, monkeypatch):
    """A "python3" kernelspec that starts ipykernel with sys.executable, first on JUPYTER_PATH.

    Without it, jupyter_client picks the first "python3" spec it finds: usually the one ipykernel
    installs into the interpreter's prefix (share/jupyter/kernels, in a venv too), whose command
    "python" it maps to sys.executable; but a user-wide spec
    (~/.local/share/jupyter/kernels/python3) would win and could point at another Python.
    """
    spec_dir = tmp_path / "jupyter" / "kernels" / KERNEL
    spec_dir.mkdir(parents=True)
    spec = {"argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": "Python 3 (pytest's interpreter)", "language": "python"}
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    found = KernelSpecManager().get_kernel_spec(KERNEL)
    assert found.argv[0] == sys.executable, (f"the {KERNEL!r} kernelspec found is not ours: "
                                             f"{found.argv}")


def test_notebook_runs_top_to_bottom_without_errors(tmp_path, monkeypatch):
    this_interpreter_kernel(tmp_path, monkeypatch)
    monkeypatch.setenv("NANORGRA_NB_SMALL", "1")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(nb, kernel_name=KERNEL, timeout=CELL_TIMEOUT, allow_errors=False,
                            resources={"metadata": {"path": str(REPO)}})  # cwd: the repository root
    client.execute()  # raises CellExecutionError, naming the cell, on the first error
    errors = [o for c in code_cells(nb) for o in c.outputs if o.output_type == "error"]
    assert not errors, errors
    assert all(c.execution_count is not None for c in code_cells(nb))


def test_python3_kernel_is_found_without_our_kernelspec():
    """The default lookup also finds a python3 kernel (the spec ipykernel installs), as
    Jupyter users will run it."""
    assert KERNEL in KernelSpecManager().find_kernel_specs()


def test_committed_notebook_has_the_outputs_of_one_sequential_run():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    cells = code_cells(nb)
    assert cells, "the notebook has no code cells"
    counts = [c.execution_count for c in cells]
    in_order = list(range(1, len(cells) + 1))
    assert counts == in_order, f"execution counts are not 1..{len(cells)} in order: {counts}"
    empty = [i for i, c in enumerate(cells) if not c.outputs]
    assert not empty, f"code cells without saved outputs: {empty}"
    errors = [o for c in cells for o in c.outputs if o.output_type == "error"]
    assert not errors, "the saved outputs contain an error"
    text = "".join(o.get("text", "") for c in cells for o in c.outputs if o.output_type == "stream")
    assert "small setting" not in text, ("the saved outputs come from the tiny test setting, "
                                         "not the default one")


def test_sweep_section_reads_the_results_files_and_says_how_to_make_them():
    """Section 9 plots numbers read from the sweep's results file, never numbers of its own."""
    source = "".join(c.source for c in code_cells(nbformat.read(NOTEBOOK, as_version=4)))
    assert "runs/sweep/results.json" in source and "data/results/sweep.json" in source
    assert "python experiments/sweep.py --quick" in source
