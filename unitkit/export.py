"""Export one direction of a trained model as one self-contained file, TorchScript or ONNX, that runs without
unitkit: images (N, C, H, W), float32 in [-1, 1], to the other domain's images of the same size in [-1, 1].

The file's metadata says so (:func:`export_metadata`, as JSON: the ONNX metadata_props key ``unitkit``, the
TorchScript extra file ``unitkit.json``). Before the file is written, it is read back and checked to translate
random images as the model does: at the export size and, for a dynamic export, at another size and batch.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import re
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from unitkit import __version__
from unitkit.components import EncoderBackbone, GeneratorBackbone
from unitkit.errors import UnitkitError, UsageError
from unitkit.translator import SizeRule, Translator, check_direction

FORMATS = ("torchscript", "onnx")
#: Where the metadata goes: this ONNX metadata_props key, and this name plus ``.json`` as a TorchScript extra file.
METADATA_KEY = "unitkit"
TORCHSCRIPT_METADATA = f"{METADATA_KEY}.json"
EXPORT_FORMAT = "unitkit-export/1"
INPUT_NAME, OUTPUT_NAME = "images", "translated"
#: The largest difference from the model's own output that the written file may make on the check images.
#: Other kernels (ONNX Runtime's) round float32 differently, by about 1e-6; a wrong graph is off by far more, and
#: an 8-bit level is 1/127.5.
TOLERANCE = 1e-4

#: A written file, loaded back: images in, translations out (on the images' device).
Runner = Callable[[Tensor], Tensor]


class ExportError(UnitkitError):
    """A model that cannot be exported in the format asked, or an environment without that format's exporter."""


class TranslationNetwork(nn.Module):
    """One direction of a UNIT model on its own: the source domain's encoder, then the other domain's generator,
    through the latent mean (as :meth:`unitkit.model.UNIT.translate`)."""

    def __init__(self, encoder: EncoderBackbone, generator: GeneratorBackbone):
        super().__init__()
        self.encoder, self.generator = encoder, generator

    def forward(self, images: Tensor) -> Tensor:
        return self.generator(self.encoder.encode_mean(images))


def export_network(
    translator: Translator,
    output: str | Path,
    direction: str,
    file_format: str,
    *,
    image_size: int | None = None,
    dynamic: bool = False,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Write the ``direction`` ("a2b" or "b2a") network of ``translator`` to ``output`` as ``file_format``
    ("torchscript" or "onnx"); returns the metadata written into the file.

    Args:
        image_size: the side of the square images the file is built and checked for; default: the training size.
        dynamic: batch, height and width may vary (the batch alone for an encoder of one fixed size). Without it,
            the file is built for one image of ``image_size``.
        overwrite: replace ``output`` if it exists.
    """
    check_direction(direction)
    if file_format not in FORMATS:
        raise UsageError(f"format {file_format!r} is not one of {', '.join(FORMATS)}")
    output = Path(output)
    if file_format == "onnx":
        _require_onnx()
    if output.exists() and not overwrite:
        raise FileExistsError(f"{output} exists; pass --overwrite to replace it")
    source, target = direction[0], direction[-1]
    rule = translator.size_rule(source)
    side = image_size or translator.image_size
    if not rule.accepts(side):
        raise UsageError(f"image size {side}: the {direction} network takes {rule}")
    network = TranslationNetwork(translator.model.encoder(source), translator.model.generator(target)).eval()
    # An ONNX file does not depend on where it was traced; on the CPU, the check against ONNX Runtime's CPU kernels
    # is not thrown off by a GPU's TF32 convolutions.
    device = torch.device("cpu") if file_format == "onnx" else translator.device
    network = copy.deepcopy(network).to(device) if device != translator.device else network
    samples = _check_images(translator.channels(source), side, rule, dynamic, device)
    metadata = export_metadata(translator, direction, side, rule, dynamic)
    recipe = translator.recipe
    components = {"encoder": f"encoder {recipe.encoder.kind!r}", "generator": f"generator {recipe.generator.kind!r}"}
    output.parent.mkdir(parents=True, exist_ok=True)
    temporary = output.with_name(f".{output.name}.tmp-{os.getpid()}")
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # torch's deprecation and tracer notices: the check below decides
            if file_format == "torchscript":
                run = _write_torchscript(network, samples[0], metadata, temporary, components)
            else:
                run = _write_onnx(network, samples[0], metadata, temporary, components, rule if dynamic else None)
            _check(run, network, samples, file_format)
        os.replace(temporary, output)
    finally:
        temporary.unlink(missing_ok=True)
    return metadata


def export_metadata(translator: Translator, direction: str, side: int, rule: SizeRule, dynamic: bool) -> dict:
    """What an exported file computes and how it was made, for whoever runs it without unitkit."""
    size: list[int | str] = ["height", "width"] if dynamic and not rule.fixed else [side, side]
    batch = "batch" if dynamic else 1
    return {
        "format": EXPORT_FORMAT,
        "direction": direction,
        "input": {"name": INPUT_NAME, "shape": [batch, translator.channels(direction[0]), *size]},
        "output": {"name": OUTPUT_NAME, "shape": [batch, translator.channels(direction[-1]), *size]},
        "dtype": "float32",
        "value_range": [-1.0, 1.0],
        "sizes": str(rule) if dynamic else f"{side}x{side} images only",
        "size_rule": dataclasses.asdict(rule),
        "image_size": side,
        "recipe": translator.recipe.name,
        "step": translator.step,
        "weights": translator.weights,
        "unitkit_version": __version__,
    }


def _require_onnx() -> None:
    if torch.__version__ < (2, 6):  # torch.onnx.export of an ExportedProgram, dynamo=True, as used below
        raise ExportError(f"--format onnx needs torch 2.6 or newer; this is torch {torch.__version__}")
    try:
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401  # what torch.onnx.export needs
    except ImportError as exc:
        raise ExportError(
            f"--format onnx needs the export extra ({exc.name} is missing): pip install 'unitkit[export]'"
        ) from None


def _check_images(channels: int, side: int, rule: SizeRule, dynamic: bool, device: torch.device) -> list[Tensor]:
    """Random images to build and check the file with: one (two when dynamic) of ``side``, and for a dynamic
    export three of another size the encoder takes (taller than wide, to tell height from width)."""
    generator = torch.Generator().manual_seed(0)
    shapes = [(2 if dynamic else 1, channels, side, side)]
    if dynamic:
        shapes.append((3, channels, rule.fit(side + 2 * rule.multiple), rule.fit(side + rule.multiple)))
    return [(torch.rand(shape, generator=generator) * 2 - 1).to(device) for shape in shapes]


def _write_torchscript(network: nn.Module, example: Tensor, metadata: dict, path: Path, components: dict) -> Runner:
    """Trace ``network`` on ``example`` into a TorchScript file at ``path``; returns the file, loaded back.

    Traced rather than scripted: scripting refuses most plugin code. A trace records the operations run on the
    example, so a component whose Python code treats the image size as a constant is specialised to it; the
    check at another size catches that.
    """
    try:
        traced = torch.jit.trace(network, example, check_trace=False)
    except Exception as exc:  # whatever a plugin's forward raises under the tracer
        raise ExportError(f"torch.jit.trace cannot trace the {_both(components)}: {_one_line(exc)}") from exc
    torch.jit.save(traced, str(path), _extra_files={TORCHSCRIPT_METADATA: json.dumps(metadata)})
    return torch.jit.load(str(path), map_location=example.device)


def _write_onnx(
    network: nn.Module, example: Tensor, metadata: dict, path: Path, components: dict, dynamic: SizeRule | None
) -> Runner:
    """Export ``network`` to an ONNX file at ``path`` (batch, height and width varying as ``dynamic`` allows, when
    given); returns the file, loaded back into ONNX Runtime on the CPU.

    torch.export captures the graph first, so that an operator ONNX lacks can be traced back to the module that
    uses it; the torch.export-based converter (``dynamo=True``) then writes the file, with its weights inside.
    """
    import onnxruntime

    shapes = _dynamic_shapes(dynamic) if dynamic else None
    try:
        program = torch.export.export(network, (example,), dynamic_shapes=shapes, strict=False)
    except Exception as exc:  # whatever a plugin's forward raises under torch.export
        hint = "; export without --dynamic" if dynamic else ""
        raise ExportError(f"torch.export cannot capture the {_both(components)}: {_one_line(exc)}{hint}") from exc
    try:
        converted = torch.onnx.export(
            program,
            (example,),
            dynamo=True,
            dynamic_shapes=shapes,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            verbose=False,
        )
    except Exception as exc:  # the converter's errors have no public type
        raise ExportError(_unconvertible(exc, program, components)) from exc
    converted.model.metadata_props[METADATA_KEY] = json.dumps(metadata)
    converted.save(str(path), external_data=False)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return lambda x: torch.from_numpy(session.run(None, {INPUT_NAME: x.cpu().numpy()})[0]).to(x.device)


def _dynamic_shapes(rule: SizeRule) -> tuple[dict[int, Any]]:
    """The input's batch varies, and its height and width as ``rule`` allows: multiples of its ``multiple``, from
    its smallest side up (in the ONNX file, e.g. ``4*height_blocks``)."""
    from torch.export import Dim  # here: importing torch.export costs every unitkit command a moment

    shapes: dict[int, Any] = {0: Dim("batch")}
    if not rule.fixed:
        for axis, name in ((2, "height"), (3, "width")):
            if rule.multiple == 1:
                shapes[axis] = Dim(name, min=rule.smallest)
            else:
                shapes[axis] = rule.multiple * Dim(f"{name}_blocks", min=rule.smallest // rule.multiple)
    return (shapes,)


def _unconvertible(exc: Exception, program: torch.export.ExportedProgram, components: dict) -> str:
    """One line for a failed ONNX conversion: the operator and the component using it, where the converter names
    the graph node it stopped at (its only structured clue), else the converter's own innermost message."""
    causes = [exc]
    while (cause := causes[-1].__cause__ or causes[-1].__context__) is not None and cause not in causes:
        causes.append(cause)
    nodes = {node.name: node for node in program.graph.nodes}
    for error in causes:
        match = re.search(r"translating node %(\w+)", str(error))
        if match and match.group(1) in nodes:
            node = nodes[match.group(1)]
            path, module = list(node.meta.get("nn_module_stack", {"": ("", "")}).values())[-1]
            part = components.get(path.split(".")[0], _both(components))
            where = f" in {path} ({module.rsplit('.', 1)[-1]})" if path else ""
            return (
                f"ONNX has no conversion for operator {node.target}, which the {part} uses{where}; export it with "
                "--format torchscript, or build that component from operators ONNX supports"
            )
    return f"the ONNX converter cannot convert the {_both(components)}: {_one_line(causes[-1])}"


def _check(run: Runner, network: nn.Module, samples: list[Tensor], file_format: str) -> None:
    """Refuse a written file that does not translate ``samples`` as ``network`` does, within :data:`TOLERANCE`."""
    for index, images in enumerate(samples):
        expected = network(images)
        try:
            translated = run(images)
        except Exception as exc:  # a traced graph that cannot take this shape
            problem = f"it fails: {_one_line(exc, last=True)}"
        else:
            if translated.shape != expected.shape:
                problem = f"it returns {'x'.join(map(str, translated.shape))}"
            elif (difference := (translated - expected).abs().max().item()) <= TOLERANCE:  # NaN is not
                continue
            else:
                problem = f"they differ by up to {difference:.3g}"
        # At a shape other than the one it was built for, the likely cause is a size the trace took as a constant.
        hint = "; a component's forward takes the batch or image size as a constant: export without --dynamic"
        shape = "x".join(map(str, images.shape))
        raise ExportError(
            f"the {file_format} file does not translate {shape} images as the model does: {problem}"
            + (hint if index else "")
        )


def _both(components: dict[str, str]) -> str:
    return " and ".join(components.values())


def _one_line(exc: BaseException, last: bool = False) -> str:
    """``exc`` as one line: its type and its message's first line, or with ``last`` its message's last line alone
    (a TorchScript error puts its traceback first and ends with the error itself)."""
    lines = str(exc).strip().splitlines() or [""]
    return lines[-1] if last else f"{type(exc).__name__}: {lines[0]}".rstrip(": ")
