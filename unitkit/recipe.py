"""Recipes: TOML files that compose a UNIT run from registered components, validated before anything runs.

A recipe names every component by a table with a ``kind`` key plus that component's settings; the settings a
kind accepts are read from its factory's signature. The fixed tables (``[train]``, ``[objective]``, ...) are the
pydantic models below: they are the one place defaults are written. ``[ablations.NAME]`` tables and ``--set``
hold dotted-key overrides in the same syntax. ``base = "other.toml"`` builds a recipe on another: the recipe's
values are applied over its base's as ``--set`` values are, and its ablations join its base's. The recipes in
``unitkit/recipes/`` ship with the package, and a name stands for one: ``load_recipe("quickstart", ...)``.
"""

from __future__ import annotations

import copy
import difflib
import inspect
import json
import os
import re
import tomllib
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple

import pydantic
import tomli_w
from pydantic import AfterValidator, AliasChoices, BaseModel, ConfigDict, Field

from unitkit.errors import UsageError
from unitkit.plugins import BUILTIN_DISTRIBUTION
from unitkit.registry import KIND_LABELS, KINDS, PROVIDED_ARGUMENTS, Kind, Registries

#: Environment variable naming the folder of real datasets; recipes write it as ``${UNITKIT_DATA}``.
DATA_ENV = "UNITKIT_DATA"


class RecipeError(UsageError):
    """A mistake in a recipe or an override: the message names the file, table, key and value."""


#: The folder of the unitkit package: in a source checkout, ``pyproject.toml`` lies beside it.
PACKAGE_DIR = Path(__file__).resolve().parent


def data_root() -> Path:
    """Where real datasets live: ``$UNITKIT_DATA`` when set; else, when unitkit runs from a source checkout (a
    ``pyproject.toml`` beside the package), the ``shared/data`` folder beside the checkout; else, for an installed
    unitkit, whose package folder has no checkout around it, ``~/.cache/unitkit/data``."""
    env = os.environ.get(DATA_ENV)
    if env:
        return Path(env).expanduser()
    checkout = PACKAGE_DIR.parent
    if (checkout / "pyproject.toml").is_file():
        return checkout.parent / "shared" / "data"
    return Path.home() / ".cache" / "unitkit" / "data"


# ---------------------------------------------------------------------------------------------------------------
# The fixed schema. Every default of a run is written here (component defaults live in component signatures).

_STRICT = ConfigDict(extra="forbid", strict=True)
Positive = Annotated[int, Field(ge=1)]
NonNegative = Annotated[int, Field(ge=0)]
Weight = Annotated[float, Field(ge=0)]
Unit = Annotated[float, Field(ge=0, lt=1)]

#: The largest image side a recipe may ask for: training the reference networks on one image of this side already
#: needs the memory of a large GPU, so a larger side is a typo, better refused now than out of memory later.
MAX_IMAGE_SIZE = 4096
#: A dataset factory's ``image_size`` setting (every built-in dataset's; plugins' datasets may use it too).
ImageSize = Annotated[int, Field(ge=1, le=MAX_IMAGE_SIZE)]


def _check_folder_name(name: str) -> str:
    """``name`` if it can name one folder inside ``runs/`` (a run's, an ablation's); a ValueError if not."""
    if name in ("", ".", "..") or any(c in name for c in "/\\:") or not name.isprintable():
        raise ValueError(
            "must be one folder name inside runs/: not empty, '.' or '..', without '/', '\\', ':' or control characters"
        )
    return name


FolderName = Annotated[str, AfterValidator(_check_folder_name)]


class TrainSettings(BaseModel):
    """``[train]``: optimisation and bookkeeping. Defaults follow the reference UNIT code's configs."""

    model_config = _STRICT
    iterations: Positive = Field(1_000_000, description="generator updates in the run")
    batch_size: Positive = Field(1, description="images per domain per iteration")
    seed: int = Field(0, description="seeds weights, noise and data order")
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?|mps)$", description="auto picks CUDA when present")
    lr: Annotated[float, Field(gt=0)] = Field(1e-4, description="Adam learning rate (both optimisers)")
    beta1: Unit = Field(0.5, description="Adam β1")
    beta2: Unit = Field(0.999, description="Adam β2")
    weight_decay: Annotated[float, Field(ge=0)] = Field(1e-4, description="Adam's L2 penalty on the weights")
    lr_step: NonNegative = Field(100_000, description="multiply lr by lr_gamma every lr_step iterations; 0: constant")
    lr_gamma: Annotated[float, Field(gt=0, le=1)] = Field(0.5, description="the factor of each lr_step")
    num_workers: NonNegative = Field(0, description="data-loading worker processes")
    log_every: Positive = Field(10, description="iterations between logged losses")
    sample_every: Positive = Field(10_000, description="iterations between sample grids")
    sample_count: Annotated[int, Field(ge=1, le=64)] = Field(8, description="fixed test images per direction")
    checkpoint_every: Positive = Field(10_000, description="iterations between checkpoints")
    eval_every: NonNegative = Field(
        0,
        description="iterations between test-set evaluations (logged as eval/...; the best is reported beside "
        "the final one); 0: only at the end",
    )
    keep_checkpoints: Positive = Field(3, description="how many recent checkpoints to keep")
    deterministic: bool = Field(False, description="deterministic kernels only (bit-exact resume; slower on GPU)")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="autocast dtype; auto: bf16 (fp16 with loss scaling if unsupported) on CUDA, fp32 on CPU"
    )
    channels_last: bool | Literal["auto"] = Field("auto", description="NHWC memory layout; auto: on for CUDA")
    compile: bool = Field(False, description="torch.compile each network (slow start, faster steps)")
    on_nonfinite: Literal["stop", "skip"] = Field(
        "stop", description="a NaN/inf loss stops the run, or skips that update (checked every step) and counts it"
    )
    ema: Annotated[float, Field(ge=0, lt=1)] = Field(
        0.0,
        description="decay of an exponential moving average of encoder and generator weights, which samples, "
        "evaluation, translate and export then use (0.999: about the last 1,000 iterations); 0: off",
    )


class ObjectiveSettings(BaseModel):
    """``[objective]``: the loss weights, by readable name or by the paper's λ0..λ4, plus the loss kinds.

    Defaults are the public reference code's (gan 1, recon 10, kl 0.01, cycle 10, kl_cycle 0.01); the paper
    used λ0=10, λ1=λ3=0.1, λ2=λ4=100. A weight of 0 skips that term's computation.
    """

    model_config = ConfigDict(extra="forbid", strict=True, populate_by_name=True)
    gan: Weight = Field(1.0, validation_alias=AliasChoices("gan", "lambda0"), description="λ0, adversarial")
    kl: Weight = Field(0.01, validation_alias=AliasChoices("kl", "lambda1"), description="λ1, VAE KL")
    recon: Weight = Field(10.0, validation_alias=AliasChoices("recon", "lambda2"), description="λ2, reconstruction")
    kl_cycle: Weight = Field(0.01, validation_alias=AliasChoices("kl_cycle", "lambda3"), description="λ3, cycle KL")
    cycle: Weight = Field(10.0, validation_alias=AliasChoices("cycle", "lambda4"), description="λ4, cycle recon")
    classify: Weight = Field(
        0.0,
        description="classifier head's cross-entropy on labelled domain-A images, in the D step (domain adaptation)",
    )
    feature: Weight = Field(
        0.0, description="feature consistency: D-trunk distance between a translation and its code's reconstruction"
    )
    fake_reconstructions: bool = Field(
        False, description="reconstructions are fakes too: D rejects them and G makes them fool D (the digits code)"
    )
    gan_loss: dict[str, Any] = Field(default_factory=lambda: {"kind": "lsgan"})
    reconstruction_loss: dict[str, Any] = Field(default_factory=lambda: {"kind": "l1"})


class EvaluateSettings(BaseModel):
    """``[evaluate]``: what the evaluation at the end of a run computes beyond its cheap metrics."""

    model_config = _STRICT
    fid: bool = Field(False, description="FID and KID of the test translations against the real target test images")
    fid_images: NonNegative = Field(0, description="test images per domain for FID/KID; 0: the whole test set")
    inception: str = Field(
        "", description="TorchScript FID Inception file; empty: $UNITKIT_INCEPTION, then the unitkit[metrics] extra"
    )
    weights: Literal["ema", "raw"] = Field(
        "ema", description="what sample grids and evaluations translate with: the train.ema average (when on) or raw"
    )


class ModelSettings(BaseModel):
    """``[model]``: the six networks and how their weights are shared."""

    model_config = _STRICT
    encoder: dict[str, Any] = Field(default_factory=lambda: {"kind": "resnet"})
    generator: dict[str, Any] = Field(default_factory=lambda: {"kind": "resnet"})
    discriminator: dict[str, Any] = Field(default_factory=lambda: {"kind": "multiscale-patch"})
    sharing: dict[str, Any] = Field(default_factory=lambda: {"kind": "shared-latent"})
    share_discriminators: bool = Field(False, description="tie the two discriminators' trunks")


class RecipeSchema(BaseModel):
    """The whole recipe file."""

    model_config = _STRICT
    name: FolderName = Field(
        "",
        description="the run directory runs/NAME: one folder name, without '/', '\\' or ':'; left out: the file's name",
    )
    description: str = Field("", description="what the recipe is for, in a line, for people")
    data: dict[str, Any]
    model: ModelSettings = Field(default_factory=ModelSettings)
    objective: ObjectiveSettings = Field(default_factory=ObjectiveSettings)
    train: TrainSettings = Field(default_factory=TrainSettings)
    evaluate: EvaluateSettings = Field(default_factory=EvaluateSettings)
    loggers: list[dict[str, Any]] = Field(default_factory=lambda: [{"kind": "jsonl"}])
    ablations: dict[FolderName, dict[str, Any]] = Field(
        default_factory=dict, description="variants of the recipe: tables of dotted-key overrides, one per variant"
    )


#: Recipe path of each component table, or array of tables (``[[loggers]]``), → its kind of component.
TABLE_KINDS: dict[tuple[str, ...], Kind] = {kind.table: kind for kind in KINDS}
#: Recipe path of each component table → the registry its kind is looked up in (the ``[[loggers]]`` array aside).
COMPONENT_TABLES: dict[tuple[str, ...], str] = {kind.table: kind.name for kind in KINDS if not kind.repeated}


class Component(BaseModel):
    """A validated component table: the registered ``kind`` and its settings (defaults filled in)."""

    model_config = ConfigDict(frozen=True)
    kind: str
    settings: dict[str, Any]


class Recipe(BaseModel):
    """A validated recipe: the fixed tables as models, the component tables resolved against the registries."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)
    name: str
    description: str
    source: str
    data: Component
    encoder: Component
    generator: Component
    discriminator: Component
    sharing: Component
    share_discriminators: bool
    gan_loss: Component
    reconstruction_loss: Component
    objective: ObjectiveSettings
    train: TrainSettings
    evaluate: EvaluateSettings
    loggers: list[Component]
    resolved: dict[str, Any]
    ablation: str = ""
    #: Where the dotted keys of ``resolved`` that are not defaults got their values: a recipe file (the recipe's
    #: own or a base's), ``FILE [ablations.NAME]`` or ``--set``. Empty for a recipe read back from a run.
    origins: dict[str, str] = {}

    def to_toml(self) -> str:
        """The resolved recipe (every default filled in, ablation and overrides applied) as TOML."""
        return tomli_w.dumps(self.resolved)

    def origin_listing(self) -> str:
        """Each resolved value as a ``key = value`` line after where it came from (``default`` or an entry of
        ``origins``), padded to one width, and a tab. Without the origins the lines are the resolved recipe as TOML."""
        values = _flatten(self.resolved)
        origins = [self.origins.get(key, "default") for key in values]
        width = max(map(len, origins), default=0)
        return "".join(
            f"{origin:<{width}}\t{key} = {_toml_value(value)}\n"
            for origin, (key, value) in zip(origins, values.items(), strict=True)
        )


# ---------------------------------------------------------------------------------------------------------------
# Loading


def read_toml(path: str | Path) -> dict[str, Any]:
    """Parse a TOML file; errors name the file, line and column."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")  # tomllib refuses the BOM some Windows editors write
    except FileNotFoundError:
        raise RecipeError(f"{path}: recipe file not found") from None
    except UnicodeDecodeError as exc:
        raise RecipeError(
            f"{path}: the recipe is not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset {exc.start}); "
            "save it as UTF-8"
        ) from None
    except OSError as exc:
        raise RecipeError(f"{path}: cannot read recipe: {exc}") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise RecipeError(f"{path}: malformed TOML: {exc}") from None


#: The recipes that ship inside the package (a checkout's ``recipes/`` links here); a command names one by its
#: file's stem, ``unitkit run quickstart``.
SHIPPED_RECIPES = PACKAGE_DIR / "recipes"


def shipped_recipes() -> dict[str, Path]:
    """The shipped recipe files by name, in name order."""
    return dict(sorted((path.stem, path) for path in SHIPPED_RECIPES.glob("*.toml")))


def find_recipe(recipe: str | Path) -> Path:
    """The recipe file that ``recipe`` stands for: the path itself when there is a file there, else the shipped
    recipe of that name (``quickstart`` or ``quickstart.toml``).

    Raises:
        RecipeError: naming the closest shipped recipe and listing them all.
    """
    path = Path(recipe)
    if path.exists() and not path.is_dir():  # a folder of images named like a recipe does not hide the recipe
        return path
    shipped = shipped_recipes()
    name = path.name.removesuffix(".toml")
    if len(path.parts) == 1 and name in shipped:
        return shipped[name]
    close = difflib.get_close_matches(name, shipped, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    raise RecipeError(f"{recipe}: no such recipe file, nor a shipped recipe; {hint}shipped: {', '.join(shipped)}")


def parse_override(text: str) -> tuple[str, Any]:
    """Parse ``--set`` syntax ``dotted.key=value``; the value is a TOML value, or a bare string.

    Examples: ``train.iterations=200``, ``model.sharing.kind=none``, ``train.lr=2e-4``, ``data.root=/data/x``.
    """
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise RecipeError(f"override {text!r}: expected KEY=VALUE, e.g. train.iterations=200")
    parts = key.split(".")
    if any(not re.fullmatch(r"[A-Za-z0-9_-]+", p) for p in parts):
        raise RecipeError(f"override {text!r}: {key!r} is not a dotted key like model.encoder.width")
    raw = raw.strip()
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw  # a bare word or path: take it as a string, as a shell user expects
    return key, value


def _flatten(table: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in table.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(_flatten(value, dotted + "."))
        else:
            flat[dotted] = value
    return flat


def apply_overrides(recipe: dict[str, Any], overrides: dict[str, Any], origin: str) -> dict[str, Any]:
    """Return a copy of ``recipe`` with dotted-key ``overrides`` applied.

    Setting a component's ``kind`` to a different kind drops the old kind's settings from the base recipe
    (they belong to the old kind, the schema's default kind where the table names none). Kinds are set first, so
    the settings given beside a new kind, in any order, are kept.
    """
    result = copy.deepcopy(recipe)
    kinds_first = sorted(overrides.items(), key=lambda item: item[0].rsplit(".", 1)[-1] != "kind")
    for dotted, value in kinds_first:
        *parents, leaf = dotted.split(".")
        node = result
        for depth, part in enumerate(parents):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                where = ".".join(parents[: depth + 1])
                raise RecipeError(f"{origin}: cannot set {dotted!r}: {where!r} is a value, not a table")
            node = child
        table = tuple(parents)
        if leaf == "kind" and node.get("kind", _default_kind(table) if table in COMPONENT_TABLES else "") != value:
            node.clear()
        node[leaf] = value
    return result


def _expand(value: Any) -> Any:
    if isinstance(value, str) and "${" in value:
        return value.replace("${" + DATA_ENV + "}", str(data_root()))
    if isinstance(value, dict):
        return {k: _expand(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand(v) for v in value]
    return value


def _table_name(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc]
    return "[" + ".".join(parts) + "]" if parts else "top level"


def _nearest(key: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return f"{hint}(valid keys: {', '.join(valid) or 'none'})"


def _model_keys(model: type[BaseModel]) -> list[str]:
    keys: list[str] = []
    for name, info in model.model_fields.items():
        alias = info.validation_alias
        keys.extend(alias.choices if isinstance(alias, AliasChoices) else [name])  # type: ignore[arg-type]
    return [str(k) for k in keys]


def _describe(
    exc: pydantic.ValidationError, origin: str, prefix: tuple[str, ...], valid_for: dict[tuple[str, ...], list[str]]
) -> RecipeError:
    lines = []
    for err in exc.errors():
        loc = prefix + tuple(str(p) for p in err["loc"])
        table, key = loc[:-1], loc[-1] if loc else ""
        if err["type"] == "extra_forbidden":
            valid = valid_for.get(table, [])
            lines.append(
                f"{origin}: {_table_name(table)} unknown key {key!r} = {err['input']!r}; {_nearest(key, valid)}"
            )
        elif err["type"] == "missing":
            lines.append(f"{origin}: {_table_name(table)} missing required key {key!r}")
        else:
            lines.append(f"{origin}: {_table_name(table)} {key} = {err['input']!r}: {err['msg']}")
    return RecipeError("\n".join(lines))


def _schema_keys() -> dict[tuple[str, ...], list[str]]:
    return {
        (): _model_keys(RecipeSchema),
        ("model",): _model_keys(ModelSettings),
        ("objective",): _model_keys(ObjectiveSettings),
        ("train",): _model_keys(TrainSettings),
        ("evaluate",): _model_keys(EvaluateSettings),
    }


def settings_model(registries: Registries, registry_kind: str, kind: str) -> type[BaseModel]:
    """A pydantic model of the recipe settings a component factory takes, read from its signature."""
    entry = registries[registry_kind].get(kind)
    factory = entry.factory
    target = factory.__init__ if inspect.isclass(factory) else factory
    try:
        hints = typing.get_type_hints(target, include_extras=True)
    except Exception:  # unresolvable annotations: accept any value rather than refuse the component
        hints = {}
    fields: dict[str, Any] = {}
    for name, param in inspect.signature(factory).parameters.items():
        if name in PROVIDED_ARGUMENTS[registry_kind] or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        default = ... if param.default is param.empty else param.default
        fields[name] = (hints.get(name, Any), default)
    return pydantic.create_model(f"{registry_kind}:{kind}", __config__=_STRICT, **fields)


def _validate_component(
    registries: Registries,
    registry_kind: str,
    table: dict[str, Any],
    loc: tuple[str, ...],
    origin: str,
    default_kind: str = "",
) -> Component:
    """Validate one component table; a table without ``kind`` gets the schema's default kind, if any."""
    label = KIND_LABELS[registry_kind]
    if not isinstance(table, dict):
        raise RecipeError(f"{origin}: {_table_name(loc)} must be a table with a 'kind' key, got {table!r}")
    if "kind" not in table and default_kind:
        table = {"kind": default_kind, **table}
    if "kind" not in table:
        raise RecipeError(
            f"{origin}: {_table_name(loc)} has no 'kind'; set one of: {', '.join(registries[registry_kind].names())}"
        )
    kind = table["kind"]
    if not isinstance(kind, str) or kind not in registries[registry_kind]:
        raise RecipeError(
            f"{origin}: {_table_name(loc)} kind = {kind!r}: " + registries[registry_kind].unknown_message(kind)
        )
    settings = {k: v for k, v in table.items() if k != "kind"}
    model = settings_model(registries, registry_kind, kind)
    provided = sorted(set(settings) & PROVIDED_ARGUMENTS[registry_kind])
    if provided:
        raise RecipeError(
            f"{origin}: {_table_name(loc)} {provided[0]!r} is set by unitkit for a {label}, not by the recipe"
        )
    try:
        validated = model.model_validate(settings)
    except pydantic.ValidationError as exc:
        raise _describe(exc, origin, loc, {loc: ["kind", *model.model_fields]}) from None
    return Component(kind=kind, settings=validated.model_dump())


def _default_kind(loc: tuple[str, ...]) -> str:
    """The ``kind`` the schema gives a component table the recipe leaves out (``""`` when it has none)."""
    schema: type[BaseModel] = RecipeSchema
    for part in loc[:-1]:
        schema = schema.model_fields[part].annotation  # type: ignore[assignment]
    factory = schema.model_fields[loc[-1]].default_factory
    return factory()["kind"] if factory else ""


def _component_dict(component: Component) -> dict[str, Any]:
    return {"kind": component.kind, **component.settings}


def validate(raw: dict[str, Any], registries: Registries, origin: str = "<recipe>", ablation: str = "") -> Recipe:
    """Validate a parsed recipe dictionary (overrides already applied) against the schema and registries.

    A resolved recipe (what a run stores) names its ablation in a top-level ``ablation`` key, read back here.
    """
    raw = _expand(raw)
    if isinstance(raw.get("ablation"), str):
        raw = dict(raw)
        stored = raw.pop("ablation")
        ablation = ablation or stored
    try:
        schema = RecipeSchema.model_validate(raw)
    except pydantic.ValidationError as exc:
        raise _describe(exc, origin, (), _schema_keys()) from None

    components: dict[tuple[str, ...], Component] = {}
    for loc, registry_kind in COMPONENT_TABLES.items():
        node: Any = schema
        for part in loc:
            node = node[part] if isinstance(node, dict) else getattr(node, part)
        components[loc] = _validate_component(registries, registry_kind, node, loc, origin, _default_kind(loc))
    loggers = [
        _validate_component(registries, "loggers", table, ("loggers", str(i)), origin)
        for i, table in enumerate(schema.loggers)
    ]

    resolved = schema.model_dump(mode="json", exclude={"ablations"})
    for loc, component in components.items():
        node = resolved
        for part in loc[:-1]:
            node = node[part]
        node[loc[-1]] = _component_dict(component)
    resolved["loggers"] = [_component_dict(c) for c in loggers]
    if ablation:
        resolved["ablation"] = ablation

    name = schema.name or Path(origin).stem
    try:
        _check_folder_name(name)
    except ValueError as exc:  # a file named "...toml" would run in runs/..
        hint = 'give the recipe a name, e.g. name = "my-run"'
        raise RecipeError(f"{origin}: the file's name {name!r} {exc}; {hint}") from None
    resolved["name"] = name  # a run directory's recipe.toml, and a checkpoint's, say which run they are

    return Recipe(
        name=name,
        description=schema.description,
        source=origin,
        data=components[("data",)],
        encoder=components[("model", "encoder")],
        generator=components[("model", "generator")],
        discriminator=components[("model", "discriminator")],
        sharing=components[("model", "sharing")],
        share_discriminators=schema.model.share_discriminators,
        gan_loss=components[("objective", "gan_loss")],
        reconstruction_loss=components[("objective", "reconstruction_loss")],
        objective=schema.objective,
        train=schema.train,
        evaluate=schema.evaluate,
        loggers=loggers,
        resolved=resolved,
        ablation=ablation,
    )


#: Settings a resumed run may change: they decide how long a run goes and how it is run, watched and stored,
#: not what it learns. A change to any other setting would leave the checkpoint's weights and optimiser state
#: describing a different run than its recipe (the optimiser's restored state would even keep the old lr).
RESUMABLE_SETTINGS = (
    "name", "description", "data.root", "data.bad_files", "train.iterations", "train.device", "train.num_workers",
    "train.log_every", "train.sample_every", "train.sample_count", "train.checkpoint_every", "train.eval_every",
    "train.keep_checkpoints", "train.deterministic", "train.precision", "train.channels_last", "train.compile",
    "train.on_nonfinite", "evaluate", "loggers",
)  # fmt: skip


def changes_on_resume(trained: dict[str, Any], recipe: dict[str, Any]) -> list[str]:
    """The settings outside :data:`RESUMABLE_SETTINGS` in which ``recipe`` differs from the recipe a checkpoint
    was ``trained`` with, as ``"key: old -> new"`` lines (both resolved recipes, as dicts).

    Keys that only one of them has are left out: they come from a unitkit or plugin version that added or
    dropped a setting, not from the user.
    """
    old, new = _flatten(trained), _flatten(recipe)
    return [
        f"{key}: {old[key]!r} -> {new[key]!r}"
        for key in sorted(old.keys() & new.keys())
        if old[key] != new[key] and not any(key == s or key.startswith(f"{s}.") for s in RESUMABLE_SETTINGS)
    ]


def _ablation_tables(raw: dict[str, Any], origin: str) -> dict[str, Any]:
    """The ``[ablations.NAME]`` tables of a parsed recipe, once each name can name a run directory."""
    ablations = raw.get("ablations", {})
    if not isinstance(ablations, dict):
        raise RecipeError(f"{origin}: 'ablations' must be a table of [ablations.NAME] tables")
    for name in ablations:
        try:
            _check_folder_name(name)
        except ValueError as exc:
            raise RecipeError(f"{origin}: [ablations.{json.dumps(name, ensure_ascii=False)}] the name {exc}") from None
    return ablations


#: Top-level keys that are each recipe file's own: a recipe takes neither its base's name (the name of its run
#: directory) nor its base's description.
_OWN_KEYS = ("name", "description")

#: Keys a recipe may spell another way (the paper's λ0..λ4) → the key the resolved recipe uses, so that a
#: recipe's ``lambda0`` replaces its base's ``gan``, as a ``--set`` of either replaces the recipe's.
_SPELLINGS = {
    f"objective.{alias}": f"objective.{name}"
    for name, info in ObjectiveSettings.model_fields.items()
    if isinstance(info.validation_alias, AliasChoices)
    for alias in info.validation_alias.choices
}


class _Layer(NamedTuple):
    """The values a recipe takes from one source, as dotted keys: a recipe file, an ablation or ``--set``."""

    origin: str
    changes: dict[str, Any]


def _layer(origin: str, table: dict[str, Any]) -> _Layer:
    """``table`` (nested tables or dotted keys) as a layer of dotted keys, each spelled as the resolved recipe does."""
    # An empty table (a bare [train] header) sets nothing: as a value it would replace the base's whole table.
    changes = {_SPELLINGS.get(key, key): value for key, value in _flatten(table).items() if value != {}}
    return _Layer(origin, changes)


def _base_path(path: Path, base: Any, chain: tuple[Path, ...]) -> Path:
    """The recipe file that ``base = ...`` in recipe ``path`` names from ``path``'s folder; ``chain`` holds the
    recipes that led to ``path`` through their bases, to which it must not lead back."""
    if not isinstance(base, str) or not base:
        raise RecipeError(
            f"{path}: base = {base!r}: name the recipe this one builds on by its path from this recipe's folder, "
            'e.g. base = "cats.toml"'
        )
    found = Path(os.path.normpath(path.parent / base))
    if not found.is_file():
        others = [p.name for p in found.parent.glob("*.toml")] if found.parent.is_dir() else []
        close = difflib.get_close_matches(found.name, others, n=1)
        hint = f"did you mean {close[0]!r}?" if close else "a base is a path from the recipe's folder"
        raise RecipeError(f"{path}: base = {base!r}: no recipe file {found}; {hint}")
    seen = (*chain, path)
    if found.resolve() in {p.resolve() for p in seen}:
        cycle = " -> ".join(map(str, (*seen, found)))
        raise RecipeError(f"{path}: these recipes are each other's bases in a cycle, {cycle}; remove one base")
    return found


def _read_chain(path: Path, chain: tuple[Path, ...] = ()) -> tuple[list[_Layer], dict[str, tuple[str, Any]]]:
    """The layers of recipe file ``path``, its bases' first, and its ablations by name with the file that defines
    each, its bases' first (a table of the same name replaces the base's); ``chain`` as for :func:`_base_path`."""
    origin = str(path)
    raw = read_toml(path)
    ablations = {name: (origin, table) for name, table in _ablation_tables(raw, origin).items()}
    raw.pop("ablations", None)
    base = raw.pop("base", None)
    own = _layer(origin, raw)
    if base is None:
        return [own], ablations
    base_layers, inherited = _read_chain(_base_path(path, base, chain), (*chain, path))
    shared = [_Layer(where, {k: v for k, v in changes.items() if k not in _OWN_KEYS}) for where, changes in base_layers]
    return [*shared, own], {**inherited, **ablations}


def _ablation_layer(origin: str, name: str, ablations: dict[str, tuple[str, Any]]) -> _Layer:
    """The overrides of ablation ``name`` of recipe ``origin``, which defines it or inherits it."""
    if name not in ablations:
        names = list(ablations)
        close = difflib.get_close_matches(name, names, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise RecipeError(f"{origin}: no ablation {name!r}; {hint}(defined: {', '.join(names) or 'none'})")
    where, table = ablations[name]
    if not isinstance(table, dict):
        raise RecipeError(f"{where}: [ablations.{name}] must be a table of dotted-key overrides")
    layer = _layer(f"{where} [ablations.{name}]", table)
    for key in layer.changes:
        table_name = key.split(".")[0]
        if table_name not in RecipeSchema.model_fields:
            # [ablations.kl-0.1] is the table "kl-0" holding a table "1": TOML splits names at dots.
            raise RecipeError(
                f"{where}: [ablations.{name}] sets {key!r}, but {table_name!r} is not a recipe table; if the "
                f'ablation\'s name has a dot, quote it: [ablations."{name}.{table_name}"]'
            )
    return layer


def _merge(layers: list[_Layer]) -> tuple[dict[str, Any], dict[str, str]]:
    """The recipe ``layers`` make, each applied over the ones before it, and the origin of each dotted key."""
    raw: dict[str, Any] = {}
    set_by: dict[str, str] = {}
    for layer in layers:
        raw = apply_overrides(raw, layer.changes, layer.origin)
        set_by.update(dict.fromkeys(layer.changes, layer.origin))
    return raw, set_by


def ablation_names(path: str | Path) -> list[str]:
    """Names of the ``[ablations.NAME]`` tables of a recipe (a file or a shipped recipe's name) and of its bases,
    its bases' first, in file order."""
    return list(_read_chain(find_recipe(path))[1])


def load_recipe(
    path: str | Path,
    registries: Registries,
    overrides: list[str] | tuple[str, ...] = (),
    ablation: str = "",
) -> Recipe:
    """Read a recipe file on top of its bases, apply the ablation and the overrides, and validate it.

    Each source is applied over the ones before it as ``--set`` values are (:func:`apply_overrides`): the base's
    base, the base, the recipe, the ablation, the overrides. The recipe's ``origins`` say which one each value
    came from.

    Args:
        path: the TOML recipe, or a shipped recipe's name (:func:`find_recipe`). Its top-level
            ``base = "other.toml"`` names, from its folder, a recipe it builds on.
        registries: filled registries (``unitkit.plugins.load_plugins().registries``).
        overrides: ``--set`` strings, ``dotted.key=value``, applied after the ablation.
        ablation: name of an ``[ablations.NAME]`` table of the recipe or a base to apply first, or ``""``.

    Raises:
        RecipeError: with a message naming the file, table, key, value and nearest valid name.
    """
    path = find_recipe(path)
    origin = str(path)
    layers, ablations = _read_chain(path)
    if ablation:
        layers.append(_ablation_layer(origin, ablation, ablations))
    layers.append(_layer("--set", dict(parse_override(o) for o in overrides)))
    raw, set_by = _merge(layers)
    recipe = validate(raw, registries, origin, ablation)
    held = _flatten(raw)  # without the settings that a later source's other kind of component dropped
    origins = {key: where for key, where in set_by.items() if key in held}
    if ablation:
        origins["ablation"] = layers[-2].origin
    return recipe.model_copy(update={"origins": origins})


def standalone_toml(recipe: str | Path, name: str) -> str:
    """A recipe (a file or a shipped recipe's name) as TOML that needs no other file, to copy and edit, renamed
    ``name`` (so that its runs do not land in the original's run directory).

    A recipe without ``base`` is its file's text with its ``name`` line replaced. One with a base is written with
    its bases merged in, as :func:`load_recipe` merges them, and with every ablation it has or inherits, after a
    comment naming the files it was made from; its comments are not carried over, and no default is filled in.
    """
    path = find_recipe(recipe)
    layers, ablations = _read_chain(path)
    if len(layers) == 1:
        text = path.read_text(encoding="utf-8-sig")
        named = re.sub(r"^name\s*=.*$", f"name = {json.dumps(name)}", text, count=1, flags=re.MULTILINE)
        return named if "name" in tomllib.loads(text) else f"name = {json.dumps(name)}\n{text}"
    raw, _ = _merge(layers)
    raw = {"name": name} | {key: value for key, value in raw.items() if key != "name"}
    if ablations:
        raw["ablations"] = {name: table for name, (_, table) in ablations.items()}
    bases = [os.path.relpath(layer.origin, path.parent) for layer in reversed(layers[:-1])]
    header = (
        f"# {path.name} with its base{'s' * (len(bases) > 1)} {', '.join(bases)} merged in: every value they set "
        "and every ablation they define.\n"
        "# A key left out takes its default; `unitkit show FILE --origin` lists them all.\n"
    )
    return f"{header}\n{tomli_w.dumps(raw)}"


# ---------------------------------------------------------------------------------------------------------------
# The reference of every table and key (``unitkit show --schema``, docs/recipes.md), read from the schema above and
# from the registered components' signatures, so it says what the validator does.

SCHEMA_INTRO = """\
# Recipe reference

A recipe is a TOML file that describes one run. Its fixed tables (`[model]`, `[objective]`, `[train]`,
`[evaluate]`) hold the settings listed below. Its component tables (`[data]`, `[model.encoder]`,
`[model.generator]`, `[model.discriminator]`, `[model.sharing]`, `[objective.gan_loss]`,
`[objective.reconstruction_loss]` and each `[[loggers]]` table) name a registered component with `kind`, and
hold that kind's settings, which come from the component's signature. A key left out takes its default; an
unknown key, a value of the wrong type or one out of range stops the run before it starts, with a message that
names the key. `unitkit show RECIPE` prints a recipe with every default filled in.

`--set KEY=VALUE` changes any key from the command line: a dotted key and a TOML value, e.g.
`--set train.iterations=200`, `--set train.lr=2e-4`, `--set data.root=/data/cats` (a bare word is a string).
Setting a component's `kind` drops the settings of the kind it replaces: `--set model.sharing.kind=none`. An
`[ablations.NAME]` table holds such dotted keys, e.g. `"objective.cycle" = 0.0`; `unitkit run --ablation NAME`
applies it before the `--set` values, and `--all-ablations` runs the recipe and each of its ablations. A string
may hold `${UNITKIT_DATA}`, the folder of real datasets.

A recipe may build on another: a top-level `base = "cats.toml"`, a path from the recipe's folder, starts it from
that recipe (and from that recipe's own base, if it has one); its tables are then applied as `--set` values are,
so a component table that names another `kind` starts from that kind's defaults. It inherits its base's
ablations; an `[ablations.NAME]` of its own adds one or replaces the base's of that name. `name` and
`description` are never inherited. A run stores the recipe resolved, without `base`.
`unitkit show RECIPE --origin` prints each value beside where it came from: `default`, the recipe or a base, an
ablation, or `--set`.

Each table below lists its keys with their type, default ("required": no default), allowed range or values,
and description. The file is generated from the code, with the built-in components only:
`UNITKIT_DISABLE_PLUGIN_AUTOLOAD=1 unitkit show --schema > docs/recipes.md`; `unitkit show --schema` also lists
the kinds of the installed plugins.
"""

_COLUMNS = "| key | type | default | range or values | description |\n| --- | --- | --- | --- | --- |"
_TYPE_NAMES = {bool: "boolean", int: "integer", float: "float", str: "string", dict: "table", list: "array"}


def _toml_value(value: Any) -> str:
    """``value`` as TOML writes it, tables inline."""
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + " }" if value else "{}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(map(_toml_value, value)) + "]"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:_}"  # TOML reads 1_000_000 too
    try:
        return tomli_w.dumps({"v": value}).removeprefix("v = ").strip()
    except TypeError:  # a default TOML cannot write (None, a Path, an Enum): a plugin's signature may hold one
        return repr(value)


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _type_and_values(annotation: Any) -> tuple[str, str]:
    """The type of a key (``integer``, ``boolean or "auto"``...) and, for a choice of values, the values."""
    origin = typing.get_origin(annotation)
    if origin is Literal:
        values = typing.get_args(annotation)
        return _TYPE_NAMES.get(type(values[0]), "any"), ", ".join(f"`{_toml_value(v)}`" for v in values)
    if origin is Annotated:  # inside a list or a union, where pydantic leaves the metadata on the type
        return _type_and_values(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        parts = [
            " or ".join(f"`{_toml_value(v)}`" for v in typing.get_args(arg))
            if typing.get_origin(arg) is Literal
            else _type_and_values(arg)[0]
            for arg in typing.get_args(annotation)
            if arg is not type(None)  # TOML has no null: such a key is set or left out
        ]
        return " or ".join(parts), ""
    if origin is list:
        return f"array of {_type_and_values(typing.get_args(annotation)[0])[0]}s", ""
    return _TYPE_NAMES.get(origin or annotation, "any"), ""


def _range(info: Any) -> str:
    bounds = []
    for item in info.metadata:
        for attr, sign in (("gt", ">"), ("ge", "≥"), ("lt", "<"), ("le", "≤")):
            if getattr(item, attr, None) is not None:
                bounds.append(f"{sign} {_toml_value(getattr(item, attr))}")
        if getattr(item, "pattern", None):
            bounds.append(f"matches `{item.pattern}`")
    return ", ".join(bounds)


def _row(key: str, info: Any, description: str = "") -> str:
    kind, values = _type_and_values(info.annotation)
    value = None if info.is_required() else info.get_default(call_default_factory=True)
    if isinstance(value, BaseModel):  # a table of its own: its keys' defaults are listed in its section
        kind, default = "table", ""
    else:
        default = "required" if info.is_required() else "unset" if value is None else f"`{_toml_value(value)}`"
    alias = info.validation_alias
    also = [a for a in alias.choices if a != key] if isinstance(alias, AliasChoices) else []
    description = description or info.description or ""
    if also:
        description += f" (also written {', '.join(f'`{a}`' for a in also)})"
    cells = [f"`{key}`", kind, default, ", ".join(filter(None, [values, _range(info)])), description]
    return "| " + " | ".join(_cell(c) for c in cells) + " |"


def _fixed_model(info: Any) -> type[BaseModel] | None:
    """The model of a fixed table (``[train]``...) declared by field ``info``; None for other fields."""
    annotation = info.annotation
    return annotation if inspect.isclass(annotation) and issubclass(annotation, BaseModel) else None


def _table_heading(loc: tuple[str, ...]) -> str:
    kind = TABLE_KINDS.get(loc)
    return f"`[[{'.'.join(loc)}]]`" if kind and kind.repeated else f"`[{'.'.join(loc)}]`"


def _fixed_table(title: str, model: type[BaseModel], loc: tuple[str, ...]) -> str:
    lines = [f"## {title}", ""]
    doc = inspect.getdoc(model) or ""
    if loc and doc:
        lines += [doc, ""]
    lines.append(_COLUMNS)
    for key, info in model.model_fields.items():
        here = (*loc, key)
        if kind := TABLE_KINDS.get(here):
            what = f"one table for each {kind.label}" if kind.repeated else f"the {kind.label}"
            lines.append(_row(key, info, f"{what}: a component table, see {_table_heading(here)}"))
        elif _fixed_model(info):
            lines.append(_row(key, info, f"see {_table_heading(here)}"))
        else:
            lines.append(_row(key, info))
    return "\n".join(lines) + "\n"


def _component_table(registries: Registries, loc: tuple[str, ...], kind: Kind) -> str:
    label, registry_kind = kind.label, kind.name
    lines = [f"## {_table_heading(loc)}", ""]
    if kind.repeated:
        default = _toml_value(RecipeSchema.model_fields[loc[0]].get_default(call_default_factory=True))
        lines.append(f"Each {_table_heading(loc)} table is a {label}; the default is `{loc[0]} = {default}`.")
    else:
        default = _default_kind(loc)
        chosen = f'the default is `kind = "{default}"`' if default else "`kind` is required"
        lines.append(f"The {label}: `kind` picks one of the kinds below ({chosen}), the other keys are its settings.")
    lines.append("")
    for entry in registries[registry_kind]:
        provider = entry.provider
        source = "" if provider.package == BUILTIN_DISTRIBUTION else f" (from {provider.package} {provider.version})"
        lines += [f'### {_table_heading(loc)} kind = "{entry.name}"{source}', ""]
        doc = inspect.getdoc(entry.factory) or ""
        if doc:
            lines += [doc, ""]
        fields = settings_model(registries, registry_kind, entry.name).model_fields
        if fields:
            lines += [_COLUMNS, *(_row(key, info) for key, info in fields.items()), ""]
        else:
            lines += ["No settings.", ""]
    return "\n".join(lines)


def schema_markdown(registries: Registries) -> str:
    """The reference of recipes as markdown: every fixed table and key with its type, default, range and
    description, then each component table with every registered kind and its settings.

    ``docs/recipes.md`` is this text for the built-in components (``unitkit show --schema`` prints it).
    """
    sections = [SCHEMA_INTRO, _fixed_table("The top level", RecipeSchema, ())]
    for name, info in RecipeSchema.model_fields.items():
        if model := _fixed_model(info):
            sections.append(_fixed_table(_table_heading((name,)), model, (name,)))
    for loc, kind in TABLE_KINDS.items():
        sections.append(_component_table(registries, loc, kind))
    return "\n".join(sections).rstrip("\n") + "\n"
