"""Caption templates: which ``{field}`` names exist, and their values for one image.

Values come from the image's provenance record: the generation settings for images sdmark made;
for existing images, the generation settings in the source file's own sdmark record or, failing
that, its AUTOMATIC1111-style ``parameters`` text. A field whose value is unknown for an image is
left out of :func:`field_values`; :func:`fill` turns that into a :class:`StageError`.
"""

from __future__ import annotations

import json
import re
import string
from typing import TYPE_CHECKING, Any

from sdmark.core.errors import ChainError, StageError

if TYPE_CHECKING:
    from sdmark.core.stages import ImageItem

FIELDS: dict[str, str] = {
    "prompt": "the prompt",
    "negative_prompt": "the negative prompt",
    "seed": "the seed",
    "steps": "the number of denoising steps",
    "sampler": "the sampler (scheduler)",
    "guidance": "the guidance (CFG) scale",
    "model": "the model id or path",
    "software": "the software and version that wrote this record (e.g. sdmark 0.1.0)",
    "date": "the date of this record, YYYY-MM-DD (UTC)",
    "datetime": "the time of this record, ISO 8601 (UTC)",
    "kind": "generated or processed",
    "width": "the image width in pixels, before captioning",
    "height": "the image height in pixels, before captioning",
    "name": "the output name of the image",
    "source": "the input file name (processed images only)",
}
"""Every template field with what it stands for (shown in errors)."""

# A1111's settings line: `Key: value, Key: "quoted, value", ...`.
_A1111_PAIR = re.compile(r'\s*([^,:"]+?):\s*("(?:\\.|[^\\"])*"|[^,]*)(?:,|$)')
_A1111_KEYS = {"Steps": "steps", "Sampler": "sampler", "CFG scale": "guidance", "Seed": "seed", "Model": "model"}


def template_fields(template: str) -> list[str]:
    """The field names used in ``template``, in order; raises :class:`ChainError` for bad ones.

    Only plain names are allowed (no ``{a.b}`` or ``{a[0]}``); format specs such as
    ``{guidance:.1f}`` are fine. ``{{`` and ``}}`` stand for literal braces.
    """
    try:
        parts = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ChainError(f"caption:text {template!r} is not a valid template ({exc}); write {{{{ and }}}} for literal braces") from None
    names: list[str] = []
    for _, name, spec, _ in parts:
        if name is None:
            continue
        if name not in FIELDS:
            raise ChainError(
                f"caption:text uses unknown field {{{name}}}; valid fields: {', '.join('{' + f + '}' for f in FIELDS)}"
            )
        if spec and "{" in spec:
            raise ChainError(f"caption:text: nested fields in {{{name}:{spec}}} are not supported")
        names.append(name)
    return names


def field_values(item: ImageItem) -> dict[str, Any]:
    """The known template values for ``item`` (unknown ones are absent, never guessed)."""
    record = item.record
    values: dict[str, Any] = {
        "software": record.software,
        "date": record.created[:10],
        "datetime": record.created,
        "kind": record.kind,
        "width": item.image.width,
        "height": item.image.height,
        "name": item.name,
    }
    if record.source and record.source.get("name"):
        values["source"] = record.source["name"]
    generation, _ = _generation(item)
    for key, value in generation.items():
        if value is not None and value != "":
            values[key] = value
    return values


GENERATION_FIELDS = ("prompt", "negative_prompt", "seed", "steps", "sampler", "guidance", "model")
"""The fields whose values come from generation settings (for a processed image: its input's)."""

UNVERIFIED_ORIGINS = {
    "declared": "the input's own sdmark text record, not verified (anyone can write one)",
    "parameters": "the input's own AUTOMATIC1111 parameters text, not verified (anyone can write one)",
}
"""Where a processed image's generation fields may come from without proof, as the record says it."""


def generation_origin(item: ImageItem) -> str | None:
    """Where :func:`field_values` takes the generation fields from: ``record`` (this image's own
    generation), ``credentials`` (the input's verified credentials), ``declared`` or ``parameters``
    (the input's own metadata: :data:`UNVERIFIED_ORIGINS`), or ``None`` (nowhere)."""
    return _generation(item)[1]


def _generation(item: ImageItem) -> tuple[dict[str, Any], str | None]:
    """Generation settings under template names, from the record, the source record or A1111 text,
    and where they came from (:func:`generation_origin`)."""
    record = item.record
    generation = record.generation
    origin = "record" if generation else None
    if not generation and record.source:
        # The input's verified record first, else what its own metadata declares (a template only).
        for origin in ("credentials", "declared"):
            source_record = (record.source.get(origin) or {}).get("record")
            if isinstance(source_record, dict) and isinstance(source_record.get("generation"), dict):
                generation = source_record["generation"]
                break
    if generation:
        found = {key: generation.get(key) for key in ("prompt", "negative_prompt", "seed", "steps", "sampler", "model")}
        found["guidance"] = generation.get("guidance_scale")
        return found, origin
    parameters = item.text.get("parameters") or item.source_metadata.get("parameters")
    if isinstance(parameters, str) and parameters.strip():
        return parse_a1111(parameters), "parameters"
    return {}, None


def parse_a1111(text: str) -> dict[str, Any]:
    """Prompt, negative prompt and the settings we template from an A1111 ``parameters`` text."""
    lines = text.strip().split("\n")
    settings: dict[str, Any] = {}
    if lines[-1].lstrip().startswith("Steps:"):
        for key, raw in _A1111_PAIR.findall(lines.pop()):
            name = _A1111_KEYS.get(key.strip())
            if name is None:
                continue
            value: Any = raw.strip()
            if value.startswith('"'):
                try:
                    value = json.loads(value)
                except json.JSONDecodeError:
                    value = value.strip('"')
            if name in ("seed", "steps"):
                value = int(value) if value.lstrip("-").isdigit() else value
            elif name == "guidance":
                try:
                    value = float(value)
                except ValueError:
                    pass
            settings[name] = value
    prompt_lines, negative = [], None
    for index, line in enumerate(lines):
        if line.startswith("Negative prompt:"):
            negative = "\n".join([line.removeprefix("Negative prompt:").strip(), *lines[index + 1 :]])
            break
        prompt_lines.append(line)
    settings["prompt"] = "\n".join(prompt_lines).strip()
    settings["negative_prompt"] = negative
    return settings


def fill(template: str, item: ImageItem) -> str:
    """The caption text for ``item``; :class:`StageError` when a used field has no value for it."""
    values = field_values(item)
    missing = [name for name in dict.fromkeys(template_fields(template)) if name not in values]
    if missing:
        where = "its sdmark record nor A1111 parameters say" if item.record.kind == "processed" else "its record does not say"
        raise StageError(
            f"field {', '.join('{' + m + '}' for m in missing)} has no value for this image "
            f"({'neither ' if item.record.kind == 'processed' else ''}{where}); use fields it has, e.g. {{date}} or {{software}}"
        )
    try:
        return template.format_map(values)
    except (ValueError, TypeError) as exc:  # e.g. {prompt:.1f} on a string
        raise StageError(f"text {template!r} cannot be filled: {exc}") from None
