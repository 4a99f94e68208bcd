"""The command line (click): usage errors, help, version, completion and the exit codes of `main`.

Each test calls `cli.main([...])` in this process and checks the exit code it returns; none builds a model.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from toolchain import __version__, cli
from toolchain.errors import EXIT_CONVERSION, EXIT_OK, EXIT_UNEXPECTED, EXIT_USAGE, StepError

COMMANDS = {
    "build": ["--serve-check", "--out", "--target", "--jobs", "--force", "--json", "--junit", "--executor", "--cache"],
    "validate": [],
    "inspect": ["--json"],
    "serve-check": ["--target", "--native", "--server", "--json"],
    "cache": ["ls|prune|verify", "--out", "--cache", "--max-size", "--older-than", "--dry-run", "--json"],
    "bench": ["--batch", "--warmup", "--iters", "--seconds", "--threads", "--recipe", "--through-server", "--server", "--json"],
}


def run(capsys, *argv: str) -> tuple[int, str, str]:
    rc = cli.main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def usage_error(err: str) -> str:
    """The one error line of a usage error, after the usage line."""
    lines = err.splitlines()
    assert lines[0].startswith("Usage: mlpack"), err
    errors = [line for line in lines if line.startswith("mlpack: error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], err
    return errors[0]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["build", "r.yaml", "--bogus"], "mlpack: error: No such option '--bogus'"),
        (["--bogus"], "mlpack: error: No such option '--bogus'"),
        (["frob"], "mlpack: error: No such command 'frob'."),
        ([], "mlpack: error: Missing command."),
        (["build"], "mlpack: error: Missing argument 'RECIPE'."),
        (["build", "r.yaml", "--jobs", "x"], "mlpack: error: Invalid value for '--jobs': 'x' is not a valid integer."),
        (["bench", "d", "--batch", "0"], "mlpack: error: Invalid value for '--batch': '0': batch sizes must be positive integers"),
        (["bench", "d", "--batch", ","], "mlpack: error: Invalid value for '--batch': ',': batch sizes must be positive integers"),
        (["bench", "d", "--batch", "1,x"], "mlpack: error: Invalid value for '--batch': '1,x' is not a comma-separated list of integers"),
        (["cache"], "mlpack: error: Missing argument '{ls|prune|verify}'."),
        (["cache", "list"], "mlpack: error: Invalid value for '{ls|prune|verify}': 'list' is not one of 'ls', 'prune', 'verify'."),
    ],
)
def test_usage_errors_exit_2_with_usage_and_one_error_line(capsys, argv, message):
    rc, out, err = run(capsys, *argv)
    assert rc == EXIT_USAGE and out == ""
    assert usage_error(err).startswith(message), err


def test_a_misspelt_option_is_suggested(capsys):
    rc, _, err = run(capsys, "build", "r.yaml", "--forse")
    assert rc == EXIT_USAGE and "'--force'" in usage_error(err)


def test_usage_line_is_the_commands(capsys):
    _, _, err = run(capsys, "bench", "d", "--batch", "0")
    assert err.splitlines()[0] == "Usage: mlpack bench [OPTIONS] DIR"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["build", "r.yaml", "--jobs", "0"], "mlpack: --jobs must be at least 1\n"),
        (["bench", "d", "--warmup", "-1"], "mlpack: --warmup must be >= 0, --iters >= 1 and --seconds > 0\n"),
    ],
)
def test_range_checks_exit_2_before_any_work(capsys, argv, message):
    rc, out, err = run(capsys, *argv)
    assert (rc, out, err) == (EXIT_USAGE, "", message)


def test_junit_into_a_folder_exits_2(capsys, tmp_path):
    rc, _, err = run(capsys, "build", str(tmp_path / "r.yaml"), "--junit", str(tmp_path))
    assert rc == EXIT_USAGE
    assert err == f"mlpack: --junit: {tmp_path} is a folder\n    fix: give --junit a file path, e.g. {tmp_path / 'report.xml'}\n"


def test_validate_a_missing_file_exits_2(capsys, tmp_path):
    rc, out, err = run(capsys, "validate", str(tmp_path / "absent.yaml"))
    assert (rc, out) == (EXIT_USAGE, "")
    assert err == f"mlpack: recipe not found: {tmp_path / 'absent.yaml'}\n    fix: pass the path of a recipe .yaml file\n"


def test_version(capsys):
    assert run(capsys, "--version") == (EXIT_OK, f"mlpack {__version__}\n", "")


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_top_help_lists_every_command(capsys, flag):
    rc, out, err = run(capsys, flag)
    assert (rc, err) == (EXIT_OK, "")
    assert out.startswith("Usage: mlpack [OPTIONS] COMMAND [ARGS]...")
    for name in COMMANDS:
        assert f"\n  {name} " in out, name
    assert "--version" in out and "-h, --help" in out
    assert "latency and throughput of each built artifact, against the\n               eager source model" in out  # whole, not cut


@pytest.mark.parametrize("flag", ["--help", "-h"])
@pytest.mark.parametrize("command", COMMANDS)
def test_command_help_lists_every_option(capsys, command, flag):
    rc, out, err = run(capsys, command, flag)
    assert (rc, err) == (EXIT_OK, "")
    assert out.startswith(f"Usage: mlpack {command} [OPTIONS] ")
    for option in [*COMMANDS[command], "-h, --help"]:
        assert option in out, (command, option)


def test_defaults_reach_the_commands_as_before():
    build = cli._parse(["build", "r.yaml"]).args
    assert vars(build) == {"command": "build", "recipe": Path("r.yaml"), "serve_check": False, "out": Path("artifacts"), "target": None,
                           "jobs": None, "force": False, "json": False, "junit": None, "executor": None, "cache": None}  # fmt: skip
    bench = cli._parse(["bench", "d"]).args
    assert (bench.dir, bench.batch, bench.warmup, bench.iters, bench.seconds, bench.threads) == (Path("d"), [1, 8, 32], 5, 50, 5.0, None)
    cache = cli._parse(["cache", "--out", "o", "prune", "--max-size", "1GB", "--dry-run"]).args
    assert (cache.action, cache.out, cache.max_size, cache.older_than, cache.dry_run) == ("prune", Path("o"), "1GB", None, True)


def test_repeated_and_listed_values():
    assert cli._parse(["build", "r.yaml", "--target", "onnx", "--target", "aoti", "--jobs", "2"]).args.target == ["onnx", "aoti"]
    assert cli._parse(["serve-check", "d", "--target", "onnx"]).args.target == ["onnx"]
    assert cli._parse(["bench", "d", "--batch", "1, 4,,64"]).args.batch == [1, 4, 64]
    assert cli._parse(["bench", "d", "--batch=2"]).args.batch == [2]


def test_cache_ls_with_out_as_typed(capsys, tmp_path, monkeypatch):
    monkeypatch.delenv("MLPACK_CACHE", raising=False)
    rc, _, err = run(capsys, "cache", "ls", "--out", str(tmp_path))
    assert rc == EXIT_OK and f"no entries in {tmp_path / '.mlpack-cache'}" in err


def test_completion_script(capsys, monkeypatch):
    monkeypatch.setenv("_MLPACK_COMPLETE", "bash_source")
    rc, out, _ = run(capsys)
    assert rc == EXIT_OK
    assert "_mlpack_completion()" in out and "_MLPACK_COMPLETE=bash_complete" in out


@pytest.mark.parametrize(
    "words, cword, expected", [("mlpack se", "1", "serve-check"), ("mlpack cache p", "2", "prune"), ("mlpack build r.yaml --ju", "3", "--junit")]
)
def test_completion_answers(capsys, monkeypatch, words, cword, expected):
    monkeypatch.setenv("_MLPACK_COMPLETE", "bash_complete")
    monkeypatch.setenv("COMP_WORDS", words)
    monkeypatch.setenv("COMP_CWORD", cword)
    rc, out, _ = run(capsys)
    assert rc == EXIT_OK and f"plain,{expected}" in out.splitlines(), out


# The error paths of a command, unchanged from the argparse CLI.


def failing_validate(monkeypatch, error: BaseException) -> None:
    def validate(args):
        raise error

    monkeypatch.setattr(cli, "cmd_validate", validate)


def test_an_mlpack_error_prints_its_render_and_exit_code(capsys, monkeypatch):
    failing_validate(monkeypatch, StepError("onnx export failed"))
    assert run(capsys, "validate", "r.yaml") == (EXIT_CONVERSION, "", "mlpack: onnx export failed\n")


def test_interrupted_exits_130(capsys, monkeypatch):
    failing_validate(monkeypatch, KeyboardInterrupt())
    assert run(capsys, "validate", "r.yaml") == (130, "", "mlpack: interrupted; the last good output is untouched\n")


def test_a_missing_extra_is_named(capsys, monkeypatch):
    failing_validate(monkeypatch, ModuleNotFoundError("No module named 'gevent'", name="gevent"))
    rc, _, err = run(capsys, "validate", "r.yaml")
    assert (rc, err) == (EXIT_USAGE, "mlpack: validate needs gevent, which is not installed\n    fix: pip install 'mlpack[serve]'\n")


def test_a_missing_module_that_is_no_extra_is_a_bug(monkeypatch):
    failing_validate(monkeypatch, ModuleNotFoundError("No module named 'nope'", name="nope"))
    with pytest.raises(ModuleNotFoundError):
        cli.main(["validate", "r.yaml"])


def test_an_unexpected_error_exits_1_and_debug_raises_it(capsys, monkeypatch):
    monkeypatch.delenv("MLPACK_DEBUG", raising=False)
    failing_validate(monkeypatch, RuntimeError("boom"))
    rc, _, err = run(capsys, "validate", "r.yaml")
    assert (rc, err) == (EXIT_UNEXPECTED, "mlpack: unexpected error: RuntimeError: boom\n    (set MLPACK_DEBUG=1 for the traceback)\n")
    monkeypatch.setenv("MLPACK_DEBUG", "1")
    with pytest.raises(RuntimeError, match="boom"):
        cli.main(["validate", "r.yaml"])
