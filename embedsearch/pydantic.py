"""Pydantic schemas for tables: ``LanceModel``, ``Vector`` and ``MultiVector``, as in LanceDB."""

from __future__ import annotations

import datetime
import types
import typing
from typing import Any, ClassVar, Union

import pyarrow as pa
from pydantic import BaseModel, GetCoreSchemaHandler
from pydantic_core import core_schema

from embedsearch.contract.errors import InvalidSchema
from embedsearch.contract.functions import EmbeddingFunction


class FixedSizeListMixin(list):
    """A vector column: a list of exactly ``dim`` floats, stored as fixed_size_list<float32>.

    ``None`` is accepted too (LanceDB's model refuses it): a row whose vector is None is
    embedded when a function fills the column, and is a bad vector otherwise.
    """

    dim: ClassVar[int] = 0
    value_arrow_type: ClassVar[pa.DataType] = pa.float32()

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: GetCoreSchemaHandler) -> Any:
        values = core_schema.list_schema(
            core_schema.float_schema(), min_length=cls.dim, max_length=cls.dim
        )
        return core_schema.nullable_schema(values)


def Vector(dim: int, value_type: pa.DataType | None = None) -> type[FixedSizeListMixin]:
    """The type of a vector column of ``dim`` values (LanceDB's name).

    >>> class Doc(LanceModel):
    ...     vector: Vector(384)
    """
    if not isinstance(dim, int) or dim <= 0:
        raise InvalidSchema(f"Vector() needs a positive int dimension, got {dim!r}")
    return type(
        f"Vector{dim}",
        (FixedSizeListMixin,),
        {"dim": dim, "value_arrow_type": value_type or pa.float32()},
    )


class MultiVectorMixin(list):
    """A multi-vector column: a list of vectors of ``dim`` values each (one per token for
    ColBERT), stored as list<fixed_size_list<float32, dim>>. None is accepted, as for
    :class:`FixedSizeListMixin`."""

    dim: ClassVar[int] = 0
    value_arrow_type: ClassVar[pa.DataType] = pa.float32()

    @staticmethod
    def is_multi_vector() -> bool:
        return True

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: GetCoreSchemaHandler) -> Any:
        vector = core_schema.list_schema(
            core_schema.float_schema(), min_length=cls.dim, max_length=cls.dim
        )
        return core_schema.nullable_schema(core_schema.list_schema(vector))


def MultiVector(dim: int, value_type: pa.DataType | None = None) -> type[MultiVectorMixin]:
    """The type of a multi-vector column of ``dim``-long vectors (LanceDB's name); a function
    such as ``colbert`` fills it, and a search scores it by late interaction (MaxSim).

    >>> class Doc(LanceModel):
    ...     vectors: MultiVector(128)
    """
    if not isinstance(dim, int) or dim <= 0:
        raise InvalidSchema(f"MultiVector() needs a positive int dimension, got {dim!r}")
    return type(
        f"MultiVector{dim}",
        (MultiVectorMixin,),
        {"dim": dim, "value_arrow_type": value_type or pa.float32()},
    )


_SCALARS: dict[Any, pa.DataType] = {
    str: pa.string(),
    int: pa.int64(),
    float: pa.float64(),
    bool: pa.bool_(),
    bytes: pa.binary(),
    datetime.date: pa.date32(),
    datetime.datetime: pa.timestamp("us"),
}


def _arrow_type(annotation: Any, name: str) -> tuple[pa.DataType, bool]:
    """(Arrow type, nullable) of a field annotation."""
    origin = typing.get_origin(annotation)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return _arrow_type(args[0], name)[0], True
    if isinstance(annotation, type) and issubclass(annotation, FixedSizeListMixin):
        return pa.list_(annotation.value_arrow_type, annotation.dim), True
    if isinstance(annotation, type) and issubclass(annotation, MultiVectorMixin):
        return pa.list_(pa.list_(annotation.value_arrow_type, annotation.dim)), True
    if annotation in _SCALARS:
        return _SCALARS[annotation], False
    if origin is list:
        (item,) = typing.get_args(annotation) or (float,)
        return pa.list_(_arrow_type(item, name)[0]), True
    raise InvalidSchema(f"field {name!r}: no Arrow type for {annotation!r}")


class LanceModel(BaseModel):
    """A pydantic model that describes a table, embedding bindings included.

    Examples
    --------
    >>> func = get_registry().get("sentence-transformers").create()  # doctest: +SKIP
    >>> class Doc(LanceModel):  # doctest: +SKIP
    ...     text: str = func.SourceField()
    ...     vector: Vector(func.ndims()) = func.VectorField()
    """

    @classmethod
    def to_arrow_schema(cls) -> pa.Schema:
        """The Arrow schema of this model (vector columns as fixed_size_list<float32>)."""
        fields = []
        for name, info in cls.model_fields.items():
            dtype, nullable = _arrow_type(info.annotation, name)
            fields.append(pa.field(name, dtype, nullable=nullable or not info.is_required()))
        return pa.schema(fields)

    @classmethod
    def embedding_bindings(cls) -> list[tuple[EmbeddingFunction, str, str]]:
        """(function, source column, vector column) for each SourceField/VectorField pair."""
        sources: dict[int, tuple[EmbeddingFunction, str]] = {}
        vectors: dict[int, str] = {}
        for name, info in cls.model_fields.items():
            extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
            if "source_column_for" in extra:
                func = extra["source_column_for"]
                sources[id(func)] = (func, name)
            if "vector_column_for" in extra:
                vectors[id(extra["vector_column_for"])] = name
        unpaired = set(sources) ^ set(vectors)
        if unpaired:
            raise InvalidSchema(
                f"{cls.__name__}: each func.SourceField() needs a func.VectorField() of the same "
                "function, and the other way round"
            )
        return [(func, source, vectors[key]) for key, (func, source) in sources.items()]
