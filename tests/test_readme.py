"""CI runs the README's test command: keep the two the same, so CI catches a missing install step."""

import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_ci_runs_the_readme_test_command():
    readme = (REPO / "README.md").read_text()
    block = re.search(r"```sh\n(.*?)```", readme, re.S).group(1)
    commands = [line for line in block.splitlines() if line and not line.startswith("#")]
    assert len(commands) == 2, f"the README's set-up should be two commands, found {commands}"
    test_command = commands[1]
    assert "pytest" in test_command
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    assert test_command in ci, f".ci/run does not run the README's test command {test_command!r}"


def test_the_test_command_installs_what_the_tests_check_with():
    """`install.sh --test` passes --test on to the Debian packages step, which then adds the test tools
    (shellcheck): a check the suite relies on must not be skipped on a fresh machine for want of its tool."""
    import subprocess
    install = (REPO / "install_scripts" / "install.sh").read_text()
    assert '--test) extras="flux,test"; deps_args+=(--test)' in install
    assert 'install-cluster-deps.sh" "${deps_args[@]}"' in install
    usage = subprocess.run(["bash", str(REPO / "install_scripts" / "install-cluster-deps.sh"), "--help"],
                           capture_output=True, text=True, timeout=30).stdout
    assert re.search(r"--test .*shellcheck", usage), usage
