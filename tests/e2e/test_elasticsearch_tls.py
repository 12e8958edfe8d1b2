"""TLS and authentication against Elasticsearch: verified by default (vcon-server turns verification
off without ``ca_certs``), ELASTICSEARCH_CA_CERTS, basic auth, an API key and an Elastic Cloud id.

A TLS proxy with a self-signed certificate (made with the openssl command) sits in front of osmem
and keeps every byte the client sent, so the tests see the Authorization header that arrived.
"""

from __future__ import annotations

import base64
import shutil
import socket
import ssl
import subprocess
import threading

import pytest

from conserver.config import ConfigError, config_from_mapping
from conserver.storage.elasticsearch import ElasticsearchSink
from tests.e2e.test_storage import es_count, make_config, make_vcons, opened, part_count


@pytest.fixture(scope="module")
def certificate(tmp_path_factory) -> tuple[str, str]:
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is needed to make a self-signed certificate")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = str(folder / "cert.pem"), str(folder / "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert,
                    "-days", "2", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                   check=True, capture_output=True)
    return cert, key


class TlsProxy:
    """TLS on a free port, plain TCP to the upstream; ``received`` is what clients sent, decrypted."""

    def __init__(self, upstream_port: int, cert: str, key: str):
        self.upstream_port = upstream_port
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(cert, key)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.received = bytearray()
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                raw, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(raw,), daemon=True).start()

    def _serve(self, raw: socket.socket) -> None:
        try:
            client = self.context.wrap_socket(raw, server_side=True)
        except (ssl.SSLError, OSError):  # the client refused our certificate
            raw.close()
            return
        upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
        threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()
        self._pump(client, upstream, True)

    def _pump(self, src: socket.socket, dst: socket.socket, record: bool) -> None:
        try:
            while data := src.recv(65536):
                if record:
                    with self._lock:
                        self.received += data
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def authorization(self) -> set[bytes]:
        with self._lock:
            lines = bytes(self.received).split(b"\r\n")
        return {line.split(b":", 1)[1].strip() for line in lines if line.lower().startswith(b"authorization:")}

    def close(self) -> None:
        self.listener.close()


@pytest.fixture
def proxy(os_server, certificate):
    p = TlsProxy(os_server.port, *certificate)
    yield p
    p.close()


def _tls_config(stack_env, proxy: TlsProxy, **settings: str):
    return make_config(stack_env, ELASTICSEARCH_URL=f"https://localhost:{proxy.port}", **settings)


def _write(config, seed: int) -> list:
    sink = opened(config, "elasticsearch")
    try:
        vcons = make_vcons(2, seed=seed)
        assert sink.write_batch(vcons) == {v.uuid: None for v in vcons}
    finally:
        sink.close()
    return vcons


def test_certificates_are_verified_by_default(stack_env, proxy):
    config = _tls_config(stack_env, proxy)  # no CA given: certifi's, which do not know ours
    assert config.elasticsearch_verify_certs is True
    sink = ElasticsearchSink(config)
    sink.open()
    try:
        with pytest.raises(Exception) as caught:
            sink.write_batch(make_vcons(1, seed=30))
        assert "CERTIFICATE_VERIFY_FAILED" in str(caught.value)
        assert sink.is_transient(caught.value)  # a setup fault: every vCon waits, none is dead-lettered
    finally:
        sink.close()
    assert proxy.authorization() == set()  # nothing was sent over the unverified connection


def test_ca_certs_and_basic_auth(stack_env, os_server, proxy, certificate):
    config = _tls_config(stack_env, proxy, ELASTICSEARCH_CA_CERTS=certificate[0], ELASTICSEARCH_USER="writer",
                         ELASTICSEARCH_PASSWORD="s3cret:x")
    vcons = _write(config, seed=31)
    assert proxy.authorization() == {b"Basic " + base64.b64encode(b"writer:s3cret:x")}
    assert es_count(os_server, f"{config.elasticsearch_index_prefix}vcon*") == part_count(vcons)


def test_an_api_key_is_sent_instead_of_basic_auth(stack_env, proxy, certificate):
    config = _tls_config(stack_env, proxy, ELASTICSEARCH_CA_CERTS=certificate[0], ELASTICSEARCH_API_KEY="a2V5OnNlY3JldA==",
                         ELASTICSEARCH_USER="ignored", ELASTICSEARCH_PASSWORD="ignored")
    _write(config, seed=32)
    assert proxy.authorization() == {b"ApiKey a2V5OnNlY3JldA=="}  # as vcon-server: api_key, no basic auth


def test_verification_off_only_when_told_and_it_is_logged(stack_env, proxy, caplog):
    config = _tls_config(stack_env, proxy, ELASTICSEARCH_VERIFY_CERTS="false")
    with caplog.at_level("WARNING", logger="conserver.storage.elasticsearch"):
        _write(config, seed=33)
    assert any("NOT verified" in r.getMessage() for r in caplog.records)


def test_cloud_id_gives_the_url_elasticsearch_py_connects_to():
    # the shape Elastic Cloud shows: name:base64(host$es_uuid$kibana_uuid), decoded as elastic_transport does
    cloud_id = ("cluster-1:dXMtZWFzdDEuZ2NwLmVsYXN0aWMtY2xvdWQuY29tJGNlYzZmMjYxYTc0YmYyNGNlMzNiYjg4MTFiODQyOTRmJGM2Y"
                "zJjYTZkMDQyMjQ5YWYwY2M3ZDdhOWU5NjI1NzQz")
    config = config_from_mapping({"ELASTICSEARCH_CLOUD_ID": cloud_id, "ELASTICSEARCH_API_KEY": "k",
                                  "CONSERVER_STORAGES": "elasticsearch"})
    assert config.elasticsearch_url == "https://cec6f261a74bf24ce33bb8811b84294f.us-east1.gcp.elastic-cloud.com:443"
    with_port = "x:" + base64.b64encode(b"example.com:9243$abc$def").decode()
    assert config_from_mapping({"ELASTICSEARCH_CLOUD_ID": with_port}).elasticsearch_url == "https://abc.example.com:9243"
    for bad in ("no-colon", "x:bm90IGJhc2U2NA", "x:" + base64.b64encode(b"host-only").decode()):
        with pytest.raises(ConfigError, match="ELASTICSEARCH_CLOUD_ID"):
            config_from_mapping({"ELASTICSEARCH_CLOUD_ID": bad})
    with pytest.raises(ConfigError, match="no ELASTICSEARCH_URL with it"):
        config_from_mapping({"ELASTICSEARCH_CLOUD_ID": with_port, "ELASTICSEARCH_URL": "https://other:9200"})


def test_a_missing_ca_bundle_is_a_configuration_error(tmp_path):
    with pytest.raises(ConfigError, match="ELASTICSEARCH_CA_CERTS"):
        config_from_mapping({"ELASTICSEARCH_CA_CERTS": str(tmp_path / "nowhere.pem")})
    with pytest.raises(ConfigError, match="ELASTICSEARCH_PART_INDICES"):
        config_from_mapping({"ELASTICSEARCH_PART_INDICES": "false"})
