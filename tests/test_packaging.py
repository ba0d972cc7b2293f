"""The conda environment and pyproject.toml install the same packages."""

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _names(requirements: list[str]) -> set[str]:
    return {re.split(r"[<>=!~ \[]", req, maxsplit=1)[0].lower().replace("_", "-") for req in requirements}


def test_environment_yml_matches_pyproject():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = pyproject["dependencies"] + pyproject["optional-dependencies"]["dev"]
    environment = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(dep["pip"] for dep in environment["dependencies"] if isinstance(dep, dict))
    assert _names(pip_section) == _names(wanted)
    assert sorted(pip_section) == sorted(wanted), "version constraints differ"


def test_makefile_installs_face_recognition_without_its_dlib_source_build():
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"pip install .*--no-deps .*face-recognition", makefile)
    assert "dlib-bin" in (ROOT / "pyproject.toml").read_text()


def test_lock_pins_every_dependency_within_its_constraints():
    from packaging.requirements import Requirement

    pins = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[name.lower().replace("_", "-")] = version
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for text in pyproject["dependencies"] + pyproject["optional-dependencies"]["dev"]:
        requirement = Requirement(text)
        name = requirement.name.lower().replace("_", "-")
        assert name in pins, f"{name} is not locked"
        assert requirement.specifier.contains(pins[name], prereleases=True), f"{name}=={pins[name]} breaks {text}"
    assert "face-recognition" not in pins and "dlib" not in pins  # installed --no-deps, as dlib-bin
