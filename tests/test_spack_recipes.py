"""The shipped Spack recipes against Spack's published JSON Schemas and fluxmpi's own rules.

Schemas come from $FLUXMPI_SPACK_SCHEMAS or ../shared/spack-schemas (never copied into the repo);
schema tests skip, saying where they looked, when neither exists. Rule tests need no schemas.
"""

import json
from pathlib import Path

import pytest
import spack_recipes as sr
import yaml

REPO = Path(__file__).resolve().parent.parent
SPACK_DIR = REPO / "spack"
EXAMPLES = sorted((SPACK_DIR / "examples").glob("*.yaml"))
SHIPPED = [SPACK_DIR / "spack.yaml", SPACK_DIR / "repos.yaml", *EXAMPLES]


@pytest.fixture(scope="module")
def schema_dir():
    try:
        return sr.find_schema_dir(REPO)
    except sr.SchemaDirMissing as exc:
        pytest.skip(str(exc))


@pytest.fixture
def env_doc():
    return yaml.safe_load((SPACK_DIR / "spack.yaml").read_text())


def write_yaml(tmp_path, doc, name="spack.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


# --------------------------------------------------------------------------- shipped recipes


def test_examples_exist():
    names = {p.name for p in EXAMPLES}
    assert {"packages-slurm-pmix.yaml", "packages-site-mpi.yaml"} <= names


def test_schemas_are_keyed_by_section(schema_dir):
    # spack.yaml is {"spack": {...}}, packages.yaml is {"packages": {...}}: validate whole documents.
    for section, filename in sr.SCHEMA_FILES.items():
        schema = json.loads((schema_dir / filename).read_text())
        assert schema["$schema"].startswith("http://json-schema.org/draft-07/")
        assert list(schema["properties"]) == [section]
        assert schema["additionalProperties"] is False


@pytest.mark.parametrize("recipe", SHIPPED, ids=lambda p: p.name)
def test_shipped_recipe_is_valid(recipe, schema_dir):
    assert sr.check_recipe(recipe, schema_dir) == []


@pytest.mark.parametrize("recipe", EXAMPLES, ids=lambda p: p.name)
def test_examples_are_packages_yaml_with_located_externals(recipe):
    kind, doc = sr.load_recipe(recipe)
    assert kind == "packages"
    externals = [e for cfg in doc["packages"].values() for e in cfg.get("externals", [])]
    assert externals, f"{recipe.name} declares no externals"
    assert all(e.get("prefix") or e.get("modules") for e in externals)
    assert doc["packages"]["slurm"]["buildable"] is False


def test_environment_pins_are_the_recipe_maxima(env_doc):
    roots = {sr.parse_spec(s)[0].name: sr.parse_spec(s)[0] for s in env_doc["spack"]["specs"]}
    for name, newest in sr.RECIPE_MAX_VERSIONS.items():
        assert sr.pinned_version(roots[name]) == newest
    assert "py-parsl" not in roots and "parsl" not in roots
    assert roots["openmpi"].variants["schedulers"] == "slurm"
    assert "pmi" not in roots["openmpi"].variants


def test_repos_override_key_is_read_like_spack_reads_it():
    kind, doc = sr.load_recipe(SPACK_DIR / "repos.yaml")
    assert kind == "repos"
    assert doc["repos"]["builtin"]["tag"].startswith("v")


def test_schema_dir_from_env_var(tmp_path, monkeypatch, schema_dir):
    monkeypatch.setenv(sr.SCHEMA_ENV_VAR, str(schema_dir))
    assert sr.find_schema_dir(REPO) == schema_dir
    monkeypatch.setenv(sr.SCHEMA_ENV_VAR, str(tmp_path))
    with pytest.raises(sr.SchemaDirMissing, match=sr.SCHEMA_ENV_VAR):
        sr.find_schema_dir(REPO)


def test_schema_dir_default_is_beside_the_repo(tmp_path, monkeypatch):
    monkeypatch.delenv(sr.SCHEMA_ENV_VAR, raising=False)
    with pytest.raises(sr.SchemaDirMissing) as err:
        sr.find_schema_dir(tmp_path / "repo")
    assert str(tmp_path / "shared" / "spack-schemas") in str(err.value)


# --------------------------------------------------------------------------- broken recipes


def _specs(doc):
    return doc["spack"]["specs"]


def _pkgs(doc):
    return doc["spack"]["packages"]


def _replace_spec(doc, name, new):
    specs = _specs(doc)
    specs[[sr.parse_spec(s)[0].name for s in specs].index(name)] = new


def _drop_spec(doc, name):
    _specs(doc)[:] = [s for s in _specs(doc) if sr.parse_spec(s)[0].name != name]


# (id, mutation of the shipped spack.yaml, text the problem must contain). The schema accepts every
# one of these: only the project rules catch them.
RULE_CASES = [
    ("openmpi5-plus-pmi", lambda d: _replace_spec(d, "openmpi", "openmpi@5.0.8 schedulers=slurm +pmi"),
     "openmpi@5 has no +pmi variant"),
    ("openmpi5-pmi-required-in-packages", lambda d: _pkgs(d).update(openmpi={"require": ["+pmi"]}),
     "openmpi@5 has no +pmi variant"),
    ("openmpi4-pmi-without-slurm", lambda d: _replace_spec(d, "openmpi", "openmpi@4.1.6 +pmi"),
     "+pmi needs schedulers=slurm"),
    ("external-without-prefix",
     lambda d: _pkgs(d)["slurm"].update(externals=[{"spec": "slurm@23-11-10-1 +pmix"}]),
     "has neither prefix nor modules"),
    ("external-relative-prefix",
     lambda d: _pkgs(d)["slurm"].update(externals=[{"spec": "slurm@23-11-10-1", "prefix": "usr"}]),
     "is not an absolute path"),
    ("external-names-another-package",
     lambda d: _pkgs(d)["slurm"].update(externals=[{"spec": "pmix@4.2.2", "prefix": "/usr"}]),
     "names 'pmix' but sits under packages:slurm"),
    ("no-target", lambda d: _pkgs(d).pop("all"), "no target preference"),
    ("microarchitecture-target", lambda d: _pkgs(d)["all"].update(target=["zen4"]),
     "target=zen4 is not a generic target"),
    ("hard-generic-target", lambda d: _pkgs(d)["all"].update(require=["target=x86_64_v3"]),
     "rules out every external"),
    ("openmpi-may-bundle-pmix", lambda d: _pkgs(d).pop("openmpi"), "share one PMIx"),
    ("flux-core-newer-than-recipe", lambda d: _replace_spec(d, "flux-core", "flux-core@0.82.0 ~security"),
     "flux-core@0.82.0 is newer than the newest Spack recipe version (0.81.0)"),
    ("flux-core-unpinned", lambda d: _replace_spec(d, "flux-core", "flux-core ~security"),
     "flux-core is not pinned"),
    ("parsl-from-spack", lambda d: _specs(d).append("py-parsl@2023.08.21"),
     "py-parsl is requested from Spack"),
    ("flux-sched-without-gcc12", lambda d: _pkgs(d).pop("flux-sched"), "needs gcc >= 12"),
    ("flux-sched-with-gcc11", lambda d: _pkgs(d)["flux-sched"].update(require=["%gcc@11:"]),
     "needs gcc >= 12"),
    ("openmpi5-under-flux-without-flux-pmix", lambda d: _drop_spec(d, "flux-pmix"),
     "Open MPI 5 under Flux needs flux-pmix"),
    ("buildable-slurm", lambda d: _pkgs(d).pop("slurm"), "would let Spack build its own Slurm"),
    ("unify-false", lambda d: d["spack"]["concretizer"].update(unify=False),
     "set `concretizer: unify: true`"),
    ("no-view", lambda d: d["spack"].update(view=False), "no view"),
]


@pytest.mark.parametrize("case_id, mutate, expected", RULE_CASES, ids=[c[0] for c in RULE_CASES])
def test_rules_reject_broken_recipe(tmp_path, env_doc, case_id, mutate, expected):
    mutate(env_doc)
    path = write_yaml(tmp_path, env_doc)
    problems = sr.check_recipe(path)  # rules only: no schemas needed
    assert any(expected in p.message for p in problems), [str(p) for p in problems]
    with pytest.raises(sr.RecipeError, match="problem"):
        sr.require_valid(path)


@pytest.mark.parametrize("case_id, mutate, expected", RULE_CASES, ids=[c[0] for c in RULE_CASES])
def test_schema_alone_misses_rule_cases(tmp_path, env_doc, schema_dir, case_id, mutate, expected):
    mutate(env_doc)
    doc = sr.load_recipe(write_yaml(tmp_path, env_doc))[1]
    assert sr.schema_problems(doc, schema_dir / "spack.json", "spack.yaml") == []


SCHEMA_CASES = [
    ("unknown-key", lambda d: d["spack"].update(specz=d["spack"].pop("specs")),
     "Additional properties are not allowed ('specz' was unexpected)"),
    ("unknown-package-key", lambda d: _pkgs(d)["slurm"].update(buildabel=False),
     "'buildabel' was unexpected"),
    ("unify-not-boolean", lambda d: d["spack"]["concretizer"].update(unify="sometimes"),
     "'sometimes' is not of type 'boolean'"),
    ("bad-view-link", lambda d: d["spack"]["view"]["default"].update(link="everything"),
     "'everything' is not one of"),
]


@pytest.mark.parametrize("case_id, mutate, expected", SCHEMA_CASES, ids=[c[0] for c in SCHEMA_CASES])
def test_schema_rejects_broken_recipe(tmp_path, env_doc, schema_dir, case_id, mutate, expected):
    mutate(env_doc)
    problems = sr.check_recipe(write_yaml(tmp_path, env_doc), schema_dir)
    assert any(expected in p.message for p in problems), [str(p) for p in problems]


def test_broken_packages_yaml(tmp_path, schema_dir):
    doc = {"packages": {"slurm": {"buildable": False, "externals": [{"spec": "slurm@22-05-8-1"}]},
                        "openmpi": {"externals": [{"spec": "openmpi@5.0.8 +pmi", "prefix": "/opt/ompi"}]}}}
    problems = sr.check_recipe(write_yaml(tmp_path, doc, "packages.yaml"), schema_dir)
    messages = " | ".join(str(p) for p in problems)
    assert "packages.slurm.externals[0]: external 'slurm@22-05-8-1' has neither prefix nor modules" in messages
    assert "packages.openmpi.externals[0]: openmpi@5 has no +pmi variant" in messages


def test_unknown_top_level_key_is_refused(tmp_path):
    with pytest.raises(sr.RecipeError, match="top-level key must be exactly one of"):
        sr.load_recipe(write_yaml(tmp_path, {"spak": {}}))


def test_unreadable_yaml_is_refused(tmp_path):
    path = tmp_path / "spack.yaml"
    path.write_text("spack: [unclosed\n")
    with pytest.raises(sr.RecipeError, match="not valid YAML"):
        sr.load_recipe(path)


# --------------------------------------------------------------------------- spec parsing


@pytest.mark.parametrize(
    "text, name, versions, variants, deps",
    [
        ("openmpi@5.0.8 schedulers=slurm fabrics=ofi +pmi", "openmpi", ["5.0.8"],
         {"schedulers": "slurm", "fabrics": "ofi", "pmi": True}, []),
        ("flux-core@0.86.0~security ^python@3.12 %gcc@12:", "flux-core", ["0.86.0"],
         {"security": False}, [("python", ["3.12"]), ("gcc", ["12:"])]),
        ("%cxx=gcc@12:", None, [], {}, [("gcc", ["12:"])]),
        ("builtin.openmpi@=5.0.8 -cuda", "openmpi", ["=5.0.8"], {"cuda": False}, []),
        ("gcc@12.2.0 languages='c,c++,fortran'", "gcc", ["12.2.0"], {"languages": "c,c++,fortran"}, []),
        ("target=x86_64_v3", None, [], {"target": "x86_64_v3"}, []),
    ],
)
def test_parse_spec(text, name, versions, variants, deps):
    root, *rest = sr.parse_spec(text)
    assert (root.name, root.versions, root.variants) == (name, versions, variants)
    assert [(n.name, n.versions) for n in rest] == deps


def test_pinned_version_ignores_ranges():
    assert sr.pinned_version(sr.parse_spec("flux-core@0.80:")[0]) is None
    assert sr.pinned_version(sr.parse_spec("flux-core@=0.86.0")[0]) == "0.86.0"
