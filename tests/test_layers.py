"""The project's imports point down: data and the tokenizer at the bottom, then the model, the
verifier and the device/process helpers, then the plumbing of a run (flags, run directory, text
batches, metrics), then the bases on disk, then the stages the lesson calls (the warm start,
evaluation), then the lesson (nanorgra.py), then the experiments and the commands built on it. No
module imports one above it, so there is no import cycle. Read from the source text (ast), so
nothing is imported here."""

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# module -> its layer; a module may import modules of lower layers, and within one layer only
# modules of its own folder (the experiments build on each other), never in a circle
LAYERS = {
    "data.tokenizer": 0, "data.tasks": 0,
    "model": 1, "verifier": 1, "distributed": 1,
    "flags": 2, "rundir": 2, "batches": 2, "metrics": 2,
    "bases": 3,
    "warmstart": 4, "evaluation": 4,
    "nanorgra": 5,
}
TOP = 6  # experiments/*.py and the commands at the root not listed above


def project_modules():
    """{module name: path} of every .py file of the project outside tests/ and .venv/."""
    modules = {}
    for path in REPO.rglob("*.py"):
        relative = path.relative_to(REPO)
        if relative.parts[0] in ("tests", ".venv") or relative.name == "__init__.py":
            continue
        modules[".".join(relative.with_suffix("").parts)] = path
    return modules


def imported_project_modules(path, modules):
    """The project modules that the file at path imports, anywhere in it (inside functions too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        found |= {name for name in names if name in modules}
    return found


def layer_of(module):
    return LAYERS.get(module, TOP)


def import_graph():
    modules = project_modules()
    return {name: imported_project_modules(path, modules) for name, path in modules.items()}


def test_every_import_points_to_a_lower_layer_or_a_sibling_of_the_same_folder():
    wrong = []
    for module, imported in import_graph().items():
        for other in imported:
            same_folder = module.split(".")[0] == other.split(".")[0] and "." in module
            if layer_of(other) > layer_of(module) or (layer_of(other) == layer_of(module)
                                                      and not same_folder):
                wrong.append(f"{module} (layer {layer_of(module)}) imports {other} "
                             f"(layer {layer_of(other)})")
    assert not wrong, wrong


def test_the_import_graph_has_no_cycle():
    graph = import_graph()
    state = {}  # module -> "visiting" or "done"

    def visit(module, path):
        if state.get(module) == "visiting":
            raise AssertionError("import cycle: " + " -> ".join(path + [module]))
        if state.get(module) == "done":
            return
        state[module] = "visiting"
        for other in sorted(graph[module]):
            visit(other, path + [module])
        state[module] = "done"

    for module in sorted(graph):
        visit(module, [])


def test_every_layered_module_exists():
    assert set(LAYERS) <= set(project_modules())


# the functions of nanorgra.py that may name a cross-process helper of distributed.py, each with a
# "torchrun:" comment on the line that does: the rest of the lesson reads as one process
LESSON_FUNCTIONS_ACROSS_PROCESSES = {"rl_step", "learn", "trainer_old_logprobs", "train"}


def test_at_most_four_lesson_functions_name_a_distributed_helper_each_with_a_torchrun_comment():
    source = (REPO / "nanorgra.py").read_text()
    import distributed  # its own functions, not what it imports
    helpers = {name for name, value in vars(distributed).items()
               if callable(value) and getattr(value, "__module__", None) == "distributed"}
    lines = source.splitlines()
    naming = {}
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.FunctionDef):
            calls = [n for n in ast.walk(node) if isinstance(n, ast.Call)
                     and isinstance(n.func, ast.Name) and n.func.id in helpers]
            if calls:
                naming[node.name] = calls
    assert set(naming) == LESSON_FUNCTIONS_ACROSS_PROCESSES
    for name, calls in naming.items():
        for call in calls:
            line = lines[call.lineno - 1]
            above = lines[call.lineno - 2]
            assert "torchrun:" in line or "torchrun:" in above, (name, line)
