"""The course's layout, as README.md draws it ("Which file imports which"): lessons stand on each
other in reading order, and plumbing.py is a floor under them all that imports no lesson, so
there is no import circle and every call into the machinery can be taken at its word.

Read from the source with ast, imports inside functions included: nothing is imported or run."""
import ast
import io
import tokenize
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FILES = {path.stem: path for path in sorted(ROOT.glob("*.py"))}


def project_imports(path):
    """The project's modules that a file imports, anywhere in it."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [alias.name.split(".")[0] for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module.split(".")[0]]
        else:
            continue
        found.update(name for name in names if name in FILES)
    return found - {path.stem}


IMPORTS = {name: project_imports(path) for name, path in FILES.items()}

# The tree in README.md, as edges: what each file imports from the project.
README_TREE = {
    "plumbing": set(), "optim": set(), "scaling_laws": set(), "model": set(),
    "pydocs": {"plumbing"},
    "data": {"pydocs", "plumbing"},
    "train_clm": {"model", "data", "optim", "plumbing"},
    "train_mlm": {"train_clm", "model", "data", "plumbing"},
    "scaling": {"train_clm", "scaling_laws", "model", "data", "plumbing"},
    "bench": {"train_clm", "optim", "model", "data", "plumbing"},
    "tasks": {"pydocs", "plumbing"},
    "prompting": {"tasks", "data", "plumbing"},
    "finetune": {"train_mlm", "train_clm", "tasks", "prompting", "optim", "model", "data", "plumbing"},
    "transfer": {"finetune", "prompting", "tasks", "train_clm", "plumbing"},
}


def test_the_files_import_what_the_readme_draws():
    assert IMPORTS == README_TREE


def test_the_readme_course_table_names_every_file():
    """Each file has a row in README.md's course table (a lesson, a tool or a part a reader may
    skip), so a file added to the project is never left out of the reading order."""
    section = (ROOT / "README.md").read_text(encoding="utf-8").split("\n## The course\n")[1].split("\n## ")[0]
    named = {line.split("|")[2].strip(" `") for line in section.splitlines() if line.startswith("| ")}
    assert {f"{name}.py" for name in FILES} <= named


def test_the_machinery_is_a_floor():
    """plumbing.py imports no lesson, not even inside a function; model.py, optim.py and
    scaling_laws.py, which run on plain tensors and arrays and read no file, need nothing of the
    project at all."""
    standalone = {"plumbing", "model", "optim", "scaling_laws"}
    assert all(IMPORTS[name] == set() for name in standalone)
    assert {name for name, imported in IMPORTS.items() if "plumbing" in imported} == set(FILES) - standalone


def test_no_import_circle():
    """Depth-first search: a file met again while it is still being followed closes a circle."""
    state = {}

    def follow(name, path):
        state[name] = "open"
        for imported in sorted(IMPORTS[name]):
            assert state.get(imported) != "open", f"import circle: {' -> '.join(path + [imported])}"
            if imported not in state:
                follow(imported, path + [imported])
        state[name] = "done"

    for name in FILES:
        if name not in state:
            follow(name, [name])
    assert len(state) == len(FILES) > 10


def test_no_import_hides_from_this_check():
    """An import by importlib or __import__ would not be seen above. bench.py alone uses importlib,
    to load nanoGPT's model.py from outside the project (bench.py --reference)."""
    texts = {name: path.read_text(encoding="utf-8") for name, path in FILES.items()}
    users = {name for name, text in texts.items() if "importlib" in text or "__import__" in text}
    assert users == {"bench"}
    assert "spec_from_file_location" in texts["bench"]


def test_the_circle_check_can_fail(monkeypatch):
    """The same search on a graph with a circle (data -> plumbing -> data) stops there."""
    monkeypatch.setitem(IMPORTS, "plumbing", {"data"})
    try:
        test_no_import_circle()
    except AssertionError as error:
        assert "plumbing" in str(error) and "data" in str(error)
    else:
        raise AssertionError("a circle went unseen")


def lessons():
    """The files README.md's course table numbers: the lessons, in reading order."""
    section = (ROOT / "README.md").read_text(encoding="utf-8").split("\n## The course\n")[1].split("\n## ")[0]
    rows = [line.split("|") for line in section.splitlines() if line.startswith("| ")]
    return [row[2].strip(" `") for row in rows if row[1].strip().isdigit()]


def prose_share(source):
    """The share of a file's non-blank lines that are prose: docstring lines, and lines that hold a
    comment (tokenize tells a comment from a '#' inside a string)."""
    prose = {token.start[0] for token in tokenize.generate_tokens(io.StringIO(source).readline)
             if token.type == tokenize.COMMENT}
    for node in ast.walk(ast.parse(source)):
        if (isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                and ast.get_docstring(node, clean=False) is not None):
            prose.update(range(node.body[0].lineno, node.body[0].end_lineno + 1))
    lines = [number for number, line in enumerate(source.splitlines(), 1) if line.strip()]
    return sum(number in prose for number in lines) / len(lines)


def test_every_lesson_is_mostly_read_not_only_run():
    """A lesson file is at least 30% prose, and none of its functions runs past about 90 lines (95
    here), so each can be read on a screen or two."""
    names = lessons()
    assert names[:4] == ["model.py", "data.py", "optim.py", "train_clm.py"] and len(names) >= 11
    for name in names:
        source = (ROOT / name).read_text(encoding="utf-8")
        assert prose_share(source) >= 0.30, f"{name}: {prose_share(source):.0%} prose"
        longest = max((node.end_lineno - node.lineno + 1, node.name) for node in ast.walk(ast.parse(source))
                      if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)))
        assert longest[0] <= 95, f"{name}: {longest[1]} is {longest[0]} lines"


def test_the_prose_count_can_fail():
    code = "x = 1\n" * 8
    assert prose_share('"""A docstring."""\n# a comment\n' + code) == 0.2
    assert prose_share('s = "# not a comment"\n' + code) == 0
