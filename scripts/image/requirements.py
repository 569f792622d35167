"""Prints the requirements of the project plus the given extras, one per line.

Used by the image builds to install dependencies in a layer of their own, so a change of
the project's code does not download every dependency again.
"""

import sys
import tomllib

with open(sys.argv[1], "rb") as handle:
    project = tomllib.load(handle)["project"]
lines = list(project.get("dependencies", []))
for extra in sys.argv[2:]:
    lines += project.get("optional-dependencies", {})[extra]
print("\n".join(lines))
