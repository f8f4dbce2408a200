"""The CIS Kubernetes Benchmark's worker node checks (tests/data/cis/worker-node.yaml), evaluated.

A check looks at a `NodeView`: files (mode, owner, content) and kubelet's command line.
`rendered_node` is what the image build and the node agent render; `HostNode` a booted node.
"""

from __future__ import annotations

import fnmatch
import re
import shlex
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

import yaml

from builder.build.elements import ImageFile
from builder.node.render import RUN, Output

CHECKS = Path(__file__).parent / "data" / "cis" / "worker-node.yaml"
KUBELET_UNIT = "/usr/lib/systemd/system/kubelet.service"
OPERATIONS = (
    "equals", "not_equals", "at_least", "subset_of", "present", "absent", "nonzero_duration",
)  # fmt: skip
MISSING: Any = object()


class Outcome(StrEnum):
    PASS = "pass"
    FAIL = "fail"
    ABSENT = "absent"  # an optional file the node does not have
    MANUAL = "manual"  # nothing mechanical to evaluate


class Status(StrEnum):
    """hostbuild's default for a check."""

    PASS = "pass"
    EXCEPTION = "exception"
    NOT_APPLICABLE = "not-applicable"


@dataclass(frozen=True)
class Check:
    id: str
    title: str
    assessment: str
    status: Status
    data: Mapping[str, Any]


@dataclass(frozen=True)
class Stat:
    mode: int
    owner: str  # user:group


class NodeView(Protocol):
    def stat(self, path: str) -> Stat | None: ...

    def read(self, path: str) -> bytes | None: ...

    def glob(self, pattern: str) -> list[str]: ...

    def kubelet_args(self) -> list[str]: ...


@dataclass(frozen=True)
class Result:
    check: Check
    outcome: Outcome
    detail: str

    @property
    def expected(self) -> bool:
        if self.check.status is Status.EXCEPTION:
            return True
        if self.check.status is Status.PASS:
            return self.outcome is Outcome.PASS
        return self.outcome is not Outcome.FAIL

    def __str__(self) -> str:
        return f"{self.check.id} {self.outcome} ({self.check.status}): {self.detail}"


def load_checks(path: Path = CHECKS) -> list[Check]:
    """The checks of the data file, its shape checked so a typo cannot pass silently."""
    checks = []
    for entry in yaml.safe_load(path.read_text())["checks"]:
        where = f"{path}: {entry.get('id')}"
        kinds = [k for k in ("files", "kubelet", "any_of") if k in entry]
        if len(kinds) > 1 or entry["assessment"] not in ("automated", "manual"):
            raise ValueError(f"{where}: one of files, kubelet, any_of; automated or manual")
        if "files" in entry and not {"mode", "owner"} & set(entry):
            raise ValueError(f"{where}: a files check needs mode or owner")
        groups = entry.get("any_of", [entry.get("kubelet", [])])
        for condition in (c for group in groups for c in group):
            expect = condition.get("expect", {})
            if len(expect) != 1 or next(iter(expect)) not in OPERATIONS:
                raise ValueError(f"{where}: expect one of {', '.join(OPERATIONS)}: {expect}")
            if not {"flag", "key"} & set(condition) or condition.get("unset", "pass") != "pass":
                raise ValueError(f"{where}: a condition needs flag or key; unset: pass or none")
        checks.append(Check(entry["id"], entry["title"], entry["assessment"],
                            Status(entry["status"]), entry))  # fmt: skip
    return checks


def evaluate(checks: Iterable[Check], node: NodeView) -> list[Result]:
    """Each check's outcome on `node`."""
    kubelet = Kubelet.of(node)
    return [_evaluate(check, node, kubelet) for check in checks]


def unexpected(results: Iterable[Result]) -> list[Result]:
    """The results that contradict hostbuild's status for their check."""
    return [r for r in results if not r.expected]


def report(results: Iterable[Result]) -> str:
    return "\n".join(map(str, results))


@dataclass(frozen=True)
class Kubelet:
    """kubelet's flags (the last of a name wins) and its --config file."""

    flags: Mapping[str, str]
    config: Mapping[str, Any]

    @classmethod
    def of(cls, node: NodeView) -> Kubelet:
        flags = {}
        for arg in node.kubelet_args():
            if arg.startswith("--"):
                name, _, value = arg[2:].partition("=")
                flags[name] = value if "=" in arg else "true"
        data = node.read(flags["config"]) if "config" in flags else None
        config = yaml.safe_load(data) if data is not None else None
        return cls(flags, config if isinstance(config, dict) else {})

    def value(self, setting: Mapping[str, Any]) -> tuple[Any, str]:
        """A setting's value (MISSING if unset) and where it came from; the flag wins."""
        flag = str(setting.get("flag", ""))
        if flag in self.flags:
            text = self.flags[flag]
            if "gate" not in setting:
                return _scalar(text), f"--{flag}"
            gates = dict(item.partition("=")[::2] for item in text.split(",") if item)
            if setting["gate"] in gates:
                return _scalar(gates[setting["gate"]]), f"--{flag} {setting['gate']}"
        if key := setting.get("key"):
            value: Any = self.config
            for part in key.split("."):
                value = value.get(part, MISSING) if isinstance(value, Mapping) else MISSING
            return value, key
        return MISSING, f"--{flag}"


def _evaluate(check: Check, node: NodeView, kubelet: Kubelet) -> Result:
    data = check.data
    if "files" in data:
        outcome, detail = _files(data, node, kubelet)
        return Result(check, outcome, detail)
    groups = data.get("any_of") or ([data["kubelet"]] if "kubelet" in data else [])
    if not groups:
        return Result(check, Outcome.MANUAL, data.get("note", "no mechanical check"))
    evaluated = [[_condition(c, kubelet) for c in group] for group in groups]
    for group in evaluated:
        if all(ok for ok, _ in group):
            return Result(check, Outcome.PASS, "; ".join(seen for _, seen in group))
    failed = ["; ".join(seen for ok, seen in group if not ok) for group in evaluated]
    return Result(check, Outcome.FAIL, " or ".join(failed))


def _files(data: Mapping[str, Any], node: NodeView, kubelet: Kubelet) -> tuple[Outcome, str]:
    paths: list[str] = []
    for item in data["files"]:
        if isinstance(item, Mapping):
            value, _ = kubelet.value(item)
            paths += [str(value)] if value is not MISSING and value else []
        elif any(ch in item for ch in "*?["):
            paths += node.glob(item)
        else:
            paths.append(item)
    present = {p: s for p in dict.fromkeys(paths) if (s := node.stat(p)) is not None}
    if not present:
        outcome = Outcome.ABSENT if data.get("optional") else Outcome.FAIL
        return outcome, f"none of {', '.join(paths)} exists" if paths else "kubelet is given none"
    problems = []
    for path, stat in present.items():
        if "mode" in data and stat.mode & 0o7777 & ~int(data["mode"], 8):
            problems.append(f"{path} is {stat.mode:04o}, more than {data['mode']}")
        if "owner" in data and stat.owner != data["owner"]:
            problems.append(f"{path} is owned by {stat.owner}, not {data['owner']}")
    if problems:
        return Outcome.FAIL, "; ".join(problems)
    return Outcome.PASS, ", ".join(present)


def _condition(condition: Mapping[str, Any], kubelet: Kubelet) -> tuple[bool, str]:
    """Whether the condition holds, and what was found."""
    value, where = kubelet.value(condition)
    ((op, expected),) = condition["expect"].items()
    if value is MISSING:
        return op == "absent" or condition.get("unset") == "pass", f"{where} not set"
    if op == "subset_of":
        items = value.split(",") if isinstance(value, str) else value
        ok = isinstance(items, list) and bool(items) and set(items) <= set(expected)
    elif op == "at_least":
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value >= expected
    elif op == "nonzero_duration":
        ok = any(float(n) for n in re.findall(r"[0-9.]+", str(value)))
    else:
        ok = {
            "equals": value == expected and type(value) is type(expected),
            "not_equals": value != expected,
            "present": value not in ("", None),
            "absent": False,
        }[op]
    return ok, f"{where}: {value!r}" if ok else f"{where}: {value!r}, wanted {op} {expected!r}"


def _scalar(value: str) -> Any:
    """A flag's value as the config file would hold it: booleans and integers typed."""
    if value.lower() in ("true", "false"):
        return value.lower() == "true"
    return int(value) if re.fullmatch(r"-?[0-9]+", value) else value


@dataclass(frozen=True)
class RenderedNode:
    """The files at their paths on the node: the image's and the agent's (all root's)."""

    files: Mapping[str, tuple[bytes, int]]

    def stat(self, path: str) -> Stat | None:
        return Stat(self.files[path][1], "root:root") if path in self.files else None

    def read(self, path: str) -> bytes | None:
        return self.files[path][0] if path in self.files else None

    def glob(self, pattern: str) -> list[str]:
        return sorted(p for p in self.files if fnmatch.fnmatchcase(p, pattern))

    def kubelet_args(self) -> list[str]:
        unit = self.read(KUBELET_UNIT)
        if unit is None:
            return []
        environment: dict[str, str] = {}
        for line in unit.decode().splitlines():
            if line.startswith("EnvironmentFile="):
                env = self.read(line.split("=", 1)[1].removeprefix("-"))
                environment |= parse_environment(env.decode() if env else "")
        return kubelet_command(unit.decode(), environment)


def rendered_node(image: Iterable[ImageFile], outputs: Mapping[str, Output]) -> RenderedNode:
    """The node as the image build and the node agent (`outputs` below /run/hostbuild) make it."""
    files = {f.path: (f.content, f.mode) for f in image}
    files |= {f"{RUN}/{rel}": (o.content, o.mode) for rel, o in outputs.items()}
    return RenderedNode(files)


def kubelet_command(unit: str, environment: Mapping[str, str]) -> list[str]:
    """kubelet's arguments as systemd runs the unit's ExecStart: `$NAME` splits at spaces."""
    text = unit.replace("\\\n", " ")
    line = next(line for line in text.splitlines() if line.startswith("ExecStart="))
    args: list[str] = []
    for word in shlex.split(line.split("=", 1)[1])[1:]:
        if match := re.fullmatch(r"\$([A-Za-z_][A-Za-z0-9_]*)", word):
            args += environment.get(match.group(1), "").split()
        elif match := re.fullmatch(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", word):
            args.append(environment.get(match.group(1), ""))
        else:
            args.append(word)
    return args


def parse_environment(text: str) -> dict[str, str]:
    """An EnvironmentFile's variables (double-quoted values unescaped as systemd does)."""
    result = {}
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#") or "=" not in line:
            continue
        name, value = line.split("=", 1)
        if len(value) >= 2 and value[0] == value[-1] == '"':
            value = re.sub(r"\\(.)", r"\1", value[1:-1])
        result[name.strip()] = value
    return result


class HostNode:
    """A booted node through a testinfra host, with kubelet's arguments as it was started."""

    def __init__(self, host: Any, args: Sequence[str]) -> None:
        self.host = host
        self.args = list(args)

    def stat(self, path: str) -> Stat | None:
        f = self.host.file(path)
        return Stat(int(f.mode), f"{f.user}:{f.group}") if f.exists else None

    def read(self, path: str) -> bytes | None:
        f = self.host.file(path)
        return bytes(f.content) if f.exists else None

    def glob(self, pattern: str) -> list[str]:
        # the shell expands the pattern (from the data file: no spaces or quotes)
        script = f'for f in {pattern}; do if [ -e "$f" ]; then echo "$f"; fi; done'
        return str(self.host.run(script).stdout).splitlines()

    def kubelet_args(self) -> list[str]:
        return self.args
