"""satchel.pki: the local CA, the six files of `certs init`, and issued user/node certificates."""

import ipaddress
import stat
from datetime import timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from satchel import pki

SIX = ("ca.crt", "ca.key", "server.crt", "server.key", "admin.crt", "admin.key")


def load(path):
    return x509.load_pem_x509_certificate(path.read_bytes())


def assert_signed_by(cert, ca):
    assert cert.issuer == ca.subject
    ca.public_key().verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(hashes.SHA256()))
    cert.verify_directly_issued_by(ca)


def eku(cert):
    return set(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)


def test_init_writes_six_files_with_private_keys(tmp_path):
    certs = tmp_path / "certs"
    pki.init(certs)

    assert sorted(p.name for p in certs.iterdir()) == sorted(SIX)
    assert stat.S_IMODE(certs.stat().st_mode) == 0o700
    for name in SIX:
        mode = stat.S_IMODE((certs / name).stat().st_mode)
        assert mode == (0o600 if name.endswith(".key") else 0o644), name


def test_init_ca_server_and_admin_certificates(tmp_path):
    pki.init(tmp_path, trust_domain="example.org", hosts=("localhost", "127.0.0.1", "::1", "satchel.internal"))
    ca, server, admin = (load(tmp_path / f"{n}.crt") for n in ("ca", "server", "admin"))

    assert pki.trust_domain_of(ca) == "example.org"
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    usage = ca.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign and usage.crl_sign
    assert ca.not_valid_after_utc - ca.not_valid_before_utc > timedelta(days=3600)
    assert isinstance(ca.public_key(), ec.EllipticCurvePublicKey)
    assert ca.public_key().curve.name == "secp256r1"

    assert_signed_by(server, ca)
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(san.get_values_for_type(x509.DNSName)) == {"localhost", "satchel.internal"}
    assert set(san.get_values_for_type(x509.IPAddress)) == {
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    }
    assert pki.spiffe_ids(server) == ["spiffe://example.org/server"]
    assert eku(server) == {ExtendedKeyUsageOID.SERVER_AUTH}
    assert not server.extensions.get_extension_for_class(x509.BasicConstraints).value.ca

    assert_signed_by(admin, ca)
    assert pki.spiffe_ids(admin) == ["spiffe://example.org/user/admin"]
    assert eku(admin) == {ExtendedKeyUsageOID.CLIENT_AUTH}
    assert timedelta(days=360) < admin.not_valid_after_utc - admin.not_valid_before_utc < timedelta(days=370)


def test_init_again_reuses_every_file(tmp_path):
    pki.init(tmp_path)
    before = {name: (tmp_path / name).read_bytes() for name in SIX}
    pki.init(tmp_path)
    assert {name: (tmp_path / name).read_bytes() for name in SIX} == before


def test_init_fills_in_missing_files_with_the_existing_ca(tmp_path):
    pki.init(tmp_path)
    ca_key = (tmp_path / "ca.key").read_bytes()
    admin_key = (tmp_path / "admin.key").read_bytes()
    (tmp_path / "ca.crt").unlink()
    (tmp_path / "server.crt").unlink()
    (tmp_path / "server.key").unlink()
    (tmp_path / "admin.crt").unlink()

    pki.init(tmp_path)

    assert (tmp_path / "ca.key").read_bytes() == ca_key
    assert (tmp_path / "admin.key").read_bytes() == admin_key
    ca = load(tmp_path / "ca.crt")
    assert_signed_by(load(tmp_path / "server.crt"), ca)
    admin = load(tmp_path / "admin.crt")
    assert_signed_by(admin, ca)
    assert admin.public_key() == pki.read_key(tmp_path / "admin.key").public_key()


def test_init_refuses_a_ca_of_another_trust_domain(tmp_path):
    pki.init(tmp_path, trust_domain="one.example")
    with pytest.raises(ValueError, match=r"one\.example"):
        pki.init(tmp_path, trust_domain="two.example")


@pytest.mark.parametrize("kind", ["user", "node"])
def test_issue_signs_a_spiffe_certificate_with_the_dirs_ca(tmp_path, kind):
    pki.init(tmp_path, trust_domain="corp.example")
    cert_path, key_path = pki.issue(tmp_path, kind, "n1.rack-2", ttl=timedelta(hours=2))

    assert cert_path == tmp_path / f"{kind}-n1.rack-2.crt"
    assert key_path == tmp_path / f"{kind}-n1.rack-2.key"
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(cert_path.stat().st_mode) == 0o644
    cert = load(cert_path)
    assert_signed_by(cert, load(tmp_path / "ca.crt"))
    assert pki.spiffe_ids(cert) == [f"spiffe://corp.example/{kind}/n1.rack-2"]
    assert eku(cert) == {ExtendedKeyUsageOID.CLIENT_AUTH}
    assert cert.not_valid_after_utc - cert.not_valid_before_utc <= timedelta(hours=2, minutes=5)
    assert cert.public_key() == pki.read_key(key_path).public_key()


@pytest.mark.parametrize("name", ["", "Upper", "under_score", "-lead", "trail-", "a..b", "a/b", "x" * 254])
def test_issue_rejects_names_that_are_not_dns_subdomains(tmp_path, name):
    pki.init(tmp_path)
    with pytest.raises(ValueError, match="DNS-1123"):
        pki.issue(tmp_path, "node", name)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(SIX)


def test_issue_rejects_unknown_kind(tmp_path):
    pki.init(tmp_path)
    with pytest.raises(ValueError, match="kind"):
        pki.issue(tmp_path, "admin", "bob")


def test_issue_without_a_ca_names_the_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"ca\.crt"):
        pki.issue(tmp_path, "user", "bob")


def test_csr_carries_the_spiffe_id_and_sign_honours_it(tmp_path):
    pki.init(tmp_path)
    ca_cert, ca_key = pki.load_ca(tmp_path)
    key = pki.generate_key()
    spiffe_id = "spiffe://satchel.local/ns/prod/sa/web"

    csr = x509.load_pem_x509_csr(pki.make_csr(key, spiffe_id).encode())
    assert csr.is_signature_valid
    assert csr.public_key() == key.public_key()
    san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [spiffe_id]

    cert = pki.sign(ca_cert, ca_key, csr.public_key(), spiffe_id=spiffe_id, ttl=timedelta(days=10000))
    assert_signed_by(cert, ca_cert)
    assert pki.spiffe_ids(cert) == [spiffe_id]
    assert cert.not_valid_after_utc <= ca_cert.not_valid_after_utc  # never outlives its CA


def test_csr_without_a_spiffe_id_asks_for_no_name():
    key = pki.generate_key()

    csr = x509.load_pem_x509_csr(pki.make_csr(key).encode())

    assert csr.is_signature_valid
    assert csr.public_key() == key.public_key()
    assert list(csr.extensions) == []
