"""Debian mirrors: taken from the build host's apt configuration unless the profile names them."""

from __future__ import annotations

import logging
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from builder.errors import HostbuildError
from builder.profile.model import Debian

logger = logging.getLogger(__name__)

APT_ETC = Path("/etc/apt")


@dataclass(frozen=True)
class Mirrors:
    """Where the image's packages come from."""

    main: str
    security: str | None

    def sources(self, release: str, components: str = "main") -> str:
        """The image's deb822 sources file (kept in the image for the package list's record)."""
        entries = [f"URIs: {self.main}\nSuites: {release} {release}-updates"]
        if self.security:
            entries.append(f"URIs: {self.security}\nSuites: {release}-security")
        keyring = "/usr/share/keyrings/debian-archive-keyring.gpg"
        return "\n".join(
            f"Types: deb\n{e}\nComponents: {components}\nSigned-By: {keyring}\n" for e in entries
        )


def _entries(apt_etc: Path) -> list[tuple[str, list[str]]]:
    """(URI, suites) of every `deb` entry in sources.list and sources.list.d."""
    found: list[tuple[str, list[str]]] = []
    one_line = [apt_etc / "sources.list", *sorted((apt_etc / "sources.list.d").glob("*.list"))]
    for path in one_line:
        if not path.is_file():
            continue
        for line in path.read_text(errors="replace").splitlines():
            words = line.split("#", 1)[0].split()
            if len(words) >= 3 and words[0] == "deb":
                rest = words[1:]
                if rest[0].startswith("["):  # options such as [signed-by=...]
                    while rest and not rest[0].endswith("]"):
                        rest = rest[1:]
                    rest = rest[1:]
                if len(rest) >= 2:
                    found.append((rest[0], [rest[1]]))
    for path in sorted((apt_etc / "sources.list.d").glob("*.sources")):
        for stanza in path.read_text(errors="replace").split("\n\n"):
            fields: dict[str, str] = {}
            for line in stanza.splitlines():
                if line.startswith("#") or ":" not in line or line[0].isspace():
                    continue
                key, value = line.split(":", 1)
                fields[key.strip().lower()] = value.strip()
            if "deb" in fields.get("types", "").split() and fields.get("enabled", "yes") != "no":
                for uri in fields.get("uris", "").split():
                    found.append((uri, fields.get("suites", "").split()))
    return found


def host_mirrors(apt_etc: Path = APT_ETC) -> Mirrors | None:
    """The Debian mirror (and security mirror) the build host's apt uses, if it uses one."""
    main = security = None
    for uri, suites in _entries(apt_etc):
        path = urllib.parse.urlparse(uri).path.rstrip("/")
        is_security = path.endswith("-security") or any(s.endswith("-security") for s in suites)
        if is_security and security is None:
            security = uri.rstrip("/")
        elif not is_security and main is None and path.endswith("/debian"):
            main = uri.rstrip("/")
    return Mirrors(main, security) if main else None


def resolve_mirrors(debian: Debian, apt_etc: Path = APT_ETC) -> Mirrors:
    """The profile's mirrors, else the host's; an error if neither names one."""
    host = host_mirrors(apt_etc)
    main = debian.mirror or (host.main if host else None)
    if main is None:
        raise HostbuildError(
            f"no Debian mirror: the profile sets none and {apt_etc} has no Debian 'deb' source",
            hint="set debian.mirror in the profile (for example a local mirror or snapshot URL)",
        )
    security = debian.security_mirror or (host.security if host else None)
    if security is None:
        logger.warning("no Debian security mirror configured: the image gets no security suite")
    return Mirrors(main.rstrip("/"), security.rstrip("/") if security else None)


def archive_state(mirrors: Mirrors, release: str) -> str:
    """The Date of the release's InRelease on each mirror: changes whenever the archive does.

    Fetching it also proves the mirror is reachable before any long step starts.
    """
    import urllib.error
    import urllib.request

    dates = []
    suites = [(mirrors.main, release)]
    if mirrors.security:
        suites.append((mirrors.security, f"{release}-security"))
    for base, suite in suites:
        url = f"{base}/dists/{suite}/InRelease"
        try:
            with urllib.request.urlopen(url, timeout=30) as response:
                head = response.read(4096).decode("utf-8", "replace")
        except (urllib.error.URLError, OSError) as e:
            raise HostbuildError(
                f"cannot reach the Debian mirror: {url}: {getattr(e, 'reason', e)}",
                hint="check the network, or set debian.mirror / debian.security_mirror "
                "in the profile to a reachable mirror",
            ) from e
        date = next(
            (line[5:].strip() for line in head.splitlines() if line.startswith("Date:")), ""
        )
        dates.append(f"{suite}={date}")
    return ";".join(dates)
