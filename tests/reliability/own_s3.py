"""An S3 server (moto) of one test, on a free loopback port, that the test can stop and start again on
that port: the objects stay (moto keeps them in this process), as they would on a real S3 outage."""

import boto3
from moto.server import ThreadedMotoServer

from e2e.conftest import S3_BUCKET
from e2e.factories import free_port


class OwnS3:
    def __init__(self) -> None:
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.server: ThreadedMotoServer | None = None

    def start(self) -> None:
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self.server.start()
        boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1").create_bucket(Bucket=S3_BUCKET)

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
        self.server = None
