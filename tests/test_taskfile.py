"""Task files (fluxmpi.taskfile): good files in every accepted shape give the expected tasks, and every bad one
is refused, before anything runs, with a message naming the file, the task and the field."""

import json
import pickle
import textwrap

import pytest

from fluxmpi.spec import MPITaskSpec, SpecError
from fluxmpi.taskfile import TaskEntry, TaskFileError, load_tasks, parse_tasks

GOOD_YAML = """\
defaults:
  ranks_per_node: 2
  walltime: "00:10:00"
  env: {OMP_NUM_THREADS: "1"}
tasks:
  - name: member-01
    command: ./wrf.exe -c "member 01.nml"
    nodes: 2
    ranks_per_node: 4
    cores_per_rank: 1
    gpus_per_rank: 0
    exclusive: true
    walltime: 600
    env: {FOO: bar, OMP_NUM_THREADS: 2}
    cwd: runs/member-01
    timeout: 900
    repeats: 3
  - name: post
    command: [python3, post.py, --members, 3]
    nodes: 1
  - name: wide
    command: ./app
    nodes: 2
    ranks: 8
    exclusive: false
"""

GOOD_DATA = {
    "defaults": {"ranks_per_node": 2, "walltime": "00:10:00", "env": {"OMP_NUM_THREADS": "1"}},
    "tasks": [
        {"name": "member-01", "command": './wrf.exe -c "member 01.nml"', "nodes": 2, "ranks_per_node": 4,
         "cores_per_rank": 1, "gpus_per_rank": 0, "exclusive": True, "walltime": 600,
         "env": {"FOO": "bar", "OMP_NUM_THREADS": 2}, "cwd": "runs/member-01", "timeout": 900, "repeats": 3},
        {"name": "post", "command": ["python3", "post.py", "--members", 3], "nodes": 1},
        {"name": "wide", "command": "./app", "nodes": 2, "ranks": 8, "exclusive": False},
    ],
}


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text) if isinstance(text, str) else text)
    return path


def check_good(entries):
    assert [e.name for e in entries] == ["member-01.0", "member-01.1", "member-01.2", "post", "wide"]
    first = entries[0]
    assert first.command == ("./wrf.exe", "-c", "member 01.nml")  # shlex keeps the quoted argument whole
    assert first.spec == MPITaskSpec(nodes=2, ranks_per_node=4, cores_per_rank=1, gpus_per_rank=0,
                                     exclusive=True, walltime=600)
    assert first.env == {"OMP_NUM_THREADS": "2", "FOO": "bar"}  # task's value wins, number made a string
    assert first.cwd == "runs/member-01"
    assert first.timeout == 900.0
    assert all(e.command == first.command and e.spec == first.spec for e in entries[:3])

    post = entries[3]
    assert post.command == ("python3", "post.py", "--members", "3")
    # nodes from the task, ranks_per_node and walltime from defaults
    assert post.spec == MPITaskSpec(nodes=1, ranks_per_node=2, walltime=600)
    assert post.env == {"OMP_NUM_THREADS": "1"}
    assert post.cwd is None and post.timeout is None

    wide = entries[4]
    # nodes and ranks given: the default ranks_per_node=2 must not contradict them
    assert (wide.spec.nodes, wide.spec.ranks_per_node, wide.spec.ranks) == (2, 4, 8)
    assert wide.spec.exclusive is False


# ---- good files ---------------------------------------------------------------------------------------------


def test_yaml_with_defaults_and_repeats(tmp_path):
    check_good(load_tasks(write(tmp_path, "tasks.yaml", GOOD_YAML)))


def test_json_equivalent_gives_the_same_tasks(tmp_path):
    from_json = load_tasks(write(tmp_path, "tasks.json", json.dumps(GOOD_DATA, indent=2)))
    check_good(from_json)
    assert from_json == load_tasks(write(tmp_path, "tasks.yml", GOOD_YAML))
    assert from_json == parse_tasks(GOOD_DATA)


def test_top_level_list(tmp_path):
    path = write(tmp_path, "list.yaml", """\
        - name: a
          command: ./a -x 1
          nodes: 2
          ranks_per_node: 3
        - name: b
          command: ./b
          ranks: 4
          ranks_per_node: 2
        """)
    entries = load_tasks(path)
    assert [(e.name, e.command, e.spec.nodes, e.spec.ranks) for e in entries] == [
        ("a", ("./a", "-x", "1"), 2, 6), ("b", ("./b",), 2, 4)]
    assert all(e.env == {} for e in entries)


def test_tasks_as_a_mapping_of_name_to_task_and_bare_commands(tmp_path):
    path = write(tmp_path, "map.yaml", """\
        defaults: {nodes: 1, ranks_per_node: 2}
        tasks:
          alpha: ./alpha --fast
          beta: {command: ./beta, nodes: 3}
        """)
    entries = load_tasks(path)
    assert [(e.name, e.command, e.spec.nodes, e.spec.ranks) for e in entries] == [
        ("alpha", ("./alpha", "--fast"), 1, 2), ("beta", ("./beta",), 3, 6)]


def test_yaml_anchors_and_merge_keys(tmp_path):
    path = write(tmp_path, "anchors.yaml", """\
        x-big: &big {nodes: 4, ranks_per_node: 8, exclusive: true}
        tasks:
          - {<<: *big, name: a, command: ./a}
          - {<<: *big, name: b, command: ./b, nodes: 2}
        """)
    assert [(e.name, e.spec.nodes, e.spec.ranks) for e in load_tasks(path)] == [("a", 4, 32), ("b", 2, 16)]


def test_unnamed_tasks_are_named_by_position():
    entries = parse_tasks([{"command": "./a", "nodes": 1}, {"command": "./b", "nodes": 1, "repeats": 2}])
    assert [e.name for e in entries] == ["task-1", "task-2.0", "task-2.1"]


def test_slurm_spellings_dashes_and_case_are_understood():
    [entry] = parse_tasks([{"name": "s", "Command": "./s", "NODES": 2, "ntasks-per-node": 3, "cpus_per_task": 2,
                            "gpus-per-task": 1, "time": "1:00:00", "Environment": "A=1;B=x y", "workdir": "w"}])
    assert entry.spec == MPITaskSpec(nodes=2, ranks_per_node=3, cores_per_rank=2, gpus_per_rank=1, walltime=3600)
    assert entry.env == {"A": "1", "B": "x y"}
    assert entry.cwd == "w"


def test_yaml_walltime_forms_mean_what_slurm_means(tmp_path):
    # Unquoted 10:00 is YAML 1.1's base-60 int 600 (seconds) and "10:00" is Slurm's MM:SS: both 10 minutes.
    path = write(tmp_path, "t.yaml", """\
        - {name: a, command: x, nodes: 1, walltime: 10:00}
        - {name: b, command: x, nodes: 1, walltime: "10:00"}
        - {name: c, command: x, nodes: 1, walltime: 1-00:00:00}
        - {name: d, command: x, nodes: 1, walltime: 10m, timeout: "1:30"}
        """)
    assert [(e.spec.walltime, e.timeout) for e in load_tasks(path)] == [
        (600, None), (600, None), (86400, None), (600, 90.0)]


def test_csv(tmp_path):
    path = write(tmp_path, "tasks.csv", '''\
        name,command,nodes,ranks_per_node,walltime,env,exclusive,repeats,timeout
        # a comment row

        a,"./a -c ""x y.nml""",2,4,600,OMP_NUM_THREADS=1;FOO=bar,false,2,
        b,./b,1,,00:05:00,,,,30
        ''')
    entries = load_tasks(path)
    assert [e.name for e in entries] == ["a.0", "a.1", "b"]
    a, b = entries[0], entries[2]
    assert a.command == ("./a", "-c", "x y.nml")
    assert a.spec == MPITaskSpec(nodes=2, ranks_per_node=4, exclusive=False, walltime=600)  # 600 s, as in YAML
    assert a.env == {"OMP_NUM_THREADS": "1", "FOO": "bar"}
    assert b.spec == MPITaskSpec(nodes=1, ranks_per_node=1, walltime=300)
    assert (a.timeout, b.timeout) == (None, 30.0)


def test_null_undoes_a_default():
    [entry] = parse_tasks({"defaults": {"cwd": "runs", "timeout": 60, "walltime": 600},
                           "tasks": [{"command": "x", "nodes": 1, "cwd": None, "timeout": None, "walltime": None}]})
    assert (entry.cwd, entry.timeout, entry.spec.walltime) == (None, None, None)


def test_tasks_that_fit_the_block_pass():
    entries = parse_tasks([{"name": "g", "command": "x", "nodes": 2, "ranks_per_node": 2, "gpus_per_rank": 2}],
                          max_nodes=2, cores_per_node=2, gpus_per_node=4)
    assert entries[0].spec.gpus_per_node == 4


def test_a_bad_block_description_is_the_callers_error_not_the_files():
    with pytest.raises(SpecError) as err:
        parse_tasks([{"command": "x", "nodes": 1}], max_nodes=0)
    assert not isinstance(err.value, TaskFileError)
    assert "nodes_available" in str(err.value)


# ---- bad files: each names the file, the task and the field -------------------------------------------------

ONE = "- {name: a, command: ./a, nodes: 1, %s}\n"

BAD = [
    # (id, file text, site kwargs, strings the message must contain)
    ("unknown-key", ONE % "rank_per_node: 2", {}, ["task 1 'a'", "rank_per_node", "did you mean 'ranks_per_node'"]),
    ("unknown-key-far", ONE % "colour: red", {}, ["task 1 'a'", "colour", "use only name, command"]),
    ("unknown-default", "defaults: {walltme: 60}\ntasks:\n- {name: a, command: x, nodes: 1}\n", {},
     ["defaults", "walltme", "did you mean 'walltime'"]),
    ("name-in-defaults", "defaults: {name: x}\ntasks:\n- {command: x, nodes: 1}\n", {},
     ["defaults, name", "each task gives its own name"]),
    ("unknown-top", "tasks: [{name: a, command: x, nodes: 1}]\ndefault: {nodes: 2}\n", {},
     ["top level, default", "did you mean 'defaults'"]),
    ("missing-command", "- {name: a, nodes: 1}\n", {}, ["task 1 'a', command", "is missing"]),
    ("empty-command", "- {name: a, command: '  ', nodes: 1}\n", {}, ["task 1 'a', command", "is empty"]),
    ("empty-command-list", "- {name: a, command: [], nodes: 1}\n", {}, ["task 1 'a', command", "empty list"]),
    ("null-command", "- {name: a, command: , nodes: 1}\n", {}, ["task 1 'a', command", "is empty"]),
    ("unclosed-quote", "- {name: a, command: './a \"x', nodes: 1}\n", {}, ["task 1 'a', command", "quote"]),
    ("shell-syntax", "- {name: a, command: './a > out.txt', nodes: 1}\n", {},
     ["task 1 'a', command", "shell syntax", "bash, -c"]),
    ("command-item", "- {name: a, command: [./a, {x: 1}], nodes: 1}\n", {}, ["task 1 'a', command", "item 1"]),
    ("bad-name", "- {name: 'my run/1', command: x, nodes: 1}\n", {}, ["task 1, name", "'my run/1'", "' /'"]),
    ("dot-name", "- {name: '..', command: x, nodes: 1}\n", {}, ["task 1, name", "file name"]),
    ("number-name", "- {name: 01, command: x, nodes: 1}\n", {}, ["task 1, name", "quote it"]),
    ("uneven-ranks", "- {name: a, command: x, nodes: 3, ranks: 8}\n", {},
     ["task 1 'a', nodes, ranks", "does not split evenly over nodes=3"]),
    ("sizes-disagree", "- {name: a, command: x, nodes: 2, ranks_per_node: 2, ranks: 5}\n", {},
     ["task 1 'a', nodes, ranks_per_node, ranks", "not ranks=5"]),
    ("uneven-with-default", "defaults: {ranks_per_node: 3}\ntasks:\n- {name: a, command: x, ranks: 8}\n", {},
     ["task 1 'a', ranks_per_node, ranks", "ranks_per_node=3 comes from defaults"]),
    ("no-size", "- {name: a, command: x}\n", {}, ["task 1 'a', nodes", "no size given"]),
    ("zero-nodes", ONE.replace("nodes: 1, ", "") % "nodes: 0", {}, ["task 1 'a', nodes", "too small"]),
    ("float-cores", ONE % "cores_per_rank: 1.5", {}, ["task 1 'a', cores_per_rank", "whole number"]),
    ("bad-exclusive", ONE % "exclusive: maybe", {}, ["task 1 'a', exclusive", "yes/no"]),
    ("bad-walltime", ONE % "walltime: ten minutes", {}, ["task 1 'a', walltime", "is not a time"]),
    ("too-many-nodes", "- {name: big, command: x, nodes: 5}\n", {"max_nodes": 4},
     ["task 1 'big', nodes", "needs 5 nodes but the block has 4"]),
    ("too-many-cores", "- {name: big, command: x, nodes: 1, ranks_per_node: 4, cores_per_rank: 4}\n",
     {"cores_per_node": 8}, ["task 1 'big', ranks_per_node, cores_per_rank", "16 cores per node"]),
    ("no-gpus", "- {name: g, command: x, nodes: 1, gpus_per_rank: 1}\n", {"max_nodes": 2},
     ["task 1 'g'", "gpus_per_rank", "GPUs per node"]),
    ("env-bool", ONE % "env: {DEBUG: yes}", {}, ["task 1 'a', env", "DEBUG", "quote it"]),
    ("env-null", ONE % "env: {DEBUG: }", {}, ["task 1 'a', env", "DEBUG has no value"]),
    ("env-list", ONE % "env: {PATHS: [a, b]}", {}, ["task 1 'a', env", "PATHS", "list"]),
    ("env-name", ONE % "env: {1X: a}", {}, ["task 1 'a', env", "'1X' is not a variable name"]),
    ("env-string", ONE % "env: 'NOEQUALS'", {}, ["task 1 'a', env", "not NAME=value"]),
    ("timeout-zero", ONE % "timeout: 0", {}, ["task 1 'a', timeout", "not a positive duration"]),
    ("timeout-negative", ONE % "timeout: -5", {}, ["task 1 'a', timeout", "not a positive duration"]),
    ("timeout-word", ONE % "timeout: soon", {}, ["task 1 'a', timeout", "not a duration"]),
    ("timeout-bool", ONE % "timeout: true", {}, ["task 1 'a', timeout", "not a duration"]),
    ("repeats-zero", ONE % "repeats: 0", {}, ["task 1 'a', repeats", "too small"]),
    ("repeats-float", ONE % "repeats: 2.5", {}, ["task 1 'a', repeats", "whole number"]),
    ("repeats-bool", ONE % "repeats: true", {}, ["task 1 'a', repeats", "whole number"]),
    ("cwd-number", ONE % "cwd: 5", {}, ["task 1 'a', cwd", "not a path"]),
    ("null-size", ONE % "ranks_per_node: ", {}, ["task 1 'a', ranks_per_node", "has no value"]),
    ("task-not-mapping", "- 5\n", {}, ["task 1", "is a int, not a task"]),
    ("duplicate-names", "- {name: a, command: x, nodes: 1}\n- {name: a, command: y, nodes: 1}\n", {},
     ["task 2 'a', name", "is also the name of task 1 'a'"]),
    ("duplicate-after-repeats", "- {name: a, command: x, nodes: 1, repeats: 2}\n- {name: a.1, command: y, nodes: 1}\n",
     {}, ["task 2 'a.1', name", "'a.1' is also the name of task 1 'a' (repeat 1)"]),
    ("duplicate-auto-name", "- {command: x, nodes: 1}\n- {name: task-1, command: y, nodes: 1}\n", {},
     ["task 2 'task-1', name", "task 1 (unnamed, so 'task-1')"]),
    ("yaml-duplicate-key", "- name: a\n  command: x\n  nodes: 1\n  nodes: 2\n", {},
     ["line 4, nodes", "given twice", "line 3"]),
    ("alias-and-name", ONE % "ntasks: 2, ranks: 2", {}, ["task 1 'a', ranks", "given twice", "'ntasks'"]),
    ("no-tasks-key", "defaults: {nodes: 1}\n", {}, ["has no `tasks:`"]),
    ("task-at-top", "command: ./a\nnodes: 2\n", {}, ["top level, command", "is a task field", "has no `tasks:`"]),
    ("empty-tasks", "tasks: []\n", {}, ["has no tasks"]),
    ("scalar-file", "just some words\n", {}, ["is a str, not a task list"]),
]


@pytest.mark.parametrize("text,site,expected", [case[1:] for case in BAD], ids=[case[0] for case in BAD])
def test_bad_task_is_refused_naming_task_and_field(tmp_path, text, site, expected):
    path = write(tmp_path, "tasks.yaml", text)
    with pytest.raises(TaskFileError) as err:
        load_tasks(path, **site)
    message = str(err.value)
    assert str(path) in message
    for part in expected:
        assert part in message, f"{part!r} not in:\n{message}"


FILE_PROBLEMS = [
    ("empty", "tasks.yaml", "", ["is empty"]),
    ("blank", "tasks.yaml", "   \n\n", ["is empty"]),
    ("only-comments", "tasks.yaml", "# nothing yet\n", ["is empty"]),
    ("empty-json", "tasks.json", "", ["is empty"]),
    ("empty-csv", "tasks.csv", "\n", ["is empty"]),
    ("csv-header-only", "tasks.csv", "name,command,nodes\n", ["header but no task rows"]),
    ("not-yaml", "tasks.yaml", "tasks: [a, b\n", ["is not valid YAML", "line 2"]),
    ("yaml-tab", "tasks.yaml", "tasks:\n\t- {name: a}\n", ["is not valid YAML", "tab"]),
    ("not-json", "tasks.json", "{'tasks': []}", ["is not valid JSON", "line 1", "double quotes"]),
    ("json-trailing-comma", "tasks.json", '{"tasks": [{"name": "a",}]}', ["is not valid JSON"]),
    ("binary", "tasks.yaml", b"\xff\xfe\x00\x80garbage", ["is not a text file"]),
    ("csv-unknown-column", "tasks.csv", "name,command,nodez\na,x,1\n", ["header (line 1), nodez", "'nodes'"]),
    ("csv-extra-cells", "tasks.csv", "name,command,nodes\na,x,1,oops\n", ["task 1 (line 2)", "has 4 cells but the header has 3"]),
    ("unknown-suffix", "tasks.txt", "tasks: []\n", ["'.txt'", ".yaml", ".yml", ".json", ".csv"]),
    ("no-suffix", "tasks", "tasks: []\n", ["has no suffix", ".yaml"]),
]


@pytest.mark.parametrize("name,content,expected", [c[1:] for c in FILE_PROBLEMS], ids=[c[0] for c in FILE_PROBLEMS])
def test_bad_file_is_refused(tmp_path, name, content, expected):
    path = tmp_path / name
    path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content)
    with pytest.raises(TaskFileError) as err:
        load_tasks(path)
    message = str(err.value)
    assert message.startswith(str(path))
    for part in expected:
        assert part in message, f"{part!r} not in:\n{message}"


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(TaskFileError, match="does not exist: check the path"):
        load_tasks(tmp_path / "nope.yaml")
    (tmp_path / "dir.yaml").mkdir()
    with pytest.raises(TaskFileError, match="is a directory"):
        load_tasks(tmp_path / "dir.yaml")


def test_every_problem_in_the_file_is_reported_at_once(tmp_path):
    path = write(tmp_path, "many.yaml", """\
        defaults: {walltime: forever}
        tasks:
          - {name: ok, command: ./ok, nodes: 1}
          - {name: typo, command: ./t, nodes: 1, ranks_per_nod: 2}
          - {name: nocmd, nodes: 2}
          - {name: uneven, command: ./u, nodes: 3, ranks: 4, timeout: -1}
          - {name: ok, command: ./again, nodes: 1}
        """)
    with pytest.raises(TaskFileError) as err:
        load_tasks(path)
    problems = err.value.problems
    expected = [
        "defaults, walltime:",
        "task 2 'typo', ranks_per_nod:",
        "task 3 'nocmd', command:",
        "task 4 'uneven', timeout:",
        "task 5 'ok', name:",
    ]
    assert len(problems) == len(expected), problems
    for line, start in zip(problems, expected):
        assert line.startswith(start), (line, start)
    message = str(err.value).splitlines()
    assert message[0] == f"{path}: 5 problems, so nothing was run; fix them all and run again:"
    assert len(message) == 6 and all(line.startswith(f"  {path}: ") for line in message[1:])
    # The bad default is reported once, not again for each of the tasks that inherit it.
    assert sum("walltime" in p for p in problems) == 1


def test_parse_tasks_labels_problems_with_the_source():
    with pytest.raises(TaskFileError) as err:
        parse_tasks([{"name": "a", "nodes": 1}], source="inline")
    assert str(err.value) == ("inline: task 1 'a', command: is missing: give the program and its arguments, "
                              "e.g. command: ./app -i in.nml (a string or a list of strings)")
    with pytest.raises(TaskFileError, match="is text, not loaded data"):
        parse_tasks("tasks: []")


def test_error_is_a_spec_error_and_survives_pickling():
    with pytest.raises(SpecError) as err:
        parse_tasks([{"name": "a", "nodes": 1}, {"name": "b", "nodes": 1}], source="f.yaml")
    copy = pickle.loads(pickle.dumps(err.value))
    assert isinstance(copy, TaskFileError)
    assert str(copy) == str(err.value) and copy.problems == err.value.problems and copy.source == "f.yaml"


# ---- identity for resume ------------------------------------------------------------------------------------


def one(**changes):
    task = {"name": "a", "command": "./a -n 1", "nodes": 2, "ranks_per_node": 2, "env": {"X": "1", "Y": "2"},
            "cwd": "run", **changes}
    [entry] = parse_tasks([task])
    return entry


def test_key_follows_what_the_task_computes():
    base = one().key()
    assert isinstance(base, str) and len(base) == 16 and int(base, 16) >= 0
    assert one().key() == base
    assert one(env={"Y": "2", "X": "1"}).key() == base  # env order does not matter
    assert one(command=["./a", "-n", "1"]).key() == base  # same argv, other spelling
    assert one(timeout=60).key() == base  # more time does not change the result
    for change in ({"command": "./a -n 2"}, {"name": "b"}, {"ranks_per_node": 1}, {"walltime": 60},
                   {"env": {"X": "1", "Y": "3"}}, {"env": {"X": "1"}}, {"cwd": "other"}, {"cwd": None}):
        assert one(**change).key() != base, change


def test_repeats_have_distinct_keys():
    entries = parse_tasks([{"name": "a", "command": "x", "nodes": 1, "repeats": 3}])
    assert len({e.key() for e in entries}) == 3


def test_task_entry_checks_direct_construction():
    spec = MPITaskSpec(nodes=1, ranks_per_node=1)
    entry = TaskEntry("a", ["./a"], spec, env={"N": 4})  # list and number: coerced
    assert entry.command == ("./a",) and entry.env == {"N": "4"}
    hash(entry)  # usable in sets despite the env dict
    with pytest.raises(SpecError, match="is a string"):
        TaskEntry("a", "./a -n 1", spec)
    with pytest.raises(SpecError, match="name"):
        TaskEntry("a b", ("./a",), spec)
    with pytest.raises(SpecError, match="timeout"):
        TaskEntry("a", ("./a",), spec, timeout=0)
    with pytest.raises(SpecError, match="MPITaskSpec"):
        TaskEntry("a", ("./a",), {"nodes": 1})
