"""
Certificate trust for wss:// and https:// STS peers: the platform's CA store by default, or the CAs of a PEM file.

Both the certificate chain and the host name are always verified (Twisted's `optionsForClientTLS`, with
service_identity); there is deliberately no way to turn verification off.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.internet.ssl import Certificate, optionsForClientTLS, trustRootFromCertificates

from avr.config import ConfigError

if TYPE_CHECKING:
    # Twisted's type of a trust root (what `optionsForClientTLS` takes); not exported by twisted.internet.ssl.
    from twisted.internet._sslverify import IOpenSSLTrustRoot


def load_trust_root(path: str | None) -> IOpenSSLTrustRoot | None:
    """
    The CA certificates of the PEM file ``path``, as a Twisted trust root (``None`` for ``None``: the platform's CAs).

    :raises avr.config.ConfigError: the file cannot be read or holds no PEM certificate.
    """
    if path is None:
        return None
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ConfigError([f"STS_CA_FILE {path}: cannot be read ({e.strerror})"]) from None
    try:
        certificates = x509.load_pem_x509_certificates(data)
    except ValueError as e:
        raise ConfigError([f"STS_CA_FILE {path}: no usable PEM certificate ({e})"]) from None
    return trustRootFromCertificates(
        [Certificate.loadPEM(c.public_bytes(Encoding.PEM)) for c in certificates]
    )


def client_tls_options(hostname: str, trust_root: IOpenSSLTrustRoot | None = None) -> IOpenSSLClientConnectionCreator:
    """
    TLS client options that verify the peer's chain against ``trust_root`` (``None``: the platform's CAs) and its
    identity against ``hostname`` (a DNS name or an IP address).
    """
    return optionsForClientTLS(hostname, trustRoot=trust_root)
