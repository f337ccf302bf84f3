"""Tags beyond create and list: their manifest sizes, moving a tag, deleting one strictly."""

from __future__ import annotations

from embedsearch.contract.errors import NotFound
from embedsearch.contract.values import TagInfo
from store_service.catalog import TableCatalog, check_name


def tag_refs(catalog: TableCatalog, name: str) -> list[TagInfo]:
    """Table ``name``'s tags, sorted by name."""
    tags = catalog.dataset(name).tags.list()
    return [
        TagInfo(tag, int(ref["version"]), int(ref.get("manifest_size") or 0))
        for tag, ref in sorted(tags.items())
    ]


def tag_ref(catalog: TableCatalog, name: str, tag: str) -> TagInfo:
    """One tag of table ``name``; NotFound when it has no such tag."""
    for ref in tag_refs(catalog, name):
        if ref.tag == tag:
            return ref
    raise NotFound(f"table {name!r} has no tag {tag!r}")


def update_tag(catalog: TableCatalog, name: str, tag: str, version: int = 0) -> TagInfo:
    """Point an existing tag at ``version`` (0: the latest)."""
    check_name(tag, "tag")
    dataset = catalog.dataset(name)
    tag_ref(catalog, name, tag)  # NotFound first
    target = version or dataset.version
    catalog.dataset(name, target)  # NotFound for a version that is not there
    with catalog.writing(name, f"moving tag {tag!r} of table {name!r}"):
        dataset.tags.update(tag, target)
    return tag_ref(catalog, name, tag)


def delete_tag(catalog: TableCatalog, name: str, tag: str, error_if_missing: bool) -> None:
    """Remove a tag; a missing one is NotFound with ``error_if_missing``, else nothing."""
    if error_if_missing:
        tag_ref(catalog, name, tag)
    catalog.delete_tag(name, tag)
