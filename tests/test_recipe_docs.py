"""docs/recipes.md is the reference `unitkit show --schema` prints, and says what the validator does."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Annotated

from click.testing import CliRunner
from pydantic import Field

from unitkit.cli import main
from unitkit.plugins import load_plugins
from unitkit.recipe import COMPONENT_TABLES, TrainSettings, schema_markdown
from unitkit.registry import Provider

DOCS = Path(__file__).resolve().parents[1] / "docs" / "recipes.md"
REGENERATE = "UNITKIT_DISABLE_PLUGIN_AUTOLOAD=1 unitkit show --schema > docs/recipes.md"


def section(text: str, heading: str) -> list[str]:
    """The lines under ``heading`` (a markdown heading line), up to the next heading of its level or above."""
    lines = text.splitlines()
    start = lines.index(heading) + 1
    level = heading.split()[0]
    ends = [i for i, line in enumerate(lines[start:], start) if line.startswith("#") and line.split()[0] <= level]
    return lines[start : ends[0] if ends else len(lines)]


def row(lines: list[str], key: str) -> list[str]:
    """The cells of the table row of ``key``."""
    found = [line for line in lines if line.startswith(f"| `{key}` |")]
    assert len(found) == 1, (key, lines)
    return [cell.strip() for cell in found[0].strip("|").split(" | ")]


def test_docs_recipes_md_is_the_generated_reference(registries):
    assert DOCS.read_text(encoding="utf-8") == schema_markdown(registries), (
        f"docs/recipes.md is out of date: regenerate it with `{REGENERATE}`"
    )


def test_the_reference_lists_every_key_with_its_default_and_range(registries):
    text = schema_markdown(registries)
    train = section(text, "## `[train]`")
    assert [line.split("`")[1] for line in train if line.startswith("| `")] == list(TrainSettings.model_fields)
    assert row(train, "lr")[1:4] == ["float", "`0.0001`", "> 0"] and TrainSettings().lr == 0.0001
    assert row(train, "precision")[3] == '`"auto"`, `"fp32"`, `"bf16"`, `"fp16"`'
    assert row(section(text, "## `[objective]`"), "kl")[4].endswith("(also written `lambda1`)")
    # Component settings come from the factory's signature: synthetic(image_size: Annotated[int, Field(ge=8, ...)])
    synthetic = section(text, '### `[data]` kind = "synthetic"')
    assert row(synthetic, "image_size")[1:4] == ["integer", "`32`", "≥ 8, ≤ 4_096"]
    assert row(section(text, '### `[data]` kind = "unpaired-folders"'), "root")[2] == "required"
    for loc, registry_kind in COMPONENT_TABLES.items():
        for entry in registries[registry_kind]:
            assert f'### `[{".".join(loc)}]` kind = "{entry.name}"' in text.splitlines()


def test_the_reference_lists_settings_whose_defaults_toml_cannot_write():
    registries = load_plugins(autoload=False).registries

    def odd(
        run_dir: Path,
        every: int | None = None,
        size: tuple[int, int] = (2, 3),
        steps: list[Annotated[int, Field(ge=0)]] | None = None,
        where: Path = Path("logs"),
    ) -> None:
        """A plugin's logger whose settings have no TOML default."""

    with registries.loggers.provided_by(Provider("odd", "unitkit-odd", "1.0")):
        registries.loggers.register("odd", odd)
    rows = section(schema_markdown(registries), '### `[[loggers]]` kind = "odd" (from unitkit-odd 1.0)')
    assert row(rows, "every")[1:3] == ["integer", "unset"]
    assert row(rows, "size")[2] == "`[2, 3]`"
    assert row(rows, "steps")[1:3] == ["array of integers", "unset"]
    assert row(rows, "where")[2] == f"`{Path('logs')!r}`"


def test_a_plugin_component_is_in_the_reference_with_its_package(third_party):
    result = CliRunner().invoke(main, ["show", "--schema"], catch_exceptions=False)
    assert result.exit_code == 0
    doubled = section(result.output, '### `[objective.gan_loss]` kind = "doubled-lsgan" (from unitkit-doubled 0.3.1)')
    assert row(doubled, "factor")[1:3] == ["float", "`2.0`"]


def test_show_schema_writes_the_docs_and_show_needs_a_recipe_or_schema():
    env = {**os.environ, "UNITKIT_DISABLE_PLUGIN_AUTOLOAD": "1"}
    printed = subprocess.run([sys.executable, "-m", "unitkit", "show", "--schema"], capture_output=True, text=True,
                             env=env, check=True)  # fmt: skip
    assert printed.stdout == DOCS.read_text(encoding="utf-8"), f"regenerate with `{REGENERATE}`"
    neither = CliRunner().invoke(main, ["show"])
    assert neither.exit_code == 2 and "give a RECIPE to show, or --schema" in neither.output
    both = CliRunner().invoke(main, ["show", "--schema", "recipes/quickstart.toml"])
    assert both.exit_code == 2 and "takes no RECIPE" in both.output
