"""Options dataclass → Typer parameters, so each option is declared once.

``toolchain.core.options`` gives every field its help, range and choices; here
those fields become ``Annotated[type, typer.Option(...)]`` parameters of a
command, and the values the user typed become the dataclass again, whole,
before the command's body runs. Typer reads a command's parameters with
``inspect.signature`` and ``typing.get_type_hints``, so the wrapper made here
carries a ``__signature__`` and ``__annotations__`` of real types (no strings
that Typer would have to evaluate in this module's namespace).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import typing
from pathlib import Path
from typing import Annotated, Any, Callable, Dict, List, Literal, Optional, Type, TypeVar

import typer

from edge import atomic
from edge.errors import BadInput

Command = TypeVar("Command", bound=Callable[..., Any])


def cli_fields(cls: type) -> List[dataclasses.Field]:
    """The fields of ``cls`` that are command-line options, in declaration order."""
    return [f for f in dataclasses.fields(cls) if f.metadata.get("cli", False)]


def option_name(field: dataclasses.Field) -> str:
    """``--image-size`` for ``image_size``, or the field's own ``flag``."""
    return field.metadata.get("flag") or "--" + field.name.replace("_", "-")


def _optional_inner(annotation: Any) -> Optional[Any]:
    """``X`` for ``Optional[X]``, else None."""
    if typing.get_origin(annotation) is typing.Union:
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(annotation)) == 2:
            return args[0]
    return None


def _cli_type(field: dataclasses.Field, annotation: Any) -> tuple:
    """(the type Typer parses, the default it shows) for one field."""
    meta = field.metadata
    inner = _optional_inner(annotation)
    optional = inner is not None
    base = inner if optional else annotation
    default = field.default
    if default is dataclasses.MISSING:  # a required option
        default = inspect.Parameter.empty
    if typing.get_origin(base) is tuple:  # a repeatable option: Typer takes lists
        item = Path if meta.get("path") else typing.get_args(base)[0]
        return Optional[List[item]], list(default) if isinstance(
            default, tuple
        ) and default else None
    if meta.get("choices"):
        base = Literal[meta["choices"]]  # listed as <a|b|c> in --help
    elif meta.get("path"):
        base = Path
        default = Path(default) if isinstance(default, str) else default
    return (Optional[base] if optional else base), default


def option_parameters(cls: type) -> List[inspect.Parameter]:
    """One keyword-only ``inspect.Parameter`` per CLI field of ``cls``."""
    hints = typing.get_type_hints(cls)
    parameters = []
    for field in cli_fields(cls):
        meta = field.metadata
        annotation, default = _cli_type(field, hints[field.name])
        declared = (meta["flag"],) if meta.get("flag") else ()
        typer_option = typer.Option(*declared, help=meta["help"], min=meta["min"], max=meta["max"])
        parameters.append(
            inspect.Parameter(
                field.name,
                inspect.Parameter.KEYWORD_ONLY,
                default=default,
                annotation=Annotated[annotation, typer_option],
            )
        )
    return parameters


def build_options(cls: Type[Any], values: Dict[str, Any]) -> Any:
    """The dataclass from what Typer parsed: paths back to ``str``, lists to tuples
    (the dataclass is written to JSON and compared with earlier runs)."""
    hints = typing.get_type_hints(cls)
    given = {}
    for field in cli_fields(cls):
        value = values[field.name]
        annotation = _optional_inner(hints[field.name]) or hints[field.name]
        if typing.get_origin(annotation) is tuple:
            value = tuple(str(v) if isinstance(v, Path) else v for v in value or ())
        elif isinstance(value, Path):
            value = str(value)
        given[field.name] = value
    return cls(**given)


def resolved_signature(command: Command) -> inspect.Signature:
    """The command's signature with string annotations evaluated (``Annotated`` kept):
    ``inspect.signature(eval_str=True)`` does this from Python 3.10 only, and the
    device side still supports 3.9."""
    signature = inspect.signature(command)
    hints = typing.get_type_hints(command, include_extras=True)
    return signature.replace(
        parameters=[
            p.replace(annotation=hints.get(p.name, p.annotation))
            for p in signature.parameters.values()
        ],
        return_annotation=hints.get("return", signature.return_annotation),
    )


def takes_options(cls: type, parameter: str = "options") -> Callable[[Command], Command]:
    """Decorate a command whose ``parameter`` is an instance of ``cls``: on the command
    line it becomes one option per CLI field of ``cls``, in the field order, placed where
    ``parameter`` stands among the command's own arguments and options."""

    def decorate(command: Command) -> Command:
        own = resolved_signature(command)
        if parameter not in own.parameters:
            raise TypeError(f"{command.__name__} has no parameter {parameter!r}")
        fields = option_parameters(cls)
        names = {p.name for p in fields}
        parameters = []
        for param in own.parameters.values():
            if param.name == parameter:
                parameters.extend(fields)
            elif param.name in names:
                raise TypeError(
                    f"{command.__name__}: {param.name!r} is also a {cls.__name__} field"
                )
            else:
                parameters.append(param.replace(kind=inspect.Parameter.KEYWORD_ONLY))

        @functools.wraps(command)
        def wrapper(**values: Any) -> Any:
            options = build_options(cls, {name: values.pop(name) for name in names})
            return command(**values, **{parameter: options})

        del wrapper.__wrapped__  # Typer must read the signature below, not the command's
        wrapper.__signature__ = inspect.Signature(
            parameters, return_annotation=own.return_annotation
        )
        wrapper.__annotations__ = {p.name: p.annotation for p in parameters}
        if own.return_annotation is not inspect.Signature.empty:
            wrapper.__annotations__["return"] = own.return_annotation
        return typing.cast(Command, wrapper)

    return decorate


def check_json_output(path: Path, inputs: List[Path]) -> None:
    """A report path must be a new or replaceable .json file, never one of the inputs."""
    if path.suffix.lower() != ".json":
        raise BadInput(f"--json {path}: give a file name ending in .json")
    if path.is_dir():
        raise BadInput(f"--json {path}: is a folder; give a file name such as {path}/bench.json")
    if not path.parent.is_dir():
        raise BadInput(f"--json {path}: folder {path.parent} does not exist")
    too_long = atomic.name_too_long(path)
    if too_long:
        raise BadInput(f"--json: {too_long}")
    for given in inputs:
        if path.exists() and given.exists() and path.resolve() == given.resolve():
            raise BadInput(f"--json {path} is an input of this command; choose another name")
