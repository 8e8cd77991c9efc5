"""One gRPC channel to a server, with its credentials."""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass

import grpc

from ganglion.errors import GanglionError


@dataclass(frozen=True)
class Tls:
    """TLS for the connection: the CA that signed the server's certificate (PEM bytes or
    a path), and a client certificate and key for mTLS."""

    ca: bytes | str | None = None
    cert: bytes | str | None = None
    key: bytes | str | None = None
    #: The name to check the server's certificate against (default: the host).
    server_name: str | None = None


def _pem(value: bytes | str | None) -> bytes | None:
    if value is None or isinstance(value, bytes):
        return value
    with open(value, "rb") as f:
        return f.read()


@dataclass
class Connection:
    channel: grpc.aio.Channel
    metadata: tuple[tuple[str, str], ...]

    @classmethod
    def open(cls, server: str, token: str | None, tls: Tls | None) -> Connection:
        """A channel to `server` (`host:port`); the token defaults to `GANGLION_TOKEN`."""
        token = token if token is not None else os.environ.get("GANGLION_TOKEN")
        options: list[tuple[str, object]] = [
            ("grpc.max_receive_message_length", 16 * 1024 * 1024),
            ("grpc.max_send_message_length", 16 * 1024 * 1024),
            ("grpc.keepalive_time_ms", 20_000),
        ]
        if tls is None:
            channel = grpc.aio.insecure_channel(server, options=options)
        else:
            credentials = grpc.ssl_channel_credentials(_pem(tls.ca), _pem(tls.key), _pem(tls.cert))
            if tls.server_name:
                options.append(("grpc.ssl_target_name_override", tls.server_name))
            channel = grpc.aio.secure_channel(server, credentials, options=options)
        metadata = (("authorization", f"Bearer {token}"),) if token else ()
        return cls(channel, metadata)

    @classmethod
    async def ready(cls, server: str, token: str | None, tls: Tls | None, timeout: float) -> Connection:
        """`open`, then wait up to `timeout` seconds for the server to answer."""
        connection = cls.open(server, token, tls)
        try:
            await asyncio.wait_for(connection.channel.channel_ready(), timeout)
        except asyncio.TimeoutError:
            await connection.close()
            raise GanglionError(f"cannot reach a Ganglion server at {server} within {timeout} s") from None
        return connection

    async def close(self) -> None:
        await self.channel.close()
