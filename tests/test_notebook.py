"""notebook.ipynb: it runs top to bottom, the committed copy holds the outputs of one real run, and
it is a lesson (each component's source, equation and live switch; exercises; links, not copies).

The run uses the notebook's tiny setting (NANORGRA_NB_SMALL=1: a tiny model, a temporary
directory), so it takes seconds to a minute on a CPU. The kernel is started with the interpreter
that runs pytest, so the notebook sees the same packages as the tests, whatever other "python3"
kernelspecs the machine has.
"""

import base64
import json
import re
import sys
from pathlib import Path

import nbformat
from jupyter_client.kernelspec import KernelSpecManager
from nbclient import NotebookClient

import nanorgra
from course import exercises

REPO = Path(__file__).resolve().parent.parent
NOTEBOOK = REPO / "notebook.ipynb"
KERNEL = "python3"
CELL_TIMEOUT = 600  # seconds per cell: generous for a slow, shared CPU; the test measures no time
MAX_BYTES = 500 * 1024
# the six components, as their section headings name them
COMPONENTS = ("group baseline", "std normalisation", "negative feedback", "ratio and clipping",
              "KL", "aggregation")
STUB = 'raise NotImplementedError("your code here")'


def code_cells(nb):
    return [c for c in nb.cells if c.cell_type == "code"]


def markdown_cells(nb):
    return [c for c in nb.cells if c.cell_type == "markdown"]


def committed():
    return nbformat.read(NOTEBOOK, as_version=4)


def is_exercise_stub(cell):
    """A cell that only defines the student's function: it prints nothing."""
    return cell.source.startswith("def ") and STUB in cell.source


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
    nb = committed()
    client = NotebookClient(nb, kernel_name=KERNEL, timeout=CELL_TIMEOUT, allow_errors=False,
                            resources={"metadata": {"path": str(REPO)}})  # cwd: the repository root
    client.execute()  # raises CellExecutionError, naming the cell, on the first error
    errors = [o for c in code_cells(nb) for o in c.outputs if o.output_type == "error"]
    assert not errors, errors
    assert all(c.execution_count is not None for c in code_cells(nb))
    text = "".join(o.get("text", "") for c in code_cells(nb) for o in c.outputs
                   if o.output_type == "stream")
    assert "FAIL" not in text  # every exercise check passes, on the reference answers


def test_python3_kernel_is_found_without_our_kernelspec():
    """The default lookup also finds a python3 kernel (the spec ipykernel installs), as
    Jupyter users will run it."""
    assert KERNEL in KernelSpecManager().find_kernel_specs()


def test_committed_notebook_has_the_outputs_of_one_sequential_run():
    nb = committed()
    nbformat.validate(nb)
    cells = code_cells(nb)
    assert cells, "the notebook has no code cells"
    counts = [c.execution_count for c in cells]
    in_order = list(range(1, len(cells) + 1))
    assert counts == in_order, f"execution counts are not 1..{len(cells)} in order: {counts}"
    empty = [i for i, c in enumerate(cells) if not c.outputs and not is_exercise_stub(c)]
    assert not empty, f"code cells without saved outputs: {empty}"
    errors = [o for c in cells for o in c.outputs if o.output_type == "error"]
    assert not errors, "the saved outputs contain an error"
    text = "".join(o.get("text", "") for c in cells for o in c.outputs if o.output_type == "stream")
    assert "small setting" not in text, ("the saved outputs come from the tiny test setting, "
                                         "not the default one")


def test_committed_notebook_is_at_most_500_kb():
    size = NOTEBOOK.stat().st_size
    assert size <= MAX_BYTES, f"notebook.ipynb is {size / 1024:.0f} KB"


def test_no_output_image_is_a_copy_of_a_committed_figure():
    """The long experiments' figures are linked, never embedded."""
    figures = {p.read_bytes(): p.name for p in (REPO / "data" / "results").glob("*.png")}
    images = [base64.b64decode(o["data"]["image/png"]) for c in code_cells(committed())
              for o in c.outputs if "image/png" in o.get("data", {})]
    assert images, "the notebook shows no plot of its own"
    copies = [figures[image] for image in images if image in figures]
    assert not copies, f"embedded copies of {copies}"


def test_code_never_reads_the_long_experiments_results():
    """data/results/ appears only in Markdown links."""
    readers = [c.source[:60] for c in code_cells(committed()) if "data/results" in c.source]
    assert not readers, readers


def named_paths(text):
    """The data/..., docs/..., *.py and *.md paths a Markdown text names."""
    text = re.sub(r"https?://\S+", "", text)
    folders = re.findall(r"(?<![\w/.-])((?:data|docs)/[\w./-]*)", text)
    files = re.findall(r"(?<![\w/.-])([\w/-]+\.(?:py|md))\b", text)
    return {p.rstrip(".") for p in folders + files}


def test_named_paths_are_found_by_the_pattern():
    text = ("see `nanorgra.py`, [x](data/results/regimes.md), ![y](data/results/a_b.png), "
            "docs/teaching.md. and experiments/sweep.py; not model.generate or e.g. this")
    assert named_paths(text) == {"nanorgra.py", "data/results/regimes.md", "data/results/a_b.png",
                                 "docs/teaching.md", "experiments/sweep.py"}


def test_every_path_named_in_markdown_exists():
    text = "\n".join(c.source for c in markdown_cells(committed()))
    paths = named_paths(text)
    assert "data/results/regimes.md" in paths and "docs/teaching.md" in paths
    missing = sorted(p for p in paths if not (REPO / p).exists())
    assert not missing, f"named in the notebook but missing: {missing}"


def heading_lines(cell):
    """The numbers of the lines of a Markdown cell that are headings (code fences skipped)."""
    numbers, fenced = [], False
    for i, line in enumerate(cell.source.splitlines()):
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and re.match(r"#{1,6} ", line):
            numbers.append(i)
    return numbers


def test_every_heading_starts_its_own_markdown_cell():
    bad = [c.source[:80] for c in markdown_cells(committed()) if heading_lines(c)
           and heading_lines(c) != [0]]
    assert not bad, f"a heading in the middle of a cell: {bad}"


def sections(nb):
    """{heading text: the cells under it, up to the next heading of its level or above}."""
    out, current = {}, None
    for cell in nb.cells:
        if cell.cell_type == "markdown" and heading_lines(cell) == [0]:
            first = cell.source.splitlines()[0]
            level = len(first) - len(first.lstrip("#"))
            if level <= 2:
                current = first.lstrip("# ").strip()
                out[current] = []
        if current is not None:
            out[current].append(cell)
    return out


def test_first_cell_says_for_whom_what_before_how_long_and_the_reading_order():
    first = committed().cells[0]
    assert first.cell_type == "markdown" and first.source.startswith("# ")
    for words in ("For whom", "What to know before", "How long", "Read the code beside it",
                  "group_advantages", "rl_step", "model.generate", "verifier.outcome_reward",
                  "course/solutions.py"):
        assert words in first.source, words
    assert "TIME_" not in first.source, "the measured times were not filled in"


def test_each_component_has_a_section_that_shows_its_nanorgra_source():
    nb_sections = sections(committed())
    for component in COMPONENTS:
        found = [name for name in nb_sections if component.lower() in name.lower()]
        assert found, f"no section for {component!r}: {list(nb_sections)}"
        cells = nb_sections[found[0]]
        shown = [c for c in cells if c.cell_type == "code" and "show(nanorgra." in c.source]
        assert shown, f"section {found[0]!r} shows no nanorgra function"
        for cell in shown:
            name = re.search(r"show\(nanorgra\.(\w+)", cell.source).group(1)
            assert callable(getattr(nanorgra, name))
            markdown = [o["data"]["text/markdown"] for o in cell.outputs
                        if "text/markdown" in o.get("data", {})]
            assert markdown and markdown[0].startswith("```python"), name
            assert "inspect.getsource" in "".join(c.source for c in code_cells(committed()))
        live = [c for c in cells if c.cell_type == "code" and "show(" not in c.source]
        assert live, f"section {found[0]!r} has no live cell"


def test_each_live_cell_of_a_component_follows_one_sentence_saying_what_to_look_for():
    nb = committed()
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "markdown" and cell.source.startswith("Look for:"):
            assert cell.source.count(". ") == 0 and cell.source.endswith("."), cell.source
            assert nb.cells[i + 1].cell_type == "code"
            assert nb.cells[i + 2].cell_type == "markdown", "no reading after the live cell"


def test_at_least_five_exercises_each_a_stub_and_a_check():
    nb = committed()
    cells = code_cells(nb)
    checks = [(i, m.group(1), m.group(2)) for i, c in enumerate(cells)
              for m in [re.search(r"exercises\.check_(\w+)\((\w+)\)", c.source)] if m]
    assert len(checks) >= 5, checks
    for i, name, fn in checks:
        assert callable(getattr(exercises, f"check_{name}"))
        stub = cells[i - 1]
        assert stub.source.startswith(f"def {fn}(") and STUB in stub.source
        out = "".join(o.get("text", "") for o in cells[i].outputs)
        assert "PASS" in out and "FAIL" not in out


def test_papers_are_cited_with_their_arxiv_ids():
    text = "\n".join(c.source for c in markdown_cells(committed()))
    for arxiv in ("2603.18756", "2402.03300", "1707.06347", "2408.16737", "2402.14740",
                  "2503.20783"):
        assert f"arXiv {arxiv}" in text or arxiv in text, arxiv
