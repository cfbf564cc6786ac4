"""Fixtures of the hub tests: a Hugging Face endpoint that refuses connections (no real network)."""

import socket

import pytest


@pytest.fixture
def closed_hub(monkeypatch):
    """huggingface_hub online, its endpoint a local port that is bound but never listens (refused)."""
    from huggingface_hub import constants

    sock = socket.socket()
    sock.bind(('127.0.0.1', 0))
    endpoint = f'http://127.0.0.1:{sock.getsockname()[1]}'
    for var in ('http_proxy', 'https_proxy', 'all_proxy', 'HTTP_PROXY', 'HTTPS_PROXY', 'ALL_PROXY'):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(constants, 'ENDPOINT', endpoint)
    monkeypatch.setattr(constants, 'HF_HUB_OFFLINE', False)
    yield endpoint
    sock.close()
