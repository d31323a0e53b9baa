"""Where the lake's files go: an S3 bucket (aiobotocore) or a local directory.

Both verify what they store: the S3 store sends the file's MD5 (``Content-MD5``, so a
corrupted upload is refused) and then checks the object's size and ETag; the file
store writes to a temporary name, fsyncs, renames, and reads the result back.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import shutil
import uuid
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit


class VerifyError(RuntimeError):
    """The stored object is not what was sent."""


def md5_of(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class ObjectStore(ABC):
    """Keys are ``/``-separated paths under the lake's root."""

    url: str

    async def start(self) -> None:  # noqa: B027 - a store may need no set-up
        """Open clients, create the root."""

    async def stop(self) -> None:  # noqa: B027
        """Close clients."""

    @abstractmethod
    async def put_file(self, key: str, path: Path, md5: str) -> None:
        """Store ``path`` at ``key`` and verify it (size and MD5); raise if not stored."""

    @abstractmethod
    async def put_bytes(self, key: str, data: bytes) -> None: ...

    @abstractmethod
    async def get(self, key: str) -> bytes: ...

    @abstractmethod
    async def list(self, prefix: str) -> list[str]:
        """Keys starting with ``prefix``."""

    @abstractmethod
    async def delete(self, keys: list[str]) -> None: ...


class FileStore(ObjectStore):
    """A lake in a local directory (``file:///path``)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.url = f"file://{root}"

    async def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)

    async def put_file(self, key: str, path: Path, md5: str) -> None:
        await asyncio.to_thread(self._put_file, key, path, md5)

    def _put_file(self, key: str, path: Path, md5: str) -> None:
        target = self.root / key
        target.parent.mkdir(parents=True, exist_ok=True)
        temp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.tmp")
        with path.open("rb") as src, temp.open("wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
            dst.flush()
            os.fsync(dst.fileno())
        os.replace(temp, target)
        fsync_path(target.parent)
        if target.stat().st_size != path.stat().st_size or md5_of(target) != md5:
            raise VerifyError(f"{target} differs from {path} after the copy")

    async def put_bytes(self, key: str, data: bytes) -> None:
        def put() -> None:
            target = self.root / key
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        await asyncio.to_thread(put)

    async def get(self, key: str) -> bytes:
        return await asyncio.to_thread((self.root / key).read_bytes)

    async def list(self, prefix: str) -> list[str]:
        def walk() -> list[str]:
            base = self.root / prefix.rsplit("/", 1)[0] if "/" in prefix else self.root
            if not base.exists():
                return []
            found = []
            for path in base.rglob("*"):
                if path.is_file() and not path.name.endswith(".tmp"):
                    key = path.relative_to(self.root).as_posix()
                    if key.startswith(prefix):
                        found.append(key)
            return sorted(found)
        return await asyncio.to_thread(walk)

    async def delete(self, keys: list[str]) -> None:
        def unlink() -> None:
            for key in keys:
                path = self.root / key
                path.unlink(missing_ok=True)
                for parent in path.parents:  # no empty directories left behind
                    if parent == self.root or not parent.is_relative_to(self.root):
                        break
                    try:
                        parent.rmdir()
                    except OSError:
                        break
        await asyncio.to_thread(unlink)


class S3Store(ObjectStore):
    """A lake in an S3 bucket under a prefix (``s3://bucket/prefix``), at ``endpoint``
    (empty: AWS). Credentials come from the usual AWS variables and files."""

    def __init__(self, bucket: str, prefix: str, endpoint: str | None,
                 timeout: float = 30.0, credentials: dict[str, str] | None = None) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.endpoint = endpoint or None
        self.timeout = timeout
        self.url = f"s3://{bucket}/{self.prefix}"
        self.credentials = credentials or {}  #: AWS_* variables; default: the environment
        self._stack: Any = None
        self._client: Any = None

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    async def start(self) -> None:
        from contextlib import AsyncExitStack

        from aiobotocore.config import AioConfig
        from aiobotocore.session import get_session

        config = AioConfig(connect_timeout=5, read_timeout=self.timeout,
                           retries={"max_attempts": 1})  # the sink retries, with backoff
        self._stack = AsyncExitStack()
        self._client = await self._stack.enter_async_context(get_session().create_client(
            "s3", endpoint_url=self.endpoint, config=config,
            region_name=self.credentials.get("AWS_DEFAULT_REGION",
                                             os.environ.get("AWS_DEFAULT_REGION", "us-east-1")),
            aws_access_key_id=self.credentials.get("AWS_ACCESS_KEY_ID"),
            aws_secret_access_key=self.credentials.get("AWS_SECRET_ACCESS_KEY")))

    async def stop(self) -> None:
        if self._stack is not None:
            await self._stack.aclose()
            self._stack = self._client = None

    async def put_file(self, key: str, path: Path, md5: str) -> None:
        data = await asyncio.to_thread(path.read_bytes)
        await self._client.put_object(
            Bucket=self.bucket, Key=self._key(key), Body=data,
            ContentMD5=base64.b64encode(bytes.fromhex(md5)).decode())
        head = await self._client.head_object(Bucket=self.bucket, Key=self._key(key))
        if head["ContentLength"] != len(data) or head["ETag"].strip('"') != md5:
            raise VerifyError(f"s3://{self.bucket}/{self._key(key)}: stored "
                              f"{head['ContentLength']} bytes, ETag {head['ETag']}; sent "
                              f"{len(data)} bytes, MD5 {md5}")

    async def put_bytes(self, key: str, data: bytes) -> None:
        await self._client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)

    async def get(self, key: str) -> bytes:
        response = await self._client.get_object(Bucket=self.bucket, Key=self._key(key))
        async with response["Body"] as body:
            return await body.read()

    async def list(self, prefix: str) -> list[str]:
        keys = []
        paginator = self._client.get_paginator("list_objects_v2")
        strip = len(self._key(""))
        async for page in paginator.paginate(Bucket=self.bucket, Prefix=self._key(prefix)):
            keys.extend(item["Key"][strip:] for item in page.get("Contents", []))
        return sorted(keys)

    async def delete(self, keys: list[str]) -> None:
        for start in range(0, len(keys), 1000):
            chunk = keys[start:start + 1000]
            response = await self._client.delete_objects(Bucket=self.bucket, Delete={
                "Objects": [{"Key": self._key(k)} for k in chunk], "Quiet": True})
            if response.get("Errors"):
                raise RuntimeError(f"S3 delete failed: {response['Errors'][:3]}")


def open_store(url: str, endpoint: str | None) -> ObjectStore:
    """The store of a lake URL: ``s3://bucket/prefix`` or ``file:///path``."""
    parts = urlsplit(url)
    if parts.scheme == "s3":
        return S3Store(parts.netloc, parts.path, endpoint)
    if parts.scheme == "file":
        return FileStore(Path(parts.path))
    raise ValueError(f"unsupported lake URL {url!r}: expected s3://BUCKET/PREFIX or "
                     "file:///PATH")


def fsync_path(path: Path) -> None:
    """Flush a file's or a directory's (its entries') changes to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
