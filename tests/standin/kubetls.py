"""TEST STAND-IN PKI for `kubeapi` and the TLS etcd cluster: a throwaway CA, the server's
certificate for 127.0.0.1 and a client certificate, as a cluster's kubeconfig carries them (PEM,
base64 in the kubeconfig) or etcd's --trusted-ca-file/--cert-file/--key-file read them."""

from __future__ import annotations

import datetime
import functools
import ipaddress
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CLIENT_NAME = "hostbuild-fleet"


@dataclass(frozen=True)
class Pem:
    cert: bytes
    key: bytes


@dataclass(frozen=True)
class PkiFiles:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


@dataclass(frozen=True)
class Pki:
    ca: bytes  # the CA's certificate
    server: Pem
    client: Pem

    def write(self, directory: Path) -> PkiFiles:
        """The PEM files, one per certificate and key (keys readable by the owner only)."""
        directory.mkdir(parents=True, exist_ok=True)
        files = PkiFiles(*(directory / n for n in ("ca.crt", "server.crt", "server.key",
                                                   "client.crt", "client.key")))  # fmt: skip
        contents = [self.ca, self.server.cert, self.server.key, self.client.cert, self.client.key]
        for path, data in zip(vars(files).values(), contents, strict=True):
            path.write_bytes(data)
            if path.suffix == ".key":
                path.chmod(0o600)
        return files

    def server_context(self, directory: Path) -> ssl.SSLContext:
        """TLS for the server; a client certificate is asked for, not required (tokens too)."""
        (directory / "server.pem").write_bytes(self.server.cert + self.server.key)
        (directory / "ca.pem").write_bytes(self.ca)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(directory / "server.pem")
        context.load_verify_locations(directory / "ca.pem")
        context.verify_mode = ssl.CERT_OPTIONAL
        return context


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _issue(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey] | None,
    usage: x509.ObjectIdentifier | None,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    issuer_name, issuer_key = issuer if issuer is not None else (_name(subject), key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=usage is None, path_length=None), critical=True)
    )
    if usage is ExtendedKeyUsageOID.SERVER_AUTH:
        address = x509.IPAddress(ipaddress.ip_address("127.0.0.1"))
        builder = builder.add_extension(x509.SubjectAlternativeName([address]), critical=False)
    if usage is ExtendedKeyUsageOID.SERVER_AUTH:
        # etcd's JSON gateway presents the server certificate to its own gRPC server, which
        # with --client-cert-auth checks it as a client certificate
        usages = [usage, ExtendedKeyUsageOID.CLIENT_AUTH]
        builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    elif usage is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


@functools.cache
def make_pki(name: str = "kube") -> Pki:
    """One PKI per name and test process (EC P-256: milliseconds); PKIs of different names
    trust none of each other's certificates."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _issue(f"hostbuild TEST STAND-IN {name} CA", ca_key, None, None)
    pems = []
    for subject, usage in [
        ("127.0.0.1", ExtendedKeyUsageOID.SERVER_AUTH),
        (CLIENT_NAME, ExtendedKeyUsageOID.CLIENT_AUTH),
    ]:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _issue(subject, key, (ca.subject, ca_key), usage)
        pems.append(Pem(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key)))
    return Pki(ca.public_bytes(serialization.Encoding.PEM), pems[0], pems[1])
