"""The NodeConfig schema (hostbuild.dev/v1alpha1): user-data YAML to frozen values.

Validation collects every issue at once as `path: message`. Runs on the node (stdlib and PyYAML
only) and backs `hostbuild nodeconfig validate` on the build side.
"""

from __future__ import annotations

import base64
import binascii
import functools
import ipaddress
import re
from collections.abc import Callable
from typing import Any

from .check import (
    AnyKey,
    Checker,
    InvalidConfig,
    Issue,
    control_character,
    describe,
    join_path,
    kind_of,
    shorten,
)
from .model import (
    CHECK_INTERVAL,
    DAYS,
    MAX_CHECK_INTERVAL,
    MIN_BANDWIDTH,
    MIN_CHECK_INTERVAL,
    Admin,
    Auth,
    ClientCertificate,
    Cluster,
    Containerd,
    FleetLock,
    Health,
    Host,
    Kubelet,
    Node,
    NodeConfig,
    Probe,
    Registry,
    Taint,
    Updates,
    Window,
)
from .waves import SEEDS
from .yamlsafe import YamlError, load_yaml

API_GROUP = "hostbuild.dev"
API_VERSION = f"{API_GROUP}/v1alpha1"
KIND = "NodeConfig"

# patterns end in \Z, not $: $ also matches before a final line break ('worker-1\n')
_DNS_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
DNS_NAME = re.compile(rf"^{_DNS_LABEL}(\.{_DNS_LABEL})*\Z")
_LABEL_NAME = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)\Z")
BOOTSTRAP_TOKEN = re.compile(r"^[a-z0-9]{6}\.[a-z0-9]{16}\Z")
REGISTRY_HOST = re.compile(
    rf"^({_DNS_LABEL}(\.{_DNS_LABEL})*|\[[0-9a-fA-F:.]+\])(:[0-9]{{1,5}})?\Z"
)
IMAGE_REF = re.compile(
    r"^[a-z0-9][a-z0-9._/:-]*(:[A-Za-z0-9_][A-Za-z0-9_.-]*)?(@sha256:[0-9a-f]{64})?\Z"
)
# kubelet's unit splits $KUBELET_EXTRA_ARGS at spaces and unquotes: flags carry neither
FLAG = re.compile(r"^--([a-z0-9][a-z0-9-]*)(=[^\s\"'\\]*)?\Z")
PROBE_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}\Z")
CHANNEL = re.compile(r"^[a-z0-9][a-z0-9.-]{0,62}\Z")
FLEETLOCK_GROUP = re.compile(r"^[a-zA-Z0-9.-]+\Z")
DURATION = re.compile(r"^(?=\d)(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?\Z")
RATE = re.compile(r"^([0-9]+)(KiB|MiB|GiB)\Z")
RATE_UNITS = {"KiB": 10, "MiB": 20, "GiB": 30}
CLOCK = re.compile(r"^([01][0-9]|2[0-3]):([0-5][0-9])\Z")
PROVIDER_ID = re.compile(r"^[a-z][a-z0-9+.-]*://\S*\Z")
SSH_KEY_TYPES = (
    "ssh-ed25519", "ssh-rsa", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com", "sk-ecdsa-sha2-nistp256@openssh.com",
)  # fmt: skip
TAINT_EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")
CAPABILITIES = ("pull", "resolve", "push")
# kubelet refuses to start when --node-labels sets other labels in these namespaces
KUBELET_LABELS = (
    "kubernetes.io/hostname", "kubernetes.io/os", "kubernetes.io/arch",
    "beta.kubernetes.io/os", "beta.kubernetes.io/arch", "beta.kubernetes.io/instance-type",
    "node.kubernetes.io/instance-type", "topology.kubernetes.io/zone",
    "topology.kubernetes.io/region", "failure-domain.beta.kubernetes.io/zone",
    "failure-domain.beta.kubernetes.io/region",
)  # fmt: skip
KUBELET_LABEL_NAMESPACES = ("kubelet.kubernetes.io", "node.kubernetes.io")
# kubelet flags and KubeletConfiguration keys that other sections (or hostbuild) own
MANAGED_FLAGS = {
    "config": "hostbuild renders /run/hostbuild/kubelet/config.yaml; use spec.kubelet.config",
    "kubeconfig": "use spec.cluster.kubeconfig",
    "bootstrap-kubeconfig": "use spec.cluster.bootstrapToken",
    "container-runtime-endpoint": "hostbuild sets it",
    "node-labels": "use spec.node.labels",
    "hostname-override": "use spec.node.name",
    "register-with-taints": "use spec.node.taints",
    "provider-id": "use spec.node.providerID",
}
MANAGED_CONFIG = {
    "apiVersion": "hostbuild sets it",
    "kind": "hostbuild sets it",
    "clusterDNS": "use spec.cluster.dns",
    "clusterDomain": "use spec.cluster.domain",
    "registerWithTaints": "use spec.node.taints",
    "providerID": "use spec.node.providerID",
}
MAX_DEADLINE = 7200


def parse_text(text: str | bytes) -> NodeConfig:
    """Parse and validate NodeConfig YAML; raises InvalidConfig with every issue."""
    try:
        data = load_yaml(text)
    except YamlError as e:
        raise InvalidConfig([Issue(e.path, e.message)]) from None
    return parse(data)


def parse(data: Any) -> NodeConfig:
    """Validate a loaded document; raises InvalidConfig with every issue."""
    c = Checker()
    if not isinstance(data, dict):
        message = (
            f"not a NodeConfig: expected a mapping with apiVersion {API_VERSION!r}, kind {KIND!r} "
            f"and spec, got {kind_of(data)}"
        )
        raise InvalidConfig([Issue("", message)])
    top = c.mapping(data, "", ("apiVersion", "kind", "spec"), ("apiVersion", "kind", "spec"))
    if "apiVersion" in top:
        version = c.string(top["apiVersion"], "apiVersion")
        if version and version != API_VERSION:
            if version.startswith(f"{API_GROUP}/"):
                c.add("apiVersion", f"unsupported version {version!r}; supported: {API_VERSION!r}")
            else:
                c.add("apiVersion", f"expected {API_VERSION!r}, got {version!r}")
    if "kind" in top and c.string(top["kind"], "kind") not in ("", KIND):
        c.add("kind", f"expected {KIND!r}, got {top['kind']!r}")
    spec = c.mapping(top.get("spec", {}), "spec", tuple(SECTIONS))
    config = NodeConfig(**{
        SECTIONS[name][0]: SECTIONS[name][1](c, value, join_path("spec", name))
        for name, value in spec.items()
    })  # fmt: skip
    if c.issues:
        raise InvalidConfig(c.issues)
    return config


def _cluster(c: Checker, value: Any, path: str) -> Cluster:
    keys = ("apiServer", "certificateAuthority", "bootstrapToken", "kubeconfig", "dns", "domain")
    m = c.mapping(value, path, keys, ("certificateAuthority",))
    p = functools.partial(join_path, path)
    token, kubeconfig = m.get("bootstrapToken"), m.get("kubeconfig")
    if "apiServer" in m:
        c.url(m["apiServer"], p("apiServer"))
        if kubeconfig is not None:
            c.add(p("apiServer"), "only with bootstrapToken (the kubeconfig names its server)")
    elif token is not None:
        c.add(p("apiServer"), "required with bootstrapToken (an https:// URL)")
    ca = ""
    if "certificateAuthority" in m:
        ca = c.pem(m["certificateAuthority"], p("certificateAuthority"), ["CERTIFICATE"])
    if isinstance(token, str) and not BOOTSTRAP_TOKEN.match(token):
        c.add(p("bootstrapToken"), "must be a bootstrap token: 6 and 16 lowercase letters "
              "or digits joined by '.' (like 'abcdef.0123456789abcdef')")  # fmt: skip
    elif token is not None:
        c.string(token, p("bootstrapToken"), secret=True)
    if kubeconfig is not None and c.string(kubeconfig, p("kubeconfig"), lines=True, secret=True):
        _check_kubeconfig(c, kubeconfig, p("kubeconfig"))
    if isinstance(value, dict) and (token is None) == (kubeconfig is None):
        c.add(path, "give exactly one of bootstrapToken and kubeconfig")
    dns = c.items(m.get("dns", []), p("dns"), lambda v, q: _ip(c, v, q))
    domain = None
    if "domain" in m:
        domain = c.string(m["domain"], p("domain"), DNS_NAME, "a DNS domain like 'cluster.local'")
    return Cluster(ca, m.get("apiServer"), token, kubeconfig, dns, domain)


def _check_kubeconfig(c: Checker, text: str, path: str) -> None:
    try:
        data = load_yaml(text)
    except YamlError as e:
        c.add(path, f"is not a valid kubeconfig: {e.message}")
        return
    if not (isinstance(data, dict) and data.get("kind") == "Config"):
        c.add(path, "must be a kubeconfig (YAML with 'kind: Config')")
    elif not (isinstance(data.get("clusters"), list) and data["clusters"]):
        c.add(path, "the kubeconfig names no clusters")


def _ip(c: Checker, value: Any, path: str) -> str:
    text = c.string(value, path)
    try:
        ipaddress.ip_address(text)
    except ValueError:
        if text:
            c.add(path, f"must be an IP address, got {text!r}")
    return text


def _node(c: Checker, value: Any, path: str) -> Node:
    m = c.mapping(value, path, ("name", "labels", "taints", "providerID"))
    p = functools.partial(join_path, path)
    name = None
    if "name" in m:
        name = c.string(m["name"], p("name"), DNS_NAME, "a lowercase DNS name like 'worker-1'")
        if len(name) > 253:
            c.add(p("name"), "must be at most 253 characters")
    labels = {}
    for key, label in c.mapping(m.get("labels", {}), p("labels"), AnyKey()).items():
        labels[str(key)] = _label(c, str(key), label, join_path(p("labels"), str(key)))
    provider_id = None
    if "providerID" in m:
        provider_id = c.string(m["providerID"], p("providerID"), PROVIDER_ID,
                               "a provider ID like 'scheme://zone/id'")  # fmt: skip
    return Node(name, labels, c.items(m.get("taints", []), p("taints"),
                                      lambda v, q: _taint(c, v, q)), provider_id)  # fmt: skip


def _qualified_name(c: Checker, key: str, path: str) -> None:
    prefix, _, name = key.rpartition("/")
    if (prefix and not (DNS_NAME.match(prefix) and len(prefix) <= 253)) or not (
        _LABEL_NAME.match(name) and len(name) <= 63
    ):
        c.add(path, f"{key!r} is not a label key ([prefix/]name: name up to 63 of "
              "A-Z a-z 0-9 - _ . , prefix a DNS name)")  # fmt: skip


def _label(c: Checker, key: str, value: Any, path: str) -> str:
    _qualified_name(c, key, path)
    prefix = key.rpartition("/")[0]
    restricted = any(
        prefix == ns or prefix.endswith("." + ns) for ns in ("kubernetes.io", "k8s.io")
    )
    allowed_ns = any(prefix == ns or prefix.endswith("." + ns) for ns in KUBELET_LABEL_NAMESPACES)
    if restricted and key not in KUBELET_LABELS and not allowed_ns:
        c.add(path, f"kubelet may not set {key!r} (kubelet refuses to start); allowed in the "
              "kubernetes.io and k8s.io namespaces: the node.kubernetes.io/ and "
              "kubelet.kubernetes.io/ prefixes and well-known labels")  # fmt: skip
    text = c.string(value, path)
    if text and not (_LABEL_NAME.match(text) and len(text) <= 63):
        c.add(path, f"{text!r} is not a label value (up to 63 of A-Z a-z 0-9 - _ ., "
              "starting and ending alphanumeric)")  # fmt: skip
    return text


def _taint(c: Checker, value: Any, path: str) -> Taint:
    m = c.mapping(value, path, ("key", "value", "effect"), ("key", "effect"))
    key = c.string(m.get("key", "x"), join_path(path, "key"))
    if key:
        _qualified_name(c, key, join_path(path, "key"))
    text = c.string(m.get("value", ""), join_path(path, "value"))
    if text and not (_LABEL_NAME.match(text) and len(text) <= 63):
        c.add(join_path(path, "value"), f"{text!r} is not a taint value (like a label value)")
    effect = m.get("effect", "NoSchedule")
    if effect not in TAINT_EFFECTS:
        c.add(join_path(path, "effect"), f"{describe(effect)} is not allowed; allowed: "
              + ", ".join(map(repr, TAINT_EFFECTS)))  # fmt: skip
    return Taint(key, str(effect), text)


def _kubelet(c: Checker, value: Any, path: str) -> Kubelet:
    m = c.mapping(value, path, ("config", "flags"))
    config = c.mapping(m.get("config", {}), join_path(path, "config"), AnyKey())
    for key in config:
        where = join_path(join_path(path, "config"), str(key))
        if not isinstance(key, str):
            c.add(where, f"keys must be strings, got {describe(key)}")
        elif key in MANAGED_CONFIG:
            c.add(where, f"cannot be set here: {MANAGED_CONFIG[key]}")
        elif bad := control_character(key):
            c.add(where, f"contains {bad}; allowed: a KubeletConfiguration key like 'maxPods'")
    return Kubelet(config, c.items(m.get("flags", []), join_path(path, "flags"),
                                   lambda v, q: _flag(c, v, q)))  # fmt: skip


def _flag(c: Checker, value: Any, path: str) -> str:
    text = c.string(value, path)
    match = FLAG.match(text)
    if text and not match:
        c.add(
            path,
            "must be one '--name=value' or '--name' flag without spaces, quotes or backslashes, "
            f"got {text!r}",
        )
    elif match and match.group(1) in MANAGED_FLAGS:
        c.add(path, f"--{match.group(1)} cannot be set here: {MANAGED_FLAGS[match.group(1)]}")
    return text


def _containerd(c: Checker, value: Any, path: str) -> Containerd:
    m = c.mapping(value, path, ("sandboxImage", "registries"))
    image = None
    if "sandboxImage" in m:
        image = c.string(m["sandboxImage"], join_path(path, "sandboxImage"), IMAGE_REF,
                         "an image reference like 'registry.example.com/pause:3.10'")  # fmt: skip
    registries = []
    where = join_path(path, "registries")
    for name, settings in c.mapping(m.get("registries", {}), where, AnyKey()).items():
        q = join_path(where, str(name))
        if not (name == "_default" or (isinstance(name, str) and REGISTRY_HOST.match(name))):
            c.add(q, f"{name!r} is not a registry host[:port] or '_default'")
        registries.append(_registry(c, str(name), settings, q))
    return Containerd(image, tuple(registries))


HOST_KEYS = ("ca", "skipVerify", "clientCertificate", "auth")


def _registry(c: Checker, name: str, value: Any, path: str) -> Registry:
    m = c.mapping(value, path, ("server", "mirrors", *HOST_KEYS))
    server = (
        c.url(m["server"], join_path(path, "server"), ("https", "http")) if "server" in m else None
    )
    mirrors = c.items(m.get("mirrors", []), join_path(path, "mirrors"),
                      lambda v, q: _mirror(c, v, q))  # fmt: skip
    return Registry(name, _host(c, m, path, server), mirrors)


def _mirror(c: Checker, value: Any, path: str) -> Host:
    m = c.mapping(value, path, ("url", "capabilities", "overridePath", *HOST_KEYS), ("url",))
    url = c.url(m.get("url", "https://x"), join_path(path, "url"), ("https", "http"))
    return _host(c, m, path, url)


def _host(c: Checker, m: dict[str, Any], path: str, url: str | None) -> Host:
    p = functools.partial(join_path, path)
    capabilities: tuple[str, ...] = ("pull", "resolve")
    if "capabilities" in m:
        capabilities = c.items(
            m["capabilities"], p("capabilities"), lambda v, q: _capability(c, v, q)
        )
    client = None
    if "clientCertificate" in m:
        client = _client_certificate(c, m["clientCertificate"], p("clientCertificate"))
    return Host(
        url=url, capabilities=capabilities,
        ca=c.pem(m["ca"], p("ca"), ["CERTIFICATE"]) if "ca" in m else None,
        skip_verify=c.boolean(m["skipVerify"], p("skipVerify")) if "skipVerify" in m else False,
        client_certificate=client, auth=_auth(c, m["auth"], p("auth")) if "auth" in m else None,
        override_path=c.boolean(m["overridePath"], p("overridePath"))
        if "overridePath" in m else False,
    )  # fmt: skip


def _client_certificate(c: Checker, value: Any, path: str) -> ClientCertificate:
    cc = c.mapping(value, path, ("certificate", "key"), ("certificate", "key"))
    return ClientCertificate(
        c.pem(cc["certificate"], join_path(path, "certificate"), ["CERTIFICATE"])
        if "certificate" in cc else "",
        c.pem(cc["key"], join_path(path, "key"),
              ["PRIVATE KEY", "RSA PRIVATE KEY", "EC PRIVATE KEY"], secret=True)
        if "key" in cc else "",
    )  # fmt: skip


def _capability(c: Checker, value: Any, path: str) -> str:
    if value not in CAPABILITIES:
        c.add(path, f"{describe(value)} is not allowed; allowed: "
              + ", ".join(map(repr, CAPABILITIES)))  # fmt: skip
    return str(value)


def _auth(c: Checker, value: Any, path: str) -> Auth:
    m = c.mapping(value, path, ("username", "password", "token"))
    got = {k: c.string(v, join_path(path, k), secret=k != "username") for k, v in m.items()}
    if isinstance(value, dict) and set(got) not in ({"username", "password"}, {"token"}):
        c.add(path, "give username and password, or token")
    if not got.get("token", "").isascii():  # it goes into an HTTP header (and hosts.toml)
        c.add(join_path(path, "token"), "must be ASCII, as bearer tokens are")
    if ":" in got.get("username", ""):
        c.add(join_path(path, "username"), f"must not contain ':' (Basic authentication joins "
              f"username and password with it), got {got['username']!r}")  # fmt: skip
    return Auth(got.get("username"), got.get("password"), got.get("token"))


def _admin(c: Checker, value: Any, path: str) -> Admin:
    m = c.mapping(value, path, ("sshAuthorizedKeys", "serialConsole"))
    keys = c.items(m.get("sshAuthorizedKeys", []), join_path(path, "sshAuthorizedKeys"),
                   lambda v, q: _ssh_key(c, v, q))  # fmt: skip
    serial = c.boolean(m["serialConsole"], join_path(path, "serialConsole")) if (
        "serialConsole" in m) else False  # fmt: skip
    return Admin(keys, serial)


def _ssh_key(c: Checker, value: Any, path: str) -> str:
    text = c.string(value, path, lines=True).strip()  # a YAML block scalar ends in a line break
    if bad := control_character(text):
        c.add(path, f"contains {bad}: one key per list item, on one line of printable "
              f"characters, got {shorten(text)!r}")  # fmt: skip
        return ""
    parts = text.split()
    if text and not (len(parts) >= 2 and parts[0] in SSH_KEY_TYPES and _ssh_blob_ok(*parts[:2])):
        c.add(path, f"must be one OpenSSH public key line ('TYPE BASE64 [comment]', TYPE one of "
              f"{', '.join(SSH_KEY_TYPES[:5])}, ...), got {shorten(text)!r}")  # fmt: skip
    return text


def _ssh_blob_ok(kind: str, blob: str) -> bool:
    """The base64 blob decodes and names the same key type (catches truncated pastes)."""
    try:
        data = base64.b64decode(blob, validate=True)
    except binascii.Error:
        return False
    size = int.from_bytes(data[:4], "big")
    return len(data) > 4 + size and data[4 : 4 + size] == kind.encode()


UPDATES_KEYS = (
    "repository", "channel", "fleetLock", "maintenanceWindows", "checkInterval", "checkJitter",
    "bandwidthLimit", "waveSeed",
)  # fmt: skip


def _updates(c: Checker, value: Any, path: str) -> Updates:
    m = c.mapping(value, path, UPDATES_KEYS)
    p = functools.partial(join_path, path)
    fleet_lock = _fleet_lock(c, m["fleetLock"], p("fleetLock")) if "fleetLock" in m else None
    interval, jitter = _check_timing(c, m, p)
    bandwidth = (
        _rate(c, m["bandwidthLimit"], p("bandwidthLimit")) if "bandwidthLimit" in m else None
    )
    return Updates(
        repository=c.url(m["repository"], p("repository"), ("https", "http"))
        if "repository" in m else None,
        channel=c.string(m["channel"], p("channel"), CHANNEL,
                         "a channel name of a-z 0-9 . - like 'stable'") if "channel" in m else None,
        fleet_lock=fleet_lock,
        maintenance_windows=c.items(m.get("maintenanceWindows", []), p("maintenanceWindows"),
                                    lambda v, q: _window(c, v, q)),
        check_interval=interval, check_jitter=jitter, bandwidth_limit=bandwidth,
        wave_seed=_wave_seed(c, m["waveSeed"], p("waveSeed")) if "waveSeed" in m else None,
    )  # fmt: skip


def _wave_seed(c: Checker, value: Any, path: str) -> int | None:
    """This node's place in waves, pinned instead of drawn (as Bottlerocket's updates.seed)."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < SEEDS:
        return value
    c.add(path, f"must be an integer 0..{SEEDS - 1} (this node's place in a version's waves; "
          f"leave it out to draw one), got {describe(value)}")  # fmt: skip
    return None


def _fleet_lock(c: Checker, value: Any, path: str) -> FleetLock:
    f = c.mapping(value, path, ("url", "group", "ca", "clientCertificate"), ("url",))
    q = functools.partial(join_path, path)
    url = c.url(f.get("url", "https://x"), q("url"), ("https", "http"))
    tls = [key for key in ("ca", "clientCertificate") if key in f]
    if tls and url.startswith("http://"):
        c.add(q(tls[0]), "only with an https:// url")
    return FleetLock(
        url, c.string(f.get("group", "default"), q("group"), FLEETLOCK_GROUP,
                      "a group name of A-Z a-z 0-9 . -"),
        ca=c.pem(f["ca"], q("ca"), ["CERTIFICATE"]) if "ca" in f else None,
        client_certificate=_client_certificate(c, f["clientCertificate"], q("clientCertificate"))
        if "clientCertificate" in f else None,
    )  # fmt: skip


def _check_timing(
    c: Checker, m: dict[Any, Any], p: Callable[[str], str]
) -> tuple[int | None, int | None]:
    """checkInterval (5m to 7d) and checkJitter (0 to the interval)."""
    interval = jitter = None
    if "checkInterval" in m:
        interval = _duration(c, m["checkInterval"], p("checkInterval"), "'30m', '1h', '1d'")
        if interval is not None and not MIN_CHECK_INTERVAL <= interval <= MAX_CHECK_INTERVAL:
            c.add(p("checkInterval"), f"must be between 5m and 7d, got {format_duration(interval)}")
            interval = None
    if "checkJitter" in m:
        jitter = _duration(c, m["checkJitter"], p("checkJitter"), "'0s', '15m', '1h'")
        if "checkInterval" not in m:
            limit, within = CHECK_INTERVAL, "the default checkInterval"
        else:  # an invalid interval was reported already: the jitter is judged on its own
            limit, within = interval or MAX_CHECK_INTERVAL, "checkInterval"
        if jitter is not None and not 0 <= jitter <= limit:
            c.add(p("checkJitter"), f"must be between 0s and {within} "
                  f"({format_duration(limit)}), got {format_duration(jitter)}")  # fmt: skip
            jitter = None
    return interval, jitter


def format_duration(seconds: int) -> str:
    """Seconds as the NodeConfig writes durations: 5400 is '1h30m', 691200 '8d'."""
    if seconds <= 0:
        return f"{seconds}s"
    parts, rest = [], seconds
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if rest >= size:
            parts.append(f"{rest // size}{unit}")
            rest %= size
    return "".join(parts)


def _rate(c: Checker, value: Any, path: str) -> int | None:
    """Bytes per second: an integer, or a number with a binary unit ('512KiB', '10MiB')."""
    rate = None
    if isinstance(value, int) and not isinstance(value, bool):
        rate = value
    elif isinstance(value, str) and (match := RATE.match(value)):
        rate = int(match.group(1)) << RATE_UNITS[match.group(2)]
    if rate is None:
        c.add(path, "must be bytes per second: an integer or a number with KiB, MiB or GiB "
              f"(powers of 1024) like '512KiB', '10MiB', '1GiB', "
              f"got {describe(value)}")  # fmt: skip
    elif rate < MIN_BANDWIDTH:
        c.add(path, f"must be at least 64KiB ({MIN_BANDWIDTH} bytes per second), got {rate}")
        rate = None
    return rate


def _window(c: Checker, value: Any, path: str) -> Window:
    m = c.mapping(value, path, ("days", "start", "duration"), ("start", "duration"))
    days: tuple[str, ...] = DAYS
    if "days" in m:
        days = c.items(m["days"], join_path(path, "days"), lambda v, q: _day(c, v, q))
    start = c.string(m.get("start", "00:00"), join_path(path, "start"), CLOCK,
                     "a UTC time 'HH:MM'")  # fmt: skip
    seconds = _duration(c, m.get("duration", "1h"), join_path(path, "duration"))
    if seconds is not None and not 60 <= seconds <= 24 * 3600:
        c.add(join_path(path, "duration"), f"must be between 1m and 24h, got {seconds}s")
    return Window(start, (seconds or 0) // 60, days)


def _day(c: Checker, value: Any, path: str) -> str:
    if value not in DAYS:
        c.add(path, f"{describe(value)} is not allowed; allowed: {', '.join(map(repr, DAYS))}")
    return str(value)


def _duration(
    c: Checker, value: Any, path: str, examples: str = "'90s', '5m', '1h30m'"
) -> int | None:
    """An integer (seconds) or a duration of days, hours, minutes, seconds like '1d', '1h30m'."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    match = DURATION.match(value) if isinstance(value, str) else None
    if not match:
        c.add(path, f"must be seconds or a duration like {examples}, got {describe(value)}")
        return None
    d, h, m, s = (int(g or 0) for g in match.groups())
    return d * 86400 + h * 3600 + m * 60 + s


def _health(c: Checker, value: Any, path: str) -> Health:
    m = c.mapping(value, path, ("probes", "deadline"))
    probes = c.items(m.get("probes", []), join_path(path, "probes"), lambda v, q: _probe(c, v, q))
    seen: set[str] = set()
    for i, probe in enumerate(probes):
        if probe.name in seen:
            c.add(join_path(join_path(path, "probes"), i), f"duplicate probe name {probe.name!r}")
        seen.add(probe.name)
    deadline = None
    if "deadline" in m:
        deadline = _duration(c, m["deadline"], join_path(path, "deadline"))
        if deadline is not None and not 30 <= deadline <= MAX_DEADLINE:
            c.add(join_path(path, "deadline"), f"must be between 30s and {MAX_DEADLINE}s, "
                  f"got {deadline}s")  # fmt: skip
    return Health(probes, deadline)


def _probe(c: Checker, value: Any, path: str) -> Probe:
    m = c.mapping(value, path, ("name", "command"), ("name", "command"))
    name = c.string(m.get("name", "x"), join_path(path, "name"), PROBE_NAME,
                    "a name of a-z 0-9 - (at most 63)")  # fmt: skip
    where, before = join_path(path, "command"), len(c.issues)
    command = c.string(m.get("command", "true"), where, lines=True).strip()
    if bad := control_character(command):
        c.add(where, f"contains {bad}: a probe is one shell command line (its exit status is "
              f"its last command's: join commands with &&), got {shorten(command)!r}")  # fmt: skip
    elif not command and len(c.issues) == before:
        c.add(where, "must be a non-empty shell command")
    return Probe(name, command)


SECTIONS: dict[str, tuple[str, Callable[[Checker, Any, str], Any]]] = {
    "cluster": ("cluster", _cluster),
    "node": ("node", _node),
    "kubelet": ("kubelet", _kubelet),
    "containerd": ("containerd", _containerd),
    "admin": ("admin", _admin),
    "updates": ("updates", _updates),
    "health": ("health", _health),
}
