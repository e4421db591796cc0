"""HfArgumentParser: the reference's dataclasses-to-argparse bridge, so example scripts that declare their
arguments as dataclasses (ModelArguments, DataTrainingArguments, TrainingArguments) parse them unchanged, from the
command line, a dict, a JSON file or a YAML file.

Each field becomes an argparse argument by the reference's rules, quirks included, because a script's command
lines must parse to the same values (or fail the same way) under either library. Its errors are InputErrors,
ValueErrors as the reference's are."""
from __future__ import annotations

import dataclasses
import json
import sys
import types
from argparse import ArgumentDefaultsHelpFormatter, ArgumentParser, ArgumentTypeError
from collections.abc import Callable, Iterable
from enum import Enum
from inspect import isclass
from pathlib import Path
from typing import Any, Literal, NewType, Union, get_type_hints

from .errors import InputError

DataClass = NewType("DataClass", Any)
DataClassType = NewType("DataClassType", Any)


def string_to_bool(v):
    if isinstance(v, bool):
        return v
    if v.lower() in ("yes", "true", "t", "y", "1"):
        return True
    if v.lower() in ("no", "false", "f", "n", "0"):
        return False
    raise ArgumentTypeError(f"Truthy value expected: got {v} but expected one of yes/no, true/false, t/f, y/n, 1/0 "
                            "(case insensitive).")


def make_choice_type_function(choices) -> Callable[[str], Any]:
    """Command-line text -> the choice it spells, so choices that are not strings (Literal[1, 2]) compare equal."""
    str_to_choice = {str(choice): choice for choice in choices}
    return lambda arg: str_to_choice.get(arg, arg)


def HfArg(*, aliases: str | list[str] | None = None, help: str | None = None,  # noqa: N802, A002 (reference's)
          default: Any = dataclasses.MISSING, default_factory: Callable[[], Any] = dataclasses.MISSING,
          metadata: dict | None = None, **kwargs) -> dataclasses.Field:
    """dataclasses.field with `aliases=` and `help=` as keywords instead of metadata entries."""
    metadata = {} if metadata is None else metadata
    if aliases is not None:
        metadata["aliases"] = aliases
    if help is not None:
        metadata["help"] = help
    return dataclasses.field(metadata=metadata, default=default, default_factory=default_factory, **kwargs)


def _is_bool(tp) -> bool:
    # Optional[bool] stays a union (the narrowing below skips it) and compares equal to `bool | None`.
    return tp is bool or tp == bool | None


def _narrow(name: str, tp):
    """The one argparse type a union field gets, as the reference picks it: Optional[X] -> X except Optional[bool];
    a union with str and no None -> its first member unless the second is str; with None -> its second member
    unless that is None."""
    origin = getattr(tp, "__origin__", tp)
    if not (origin is Union or isinstance(origin, types.UnionType)):
        return tp
    members = tp.__args__
    if str not in members and (len(members) != 2 or type(None) not in members):
        raise InputError(f"Only `Union[X, NoneType]` (i.e., `Optional[X]`) is allowed for `Union` because the "
                         f"argument parser only supports one type per argument. Problem encountered in field "
                         f"'{name}'.")
    if type(None) not in members:
        return members[0] if members[1] is str else members[1]
    if bool not in members:
        # The reference tests isinstance(None, members[1]), which fails on a generic there (str | list[str] | None).
        return members[0] if members[1] is type(None) else members[1]
    return tp


class HfArgumentParser(ArgumentParser):
    """An ArgumentParser whose arguments are the fields of the given dataclasses: `--name value` for every field
    (and `--name-with-dashes`), `--flag [value]` plus `--no_flag` for booleans defaulting to True, `nargs="+"` for
    lists, choices for Literal and Enum types; a field's metadata (help=, choices=, aliases=, ...) goes to
    add_argument. A dataclass's `_argument_group_name` puts its fields in an argument group."""

    dataclass_types: Iterable[DataClassType]

    def __init__(self, dataclass_types=None, **kwargs):
        if dataclass_types is None:
            dataclass_types = []
        elif not isinstance(dataclass_types, Iterable):
            dataclass_types = [dataclass_types]
        kwargs.setdefault("formatter_class", ArgumentDefaultsHelpFormatter)  # --help shows the defaults
        super().__init__(**kwargs)
        if dataclasses.is_dataclass(dataclass_types):
            dataclass_types = [dataclass_types]
        self.dataclass_types = list(dataclass_types)
        for dtype in self.dataclass_types:
            self._add_dataclass_arguments(dtype)

    def _add_dataclass_arguments(self, dtype) -> None:
        parser = self.add_argument_group(dtype._argument_group_name) if hasattr(dtype, "_argument_group_name") \
            else self
        try:
            hints = get_type_hints(dtype)
        except NameError:
            raise RuntimeError(f"Type resolution failed for {dtype}. Try declaring the class in global scope or "
                               "removing line of `from __future__ import annotations` which opts in Postponed "
                               "Evaluation of Annotations (PEP 563)") from None
        for field in dataclasses.fields(dtype):
            if field.init:
                self._parse_dataclass_field(parser, field, hints[field.name])

    @staticmethod
    def _parse_dataclass_field(parser, field: dataclasses.Field, tp) -> None:
        options = [f"--{field.name}"] + ([f"--{field.name.replace('_', '-')}"] if "_" in field.name else [])
        kwargs = dict(field.metadata)
        aliases = kwargs.pop("aliases", [])
        aliases = [aliases] if isinstance(aliases, str) else aliases
        no_kwargs = dict(kwargs)  # the --no_x flag takes the metadata, not what is derived from the type below
        tp = _narrow(field.name, tp)
        origin = getattr(tp, "__origin__", tp)
        has_default = field.default is not dataclasses.MISSING
        has_factory = field.default_factory is not dataclasses.MISSING
        if origin is Literal or (isinstance(tp, type) and issubclass(tp, Enum)):
            kwargs["choices"] = tp.__args__ if origin is Literal else [x.value for x in tp]
            kwargs["type"] = make_choice_type_function(kwargs["choices"])
            if has_default:
                kwargs["default"] = field.default
            else:
                kwargs["required"] = True  # as in the reference, even with a default_factory
        elif _is_bool(tp):
            kwargs["type"] = string_to_bool  # argparse's type=bool would make "False" true
            # `--flag` alone means True, except for Optional[bool] = None, which needs a value there too.
            if tp is bool or (field.default is not None and has_default):
                kwargs.update(default=field.default if has_default else False, nargs="?", const=True)
        elif isclass(origin) and issubclass(origin, list):
            kwargs.update(type=tp.__args__[0], nargs="+")
            # Only a default_factory reaches argparse: a plain default (None, a tuple) parses as None, as there.
            if has_factory:
                kwargs["default"] = field.default_factory()
            elif not has_default:
                kwargs["required"] = True
        else:
            kwargs["type"] = tp
            if has_default:
                kwargs["default"] = field.default
            elif has_factory:
                kwargs["default"] = field.default_factory()
            else:
                kwargs["required"] = True
        parser.add_argument(*options, *aliases, **kwargs)
        # Added after the field's own flag: argparse takes a shared dest's default from the first action.
        if field.default is True and _is_bool(tp):
            parser.add_argument(f"--no_{field.name}", f"--no-{field.name.replace('_', '-')}", action="store_false",
                                dest=field.name, **{**no_kwargs, "default": False})

    def parse_args_into_dataclasses(self, args=None, return_remaining_strings: bool = False,
                                    look_for_args_file: bool = True, args_filename=None, args_file_flag=None):
        """The dataclass instances, in the order given, from the command line (sys.argv[1:] by default), then a
        namespace of any arguments added with add_argument, then (with return_remaining_strings) the unparsed
        strings. Like the reference, a file next to the script with the suffix .args (or args_filename), then the
        files named by args_file_flag, add their whitespace-separated arguments first, so the command line wins."""
        if args_file_flag or args_filename or (look_for_args_file and len(sys.argv)):
            files = []
            if args_filename:
                files.append(Path(args_filename))
            elif look_for_args_file and len(sys.argv):
                files.append(Path(sys.argv[0]).with_suffix(".args"))
            if args_file_flag:
                flag_parser = ArgumentParser()
                flag_parser.add_argument(args_file_flag, type=str, action="append")
                cfg, args = flag_parser.parse_known_args(args=args)
                files.extend(Path(p) for p in (vars(cfg).get(args_file_flag.lstrip("-")) or []))
            file_args = [a for f in files if f.exists() for a in f.read_text().split()]
            args = file_args + (args if args is not None else sys.argv[1:])
        namespace, remaining = self.parse_known_args(args=args)
        outputs = []
        for dtype in self.dataclass_types:
            names = {f.name for f in dataclasses.fields(dtype) if f.init}
            values = {k: v for k, v in vars(namespace).items() if k in names}
            for k in names:
                delattr(namespace, k)
            outputs.append(dtype(**values))
        if len(vars(namespace)) > 0:
            outputs.append(namespace)
        if return_remaining_strings:
            return (*outputs, remaining)
        if remaining:
            raise InputError(f"Some specified arguments are not used by the HfArgumentParser: {remaining}")
        return tuple(outputs)

    def parse_dict(self, args: dict[str, Any], allow_extra_keys: bool = False) -> tuple:
        """The dataclass instances from a dict of field values (argparse plays no part: values are not converted)."""
        unused = set(args)
        outputs = []
        for dtype in self.dataclass_types:
            names = {f.name for f in dataclasses.fields(dtype) if f.init}
            outputs.append(dtype(**{k: v for k, v in args.items() if k in names}))
            unused -= names
        if not allow_extra_keys and unused:
            raise InputError(f"Some keys are not used by the HfArgumentParser: {sorted(unused)}")
        return tuple(outputs)

    def parse_json_file(self, json_file, allow_extra_keys: bool = False) -> tuple:
        with open(Path(json_file), encoding="utf-8") as f:
            return self.parse_dict(json.load(f), allow_extra_keys=allow_extra_keys)

    def parse_yaml_file(self, yaml_file, allow_extra_keys: bool = False) -> tuple:
        import yaml  # only YAML users need PyYAML
        return self.parse_dict(yaml.safe_load(Path(yaml_file).read_text(encoding="utf-8")),
                               allow_extra_keys=allow_extra_keys)
