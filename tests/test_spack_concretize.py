"""spack/spack.yaml concretizes, with a real Spack, against each shipped site packages.yaml.

Opt-in (about a minute per concretization on 2 cores): point FLUXMPI_SPACK at a Spack v1.x
`bin/spack` and FLUXMPI_SPACK_PACKAGES at a spack-packages checkout of the tag spack/repos.yaml
pins; skipped with the reason otherwise. Offline: the builtin repository is that checkout, the
compiler is the host's gcc, clingo comes from the Python Spack runs on.
"""

import shutil
from pathlib import Path

import pytest
import yaml

import spack_recipes

pytestmark = pytest.mark.spack

REPO = Path(__file__).resolve().parent.parent
MANIFEST = REPO / "spack" / "spack.yaml"
EXAMPLES = sorted((REPO / "spack" / "examples").glob("packages-*.yaml"))


@pytest.fixture
def spack(private_spack):
    return private_spack


def _mutated_manifest(tmp_path, mutate) -> Path:
    doc = yaml.safe_load(MANIFEST.read_text())
    mutate(doc["spack"])
    out = tmp_path / "spack.yaml"
    out.write_text(yaml.safe_dump(doc, sort_keys=False))
    return out


def _externals_in(site: Path) -> set[str]:
    return {name for name, cfg in (yaml.safe_load(site.read_text())["packages"] or {}).items() if cfg.get("externals")}


@pytest.mark.parametrize("site", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_environment_concretizes_with_each_example_site(spack, tmp_path, site):
    result, output = spack.concretize(MANIFEST, site, tmp_path)
    assert result is not None, f"spack concretize failed with {site.name}:\n{output[-4000:]}"

    # Every pin holds, and nothing newer than the pinned spack-packages offers was needed.
    for name, version in spack_recipes.RECIPE_MAX_VERSIONS.items():
        assert result.one(name).version == version, name
    assert result.one("flux-core").variant("security") is False
    assert result.one("python").version.startswith("3.12.")

    openmpi = result.one("openmpi")
    assert openmpi.version == "5.0.8"
    assert openmpi.variant("schedulers") == ["slurm"] and openmpi.variant("fabrics") == ["ofi"]
    assert "openmpi" in result.one("py-mpi4py").dependencies
    assert "openmpi" in result.one("flux-pmix").dependencies

    externals = _externals_in(site)
    for name in externals & {n.name for n in result.nodes}:
        assert all(n.external for n in result.named(name)), f"{name} was not taken from {site.name}"
    if "openmpi" not in externals:
        # Spack builds Open MPI: on the one PMIx that flux-pmix also links, never a bundled copy.
        assert openmpi.variant("internal-pmix") is False
        assert "pmix" in openmpi.dependencies
        assert len(result.named("pmix")) == 1, [n.version for n in result.named("pmix")]
        assert result.one("slurm").external
    # What Spack builds is for the generic target; externals keep the family target they were found as.
    built = [n for n in result.nodes if not n.external]
    assert built and {n.target for n in built} == {"x86_64_v3"}


def test_a_version_the_pinned_recipes_lack_fails_naming_it(spack, tmp_path):
    def newer_flux(env):
        env["specs"] = ["flux-core@0.86.0 ~security" if s.startswith("flux-core") else s for s in env["specs"]]

    manifest = _mutated_manifest(tmp_path, newer_flux)
    result, output = spack.concretize(manifest, EXAMPLES[0], tmp_path / "run")
    assert result is None
    assert "flux-core@0.86.0" in output


def test_a_hard_target_requirement_rules_out_the_externals(spack, tmp_path):
    def hard_target(env):
        env["packages"]["all"] = {"require": [{"spec": "target=x86_64_v3"}]}

    manifest = _mutated_manifest(tmp_path, hard_target)
    result, output = spack.concretize(manifest, REPO / "spack" / "examples" / "packages-debian12.yaml", tmp_path / "run")
    assert result is None
    assert "node_target" in output


def test_a_pmix_older_than_open_mpi_needs_fails_instead_of_a_second_pmix(spack, tmp_path):
    # Debian 12's libpmix 4.2.2 as an external: Open MPI 5 needs 4.2.4 or newer, and with
    # ~internal-pmix required Spack must refuse rather than bundle a second PMIx into Open MPI.
    site = tmp_path / "packages.yaml"
    shutil.copy(REPO / "spack" / "examples" / "packages-debian12.yaml", site)
    doc = yaml.safe_load(site.read_text())
    doc["packages"]["pmix"] = {
        "buildable": False,
        "externals": [{"spec": "pmix@4.2.2", "prefix": "/usr/lib/x86_64-linux-gnu/pmix2"}],
    }
    site.write_text(yaml.safe_dump(doc, sort_keys=False))
    result, output = spack.concretize(MANIFEST, site, tmp_path / "run")
    assert result is None
    assert "pmix@4.2.4:" in output


def test_open_mpi_5_with_pmi_fails(spack, tmp_path):
    # +pmi (Slurm's PMI-1/2) exists only for openmpi@1.5.5:4; Open MPI 5 speaks PMIx only.
    def with_pmi(env):
        env["specs"] = ["openmpi@5.0.8 schedulers=slurm fabrics=ofi +pmi" if s.startswith("openmpi") else s
                        for s in env["specs"]]

    manifest = _mutated_manifest(tmp_path, with_pmi)
    result, output = spack.concretize(manifest, EXAMPLES[0], tmp_path / "run")
    assert result is None
    assert "pmi" in output and "openmpi" in output
