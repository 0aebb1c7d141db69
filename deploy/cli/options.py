"""Command-line flags derived from a component's config, so each default is written once.

For a field `warmup_steps: int = 100` with metadata `{"help": "..."}` this adds
`--warmup-steps` (type int, default 100); `metadata["flag"]` renames the flag
(`ckpt_dir` -> `--ckpt`), `metadata["choices"]` or a `Literal[...]` type gives choices.
A bool field that defaults to False becomes a switch (`--resume`); one that defaults to
True becomes a negative switch named by its flag (`progress` -> `--no-progress`), whose
help is `metadata["switch_help"]` (what giving the switch does; the field's `help`
says what the True value means, which would read backwards on `--no-progress`). A
field whose default is None and that the config requires is passed with `required`.

`add_settings_arguments` does the same for a pydantic settings model (the service's
`ServiceSettings`): one flag per field, its help the field's description; a flag not
given stays None, so the value comes from the model (its default, or its NAVIT_*
environment variable); `json_schema_extra={"flag": ...}` renames a flag.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from typing import TYPE_CHECKING, Any, Literal, get_args, get_origin

if TYPE_CHECKING:
    from pydantic import BaseModel


def flag_name(field: dataclasses.Field) -> str:
    return field.metadata.get("flag", "--" + field.name.replace("_", "-"))


def _value_type(hint: Any) -> tuple[Any, tuple[Any, ...] | None]:
    """(converter, choices) for a field's type, looking through `X | None`."""
    if get_origin(hint) in (typing.Union, types.UnionType):
        hint = next(arg for arg in get_args(hint) if arg is not type(None))
    if get_origin(hint) is Literal:
        choices = get_args(hint)
        return type(choices[0]), choices
    return hint, None


def add_dataclass_arguments(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    config_type: type,
    defaults: dict[str, Any] | None = None,
    required: tuple[str, ...] = (),
    exclude: tuple[str, ...] = (),
) -> None:
    """Add one flag per field of `config_type`; `defaults` overrides the dataclass's own."""
    hints = typing.get_type_hints(config_type)
    overrides = defaults or {}
    for field in dataclasses.fields(config_type):
        if field.name in exclude:
            continue
        default = overrides.get(field.name, field.default)
        help_text = field.metadata.get("help", "")
        converter, choices = _value_type(hints[field.name])
        if converter is bool:
            action = "store_false" if default else "store_true"
            if default:
                help_text = _switch_help(field)
            parser.add_argument(
                flag_name(field), dest=field.name, action=action, default=default, help=help_text
            )
            continue
        shown = "" if default is None else f" (default: {default})"
        parser.add_argument(
            flag_name(field),
            dest=field.name,
            type=converter,
            default=default,
            choices=field.metadata.get("choices", choices),
            required=field.name in required,
            help=help_text + shown,
        )


def _switch_help(field: dataclasses.Field) -> str:
    """The help of the negative switch of a bool field that defaults to True."""
    try:
        return field.metadata["switch_help"]
    except KeyError:
        raise ValueError(
            f"{field.name}: a True default becomes the switch {flag_name(field)}; give it "
            "metadata['switch_help'] saying what the switch does"
        ) from None


def dataclass_from_args(
    config_type: type, args: argparse.Namespace, exclude: tuple[str, ...] = ()
) -> Any:
    """Build `config_type` from the parsed flags (fields in `exclude` keep their default)."""
    values = {
        field.name: getattr(args, field.name)
        for field in dataclasses.fields(config_type)
        if field.name not in exclude and hasattr(args, field.name)
    }
    return config_type(**values)


def dataclass_argv(config: Any, exclude: tuple[str, ...] = ()) -> list[str]:
    """The flags that parse back into `config` under `add_dataclass_arguments(parser,
    type(config))`: one per field whose value differs from the dataclass's default.

    For `TrainConfig(source="grpc://h:1", steps=5, lr=2e-3, progress=False)`:
    `["--source=grpc://h:1", "--steps=5", "--lr=0.002", "--no-progress"]`.
    """
    argv = []
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if field.name in exclude or value == field.default:
            continue
        if isinstance(field.default, bool):
            argv.append(flag_name(field))  # the switch that flips the default
        elif value is not None:
            argv.append(f"{flag_name(field)}={value}")
    return argv


def _settings_flag(name: str, extra: Any) -> str:
    flag = extra.get("flag") if isinstance(extra, dict) else None
    return flag or "--" + name.replace("_", "-")


def add_settings_arguments(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    settings_type: type[BaseModel],
    exclude: tuple[str, ...] = (),
) -> None:
    """One flag per field of `settings_type` (see the module doc); default None each."""
    # Imported here: `navit train` (the trainer image: torch and pyarrow only) uses this
    # module's dataclass flags and must not need pydantic.
    from pydantic_core import PydanticUndefined

    for name, field in settings_type.model_fields.items():
        if name in exclude:
            continue
        converter, choices = _value_type(field.annotation)
        default = field.default if field.default is not PydanticUndefined else None
        shown = "" if default is None else f" (default: {default})"
        flag = _settings_flag(name, field.json_schema_extra)
        help_text = (field.description or name.replace("_", " ")) + shown
        if converter is bool:
            parser.add_argument(
                flag, dest=name, action="store_const", const=True, default=None, help=help_text
            )
            continue
        parser.add_argument(
            flag, dest=name, type=converter, default=None, choices=choices, help=help_text
        )


def settings_values(
    args: argparse.Namespace, settings_type: type[BaseModel], exclude: tuple[str, ...] = ()
) -> dict[str, Any]:
    """The flags of `add_settings_arguments` that were given, as settings values."""
    return {
        name: getattr(args, name)
        for name in settings_type.model_fields
        if name not in exclude and getattr(args, name, None) is not None
    }
