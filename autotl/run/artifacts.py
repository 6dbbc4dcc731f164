"""Where trials' stored layers, best models and exports live: Optuna's artifact store (``optuna.artifacts``).

Workers on machines that share the study's database but no filesystem must
still assemble any trial's model: the layers a trial trained go to an artifact
store that every machine reaches, and the study records which one.

* default: a ``FileSystemArtifactStore`` in the run folder (``RUN_DIR/artifacts``);
* ``--artifacts DIR``: a ``FileSystemArtifactStore`` there (a shared mount);
* ``--artifacts s3://bucket/prefix``: Optuna's ``Boto3ArtifactStore`` (``pip install
  'autotl[s3]'``), at the endpoint ``AWS_ENDPOINT_URL`` if set (MinIO, Ceph, a
  cloud's S3), with the usual AWS credentials; keys are ``prefix/<artifact id>``.

Optuna records each artifact on its trial (or the study) as a system
attribute; autotl also names it in a user attribute (``layers_artifact``,
``best_model_artifact``) so any machine finds it without listing.
"""

from __future__ import annotations

import os
import tarfile
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Optional

from autotl.errors import UsageError, first_line

if TYPE_CHECKING:
    from optuna import Study

__all__ = ["describe", "open_store", "upload", "download", "remove", "upload_folder"]

_STORES: dict[tuple[str, str], Any] = {}


def describe(url: Optional[str]) -> str:
    return url or "the run folder (RUN_DIR/artifacts)"


class _Prefixed:
    """An artifact store whose keys live under ``prefix/`` (several runs in one bucket)."""

    def __init__(self, store: Any, prefix: str) -> None:
        self.store, self.prefix = store, prefix.strip("/")

    def _key(self, artifact_id: str) -> str:
        return f"{self.prefix}/{artifact_id}" if self.prefix else artifact_id

    def open_reader(self, artifact_id: str) -> BinaryIO:
        return self.store.open_reader(self._key(artifact_id))

    def write(self, artifact_id: str, content_body: BinaryIO) -> None:
        self.store.write(self._key(artifact_id), content_body)

    def remove(self, artifact_id: str) -> None:
        self.store.remove(self._key(artifact_id))


def open_store(url: Optional[str], default_dir: Path) -> Any:
    """The artifact store named by ``url`` (None: ``default_dir``), opened once per process; one line if unusable."""
    key = (url or "", str(default_dir))
    if key not in _STORES:
        _STORES[key] = _open(url, default_dir)
    return _STORES[key]


def _open(url: Optional[str], default_dir: Path) -> Any:
    from optuna.artifacts import Backoff, FileSystemArtifactStore

    if url and url.startswith("s3://"):
        bucket, _, prefix = url[len("s3://") :].partition("/")
        if not bucket:
            raise UsageError(f"--artifacts {url}: name a bucket, e.g. s3://my-bucket/autotl/run-1")
        return Backoff(_Prefixed(_s3(url, bucket), prefix), max_retries=5)
    if url and "://" in url and not url.startswith("file://"):
        raise UsageError(
            f"--artifacts {url}: unknown kind of store; pass s3://bucket/prefix or a folder"
        )
    folder = Path(url.removeprefix("file://")) if url else default_dir
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(
            f"cannot create the artifact folder {folder} ({exc.strerror}); pass a writable --artifacts"
        ) from None
    return FileSystemArtifactStore(str(folder))


def _s3(url: str, bucket: str) -> Any:
    """Optuna's Boto3 store for ``bucket``, checked to be reachable now rather than after the first trial."""
    try:
        import boto3
    except ImportError:
        raise UsageError(f"--artifacts {url} needs boto3: pip install 'autotl[s3]'") from None
    from optuna.artifacts import Boto3ArtifactStore

    client = boto3.client("s3", endpoint_url=os.environ.get("AWS_ENDPOINT_URL") or None)
    try:
        client.head_bucket(Bucket=bucket)
    except Exception as exc:  # botocore's many errors: no bucket, no credentials, no endpoint
        raise UsageError(
            f"cannot use the artifact store {url} ({first_line(exc)[:160]}); check the bucket, "
            "the AWS credentials and AWS_ENDPOINT_URL"
        ) from None
    return Boto3ArtifactStore(bucket, client=client)


def upload(store: Any, target: Any, path: Path, storage: Any = None) -> str:
    """Put the file ``path`` in ``store`` as an artifact of ``target`` (a running Trial or a Study); its id."""
    from optuna.artifacts import upload_artifact

    return upload_artifact(
        artifact_store=store, file_path=str(path), study_or_trial=target, storage=storage
    )


def download(store: Any, artifact_id: str, dest: Path) -> Path:
    """Fetch artifact ``artifact_id`` to ``dest`` (written to a temporary name, then renamed)."""
    import shutil

    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.tmp{os.getpid()}")
    try:
        with store.open_reader(artifact_id) as reader, open(tmp, "wb") as writer:
            shutil.copyfileobj(reader, writer)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def remove(store: Any, artifact_id: str) -> None:
    """Delete an artifact; one already gone is fine."""
    from optuna.artifacts.exceptions import ArtifactNotFound

    try:
        store.remove(artifact_id)
    except (ArtifactNotFound, FileNotFoundError):
        pass


def upload_folder(store: Any, study: Study, folder: Path, name: str) -> str:
    """Put ``folder`` (an export) in ``store`` as one ``name.tar`` artifact of ``study``; its id."""
    with tempfile.TemporaryDirectory(prefix="autotl-artifact-") as tmp:
        archive = Path(tmp) / f"{name}.tar"
        with tarfile.open(archive, "w") as tar:
            tar.add(folder, arcname=name)
        return upload(store, study, archive)
