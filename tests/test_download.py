"""Getting weights over HTTP: cache, verification, resume, retries, locking, and the faults they guard against."""

import concurrent.futures
import contextlib
import dataclasses
import hashlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import filelock
import pytest
import torch

import segzoo
from segzoo.weights import ChecksumMismatchError, WeightsUnavailableError, fetch_weights
from segzoo.weights.cache import LOCK_FILE_NAME
from segzoo.weights.download import partial_path
from segzoo.zoo import WeightSource
from tests.conftest import REPO, closed_port_url, save_mmseg_checkpoint, synthetic_state_dict

PAYLOAD = bytes(range(256)) * 4096  # 1 MiB
PAYLOAD_SHA = hashlib.sha256(PAYLOAD).hexdigest()


@pytest.fixture
def served(file_server):
    (file_server.root / "weights.pth").write_bytes(PAYLOAD)
    return file_server


def _source(server, sha256=PAYLOAD_SHA):
    return WeightSource(url=f"{server.url}/weights.pth", format="mmseg", sha256=sha256)


def _cache_files(cache):
    return sorted(p.name for p in cache.iterdir() if not p.name.endswith(".lock")) if cache.exists() else []


def test_first_download_then_cache_hit_without_network(served, isolated_cache):
    fetched = fetch_weights(_source(served), progress=False)
    assert fetched.path == isolated_cache / "weights.pth" and fetched.path.read_bytes() == PAYLOAD
    assert fetched.sha256 == PAYLOAD_SHA
    served.close()
    assert fetch_weights(_source(served), progress=False).path == fetched.path
    assert served.gets("/weights.pth") == [None]


def test_server_sending_wrong_bytes_fails_and_caches_nothing(served, isolated_cache):
    served.corrupt = True
    with pytest.raises(ChecksumMismatchError) as err:
        fetch_weights(_source(served), progress=False)
    message = str(err.value)
    assert PAYLOAD_SHA in message and "weights.pth" in message and "got" in message
    assert _cache_files(isolated_cache) == []


def test_connection_dropped_halfway_is_resumed_and_verified(served, isolated_cache):
    served.truncate = 1
    assert fetch_weights(_source(served), progress=False).path.read_bytes() == PAYLOAD
    first, second = served.gets("/weights.pth")
    assert first is None and second == f"bytes={len(PAYLOAD) // 2}-"
    assert _cache_files(isolated_cache) == [LOCK_FILE_NAME, "weights.pth"]


def test_next_call_resumes_what_a_failed_call_left(served, isolated_cache, monkeypatch):
    monkeypatch.setenv("SEGZOO_DOWNLOAD_RETRIES", "0")
    served.truncate = 1
    with pytest.raises(WeightsUnavailableError):
        fetch_weights(_source(served), progress=False)
    assert partial_path(isolated_cache / "weights.pth").stat().st_size == len(PAYLOAD) // 2
    assert not (isolated_cache / "weights.pth").exists()
    assert fetch_weights(_source(served), progress=False).path.read_bytes() == PAYLOAD
    assert served.gets("/weights.pth")[-1] == f"bytes={len(PAYLOAD) // 2}-"


def test_stray_partial_file_is_never_trusted(served, isolated_cache):
    """A .partial without a matching validator (e.g. from a killed process) is restarted, not resumed."""
    isolated_cache.mkdir()
    partial_path(isolated_cache / "weights.pth").write_bytes(b"garbage" * 1000)
    assert fetch_weights(_source(served), progress=False).path.read_bytes() == PAYLOAD
    assert served.gets("/weights.pth") == [None]


def test_resumed_file_that_does_not_verify_is_downloaded_again(served, isolated_cache, monkeypatch):
    monkeypatch.setenv("SEGZOO_DOWNLOAD_RETRIES", "0")
    served.truncate = 1
    with pytest.raises(WeightsUnavailableError):
        fetch_weights(_source(served), progress=False)
    partial = partial_path(isolated_cache / "weights.pth")
    partial.write_bytes(b"x" * partial.stat().st_size)  # same length, wrong bytes
    assert fetch_weights(_source(served), progress=False).path.read_bytes() == PAYLOAD
    assert served.gets("/weights.pth")[-2:] == [f"bytes={len(PAYLOAD) // 2}-", None]


def test_server_errors_are_retried(served, isolated_cache):
    served.fail = [503, 502]
    assert fetch_weights(_source(served), progress=False).path.read_bytes() == PAYLOAD
    assert len(served.gets("/weights.pth")) == 3


def test_client_errors_are_not_retried(served):
    with pytest.raises(WeightsUnavailableError, match="404"):
        fetch_weights(WeightSource(url=f"{served.url}/absent.pth", format="mmseg"), progress=False)
    assert len(served.gets("/absent.pth")) == 1


def test_unreachable_host_fails_fast_with_instructions(isolated_cache):
    source = WeightSource(url=f"{closed_port_url()}/weights.pth", format="mmseg")
    start = time.monotonic()
    with pytest.raises(WeightsUnavailableError) as err:
        fetch_weights(source, progress=False)
    assert time.monotonic() - start < 10
    message = str(err.value)
    assert "checkpoint_path" in message and str(isolated_cache / "weights.pth") in message
    assert _cache_files(isolated_cache) == []


def test_read_timeout_is_bounded(served, monkeypatch):
    monkeypatch.setenv("SEGZOO_DOWNLOAD_TIMEOUT", "0.2")
    monkeypatch.setenv("SEGZOO_DOWNLOAD_RETRIES", "1")
    served.chunk_delay_s = 1.0
    start = time.monotonic()
    with pytest.raises(WeightsUnavailableError, match="timed out|Read"):
        fetch_weights(_source(served), progress=False)
    assert time.monotonic() - start < 10


def test_proxy_from_the_environment_is_used(served, monkeypatch):
    monkeypatch.setenv("HTTP_PROXY", served.url)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("http_proxy", raising=False)
    source = WeightSource(url="http://weights.invalid/weights.pth", format="mmseg", sha256=PAYLOAD_SHA)
    assert fetch_weights(source, progress=False).path.read_bytes() == PAYLOAD
    assert served.gets("/weights.pth") == [None]


def test_cached_file_altered_after_download_is_detected(served, isolated_cache):
    path = fetch_weights(_source(served), progress=False).path
    path.write_bytes(b"tampered" + PAYLOAD[8:])
    assert fetch_weights(_source(served), progress=False).path.read_bytes() == PAYLOAD
    assert len(served.gets("/weights.pth")) == 2
    served.close()
    path.write_bytes(b"tampered again")
    with pytest.raises(WeightsUnavailableError):
        fetch_weights(_source(served), progress=False)
    assert not path.exists()


def test_two_processes_download_once_and_both_succeed(served, isolated_cache):
    served.chunk_delay_s = 0.05  # ~0.8 s per download, so the processes overlap
    code = (
        "import sys; from segzoo.weights import fetch_weights; from segzoo.zoo import WeightSource\n"
        "p = fetch_weights(WeightSource(url=sys.argv[1], format='mmseg', sha256=sys.argv[2]), progress=False).path\n"
        "print(p.stat().st_size)\n"
    )
    env = {**os.environ, "SEGZOO_CACHE": str(isolated_cache)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, f"{served.url}/weights.pth", PAYLOAD_SHA],
            stdout=subprocess.PIPE,
            env=env,
            cwd=REPO,
        )
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    assert outputs == [f"{len(PAYLOAD)}\n".encode()] * 2
    assert len(served.gets("/weights.pth")) == 1


def _entry_with_source(monkeypatch, name, **changes):
    """Point the registry entry ``name`` at other weight sources for one test."""
    from segzoo import registry

    info = dataclasses.replace(registry._catalog().by_name[name], **changes)
    monkeypatch.setitem(registry._catalog().by_name, name, info)
    return info


def test_pretrained_downloads_once_through_url_mirror(file_server, monkeypatch):
    name = "moganet_xt_fpn_ade20k"
    filename = segzoo.model_info(name).weights[0].filename
    state_dict = synthetic_state_dict(name)
    save_mmseg_checkpoint(file_server.root / filename, state_dict)
    monkeypatch.setenv("SEGZOO_MIRROR", file_server.url)
    for _ in range(2):
        model = segzoo.create_model(name, pretrained=True, progress=False)
        assert torch.equal(model.state_dict()["decode_head.conv_seg.weight"], state_dict["decode_head.conv_seg.weight"])
    assert file_server.gets(f"/{filename}") == [None]


def test_trust_on_first_use_records_and_then_enforces(file_server, isolated_cache, monkeypatch, caplog):
    name = "moganet_xt_fpn_ade20k"
    source = segzoo.model_info(name).weights[0]
    path = save_mmseg_checkpoint(file_server.root / source.filename, synthetic_state_dict(name))
    monkeypatch.setenv("SEGZOO_MIRROR", file_server.url)
    with caplog.at_level("WARNING"):
        segzoo.create_model(name, pretrained=True, progress=False)
    assert "trusting it on first use" in caplog.text
    record = json.loads((isolated_cache / LOCK_FILE_NAME).read_text())[source.url]
    assert record["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest() and record["trust"] == "first-use"
    # The upstream file changes: the cached copy still loads, a fresh download must match the record.
    save_mmseg_checkpoint(file_server.root / source.filename, synthetic_state_dict(name, seed=1))
    segzoo.create_model(name, pretrained=True, progress=False)
    (isolated_cache / source.filename).unlink()
    with pytest.raises(ChecksumMismatchError, match=record["sha256"]):
        segzoo.create_model(name, pretrained=True, progress=False)
    assert not (isolated_cache / source.filename).exists()
    assert not any(".partial" in f for f in _cache_files(isolated_cache))


def test_unpinned_download_that_does_not_load_is_not_kept(file_server, isolated_cache, monkeypatch):
    name = "moganet_xt_fpn_ade20k"
    source = segzoo.model_info(name).weights[0]
    save_mmseg_checkpoint(file_server.root / source.filename, synthetic_state_dict("moganet_t_fpn_ade20k"))
    monkeypatch.setenv("SEGZOO_MIRROR", file_server.url)
    with pytest.raises(segzoo.weights.CheckpointMismatchError):
        segzoo.create_model(name, pretrained=True, progress=False)
    assert _cache_files(isolated_cache) == []


def test_sources_are_tried_in_order_and_the_one_used_is_logged(file_server, monkeypatch, caplog):
    name = "moganet_xt_fpn_ade20k"
    original = segzoo.model_info(name).weights[0]
    dead = WeightSource(url=f"{closed_port_url()}/{original.filename}", format="mmseg")
    live = WeightSource(url=f"{file_server.url}/{original.filename}", format="mmseg")
    save_mmseg_checkpoint(file_server.root / original.filename, synthetic_state_dict(name))
    _entry_with_source(monkeypatch, name, weights=(dead, live))
    with caplog.at_level("INFO", logger="segzoo"):
        segzoo.create_model(name, pretrained=True, progress=False)
    assert f"weights unavailable from {dead.url}" in caplog.text and f"loaded weights from {live.url}" in caplog.text


def test_no_source_available_lists_every_failure(monkeypatch):
    name = "moganet_xt_fpn_ade20k"
    urls = [f"{closed_port_url()}/a.pth", f"{closed_port_url()}/b.pth"]
    _entry_with_source(monkeypatch, name, weights=tuple(WeightSource(url=u, format="mmseg") for u in urls))
    with pytest.raises(WeightsUnavailableError) as err:
        segzoo.create_model(name, pretrained=True, progress=False)
    assert all(u in str(err.value) for u in urls)


def test_pretrained_model_is_not_randomly_initialized_first(file_server, monkeypatch):
    name = "moganet_xt_upernet_ade20k"
    filename = segzoo.model_info(name).weights[0].filename
    save_mmseg_checkpoint(file_server.root / filename, synthetic_state_dict(name))
    monkeypatch.setenv("SEGZOO_MIRROR", file_server.url)
    initialized = []  # the shapes of the tensors with memory that kaiming_uniform_ initialized
    original = torch.nn.init.kaiming_uniform_

    def record(tensor, *args, **kwargs):
        if not tensor.is_meta:  # on the meta device it does no work
            initialized.append(tuple(tensor.shape))
        return original(tensor, *args, **kwargs)

    monkeypatch.setattr(torch.nn.init, "kaiming_uniform_", record)
    segzoo.create_model(name)
    assert len(initialized) > 100  # every conv, when no weights follow
    initialized.clear()
    model = segzoo.create_model(name, pretrained=True, progress=False)
    assert initialized == []
    assert not any(t.is_meta for t in model.state_dict().values())
    with pytest.warns(UserWarning, match="re-initialized"):
        model = segzoo.create_model(name, pretrained=True, num_classes=5, progress=False)
    assert sorted(initialized) == [(5, 256, 1, 1), (5, 512, 1, 1)]  # only the two classifiers
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 5, 64, 64)


def test_verified_pth_gets_a_safetensors_copy_that_later_loads_use(file_server, isolated_cache, monkeypatch):
    name = "moganet_xt_fpn_ade20k"
    filename = segzoo.model_info(name).weights[0].filename
    state_dict = synthetic_state_dict(name)
    save_mmseg_checkpoint(file_server.root / filename, state_dict)
    monkeypatch.setenv("SEGZOO_MIRROR", file_server.url)
    segzoo.create_model(name, pretrained=True, progress=False)
    copy = (isolated_cache / filename).with_suffix(".safetensors")
    assert copy.is_file()
    read = []
    import segzoo.weights.pretrained as pretrained

    monkeypatch.setattr(
        pretrained, "read_state_dict", lambda p, **kw: read.append(p) or segzoo.weights.read_state_dict(p, **kw)
    )
    model = segzoo.create_model(name, pretrained=True, progress=False)
    assert read == [copy]
    assert torch.equal(model.state_dict()["decode_head.conv_seg.weight"], state_dict["decode_head.conv_seg.weight"])
    copy.write_bytes(b"tampered")  # a changed copy is ignored and rewritten from the verified original
    model = segzoo.create_model(name, pretrained=True, progress=False)
    assert read[-1] == isolated_cache / filename
    assert torch.equal(model.state_dict()["decode_head.conv_seg.weight"], state_dict["decode_head.conv_seg.weight"])


def test_server_that_never_answers_fails_in_bounded_time(silent_server_url, isolated_cache, monkeypatch):
    monkeypatch.setenv("SEGZOO_DOWNLOAD_TIMEOUT", "0.3")
    monkeypatch.setenv("SEGZOO_DOWNLOAD_RETRIES", "1")
    start = time.monotonic()
    with pytest.raises(WeightsUnavailableError) as err:
        fetch_weights(WeightSource(url=f"{silent_server_url}/weights.pth", format="mmseg"), progress=False)
    assert time.monotonic() - start < 5
    message = str(err.value)
    assert "after 2 attempts" in message and "checkpoint_path" in message  # still says how to load offline
    assert _cache_files(isolated_cache) == []


def test_default_limits_end_a_silent_download_within_about_a_minute(monkeypatch):
    from segzoo.weights.download import DownloadLimits

    for var in ("SEGZOO_DOWNLOAD_TIMEOUT", "SEGZOO_DOWNLOAD_RETRIES"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr("segzoo.weights.download.BACKOFF_S", 0.5)
    assert 45 <= DownloadLimits.from_env().worst_case_stall_s <= 75


def test_trickling_server_is_aborted_by_the_low_speed_limit(served, isolated_cache, monkeypatch):
    served.trickle_s = 0.05  # 20 bytes/s: each byte arrives well within the read timeout
    monkeypatch.setenv("SEGZOO_DOWNLOAD_MIN_SPEED", "1000")
    monkeypatch.setenv("SEGZOO_DOWNLOAD_SPEED_TIME", "0.5")
    monkeypatch.setenv("SEGZOO_DOWNLOAD_RETRIES", "1")
    start = time.monotonic()
    with pytest.raises(WeightsUnavailableError, match="SEGZOO_DOWNLOAD_MIN_SPEED") as err:
        fetch_weights(_source(served), progress=False)
    assert time.monotonic() - start < 10
    assert "bytes/s" in str(err.value)
    assert "weights.pth" not in _cache_files(isolated_cache)


@pytest.mark.parametrize(
    "variable, value",
    [
        ("SEGZOO_DOWNLOAD_TIMEOUT", "soon"),
        ("SEGZOO_DOWNLOAD_TIMEOUT", "0"),
        ("SEGZOO_DOWNLOAD_RETRIES", "-1"),
        ("SEGZOO_DOWNLOAD_MIN_SPEED", "fast"),
    ],
)
def test_bad_limit_settings_name_the_variable(served, monkeypatch, variable, value):
    monkeypatch.setenv(variable, value)
    with pytest.raises(segzoo.weights.WeightsError, match=variable):
        fetch_weights(_source(served), progress=False)


@contextlib.contextmanager
def socket_server(serve: Callable[[socket.socket, threading.Event], None]):
    """A server on 127.0.0.1 that runs ``serve(connection, stop)`` on a thread of its own for each connection; yields
    its URL, and sets ``stop`` when the block ends."""
    stop = threading.Event()
    listener = socket.create_server(("127.0.0.1", 0))

    def accept() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:  # closed
                return
            threading.Thread(target=serve, args=(conn, stop), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        listener.close()


def trickling_server(head: bytes, piece: bytes, delay_s: float = 0.02, per_byte: bool = True):
    """A server on 127.0.0.1 that answers each request with ``head``, then ``piece`` over and over, never ending.

    ``piece`` goes one byte per ``delay_s`` (``per_byte``), or whole, as fast as the client reads.
    """

    def serve(conn: socket.socket, stop: threading.Event) -> None:
        with conn:
            conn.recv(65536)  # the request
            try:
                conn.sendall(head)
                while not stop.is_set():
                    for byte in (piece[i : i + 1] for i in range(len(piece))) if per_byte else [piece]:
                        conn.sendall(byte)
                        if per_byte and stop.wait(delay_s):
                            return
            except OSError:  # the client gave up
                return

    return socket_server(serve)


TRICKLED_HEADERS = (b"HTTP/1.1 200 OK\r\n", b"X-Padding: 1\r\n")
ENDLESS_CHUNKED = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"1\r\n \r\n",
)


def test_default_limits_end_trickled_headers_within_two_minutes(monkeypatch):
    from segzoo.weights.download import DownloadLimits

    for var in DownloadLimits._ENV.values():
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr("segzoo.weights.download.BACKOFF_S", 0.5)
    assert DownloadLimits.from_env().worst_case_trickled_response_s <= 100


def test_headers_trickled_byte_by_byte_hit_the_response_deadline(isolated_cache, monkeypatch):
    monkeypatch.setenv("SEGZOO_DOWNLOAD_RESPONSE_DEADLINE", "0.5")
    monkeypatch.setenv("SEGZOO_DOWNLOAD_RETRIES", "1")
    with trickling_server(*TRICKLED_HEADERS) as url:
        start = time.monotonic()
        with pytest.raises(WeightsUnavailableError) as err:
            fetch_weights(WeightSource(url=f"{url}/weights.pth", format="mmseg"), progress=False)
    assert time.monotonic() - start < 4
    message = str(err.value)
    assert "after 2 attempts" in message and "SEGZOO_DOWNLOAD_RESPONSE_DEADLINE" in message and "0.5s" in message
    assert _cache_files(isolated_cache) == []


def test_body_longer_than_the_attempt_deadline_is_cut_off_and_resumed(served, isolated_cache, monkeypatch):
    served.chunk_delay_s = 0.3  # 16 pieces of 64 KiB: about 5 s, fast enough for the speed limit
    monkeypatch.setenv("SEGZOO_DOWNLOAD_DEADLINE", "1")
    monkeypatch.setenv("SEGZOO_DOWNLOAD_RETRIES", "1")
    start = time.monotonic()
    with pytest.raises(WeightsUnavailableError, match="SEGZOO_DOWNLOAD_DEADLINE") as err:
        fetch_weights(_source(served), progress=False)
    assert time.monotonic() - start < 4 and "the next attempt resumes" in str(err.value)
    second = served.gets("/weights.pth")[1]
    assert second is not None and second.startswith("bytes=")  # the second attempt resumed the first's bytes


@pytest.mark.parametrize("served_manifest", [TRICKLED_HEADERS, ENDLESS_CHUNKED], ids=["headers", "endless-body"])
def test_trickled_mirror_manifest_hits_the_response_deadline(served_manifest, monkeypatch):
    monkeypatch.setenv("SEGZOO_DOWNLOAD_RESPONSE_DEADLINE", "0.5")
    with trickling_server(*served_manifest) as url:
        monkeypatch.setenv("SEGZOO_MIRROR", url)
        start = time.monotonic()
        with pytest.raises(WeightsUnavailableError) as err:
            fetch_weights(WeightSource(url="https://example.com/weights.pth", format="mmseg"), progress=False)
    assert time.monotonic() - start < 3
    message = str(err.value)
    assert f"{url}/manifest.json" in message and "SEGZOO_DOWNLOAD_RESPONSE_DEADLINE" in message


def test_huge_mirror_manifest_is_never_read_whole(file_server, monkeypatch):
    (file_server.root / "manifest.json").write_bytes(b" " * (5 << 20))  # announced in Content-Length
    monkeypatch.setenv("SEGZOO_MIRROR", file_server.url)
    source = WeightSource(url="https://example.com/weights.pth", format="mmseg")
    with pytest.raises(WeightsUnavailableError, match="announces 5242880 bytes, more than the 4 MiB"):
        fetch_weights(source, progress=False)
    endless = (ENDLESS_CHUNKED[0], b"10000\r\n" + b" " * 0x10000 + b"\r\n")  # unannounced, fast
    with trickling_server(*endless, per_byte=False) as url:
        monkeypatch.setenv("SEGZOO_MIRROR", url)
        with pytest.raises(WeightsUnavailableError, match="sent more than 4194304 bytes"):
            fetch_weights(source, progress=False)


@contextlib.contextmanager
def lock_held_elsewhere(lock: Path, record: bool = True):
    """``lock`` held by another thread (the same as another process for file locks) until the block ends."""
    from segzoo.weights.cache import exclusive

    taken, release = threading.Event(), threading.Event()

    def hold() -> None:
        with exclusive(lock, "fetching a test file") if record else filelock.FileLock(str(lock)):
            taken.set()
            release.wait()

    holder = threading.Thread(target=hold, daemon=True)
    holder.start()
    taken.wait()
    try:
        yield
    finally:
        release.set()
        holder.join()


_HOLD_LOCK = """
import sys, time
from collections.abc import Callable
from pathlib import Path
from segzoo.weights.cache import exclusive
with exclusive(Path(sys.argv[1]), "fetching a test file"):
    print("holding", flush=True)
    time.sleep(120)
"""


def test_waiting_for_a_lock_without_progress_ends_naming_its_holder(served, isolated_cache, monkeypatch):
    isolated_cache.mkdir()
    lock = isolated_cache / "weights.pth.lock"
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD_LOCK, str(lock)], stdout=subprocess.PIPE, text=True, cwd=REPO
    )
    try:
        assert holder.stdout.readline() == "holding\n"
        monkeypatch.setenv("SEGZOO_LOCK_TIMEOUT", "1")
        start = time.monotonic()
        with pytest.raises(WeightsUnavailableError) as err:
            fetch_weights(_source(served), progress=False)
        assert time.monotonic() - start < 3
    finally:
        holder.kill()
        holder.wait()
    message = str(err.value)
    for needed in (str(lock), f"process {holder.pid} on host {socket.gethostname()}", "fetching a test file"):
        assert needed in message
    assert "SEGZOO_LOCK_TIMEOUT" in message and "delete" in message
    assert served.gets("/weights.pth") == []
    assert fetch_weights(_source(served), progress=False).path.read_bytes() == PAYLOAD  # the kernel freed the lock


def test_lock_whose_recorded_holder_is_gone_is_called_stale(served, isolated_cache, monkeypatch):
    from segzoo.weights.cache import holder_path

    isolated_cache.mkdir()
    lock = isolated_cache / "weights.pth.lock"
    monkeypatch.setenv("SEGZOO_LOCK_TIMEOUT", "0.5")
    with lock_held_elsewhere(lock, record=False):  # e.g. a lock on a network file system that outlived its process
        gone = subprocess.Popen([sys.executable, "-c", "pass"])
        gone.wait()
        holder_path(lock).write_text(
            json.dumps({"pid": gone.pid, "host": socket.gethostname(), "since": "then", "doing": "fetching"})
        )
        with pytest.raises(WeightsUnavailableError, match="no longer runs, so the lock is stale"):
            fetch_weights(_source(served), progress=False)


def test_lock_holder_that_makes_progress_is_waited_for(served, isolated_cache, monkeypatch):
    isolated_cache.mkdir()
    partial = partial_path(isolated_cache / "weights.pth")
    monkeypatch.setenv("SEGZOO_LOCK_TIMEOUT", "0.5")
    with lock_held_elsewhere(isolated_cache / "weights.pth.lock"):
        waiter = concurrent.futures.ThreadPoolExecutor(1).submit(fetch_weights, _source(served), progress=False)
        for _ in range(10):  # what a download in progress does to its partial file, for 2 s
            time.sleep(0.2)
            with open(partial, "ab") as f:
                f.write(b"x")
        assert not waiter.done()
    assert waiter.result(timeout=10).path.read_bytes() == PAYLOAD


def test_callers_waiting_behind_a_trickling_download_are_not_blocked_for_good(isolated_cache, monkeypatch):
    monkeypatch.setenv("SEGZOO_DOWNLOAD_RESPONSE_DEADLINE", "0.5")
    monkeypatch.setenv("SEGZOO_DOWNLOAD_RETRIES", "0")
    with trickling_server(*TRICKLED_HEADERS) as url, concurrent.futures.ThreadPoolExecutor(3) as pool:
        source = WeightSource(url=f"{url}/weights.pth", format="mmseg")
        start = time.monotonic()
        waiters = [pool.submit(fetch_weights, source, progress=False) for _ in range(3)]
        errors = [w.exception(timeout=10) for w in waiters]
    assert time.monotonic() - start < 5  # each in turn: one attempt of 0.5 s
    assert all("SEGZOO_DOWNLOAD_RESPONSE_DEADLINE" in str(e) for e in errors), errors
