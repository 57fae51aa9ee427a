"""Check fluxmpi's Spack recipes (spack.yaml, packages.yaml, repos.yaml) without Spack.

Two layers:
- shape: Spack's published JSON Schemas (unknown keys, wrong types), validated with jsonschema Draft 7;
- project rules the schemas cannot express: impossible variants (openmpi@5 +pmi), externals Spack
  could not locate, a generic build target, pins within what Spack's recipes offer, Parsl kept out
  of Spack, and the pieces a Flux + Open MPI 5 + Slurm environment needs together.

Spack itself does not run here, so package names, versions and variants are only checked against
the recipe facts recorded below (see spack/README.md), not by a real concretization.
"""

from __future__ import annotations

import json
import os
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import yaml

# Newest version each Spack recipe offers in the spack-packages release spack/repos.yaml pins
# (v2026.06.0, read from its package.py files; tests/test_spack_concretize.py proves them).
RECIPE_MAX_VERSIONS = {
    "flux-core": "0.81.0",
    "flux-sched": "0.48.0",
    "flux-pmix": "0.7.0",
    "py-mpi4py": "4.1.1",
}
# The environment exists to provide these; a spack.yaml without one of them is not fluxmpi's.
REQUIRED_ROOTS = ("flux-core", "flux-sched", "flux-pmix", "openmpi", "py-mpi4py", "python")
# Targets whose binaries run on every CPU of that family level (no host microarchitecture).
GENERIC_TARGETS = frozenset(
    {"x86_64", "x86_64_v2", "x86_64_v3", "x86_64_v4", "aarch64", "ppc64le", "riscv64"}
)
# The targets Spack gives detected externals: the only ones a hard `all: require` may name.
TARGET_FAMILIES = frozenset({"x86_64", "aarch64", "ppc64le", "riscv64"})
# Keys Spack reads in a packages:<name>:externals entry (the schema lets any key through).
EXTERNAL_KEYS = frozenset({"spec", "prefix", "modules", "id", "extra_attributes"})
PARSL_PIP_PIN = "parsl==2026.10.26"
FLUX_SCHED_MIN_GCC = 12

SCHEMA_ENV_VAR = "FLUXMPI_SPACK_SCHEMAS"
SCHEMA_FILES = {"spack": "spack.json", "packages": "packages.json", "repos": "repos.json"}
REPO_ROOT = Path(__file__).resolve().parent.parent


class RecipeError(ValueError):
    """A recipe (or the schemas to check it) is unusable; the message names the file and the fix."""


class SchemaDirMissing(RecipeError):
    """Spack's JSON Schemas are not where fluxmpi looks for them."""


@dataclass(frozen=True)
class Problem:
    where: str  # "<file>: <dotted path in the document>"
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


# --------------------------------------------------------------------------- schemas


def find_schema_dir(repo_root: Path | None = None) -> Path:
    """$FLUXMPI_SPACK_SCHEMAS, else <repo>/../shared/spack-schemas; raise SchemaDirMissing naming both."""
    root = Path(repo_root) if repo_root is not None else REPO_ROOT
    from_env = os.environ.get(SCHEMA_ENV_VAR)
    candidate = Path(from_env) if from_env else root.parent / "shared" / "spack-schemas"
    if (candidate / SCHEMA_FILES["spack"]).is_file():
        return candidate
    source = f"${SCHEMA_ENV_VAR}" if from_env else f"the default (${SCHEMA_ENV_VAR} unset)"
    raise SchemaDirMissing(
        f"Spack JSON Schemas not found: {candidate} (from {source}) has no {SCHEMA_FILES['spack']}; "
        f"set {SCHEMA_ENV_VAR} to a directory holding Spack's published schemas "
        "(spack.json, packages.json, ...)"
    )


def _strip_override_colons(node: Any) -> Any:
    # Spack's `section::` (override instead of merge) loads as a key with a trailing colon;
    # Spack strips it before validating, and so do we.
    if isinstance(node, dict):
        return {
            (k[:-1] if isinstance(k, str) and k.endswith(":") else k): _strip_override_colons(v)
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [_strip_override_colons(v) for v in node]
    return node


def _dotted(path) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _most_specific(err):
    # anyOf/oneOf failures say only "not valid under any of the given schemas"; the branch error
    # deepest in the document says what is actually wrong (first one wins a tie).
    while err.context:
        err = max(err.context, key=lambda e: len(e.absolute_path))
    return err


def schema_problems(doc: Any, schema_file: Path, label: str) -> list[Problem]:
    """Validate doc against one Spack schema file (Draft 7); one Problem per violation."""
    import jsonschema  # test/doctor dependency only

    schema = json.loads(Path(schema_file).read_text())
    validator = jsonschema.Draft7Validator(schema)
    problems = []
    for err in sorted(validator.iter_errors(doc), key=lambda e: [str(p) for p in e.absolute_path]):
        detail = _most_specific(err)
        problems.append(Problem(f"{label}: {_dotted(detail.absolute_path)}", detail.message))
    return problems


# --------------------------------------------------------------------------- spec strings


@dataclass
class SpecNode:
    """One node of a Spack spec string: name, version constraints, variants, and where it sits."""

    name: str | None = None
    versions: list[str] = field(default_factory=list)
    variants: dict[str, Any] = field(default_factory=dict)
    direct: bool = False  # introduced by % (a direct dependency such as a compiler)


_VERSION = re.compile(r"@([\w.:,=-]+)")
_BOOL_VARIANT = re.compile(r"(\+\+|~~|\+|~)([A-Za-z_][\w-]*)")
_NAME = re.compile(r"[A-Za-z_][\w.-]*")
_KEY_VALUE = re.compile(r"([A-Za-z_][\w-]*)==?(.*)")


def parse_spec(text: str) -> list[SpecNode]:
    """Split a spec string into nodes; the first is the root (anonymous when the string has no name).

    Enough of Spack's syntax for the project rules: names (with namespace), @versions, +/~ variants,
    key=value variants, ^dependencies and %direct dependencies (including %virtual=provider).
    """
    nodes = [SpecNode()]
    for chunk in shlex.split(text):
        if chunk.startswith("-") and _NAME.fullmatch(chunk[1:]):
            nodes[-1].variants[chunk[1:]] = False  # "-foo" after a space means ~foo
            continue
        pos = 0
        while pos < len(chunk):
            ch = chunk[pos]
            if ch in "^%":
                nodes.append(SpecNode(direct=ch == "%"))
                pos += 1
                continue
            if m := _VERSION.match(chunk, pos):
                nodes[-1].versions.append(m.group(1))
                pos = m.end()
                continue
            if m := _BOOL_VARIANT.match(chunk, pos):
                nodes[-1].variants[m.group(2)] = m.group(1)[0] == "+"
                pos = m.end()
                continue
            if m := _KEY_VALUE.fullmatch(chunk, pos):
                key, value = m.group(1), m.group(2)
                if nodes[-1].direct and nodes[-1].name is None and not nodes[-1].versions:
                    # %cxx=gcc@12: assigns a provider: the node is the provider itself.
                    provider = _NAME.match(value)
                    nodes[-1].name = provider.group(0) if provider else None
                    nodes[-1].versions += _VERSION.findall(value)
                else:
                    nodes[-1].variants[key] = value
                break
            if m := _NAME.match(chunk, pos):
                if nodes[-1].name is not None or nodes[-1].versions or nodes[-1].variants:
                    nodes.append(SpecNode())  # a second name starts another root
                nodes[-1].name = m.group(0).rsplit(".", 1)[-1]  # drop a namespace like builtin.
                pos = m.end()
                continue
            raise RecipeError(f"cannot read spec {text!r} at {chunk[pos:]!r}")
    return nodes


def _version_key(text: str) -> tuple:
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"[.-]", text.lstrip("=")) if p)


def _lower_bound(constraint: str) -> str | None:
    """Lowest version a constraint admits ("12:" -> "12", "4:4.1" -> "4", ":4" -> None)."""
    first = constraint.split(",")[0].lstrip("=")
    low = first.split(":")[0]
    return low or None


def pinned_version(node: SpecNode) -> str | None:
    """The single version (or release series) a node is pinned to, if it is pinned."""
    exact = [v for v in node.versions if ":" not in v and "," not in v]
    return exact[0].lstrip("=") if exact else None


def _version_at_least(constraint: str, minimum: int) -> bool:
    low = _lower_bound(constraint)
    if low is None:
        return False
    key = _version_key(low)
    return bool(key) and isinstance(key[0], int) and key[0] >= minimum


# --------------------------------------------------------------------------- collecting constraints


@dataclass
class _Use:
    where: str  # dotted path inside the document (the file label is added by Problem)
    node: SpecNode  # the node this use constrains
    deps: list[SpecNode] = field(default_factory=list)  # its ^ and % dependencies


def _require_strings(value: Any, where: str) -> Iterator[tuple[str, str]]:
    """Spec strings of a require/prefer/conflict/variants value, with where each sits."""
    if isinstance(value, str):
        yield where, value
    elif isinstance(value, list):
        for i, item in enumerate(value):
            if isinstance(item, str):
                yield f"{where}[{i}]", item
            elif isinstance(item, dict):
                if isinstance(item.get("spec"), str):
                    yield f"{where}[{i}].spec", item["spec"]
                for alt in ("one_of", "any_of"):
                    for j, s in enumerate(item.get(alt) or []):
                        if isinstance(s, str):
                            yield f"{where}[{i}].{alt}[{j}]", s


@dataclass
class _Recipe:
    label: str
    kind: str
    body: dict
    roots: dict[str, list[_Use]] = field(default_factory=dict)
    config: dict[str, list[_Use]] = field(default_factory=dict)  # packages:<name>:require/variants

    def uses(self, name: str) -> list[_Use]:
        return self.roots.get(name, []) + self.config.get(name, [])


def _collect(label: str, kind: str, body: dict) -> _Recipe:
    recipe = _Recipe(label, kind, body)
    if kind == "spack":
        for i, item in enumerate(body.get("specs") or []):
            texts = []
            if isinstance(item, str):
                texts = [(f"spack.specs[{i}]", item)]
            elif isinstance(item, dict):
                for j, row in enumerate(item.get("matrix") or []):
                    texts += [(f"spack.specs[{i}].matrix[{j}][{k}]", s) for k, s in enumerate(row)]
            for where, text in texts:
                nodes = parse_spec(text)
                root = nodes[0]
                if root.name:
                    recipe.roots.setdefault(root.name, []).append(_Use(where, root, nodes[1:]))
    prefix = "spack.packages" if kind == "spack" else "packages"
    for pkg, cfg in _packages(recipe).items():
        if not isinstance(cfg, dict):
            continue
        for key in ("require", "prefer", "variants"):
            for where, text in _require_strings(cfg.get(key), f"{prefix}.{pkg}.{key}"):
                nodes = parse_spec(text)
                root = nodes[0]
                if root.name in (None, pkg):
                    root.name = pkg  # an anonymous requirement constrains the package it sits under
                    recipe.config.setdefault(pkg, []).append(_Use(where, root, nodes[1:]))
    return recipe


def _packages(recipe: _Recipe) -> dict:
    # spack.yaml nests the packages section; a packages.yaml body is that section itself.
    section = recipe.body.get("packages") if recipe.kind == "spack" else recipe.body
    return section if isinstance(section, dict) else {}


def _pkg_where(recipe: _Recipe, pkg: str) -> str:
    return f"{'spack.' if recipe.kind == 'spack' else ''}packages.{pkg}"


def _externals(recipe: _Recipe, pkg: str) -> list[_Use]:
    """Parsed spec of each external entry of a package (entries without a spec are skipped)."""
    cfg = _packages(recipe).get(pkg)
    out = []
    for i, ext in enumerate((cfg or {}).get("externals") or [] if isinstance(cfg, dict) else []):
        if isinstance(ext, dict) and isinstance(ext.get("spec"), str) and ext["spec"]:
            nodes = parse_spec(ext["spec"])
            out.append(_Use(f"{_pkg_where(recipe, pkg)}.externals[{i}]", nodes[0], nodes[1:]))
    return out


# --------------------------------------------------------------------------- rules


def _problem(recipe: _Recipe, where: str, message: str) -> Problem:
    return Problem(f"{recipe.label}: {where}", message)


def _rule_externals(recipe: _Recipe) -> Iterator[Problem]:
    for pkg, cfg in _packages(recipe).items():
        if not isinstance(cfg, dict):
            continue
        for i, ext in enumerate(cfg.get("externals") or []):
            if not isinstance(ext, dict):
                continue  # the schema reports the shape
            where = f"{_pkg_where(recipe, pkg)}.externals[{i}]"
            unknown = sorted(set(ext) - EXTERNAL_KEYS)
            if unknown:
                yield _problem(
                    recipe, where,
                    f"unknown key(s) {', '.join(unknown)} in an external entry "
                    f"(Spack reads only {', '.join(sorted(EXTERNAL_KEYS))})",
                )
            spec = ext.get("spec", "")
            if not ext.get("prefix") and not ext.get("modules"):
                yield _problem(
                    recipe, where,
                    f"external {spec!r} has neither prefix nor modules: Spack cannot locate it; "
                    "add `prefix: /path` (the directory above its bin/ and lib/) or `modules: [name]`",
                )
            prefix = ext.get("prefix")
            if isinstance(prefix, str) and prefix and not prefix.startswith(("/", "$")):
                yield _problem(recipe, where, f"external prefix {prefix!r} is not an absolute path")
            if isinstance(spec, str) and spec:
                named = parse_spec(spec)[0].name
                if named != pkg:
                    yield _problem(
                        recipe, where,
                        f"external spec {spec!r} names {named!r} but sits under packages:{pkg}; "
                        f"start the spec with {pkg}",
                    )


def _openmpi_uses(recipe: _Recipe) -> list[_Use]:
    return recipe.uses("openmpi") + _externals(recipe, "openmpi")


def _openmpi_is_5(recipe: _Recipe) -> bool:
    return any(_version_at_least(v, 5) for u in _openmpi_uses(recipe) for v in u.node.versions)


def _rule_openmpi_pmi(recipe: _Recipe) -> Iterator[Problem]:
    uses = _openmpi_uses(recipe)
    pmi = [u for u in uses if u.node.variants.get("pmi") is True]
    if not pmi:
        return
    if _openmpi_is_5(recipe):
        yield _problem(
            recipe, pmi[0].where,
            "openmpi@5 has no +pmi variant (it exists only for openmpi@:4 with schedulers=slurm): "
            "Open MPI 5 speaks PMIx only; drop +pmi and launch with srun --mpi=pmix",
        )
        return
    schedulers = " ".join(str(u.node.variants.get("schedulers", "")) for u in uses)
    if "slurm" not in schedulers:
        yield _problem(
            recipe, pmi[0].where, "openmpi +pmi needs schedulers=slurm (it links Slurm's PMI)"
        )


def _rule_target(recipe: _Recipe) -> Iterator[Problem]:
    all_cfg = _packages(recipe).get("all")
    preferred = all_cfg.get("target") if isinstance(all_cfg, dict) else None
    if not preferred:
        yield _problem(
            recipe, "spack.packages.all.target",
            "no target preference: add `packages: all: target: [x86_64_v3]` (a generic target) so "
            "the binaries run on other instance types, not only the build host's CPU",
        )
    targets = [(f"spack.packages.all.target[{i}]", str(t)) for i, t in enumerate(preferred or [])]
    uses = recipe.config.get("all", []) + [u for us in recipe.roots.values() for u in us]
    targets += [(u.where, str(u.node.variants["target"])) for u in uses if "target" in u.node.variants]
    for where, target in targets:
        if target not in GENERIC_TARGETS:
            yield _problem(
                recipe, where,
                f"target={target} is not a generic target: binaries would need that CPU; use one of "
                f"{', '.join(sorted(GENERIC_TARGETS))} (x86_64_v3 covers every AVX2 instance type)",
            )
        elif where.startswith("spack.packages.all.require") and target not in TARGET_FAMILIES:
            yield _problem(
                recipe, where,
                f"`packages: all: require: target={target}` rules out every external (Spack detects "
                f"Slurm, gcc and glibc as target={_family(target)}), so concretization fails with "
                f"'Cannot select a single node_target': write it as the preference "
                f"`packages: all: target: [{target}]`",
            )


def _family(target: str) -> str:
    return target.split("_v")[0] if target.startswith("x86_64") else target


def _rule_one_pmix(recipe: _Recipe) -> Iterator[Problem]:
    # Open MPI 5 built by Spack bundles a PMIx of its own unless told not to; flux-pmix and the
    # site's Slurm plugin would then use another one than the ranks.
    if "openmpi" not in recipe.roots or not _openmpi_is_5(recipe) or _externals(recipe, "openmpi"):
        return
    internal = [u.node.variants.get("internal-pmix") for u in recipe.uses("openmpi")]
    if False not in internal:
        yield _problem(
            recipe, "spack.packages.openmpi.require",
            "nothing keeps Open MPI 5 off its bundled PMIx (+internal-pmix): add "
            "`packages: openmpi: require: ['~internal-pmix']` so Open MPI and flux-pmix share one PMIx",
        )


def _rule_roots_and_pins(recipe: _Recipe) -> Iterator[Problem]:
    for name in REQUIRED_ROOTS:
        if name not in recipe.roots:
            yield _problem(recipe, "spack.specs", f"{name} is missing from specs: fluxmpi needs it")
    for name, newest in RECIPE_MAX_VERSIONS.items():
        if name not in recipe.roots:
            continue
        pins = [(u.where, pinned_version(u.node)) for u in recipe.uses(name)]
        pins = [(w, v) for w, v in pins if v]
        if not pins:
            yield _problem(
                recipe, recipe.roots[name][0].where, f"{name} is not pinned: write {name}@{newest}"
            )
        for where, version in pins:
            if _version_key(version) > _version_key(newest):
                yield _problem(
                    recipe, where,
                    f"{name}@{version} is newer than the newest Spack recipe version ({newest}): "
                    f"pin {name}@{newest} or older",
                )


def _rule_no_parsl(recipe: _Recipe) -> Iterator[Problem]:
    for name in ("py-parsl", "parsl"):
        for use in recipe.roots.get(name, []):
            yield _problem(
                recipe, use.where,
                f"{name} is requested from Spack, whose recipe offers only 2023.08.21: remove it; "
                f"install_scripts/spack-env-install.sh pip-installs {PARSL_PIP_PIN} into a venv "
                "made from the environment's python",
            )


def _rule_flux_sched_gcc(recipe: _Recipe) -> Iterator[Problem]:
    if "flux-sched" not in recipe.roots:
        return
    uses = recipe.uses("flux-sched") + recipe.config.get("all", [])
    gcc_ok = any(
        dep.name == "gcc" and any(_version_at_least(v, FLUX_SCHED_MIN_GCC) for v in dep.versions)
        for u in uses for dep in u.deps
    )
    if not gcc_ok:
        yield _problem(
            recipe, "spack.packages.flux-sched.require",
            f"flux-sched@{RECIPE_MAX_VERSIONS['flux-sched']} needs gcc >= {FLUX_SCHED_MIN_GCC}: add "
            f"`packages: flux-sched: require: ['%gcc@{FLUX_SCHED_MIN_GCC}:']`",
        )


def _rule_flux_pmix(recipe: _Recipe) -> Iterator[Problem]:
    if "flux-core" in recipe.roots and "openmpi" in recipe.roots and _openmpi_is_5(recipe):
        if "flux-pmix" not in recipe.roots:
            yield _problem(
                recipe, "spack.specs",
                "Open MPI 5 under Flux needs flux-pmix (ranks start with `flux run -o pmi=pmix`): "
                f"add flux-pmix@{RECIPE_MAX_VERSIONS['flux-pmix']}",
            )


def _rule_slurm_external(recipe: _Recipe) -> Iterator[Problem]:
    schedulers = " ".join(str(u.node.variants.get("schedulers", "")) for u in recipe.uses("openmpi"))
    slurm = _packages(recipe).get("slurm") or {}
    if "slurm" in schedulers and slurm.get("buildable") is not False:
        yield _problem(
            recipe, _pkg_where(recipe, "slurm"),
            "openmpi schedulers=slurm would let Spack build its own Slurm: set "
            "`packages: slurm: buildable: false` and supply the cluster's Slurm as an external "
            "(spack/examples/packages-slurm-pmix.yaml)",
        )


def _rule_env_settings(recipe: _Recipe) -> Iterator[Problem]:
    unify = (recipe.body.get("concretizer") or {}).get("unify")
    if unify is not True:
        yield _problem(
            recipe, "spack.concretizer.unify",
            f"unify is {unify!r}: set `concretizer: unify: true` so the view holds one python and "
            "one MPI that mpi4py and Flux share",
        )
    if not recipe.body.get("view"):
        yield _problem(
            recipe, "spack.view",
            "no view: the env file puts the view's bin/ on PATH; set `view:` (spack/spack.yaml uses "
            "root: view)",
        )


SPACK_RULES = (
    _rule_roots_and_pins, _rule_target, _rule_openmpi_pmi, _rule_no_parsl, _rule_flux_sched_gcc,
    _rule_flux_pmix, _rule_one_pmix, _rule_slurm_external, _rule_env_settings, _rule_externals,
)
PACKAGES_RULES = (_rule_openmpi_pmi, _rule_externals)


# --------------------------------------------------------------------------- entry points


def load_recipe(path: Path) -> tuple[str, dict]:
    """Read a recipe; return (kind, document) where kind is spack, packages or repos."""
    path = Path(path)
    try:
        doc = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise RecipeError(f"cannot read recipe {path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise RecipeError(f"{path} is not valid YAML: {exc}") from exc
    doc = _strip_override_colons(doc)
    kinds = [k for k in SCHEMA_FILES if isinstance(doc, dict) and k in doc]
    if len(kinds) != 1:
        top = sorted(doc) if isinstance(doc, dict) else type(doc).__name__
        raise RecipeError(
            f"{path}: top-level key must be exactly one of {', '.join(SCHEMA_FILES)}; found {top}"
        )
    return kinds[0], doc


def rule_problems(kind: str, doc: dict, label: str) -> list[Problem]:
    """Project rules for one loaded recipe (no schemas needed)."""
    body = doc.get(kind) or {}
    if kind == "repos" or not isinstance(body, dict):
        return []
    recipe = _collect(label, kind, body)
    rules = SPACK_RULES if kind == "spack" else PACKAGES_RULES
    return [p for rule in rules for p in rule(recipe)]


def check_recipe(path: Path, schema_dir: Path | None = None) -> list[Problem]:
    """All problems of one recipe file: schema (when schema_dir is given) plus project rules."""
    path = Path(path)
    kind, doc = load_recipe(path)
    label = path.name
    problems = []
    if schema_dir is not None:
        problems += schema_problems(doc, Path(schema_dir) / SCHEMA_FILES[kind], label)
    problems += rule_problems(kind, doc, label)
    return problems


def require_valid(path: Path, schema_dir: Path | None = None) -> None:
    """Raise RecipeError listing every problem of the recipe, if it has any."""
    problems = check_recipe(path, schema_dir)
    if problems:
        listing = "\n  ".join(str(p) for p in problems)
        raise RecipeError(f"{path} has {len(problems)} problem(s):\n  {listing}")
