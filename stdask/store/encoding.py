"""The one registry of on-disk element encodings: ``(encoding, version) -> reader / writer``.

Every element of a store carries its encoding: AnnData elements as the attributes ``encoding-type`` and
``encoding-version`` (``csr_matrix`` 0.1.0, ``dataframe`` 0.2.0, ...), stdask's own elements as
``attrs["stdask"] = {"encoding", "version"}`` (the store root, rasters) or, for the tile index kept inside
``uns``, as the members ``encoding`` / ``version`` of an AnnData ``dict``. Readers and writers are registered
against an :class:`IOSpec` by decorator, as anndata's ``_io/specs/registry.py`` does, so adding a format is
adding one function. Reading an element whose (encoding, version) has no reader fails with
:class:`UnknownEncodingError`, naming the element, the version found and the versions this stdask reads.

The registrations themselves live in the element modules (:mod:`.elements`, :mod:`.tile_index`,
:mod:`.raster`); ``stdask/store/__init__.py`` imports all of them, so the registry is complete whichever
store module is imported first.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from .format import StoreFormatError


@dataclass(frozen=True)
class IOSpec:
    """An encoding name and version, e.g. ``IOSpec("csr_matrix", "0.1.0")`` or ``IOSpec("stdask-raster", 1)``.

    AnnData encodings have string versions; stdask's own encodings have integer versions.
    """

    encoding: str
    version: str | int

    def attrs(self) -> dict[str, str]:
        """The AnnData attributes that mark an element with this encoding."""
        return {"encoding-type": self.encoding, "encoding-version": str(self.version)}


class UnknownEncodingError(StoreFormatError):
    """An element records an encoding or a version this stdask has no reader for."""


def _normal_version(version: Any) -> Any:
    # integer versions come back from zarr attributes as int and from AnnData scalars as numpy integers
    if hasattr(version, "item") and not isinstance(version, (str, bytes)):
        version = version.item()
    return version


def spec_of(node) -> IOSpec | None:
    """The encoding recorded on a zarr group or array (``None`` when it records none).

    Looked for, in order: ``attrs["stdask"]["encoding"/"version"]`` (store root, rasters); an AnnData
    ``dict`` whose members ``encoding`` / ``version`` name a ``stdask-`` encoding (the tile index in
    ``uns``); the AnnData attributes ``encoding-type`` / ``encoding-version``.
    """
    attrs = node.attrs
    own = attrs.get("stdask")
    if isinstance(own, dict) and "encoding" in own:
        return IOSpec(str(own["encoding"]), _normal_version(own.get("version")))
    etype = attrs.get("encoding-type")
    if etype == "dict" and hasattr(node, "group_keys") and "encoding" in node and "version" in node:
        inner = node["encoding"][()]
        inner = inner.item() if hasattr(inner, "item") else inner
        if isinstance(inner, str) and inner.startswith("stdask-"):
            return IOSpec(inner, _normal_version(node["version"][()]))
    if etype is None:
        return None
    return IOSpec(str(etype), str(attrs.get("encoding-version")))


Reader = Callable[[Any], Any]
Writer = Callable[[Any, str, Any], None]


class EncodingRegistry:
    """Readers and writers of store elements, found by :class:`IOSpec`.

    A reader is ``read(node) -> value`` (``node`` a zarr group or array). A writer is
    ``write(parent, key, value) -> None`` and creates ``parent[key]``; it is chosen by the type of the value
    (first registration whose types match and whose ``when`` predicate holds, most recent first).
    """

    def __init__(self) -> None:
        self._readers: dict[IOSpec, Reader] = {}
        self._writers: list[tuple[IOSpec | None, tuple[type, ...], Callable[[Any], bool] | None, Writer]] = []

    # --- registration -------------------------------------------------------------------------
    def register_read(self, *specs: IOSpec) -> Callable[[Reader], Reader]:
        """Decorator: ``func`` reads elements of each of ``specs``."""

        def deco(func: Reader) -> Reader:
            for spec in specs:
                self._readers[spec] = func
            return func

        return deco

    def register_write(self, spec: IOSpec | None, *types: type,
                       when: Callable[[Any], bool] | None = None) -> Callable[[Writer], Writer]:
        """Decorator: ``func`` writes values of ``types`` (for which ``when(value)`` holds) as ``spec``.

        ``spec=None`` registers a writer that lets AnnData choose the encoding (scalars, strings,
        categoricals); what it wrote is checked to be an encoding this stdask reads.
        """
        if not types:
            raise ValueError("register_write needs at least one value type")

        def deco(func: Writer) -> Writer:
            self._writers.insert(0, (spec, types, when, func))
            return func

        return deco

    # --- look-up ------------------------------------------------------------------------------
    def versions(self, encoding: str) -> tuple:
        """Versions of ``encoding`` this stdask reads (empty when the encoding is unknown)."""
        return tuple(s.version for s in self._readers if s.encoding == encoding)

    def encodings(self) -> list[str]:
        return sorted({s.encoding for s in self._readers})

    def check(self, element: str, encoding: str | None, version: Any) -> IOSpec:
        """The spec ``(encoding, version)`` if this stdask reads it; else :class:`UnknownEncodingError` naming
        ``element``, the version found and the versions known."""
        if encoding is None:
            raise UnknownEncodingError(f"{element}: no encoding recorded; not a (complete) stdask element")
        version = _normal_version(version)
        spec = IOSpec(str(encoding), version)
        if spec in self._readers:
            return spec
        known = self.versions(spec.encoding)
        if not known:
            raise UnknownEncodingError(f"{element}: unknown encoding {spec.encoding!r} version {version!r} "
                                       f"(this stdask reads: {', '.join(self.encodings())})")
        raise UnknownEncodingError(
            f"{element}: encoding {spec.encoding!r} version {version!r} is not supported by this stdask "
            f"(it reads versions {', '.join(repr(v) for v in known)}); upgrade stdask to read it"
        )

    def reader(self, spec: IOSpec, element: str) -> Reader:
        return self._readers[self.check(element, spec.encoding, spec.version)]

    def writer(self, value: Any) -> tuple[IOSpec | None, Writer]:
        """The spec and writer registered for ``value``'s type."""
        for spec, types, when, func in self._writers:
            if isinstance(value, types) and (when is None or when(value)):
                return spec, func
        raise TypeError(f"no store encoding is registered for values of type {type(value).__name__}")

    # --- use ----------------------------------------------------------------------------------
    def read(self, node, element: str) -> Any:
        """Read the element ``node`` (described as ``element`` in errors) with the reader of its encoding."""
        spec = spec_of(node)
        if spec is None:
            raise UnknownEncodingError(f"{element}: no encoding recorded on the element")
        return self.reader(spec, element)(node)

    def write(self, parent, key: str, value: Any) -> IOSpec:
        """Write ``value`` as ``parent[key]`` with the writer registered for its type; returns the spec written.

        Raises :class:`UnknownEncodingError` if the element written records an encoding this stdask could
        not read back (an AnnData upgrade that changed a version), and :class:`StoreFormatError` if it records
        another encoding than the writer declares.
        """
        spec, func = self.writer(value)
        func(parent, key, value)
        written = spec_of(parent[key])
        element = f"{parent.path or '/'}/{key} (written)"
        if written is None:
            raise UnknownEncodingError(f"{element}: the writer recorded no encoding")
        self.check(element, written.encoding, written.version)
        if spec is not None and written != spec:
            raise StoreFormatError(f"{element}: written as {written}, but its writer declares {spec}")
        return written


#: the registry every store reader and writer uses
REGISTRY = EncodingRegistry()
register_read = REGISTRY.register_read
register_write = REGISTRY.register_write


def read_element(node, element: str) -> Any:
    """Read one element through :data:`REGISTRY`."""
    return REGISTRY.read(node, element)


def write_element(parent, key: str, value: Any) -> IOSpec:
    """Write one element through :data:`REGISTRY`."""
    return REGISTRY.write(parent, key, value)


__all__ = ["IOSpec", "EncodingRegistry", "UnknownEncodingError", "REGISTRY", "register_read", "register_write",
           "read_element", "write_element", "spec_of"]
