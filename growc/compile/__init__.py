"""The compile layer: from a growth spec to a grown GraphModule (parents, plan, passes) and its artifact folder.
Depends on the passes, spec and models layers."""
