"""buttress.process_errors: threads, unawaited tasks and the program's end, one line each."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import sys
import threading
from typing import Any

import pytest

from buttress import process_errors
from tests.conftest import captured_logs


@pytest.fixture(autouse=True)
def default_hooks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Python's own hooks as the previous ones (pytest's would turn reports into warnings)."""
    monkeypatch.setattr(threading, "excepthook", threading.__excepthook__)
    monkeypatch.setattr(sys, "excepthook", sys.__excepthook__)


def _records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == process_errors.LOGGER_NAME]


def _raise_in_thread(name: str = "worker-1") -> None:
    def target() -> None:
        raise ValueError("thread failed")

    thread = threading.Thread(target=target, name=name)
    thread.start()
    thread.join()


def test_a_thread_exception_is_one_error_line(
    caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    uninstall = process_errors.install()
    try:
        with caplog.at_level(logging.ERROR):
            _raise_in_thread()
    finally:
        uninstall()
    [record] = _records(caplog)
    assert record.levelno == logging.ERROR
    assert record.getMessage() == "thread_exception thread=worker-1 error=ValueError"
    assert record.exc_info is not None
    assert isinstance(record.exc_info[1], ValueError)
    assert record.buttress == {  # type: ignore[attr-defined]
        "event": "thread_exception",
        "thread": "worker-1",
        "error": "ValueError",
    }
    assert "Traceback" not in capsys.readouterr().err  # Python's printout is replaced


async def test_an_unawaited_failing_task_is_one_error_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    uninstall = process_errors.install()  # inside the loop: its exception handler too

    async def lost() -> None:
        raise KeyError("nobody awaited me")

    try:
        with caplog.at_level(logging.ERROR):
            task = asyncio.get_running_loop().create_task(lost(), name="lost-task")
            await asyncio.sleep(0)
            assert task.done()
            del task
            gc.collect()  # the task is collected: the loop reports its exception
    finally:
        uninstall()
    [record] = _records(caplog)
    assert record.levelno == logging.ERROR
    message = record.getMessage()
    assert message.startswith("task_exception task=lost-task coro=")
    assert "lost" in message
    assert message.endswith("error=KeyError")
    assert record.exc_info is not None
    assert isinstance(record.exc_info[1], KeyError)


async def test_the_loop_handler_chains_to_a_custom_one(caplog: pytest.LogCaptureFixture) -> None:
    loop = asyncio.get_running_loop()
    seen: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: seen.append(context))
    uninstall = process_errors.install()
    try:
        with caplog.at_level(logging.ERROR):
            loop.call_exception_handler({"message": "something odd"})
    finally:
        uninstall()
    assert loop.get_exception_handler() is not None  # the custom one is back
    [record] = _records(caplog)
    assert record.getMessage() == "event_loop_error reason=something odd"
    assert record.exc_info is None
    assert seen == [{"message": "something odd"}]
    loop.set_exception_handler(None)


def test_an_uncaught_exception_is_one_critical_line(
    caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    uninstall = process_errors.install()
    try:
        with caplog.at_level(logging.ERROR):
            try:
                raise RuntimeError("start-up failed")
            except RuntimeError:
                sys.excepthook(*sys.exc_info())
    finally:
        uninstall()
    [record] = _records(caplog)
    assert record.levelno == logging.CRITICAL
    assert record.getMessage() == "uncaught_exception error=RuntimeError"
    assert capsys.readouterr().err == ""


def test_keyboard_interrupt_keeps_pythons_handling(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    previous: list[type[BaseException]] = []
    monkeypatch.setattr(sys, "excepthook", lambda kind, exc, tb: previous.append(kind))
    uninstall = process_errors.install()
    try:
        sys.excepthook(KeyboardInterrupt, KeyboardInterrupt(), None)
    finally:
        uninstall()
    assert previous == [KeyboardInterrupt]
    assert _records(caplog) == []


def test_install_is_idempotent_chains_and_uninstalls(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    chained: list[str] = []

    def theirs(args: threading.ExceptHookArgs) -> None:
        chained.append(args.exc_type.__name__)

    monkeypatch.setattr(threading, "excepthook", theirs)
    uninstall = process_errors.install()
    assert process_errors.install() == uninstall  # once per process
    installed = threading.excepthook
    assert installed is not theirs
    with caplog.at_level(logging.ERROR):
        _raise_in_thread()
    assert len(_records(caplog)) == 1  # one line, not one per install()
    assert chained == ["ValueError"]  # a hook installed before still runs
    uninstall()
    assert threading.excepthook is theirs
    assert sys.excepthook is sys.__excepthook__
    uninstall()  # twice: harmless
    assert threading.excepthook is theirs


def test_a_thread_exit_is_silent(caplog: pytest.LogCaptureFixture) -> None:
    uninstall = process_errors.install()
    try:
        thread = threading.Thread(target=sys.exit)
        thread.start()
        thread.join()
    finally:
        uninstall()
    assert _records(caplog) == []


def test_one_json_line_with_a_bounded_traceback() -> None:
    with captured_logs(json=True) as stream:
        uninstall = process_errors.install()
        try:
            _raise_in_thread("json-worker")
        finally:
            uninstall()
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    [line] = [entry for entry in lines if entry.get("logger") == "buttress.process"]
    assert line["level"] == "error"
    assert line["event"] == "thread_exception thread=json-worker error=ValueError"
    assert line["exception"].startswith("Traceback (most recent call last):")
    assert line["exception"].rstrip().endswith("ValueError: thread failed")


def test_install_hooks_again_where_another_library_replaced_ours(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    uninstall = process_errors.install()
    chained: list[str] = []

    def newcomer(args: threading.ExceptHookArgs) -> None:
        chained.append(args.exc_type.__name__)

    monkeypatch.setattr(threading, "excepthook", newcomer)  # another library, or a test
    assert process_errors.install() == uninstall
    assert threading.excepthook is not newcomer  # ours again...
    with caplog.at_level(logging.ERROR):
        _raise_in_thread()
    assert len(_records(caplog)) == 1
    assert chained == ["ValueError"]  # ...chaining to the newcomer
    uninstall()
    assert threading.excepthook is newcomer
