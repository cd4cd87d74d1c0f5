"""Make every Ray the tests start a secured one: token authentication on, with a token of
this test session (so no test touches ~/.ray), and servers on the loopback interface only."""

import os
import secrets
from collections.abc import Iterator

import pytest

os.environ["RAY_AUTH_MODE"] = "token"
os.environ.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(32))
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # = sweeps.session.LOCAL_ONLY_ENV
os.environ.setdefault("ATTRSUB_RAY_DASHBOARD", "0")  # = sweeps.session.DASHBOARD_ENV: faster


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """Single-threaded torch for a module: with the cores shared, OpenMP threads spin-wait
    (up to 30x slower)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def s3() -> Iterator[str]:
    """A real S3-protocol server (moto's) on 127.0.0.1 with an empty bucket; yields
    ``s3://bucket``. The AWS_* variables it sets reach pyarrow, Ray Tune and Ray workers
    started meanwhile, as a cloud's would."""
    import socket

    import pyarrow.fs as pafs
    from moto.server import ThreadedMotoServer

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "test",
           "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_EC2_METADATA_DISABLED": "true"}
    before = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        pafs.S3FileSystem(endpoint_override=env["AWS_ENDPOINT_URL"],
                          allow_bucket_creation=True).create_dir("attrsub-test")
        yield "s3://attrsub-test"
    finally:
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        server.stop()
