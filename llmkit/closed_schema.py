"""JSON schemas made ready for constrained decoding: closed objects, bounded numbers, and the check that some value
can match at all. Pure functions on plain dicts (standard library only).

Why each:

- ``close``: an object schema with ``properties`` admits other keys unless it says ``additionalProperties: false``
  (JSON Schema's default). Under a grammar a weak model then invents keys and never closes the object (SmolLM2
  wrote a ``properties`` key into a tool call until ``max_tokens``). OpenAI's strict mode requires
  ``additionalProperties: false``, xgrammar's ``strict_mode`` (on by default, the default backend of vLLM) adds
  it, and vLLM's llguidance backend adds it with ``disable_additional_properties``. Here it is added wherever
  a schema lists ``properties`` and says nothing about other keys; an explicit ``additionalProperties`` (or
  ``unevaluatedProperties``) is kept. Schemas whose keys come from elsewhere too (``allOf``, ``anyOf``,
  ``oneOf``, ``if``, ``$ref`` beside ``properties``) are left open: ``additionalProperties`` sees only its
  siblings, so closing them would forbid keys the schema allows.
- ``bound_numbers``: ``{"type": "number"}`` admits numbers of any length, and a model can write digits until
  ``max_tokens``. Numbers get at most 15 integer digits (``MAX_MAGNITUDE``; JavaScript's exact integers end
  near 9e15) unless the schema bounds them, and at most 6 decimals (``multipleOf: 1e-6``) unless it gives a
  ``multipleOf``; integers get the same magnitude. Every value allowed is still valid for the schema given.
- ``never_matches``: a schema no finite value satisfies (a required property or ``minItems`` > 0 that leads
  back to the schema itself, with no way out) compiles, and the grammar engine only finds out while decoding
  ("Too many items"). Checked here, before a request is admitted.
"""

from __future__ import annotations

import copy
from typing import Any

MAX_MAGNITUDE = 10**15 - 1  # the largest number an unbounded schema admits: 15 digits
DECIMALS = 6  # decimals an unbounded "number" admits

# keywords whose value is one subschema / a list of subschemas / a map of name -> subschema
_ONE = ("items", "additionalProperties", "unevaluatedProperties", "unevaluatedItems", "additionalItems",
        "contains", "propertyNames", "not", "if", "then", "else")  # fmt: skip
_LIST = ("prefixItems", "allOf", "anyOf", "oneOf")
_MAP = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")
_OPEN_BESIDE = ("allOf", "anyOf", "oneOf", "if", "$ref", "dependentSchemas")  # keys defined beside properties
# subschemas that apply to the same value as their parent, together with it: closing one would forbid the keys
# its siblings define
_CONJUNCTS = ("allOf", "if", "then", "else", "not", "dependentSchemas")


def prepare(schema: Any) -> Any:
    """``schema`` closed and with bounded numbers (a new object; the argument is not changed)."""
    out = copy.deepcopy(schema)
    conjuncts = _conjuncts(out)
    for node in _subschemas(out):
        if id(node) not in conjuncts:
            _close_one(node)
        _bound_one(node)
    return out


def close(schema: Any) -> Any:
    """A copy of ``schema`` whose objects admit only their listed ``properties`` unless they say otherwise."""
    out = copy.deepcopy(schema)
    conjuncts = _conjuncts(out)
    for node in _subschemas(out):
        if id(node) not in conjuncts:
            _close_one(node)
    return out


def bound_numbers(schema: Any) -> Any:
    """A copy of ``schema`` whose numbers and integers have a bounded number of digits."""
    out = copy.deepcopy(schema)
    for node in _subschemas(out):
        _bound_one(node)
    return out


def _subschemas(schema: Any):
    """Every subschema (dicts) of ``schema``, the root first, each once."""
    stack, seen = [schema], set()
    while stack:
        node = stack.pop()
        if not isinstance(node, dict) or id(node) in seen:
            continue
        seen.add(id(node))
        yield node
        for key in _ONE:
            stack.append(node.get(key))
        for key in _LIST:
            if isinstance(node.get(key), list):
                stack.extend(node[key])
        for key in _MAP:
            if isinstance(node.get(key), dict):
                stack.extend(node[key].values())
        if isinstance(node.get("items"), list):  # draft 4-7 tuple form
            stack.extend(node["items"])


def _conjuncts(schema: Any) -> set[int]:
    """The ids of the subschemas that apply beside their parent (allOf members, if/then/else, ...)."""
    out = set()
    for node in _subschemas(schema):
        for key in _CONJUNCTS:
            value = node.get(key)
            if key == "dependentSchemas" and isinstance(value, dict):
                value = list(value.values())
            members = value if isinstance(value, list) else [value]
            out.update(id(m) for m in members if isinstance(m, dict))
    return out


def _close_one(node: dict) -> None:
    if not isinstance(node.get("properties"), dict):
        return
    if "additionalProperties" in node or "unevaluatedProperties" in node:
        return  # the schema says what other keys may be
    if any(key in node for key in _OPEN_BESIDE):
        return
    node["additionalProperties"] = False


def _types(node: dict) -> set[str]:
    kind = node.get("type")
    return (
        {kind}
        if isinstance(kind, str)
        else {k for k in kind if isinstance(k, str)}
        if isinstance(kind, list)
        else set()
    )


def _bound_one(node: dict) -> None:
    kinds = _types(node) & {"number", "integer"}
    if not kinds:
        return
    low = _given(node, "minimum", "exclusiveMinimum")
    high = _given(node, "maximum", "exclusiveMaximum")
    if low is None:
        low = -MAX_MAGNITUDE if high is None or high >= -MAX_MAGNITUDE else high - MAX_MAGNITUDE
        node["minimum"] = low
    if high is None:
        high = MAX_MAGNITUDE if low <= MAX_MAGNITUDE else low + MAX_MAGNITUDE
        node["maximum"] = high
    if "number" in kinds and "multipleOf" not in node:
        # the smallest step 10**-k (k >= DECIMALS) with room for several values between the bounds
        decimals = DECIMALS
        while decimals < 15 and (high - low) < 10 * 10.0**-decimals:
            decimals += 1
        node["multipleOf"] = 10.0**-decimals


def _given(node: dict, inclusive: str, exclusive: str) -> float | None:
    """The schema's bound (``minimum`` or ``exclusiveMinimum``, ...), when it gives one as a number."""
    values = [node.get(k) for k in (inclusive, exclusive)]
    numbers = [v for v in values if isinstance(v, int | float) and not isinstance(v, bool)]
    return numbers[0] if numbers else None


# ---- never_matches ------------------------------------------------------------------------------------
def never_matches(schema: Any) -> str | None:
    """Why no finite JSON value can satisfy ``schema`` (e.g. "$ref '#' never ends"), or None when one may.

    A least fixpoint over the schema's local ``$ref`` targets: a target can match once some value of it needs
    only targets already known to match. The rules admit a value wherever JSON Schema might (an object needs
    only its ``required`` properties, an array only ``minItems`` items, ``anyOf`` one branch), so a schema
    reported here matches nothing; a schema passed may still be empty for reasons not modelled (``allOf`` of
    disjoint types), which the engine reports while decoding."""
    if not isinstance(schema, dict):
        return None if schema is not False else "the schema is false"
    targets: dict[int, tuple[str, Any]] = {}
    for node in _subschemas(schema):
        ref = node.get("$ref")
        if isinstance(ref, str):
            target = _resolve(schema, ref)
            if target is not None:
                targets.setdefault(id(target), (ref, target))
    known: set[int] = set()  # targets that match some finite value
    changed = True
    while changed:
        changed = False
        for key, (_, target) in targets.items():
            if key not in known and _matches(schema, target, known):
                known.add(key)
                changed = True
    if _matches(schema, schema, known):
        return None
    endless = sorted({ref for key, (ref, _) in targets.items() if key not in known})
    if endless:
        return (
            f"$ref {', '.join(repr(r) for r in endless)} never ends (a required property or minItems > 0 "
            "leads back to it with no way out)"
        )
    return "no value satisfies it (a required property is forbidden, or every branch is)"


def _resolve(root: dict, ref: str) -> Any:
    """The subschema a local ``$ref`` ("#", "#/$defs/x", ...) points at; None for another document."""
    if ref == "#" or ref == "":
        return root
    if not ref.startswith("#/"):
        return None
    node: Any = root
    for part in ref[2:].split("/"):
        part = part.replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return None
    return node


def _matches(root: dict, node: Any, known: set[int]) -> bool:
    """Whether some finite value may satisfy ``node``, with the ``$ref`` targets in ``known`` matching."""
    if node is False:
        return False
    if not isinstance(node, dict):
        return True
    ref = node.get("$ref")
    if isinstance(ref, str):
        target = _resolve(root, ref)
        if target is not None and target is not node and id(target) not in known:
            return False
    if "enum" in node and isinstance(node["enum"], list) and not node["enum"]:
        return False
    if isinstance(node.get("allOf"), list) and not all(_matches(root, s, known) for s in node["allOf"]):
        return False
    for key in ("anyOf", "oneOf"):
        if isinstance(node.get(key), list) and not any(_matches(root, s, known) for s in node[key]):
            return False
    kinds = _types(node)
    if "type" in node and not kinds:
        return False  # "type": [] allows nothing
    if kinds and not kinds <= {"object", "array"}:
        return True  # a string, number, boolean or null value needs no subschema
    if "const" in node or "enum" in node:
        return True
    object_ok = "object" in kinds and _object_matches(root, node, known)
    array_ok = "array" in kinds and _array_matches(root, node, known)
    return object_ok or array_ok if kinds else True  # no type: a scalar satisfies object/array keywords


def _object_matches(root: dict, node: dict, known: set[int]) -> bool:
    properties = node.get("properties") if isinstance(node.get("properties"), dict) else {}
    other = node.get("additionalProperties", True)
    for name in node.get("required") or []:
        sub = properties.get(name, other) if isinstance(name, str) else True
        if not _matches(root, sub, known):
            return False
    return True


def _array_matches(root: dict, node: dict, known: set[int]) -> bool:
    need = node.get("minItems", 0)
    need = need if isinstance(need, int) and not isinstance(need, bool) else 0
    prefix = node.get("prefixItems") if isinstance(node.get("prefixItems"), list) else []
    items = node.get("items", True)
    if isinstance(items, list):  # draft 4-7 tuples
        prefix, items = items, node.get("additionalItems", True)
    if not all(_matches(root, s, known) for s in prefix[:need]):
        return False
    return need <= len(prefix) or _matches(root, items, known)
