"""Installable into a user's environment (issue 10 item 9): settings.ini requires compatible ranges, constraints.txt pins them."""
from __future__ import annotations
import configparser, shlex
from packaging.requirements import Requirement
from tokenlab.lab.core import repo_root


def _cfg():
    c = configparser.ConfigParser(delimiters=["="]); c.read(repo_root() / "settings.ini", encoding="utf-8")
    return c["DEFAULT"]


def _norm(name: str) -> str: return name.lower().replace("_", "-")


def _pins() -> dict[str, str]:
    lines = (repo_root() / "constraints.txt").read_text().split()
    return {_norm(l.split("==")[0]): l.split("==")[1] for l in lines if "==" in l}


def test_requirements_are_ranges_with_lower_bounds():
    reqs = [Requirement(r) for r in shlex.split(_cfg()["requirements"])]
    assert len(reqs) >= 20
    for r in reqs:
        ops = {s.operator for s in r.specifier}
        assert ">=" in ops and "==" not in ops, f"{r}: needs a lower bound and no exact pin"


def test_constraints_pin_every_requirement_inside_its_range():
    "`make` installs -c constraints.txt: every requirement and dev requirement has an exact pin that its range allows."
    pins = _pins()
    for r in [Requirement(x) for x in shlex.split(_cfg()["requirements"]) + _cfg()["dev_requirements"].split()]:
        v = pins.get(_norm(r.name))
        assert v is not None, f"{r.name} has no pin in constraints.txt"
        assert r.specifier.contains(v, prereleases=True), f"constraints.txt pins {r.name}=={v}, outside {r.specifier}"
