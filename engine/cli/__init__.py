"""`syncxr` command line. Subcommands live in the `commands` package of each top-level package
(engine, train, eval, workflows), one module each with `register(sub)` that adds a parser whose `func(args)`
does the work. They are found by name, so the engine never imports train/ or eval/ code itself.
User errors print one line, no traceback; so do the errors of the world around a command (this
module is the one place that words them): a file-system error names its path, a connection
error the address, running out of memory what ran out, and a Ray task or Ray Data failure caused
by one of them is unwrapped to that cause."""
from __future__ import annotations

import argparse
import importlib
import pkgutil
import re
import signal
import sys
import textwrap
import threading
import warnings

from engine import __version__
from engine.core.errors import UserError


COMMAND_PACKAGES = ("engine.cli.commands", "train.commands", "eval.commands", "workflows.commands")


class OneLineParser(argparse.ArgumentParser):
    """A bad argument is one line on stderr (no usage block), exit 2, like every other bad input."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="syncxr", description="Synthetic chest X-ray data engine (SynCXR).")
    parser.add_argument("--version", action="version", version=f"syncxr {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for package_name in COMMAND_PACKAGES:
        try:
            package = importlib.import_module(package_name)
        except ModuleNotFoundError:
            continue  # a package not installed: its commands are simply absent
        for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
            importlib.import_module(f"{package_name}.{info.name}").register(sub)
    for command in sub.choices.values():
        codes = {0: "success", 2: "bad input or a failed check: one line on stderr naming the file, field or row",
                 **getattr(command, "exit_codes", {}), 130: "interrupted (Ctrl-C)",
                 143: "terminated (SIGTERM); what was done is kept"}
        command.formatter_class = argparse.RawDescriptionHelpFormatter
        paragraphs = (command.description or "").split("\n\n")  # filled one by one, kept apart
        command.description = "\n\n".join(textwrap.fill(p, 100) for p in paragraphs if p.strip())
        command.epilog = "exit codes:\n" + "\n".join(f"  {k:<4} {v}" for k, v in sorted(codes.items()))
        if "--verbose" not in command._option_string_actions:
            command.add_argument("--verbose", action="store_true",
                                 help="show Ray's own log lines and warnings (quiet by default)")
    return parser


def _causes(exc: BaseException):
    """exc and what it wraps: Python's __cause__/__context__ and Ray's RayTaskError.cause chains."""
    seen, todo = set(), [exc]
    while todo:
        e = todo.pop(0)
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        todo += [getattr(e, "cause", None), e.__cause__, e.__context__]


def _is_ray_wrapper(e: BaseException) -> bool:
    return type(e).__module__.startswith("ray.")


def os_error_line(e: OSError) -> str:
    where = f"{e.filename}: " if getattr(e, "filename", None) else ""
    if getattr(e, "filename2", None):
        where = f"{e.filename} -> {e.filename2}: "
    text = e.strerror or (str(e).splitlines() or [type(e).__name__])[0]
    return f"{where}{text}"


_OS_NAMES = r"(?:builtins\.)?(?:OSError|IOError|PermissionError|FileNotFoundError|FileExistsError|IsADirectoryError" \
            r"|NotADirectoryError|BlockingIOError|InterruptedError|TimeoutError)"
_REMOTE_LINES = (  # the last line of a worker's traceback, as Ray ships it (the exception object is often lost)
    (re.compile(rf"^{_OS_NAMES}: \[Errno \d+\] (?P<msg>[^:]+): '(?P<path>.*)'$"), "{path}: {msg}"),
    (re.compile(rf"^(?:{_OS_NAMES}|(?:pyarrow\.lib\.)?ArrowIOError): (?P<msg>.+)$"), "{msg}"),
    (re.compile(r"^engine\.[\w.]+\.(?:UserError|ConfigError|RunStopped|ClusterUnreachable): (?P<msg>.+)$"), "{msg}"),
    (re.compile(r"^(?:[\w.]+\.)?(?:_ArrayMemoryError|MemoryError)(?:: (?P<msg>.*))?$"), "out of memory: {msg}"),
)


def remote_cause(e: BaseException) -> str | None:
    """A Ray task error's root cause read from the worker's traceback text."""
    text = getattr(e, "traceback_str", None) or str(e)
    found = None
    for line in text.splitlines():
        line = line.strip()
        for pattern, form in _REMOTE_LINES:
            m = pattern.match(line)
            if m:
                found = form.format(**{k: v or "" for k, v in m.groupdict().items()})
                break
    return found


def explain(exc: BaseException) -> str | None:
    """The one line for an error that is not a bug of ours, or None (then it is a bug: traceback)."""
    chain = list(_causes(exc))
    for e in chain:  # our own message first, wherever it was raised (a Ray worker too)
        if isinstance(e, UserError) and not _is_ray_wrapper(e):
            return str(e)
    for e in chain:
        if isinstance(e, MemoryError):
            detail = (str(e).splitlines() or [""])[0]
            return f"out of memory{': ' + detail if detail else ''} (ask for less: a smaller --n, batch or image size)"
    for e in chain:
        if isinstance(e, OSError) and not _is_ray_wrapper(e) and (getattr(e, "filename", None) or e.errno):
            return os_error_line(e)
    for e in chain:
        if _is_ray_wrapper(e):
            line = remote_cause(e)
            if line:
                return line
    for e in chain:
        if isinstance(e, ConnectionError) or type(e).__name__ in ("RaySystemError", "GetTimeoutError"):
            return f"lost the Ray cluster: {(str(e).strip().splitlines() or [type(e).__name__])[0]}"
    return None


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version (0) or a bad argument (2, its line already printed)
        return exc.code if isinstance(exc.code, int) else 2
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    if not getattr(args, "verbose", False):
        warnings.filterwarnings("ignore", module="ray")  # Ray's own deprecation notes; --verbose shows them
    previous = _stop_on_sigterm()
    try:
        return args.func(args) or 0
    except UserError as exc:
        print(f"syncxr {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM (Terminated)
        return _stopped(args.command, exc)
    except Exception as exc:
        stop = next((e for e in _causes(exc) if isinstance(e, KeyboardInterrupt)), None)
        if stop is not None:  # the signal surfaced wrapped in another error (inside Ray's C++ calls)
            return _stopped(args.command, stop)
        line = explain(exc)
        if line is None:
            raise
        print(f"syncxr {args.command}: error: {line}", file=sys.stderr)
        return 2
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _stopped(command: str, signal_exc: KeyboardInterrupt) -> int:
    # Ray may re-raise the handler's exception as a plain KeyboardInterrupt: the flag is what counts
    terminated = isinstance(signal_exc, Terminated) or _sigterm_received.is_set()
    print(f"syncxr {command}: {'terminated (SIGTERM)' if terminated else 'interrupted'}; "
          "rerun the same command to resume", file=sys.stderr)
    return 143 if terminated else 130


_sigterm_received = threading.Event()


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread as Ctrl-C's KeyboardInterrupt is (a subclass, so Ray's
    blocking calls, which let KeyboardInterrupt through, let it through too)."""


def _stop_on_sigterm():
    """SIGTERM unwinds the command like Ctrl-C (files closed, Ray shut down, what is done kept)
    instead of killing the process mid-write; a second SIGTERM kills at once. -> the old handler."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def handler(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        _sigterm_received.set()
        raise Terminated()

    return signal.signal(signal.SIGTERM, handler)
