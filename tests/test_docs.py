"""The documents work: every code block of README.md and docs/*.md runs, every link resolves.

Code blocks. Each fenced block names its language. ```python and ```bash/```sh/```shell
blocks are executed, in document order, in a scratch copy of the repository
(tracked and untracked files linked, `.venv` linked; `runs/`, `exported/`,
`docs/images/` and `benchmarks/results/` start empty, so no command writes into the
real ones). Each page trains its own prerequisites, so it runs alone from a clean
checkout; the documents are spread over the test workers, and the pages one worker
runs share its scratch copy, so a page that trains a prerequisite another page
trained there already (same workdir, same tiny settings) finds it done:
- the python blocks of a document run in ONE Python process, in sequence, in a
  shared namespace (a later block may use names of an earlier one; a name used
  before it is defined fails the test);
- each shell block runs with `bash -e -o pipefail`, cwd the scratch copy, after the
  python blocks above it.
Any other language (```text for output, ```json, ...) is not run.

Markers: HTML comments on the lines right above a fence (invisible when rendered).
- `<!-- test: skip: REASON -->`: the block is not run (`make demo`, `make test`,
  commands that need another host or Docker). A reason is required.
- `<!-- test: PREFIX += ARGS -->`: in the block's shell commands that start with
  PREFIX (a leading `.venv/bin/` ignored), ARGS is appended before any trailing
  `# comment`. The document shows the real command (`kzoo train vqvae_shapes`)
  and the test makes it small (`--steps 2 --set batch_size=8`); argparse takes the
  last value of a repeated option. ARGS is shell text: quote what bash would
  read as syntax (`--set 'model.channels=(8,16)'`). Every marker must match a
  command, and `bash -n` must accept the block both as shown and as run.
Nothing else is allowed: a block the test neither runs nor was told to skip fails.

Links. Every relative link or image of README.md, docs/*.md, benchmarks/README.md
and exported/README.md names a file inside the repository that git does not
ignore; and no file of the repository refers to `shared/` or `../shared` paths,
which are outside it.

README.md, docs/architecture.md and docs/distributed.md run in every tier. The other
pages train their recipes (tiny, through the markers) and are marked `slow` and
`recipe_pages`: `make test-docs` and `make test-full` run them; `make test` (CI)
leaves them out, for its 30-minute limit (their commands together take about a third
of the suite's CPU time).
"""

import json
import os
import re
import resource
import subprocess
import sys
import textwrap
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN_LANGUAGES = {"python": "python", "bash": "shell", "sh": "shell", "shell": "shell"}
# Blocks of these languages are shown, never run (output, data, config).
SHOWN_LANGUAGES = {"text", "json", "toml", "yaml", "csv", "diff"}
FAST_DOCS = ("README.md", "docs/architecture.md", "docs/distributed.md")
# Starts empty in the scratch copy: outputs of the documented commands go there.
SCRATCH_EMPTY = ("runs/", "exported/", "docs/images/", "benchmarks/results/")
BLOCK_TIMEOUT_S = 900
LINKED_DOCS = ("README.md", "benchmarks/README.md", "exported/README.md")

OUTSIDE_PATTERN = r"(^|[^A-Za-z0-9_.-])(\.\./)*shared/"

FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})(?P<info>.*)$")
MARKER = re.compile(r"^\s*<!--\s*test:\s*(?P<body>.*?)\s*-->\s*$")
LINK = re.compile(r"!?\[[^\]]*\]\((?P<target>[^)\s]+)(?:\s+\"[^\"]*\")?\)")


# --------------------------------------------------------------------- parsing


class Block:
    def __init__(self, doc, line, language, code, markers):
        self.doc, self.line, self.language, self.code = doc, line, language, code
        self.markers = markers

    @property
    def kind(self):
        return RUN_LANGUAGES.get(self.language)

    @property
    def skip_reason(self):
        for marker in self.markers:
            if marker.startswith("skip:"):
                return marker[len("skip:") :].strip()
        return None

    @property
    def appends(self):
        rules = []
        for marker in self.markers:
            prefix, sep, args = marker.partition(" += ")
            if sep:
                rules.append((prefix.strip(), args.strip()))
        return rules

    def __repr__(self):
        return f"{self.doc}:{self.line} ```{self.language}"


def parse_blocks(doc):
    """The fenced blocks of `doc` (a path relative to the repository) with their markers."""
    with open(os.path.join(REPO, doc), encoding="utf-8") as f:
        lines = f.read().splitlines()
    blocks, index = [], 0
    while index < len(lines):
        match = FENCE.match(lines[index])
        if not match:
            index += 1
            continue
        markers, above = [], index - 1
        while above >= 0 and MARKER.match(lines[above]):
            markers.insert(0, MARKER.match(lines[above]).group("body"))
            above -= 1
        fence, indent = match.group("fence"), match.group("indent")
        language = match.group("info").strip().split(" ")[0].strip("{}.")
        end = index + 1
        while end < len(lines) and not (
            lines[end].strip().startswith(fence) and lines[end].strip().strip(fence[0]) == ""
        ):
            end += 1
        body = [
            line[len(indent) :] if line.startswith(indent) else line
            for line in lines[index + 1 : end]
        ]
        blocks.append(Block(doc, index + 1, language, "\n".join(body) + "\n", markers))
        index = end + 1
    return blocks


def documents():
    docs = ["README.md"]
    docs += sorted(
        f"docs/{name}" for name in os.listdir(os.path.join(REPO, "docs")) if name.endswith(".md")
    )
    return docs


def stray_markers(doc):
    """Markers that are not right above a fence (they would silently do nothing)."""
    with open(os.path.join(REPO, doc), encoding="utf-8") as f:
        lines = f.read().splitlines()
    stray = []
    for number, line in enumerate(lines):
        if MARKER.match(line):
            following = number + 1
            while following < len(lines) and MARKER.match(lines[following]):
                following += 1
            if following >= len(lines) or not FENCE.match(lines[following]):
                stray.append(f"{doc}:{number + 1}")
    return stray


# ------------------------------------------------------------ shell commands


def logical_lines(code):
    """Shell lines with backslash continuations joined."""
    result, pending = [], ""
    for line in code.splitlines():
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
        else:
            result.append(pending + line)
            pending = ""
    if pending:
        result.append(pending)
    return result


def split_comment(line):
    """`(command, comment)`: the comment starts at an unquoted `#` after whitespace."""
    quote = None
    for position, char in enumerate(line):
        if quote:
            if char == quote:
                quote = None
        elif char in "'\"":
            quote = char
        elif char == "#" and (position == 0 or line[position - 1].isspace()):
            return line[:position].rstrip(), line[position:]
    return line.rstrip(), ""


def command_matches(command, prefix):
    words = command.strip()
    if words.startswith(".venv/bin/"):
        words = words[len(".venv/bin/") :]
    return words == prefix or words.startswith(prefix + " ")


def shell_script(block):
    """The block's shell code with its `+=` markers applied; raises on an unused marker."""
    lines = logical_lines(block.code)
    used = set()
    for number, line in enumerate(lines):
        command, comment = split_comment(line)
        for rule, (prefix, args) in enumerate(block.appends):
            if command and command_matches(command, prefix):
                command = f"{command} {args}"
                used.add(rule)
        lines[number] = f"{command}  {comment}".rstrip() if comment else command
    unused = [block.appends[rule][0] for rule in range(len(block.appends)) if rule not in used]
    if unused:
        raise AssertionError(f"{block}: marker(s) match no command: {unused}")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------ running


PYTHON_DRIVER = textwrap.dedent(
    """
    import json, os, sys, traceback
    protocol = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # the blocks' prints and TF's C++ output go to the log
    sys.stdout = sys.stderr
    sys.path.insert(0, os.getcwd())  # as `python` started in the repository root
    namespace = {"__name__": "__main__"}
    for request in sys.stdin:
        request = json.loads(request)
        print(f"=== python block {request['where']}", flush=True)
        try:
            exec(compile(request["code"], request["where"], "exec"), namespace)
            reply = {"ok": True}
        except BaseException:
            reply = {"ok": False, "error": traceback.format_exc()}
        sys.stderr.flush()
        protocol.write(json.dumps(reply) + "\\n")
        protocol.flush()
    """
)


def scratch_copy(root):
    """A scratch copy of the repository in `root`: files linked, output folders empty."""
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"],
        cwd=REPO,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split("\0")
    for path in filter(None, listed):
        if path.startswith(SCRATCH_EMPTY) or not os.path.exists(os.path.join(REPO, path)):
            continue
        target = os.path.join(root, path)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        os.symlink(os.path.join(REPO, path), target)
    for folder in SCRATCH_EMPTY:
        os.makedirs(os.path.join(root, folder), exist_ok=True)
    os.symlink(os.path.dirname(os.path.dirname(sys.executable)), os.path.join(root, ".venv"))


def block_env():
    env = dict(os.environ)
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    env["KERAS_BACKEND"] = "tensorflow"
    env.pop("PYTHONPATH", None)
    return env


def _process_cpu_s(pid):
    """User + system CPU seconds of a live process (Linux `/proc`)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _children_cpu_s():
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_document(doc, root):
    """Runs the doc's blocks in order in `root` (a `scratch_copy`).

    Returns `[(block, wall_s, cpu_s)]`.

    `cpu_s` is the CPU time the block's processes used: on a loaded machine the
    wall time grows, the CPU time much less.
    """
    env = block_env()
    log_path = os.path.join(root, f"doc-test-{doc.replace('/', '-').replace('.', '-')}.log")
    python, timings = None, []
    log = open(log_path, "w")

    def fail(block, message):
        log.flush()
        with open(log_path) as f:
            tail = f.read()[-6000:]
        pytest.fail(f"{block} failed: {message}\n--- log tail ---\n{tail}", pytrace=False)

    try:
        for block in parse_blocks(doc):
            if block.kind is None or block.skip_reason:
                continue
            start, cpu_start = time.perf_counter(), _children_cpu_s()
            if python is not None:
                cpu_start += _process_cpu_s(python.pid)
            if block.kind == "python":
                if python is None:
                    python = subprocess.Popen(
                        [sys.executable, "-c", PYTHON_DRIVER],
                        cwd=root,
                        env=env,
                        stdin=subprocess.PIPE,
                        stdout=subprocess.PIPE,
                        stderr=log,
                        text=True,
                    )
                python.stdin.write(json.dumps({"code": block.code, "where": repr(block)}) + "\n")
                python.stdin.flush()
                reply = python.stdout.readline()
                if not reply:
                    fail(block, "the Python process died")
                reply = json.loads(reply)
                if not reply["ok"]:
                    fail(block, reply["error"])
            else:
                script = shell_script(block)
                log.write(f"=== shell block {block}\n{script}")
                log.flush()
                try:
                    result = subprocess.run(
                        ["bash", "-e", "-o", "pipefail", "-c", script],
                        cwd=root,
                        env=env,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        timeout=BLOCK_TIMEOUT_S,
                    )
                except subprocess.TimeoutExpired:
                    fail(block, f"timed out after {BLOCK_TIMEOUT_S} s")
                if result.returncode != 0:
                    fail(block, f"exit status {result.returncode}")
            cpu = _children_cpu_s() - cpu_start
            if python is not None:
                cpu += _process_cpu_s(python.pid)
            timings.append((block, time.perf_counter() - start, cpu))
    finally:
        if python is not None:
            python.stdin.close()
            python.wait(timeout=60)
        log.close()
    return timings


# -------------------------------------------------------------------- tests


def test_every_block_is_run_shown_or_skipped_with_a_reason():
    problems = []
    for doc in documents():
        problems += stray_markers(doc)
        for block in parse_blocks(doc):
            if block.kind is None and block.language not in SHOWN_LANGUAGES:
                problems.append(f"{block}: name a language (python, bash, text, ...)")
            if block.kind is None and block.markers:
                problems.append(f"{block}: markers on a block that never runs")
            for marker in block.markers:
                if marker.startswith("skip:"):
                    if not block.skip_reason:
                        problems.append(f"{block}: `skip:` needs a reason")
                elif " += " not in marker:
                    problems.append(f"{block}: unknown marker {marker!r}")
            if block.kind == "python" and block.appends:
                problems.append(f"{block}: `+=` markers apply to shell blocks only")
            if block.kind == "shell" and not block.skip_reason:
                try:
                    shell_script(block)
                except AssertionError as error:
                    problems.append(str(error))
    assert not problems, "\n".join(problems)


def test_markers_apply_before_comments_and_across_continuations():
    block = Block(
        "x.md",
        1,
        "bash",
        "kzoo train a --workdir w \\\n    --set b=1   # slow\n"
        ".venv/bin/kzoo train a\nkzoo trainx\n",
        ["kzoo train a += --steps 2"],
    )
    assert shell_script(block).splitlines() == [
        "kzoo train a --workdir w      --set b=1 --steps 2  # slow",
        ".venv/bin/kzoo train a --steps 2",
        "kzoo trainx",
    ]
    unused = Block("x.md", 1, "bash", "kzoo evaluate w\n", ["kzoo train += --steps 2"])
    with pytest.raises(AssertionError, match="match no command"):
        shell_script(unused)


def test_python_blocks_share_a_namespace_and_catch_undefined_names(tmp_path):
    doc = tmp_path / "doc.md"
    doc.write_text("```python\nx = 1\n```\n\n```python\nassert x == 1\nprint(y)\n```\n")
    blocks = parse_blocks(os.path.relpath(doc, REPO))
    assert [b.kind for b in blocks] == ["python", "python"]
    root = tmp_path / "root"
    root.mkdir()
    scratch_copy(str(root))
    with pytest.raises(pytest.fail.Exception, match="NameError: name 'y' is not defined"):
        run_document(os.path.relpath(doc, REPO), str(root))


def _links(doc):
    with open(os.path.join(REPO, doc), encoding="utf-8") as f:
        text = f.read()
    # Code is not a link: drop fenced blocks and inline code first.
    text = re.sub(r"^([ \t]*)(`{3,}).*?^\1\2[ \t]*$", "", text, flags=re.S | re.M)
    text = re.sub(r"`[^`\n]*`", "", text)
    return [m.group("target") for m in LINK.finditer(text)]


def test_relative_links_resolve_to_files_in_the_repository():
    docs = [*documents(), *(d for d in LINKED_DOCS if d != "README.md")]
    problems = []
    for doc in docs:
        for target in _links(doc):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
                continue
            path = os.path.normpath(os.path.join(REPO, os.path.dirname(doc), target.split("#")[0]))
            if os.path.relpath(path, REPO).startswith(".."):
                problems.append(f"{doc}: {target} is outside the repository")
            elif not os.path.exists(path):
                problems.append(f"{doc}: {target} does not exist")
            elif (
                subprocess.run(
                    ["git", "check-ignore", "-q", path], cwd=REPO, check=False
                ).returncode
                == 0
            ):
                problems.append(f"{doc}: {target} is ignored by git (not in a clone)")
    assert not problems, "\n".join(problems)


def test_no_file_refers_to_paths_outside_the_repository():
    found = subprocess.run(
        [
            "git",
            "grep",
            "--untracked",
            "-l",
            "-E",
            OUTSIDE_PATTERN,
            "--",
            ".",
            ":!tests/test_docs.py",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    ).stdout.split()
    assert not found, f"files that refer to shared/ (outside the repository): {sorted(found)}"


@pytest.fixture(scope="session")
def scratch(tmp_path_factory):
    """One scratch copy per test process, for the documents it runs."""
    root = str(tmp_path_factory.mktemp("docs"))
    scratch_copy(root)
    return root


def _doc_params():
    params = []
    for doc in documents():
        if not any(block.kind and not block.skip_reason for block in parse_blocks(doc)):
            continue
        marks = () if doc in FAST_DOCS else (pytest.mark.slow, pytest.mark.recipe_pages)
        params.append(pytest.param(doc, id=doc, marks=marks))
    return params


@pytest.mark.parametrize("doc", _doc_params())
def test_document_blocks_run(doc, scratch):
    timings = run_document(doc, scratch)
    # Seen with `pytest -s`: where the time goes (wall and CPU seconds per block).
    for block, wall, cpu in timings:
        print(f"{wall:7.1f} s wall {cpu:7.1f} s CPU  {block}")
    assert timings, f"{doc} has no block to run"


def test_shell_blocks_parse():
    """`bash -n` accepts every shell block as shown and, with its markers applied, as run."""
    problems = []
    for doc in documents():
        for block in parse_blocks(doc):
            if block.kind != "shell":
                continue
            scripts = {"as shown": block.code}
            if not block.skip_reason and block.appends:
                try:
                    scripts["with its markers"] = shell_script(block)
                except AssertionError:
                    pass  # reported by test_every_block_is_run_shown_or_skipped_with_a_reason
            for what, script in scripts.items():
                result = subprocess.run(
                    ["bash", "-n", "-c", script], capture_output=True, text=True, check=False
                )
                if result.returncode != 0:
                    problems.append(f"{block} {what}: {result.stderr.strip()}")
    assert not problems, "\n".join(problems)
