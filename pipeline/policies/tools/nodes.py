"""Finding values in a policy file's YAML node tree, with their positions: what lets the
authoring tools report a problem at its line and column, and edit one value of a file without
touching its comments and layout."""

from __future__ import annotations

import yaml

__all__ = ["child", "label_node"]


def child(node: yaml.Node | None, key: str) -> yaml.Node | None:
    """The value node of ``key`` in a mapping node (None if absent or not a mapping)."""
    if not isinstance(node, yaml.MappingNode):
        return None
    for k, v in node.value:
        if isinstance(k, yaml.ScalarNode) and k.value == key:
            assert isinstance(v, yaml.Node)
            return v
    return None


def label_node(root: yaml.Node | None, name: str) -> yaml.Node | None:
    """The mapping node of the label called ``name`` (None if the file has none)."""
    labels = child(root, "labels")
    if isinstance(labels, yaml.SequenceNode):
        for node in labels.value:
            n = child(node, "name")
            if isinstance(n, yaml.ScalarNode) and n.value == name:
                assert isinstance(node, yaml.Node)
                return node
    return None
