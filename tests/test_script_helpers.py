"""The helpers example scripts import (HfArgumentParser, utils.logging, utils.versions, trainer_utils), run side by
side with the reference's: the same dataclasses and inputs must give the same values, or fail the same way."""
import importlib.metadata
import logging
import sys
from dataclasses import dataclass, field
from enum import Enum
from typing import Literal, Optional, Union

import pytest

transformers = pytest.importorskip("transformers")
import transformers.utils.logging as ref_logging  # noqa: E402
from packaging.version import InvalidVersion  # noqa: E402
from transformers import hf_argparser as ref_argparser, trainer_utils as ref_trainer_utils  # noqa: E402
from transformers.utils import check_min_version as ref_check_min_version, versions as ref_versions  # noqa: E402

import tuneforge  # noqa: E402
from tuneforge import hf_argparser as tf_argparser, trainer_utils as tf_trainer_utils, utils as tf_utils  # noqa: E402
from tuneforge.utils import logging as tf_logging, versions as tf_versions  # noqa: E402

PARSERS = (ref_argparser.HfArgumentParser, tf_argparser.HfArgumentParser)


class Color(Enum):
    RED = "red"
    BLUE = "blue"


@dataclass
class Basic:
    foo: int
    bar: float = 0.5
    name: str = field(default="x", metadata={"help": "the name", "aliases": ["-n", "--nm"]})
    maybe: Optional[bool] = None
    on: bool = True
    off: bool = False
    opt_int: Optional[int] = None
    color: Color = Color.RED
    mode: Literal["a", "b", 3] = "a"
    ints: list[int] = field(default_factory=lambda: [1, 2])
    names: Optional[list[str]] = None
    tup: list[int] = (1, 2)  # a plain default on a list field parses as None in the reference


@dataclass
class Required:
    path: str
    req_mode: Literal["x", "y"]
    req_list: list[float]
    req_maybe: Optional[bool]  # no default, yet not required there: it parses as None
    factory_color: Color = field(default_factory=lambda: Color.BLUE)  # required there: choices ignore factories


@dataclass
class TwoTypes:
    number: Union[int, float] = 1


def outcome(fn, *libraries):
    """fn(library) for the reference's and tuneforge's parser (or the libraries given): the result, or the
    exception's class (the exit code for an argparse error)."""
    results = []
    for library in libraries or PARSERS:
        try:
            results.append(fn(library))
        except SystemExit as e:
            results.append(("SystemExit", e.code))
        except Exception as e:  # noqa: BLE001 (the class is what is compared)
            results.append(type(e))
    return results


def same(ref, ours) -> bool:
    """Equal results, or tuneforge's exception a kind of the reference's (its InputError is a ValueError)."""
    if isinstance(ref, type) and isinstance(ours, type):
        return issubclass(ours, ref)
    return ours == ref


@pytest.mark.parametrize("argv", [
    ["--foo", "1"], ["--foo", "1", "--maybe"], ["--foo", "1", "--maybe", "yes", "--no_on", "--off"],
    ["--foo", "1", "--on", "false", "--off", "0"], ["--foo", "1", "--no-on"], ["--foo", "1", "--maybe", "perhaps"],
    ["--foo", "1", "--color", "blue", "--mode", "3"], ["--foo", "1", "--color", "green"], ["--foo", "1", "--mode", "c"],
    ["--foo", "1", "--ints", "3", "4", "--names", "a", "b", "--tup", "5"], ["--foo", "1", "--ints"],
    ["--foo", "1", "-n", "y", "--bar", "2"], ["--foo", "1", "--nm", "z", "--opt-int", "7"], ["--bar", "2"],
    ["--foo", "x"], ["--foo", "1", "--stray", "v"],
])
def test_command_lines_parse_as_the_reference(argv):
    ref, ours = outcome(lambda p: p(Basic).parse_args_into_dataclasses(argv, look_for_args_file=False))
    assert same(ref, ours)
    if argv == ["--foo", "1", "--maybe"]:
        assert ours == ("SystemExit", 2)  # Optional[bool] = None takes no bare flag


@pytest.mark.parametrize("argv", [
    ["--path", "p", "--req_mode", "x", "--req_list", "1.5", "--factory_color", "red"],
    ["--path", "p", "--req_mode", "x", "--req_list", "1.5"],
    ["--path", "p", "--req_list", "1", "--req_mode", "x", "--factory_color", "blue", "--req_maybe", "f"],
    ["--req_mode", "y", "--req_list", "2", "--factory_color", "red"],
])
def test_required_fields_as_the_reference(argv):
    ref, ours = outcome(lambda p: p(Required).parse_args_into_dataclasses(argv, look_for_args_file=False))
    assert same(ref, ours)


def test_types_and_help_as_the_reference():
    ref, ours = outcome(lambda p: p(TwoTypes))
    assert ref is ValueError and same(ref, ours)
    helps = [p([Basic, Required]).format_help().split("\n", 1)[1] for p in PARSERS]
    assert helps[1] == helps[0] and "the name" in helps[1]
    ref_field, our_field = (m.HfArg(aliases="-q", help="h", default=3) for m in (ref_argparser, tf_argparser))
    assert (our_field.metadata, our_field.default) == (ref_field.metadata, ref_field.default)


def test_remaining_strings_and_extra_namespace():
    def parse(parser_cls):
        parser = parser_cls(Basic)
        parser.add_argument("--extra", type=int, default=3)
        *outputs, rest = parser.parse_args_into_dataclasses(["--foo", "2", "--zap", "--extra", "4"],
                                                            return_remaining_strings=True, look_for_args_file=False)
        return outputs[0], vars(outputs[1]), rest
    ref, ours = outcome(parse)
    assert ours == ref == (Basic(foo=2, tup=None), {"extra": 4}, ["--zap"])


def test_args_files_as_the_reference(tmp_path, monkeypatch):
    (tmp_path / "script.args").write_text("--foo 2 --bar 1.5 --name beside")
    (tmp_path / "named.args").write_text("--foo 3 --name named")
    (tmp_path / "a.args").write_text("--foo 4 --bar 4.5")
    (tmp_path / "b.args").write_text("--foo 5")
    monkeypatch.setattr(sys, "argv", [str(tmp_path / "script.py"), "--bar", "9"])
    calls = [dict(), dict(args=["--bar", "3"]), dict(args=["--bar", "3"], look_for_args_file=False),
             dict(args=[], args_filename=str(tmp_path / "named.args")),
             dict(args=["--cfg", str(tmp_path / "a.args"), "--cfg", str(tmp_path / "b.args")], args_file_flag="--cfg"),
             dict(args=["--cfg", str(tmp_path / "a.args"), "--foo", "6"], args_file_flag="--cfg",
                  look_for_args_file=False)]
    for kwargs in calls:
        ref, ours = outcome(lambda p: p(Basic).parse_args_into_dataclasses(**kwargs))
        assert same(ref, ours), kwargs
    assert ours[0].foo == 6 and ours[0].bar == 4.5  # the command line wins over the flag's file


def test_dicts_and_files_as_the_reference(tmp_path):
    values = {"foo": "7", "maybe": True, "color": "blue", "ints": [9]}
    (tmp_path / "a.json").write_text('{"foo": 7, "names": ["q"], "path": "p", "req_mode": "x", "req_list": [1.0],'
                                     ' "req_maybe": null}')
    (tmp_path / "a.yaml").write_text("foo: 7\nbar: 2.5\nextra_key: 1\n")
    cases = [lambda p: p(Basic).parse_dict(values), lambda p: p(Basic).parse_dict({**values, "nope": 1}),
             lambda p: p(Basic).parse_dict({**values, "nope": 1}, allow_extra_keys=True),
             lambda p: p([Basic, Required]).parse_json_file(tmp_path / "a.json"),
             lambda p: p(Basic).parse_json_file(str(tmp_path / "a.json")),
             lambda p: p(Basic).parse_yaml_file(tmp_path / "a.yaml"),
             lambda p: p(Basic).parse_yaml_file(tmp_path / "a.yaml", allow_extra_keys=True)]
    results = [outcome(case) for case in cases]
    assert all(same(ref, ours) for ref, ours in results)
    # dict values are not converted; extra keys fail
    assert results[0][1][0].foo == "7" and issubclass(results[1][1], ValueError)


@pytest.mark.parametrize("argv", [
    ["--output_dir", "o", "--disable_tqdm"],
    ["--output_dir", "o", "--disable_tqdm", "true", "--no_remove_unused_columns", "--learning_rate", "1e-4",
     "--do_train", "--greater_is_better", "no", "--per_device_train_batch_size", "4"],
])
def test_training_arguments_flags_as_the_reference(argv):
    """Each library's TrainingArguments through its own parser, as a script's command line takes them."""
    names = ("disable_tqdm", "remove_unused_columns", "learning_rate", "do_train", "greater_is_better",
             "per_device_train_batch_size")

    def parse(library):
        (args,) = library.HfArgumentParser(library.TrainingArguments).parse_args_into_dataclasses(
            argv, look_for_args_file=False)
        return {name: getattr(args, name) for name in names}
    ref, ours = outcome(parse, transformers, tuneforge)
    assert ours == ref


LOGGERS = ((ref_logging, logging.getLogger("transformers")), (tf_logging, logging.getLogger("tuneforge")))


@pytest.fixture
def loggers(monkeypatch):
    """Both libraries' loggers unconfigured, with no verbosity variables, and put back afterwards."""
    for name in ("TUNEFORGE_VERBOSITY", "TRANSFORMERS_VERBOSITY", "CI", "TUNEFORGE_NO_ADVISORY_WARNINGS",
                 "TRANSFORMERS_NO_ADVISORY_WARNINGS"):
        monkeypatch.delenv(name, raising=False)
    saved = [(lib, lib._default_handler, lib.is_progress_bar_enabled(), logger, logger.handlers[:], logger.level,
              logger.propagate) for lib, logger in LOGGERS]
    ref_logging._reset_library_root_logger()
    tf_logging._reset()
    yield
    for lib, handler, bars, logger, handlers, level, propagate in saved:
        lib._default_handler, logger.handlers[:], logger.propagate = handler, handlers, propagate
        logger.setLevel(level)
        (lib.enable_progress_bar if bars else lib.disable_progress_bar)()


def snapshot(lib):
    """What a call changed: verbosity, level, propagation, the default handler's presence and format."""
    logger, handler = dict(LOGGERS)[lib], lib._default_handler
    fmt = handler.formatter._fmt.replace("transformers", "LIB").replace("tuneforge", "LIB") \
        if handler is not None and handler.formatter else None
    # Only the default handler counts: a pytest plugin of the reference's hangs capture handlers on its logger.
    return lib.get_verbosity(), logger.level, logger.propagate, handler in logger.handlers, fmt


def test_logging_calls_change_the_same_state(loggers):
    steps = ["get_verbosity", "set_verbosity_info", "set_verbosity_debug", "set_verbosity_error",
             "set_verbosity_warning", "disable_default_handler", "enable_explicit_format", "enable_default_handler",
             "enable_propagation", "disable_propagation", "enable_explicit_format", "reset_format"]
    seen = {}
    for step in steps:
        states = []
        for lib in (ref_logging, tf_logging):
            getattr(lib, step)()
            states.append(snapshot(lib))
        assert states[1] == states[0], step
        seen[step] = states[1]
    assert seen["get_verbosity"] == (logging.WARNING, logging.WARNING, False, True, "[LIB] %(message)s")
    assert seen["set_verbosity_info"][0] == logging.INFO and seen["set_verbosity_error"][0] == logging.ERROR
    assert seen["disable_default_handler"][3] is False and seen["enable_propagation"][2] is True
    assert seen["enable_explicit_format"][4].startswith("[%(levelname)s|") and seen["reset_format"][4] is None


def collect(lib) -> tuple[logging.Handler, list]:
    """A handler added to the library's logger the library's way, and the records it receives."""
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    lib.add_handler(handler)
    return handler, records


def test_handlers_see_the_verbosity(loggers):
    for lib, logger in LOGGERS:
        handler, records = collect(lib)
        lib.set_verbosity_error()
        child = lib.get_logger(f"{logger.name}.child")
        child.warning("hidden")
        child.error("shown")
        lib.set_verbosity_debug()
        child.debug("shown too")
        lib.remove_handler(handler)
        child.error("after removal")
        assert [r.getMessage() for r in records] == ["shown", "shown too"], logger.name
        with pytest.raises(AssertionError):
            lib.remove_handler(handler)


@pytest.mark.parametrize("env, level, explicit", [
    ({"TRANSFORMERS_VERBOSITY": "info"}, logging.INFO, False),
    ({"TRANSFORMERS_VERBOSITY": "typo"}, logging.WARNING, False),  # warned about, not raised
    ({"TRANSFORMERS_VERBOSITY": "detail"}, logging.DEBUG, True), ({"CI": "1"}, logging.WARNING, False),
])
def test_verbosity_variable(loggers, monkeypatch, env, level, explicit):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert snapshot(tf_logging) == snapshot(ref_logging)
    assert tf_logging.get_verbosity() == level
    assert ("%(lineno)s" in tf_logging._default_handler.formatter._fmt) is explicit
    assert logging.getLogger("tuneforge").propagate is ("CI" in env)
    tf_logging._reset()
    monkeypatch.setenv("TUNEFORGE_VERBOSITY", "error")  # tuneforge's own variable wins
    assert tf_logging.get_verbosity() == logging.ERROR


def test_once_and_advice(loggers, monkeypatch):
    assert logging.Logger.warning_once in (ref_logging.warning_once, tf_logging.warning_once)
    for lib, logger in LOGGERS:
        _, records = collect(lib)
        name = logger.name
        lib.set_verbosity_info()
        child = lib.get_logger(f"{name}.once")
        for _ in range(2):
            lib.warning_once(child, f"{name} warned once")
            lib.info_once(child, f"{name} told once")
        lib.warning_advice(child, "advice")
        monkeypatch.setenv("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
        lib.warning_advice(child, "silenced advice")
        monkeypatch.delenv("TRANSFORMERS_NO_ADVISORY_WARNINGS")
        assert [r.getMessage() for r in records] == [f"{name} warned once", f"{name} told once", "advice"], name


def test_progress_bars(loggers):
    for lib in (ref_logging, tf_logging):
        lib.disable_progress_bar()
        assert lib.is_progress_bar_enabled() is False
        bar = lib.tqdm(range(3))
        assert isinstance(bar, lib.EmptyTqdm) and list(bar) == [0, 1, 2] and bar.update(1) is None
        seen = []
        assert lib.set_tqdm_hook(lambda factory, args, kwargs: seen.append((factory, args)) or "hooked") is None
        assert lib.tqdm(range(2)) == "hooked" and seen == [(lib.EmptyTqdm, (range(2),))]
        assert lib.set_tqdm_hook(None) is not None
        lib.enable_progress_bar()
        assert lib.is_progress_bar_enabled() is True
        assert not isinstance(lib.tqdm(range(1), disable=True), lib.EmptyTqdm)


@pytest.mark.parametrize("requirement, error", [
    ("datasets>=999.0", ImportError), ("datasets>=1.0,<999", None), ("numpy", None), ("python>=99", ImportError),
    ("tuneforge_no_such_package>=1.0", importlib.metadata.PackageNotFoundError),
    ("tuneforge_no_such_package", importlib.metadata.PackageNotFoundError), ("datasets=>1.0", ValueError),
    ("datasets~=1.0", ValueError), ("datasets >= 1.0", ValueError), (">=1.0", ValueError),
])
def test_require_version_as_the_reference(requirement, error):
    raised = []
    for lib in (ref_versions, tf_versions):
        try:
            lib.require_version(requirement, "the hint")
            raised.append((None, ""))
        except Exception as e:  # noqa: BLE001 (the class and message are what is compared)
            raised.append((type(e), str(e)))
    assert raised[0][0] is error and same(raised[0][0], raised[1][0])
    assert error is None or requirement in raised[1][1]
    if error is ImportError:
        assert raised[1][1].endswith("\nthe hint") and requirement.split(">")[0] + "==" in raised[1][1]
    if error is importlib.metadata.PackageNotFoundError:
        assert "tuneforge_no_such_package" in raised[1][1]


def test_check_min_version():
    for lib_check in (ref_check_min_version, tf_utils.check_min_version):
        lib_check("4.40.0.dev0")
        with pytest.raises(InvalidVersion, match="not-a-version"):
            lib_check("not-a-version")
    with pytest.raises(ImportError, match="99.0.0"):
        ref_check_min_version("99.0.0")
    tf_utils.check_min_version("99.0.0")  # tuneforge follows the current API, so it takes any version (README)


def test_trainer_utils(tmp_path):
    for name in ("checkpoint-5", "checkpoint-12", "checkpoint-x", "checkpoint-7-old"):
        (tmp_path / name).mkdir()
    (tmp_path / "checkpoint-20").write_text("a file, not a checkpoint")
    assert tf_trainer_utils.get_last_checkpoint(tmp_path) == ref_trainer_utils.get_last_checkpoint(tmp_path) \
        == str(tmp_path / "checkpoint-12")
    (tmp_path / "empty").mkdir()
    assert tf_trainer_utils.get_last_checkpoint(tmp_path / "empty") is ref_trainer_utils.get_last_checkpoint(
        tmp_path / "empty") is None
    assert [tf_trainer_utils.is_main_process(r) for r in (-1, 0, 1, 3)] == \
        [ref_trainer_utils.is_main_process(r) for r in (-1, 0, 1, 3)] == [True, True, False, False]
