"""HfArgumentParser: the reference's dataclasses-to-argparse bridge, so example scripts that declare their
arguments as dataclasses (ModelArguments, DataTrainingArguments, TrainingArguments) parse them unchanged, from the
command line, a dict, a JSON file or a YAML file."""
from __future__ import annotations

import dataclasses
import json
import sys
import types
from argparse import ArgumentParser, ArgumentTypeError
from enum import Enum
from pathlib import Path
from typing import Any, Literal, Union, get_type_hints

from .errors import InputError


def string_to_bool(v):
    if isinstance(v, bool):
        return v
    if v.lower() in ("yes", "true", "t", "y", "1"):
        return True
    if v.lower() in ("no", "false", "f", "n", "0"):
        return False
    raise ArgumentTypeError(f"Truthy value expected: got {v} but expected one of yes/no, true/false, t/f, y/n, 1/0 "
                            "(case insensitive).")


def _choice_type(choices):
    by_text = {str(c): c for c in choices}
    return lambda arg: by_text.get(arg, arg)


def _narrow(name: str, tp):
    """One argparse type per field, as the reference picks it: Optional[X] -> X; a union with str -> the other
    member when there are two, else str."""
    origin = getattr(tp, "__origin__", tp)
    if origin is Union or isinstance(tp, types.UnionType):
        members = tp.__args__
        if str not in members and (len(members) != 2 or type(None) not in members):
            raise InputError(f"Only `Union[X, NoneType]` (i.e., `Optional[X]`) is allowed for `Union` because the "
                             f"argument parser only supports one type per argument. Problem encountered in field "
                             f"'{name}'.")
        real = [m for m in members if m is not type(None)]
        if len(real) == 1:
            tp = real[0]
        elif len(real) == 2 and type(None) not in members:
            tp = real[0] if real[1] is str else real[1]  # e.g. report_to: str | list[str] -> list[str]
        else:
            tp = str
    return tp


class HfArgumentParser(ArgumentParser):
    """An ArgumentParser whose arguments are the fields of the given dataclasses: `--name value` for every field
    (and `--name-with-dashes`), `--flag` / `--no_flag` for booleans, `nargs="+"` for lists, choices for Literal and
    Enum types; a field's metadata (help=, choices=, aliases=, ...) goes to add_argument."""

    def __init__(self, dataclass_types=None, **kwargs):
        if dataclass_types is None:
            dataclass_types = []
        elif not isinstance(dataclass_types, (list, tuple)):
            dataclass_types = [dataclass_types]
        kwargs.setdefault("formatter_class", __import__("argparse").ArgumentDefaultsHelpFormatter)
        super().__init__(**kwargs)
        if dataclasses.is_dataclass(dataclass_types):
            dataclass_types = [dataclass_types]
        self.dataclass_types = list(dataclass_types)
        for dtype in self.dataclass_types:
            self._add_dataclass_arguments(dtype)

    def _add_dataclass_arguments(self, dtype) -> None:
        parser = self.add_argument_group(dtype._argument_group_name) if hasattr(dtype, "_argument_group_name") \
            else self
        hints = get_type_hints(dtype)
        for field in dataclasses.fields(dtype):
            if field.init:
                self._add_field(parser, field, hints[field.name])

    @staticmethod
    def _add_field(parser, field: dataclasses.Field, tp) -> None:
        options = [f"--{field.name}"] + ([f"--{field.name.replace('_', '-')}"] if "_" in field.name else [])
        kwargs = dict(field.metadata)
        aliases = kwargs.pop("aliases", [])
        aliases = [aliases] if isinstance(aliases, str) else list(aliases)
        tp = _narrow(field.name, tp)
        origin = getattr(tp, "__origin__", tp)
        has_default = field.default is not dataclasses.MISSING
        default = field.default if has_default else (
            field.default_factory() if field.default_factory is not dataclasses.MISSING else dataclasses.MISSING)
        is_bool = tp is bool or tp == (bool | None)
        if origin is Literal or (isinstance(tp, type) and issubclass(tp, Enum)):
            kwargs["choices"] = list(tp.__args__) if origin is Literal else [x.value for x in tp]
            kwargs["type"] = _choice_type(kwargs["choices"])
        elif is_bool:
            kwargs["type"] = string_to_bool
            if tp is bool or (field.default is not None and has_default):
                default = False if not has_default else field.default
                kwargs.update(nargs="?", const=True)
        elif isinstance(origin, type) and issubclass(origin, list):
            kwargs.update(type=tp.__args__[0] if getattr(tp, "__args__", None) else str, nargs="+")
        elif isinstance(origin, type) and issubclass(origin, dict):
            kwargs["type"] = json.loads
        elif tp in (int, float, str) or (isinstance(tp, type) and tp.__module__ == "pathlib"):
            kwargs["type"] = tp
        else:
            kwargs["type"] = str  # types argparse cannot build from a string
        if default is dataclasses.MISSING:
            kwargs["required"] = True
        else:
            kwargs["default"] = default
        parser.add_argument(*options, *aliases, **kwargs)
        if is_bool and field.default is True:
            parser.add_argument(f"--no_{field.name}", f"--no-{field.name.replace('_', '-')}", action="store_false",
                                dest=field.name, **{k: v for k, v in field.metadata.items() if k != "aliases"})

    def parse_args_into_dataclasses(self, args=None, return_remaining_strings: bool = False,
                                    look_for_args_file: bool = True, args_filename=None, args_file_flag=None):
        """The dataclass instances, in the order given, from the command line (sys.argv[1:] by default). Like the
        reference, a file next to the script with the suffix .args (or args_filename, or the files named by
        args_file_flag) adds its whitespace-separated arguments first, so the command line wins."""
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
            for k in values:
                delattr(namespace, k)
            outputs.append(dtype(**values))
        if len(vars(namespace)) > 0:
            outputs.append(namespace)  # arguments added with add_argument, as the reference returns them
        if return_remaining_strings:
            return (*outputs, remaining)
        if remaining:
            raise InputError(f"Some specified arguments are not used by the HfArgumentParser: {remaining}")
        return tuple(outputs)

    def parse_dict(self, args: dict[str, Any], allow_extra_keys: bool = False) -> tuple:
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
        import yaml
        return self.parse_dict(yaml.safe_load(Path(yaml_file).read_text(encoding="utf-8")),
                               allow_extra_keys=allow_extra_keys)
