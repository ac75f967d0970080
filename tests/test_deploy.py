"""The deployment kit: Asterisk samples checked against Asterisk 22.10.1's source, the systemd unit, the container."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from configparser import ConfigParser
from pathlib import Path

import pytest


ROOT = Path(__file__).resolve().parent.parent
ASTERISK = ROOT / "etc" / "asterisk"
FACTS = Path(__file__).parent / "fixtures" / "asterisk" / "asterisk-22.10.1.tsv"


def facts(kind: str) -> list[list[str]]:
    rows = [line.split("\t") for line in FACTS.read_text().splitlines() if not line.startswith("#")]
    return [row[1:] for row in rows if row[0] == kind]


def conf_sections(name: str) -> list[tuple[str, list[tuple[str, str]]]]:
    """An Asterisk .conf file as (section, [(key, value)]) in order; ';' starts a comment; repeated names allowed."""
    sections: list[tuple[str, list[tuple[str, str]]]] = []
    for raw in (ASTERISK / name).read_text().splitlines():
        line = raw.split(";", 1)[0].strip()
        if not line:
            continue
        if m := re.fullmatch(r"\[([^\]]+)\]", line):
            sections.append((m.group(1), []))
            continue
        key, _, value = line.partition("=")
        sections[-1][1].append((key.strip(), value.lstrip(">").strip()))
    return sections


def required_modules() -> list[str]:
    return [v.removesuffix(".so") for _, pairs in conf_sections("modules.conf") for k, v in pairs if k == "require"]


def test_required_modules_exist_and_build_by_default() -> None:
    """Every module modules.conf requires is one Asterisk 22 has and builds by default (not deprecated)."""
    modules = {row[0]: row for row in facts("module")}
    required = required_modules()
    assert len(required) > 20
    for name in required:
        assert name in modules, name
        assert modules[name][2] == "yes" and modules[name][1] != "deprecated", modules[name]
        # What it depends on (Asterisk modules) is required too, or loaded by autoload at least.
        for dep in modules[name][3].split(","):
            assert dep == "-" or dep not in modules or dep in required or dep.startswith("res_"), (name, dep)


def test_dialplan_uses_only_required_applications_and_functions() -> None:
    """Each application and function of extensions.conf is Asterisk's core or a module modules.conf requires."""
    apps = dict(facts("application"))
    functions = dict(facts("function"))
    provided = set(required_modules()) | {"core"}
    used_apps: set[str] = set()
    used_functions: set[str] = set()
    for _, pairs in conf_sections("extensions.conf"):
        for key, value in pairs:
            if key in ("exten", "same"):
                used_apps.add(re.search(r",\s*(\w+)\(", value if key == "exten" else "," + value).group(1))
                used_functions.update(re.findall(r"\$\{([A-Z_]+)\(", value))
                used_functions.update(re.findall(r"Set\(([A-Z_]+)\(", value))
    assert {"AudioSocket", "Dial", "Stasis"} <= used_apps and {"UUID", "CURL"} <= used_functions
    for app in used_apps:
        assert apps.get(app) in provided, app
    for function in used_functions:
        assert functions.get(function) in provided, function
    # Neither needs what a stock build may lack: func_speex (DENOISE) or an external uuidgen (SHELL).
    assert not used_functions & {"DENOISE", "SHELL"}


@pytest.mark.parametrize("name", ["pjsip.conf", "ari.conf", "http.conf"])
def test_config_sample_options_are_asterisks(name: str) -> None:
    """Every key of the sample is an option Asterisk 22.10.1 documents for that object type."""
    options: dict[str, set[str]] = {}
    for file, obj, option in facts("option"):
        if file == name:
            options.setdefault(obj, set()).add(option)
    for section, pairs in conf_sections(name):
        kind = dict(pairs).get("type", "general" if section == "general" else "?")
        assert kind in options, (section, kind)
        for key, _ in pairs:
            assert key in options[kind], (name, section, key)


def test_ari_user_matches_the_config_example() -> None:
    """ari.conf's read-write user is the ARI_USERNAME/ARI_PASSWORD pair of etc/avr.conf.example and the README."""
    users = {s: dict(p) for s, p in conf_sections("ari.conf") if dict(p).get("type") == "user"}
    example = (ROOT / "etc" / "avr.conf.example").read_text()
    username = re.search(r"^# ari_username = (\S+)$", example, re.MULTILINE).group(1)
    password = re.search(r"^# ari_password = (\S+)$", example, re.MULTILINE).group(1)
    assert users[username]["password"] == password and users[username]["read_only"] == "no"
    assert f"user `{username}`, password `{password}`" in (ROOT / "README.md").read_text()
    http = dict(conf_sections("http.conf")[0][1])
    assert http["enabled"] == "yes" and f"http://127.0.0.1:{http['bindport']}" in example


def unit() -> dict[str, list[str]]:
    entries: dict[str, list[str]] = {}
    for line in (ROOT / "etc" / "systemd" / "avr.service").read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            entries.setdefault(key, []).append(value)
    return entries


def test_unit_runs_twistd_avr_with_valid_options() -> None:
    """ExecStart is the venv's twistd with valid twistd options and the avr options; the config path it names is the
    one the config example's header tells to copy it to; it stops after the drain."""
    program, *args = unit()["ExecStart"][0].split()
    assert program.endswith("/bin/twistd")
    from twisted.scripts.twistd import ServerOptions

    assert args[:3] == ["--nodaemon", "--pidfile=", "avr"]
    options = ServerOptions()
    # twistd's options and the avr subcommand parse; then avr refuses the absent /etc/avr/avr.conf.
    with pytest.raises(SystemExit, match="/etc/avr/avr.conf"):
        options.parseOptions(args)
    assert options["nodaemon"] and options["pidfile"] == "" and options.subCommand == "avr"
    assert args[3:] == ["--config", "/etc/avr/avr.conf"]
    assert "/etc/avr/avr.conf" in (ROOT / "etc" / "avr.conf.example").read_text().splitlines()[0]
    assert unit()["User"] == ["avr"] and unit()["CapabilityBoundingSet"] == [""]
    assert int(unit()["TimeoutStopSec"][0]) > 30 + 3  # DRAIN_TIMEOUT's default plus a webhook attempt


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_unit_verifies(tmp_path: Path) -> None:
    """systemd-analyze verify accepts the unit (ExecStart pointed at this venv's twistd, which exists here)."""
    text = (ROOT / "etc" / "systemd" / "avr.service").read_text()
    twistd = Path(sys.executable).parent / "twistd"
    copy = tmp_path / "avr.service"
    copy.write_text(text.replace("/opt/avr/bin/twistd", str(twistd)))
    done = subprocess.run(["systemd-analyze", "verify", str(copy)], capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout + done.stderr) == (0, "")
    copy.write_text(text.replace("/opt/avr/bin/twistd", str(tmp_path / "none")))
    assert subprocess.run(["systemd-analyze", "verify", str(copy)], capture_output=True, timeout=60).returncode != 0


def test_dockerfile_and_compose() -> None:
    """The image runs twistd avr as a non-root user on the ports compose publishes; its health check is /health."""
    docker = (ROOT / "Dockerfile").read_text()
    assert docker.startswith("#") and "FROM python:3.11-slim" in docker
    assert re.search(r"^USER avr$", docker, re.MULTILINE)
    assert 'CMD ["twistd", "--nodaemon", "--pidfile=", "avr"]' in docker
    exposed = re.search(r"^EXPOSE (.+)$", docker, re.MULTILINE).group(1).split()
    assert "/health" in re.search(r"^HEALTHCHECK .*(?:\n .*)*", docker, re.MULTILINE).group(0)
    for copied in re.findall(r"^COPY (.+) \S+$", docker, re.MULTILINE):
        for path in copied.split():
            assert (ROOT / path).exists(), path
    compose = (ROOT / "compose.yaml").read_text()
    published = re.findall(r'^\s+- "(\d+):(\d+)"$', compose, re.MULTILINE)
    assert sorted(c for _, c in published) == sorted(exposed)
    assert re.search(r"^\s+STS_URL: ws://sts:6030$", compose, re.MULTILINE) and '"--port", "6030"' in compose
    grace = int(re.search(r"stop_grace_period: (\d+)s", compose).group(1))
    assert grace == int(unit()["TimeoutStopSec"][0])


def test_license_is_in_the_metadata() -> None:
    """setup.cfg says MIT and ships LICENSE, which is the MIT text."""
    cfg = ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    assert cfg["metadata"]["license"] == "MIT"
    assert (ROOT / cfg["metadata"]["license_files"].strip()).read_text().startswith("MIT License")
